//! One iris node: the CONNECT router and the QUIC tunnel edge over the directory of a state
//! dir, with its metrics listener, its live connections published in the cluster registry
//! ([`ClusterRegistry`], read by `wvpc tunnel info` and by the other nodes) and the
//! [`PeerMap`] of what the other nodes hold. `wvpc iris` runs one alone; the one-process stack
//! of `wvpc dev` ([`crate::stack`]) runs one beside the runtime.
//!
//! The edge never waits for a store: routes and credentials are in memory ([`LiveRoutes`],
//! [`crate::authority`]), and connection records go through a bounded queue
//! ([`CONNECTION_RECORD_BACKLOG`]) that one writer task drains in order. When the queue is full
//! a record is dropped (counted in `wvpc_iris_connection_records_dropped_total`, logged), never
//! waited for; when a record cannot be written (the store is busy or unreachable) the rest of
//! the queue is dropped too. Either way the writer then publishes the node's whole set of live
//! connections again, retrying every [`REPUBLISH_INTERVAL`] until the registry takes it, so
//! `wvpc tunnel info` converges.
//!
//! The writer also holds the node's lease: it joins at start (a new incarnation, which drops
//! what a previous run of the node left), heartbeats every TTL/3 and runs the janitor that
//! deletes nodes whose lease expired. A heartbeat that finds the lease lost (the store was
//! unreachable for longer than the TTL and another node's janitor removed this one) joins
//! again and publishes every live connection again (`wvpc_iris_registry_lease_lost_total`).
//! An unreachable store is logged once per change of state; the node keeps serving its own
//! connections meanwhile. [`IrisNode::drain`] leaves the registry; a node that dies (or is
//! dropped) is forgotten by the others when its lease ends.
//!
//! A follower task reloads the registry when its change feed reports a change and replaces
//! the node's [`PeerMap`] (tunnel → other nodes holding its connections, with their relay
//! addresses), which the relay reads.
//!
//! With a relay listener ([`IrisOptions::relay`]), CONNECTs for tunnels this node holds no
//! usable connection of are relayed to the nodes that do, as [`IrisNode::peers`] says (the
//! cluster registry fills it), over mutual TLS from the relay CA in `<state>/relay`
//! ([`wvpc_iris::relay`]).
//!
//! Deletions reach the node through [`LiveRoutes::on_removed`]: a deleted tunnel's
//! connections are closed with the reason (connectors log it, and are refused as an unknown
//! tunnel when they reconnect), and a deleted service's CONNECT pipes are closed once quiet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use uuid::Uuid;
use wvpc_directory::cluster::{ClusterConnection, DEFAULT_LEASE_TTL, SAFETY_RELOAD};
use wvpc_directory::{ClusterRegistry, Directory, Lease, LiveConnection, RegistryError};
use wvpc_iris::ServiceStore;
use wvpc_iris::connect::{Router, RouterConfig};
use wvpc_iris::edge::{ConnectionInfo, ConnectionObserver, Edge, TunnelAuthority, TunnelRegistry};
use wvpc_iris::metrics::IrisMetrics;
use wvpc_iris::peers::{HolderMemory, PeerMap, RelayPeer};
use wvpc_iris::relay::{Relay, RelayCa, RelayConfig};
use wvpc_listener::ServerLimits;
use wvpc_observe::ops::{Ops, Parts};
use wvpc_tunnel::EdgeIdentity;

use crate::PlatformError;
use crate::iris_status::{IrisStatus, admin_token_check, start_ops};
use crate::live_routes::{LiveRoutes, Removed};

/// Connection records queued for the cluster registry at most; more are dropped (and the
/// node's live connections published again once the registry takes writes).
pub const CONNECTION_RECORD_BACKLOG: usize = 1024;
/// How often the writer tries again to join or to publish the live connections after a
/// failure.
pub const REPUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// How long the peer follower waits after a change before reloading, so that a burst of
/// changes costs one reload.
pub const PEERS_DEBOUNCE: Duration = Duration::from_millis(20);

/// How an iris node presents itself and what it exposes besides its two listeners.
#[derive(Debug, Clone)]
pub struct IrisOptions {
    /// Name reported to connectors as their location and recorded with their connections.
    pub node_name: String,
    /// Where to serve the operations listener: Prometheus metrics, the status page
    /// (`None`: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// The process's role on the status page (`iris`; `dev` for the one-process stack).
    pub role: &'static str,
    /// Other parts of the process shown on the operations listener beside iris.
    pub observed: Parts,
    /// Timeouts and connection cap of the CONNECT, relay and metrics listeners (each has its
    /// own cap).
    pub server: ServerLimits,
    /// The relay listener (`None`: this node neither relays CONNECTs nor accepts relayed
    /// ones).
    pub relay: Option<RelayOptions>,
    /// Who holds which tunnel, if the caller fills it itself (tests, benches); `None`: the
    /// node follows the cluster registry into a map of its own ([`IrisNode::peers`]).
    pub peers: Option<Arc<PeerMap>>,
    /// How long this node's cluster lease lasts without a heartbeat (`--lease-ttl`); it
    /// heartbeats every third of it. Used when the node opens the registry itself.
    pub lease_ttl: Duration,
    /// The cluster registry to publish in; `None`: the registry beside the directory (its
    /// PostgreSQL database, or the SQLite file of the state directory), with
    /// [`IrisOptions::lease_ttl`].
    pub cluster: Option<Arc<ClusterRegistry>>,
}

