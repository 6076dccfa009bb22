//! [`ScriptHost`]: the scripts a runtime serves, each with its own bindings and limits, and
//! the routing table that picks one per request.
//!
//! `wvpc runtime` feeds it every deployed script ([`Deployment`]) with
//! [`ScriptHost::apply`], as often as the set changes: new versions are compiled (once per
//! content hash, off the async threads), the routing table is rebuilt, and the new set
//! replaces the old one in a single swap. A request keeps the version it started on to its
//! end. A deployment that cannot be loaded (bad limits or routes, a module that is not a
//! runnable component, a module that cannot be fetched) is logged and reported, and the
//! script keeps serving its previous version; a script left out of the set stops being
//! served.
//!
//! `wvpc dev` uses the same host with one script served whatever the `Host`
//! ([`Runtime`](crate::Runtime)).
//!
//! After a burst, the instance pool keeps memory in the slots the burst used
//! ([`crate::engine`]); once traffic has been quiet for a while, the host moves every script
//! to a fresh engine and the old pool is freed ([`crate::pool`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use uuid::Uuid;
use wasmtime::Engine;
use wvpc_listener::ServerLimits;

use crate::binding_client::BindingClient;
use crate::config::{LimitsError, ScriptConfig};
use crate::dev_server::{RuntimeOptions, start_binding_client};
use crate::host::{HostState, ScriptPre};
use crate::instances::InstancePool;
use crate::limits::Limits;
use crate::metrics::{RuntimeMetrics, ScriptProbe};
use crate::outbound::ScriptBindings;
use crate::pool::{PoolRelease, PoolStats, PoolWatch};
use crate::routing::{
    RouteConflict, RouteError, RoutePattern, RouteTable, ScriptKey, ScriptRoutes,
};
use crate::script::{ComponentError, LoadedScript, RuntimeError};
use crate::script_output::ScriptOutput;
use crate::serving_threads::ServingThreads;

/// The workers domain when none is configured: `<script>.<subdomain>.workers.localhost`
/// (curl and browsers resolve `*.localhost` to loopback).
pub const DEFAULT_WORKERS_DOMAIN: &str = "workers.localhost";

/// The version name of the one script of `wvpc dev`.
const LOCAL_VERSION: &str = "local";

/// An error from whoever provides a module's bytes.
pub type ModuleFetchError = Box<dyn std::error::Error + Send + Sync>;

/// Where a deployment's module bytes come from. They are read only when no component with
/// the deployment's etag is compiled already.
#[derive(Clone)]
pub enum ModuleSource {
    /// The bytes, in memory.
    Bytes(Bytes),
    /// A file holding them.
    File(PathBuf),
    /// Fetched on demand (e.g. from the directory's API).
    Fetch(Arc<dyn Fn() -> BoxFuture<'static, Result<Bytes, ModuleFetchError>> + Send + Sync>),
}

impl ModuleSource {
    async fn bytes(&self) -> Result<Bytes, ModuleFetchError> {
        match self {
            ModuleSource::Bytes(bytes) => Ok(bytes.clone()),
            ModuleSource::File(path) => tokio::fs::read(path)
                .await
                .map(Bytes::from)
                .map_err(|e| format!("cannot read {}: {e}", path.display()).into()),
            ModuleSource::Fetch(fetch) => fetch().await,
        }
    }
}

impl std::fmt::Debug for ModuleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleSource::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
            ModuleSource::File(path) => f.debug_tuple("File").field(path).finish(),
            ModuleSource::Fetch(_) => f.write_str("Fetch(..)"),
        }
    }
}

/// One deployed script, as the directory describes it.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The owning account's id.
    pub account_id: String,
    /// The account's subdomain: the default host is `<script>.<subdomain>.<workers domain>`.
    pub subdomain: String,
    /// The script's name.
    pub script: String,
    /// The version to serve (its id); shown in logs and tail events.
    pub version: String,
    /// Content hash of the module (the directory's SHA-256); compiled components are cached
    /// by it, so it must change whenever the bytes do.
    pub etag: String,
    /// The module bytes.
    pub module: ModuleSource,
    /// Binding name → VPC Service id: the only services this script can reach.
    pub bindings: BTreeMap<String, Uuid>,
    /// Binding name → the network a `vpc_networks` binding reaches.
    pub networks: BTreeMap<String, wvpc_schemas::NetworkTarget>,
    /// The raw `limits` section (wrangler's keys, e.g. `{"cpu_ms": 50}`), validated as a
    /// config file's is ([`Limits::from_section`]).
    pub limits: Map<String, Value>,
    /// Route patterns (`api.example.com/*`; [`RoutePattern::parse`]).
    pub routes: Vec<String>,
    /// Whether the default hosts serve the script.
    pub workers_dev: bool,
}

