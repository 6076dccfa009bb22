//! The platform row's chain as separate processes, as an operator runs it: `wvpc iris`,
//! `wvpc binding-worker`, `wvpc runtime` and a connector (`wvpc tunnel run`, over QUIC) as
//! children of this process, all on one temporary `--state`, in front of the same kind of
//! origin and DNS server as the in-process row (in this process). The script is deployed
//! through the directory library (no `wvpc directory` process is needed: every process reads
//! the SQLite directory of the state).
//!
//! The children are the `wvpc` binary next to this executable, rebuilt first with
//! `cargo build -p wvpc-cli` in the same profile and target dir (a no-op when it is current),
//! so the bench never measures a stale binary; `--wvpc PATH` uses a given binary instead.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use uuid::Uuid;
use wvpc_directory::{
    ApiToken, BindingRequest, BindingTarget, Directory, HostInput, ResolverNetworkInput, Role,
    Script, ScriptUpload, ServiceInput, ServiceRef,
};
use wvpc_tests::TempDir;
use wvpc_tests::dns::{DnsServer, DnsTable};
use wvpc_tests::origin::Origin;
use wvpc_tests::real::{ORIGIN_IP, ORIGIN_NAME};

use crate::load::Target;
use crate::usage::Pid;

/// What the platform's processes show of themselves: the bench measures what it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observe {
    /// No `--metrics`: nothing counted, no span made.
    Nothing,
    /// `--metrics 127.0.0.1:0` on every process (counted, never scraped), no traces: as an
    /// operator runs it.
    Metrics,
    /// Also `--otlp-endpoint` to this OTLP/HTTP receiver: every span exported.
    MetricsAndTraces(SocketAddr),
}

impl Observe {
    /// The flags every component gets.
    fn args(self) -> Vec<String> {
        let metrics = || vec!["--metrics".to_owned(), "127.0.0.1:0".to_owned()];
        match self {
            Self::Nothing => Vec::new(),
            Self::Metrics => metrics(),
            Self::MetricsAndTraces(otlp) => {
                let mut args = metrics();
                args.extend(["--otlp-endpoint".to_owned(), format!("http://{otlp}")]);
                args
            }
        }
    }
}

/// The deployed script's name.
pub const SCRIPT: &str = "proxy";
/// Its default host: `<script>.<subdomain of the state's own account>.<workers domain>`.
pub const SCRIPT_HOST: &str = "proxy.local.workers.localhost";
/// How long a child may take to say it is ready (a runtime compiles the script first: a
/// JavaScript script is a component of over 10 MB).
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a starting child's stdout file is read for its ready line.
const READY_POLL: Duration = Duration::from_millis(10);

/// The `wvpc` binary the children run: `explicit`, else the one next to this executable,
/// brought up to date by cargo when this executable sits in a cargo target dir.
pub fn wvpc_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        anyhow::ensure!(path.is_file(), "--wvpc {}: no such file", path.display());
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let dir = exe.parent().context("this executable has no directory")?;
    let wvpc = dir.join("wvpc");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let profile = dir.file_name().and_then(|n| n.to_str());
    if let (Some(profile @ ("release" | "debug")), Some(target_dir), true) =
        (profile, dir.parent(), manifest.is_file())
    {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        // What `cargo run` set for this executable is not the build's: a build script that
        // reads such a variable (ring's reads CARGO_MANIFEST_DIR) would be rebuilt, and the
        // next `cargo run` would rebuild it back.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || [
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "OUT_DIR",
                ]
                .contains(&name.as_ref())
            {
                build.env_remove(name.as_ref());
            }
        }
        build
            .args(["build", "--quiet", "-p", "wvpc-cli", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target_dir);
        if profile == "release" {
            build.arg("--release");
        }
        eprintln!(
            "bringing {} up to date (cargo build -p wvpc-cli)…",
            wvpc.display()
        );
        match build.status() {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("cargo build -p wvpc-cli failed ({status})"),
            Err(err) => eprintln!("cannot run cargo ({err})"),
        }
    }
    anyhow::ensure!(
        wvpc.is_file(),
        "no wvpc binary at {}: build it with `cargo build --release -p wvpc-cli` (same target \
         dir as the bench), or pass --wvpc PATH",
        wvpc.display()
    );
    Ok(wvpc)
}