/// Where the relay listener listens and how peers reach it.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    /// Address of the relay listener (`--relay-listen`).
    pub listen: SocketAddr,
    /// Address other nodes dial (`--relay-advertise`), published with the node's lease;
    /// `None`: the listener's address, which then must not be unspecified (0.0.0.0, ::).
    pub advertise: Option<SocketAddr>,
}

impl Default for IrisOptions {
    fn default() -> Self {
        Self {
            node_name: "wvpc-dev".into(),
            metrics_listen: None,
            role: "iris",
            observed: Parts::default(),
            server: ServerLimits::default(),
            relay: None,
            peers: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            cluster: None,
        }
    }
}

/// A running iris node. Dropping it closes everything at once; [`IrisNode::drain`] first
/// lets streams finish.
pub struct IrisNode {
    /// iris's CONNECT address.
    pub iris_addr: SocketAddr,
    /// The tunnel edge's (QUIC) address.
    pub edge_addr: SocketAddr,
    /// The metrics listener, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// PEM file of the CA that signs the edge certificate (for connectors' `--cacert`).
    pub edge_ca_path: PathBuf,
    /// The edge's identity.
    pub edge_identity: EdgeIdentity,
    /// The routes this node serves (follow the directory live).
    pub routes: Arc<LiveRoutes>,
    /// The relay listener's address, if any.
    pub relay_addr: Option<SocketAddr>,
    /// The address other nodes dial to relay to this one (to publish in the cluster
    /// registry), if the relay listener runs.
    pub relay_advertise: Option<SocketAddr>,
    /// Who holds which tunnel: the relay reads it, the cluster registry's follower fills it
    /// ([`PeerMap::replace`]).
    pub peers: Arc<PeerMap>,
    registry: Arc<TunnelRegistry>,
    cluster: Arc<ClusterRegistry>,
    published: Arc<Published>,
    edge: Arc<Edge>,
    router_task: Option<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl IrisNode {
    /// Starts the edge on `edge_listen` and the router on `listen` (TCP), both reading
    /// `directory`, and joins the cluster registry (`options.cluster`, else the state
    /// directory's). Connections this node recorded in a previous run are cleared by the join
    /// (as soon as the registry takes writes).
    pub async fn start(
        directory: Arc<Directory>,
        state: &Path,
        listen: SocketAddr,
        edge_listen: SocketAddr,
        options: &IrisOptions,
    ) -> Result<IrisNode, PlatformError> {
        let edge_dir = crate::state::edge_identity_dir(state);
        let edge_identity = EdgeIdentity::load_or_create(&edge_dir).map_err(|source| {
            PlatformError::EdgeIdentity {
                dir: edge_dir.clone(),
                source,
            }
        })?;
        let mut tasks = Vec::new();
        // iris reads an in-memory snapshot that follows the directory within POLL_INTERVAL.
        let (routes, authority, watcher) = LiveRoutes::start(directory.clone())?;
        tasks.push(watcher);
        let authority: Arc<dyn TunnelAuthority> = authority;
        let edge = Edge::bind(
            edge_listen,
            &edge_identity,
            authority,
            options.node_name.clone(),
        )
        .map_err(|source| PlatformError::Edge {
            addr: edge_listen,
            source,
        })?;
        let edge = Arc::new(edge);
        let registry = edge.registry();
        let metrics = registry.metrics();
        // The relay's listener is bound first: its address is published with the lease.
        let peers = options.peers.clone().unwrap_or_default();
        let relay = match &options.relay {
            Some(relay) => Some(
                start_relay(
                    state,
                    relay,
                    &options.node_name,
                    peers.clone(),
                    metrics.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let relay_advertise = relay.as_ref().map(|started| started.advertise);
        let cluster = match &options.cluster {
            Some(cluster) => cluster.clone(),
            None => Arc::new(ClusterRegistry::beside(&directory, state, options.lease_ttl).await?),
        };
        let (observer, published, writer) = ClusterPublisher::new(
            cluster.clone(),
            options.node_name.clone(),
            relay_advertise,
            metrics.clone(),
            CONNECTION_RECORD_BACKLOG,
        );
        tasks.push(tokio::spawn(writer));
        registry.set_observer(observer);
        // A map the caller passed in is the caller's to fill.
        if options.peers.is_none() {
            tasks.push(tokio::spawn(follow_peers(
                cluster.clone(),
                options.node_name.clone(),
                peers.clone(),
            )));
        }
        let edge_addr = edge.local_addr();
        let serving = edge.clone();
        tasks.push(tokio::spawn(async move { serving.serve().await }));

        let store: Arc<dyn ServiceStore> = routes.clone();
        let mut router_config = RouterConfig::default();
        router_config.node_name = options.node_name.clone();
        // Per-request counting only where someone can read it (`--metrics`); the edge's
        // connection counters stay (they are not per request).
        router_config.metrics = options.metrics_listen.map(|_| metrics.clone());
        router_config.server = options.server.clone();
        router_config.relay = relay.as_ref().map(|started| started.relay.clone());
        let metrics_addr = match options.metrics_listen {
            Some(addr) => {
                let status = IrisStatus {
                    node_name: options.node_name.clone(),
                    registry: registry.clone(),
                    metrics: metrics.clone(),
                    routes: routes.clone(),
                    directory: directory.clone(),
                    peers: peers.clone(),
                    relay: router_config.relay.clone(),
                };
                let ops = Ops::new(options.role, options.node_name.clone())
                    .with(metrics.clone())
                    .with_all(options.observed.0.iter().cloned())
                    // Last: it names what the other parts counted by service id.
                    .with(Arc::new(status))
                    .with_token_check(admin_token_check(directory.clone()));
                let (local, task) = start_ops(addr, ops, options.server.clone()).await?;
                tasks.push(task);
                Some(local)
            }
            None => None,
        };
        let router = Router::new(store, registry.clone(), router_config);
        let (relay_addr, relay_advertise) = match relay {
            Some(started) => {
                let (serving, listener, tls) = (router.clone(), started.listener, started.tls);
                tasks.push(tokio::spawn(async move {
                    if let Err(err) = serving.serve_relay(listener, tls).await {
                        tracing::error!(error = %err, "iris relay listener failed");
                    }
                }));
                tracing::info!(addr = %started.addr, advertise = %started.advertise, "iris relay listener");
                (Some(started.addr), Some(started.advertise))
            }
            None => (None, None),
        };
        routes.on_removed(Box::new({
            let (router, registry) = (router.clone(), registry.clone());
            move |removed: &Removed| {
                for tunnel in &removed.tunnels {
                    registry.remove_tunnel(*tunnel, &format!("tunnel {tunnel} was deleted"));
                }
                for service in &removed.services {
                    let pipes = router.close_service(*service);
                    if pipes > 0 {
                        tracing::info!(%service, pipes, "service deleted; closing its CONNECT pipes once quiet");
                    }
                }
            }
        }));
        let iris_listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| PlatformError::Listen {
                what: "CONNECT (--listen)",
                addr: listen,
                source,
            })?;
        let iris_addr = local_addr(&iris_listener)?;
        let router_task = tokio::spawn(async move {
            if let Err(err) = router.serve(iris_listener).await {
                tracing::error!(error = %err, "iris CONNECT listener failed");
            }
        });
        Ok(IrisNode {
            iris_addr,
            edge_addr,
            metrics_addr,
            edge_ca_path: edge_dir.join(wvpc_tunnel::identity::CA_FILE),
            edge_identity,
            routes,
            relay_addr,
            relay_advertise,
            peers,
            registry,
            cluster,
            published,
            edge,
            router_task: Some(router_task),
            tasks,
        })
    }

    /// Live tunnel connections.
    pub fn registry(&self) -> &Arc<TunnelRegistry> {
        &self.registry
    }

    /// What the other nodes of the cluster hold (tunnel → holders with relay addresses),
    /// kept current from the cluster registry; the relay reads it.
    pub fn peers(&self) -> &Arc<PeerMap> {
        &self.peers
    }

    /// The cluster registry this node publishes in.
    pub fn cluster(&self) -> &Arc<ClusterRegistry> {
        &self.cluster
    }

    /// Graceful stop: no new CONNECTs or tunnel connections, streams in flight finish
    /// within `grace`, then every tunnel connection is closed with the edge-shutdown code
    /// and the node leaves the cluster registry (its rows go at once, not at the lease's
    /// end). Returns whether every stream finished in time.
    pub async fn drain(mut self, grace: Duration) -> bool {
        if let Some(router) = self.router_task.take() {
            router.abort();
        }
        let finished = self.edge.drain(grace).await;
        self.stop();
        if let Some(lease) = self.published.lease()
            && let Err(err) = self.cluster.leave(&lease).await
        {
            tracing::warn!(error = %err, "could not leave the cluster registry; the other nodes forget this node when its lease ends");
        }
        finished
    }

    /// Closes everything now, without a word to the cluster registry (like a crash: the other
    /// nodes forget this node when its lease ends).
    pub fn stop(&mut self) {
        // The writer first, so that the disconnections below are not published.
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.edge.close();
        if let Some(router) = self.router_task.take() {
            router.abort();
        }
    }
}

impl Drop for IrisNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A relay ready to serve: its listener bound, its TLS ready.
struct StartedRelay {
    relay: Arc<Relay>,
    tls: Arc<rustls::ServerConfig>,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    advertise: SocketAddr,
}

/// The relay of node `node_name`: the state's relay CA (created on first use) issues the
/// node's certificate; the listener is bound and the address to advertise checked.
async fn start_relay(
    state: &Path,
    options: &RelayOptions,
    node_name: &str,
    peers: Arc<PeerMap>,
    metrics: Arc<IrisMetrics>,
) -> Result<StartedRelay, PlatformError> {
    let dir = crate::state::relay_dir(state);
    let identity_error = |source| PlatformError::RelayIdentity {
        dir: dir.clone(),
        source,
    };
    let identity = RelayCa::load_or_create(&dir)
        .and_then(|ca| ca.issue(node_name))
        .map_err(identity_error)?;
    let tls = identity.server_config().map_err(identity_error)?;
    let relay = Relay::new(&identity, peers, RelayConfig::new(node_name), Some(metrics))
        .map_err(identity_error)?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| PlatformError::Listen {
            what: "relay (--relay-listen)",
            addr: options.listen,
            source,
        })?;
    let addr = local_addr(&listener)?;
    let advertise = options.advertise.unwrap_or(addr);
    if advertise.ip().is_unspecified() || advertise.port() == 0 {
        return Err(PlatformError::RelayAdvertise { addr: advertise });
    }
    Ok(StartedRelay {
        relay: Arc::new(relay),
        tls,
        listener,
        addr,
        advertise,
    })
}

/// The address a listener got (the port of a `:0` bind).
pub(crate) fn local_addr(listener: &tokio::net::TcpListener) -> Result<SocketAddr, PlatformError> {
    listener.local_addr().map_err(|source| PlatformError::Io {
        what: "reading a listener's address",
        source,
    })
}

// === impl ClusterPublisher ===

/// A change to this node's live connections, queued for the cluster registry.
enum Record {
    Connected(Box<LiveConnection>),
    Disconnected(Uuid),
}

/// Publishes this node's live connections in the cluster registry: the edge registry's
/// callbacks update the in-memory set and queue a record without waiting;
/// [`ClusterWriter`] holds the node's lease and writes (see the module docs).
struct ClusterPublisher {
    node: String,
    records: mpsc::Sender<Record>,
    shared: Arc<Published>,
}

/// What the callbacks, the writer and the node share.
struct Published {
    /// Every live connection of the node: what a republication writes.
    live: Mutex<HashMap<Uuid, LiveConnection>>,
    /// Records were dropped or the lease was lost: the registry no longer matches `live`.
    stale: AtomicBool,
    /// The lease the writer holds (for a graceful leave).
    lease: Mutex<Option<Lease>>,
    metrics: Arc<IrisMetrics>,
}

impl Published {
    /// Counts dropped records; the first drop since the last publication is logged.
    fn dropped(&self, records: usize, why: &str) {
        if records == 0 {
            return;
        }
        self.metrics
            .connection_records_dropped
            .inc_by(u64::try_from(records).unwrap_or(u64::MAX));
        if !self.stale.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                records,
                reason = why,
                "dropping tunnel connection records; the node publishes its live connections again once the cluster registry takes writes (`wvpc tunnel info` and other nodes lag until then)"
            );
        }
    }

