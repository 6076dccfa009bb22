//! Integration tests for scripts: the script runs in this process — the real runtime,
//! binding-worker and iris router on loopback sockets (ports `:0`), as `wvpc dev --mock` runs
//! it — with a mock of its bindings' private services instead of the tunnel. Tests send
//! requests to the script, assert on its answers and on what the mocked services received,
//! and inject faults that reach the script with exactly the error code of the real cause.
//!
//! ```no_run
//! use wvpc_testing::{Fault, Mock, Script};
//!
//! # async fn example() -> Result<(), wvpc_testing::TestingError> {
//! let t = Script::from_config("wrangler.jsonc")
//!     .mock("API", Mock::new().get("/users/1", 200, r#"{"id":1}"#))
//!     .start().await?;
//! let res = t.get("/users/1").await?;
//! assert_eq!(res.status(), 200);
//! assert_eq!(t.requests("API")[0].header("host"), Some("api.internal"));
//! t.set_fault("API", Fault::ConnectionRefused);
//! assert_eq!(t.get("/users/1").await?.text().await?, "ProxyError: connection_refused");
//! # Ok(())
//! # }
//! ```
//!
//! Run the tests on a multi-threaded tokio runtime
//! (`#[tokio::test(flavor = "multi_thread")]`): the script's instances block their thread
//! while the binding-worker, on the test's runtime, serves their fetches.
//! Dropping the [`RunningScript`] stops everything.

pub mod cases;
mod client;
mod mock;
pub mod report;
mod suite;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;
use wvpc_iris::dev_mock::{MockError, MockNetwork, MockSpec};
use wvpc_platform::mock_file;
use wvpc_platform::mock_stack::{MockStack, MockStackConfig};
use wvpc_runtime::{ConfigError, ConfigValue, ScriptConfig};

pub use client::Response;
pub use mock::{IntoFaultRule, Mock};
pub use suite::{CASE_TIMEOUT, CaseOutcome, Failure, SuiteReport};
/// A fault rule: limited to a method or a path, a rate in percent, added latency.
pub use wvpc_iris::dev_mock::Fault as FaultRule;
/// A fault code, for every request of a binding: `Fault::ConnectionRefused`, …
pub use wvpc_iris::dev_mock::FaultCode as Fault;
/// A request a mocked service received: method, URL, path, headers, body.
pub use wvpc_iris::dev_mock::RecordedRequest;