/// Every `IP:PORT` in a line, in order (how the addresses of `:0` listeners are read from
/// the ready lines).
fn addrs_in(line: &str) -> Vec<SocketAddr> {
    line.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .filter_map(|word| word.trim_matches(|c| c == '.' || c == ':').parse().ok())
        .collect()
}

/// One child process of the chain. Killed (and reaped) when dropped.
pub struct Component {
    /// `iris`, `binding-worker`, `runtime`, `connector`.
    pub name: &'static str,
    /// The addresses of its ready line, in order.
    pub addrs: Vec<SocketAddr>,
    child: Child,
}

impl Component {
    /// Starts `wvpc --state <state> <args>` and waits for its stdout line starting with
    /// `ready_prefix`. Its stdout goes to a file of the state (a runtime writes a line per
    /// request there, as into a log, and nothing in this process has to read it); its stderr
    /// is this process's.
    async fn start(
        wvpc: &Path,
        state: &Path,
        name: &'static str,
        ready_prefix: &'static str,
        args: &[String],
    ) -> anyhow::Result<Component> {
        let out_path = state.join(format!("{name}-{}.out", Uuid::new_v4().simple()));
        let out = std::fs::File::create(&out_path)
            .with_context(|| format!("creating {}", out_path.display()))?;
        let child = Command::new(wvpc)
            .arg("--state")
            .arg(state)
            .args(args)
            .env("RUST_LOG", "error")
            // Compiled components stay with the state (the redeploys compile new modules).
            .env("WVPC_CACHE_DIR", state.join("compiled"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting wvpc {name} ({})", wvpc.display()))?;
        let mut component = Component {
            name,
            addrs: Vec::new(),
            child,
        };
        let started = Instant::now();
        loop {
            let out = std::fs::read_to_string(&out_path).unwrap_or_default();
            if let Some(line) = out.lines().find(|line| line.starts_with(ready_prefix)) {
                component.addrs = addrs_in(line);
                return Ok(component);
            }
            if let Some(status) = component.child.try_wait()? {
                anyhow::bail!(
                    "wvpc {name} exited before it was ready ({status}); its log is above"
                );
            }
            anyhow::ensure!(
                started.elapsed() < READY_TIMEOUT,
                "wvpc {name} was not ready within {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The `i`-th address of its ready line.
    pub fn addr(&self, i: usize) -> anyhow::Result<SocketAddr> {
        self.addrs.get(i).copied().with_context(|| {
            format!(
                "wvpc {}'s ready line has no address #{i} ({:?})",
                self.name, self.addrs
            )
        })
    }

    /// Its pid, for /proc.
    pub fn pid(&self) -> Pid {
        Pid::Child(self.child.id())
    }

    /// Stops it as an operator does (SIGTERM: a graceful stop) and waits until it exited.
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id())?)
            .context("a child with pid 0")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .with_context(|| format!("sending SIGTERM to wvpc {}", self.name))?;
        Ok(tokio::task::spawn_blocking(move || self.child.wait()).await??)
    }

    /// Kills it as a crash would (SIGKILL) and reaps it.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The chain as separate processes, with its origin, DNS server and state.
pub struct Platform {
    /// iris (CONNECT router and tunnel edge), the binding-worker, the runtime and the
    /// connector, in that order.
    pub components: Vec<Component>,
    /// Runtimes started later ([`Platform::add_runtime`]).
    pub more_runtimes: Vec<Component>,
    /// The directory of the state.
    pub directory: Arc<Directory>,
    /// The token scripts are deployed with.
    pub token: ApiToken,
    /// The script's binding `API`.
    pub service_id: Uuid,
    /// The deployed component.
    pub module: Vec<u8>,
    /// The tunnel every service goes through.
    tunnel_id: Uuid,
    /// The tunnel's token and the edge address, to start more connectors.
    connector_token: String,
    edge: Option<SocketAddr>,
    wvpc: PathBuf,
    observe: Observe,
    // Kept alive: the origin behind the tunnel and the DNS server that names it.
    _origin: Origin,
    dns: DnsServer,
    // Last: removed after the children are gone.
    state: TempDir,
}

impl Platform {
    /// The processes a row accounts, with their names: this one, then each component.
    pub fn accounted(&self) -> (Vec<Pid>, Vec<&'static str>) {
        let pids = std::iter::once(Pid::Own)
            .chain(self.components.iter().map(|c| c.pid()))
            .collect();
        let names = std::iter::once("this")
            .chain(self.components.iter().map(|c| c.name))
            .collect();
        (pids, names)
    }

    /// Sets up the state (tunnel, service, the deployed proxy) and starts iris, a
    /// binding-worker, a runtime and a connector, each awaited until ready.
    pub async fn start(wvpc: PathBuf) -> anyhow::Result<Platform> {
        Self::start_observed(wvpc, Observe::Metrics).await
    }

    /// [`Platform::start`] with what the processes show of themselves.
    pub async fn start_observed(wvpc: PathBuf, observe: Observe) -> anyhow::Result<Platform> {
        let module = std::fs::read(wvpc_tests::guests::PROXY)
            .with_context(|| format!("reading {}", wvpc_tests::guests::PROXY))?;
        Self::start_with_observed(wvpc, module, observe).await
    }

    /// [`Platform::start`] with `module` deployed as the script (e.g. the JavaScript proxy,
    /// built into a component as `wvpc deploy` builds it).
    pub async fn start_with(wvpc: PathBuf, module: Vec<u8>) -> anyhow::Result<Platform> {
        Self::start_with_observed(wvpc, module, Observe::Metrics).await
    }

    async fn start_with_observed(
        wvpc: PathBuf,
        module: Vec<u8>,
        observe: Observe,
    ) -> anyhow::Result<Platform> {
        let state = TempDir::new("bench-platform");
        let origin = Origin::start(ORIGIN_IP).await?;
        let origin_ip: IpAddr = ORIGIN_IP.parse()?;
        let dns = DnsServer::start(DnsTable::new().with(ORIGIN_NAME, origin_ip)).await?;

        let directory = Arc::new(Directory::open(state.path())?);
        let (tunnel, credentials) = directory.create_tunnel("office")?;
        let service_id =
            create_service(&directory, "api", tunnel.id, dns.addr, origin.addr.port())?;
        let (token, _) = directory.create_token("bench", Role::Admin, None)?;

        let mut platform = Platform {
            components: Vec::new(),
            more_runtimes: Vec::new(),
            directory,
            token,
            service_id,
            module,
            tunnel_id: tunnel.id,
            connector_token: credentials.to_token(),
            edge: None,
            wvpc,
            observe,
            _origin: origin,
            dns,
            state,
        };
        let module = platform.module.clone();
        platform.deploy(module).await?;

        let any = || "127.0.0.1:0".to_owned();
        let iris = platform
            .component(
                "iris",
                "ready",
                &[
                    "iris".into(),
                    "--listen".into(),
                    any(),
                    "--edge-listen".into(),
                    any(),
                    "--node-name".into(),
                    "bench".into(),
                ],
            )
            .await?;
        let (iris_addr, edge) = (iris.addr(0)?, iris.addr(1)?);
        platform.components.push(iris);
        let binding_worker = platform
            .component(
                "binding-worker",
                "ready",
                &[
                    "binding-worker".into(),
                    "--listen".into(),
                    any(),
                    "--iris".into(),
                    iris_addr.to_string(),
                ],
            )
            .await?;
        platform.components.push(binding_worker);
        let runtime = platform.runtime_component().await?;
        platform.components.push(runtime);
        platform.edge = Some(edge);
        let connector = platform.start_connector().await?;
        platform.components.push(connector);
        Ok(platform)
    }

    async fn component(
        &self,
        name: &'static str,
        ready_prefix: &'static str,
        args: &[String],
    ) -> anyhow::Result<Component> {
        let mut args = args.to_vec();
        args.extend(self.observe.args());
        Component::start(&self.wvpc, self.state.path(), name, ready_prefix, &args).await
    }

    /// Starts a connector of the tunnel (`wvpc tunnel run`) with one connection, as the
    /// in-process row's connector, and waits until it is registered.
    pub async fn start_connector(&self) -> anyhow::Result<Component> {
        self.connector_launcher()?.start().await
    }

    /// What starts connectors of the tunnel, owned (for a task that restarts them).
    pub fn connector_launcher(&self) -> anyhow::Result<ConnectorLauncher> {
        Ok(ConnectorLauncher {
            wvpc: self.wvpc.clone(),
            state: self.state.path().to_owned(),
            token: self.connector_token.clone(),
            edge: self.edge.context("the edge has not started")?,
            observe: self.observe,
        })
    }

    async fn runtime_component(&self) -> anyhow::Result<Component> {
        let binding_worker = self.components[1].addr(0)?;
        self.component(
            "runtime",
            "ready",
            &[
                "runtime".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--binding-worker".into(),
                binding_worker.to_string(),
            ],
        )
        .await
    }

    /// Starts one more runtime on the same state and binding-worker.
    pub async fn add_runtime(&mut self) -> anyhow::Result<()> {
        let runtime = self.runtime_component().await?;
        self.more_runtimes.push(runtime);
        Ok(())
    }

    /// Every runtime: (HTTP listener, control listener).
    pub fn runtimes(&self) -> anyhow::Result<Vec<(SocketAddr, SocketAddr)>> {
        std::iter::once(&self.components[2])
            .chain(&self.more_runtimes)
            .map(|runtime| Ok((runtime.addr(0)?, runtime.addr(1)?)))
            .collect()
    }

    /// The script at the first runtime.
    pub fn target(&self) -> anyhow::Result<Target> {
        Ok(Target {
            addr: self.components[2].addr(0)?,
            host: SCRIPT_HOST.to_owned(),
        })
    }

    /// Deploys `module` as the script, bound to the service; returns once committed.
    pub async fn deploy(&self, module: Vec<u8>) -> anyhow::Result<Script> {
        self.deploy_as(SCRIPT, self.service_id, module).await
    }

    /// Deploys `module` as the script `name` (served at `<name>.local.workers.localhost`),
    /// its binding `API` bound to `service_id`; returns once committed.
    pub async fn deploy_as(
        &self,
        name: &'static str,
        service_id: Uuid,
        module: Vec<u8>,
    ) -> anyhow::Result<Script> {
        let (directory, token) = (self.directory.clone(), self.token.clone());
        tokio::task::spawn_blocking(move || {
            let upload = ScriptUpload {
                bindings: vec![BindingRequest {
                    binding: "API".into(),
                    target: BindingTarget::Service(ServiceRef::Id(service_id)),
                }],
                ..ScriptUpload::new("proxy.wasm", module)
            };
            directory.deploy_script(&token, name, &upload)
        })
        .await?
        .context("deploying the script")
    }

    /// Creates one more service through the tunnel: the origin's name on `port`.
    pub fn create_service(&self, name: &str, port: u16) -> anyhow::Result<Uuid> {
        create_service(&self.directory, name, self.tunnel_id, self.dns.addr, port)
    }

    /// The state directory.
    pub fn state(&self) -> &Path {
        self.state.path()
    }
}

/// Starts connectors of the platform's tunnel.
#[derive(Debug, Clone)]
pub struct ConnectorLauncher {
    wvpc: PathBuf,
    state: PathBuf,
    token: String,
    edge: SocketAddr,
    observe: Observe,
}

impl ConnectorLauncher {
    /// Starts `wvpc tunnel run` with one connection and waits until it is registered.
    pub async fn start(&self) -> anyhow::Result<Component> {
        Component::start(
            &self.wvpc,
            &self.state,
            "connector",
            "registered",
            &[
                "tunnel".into(),
                "run".into(),
                "--token".into(),
                self.token.clone(),
                "--edge".into(),
                self.edge.to_string(),
                "--ha-connections".into(),
                "1".into(),
            ]
            .into_iter()
            .chain(self.observe.args())
            .collect::<Vec<_>>(),
        )
        .await
    }
}

/// An HTTP service named `name`: the origin's name (resolved through the tunnel by `dns`) on
/// `port`.
fn create_service(
    directory: &Directory,
    name: &str,
    tunnel_id: Uuid,
    dns: SocketAddr,
    port: u16,
) -> anyhow::Result<Uuid> {
    let mut input = ServiceInput::http(
        name,
        HostInput {
            hostname: Some(ORIGIN_NAME.into()),
            resolver_network: Some(ResolverNetworkInput {
                virtual_network_id: None,
                tunnel_id: Some(tunnel_id.to_string()),
                resolver_ips: Some(vec![dns.to_string()]),
            }),
            ..HostInput::default()
        },
    );
    input.http_port = Some(i64::from(port));
    Ok(directory.create_service(&input)?.service_id)
}
