//! The binding-worker: the middle of the request path.
//!
//! ```text
//! runtime ──capnp VpcBinding.fetch──▶ binding-worker ──HTTP/2 CONNECT──▶ iris ──tunnel──▶ origin
//! ```
//!
//! Runtimes call `VpcBinding.fetch` (`schemas/binding.capnp`). For each call the worker
//! checks the URL (absolute `http`/`https`), hands back the request-body stream at once, then
//! sends the request as HTTP/1.1 to the origin over a pooled connection for the same
//! (service, scheme, host), or over a fresh CONNECT stream through iris (with TLS for `https`:
//! SNI = the URL's host, certificate verified as the service's `tls_settings` say, which iris
//! sends in its CONNECT answer). The response head
//! goes to `ResponseReceiver.deliver`, the body streams into the `ByteStream` it returns.
//! Failures are codes (`WireError`), never text: iris's `Proxy-Status` answers are decoded
//! back into the code, origin failures are classified here.
//!
//! For a service binding, routing uses only the service id; the URL's host becomes `Host`
//! (without the URL's port, which is ignored), the scheme picks the service's port at iris.
//! For a network binding ([`BindingTarget::Network`]: `tunnelId` / `networkId` in the
//! context) the URL's host and port are the destination, named in the CONNECT's authority.
//!
//! `VpcBinding.connect` opens a raw TCP socket the same way (`wvpc-scheme: tcp`) and pipes
//! its bytes both ways, half-closes and resets included (see `socket`).
//!
//! Several iris nodes ([`IrisAddress`]: addresses, or names standing for every address they
//! resolve to, looked up again while the worker runs): CONNECTs go round-robin over the ones
//! that are up, one that never got an answer head because of its node is retried on another,
//! a node that cannot be dialled is skipped while it is re-dialled in the background (see
//! `iris_client`).
//!
//! With a [`PlatformSecret`] configured, every accepted runtime connection must pass the
//! mutual handshake of [`wvpc_schemas::binding_auth`] before capnp starts; one that fails is
//! logged and closed.
//!
//! Threads: capnp-rpc is `!Send`, so the capnp server runs on its own thread (a current-thread
//! runtime and a `LocalSet`). HTTP work — the multiplexed HTTP/2 connections to iris and the
//! origin connections — runs on that same thread by default, so a fetch wakes no other
//! thread (`proxy_threads` 0); or on a multi-threaded tokio runtime the worker owns
//! (`proxy_threads` > 0) or the caller gives (`proxy_runtime`). Bodies stream through bounded
//! channels; nothing buffers a whole body.
//!
//! Stopping: [`BindingWorkerHandle::shutdown`] drops everything at once;
//! [`BindingWorkerHandle::drain`] first stops accepting connections and fetches, and lets the
//! fetches in flight (their response bodies included) finish within a grace period.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use wvpc_binding_worker::{BindingWorker, BindingWorkerConfig};
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let iris = vec!["127.0.0.1:7000".parse().unwrap(), "127.0.0.1:7010".parse().unwrap()];
//! let worker = BindingWorker::start(listener, BindingWorkerConfig::with_iris_nodes(iris))?;
//! println!("runtimes connect to {}", worker.local_addr());
//! worker.shutdown();
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod call_decode;
mod iris_address;
mod iris_client;
mod metrics;
mod origin;
mod origin_tls;
mod request;
mod request_body;
mod rpc;
mod socket;

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;
use wvpc_listener::{Acceptor, Admitted, RefuseWith};
use wvpc_schemas::binding_auth::handshake_as_binding_worker;
use wvpc_schemas::binding_capnp::vpc_binding;

pub use call_decode::{DecodedConnect, DecodedFetch, decode_connect_call, decode_fetch_call};
pub use iris_address::{IrisAddress, IrisAddressError};
pub use metrics::BindingWorkerMetrics;
pub use request::BindingTarget;
pub use wvpc_schemas::PlatformSecret;
pub use wvpc_schemas::binding_auth::HANDSHAKE_TIMEOUT;