    fn live(&self) -> Vec<LiveConnection> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn set_lease(&self, lease: Option<Lease>) {
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner) = lease;
    }

    fn lease(&self) -> Option<Lease> {
        self.lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ClusterPublisher {
    /// The observer for the edge registry, the shared state, and the writer task to spawn;
    /// the queue holds `backlog` records.
    fn new(
        registry: Arc<ClusterRegistry>,
        node: String,
        relay_addr: Option<SocketAddr>,
        metrics: Arc<IrisMetrics>,
        backlog: usize,
    ) -> (
        Arc<Self>,
        Arc<Published>,
        impl Future<Output = ()> + Send + 'static,
    ) {
        let (records, queue) = mpsc::channel(backlog.max(1));
        let shared = Arc::new(Published {
            live: Mutex::new(HashMap::new()),
            stale: AtomicBool::new(false),
            lease: Mutex::new(None),
            metrics,
        });
        let writer = ClusterWriter {
            registry,
            node: node.clone(),
            relay_addr,
            queue,
            shared: shared.clone(),
            lease: None,
            reachable: true,
        };
        let observer = Arc::new(Self {
            node,
            records,
            shared: shared.clone(),
        });
        (observer, shared, writer.run())
    }

    fn queue(&self, record: Record) {
        match self.records.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared
                    .dropped(1, "the queue to the cluster registry is full");
            }
            // The node is stopping.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl ConnectionObserver for ClusterPublisher {
    fn connected(&self, info: &ConnectionInfo, since: SystemTime) {
        let row = LiveConnection {
            connection_id: info.connection_id,
            tunnel_id: info.tunnel_id,
            client_id: info.client_id,
            version: info.version.clone(),
            arch: info.arch.clone(),
            conn_index: info.conn_index,
            edge_node: self.node.clone(),
            remote_addr: info.remote_addr.to_string(),
            since: LiveConnection::since_time(since),
        };
        self.shared
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(row.connection_id, row.clone());
        self.queue(Record::Connected(Box::new(row)));
    }

    fn disconnected(&self, info: &ConnectionInfo) {
        self.shared
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&info.connection_id);
        self.queue(Record::Disconnected(info.connection_id));
    }
}