impl Deployment {
    /// The script this deploys.
    pub fn key(&self) -> ScriptKey {
        ScriptKey::new(&self.account_id, &self.script)
    }
}

/// Why a deployment was not loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DeploymentError {
    /// Its `limits` section is invalid.
    #[error(transparent)]
    Limits(#[from] LimitsError),
    /// One of its routes is invalid.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// Its module bytes could not be had; the next `apply` tries again.
    #[error("cannot get the module: {0}")]
    Module(Arc<dyn std::error::Error + Send + Sync>),
    /// Its module cannot run as a script.
    #[error(transparent)]
    Component(#[from] ComponentError),
}

/// A deployment [`ScriptHost::apply`] did not load.
#[derive(Debug, Clone)]
pub struct FailedDeployment {
    /// The script.
    pub key: ScriptKey,
    /// The version that was refused.
    pub version: String,
    /// Why.
    pub error: DeploymentError,
    /// The version the script keeps serving, if it had one.
    pub still_serving: Option<String>,
}

/// What [`ScriptHost::apply`] changed.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    /// Scripts that serve a new version now (new scripts and redeploys), with that version.
    pub deployed: Vec<(ScriptKey, String)>,
    /// Deployments that were not loaded.
    pub failed: Vec<FailedDeployment>,
    /// Scripts that are no longer served.
    pub removed: Vec<ScriptKey>,
    /// Hosts and routes that two scripts claim (the first in key order serves them).
    pub conflicts: Vec<RouteConflict>,
}

/// A script being served, as [`ScriptHost::served`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedScript {
    /// The script.
    pub key: ScriptKey,
    /// The version serving its requests.
    pub version: String,
    /// That version's module etag.
    pub etag: String,
}

/// What a version is made of: a deployment equal in all of it is the same loaded version.
#[derive(Debug, Clone, PartialEq)]
struct VersionIdentity {
    version: String,
    etag: String,
    bindings: BTreeMap<String, Uuid>,
    networks: BTreeMap<String, wvpc_schemas::NetworkTarget>,
    limits: Map<String, Value>,
}

impl VersionIdentity {
    fn of(deployment: &Deployment) -> Self {
        Self {
            version: deployment.version.clone(),
            etag: deployment.etag.clone(),
            bindings: deployment.bindings.clone(),
            networks: deployment.networks.clone(),
            limits: deployment.limits.clone(),
        }
    }
}

/// A script in the current set.
#[derive(Clone)]
struct Served {
    loaded: Arc<LoadedScript>,
    identity: VersionIdentity,
    subdomain: String,
    workers_dev: bool,
    routes: Vec<RoutePattern>,
}

/// The set of scripts requests are routed to; replaced whole.
struct Table {
    /// `wvpc dev`: this one script serves every request.
    any_host: Option<Arc<LoadedScript>>,
    routes: Arc<RouteTable>,
    scripts: HashMap<ScriptKey, Served>,
}

/// A deployment refused for a reason retrying does not change, remembered so that the same
/// deployment is neither compiled nor logged again.
struct Refusal {
    identity: VersionIdentity,
    routes: Vec<String>,
    error: DeploymentError,
}

/// A compiled component, and where its module comes from (to compile it again on a fresh
/// engine).
struct Compiled {
    pre: ScriptPre<HostState>,
    module: ModuleSource,
    /// [`crate::script::serves_one_request_per_instance`] of the module.
    one_request_per_instance: bool,
}

/// State only `apply` (and the move to a fresh engine) touches.
#[derive(Default)]
struct DeployState {
    /// Compiled components of the current set, by etag.
    compiled: HashMap<String, Compiled>,
    refused: HashMap<ScriptKey, Refusal>,
}