use crate::iris_client::{IrisClient, IrisNodesView, IrisSettings};
use crate::origin::{OriginPool, OriginSettings, Proxy};
use crate::origin_tls::OriginTls;
use crate::rpc::VpcBindingServer;

/// How long a pooled origin connection is reused after its CONNECT, by default: renewing a
/// connection every few seconds costs one stream and one origin handshake, and lets route
/// changes and connector drains reach steady traffic between two requests.
pub const DEFAULT_ROUTE_LEASE: Duration = Duration::from_secs(5);

/// How long dialling an iris node may take, by default: a TCP connect on the platform's
/// network takes milliseconds or is refused at once; 3 s allows one lost SYN.
pub const DEFAULT_IRIS_DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// How often iris names are looked up again, by default.
pub const DEFAULT_IRIS_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// Settings of a binding-worker. Build with [`BindingWorkerConfig::new`] or
/// [`BindingWorkerConfig::with_iris_nodes`], then adjust fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BindingWorkerConfig {
    /// The iris nodes' CONNECT listeners (at least one value; a name counts as every
    /// address it resolves to).
    pub iris: Vec<IrisAddress>,
    /// Bound on dialling an iris node (TCP connect and HTTP/2 handshake): a node that does
    /// not answer in time is skipped and re-dialled in the background. Default
    /// [`DEFAULT_IRIS_DIAL_TIMEOUT`]; at most `connect_timeout`.
    pub iris_dial_timeout: Duration,
    /// How often iris names are looked up again (they also are, at most once a second,
    /// when a node cannot be dialled). Default [`DEFAULT_IRIS_RESOLVE_INTERVAL`].
    pub iris_resolve_interval: Duration,
    /// The secret runtimes must prove they hold before any call (and that this worker proves
    /// it holds). `None`: no handshake, for tests and one-process use; the `wvpc
    /// binding-worker` command always sets one.
    pub secret: Option<PlatformSecret>,
    /// Bound on a runtime's handshake. Default [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// Runtime for the HTTP work. `None`: as `proxy_threads` says.
    pub proxy_runtime: Option<Handle>,
    /// Without a `proxy_runtime`, the threads of a multi-threaded runtime the worker starts
    /// for the HTTP work. 0 (the default): none; the RPC thread does the HTTP work too, which
    /// costs least per fetch (no hand-over between threads) and uses one core. More for a
    /// binding-worker that needs more than a core (or run more binding-workers: runtimes
    /// spread their fetches over them).
    pub proxy_threads: usize,
    /// Bound on iris's answer to a CONNECT (DNS and the tunnel dial included). Default 30 s.
    /// A CONNECT that timed out is not retried on another node.
    pub connect_timeout: Duration,
    /// From the end of the request body to the origin's response head
    /// (`http_response_timeout`). Default 100 s.
    pub response_timeout: Duration,
    /// Longest gap between two pieces of an origin's response body; longer fails the body
    /// with `connection_read_timeout`. Default 100 s.
    pub read_timeout: Duration,
    /// Longest wait for the runtime to take the next piece of a response body (the script
    /// stopped reading); longer fails the body with `connection_write_timeout`. Default 100 s.
    pub write_timeout: Duration,
    /// How long an idle origin connection is kept for reuse. Default 90 s.
    pub idle_timeout: Duration,
    /// Idle origin connections kept per (service, scheme, host). Default 32.
    pub max_idle_per_origin: usize,
    /// How long after its CONNECT an origin connection may still be reused. A connection
    /// carries the route iris chose when it was opened (service, tunnel connection), so this
    /// bounds how long a changed service keeps being served by pooled connections, and how
    /// long steady traffic keeps a draining connector busy. Default
    /// [`DEFAULT_ROUTE_LEASE`]; `None`: no bound.
    pub route_lease: Option<Duration>,
    /// Open origin connections (busy and idle) per service; one more fails with
    /// `connection_limit_reached`. Default 256.
    pub max_connections_per_service: usize,
    /// Roots trusted for `https` origins (besides a service's own `ca_certificate`).
    /// `None`: the system's trust store.
    pub tls_roots: Option<Arc<rustls::RootCertStore>>,
    /// Runtime connections open at once; one more is closed at once. Default: from the
    /// open-file limit ([`wvpc_listener::default_max_connections`]).
    pub max_runtime_connections: usize,
    /// Where calls, CONNECT and origin times are counted (shown by `--metrics`). Default:
    /// off ([`BindingWorkerMetrics::off`]), nothing counted.
    pub metrics: Arc<BindingWorkerMetrics>,
}