/// How long a `connection_timeout` fault takes to fail by default: short, so tests stay fast
/// (the real connector's dial timeout is 10 s; the code the script sees is the same).
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a script could not be started or asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestingError {
    /// The wrangler config is unreadable or invalid (the message names the field).
    #[error(transparent)]
    Config(#[from] wvpc_runtime::ConfigError),
    /// The mock file is unreadable or invalid (every problem, with its path).
    #[error(transparent)]
    MockFile(#[from] mock_file::MockFileError),
    /// The cases file of [`Script::run_cases`] is unreadable or invalid (every problem, with
    /// its path).
    #[error(transparent)]
    Cases(wvpc_runtime::ConfigError),
    /// A mock or a fault names a binding the script does not declare.
    #[error(
        "binding {binding:?} is not declared by the script {script:?} (its vpc_services: {declared})"
    )]
    UnknownBinding {
        /// The binding asked for.
        binding: String,
        /// The script's name.
        script: String,
        /// The bindings it declares, comma-separated.
        declared: String,
    },
    /// A mock is malformed.
    #[error("mock of binding {binding:?}: {problem}")]
    Mock {
        /// The binding.
        binding: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The mock network could not be set up (its TLS identity).
    #[error("setting up the mock: {0}")]
    MockSetup(#[source] MockError),
    /// The stack (runtime, binding-worker, router) could not start, e.g. the component does
    /// not load.
    #[error("starting the script: {0}")]
    Start(#[from] wvpc_platform::PlatformError),
    /// Sending a request to the script, or reading its answer, failed.
    #[error("{what}: {source}")]
    Http {
        /// What was being done (`GET /users/1`, reading the body).
        what: String,
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A script to start: its wrangler config and what its bindings meet.
#[derive(Debug, Clone)]
#[must_use = "a Script does nothing until .start()"]
pub struct Script {
    config: PathBuf,
    component: Option<PathBuf>,
    mock_file: Option<PathBuf>,
    mocks: BTreeMap<String, Mock>,
    dial_timeout: Duration,
    wall_time: Option<Duration>,
}

impl Script {
    /// The script of a wrangler config (JSON, JSONC or TOML): its `main` component, bindings
    /// and limits. Bindings by `service` name need no directory: the mock names them. The
    /// config is read by [`Script::start`].
    pub fn from_config(path: impl AsRef<Path>) -> Self {
        Self {
            config: path.as_ref().to_owned(),
            component: None,
            mock_file: None,
            mocks: BTreeMap::new(),
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            wall_time: None,
        }
    }

    /// Runs this component instead of the config's `main` (e.g. one a build script built;
    /// relative to the config's directory).
    pub fn component(mut self, path: impl AsRef<Path>) -> Self {
        self.component = Some(path.as_ref().to_owned());
        self
    }

    /// Starts from a mock file (`wvpc.mock.jsonc`, the format of `wvpc dev --mock`);
    /// [`Script::mock`] replaces single bindings of it.
    pub fn mock_file(mut self, path: impl AsRef<Path>) -> Self {
        self.mock_file = Some(path.as_ref().to_owned());
        self
    }

    /// What `binding` meets (replacing the mock file's entry for it). Bindings without a mock
    /// answer `501` to every request.
    pub fn mock(mut self, binding: &str, mock: Mock) -> Self {
        self.mocks.insert(binding.to_owned(), mock);
        self
    }

    /// How long a `connection_timeout` fault takes ([`DEFAULT_DIAL_TIMEOUT`] by default).
    pub fn dial_timeout(mut self, timeout: Duration) -> Self {
        self.dial_timeout = timeout;
        self
    }

    /// Overrides the config's `limits.wall_time_ms`: after it, the runtime ends the request
    /// (`504`).
    pub fn wall_time(mut self, limit: Duration) -> Self {
        self.wall_time = Some(limit);
        self
    }

    /// Loads the script and the mock, and starts the runtime, binding-worker and router on
    /// loopback ports `:0`. Returns once the script serves.
    pub async fn start(self) -> Result<RunningScript, TestingError> {
        self.start_with_output(Arc::new(wvpc_runtime::PrefixedOutput))
            .await
    }

    /// [`Script::start`], with the script's stdout / stderr lines sent to `output`.
    async fn start_with_output(
        self,
        output: Arc<dyn wvpc_runtime::ScriptOutput>,
    ) -> Result<RunningScript, TestingError> {
        let script = self.load()?;
        let mut spec = match &self.mock_file {
            Some(path) => mock_file::load(path, &script)?,
            None => MockSpec::default(),
        };
        for (binding, mock) in self.mocks {
            check_binding(&script, &binding)?;
            if let Some(header) = mock.stray_header {
                return Err(TestingError::Mock {
                    binding,
                    problem: format!(
                        "header {header:?} was set before any response (call .get, .post, .any \
                         or .respond first; .header applies to the response added last)"
                    ),
                });
            }
            spec.bindings.insert(binding, mock.spec);
        }
        let bindings = script.vpc_services.iter().map(|b| b.binding.clone());
        let network = MockNetwork::with_dial_timeout(bindings, spec, self.dial_timeout)
            .map_err(|err| mock_error(&script, err))?;
        let stack = MockStack::start_with_output(
            MockStackConfig {
                script: script.clone(),
                mock: network,
                listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                server: Default::default(),
            },
            output,
        )
        .await?;
        Ok(RunningScript {
            client: client::Client::new(stack.script_addr),
            script,
            stack,
        })
    }
}

impl Script {
    /// The script's config as [`Script::start`] runs it.
    fn load(&self) -> Result<ScriptConfig, TestingError> {
        // The mock names the services: a `service` name in the config needs no directory.
        let mut script = load_config(&self.config, self.component.as_deref())?;
        if let Some(limit) = self.wall_time {
            script.limits.wall_time = limit;
        }
        Ok(script)
    }
}

/// A started script. Dropping it stops the runtime, the binding-worker and the router.
pub struct RunningScript {
    script: ScriptConfig,
    stack: MockStack,
    client: client::Client,
}

impl RunningScript {
    /// The script's base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.stack.script_addr)
    }

    /// The script's address.
    pub fn addr(&self) -> SocketAddr {
        self.stack.script_addr
    }

    /// `GET path` (path and query) to the script.
    pub async fn get(&self, path: &str) -> Result<Response, TestingError> {
        self.request("GET", path, &[], Vec::new()).await
    }

    /// A request to the script with `headers` and `body`.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<bytes::Bytes>,
    ) -> Result<Response, TestingError> {
        self.client.send(method, path, headers, body.into()).await
    }

    /// Every request the mocked service of `binding` received so far, in order.
    ///
    /// # Panics
    /// When the script does not declare `binding` (a typo in the test).
    pub fn requests(&self, binding: &str) -> Vec<RecordedRequest> {
        self.expect_binding(binding);
        self.stack.mock.requests(binding)
    }

    /// Forgets the recorded requests of every binding.
    pub fn clear_requests(&self) {
        self.stack.mock.clear_requests();
    }

    /// From now on, `binding` fails with `fault` ([`Fault`] for every request, or a scoped
    /// [`FaultRule`]), replacing its earlier fault rules.
    ///
    /// # Panics
    /// When the script does not declare `binding`; [`RunningScript::try_set_faults`] returns
    /// the error instead.
    pub fn set_fault(&self, binding: &str, fault: impl IntoFaultRule) {
        self.set_faults(binding, vec![fault.into_fault_rule()]);
    }

    /// Replaces `binding`'s fault rules (first hit wins).
    ///
    /// # Panics
    /// When the script does not declare `binding`.
    pub fn set_faults(&self, binding: &str, faults: Vec<FaultRule>) {
        if let Err(err) = self.try_set_faults(binding, faults) {
            panic!("{err}");
        }
    }

    /// Replaces `binding`'s fault rules, or says why not.
    pub fn try_set_faults(
        &self,
        binding: &str,
        faults: Vec<FaultRule>,
    ) -> Result<(), TestingError> {
        check_binding(&self.script, binding)?;
        self.stack
            .mock
            .set_faults(binding, faults)
            .map_err(|err| mock_error(&self.script, err))
    }

    /// Replaces `binding`'s fault rules and returns the ones it had (to put back later).
    pub fn replace_faults(
        &self,
        binding: &str,
        faults: Vec<FaultRule>,
    ) -> Result<Vec<FaultRule>, TestingError> {
        check_binding(&self.script, binding)?;
        let mut previous = Vec::new();
        self.stack
            .mock
            .update(binding, |mock| {
                previous = std::mem::replace(&mut mock.faults, faults);
            })
            .map_err(|err| mock_error(&self.script, err))?;
        Ok(previous)
    }

    /// From now on every answer of `binding` is delayed by `latency` (replacing its fault
    /// rules).
    ///
    /// # Panics
    /// When the script does not declare `binding`.
    pub fn set_latency(&self, binding: &str, latency: Duration) {
        self.set_fault(binding, FaultRule::latency(latency));
    }

    /// Removes `binding`'s fault rules and latency.
    ///
    /// # Panics
    /// When the script does not declare `binding`.
    pub fn clear_faults(&self, binding: &str) {
        self.set_faults(binding, Vec::new());
    }

    /// Replaces what `binding` meets.
    ///
    /// # Panics
    /// When the script does not declare `binding`.
    pub fn set_mock(&self, binding: &str, mock: Mock) {
        self.expect_binding(binding);
        if let Err(err) = self.stack.mock.update(binding, |spec| *spec = mock.spec) {
            panic!("{}", mock_error(&self.script, err));
        }
    }

    fn expect_binding(&self, binding: &str) {
        if let Err(err) = check_binding(&self.script, binding) {
            panic!("{err}");
        }
    }
}

/// The config at `path`, with `component` as its `main` when given (the config's own `main`
/// may not be built then). `service` names resolve to placeholders: the mock names services.
fn load_config(path: &Path, component: Option<&Path>) -> Result<ScriptConfig, ConfigError> {
    let resolve = |_: &str| Ok(Uuid::nil());
    let (Some(component), Some(mut raw)) = (component, ConfigValue::read(path)?) else {
        return ScriptConfig::load_resolving(path, &resolve);
    };
    if let serde_json::Value::Object(root) = &mut raw.value {
        let main = component.to_string_lossy().into_owned();
        root.insert("main".to_owned(), serde_json::Value::String(main));
    }
    // Validated as JSON next to the file (so that a relative `component` resolves the same),
    // problems reported against the file itself.
    ScriptConfig::from_text(
        &path.with_extension("json"),
        &raw.value.to_string(),
        &resolve,
    )
    .map_err(|err| match err {
        ConfigError::Invalid { problems, .. } => ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        },
        other => other,
    })
}

fn check_binding(script: &ScriptConfig, binding: &str) -> Result<(), TestingError> {
    if script.vpc_services.iter().any(|b| b.binding == binding) {
        return Ok(());
    }
    Err(unknown_binding(script, binding))
}

fn unknown_binding(script: &ScriptConfig, binding: &str) -> TestingError {
    let declared: Vec<&str> = script
        .vpc_services
        .iter()
        .map(|b| b.binding.as_str())
        .collect();
    TestingError::UnknownBinding {
        binding: binding.to_owned(),
        script: script.name.clone(),
        declared: if declared.is_empty() {
            "none".to_owned()
        } else {
            declared.join(", ")
        },
    }
}

fn mock_error(script: &ScriptConfig, err: MockError) -> TestingError {
    match err {
        MockError::UnknownBinding(binding) => unknown_binding(script, &binding),
        other => TestingError::MockSetup(other),
    }
}
