//! One runtime process (`wvpc runtime`): a [`ScriptHost`] serving every script deployed in
//! the directory, kept current by a watcher, and a control listener where `wvpc tail`
//! follows scripts' output.
//!
//! - The watcher reads the directory's change counter every [`POLL_INTERVAL`]; when it moved,
//!   it reads every deployed script in one transaction and applies the whole set. Module bytes
//!   are read only for content hashes the host has not compiled. A directory that cannot be
//!   read leaves the host serving what it has; the next successful read catches up.
//! - The control listener serves `GET /tail?account=…&script=…` (JSON lines, one event each)
//!   and `GET /status` (the revision and the versions served), both only to callers with the
//!   token derived from the platform secret ([`TAIL_TOKEN_PURPOSE`]).
//! - The runtime announces its control address in the directory while it runs
//!   ([`Directory::announce_runtime`]) and withdraws it when it stops.
//! - With `--metrics`, an operations listener serves the scripts' metrics
//!   ([`RuntimeMetrics`]) and their status; non-loopback readers of the status need an
//!   account's admin token from the directory.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::broadcast;
use uuid::Uuid;
use wvpc_directory::tail::TAIL_PATH;
use wvpc_directory::{DeployedScript, Directory};
use wvpc_listener::{HttpServer, ServerLimits};
use wvpc_observe::ops::Ops;
use wvpc_runtime::{
    Deployment, ModuleSource, PlatformSecret, RuntimeMetrics, RuntimeOptions, ScriptHost,
    ScriptOutput, TailHub,
};

use crate::PlatformError;
use crate::iris_node::local_addr;
use crate::iris_status::{admin_token_check, start_ops};

/// How often the watcher looks at the directory's change counter.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// What the control listener's bearer token is derived for
/// ([`PlatformSecret::derive_token`]).
pub const TAIL_TOKEN_PURPOSE: &str = "runtime control";
/// How often the runtime refreshes its announcement (well within
/// [`wvpc_directory::RUNTIME_TTL`]).
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(5);

/// How a runtime process is set up.
#[derive(Debug, Clone)]
pub struct RuntimeNodeOptions {
    /// The HTTP listener scripts are served on.
    pub listen: SocketAddr,
    /// The control listener (`wvpc tail`, status).
    pub control_listen: SocketAddr,
    /// Binding-workers, capnp (one or more).
    pub binding_workers: Vec<SocketAddr>,
    /// The platform secret (binding-worker handshake, control token).
    pub secret: PlatformSecret,
    /// Scripts are served at `<script>.<subdomain>.<workers_domain>`.
    pub workers_domain: String,
    /// Timeouts and connection cap of the HTTP, control and metrics listeners (each has its
    /// own cap).
    pub server: ServerLimits,
    /// Where to serve the operations listener (`--metrics`): Prometheus metrics and the
    /// status page of the scripts served; `None`: none.
    pub metrics_listen: Option<SocketAddr>,
}