impl BindingWorkerConfig {
    /// Defaults, with one iris node at `iris`.
    pub fn new(iris: SocketAddr) -> Self {
        Self::with_iris_nodes(vec![iris])
    }

    /// Defaults, with these iris nodes (at least one, or [`BindingWorker::start`] refuses).
    pub fn with_iris_nodes(iris: Vec<SocketAddr>) -> Self {
        Self::with_iris(iris.into_iter().map(IrisAddress::from).collect())
    }

    /// Defaults, with these iris addresses and names (at least one, or
    /// [`BindingWorker::start`] refuses).
    pub fn with_iris(iris: Vec<IrisAddress>) -> Self {
        Self {
            iris,
            iris_dial_timeout: DEFAULT_IRIS_DIAL_TIMEOUT,
            iris_resolve_interval: DEFAULT_IRIS_RESOLVE_INTERVAL,
            secret: None,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            proxy_runtime: None,
            proxy_threads: 0,
            connect_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(100),
            read_timeout: Duration::from_secs(100),
            write_timeout: Duration::from_secs(100),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_origin: 32,
            route_lease: Some(DEFAULT_ROUTE_LEASE),
            max_connections_per_service: 256,
            tls_roots: None,
            max_runtime_connections: wvpc_listener::default_max_connections(),
            metrics: Arc::new(BindingWorkerMetrics::off()),
        }
    }
}

/// Starts binding-workers.
#[derive(Debug)]
pub enum BindingWorker {}

impl BindingWorker {
    /// Serves `VpcBinding` to runtimes that connect to `listener` (capnp two-party RPC over
    /// TCP; the bootstrap capability is the `VpcBinding`). Returns once the worker runs; it
    /// stops when the handle is shut down or dropped. Iris names are resolved first: one that
    /// does not resolve is an error.
    ///
    /// A `proxy_runtime` given in the config must keep being driven (a multi-threaded
    /// runtime, or a current-thread one whose owner keeps awaiting).
    pub fn start(
        listener: std::net::TcpListener,
        config: BindingWorkerConfig,
    ) -> io::Result<BindingWorkerHandle> {
        if config.iris.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no iris node given: a binding-worker needs at least one iris address",
            ));
        }
        let iris_settings = IrisSettings {
            addresses: config.iris.clone(),
            connect_timeout: config.connect_timeout,
            dial_timeout: config.iris_dial_timeout,
            resolve_interval: config.iris_resolve_interval,
        };
        let iris_addrs = IrisClient::resolve_at_start(&iris_settings)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let rpc_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (proxy_runtime, owned_runtime) =
            match (config.proxy_runtime.clone(), config.proxy_threads) {
                (Some(handle), _) => (handle, None),
                // Tasks spawned here wait until the RPC thread starts driving it.
                (None, 0) => (rpc_runtime.handle().clone(), None),
                (None, threads) => {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(threads)
                        .thread_name("wvpc-binding-proxy")
                        .enable_all()
                        .build()?;
                    (runtime.handle().clone(), Some(runtime))
                }
            };

        let iris = IrisClient::start(iris_settings, iris_addrs, proxy_runtime.clone());
        let iris_nodes = iris.nodes_view();
        let tls = OriginTls::new(config.tls_roots.clone())?;
        let proxy = Arc::new(Proxy::new(
            iris,
            tls,
            OriginSettings {
                response_timeout: config.response_timeout,
                read_timeout: config.read_timeout,
                write_timeout: config.write_timeout,
                idle_timeout: config.idle_timeout,
                max_idle_per_origin: config.max_idle_per_origin,
                route_lease: config.route_lease,
                max_connections_per_service: config.max_connections_per_service,
            },
            config.metrics.clone(),
        ));
        spawn_sweeper(&proxy_runtime, Arc::downgrade(proxy.pool()));
        let pool = Arc::downgrade(proxy.pool());

        let (stop, stopped) = oneshot::channel();
        let (drain, drain_requested) = oneshot::channel();
        let fetches = TaskTracker::new();
        let serving = Serving {
            proxy,
            proxy_runtime,
            fetches: fetches.clone(),
            secret: config.secret.clone(),
            handshake_timeout: config.handshake_timeout,
            max_connections: config.max_runtime_connections,
        };
        let thread = std::thread::Builder::new()
            .name("wvpc-binding-rpc".into())
            .spawn(move || {
                run_rpc_thread(rpc_runtime, listener, serving, stopped, drain_requested);
            })?;
        tracing::info!(
            %local_addr,
            iris = %config.iris.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            authenticated = config.secret.is_some(),
            "binding-worker listening"
        );
        Ok(BindingWorkerHandle {
            local_addr,
            pool,
            iris_nodes,
            stop: Some(stop),
            drain: Some(drain),
            fetches,
            thread: Some(thread),
            owned_runtime,
        })
    }
}