/// The scripts a runtime serves, and the HTTP server in front of them
/// ([`ScriptHost::serve`]).
pub struct ScriptHost {
    /// Where new versions are compiled; replaced with the instance pool (see [`crate::pool`]).
    engine: Mutex<Engine>,
    /// The one binding-worker client every script's fetches go through.
    client: BindingClient,
    output: Arc<dyn ScriptOutput>,
    /// Where requests and binding calls are counted, if anywhere.
    metrics: Option<Arc<RuntimeMetrics>>,
    workers_domain: String,
    table: RwLock<Arc<Table>>,
    deploy: tokio::sync::Mutex<DeployState>,
    pool: PoolWatch,
    /// Where accepted connections are served; started by the first [`Self::serve_with`].
    serving_threads: Mutex<Option<ServingThreads>>,
}

impl ScriptHost {
    /// An empty host (it answers 404 until [`ScriptHost::apply`]) whose scripts reach the
    /// binding-worker of `options` (its `account` is not used: every deployment names its
    /// own) and whose default hosts end in `workers_domain` ([`DEFAULT_WORKERS_DOMAIN`]).
    /// Scripts' output lines and request outcomes go to `output` (a
    /// [`TailHub`](crate::TailHub) for `wvpc tail`).
    pub fn new(
        options: &RuntimeOptions,
        workers_domain: &str,
        output: Arc<dyn ScriptOutput>,
    ) -> Result<ScriptHost, RuntimeError> {
        let domain = workers_domain.trim_matches('.').to_ascii_lowercase();
        let valid = !domain.is_empty()
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !valid {
            return Err(RuntimeError::WorkersDomain(workers_domain.to_owned()));
        }
        let table = Table {
            any_host: None,
            routes: Arc::new(RouteTable::build(&domain, [])),
            scripts: HashMap::new(),
        };
        Self::with_table(options, domain, output, |_, _| Ok((table, HashMap::new())))
    }

    /// The host of `wvpc dev`: `config`'s script, served whatever the `Host`. Blocking: it
    /// compiles the component.
    pub(crate) fn single(
        config: &ScriptConfig,
        options: &RuntimeOptions,
        output: Arc<dyn ScriptOutput>,
    ) -> Result<ScriptHost, RuntimeError> {
        let host = Self::with_table(
            options,
            DEFAULT_WORKERS_DOMAIN.to_owned(),
            output,
            |engine, bindings| {
                let (bytes, pre) = crate::script::load(engine, &config.component()?)?;
                let one_request_per_instance =
                    crate::script::serves_one_request_per_instance(&bytes);
                let loaded =
                    bindings.local_script(&options.account, config, &pre, one_request_per_instance);
                let table = Table {
                    any_host: Some(loaded),
                    routes: Arc::new(RouteTable::build(DEFAULT_WORKERS_DOMAIN, [])),
                    scripts: HashMap::new(),
                };
                // The bytes read now, not the file: a fresh engine must not pick up an edit.
                let module = ModuleSource::Bytes(bytes.into());
                let compiled = HashMap::from([(
                    LOCAL_VERSION.to_owned(),
                    Compiled {
                        pre,
                        module,
                        one_request_per_instance,
                    },
                )]);
                Ok((table, compiled))
            },
        )?;
        tracing::info!(
            script = %config.name,
            main = %config.main.display(),
            bindings = ?config.vpc_services.iter().map(|b| &b.binding).collect::<Vec<_>>(),
            networks = ?config.vpc_networks.iter().map(|b| &b.binding).collect::<Vec<_>>(),
            limits = ?config.limits,
            "script loaded"
        );
        Ok(host)
    }

    /// `wvpc dev` after an edit: `config`'s script, now built as the component at `wasm`,
    /// replaces the one served (requests in flight finish on the old one). Compiled off
    /// the async threads. `Err` leaves the old script served.
    pub(crate) async fn replace_single(
        &self,
        config: &ScriptConfig,
        wasm: &std::path::Path,
    ) -> Result<(), RuntimeError> {
        let mut state = self.deploy.lock().await;
        let engine = self.engine();
        let path = wasm.to_owned();
        let (bytes, pre) = tokio::task::spawn_blocking(move || crate::script::load(&engine, &path))
            .await
            .map_err(|e| RuntimeError::Engine(format!("compiling failed: {e}")))??;
        let current = self.current();
        let Some(old) = current.any_host.as_ref() else {
            return Err(RuntimeError::Engine(
                "only the host of `wvpc dev` replaces its script".into(),
            ));
        };
        let one_request_per_instance = crate::script::serves_one_request_per_instance(&bytes);
        let bindings = Bindings {
            client: &self.client,
            output: &self.output,
            metrics: self.metrics.as_ref(),
        };
        let loaded = bindings.local_script(
            &old.bindings.account,
            config,
            &pre,
            one_request_per_instance,
        );
        state.compiled.insert(
            LOCAL_VERSION.to_owned(),
            Compiled {
                pre,
                module: ModuleSource::Bytes(bytes.into()),
                one_request_per_instance,
            },
        );
        let table = Table {
            any_host: Some(loaded),
            routes: current.routes.clone(),
            scripts: HashMap::new(),
        };
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        tracing::info!(script = %config.name, main = %config.main.display(), "script replaced");
        Ok(())
    }