/// A running runtime. Dropping it stops serving and withdraws it from the directory.
pub struct RuntimeNode {
    /// Where scripts are served.
    pub addr: SocketAddr,
    /// The control listener.
    pub control_addr: SocketAddr,
    /// The operations listener, if asked for.
    pub metrics_addr: Option<SocketAddr>,
    /// The host (what it serves).
    pub host: Arc<ScriptHost>,
    revision: Arc<AtomicU64>,
    node_id: Uuid,
    directory: Arc<Directory>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RuntimeNode {
    /// Loads every deployed script, then serves them on `options.listen`.
    pub async fn start(
        directory: Arc<Directory>,
        options: RuntimeNodeOptions,
    ) -> Result<RuntimeNode, PlatformError> {
        let hub = Arc::new(TailHub::default());
        let output: Arc<dyn ScriptOutput> = hub.clone();
        let metrics = options
            .metrics_listen
            .map(|_| Arc::new(RuntimeMetrics::default()));
        let runtime_options = RuntimeOptions {
            binding_workers: options.binding_workers.clone(),
            binding_secret: Some(options.secret.clone()),
            account: String::new(),
            exchange_tap: None,
            metrics: metrics.clone(),
        };
        let host = Arc::new(
            ScriptHost::new(&runtime_options, &options.workers_domain, output).map_err(
                |source| PlatformError::Script {
                    script: "(runtime)".into(),
                    source,
                },
            )?,
        );
        let revision = Arc::new(AtomicU64::new(0));
        // The first load, before listening: a restarted runtime serves at once.
        match load(&directory).await {
            Ok((seen, deployments)) => {
                apply(&host, deployments).await;
                revision.store(seen, Ordering::SeqCst);
            }
            Err(err) => tracing::warn!(error = %err, "cannot read the deployed scripts yet"),
        }
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| PlatformError::Listen {
                what: "the runtime's HTTP listener (--listen)",
                addr: options.listen,
                source,
            })?;
        let addr = local_addr(&listener)?;
        let control = tokio::net::TcpListener::bind(options.control_listen)
            .await
            .map_err(|source| PlatformError::Listen {
                what: "the runtime's control listener (--control-listen)",
                addr: options.control_listen,
                source,
            })?;
        let control_addr = local_addr(&control)?;
        let node_id = Uuid::new_v4();

        let mut tasks = Vec::new();
        let metrics_addr = match (options.metrics_listen, metrics) {
            (Some(addr), Some(metrics)) => {
                let ops = Ops::new("runtime", wvpc_observe::ops::host_name())
                    .with(metrics)
                    .with_token_check(admin_token_check(directory.clone()));
                let (local, task) = start_ops(addr, ops, options.server.clone()).await?;
                tasks.push(task);
                Some(local)
            }
            _ => None,
        };
        let serving = host.clone();
        let server = options.server.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(err) = serving.serve_with(listener, server).await {
                tracing::error!(error = %err, "runtime HTTP listener failed");
            }
        }));
        tasks.push(tokio::spawn(watch(
            directory.clone(),
            host.clone(),
            revision.clone(),
        )));
        tasks.push(tokio::spawn(announce(
            directory.clone(),
            node_id,
            control_addr,
        )));
        let control_state = Arc::new(Control {
            token: options.secret.derive_token(TAIL_TOKEN_PURPOSE),
            hub,
            host: host.clone(),
            revision: revision.clone(),
        });
        tasks.push(tokio::spawn(serve_control(
            control,
            control_state,
            options.server.clone(),
        )));
        Ok(RuntimeNode {
            addr,
            control_addr,
            metrics_addr,
            host,
            revision,
            node_id,
            directory,
            tasks,
        })
    }

    /// The directory revision the served set reflects.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    /// Stops serving and withdraws the announcement.
    pub async fn stop(mut self) {
        self.abort();
        let (directory, node_id) = (self.directory.clone(), self.node_id);
        let _ = tokio::task::spawn_blocking(move || directory.withdraw_runtime(node_id)).await;
    }

    fn abort(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for RuntimeNode {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Reads the revision and every deployed script.
async fn load(directory: &Arc<Directory>) -> Result<(u64, Vec<Deployment>), PlatformError> {
    let dir = directory.clone();
    let snapshot = tokio::task::spawn_blocking(move || dir.deployment_snapshot())
        .await
        .map_err(|join| PlatformError::Io {
            what: "reading the deployed scripts",
            source: std::io::Error::other(join),
        })??;
    let deployments = snapshot
        .scripts
        .into_iter()
        .map(|script| deployment(directory, script))
        .collect();
    Ok((snapshot.revision, deployments))
}

/// What the host needs of a deployed script; the module is read only if not compiled yet.
fn deployment(directory: &Arc<Directory>, script: DeployedScript) -> Deployment {
    let (dir, etag) = (directory.clone(), script.etag.clone());
    let module = ModuleSource::Fetch(Arc::new(move || {
        let (dir, etag) = (dir.clone(), etag.clone());
        Box::pin(async move {
            let read = tokio::task::spawn_blocking(move || dir.module_by_etag(&etag)).await??;
            read.map(Bytes::from)
                .ok_or_else(|| "the module is no longer in the directory".into())
        })
    }));
    Deployment {
        account_id: script.account_id,
        subdomain: script.subdomain,
        script: script.name,
        version: script.version_id.to_string(),
        etag: script.etag,
        module,
        bindings: script
            .bindings
            .iter()
            .filter_map(|b| Some((b.name.clone(), b.service_id?)))
            .collect::<BTreeMap<_, _>>(),
        networks: script
            .bindings
            .iter()
            .filter_map(|b| Some((b.name.clone(), b.network_target()?)))
            .collect::<BTreeMap<_, _>>(),
        limits: script.limits,
        routes: script.routes,
        workers_dev: script.workers_dev,
    }
}

async fn apply(host: &ScriptHost, deployments: Vec<Deployment>) {
    let count = deployments.len();
    let report = host.apply(deployments).await;
    for (key, version) in &report.deployed {
        tracing::info!(script = %key, version, "serving a new version");
    }
    for key in &report.removed {
        tracing::info!(script = %key, "no longer served");
    }
    tracing::debug!(scripts = count, "deployed scripts applied");
}

/// Follows the directory: a changed revision reloads and applies every deployed script.
async fn watch(directory: Arc<Directory>, host: Arc<ScriptHost>, revision: Arc<AtomicU64>) {
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        let dir = directory.clone();
        let current = match tokio::task::spawn_blocking(move || dir.revision()).await {
            Ok(Ok(current)) => current,
            Ok(Err(err)) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %err, "directory unreadable; serving what is loaded");
                }
                continue;
            }
            Err(_) => continue,
        };
        if current == revision.load(Ordering::SeqCst) {
            continue;
        }
        match load(&directory).await {
            Ok((seen, deployments)) => {
                if std::mem::replace(&mut failing, false) {
                    tracing::info!("directory readable again");
                }
                apply(&host, deployments).await;
                revision.store(seen, Ordering::SeqCst);
            }
            Err(err) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %err, "directory unreadable; serving what is loaded");
                }
            }
        }
    }
}