/// Holds the node's lease (join, heartbeat, janitor) and drains the queue into the cluster
/// registry, in order.
struct ClusterWriter {
    registry: Arc<ClusterRegistry>,
    node: String,
    relay_addr: Option<SocketAddr>,
    queue: mpsc::Receiver<Record>,
    shared: Arc<Published>,
    lease: Option<Lease>,
    /// The last call reached the store (logged once per change).
    reachable: bool,
}

impl ClusterWriter {
    /// Runs until the node stops (the queue's sender is dropped).
    async fn run(mut self) {
        let mut beat = tokio::time::interval(self.registry.heartbeat_interval());
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            if self.lease.is_none() || self.shared.stale.load(Ordering::Acquire) {
                if self.catch_up().await {
                    continue;
                }
                // Not yet: wait, still dropping what arrives (the next try publishes it).
                let pause = tokio::time::sleep(REPUBLISH_INTERVAL);
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        () = &mut pause => break,
                        got = self.queue.recv_many(&mut batch, 256) => {
                            if got == 0 {
                                return;
                            }
                            self.shared.dropped(batch.len(), "the cluster registry is not writable");
                            batch.clear();
                        }
                    }
                }
                continue;
            }
            tokio::select! {
                _ = beat.tick() => self.beat().await,
                got = self.queue.recv_many(&mut batch, 256) => {
                    if got == 0 {
                        return;
                    }
                    let records = std::mem::take(&mut batch);
                    self.write(records).await;
                }
            }
        }
    }

    /// Joins if the node has no lease, then writes the whole live set of the node (what was
    /// queued before is superseded); whether the registry took it.
    async fn catch_up(&mut self) -> bool {
        // Cleared first: a record dropped while this runs marks the set stale again.
        self.shared.stale.store(false, Ordering::Release);
        let mut superseded = 0;
        while self.queue.try_recv().is_ok() {
            superseded += 1;
        }
        let lease = match &self.lease {
            Some(lease) => lease.clone(),
            None => match self.registry.join(&self.node, self.relay_addr).await {
                Ok(lease) => {
                    tracing::info!(node = %self.node, incarnation = %lease.incarnation, ttl = ?self.registry.lease_ttl(), "joined the cluster registry");
                    self.shared.set_lease(Some(lease.clone()));
                    self.lease = Some(lease.clone());
                    lease
                }
                Err(err) => {
                    self.failed(&err);
                    self.shared
                        .dropped(superseded, "the cluster registry is not writable");
                    self.shared.stale.store(true, Ordering::Release);
                    return false;
                }
            },
        };
        // Taken after draining: a record queued from now on is newer than the set.
        let live = self.shared.live();
        match self.registry.replace(&lease, &live).await {
            Ok(()) => {
                self.reached();
                tracing::info!(node = %self.node, connections = live.len(), "live tunnel connections published");
                true
            }
            Err(err) => {
                self.failed(&err);
                self.shared
                    .dropped(superseded, "the cluster registry is not writable");
                self.shared.stale.store(true, Ordering::Release);
                false
            }
        }
    }

    /// Heartbeat, then the janitor (every node runs it; it is idempotent).
    async fn beat(&mut self) {
        let Some(lease) = self.lease.clone() else {
            return;
        };
        match self.registry.heartbeat(&lease).await {
            Ok(()) => self.reached(),
            Err(err) => {
                self.failed(&err);
                return;
            }
        }
        match self.registry.expire().await {
            Ok(0) => {}
            Ok(nodes) => tracing::info!(nodes, "removed iris nodes whose cluster lease expired"),
            Err(err) => tracing::debug!(error = %err, "cluster registry janitor failed"),
        }
    }

    /// Writes records in order; at the first failure the rest are dropped and the whole set
    /// is published again instead.
    async fn write(&mut self, records: Vec<Record>) {
        let Some(lease) = self.lease.clone() else {
            return;
        };
        let total = records.len();
        for (done, record) in records.into_iter().enumerate() {
            let (connection, result) = match record {
                Record::Connected(row) => {
                    (row.connection_id, self.registry.publish(&lease, &row).await)
                }
                Record::Disconnected(id) => {
                    (id, self.registry.withdraw(&lease, id).await.map(drop))
                }
            };
            if let Err(err) = result {
                tracing::debug!(%connection, error = %err, "cannot update the tunnel connection in the cluster registry");
                let lost = matches!(err, RegistryError::LeaseLost { .. });
                self.failed(&err);
                if lost {
                    // Not lost records: the republication after the join covers them.
                    self.shared.stale.store(true, Ordering::Release);
                } else {
                    self.shared
                        .dropped(total - done, "the cluster registry is not writable");
                }
                return;
            }
        }
        self.reached();
    }

    /// A call failed: a lost lease means join again; an unreachable store is logged once.
    fn failed(&mut self, err: &RegistryError) {
        if let RegistryError::LeaseLost { .. } = err {
            tracing::warn!(node = %self.node, error = %err, "joining the cluster registry again and publishing this node's connections again");
            self.shared.metrics.registry_lease_lost.inc();
            self.lease = None;
            self.shared.set_lease(None);
            self.shared.stale.store(true, Ordering::Release);
            return;
        }
        if self.reachable {
            self.reachable = false;
            tracing::warn!(node = %self.node, error = %err, "the cluster registry cannot be reached; this node keeps serving its own tunnel connections and keeps retrying");
        } else {
            tracing::debug!(error = %err, "the cluster registry is still unreachable");
        }
    }

    fn reached(&mut self) {
        if !self.reachable {
            self.reachable = true;
            tracing::info!(node = %self.node, "the cluster registry is reachable again");
        }
    }
}