    fn with_table(
        options: &RuntimeOptions,
        workers_domain: String,
        output: Arc<dyn ScriptOutput>,
        table: impl FnOnce(
            &Engine,
            &Bindings<'_>,
        ) -> Result<(Table, HashMap<String, Compiled>), RuntimeError>,
    ) -> Result<ScriptHost, RuntimeError> {
        let engine = crate::engine::shared_engine().map_err(RuntimeError::Engine)?;
        let client = start_binding_client(options)?;
        let bindings = Bindings {
            client: &client,
            output: &output,
            metrics: options.metrics.as_ref(),
        };
        let (table, compiled) = table(&engine, &bindings)?;
        Ok(ScriptHost {
            engine: Mutex::new(engine),
            client,
            output,
            metrics: options.metrics.clone(),
            workers_domain,
            table: RwLock::new(Arc::new(table)),
            deploy: tokio::sync::Mutex::new(DeployState {
                compiled,
                refused: HashMap::new(),
            }),
            pool: PoolWatch::default(),
            serving_threads: Mutex::new(None),
        })
    }

    /// Serves HTTP/1.1 (keep-alive, `TCP_NODELAY`) on `listener` until the future is
    /// dropped, routing each request by its host and path, with the default
    /// [`ServerLimits`]. Connections already accepted keep running on the host's serving
    /// threads (one per core, started by the first call; see [`crate::serving_threads`]).
    /// Accept errors are logged and do not end the loop: it fails only when those threads
    /// cannot be started. While it
    /// serves, the instance pool is given back after bursts ([`Self::set_pool_release`]).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        self.serve_with(listener, ServerLimits::default()).await
    }

    /// [`ScriptHost::serve`] with these timeouts and connection cap.
    pub async fn serve_with(
        self: Arc<Self>,
        listener: TcpListener,
        limits: ServerLimits,
    ) -> std::io::Result<()> {
        let _watching = crate::pool::watch(&self);
        let runtimes = {
            let mut threads = self
                .serving_threads
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if threads.is_none() {
                *threads = Some(ServingThreads::start(&self.client)?);
            }
            threads
                .as_ref()
                .map(ServingThreads::runtimes)
                .unwrap_or_default()
        };
        crate::serving::serve(self, listener, limits, runtimes).await;
        Ok(())
    }

    /// When the memory the instance pool keeps after a burst is given back
    /// ([`PoolRelease::default`] unless set).
    pub fn set_pool_release(&self, release: PoolRelease) {
        self.pool.set_release(release);
    }

    /// Figures of the instance pool; `None` when the engine runs without one.
    pub fn pool_stats(&self) -> Option<PoolStats> {
        self.pool.stats(&self.engine())
    }

    /// Changes each time the instance pool has been given back (the count of releases).
    pub fn pool_releases(&self) -> tokio::sync::watch::Receiver<u64> {
        self.pool.releases()
    }

    /// Instances of the served versions that are idle, kept for their version's next
    /// requests (`limits.isolation = "instance"`).
    pub fn idle_instances(&self) -> usize {
        let table = self.current();
        table
            .any_host
            .iter()
            .chain(table.scripts.values().map(|served| &served.loaded))
            .map(|loaded| loaded.instances.idle())
            .sum()
    }

    pub(crate) fn pool_watch(&self) -> &PoolWatch {
        &self.pool
    }

    /// The engine new versions are compiled on.
    pub(crate) fn engine(&self) -> Engine {
        self.engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Moves every script to a fresh engine, whose instance pool is empty, and makes it the
    /// engine of later deployments. Requests in flight finish on the old one, whose pool is
    /// freed after the last of them. `Err` (why) leaves everything as it was.
    pub(crate) async fn move_to_fresh_engine(&self) -> Result<(), String> {
        let mut state = self.deploy.lock().await;
        let engine = crate::engine::fresh_engine()?;
        let mut compiled = HashMap::with_capacity(state.compiled.len());
        for (etag, old) in &state.compiled {
            let bytes = old
                .module
                .bytes()
                .await
                .map_err(|e| format!("cannot get the module of {etag} again: {e}"))?;
            let fresh = engine.clone();
            // From wasmtime's on-disk cache when it has the component: no compilation.
            let pre = tokio::task::spawn_blocking(move || crate::script::compile(&fresh, &bytes))
                .await
                .map_err(|e| format!("compiling {etag} failed: {e}"))?
                .map_err(|e| format!("compiling {etag} failed: {e}"))?;
            let module = old.module.clone();
            let one_request_per_instance = old.one_request_per_instance;
            compiled.insert(
                etag.clone(),
                Compiled {
                    pre,
                    module,
                    one_request_per_instance,
                },
            );
        }
        let moved = |script: &Arc<LoadedScript>| -> Arc<LoadedScript> {
            match compiled.get(script.etag.as_ref()) {
                Some(c) => Arc::new(LoadedScript {
                    pre: c.pre.clone(),
                    etag: script.etag.clone(),
                    bindings: script.bindings.clone(),
                    // The idle instances stay with the old engine's version and go with it.
                    instances: InstancePool::default(),
                    one_request_per_instance: script.one_request_per_instance,
                }),
                // Not compiled by this host (cannot happen): it stays where it is.
                None => script.clone(),
            }
        };
        let current = self.current();
        let table = Table {
            any_host: current.any_host.as_ref().map(moved),
            routes: current.routes.clone(),
            scripts: current
                .scripts
                .iter()
                .map(|(key, served)| {
                    let mut served = served.clone();
                    served.loaded = moved(&served.loaded);
                    (key.clone(), served)
                })
                .collect(),
        };
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        state.compiled = compiled;
        *self.engine.lock().unwrap_or_else(|p| p.into_inner()) = engine.clone();
        crate::engine::make_current(&engine);
        Ok(())
    }

    /// The workers domain (`workers.localhost`).
    pub fn workers_domain(&self) -> &str {
        &self.workers_domain
    }

    /// Where requests and binding calls are counted, if anywhere.
    pub(crate) fn metrics(&self) -> Option<&Arc<RuntimeMetrics>> {
        self.metrics.as_ref()
    }

    /// The script version serving `host` + `path` (see [`RouteTable::lookup`]).
    pub(crate) fn resolve(&self, host: &str, path: &str) -> Option<Arc<LoadedScript>> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        if let Some(script) = &table.any_host {
            return Some(script.clone());
        }
        let key = table.routes.lookup(host, path)?;
        table.scripts.get(key).map(|served| served.loaded.clone())
    }

    /// The script that serves `host` + `path`, if any.
    pub fn route(&self, host: &str, path: &str) -> Option<ScriptKey> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.routes.lookup(host, path).cloned()
    }

    /// Every script served, in key order.
    pub fn served(&self) -> Vec<ServedScript> {
        let table = self.current();
        let mut served: Vec<ServedScript> = table
            .scripts
            .iter()
            .map(|(key, s)| ServedScript {
                key: key.clone(),
                version: s.identity.version.clone(),
                etag: s.identity.etag.clone(),
            })
            .collect();
        served.sort_by(|a, b| a.key.cmp(&b.key));
        served
    }

    fn current(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes `deployments` the set of scripts served: new scripts and versions are loaded,
    /// scripts not in the set stop being served, and the routing table is rebuilt, all
    /// swapped in at once when every new version is ready. Requests in flight finish on the
    /// version they started on. A deployment that cannot be loaded leaves its script on its
    /// previous version (or unserved, for a new script); it is logged once and reported
    /// every time. Calls are serialized; applying the same set again changes nothing.
    pub async fn apply(&self, deployments: Vec<Deployment>) -> ApplyReport {
        let mut state = self.deploy.lock().await;
        let current = self.current();
        let mut report = ApplyReport::default();
        let mut next: HashMap<ScriptKey, Served> = HashMap::with_capacity(deployments.len());
        let mut refused = HashMap::new();
        let mut seen = HashSet::with_capacity(deployments.len());

        for deployment in deployments {
            let key = deployment.key();
            if !seen.insert(key.clone()) {
                tracing::warn!(
                    script = %key,
                    version = %deployment.version,
                    "the script appears twice in one set of deployments; ignoring the second"
                );
                continue;
            }
            let old = current.scripts.get(&key);
            match self.load(&mut state, &mut refused, &deployment, old).await {
                Ok(served) => {
                    if old.is_none_or(|o| !Arc::ptr_eq(&o.loaded, &served.loaded)) {
                        tracing::info!(
                            script = %key,
                            version = %deployment.version,
                            etag = %deployment.etag,
                            bindings = ?deployment.bindings.keys().collect::<Vec<_>>(),
                            "script version loaded"
                        );
                        report.deployed.push((key.clone(), deployment.version));
                    }
                    next.insert(key, served);
                }
                Err(error) => {
                    if let Some(old) = old {
                        next.insert(key.clone(), old.clone());
                    }
                    report.failed.push(FailedDeployment {
                        key,
                        version: deployment.version,
                        error,
                        still_serving: old.map(|o| o.identity.version.clone()),
                    });
                }
            }
        }

        for key in current.scripts.keys() {
            if !next.contains_key(key) {
                tracing::info!(script = %key, "script removed");
                report.removed.push(key.clone());
            }
        }
        report.removed.sort();

        let routes = Arc::new(RouteTable::build(
            &self.workers_domain,
            next.iter().map(|(key, served)| ScriptRoutes {
                key,
                subdomain: &served.subdomain,
                workers_dev: served.workers_dev,
                routes: &served.routes,
            }),
        ));
        for conflict in routes.conflicts() {
            if !current.routes.conflicts().contains(conflict) {
                tracing::warn!(
                    claimed = %conflict.claimed,
                    served_by = %conflict.served_by,
                    ignored = %conflict.ignored,
                    "two scripts claim the same host or route; the first serves it"
                );
            }
        }
        report.conflicts = routes.conflicts().to_vec();

        let in_use: HashSet<&str> = next.values().map(|s| s.identity.etag.as_str()).collect();
        state
            .compiled
            .retain(|etag, _| in_use.contains(etag.as_str()));
        state.refused = refused;

        let table = Arc::new(Table {
            any_host: None,
            routes,
            scripts: next,
        });
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = table;
        report
    }

    /// Loads one deployment, or says why not: logged the first time, and remembered in
    /// `refused` unless retrying may help. `old` is the script's current version.
    async fn load(
        &self,
        state: &mut DeployState,
        refused: &mut HashMap<ScriptKey, Refusal>,
        deployment: &Deployment,
        old: Option<&Served>,
    ) -> Result<Served, DeploymentError> {
        let key = deployment.key();
        let identity = VersionIdentity::of(deployment);
        if let Some(refusal) = state.refused.remove(&key)
            && refusal.identity == identity
            && refusal.routes == deployment.routes
        {
            let error = refusal.error.clone();
            refused.insert(key, refusal);
            return Err(error);
        }
        let error = match self.prepare(state, deployment, old).await {
            Ok(served) => return Ok(served),
            Err(error) => error,
        };
        match old {
            Some(old) => tracing::error!(
                script = %key,
                version = %deployment.version,
                error = %error,
                "deployment not loaded; version {} keeps serving",
                old.identity.version
            ),
            None => tracing::error!(
                script = %key,
                version = %deployment.version,
                error = %error,
                "deployment not loaded; the script is not served"
            ),
        }
        if !matches!(error, DeploymentError::Module(_)) {
            refused.insert(
                key,
                Refusal {
                    identity,
                    routes: deployment.routes.clone(),
                    error: error.clone(),
                },
            );
        }
        Err(error)
    }

    /// Validates and loads one deployment; `old` is the script's current version.
    async fn prepare(
        &self,
        state: &mut DeployState,
        deployment: &Deployment,
        old: Option<&Served>,
    ) -> Result<Served, DeploymentError> {
        let identity = VersionIdentity::of(deployment);
        let routes = deployment
            .routes
            .iter()
            .map(|r| RoutePattern::parse(r))
            .collect::<Result<Vec<_>, _>>()?;
        let served = |loaded| Served {
            loaded,
            identity: identity.clone(),
            subdomain: deployment.subdomain.clone(),
            workers_dev: deployment.workers_dev,
            routes,
        };
        if let Some(old) = old
            && old.identity == identity
        {
            return Ok(served(old.loaded.clone()));
        }
        let limits = Limits::from_section(&deployment.limits)?;
        let (pre, one_request_per_instance) = self.component(state, deployment).await?;
        let etag = deployment.etag.as_str().into();
        let bindings = Bindings {
            client: &self.client,
            output: &self.output,
            metrics: self.metrics.as_ref(),
        };
        let loaded = LoadedScript {
            pre,
            etag,
            bindings: Arc::new(bindings.script(
                &deployment.account_id,
                &deployment.script,
                &deployment.version,
                &deployment.bindings,
                &deployment.networks,
                limits,
            )),
            instances: InstancePool::default(),
            one_request_per_instance,
        };
        Ok(served(Arc::new(loaded)))
    }

    /// The compiled component of `deployment`'s etag: cached, or fetched and compiled on a
    /// blocking thread.
    async fn component(
        &self,
        state: &mut DeployState,
        deployment: &Deployment,
    ) -> Result<(ScriptPre<HostState>, bool), DeploymentError> {
        if let Some(compiled) = state.compiled.get(&deployment.etag) {
            return Ok((compiled.pre.clone(), compiled.one_request_per_instance));
        }
        let bytes = deployment
            .module
            .bytes()
            .await
            .map_err(|e| DeploymentError::Module(e.into()))?;
        let engine = self.engine();
        let one_request_per_instance = crate::script::serves_one_request_per_instance(&bytes);
        let pre = tokio::task::spawn_blocking(move || crate::script::compile(&engine, &bytes))
            .await
            .map_err(|e| ComponentError::Engine(format!("compiling failed: {e}")))??;
        let compiled = Compiled {
            pre: pre.clone(),
            module: deployment.module.clone(),
            one_request_per_instance,
        };
        state.compiled.insert(deployment.etag.clone(), compiled);
        Ok((pre, one_request_per_instance))
    }
}