/// Keeps this runtime's announcement fresh.
async fn announce(directory: Arc<Directory>, node_id: Uuid, control_addr: SocketAddr) {
    let mut ticker = tokio::time::interval(ANNOUNCE_INTERVAL);
    loop {
        ticker.tick().await;
        let dir = directory.clone();
        match tokio::task::spawn_blocking(move || dir.announce_runtime(node_id, control_addr)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(error = %err, "cannot announce this runtime"),
            Err(_) => {}
        }
    }
}

// === control listener ===

struct Control {
    token: String,
    hub: Arc<TailHub>,
    host: Arc<ScriptHost>,
    revision: Arc<AtomicU64>,
}

type ControlBody = BoxBody<Bytes, Infallible>;

async fn serve_control(
    listener: tokio::net::TcpListener,
    control: Arc<Control>,
    limits: ServerLimits,
) {
    let server = HttpServer::new("runtime control", limits);
    wvpc_listener::serve(listener, server, move |request| {
        let control = control.clone();
        async move { control.handle(&request) }
    })
    .await;
}

impl Control {
    fn handle(&self, request: &Request<Incoming>) -> Response<ControlBody> {
        let authorized = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|token| constant_time_eq(token.as_bytes(), self.token.as_bytes()));
        if !authorized {
            return text(
                StatusCode::UNAUTHORIZED,
                "this control listener needs the platform token\n",
            );
        }
        match request.uri().path() {
            TAIL_PATH => {
                let query: BTreeMap<String, String> =
                    form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
                        .into_owned()
                        .collect();
                let (Some(account), Some(script)) = (query.get("account"), query.get("script"))
                else {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "tail needs ?account=<id>&script=<name>\n",
                    );
                };
                self.tail(self.hub.subscribe(account, script))
            }
            "/status" => {
                let scripts: Vec<_> = self
                    .host
                    .served()
                    .into_iter()
                    .map(|s| {
                        serde_json::json!({
                            "account_id": s.key.account_id,
                            "script": s.key.script,
                            "version": s.version,
                            "etag": s.etag,
                        })
                    })
                    .collect();
                let body = serde_json::json!({
                    "revision": self.revision.load(Ordering::SeqCst),
                    "scripts": scripts,
                });
                json(body.to_string())
            }
            _ => text(StatusCode::NOT_FOUND, "unknown control path\n"),
        }
    }

    /// The events of one subscription as JSON lines, until the client goes away.
    fn tail(&self, events: broadcast::Receiver<wvpc_runtime::TailEvent>) -> Response<ControlBody> {
        let stream = futures::stream::unfold(events, |mut events| async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        let mut line = serde_json::to_vec(&event).unwrap_or_default();
                        line.push(b'\n');
                        return Some((Ok(Frame::data(Bytes::from(line))), events));
                    }
                    // A slow follower misses the oldest lines rather than slowing scripts.
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "a tail follower fell behind");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        let mut response = Response::new(StreamBody::new(stream).boxed());
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        response
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ControlBody> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *response.status_mut() = status;
    response
}

fn json(body: String) -> Response<ControlBody> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Compares tokens without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