// === the PeerMap follower ===

/// Keeps `peers` equal to what the cluster registry says other nodes hold: a reload on start,
/// on every change the registry's feed reports (debounced by [`PEERS_DEBOUNCE`]), and every
/// [`REPUBLISH_INTERVAL`] while reloads fail. The map is left as it was while the store is
/// unreachable (a stale hint is still better than none), and a holder that drops out of the
/// view stays in it, last, for one lease TTL ([`HolderMemory`]): after an outage of the store
/// longer than the leases, a live holder is unlisted until it has joined again.
async fn follow_peers(registry: Arc<ClusterRegistry>, node: String, peers: Arc<PeerMap>) {
    let mut changes = registry.changes();
    let mut reachable = true;
    let mut memory = HolderMemory::new(registry.lease_ttl());
    loop {
        changes.borrow_and_update();
        let ok = match registry.snapshot().await {
            Ok(rows) => {
                peers.replace(memory.merge(holders(&rows, &node), Instant::now()));
                if !reachable {
                    tracing::info!("the peer map follows the cluster registry again");
                    reachable = true;
                }
                true
            }
            Err(err) => {
                if reachable {
                    tracing::warn!(error = %err, "cannot read the cluster registry; the peer map keeps its last contents");
                    reachable = false;
                }
                false
            }
        };
        if ok {
            // Woken by a change, or when a remembered holder is due to be forgotten.
            let forget = memory.next_expiry().map_or_else(
                || tokio::time::sleep(SAFETY_RELOAD),
                |at| tokio::time::sleep_until(at.into()),
            );
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = forget => {}
            }
        } else {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(REPUBLISH_INTERVAL) => {}
            }
        }
        // A burst (a node restarting with many connections) costs one reload.
        tokio::time::sleep(PEERS_DEBOUNCE).await;
    }
}