/// What every script of the host shares, to build a script's [`ScriptBindings`] from.
struct Bindings<'a> {
    client: &'a BindingClient,
    output: &'a Arc<dyn ScriptOutput>,
    metrics: Option<&'a Arc<RuntimeMetrics>>,
}

impl Bindings<'_> {
    /// `wvpc dev`'s script: `config`'s, compiled as `pre`, for `account`.
    fn local_script(
        &self,
        account: &str,
        config: &ScriptConfig,
        pre: &ScriptPre<HostState>,
        one_request_per_instance: bool,
    ) -> Arc<LoadedScript> {
        let services = config
            .vpc_services
            .iter()
            .map(|b| (b.binding.clone(), b.service_id))
            .collect();
        let networks = config
            .vpc_networks
            .iter()
            .map(|b| (b.binding.clone(), b.network))
            .collect();
        Arc::new(LoadedScript {
            pre: pre.clone(),
            etag: LOCAL_VERSION.into(),
            bindings: Arc::new(self.script(
                account,
                &config.name,
                LOCAL_VERSION,
                &services,
                &networks,
                config.limits,
            )),
            instances: InstancePool::default(),
            one_request_per_instance,
        })
    }

    fn script(
        &self,
        account: &str,
        script: &str,
        version: &str,
        services: &BTreeMap<String, Uuid>,
        networks: &BTreeMap<String, wvpc_schemas::NetworkTarget>,
        limits: Limits,
    ) -> ScriptBindings {
        ScriptBindings {
            script: script.into(),
            account: account.into(),
            version: version.into(),
            // Only this script's own bindings: a name it does not declare is not there.
            services: services
                .iter()
                .map(|(binding, id)| (binding.clone(), id.hyphenated().to_string()))
                .collect(),
            networks: networks
                .iter()
                .map(|(binding, network)| (binding.clone(), *network))
                .collect(),
            client: self.client.clone(),
            limits,
            output: self.output.clone(),
            metrics: self.metrics.map(|metrics| {
                ScriptProbe::new(
                    metrics,
                    account,
                    script,
                    services.keys().chain(networks.keys()),
                )
            }),
        }
    }
}