/// A running binding-worker.
#[derive(Debug)]
pub struct BindingWorkerHandle {
    local_addr: SocketAddr,
    pool: Weak<OriginPool>,
    iris_nodes: IrisNodesView,
    stop: Option<oneshot::Sender<()>>,
    /// Asks the RPC thread to stop accepting; it answers once it has.
    drain: Option<oneshot::Sender<oneshot::Sender<()>>>,
    /// Every fetch from its call to the end of its response body.
    fetches: TaskTracker,
    thread: Option<JoinHandle<()>>,
    owned_runtime: Option<Runtime>,
}

impl BindingWorkerHandle {
    /// The address runtimes connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The iris nodes in use, in order (a name's current addresses in its place), each with
    /// whether it is up: `false` while its dial fails and it is skipped.
    pub fn iris_nodes(&self) -> Vec<(SocketAddr, bool)> {
        self.iris_nodes.nodes()
    }

    /// A handle that closes the idle pooled origin connections of a service, for whoever
    /// learns first that its route changed (in one process: iris's route table).
    pub fn route_changes(&self) -> RouteChanges {
        RouteChanges(self.pool.clone())
    }

    /// Stops accepting, drops every runtime connection and in-flight fetch, and waits for the
    /// RPC thread to exit (quick: nothing there blocks). Safe to call from async code.
    pub fn shutdown(mut self) {
        self.stop_now();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the binding-worker RPC thread panicked");
        }
    }

    /// Stops gracefully: the listener closes (new connections are refused) and new fetches
    /// on open connections are refused as disconnected (a runtime sends them to another
    /// binding-worker); fetches in flight, response bodies included, may finish within
    /// `grace`. Then everything stops as with [`Self::shutdown`]. Resolves to whether every
    /// fetch finished in time.
    pub fn drain(mut self, grace: Duration) -> impl Future<Output = bool> + Send + 'static {
        let drain = self.drain.take();
        let fetches = self.fetches.clone();
        async move {
            if let Some(drain) = drain {
                let (accepting_stopped, stopped) = oneshot::channel();
                if drain.send(accepting_stopped).is_ok() {
                    let _ = stopped.await;
                }
            }
            fetches.close();
            let in_flight = fetches.len();
            tracing::info!(
                in_flight,
                grace_ms = grace.as_millis() as u64,
                "binding-worker draining"
            );
            let finished = tokio::time::timeout(grace, fetches.wait()).await.is_ok();
            if !finished {
                tracing::warn!(
                    left = fetches.len(),
                    "grace period over: closing the fetches still in flight"
                );
            }
            self.shutdown();
            finished
        }
    }

    /// Fetches in flight (from the call to the end of the response body).
    pub fn fetches_in_flight(&self) -> usize {
        self.fetches.len()
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.owned_runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Closes idle pooled origin connections of services whose route changed, so the next
/// request of such a service makes a new CONNECT (iris answers it with the new route).
#[derive(Debug, Clone)]
pub struct RouteChanges(Weak<OriginPool>);

impl RouteChanges {
    /// The route of `service_id` changed (or it was deleted).
    pub fn changed(&self, service_id: uuid::Uuid) {
        if let Some(pool) = self.0.upgrade() {
            pool.forget_service(service_id);
        }
    }
}

impl Drop for BindingWorkerHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Closes idle origin connections that timed out, until the worker is gone.
fn spawn_sweeper(runtime: &Handle, pool: Weak<OriginPool>) {
    let Some(interval) = pool.upgrade().map(|p| p.sweep_interval()) else {
        return;
    };
    runtime.spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match pool.upgrade() {
                Some(pool) => pool.sweep(),
                None => return,
            }
        }
    });
}