/// Tunnel → the other nodes holding its connections, with their relay addresses and counts.
/// Nodes without a relay address cannot be relayed to and are left out.
fn holders(rows: &[ClusterConnection], node: &str) -> HashMap<Uuid, Vec<RelayPeer>> {
    let mut counts: HashMap<(Uuid, &str), (SocketAddr, usize)> = HashMap::new();
    for row in rows {
        let holder = row.connection.edge_node.as_str();
        let Some(addr) = row.relay_addr else {
            continue;
        };
        if holder == node {
            continue;
        }
        counts
            .entry((row.connection.tunnel_id, holder))
            .or_insert((addr, 0))
            .1 += 1;
    }
    let mut map: HashMap<Uuid, Vec<RelayPeer>> = HashMap::new();
    for ((tunnel, holder), (addr, connections)) in counts {
        map.entry(tunnel).or_default().push(RelayPeer {
            node: holder.to_owned(),
            addr,
            connections,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use wvpc_tunnel::DatagramVersion;

    use super::*;

    struct TempState(PathBuf);

    impl TempState {
        fn new() -> Self {
            TempState(std::env::temp_dir().join(format!("wvpc-records-{}", Uuid::new_v4())))
        }
    }

    impl Drop for TempState {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn connection(tunnel_id: Uuid, conn_index: u8) -> ConnectionInfo {
        ConnectionInfo {
            connection_id: Uuid::new_v4(),
            tunnel_id,
            client_id: Uuid::new_v4(),
            conn_index,
            version: "test".into(),
            arch: "linux_amd64".into(),
            features: Vec::new(),
            datagram_version: DatagramVersion::V3,
            remote_addr: "127.0.0.1:40000".parse().unwrap(),
            draining: false,
        }
    }

    fn row(tunnel_id: Uuid) -> LiveConnection {
        LiveConnection {
            connection_id: Uuid::new_v4(),
            tunnel_id,
            client_id: Uuid::new_v4(),
            version: "old".into(),
            arch: "linux_amd64".into(),
            conn_index: 0,
            edge_node: String::new(),
            remote_addr: "127.0.0.1:1".into(),
            since: LiveConnection::since_time(SystemTime::now()),
        }
    }

    async fn recorded(registry: &ClusterRegistry, tunnel: Uuid) -> BTreeSet<Uuid> {
        registry
            .tunnel_connections(tunnel)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.connection.connection_id)
            .collect()
    }

    /// Waits (bounded) until the registry records exactly `want` for `tunnel`.
    async fn converges(registry: &ClusterRegistry, tunnel: Uuid, want: &BTreeSet<Uuid>) {
        tokio::time::timeout(Duration::from_secs(60), async {
            while recorded(registry, tunnel).await != *want {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the registry records the node's live connections");
    }

    /// Another node, with a lease that outlives the test.
    async fn other_node(state: &Path, tunnel: Uuid) -> (ClusterRegistry, Uuid) {
        let other = ClusterRegistry::sqlite(state, wvpc_directory::cluster::MAX_LEASE_TTL)
            .await
            .unwrap();
        let lease = other.join("iris-b", None).await.unwrap();
        let held = row(tunnel);
        other.publish(&lease, &held).await.unwrap();
        (other, held.connection_id)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_dropped_while_the_store_is_locked_are_published_again_after() {
        let state = TempState::new();
        let registry = Arc::new(
            ClusterRegistry::sqlite(&state.0, DEFAULT_LEASE_TTL)
                .await
                .unwrap(),
        );
        let tunnel = Uuid::new_v4();
        // Left by a previous run of this node: cleared by the join.
        let previous = registry.join("iris-a", None).await.unwrap();
        registry.publish(&previous, &row(tunnel)).await.unwrap();
        let (_other, other_id) = other_node(&state.0, tunnel).await;
        let other_node = BTreeSet::from([other_id]);

        let metrics = Arc::new(IrisMetrics::default());
        let (observer, _, writer) =
            ClusterPublisher::new(registry.clone(), "iris-a".into(), None, metrics.clone(), 2);
        let writer = tokio::spawn(writer);
        converges(&registry, tunnel, &other_node).await;

        let first = connection(tunnel, 0);
        observer.connected(&first, SystemTime::now());
        let mut want = other_node.clone();
        want.insert(first.connection_id);
        converges(&registry, tunnel, &want).await;

        // Another connection holds the write lock; connectors come and go meanwhile, far more
        // than the queue holds. The callbacks return at once (they run on the edge's path).
        let lock = rusqlite::Connection::open(state.0.join(wvpc_directory::DB_FILE_NAME)).unwrap();
        lock.execute_batch("BEGIN EXCLUSIVE; DELETE FROM cluster_nodes WHERE 0;")
            .unwrap();
        let arrived: Vec<ConnectionInfo> = (1..=20).map(|i| connection(tunnel, i)).collect();
        for c in &arrived {
            observer.connected(c, SystemTime::now());
        }
        observer.disconnected(&first);
        for c in &arrived[..5] {
            observer.disconnected(c);
        }
        let dropped = metrics.connection_records_dropped.get();
        assert!(dropped > 0, "the queue overflowed");
        // The writer gives up on what it took from the queue (the store is busy).
        tokio::time::timeout(Duration::from_secs(60), async {
            while metrics.connection_records_dropped.get() == dropped {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the writer gives up while the lock is held");
        // Reads are served meanwhile: what was published before the lock.
        assert!(
            recorded(&registry, tunnel)
                .await
                .contains(&first.connection_id)
        );

        lock.execute_batch("ROLLBACK;").unwrap();
        let mut want = other_node.clone();
        want.extend(arrived[5..].iter().map(|c| c.connection_id));
        converges(&registry, tunnel, &want).await;

        // Back to one record at a time.
        observer.disconnected(&arrived[5]);
        want.remove(&arrived[5].connection_id);
        converges(&registry, tunnel, &want).await;
        writer.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_whose_lease_was_removed_joins_again_and_republishes() {
        let state = TempState::new();
        // A short lease: the heartbeat that notices comes soon.
        let registry = Arc::new(
            ClusterRegistry::sqlite(&state.0, Duration::from_secs(1))
                .await
                .unwrap(),
        );
        let tunnel = Uuid::new_v4();
        let metrics = Arc::new(IrisMetrics::default());
        let (observer, shared, writer) =
            ClusterPublisher::new(registry.clone(), "iris-a".into(), None, metrics.clone(), 64);
        let writer = tokio::spawn(writer);
        let held: Vec<ConnectionInfo> = (0..3).map(|i| connection(tunnel, i)).collect();
        for c in &held {
            observer.connected(c, SystemTime::now());
        }
        let want: BTreeSet<Uuid> = held.iter().map(|c| c.connection_id).collect();
        converges(&registry, tunnel, &want).await;
        let first = shared.lease().expect("joined");

        // As a partition would leave it: another node's janitor removed this one.
        let db = rusqlite::Connection::open(state.0.join(wvpc_directory::DB_FILE_NAME)).unwrap();
        db.pragma_update(None, "foreign_keys", "ON").unwrap();
        db.execute("DELETE FROM cluster_nodes WHERE node_name = 'iris-a'", [])
            .unwrap();
        assert!(recorded(&registry, tunnel).await.is_empty());

        // The next heartbeat finds out; the node joins again and publishes everything again.
        converges(&registry, tunnel, &want).await;
        let second = shared.lease().expect("joined again");
        assert_ne!(first.incarnation, second.incarnation);
        assert_eq!(metrics.registry_lease_lost.get(), 1);
        assert!(
            metrics
                .render()
                .contains("wvpc_iris_registry_lease_lost_total 1")
        );
        writer.abort();
    }

    #[test]
    fn holders_count_other_nodes_with_a_relay_address() {
        let tunnel = Uuid::new_v4();
        let at = |node: &str, relay: Option<&str>| ClusterConnection {
            connection: LiveConnection {
                edge_node: node.into(),
                ..row(tunnel)
            },
            relay_addr: relay.map(|r| r.parse().unwrap()),
        };
        let rows = [
            at("iris-a", Some("127.0.0.2:9000")),
            at("iris-b", Some("127.0.0.3:9000")),
            at("iris-b", Some("127.0.0.3:9000")),
            at("iris-c", None),
        ];
        let map = holders(&rows, "iris-a");
        assert_eq!(
            map[&tunnel],
            [RelayPeer {
                node: "iris-b".into(),
                addr: "127.0.0.3:9000".parse().unwrap(),
                connections: 2,
            }],
            "self and nodes without a relay listener are left out"
        );
    }

    /// Two nodes on one store: what one publishes reaches the other's peer map, and goes when
    /// the holder leaves.
    async fn peer_map_follows_the_other_node(open: impl AsyncFn() -> ClusterRegistry, store: &str) {
        let a = Arc::new(open().await);
        let b = open().await;
        let peers = Arc::new(PeerMap::new());
        let follower = tokio::spawn(follow_peers(a.clone(), "iris-a".into(), peers.clone()));
        let relay_b: SocketAddr = "127.0.0.3:7443".parse().unwrap();
        let lease_b = b.join("iris-b", Some(relay_b)).await.unwrap();
        let mut figures = Vec::new();
        let tunnels: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        for &tunnel in &tunnels {
            let started = tokio::time::Instant::now();
            b.publish(&lease_b, &row(tunnel)).await.unwrap();
            tokio::time::timeout(Duration::from_secs(60), async {
                while peers.holders(tunnel).is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await
            .expect("the peer map shows the new holder");
            figures.push(started.elapsed());
            assert_eq!(
                peers.holders(tunnel),
                [RelayPeer {
                    node: "iris-b".into(),
                    addr: relay_b,
                    connections: 1,
                }]
            );
        }
        figures.sort();
        println!(
            "{store}: publish on one node → the other node's PeerMap: median {:?}, max {:?} \
             (includes the {PEERS_DEBOUNCE:?} debounce)",
            figures[figures.len() / 2],
            figures[figures.len() - 1]
        );
        b.leave(&lease_b).await.unwrap();
        tokio::time::timeout(Duration::from_secs(60), async {
            while tunnels.iter().any(|t| !peers.holders(*t).is_empty()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the peer map forgets a node that left");
        follower.abort();
    }

    /// The store crashes and comes back (its own server: the shared one serves other tests):
    /// the edge's callbacks never wait, and afterwards the node's connections, including one
    /// that arrived during the outage, are published again and another node's peer map
    /// follows again (its listener reconnected).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_store_outage_the_node_publishes_again_and_peers_follow_again() {
        let server = match wvpc_pg_harness::PgServer::start() {
            Ok(server) => server,
            Err(why) => {
                eprintln!("SKIPPED (PostgreSQL): {why}");
                return;
            }
        };
        let url = server.create_database();
        let ttl = Duration::from_secs(1);
        let registry = Arc::new(ClusterRegistry::postgres_url(&url, ttl).await.unwrap());
        let metrics = Arc::new(IrisMetrics::default());
        let relay: SocketAddr = "127.0.0.2:7443".parse().unwrap();
        let (observer, _, writer) = ClusterPublisher::new(
            registry.clone(),
            "iris-a".into(),
            Some(relay),
            metrics.clone(),
            64,
        );
        let writer = tokio::spawn(writer);
        let tunnel = Uuid::new_v4();
        let first = connection(tunnel, 0);
        observer.connected(&first, SystemTime::now());
        converges(&registry, tunnel, &BTreeSet::from([first.connection_id])).await;
        let other = Arc::new(ClusterRegistry::postgres_url(&url, ttl).await.unwrap());
        let peers = Arc::new(PeerMap::new());
        let follower = tokio::spawn(follow_peers(other.clone(), "iris-b".into(), peers.clone()));
        let holds = |count: usize| {
            let peers = peers.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(60), async {
                    while peers.holders(tunnel).first().map(|p| p.connections) != Some(count) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await
                .expect("the peer map shows the holder's connections");
            }
        };
        holds(1).await;

        server.kill();
        // A connector arrives during the outage: the callback returns at once.
        let second = connection(tunnel, 1);
        let called = std::time::Instant::now();
        observer.connected(&second, SystemTime::now());
        assert!(
            called.elapsed() < Duration::from_secs(1),
            "the edge never waits"
        );
        // The other node keeps its last view while it cannot read.
        assert_eq!(peers.holders(tunnel)[0].connections, 1);

        server.restart();
        converges(
            &registry,
            tunnel,
            &BTreeSet::from([first.connection_id, second.connection_id]),
        )
        .await;
        holds(2).await;
        println!(
            "after the store outage: lease lost {} time(s), records dropped {}",
            metrics.registry_lease_lost.get(),
            metrics.connection_records_dropped.get()
        );
        follower.abort();
        writer.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_peer_map_follows_the_cluster_registry_sqlite() {
        let state = TempState::new();
        peer_map_follows_the_other_node(
            async || {
                ClusterRegistry::sqlite(&state.0, DEFAULT_LEASE_TTL)
                    .await
                    .unwrap()
            },
            "SQLite",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_peer_map_follows_the_cluster_registry_postgres() {
        let Some(server) = wvpc_pg_harness::PgServer::shared() else {
            return;
        };
        let url = server.create_database();
        peer_map_follows_the_other_node(
            async || {
                ClusterRegistry::postgres_url(&url, DEFAULT_LEASE_TTL)
                    .await
                    .unwrap()
            },
            "PostgreSQL",
        )
        .await;
    }
}