/// What the RPC thread serves with.
struct Serving {
    proxy: Arc<Proxy>,
    proxy_runtime: Handle,
    fetches: TaskTracker,
    secret: Option<PlatformSecret>,
    handshake_timeout: Duration,
    max_connections: usize,
}

/// The RPC thread: accepts runtime connections and serves capnp on a `LocalSet`, until
/// stopped; once asked to drain, it closes the listener and refuses new fetches.
fn run_rpc_thread(
    rpc_runtime: Runtime,
    listener: std::net::TcpListener,
    serving: Serving,
    mut stopped: oneshot::Receiver<()>,
    mut drain_requested: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let local = tokio::task::LocalSet::new();
    local.block_on(&rpc_runtime, async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(error = %err, "binding-worker cannot listen");
                return;
            }
        };
        let draining = Rc::new(Cell::new(false));
        let Serving {
            proxy,
            proxy_runtime,
            fetches,
            secret,
            handshake_timeout,
            max_connections,
        } = serving;
        let acceptor = Acceptor::new(
            listener,
            "binding-worker capnp",
            max_connections,
            RefuseWith::Close,
        );
        let binding: vpc_binding::Client = capnp_rpc::new_client(VpcBindingServer::new(
            proxy,
            proxy_runtime,
            fetches,
            Rc::clone(&draining),
        ));
        let drained = loop {
            tokio::select! {
                _ = &mut stopped => {
                    tracing::info!("binding-worker stopped");
                    return;
                }
                // A dropped sender (the handle went away mid-drain) drains as well.
                requested = &mut drain_requested => break requested.ok(),
                // Over the cap: closed; out of descriptors: waited out (see `Acceptor`).
                admitted = acceptor.accept() => {
                    tokio::task::spawn_local(admit(
                        admitted,
                        binding.clone(),
                        secret.clone(),
                        handshake_timeout,
                    ));
                }
            }
        };
        draining.set(true);
        drop(acceptor);
        if let Some(accepting_stopped) = drained {
            let _ = accepting_stopped.send(());
        }
        // Open connections keep serving the fetches in flight until the handle stops us.
        let _ = stopped.await;
        tracing::info!("binding-worker stopped");
    });
}

/// Serves one accepted connection, after the platform handshake when a secret is set.
async fn admit(
    admitted: Admitted,
    binding: vpc_binding::Client,
    secret: Option<PlatformSecret>,
    handshake_timeout: Duration,
) {
    let Admitted {
        mut stream,
        peer,
        permit,
    } = admitted;
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
    }
    if let Some(secret) = &secret
        && let Err(err) = handshake_as_binding_worker(&mut stream, secret, handshake_timeout).await
    {
        tracing::warn!(%peer, error = %err, "refused a connection: it failed the platform handshake");
        return;
    }
    rpc::serve_runtime(stream, peer, binding, permit);
}
