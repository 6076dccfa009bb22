//! One iris node: the CONNECT router and the QUIC tunnel edge over the directory of a state
//! dir, with its metrics listener and its live connections published in the directory
//! (`tunnel_connections`, read by `wvpc tunnel info`). `wvpc iris` runs one alone; the
//! one-process stack of `wvpc dev` ([`crate::stack`]) runs one beside the runtime.
//!
//! The edge never waits for the directory: routes and credentials are in memory
//! ([`LiveRoutes`], [`crate::authority`]), and connection records go through a bounded queue
//! ([`CONNECTION_RECORD_BACKLOG`]) that one writer task drains in order on a blocking thread.
//! When the queue is full a record is dropped (counted in
//! `wvpc_iris_connection_records_dropped_total`, logged), never waited for; when a record
//! cannot be written (the directory is busy) the rest of the queue is dropped too. Either way
//! the writer then publishes the node's whole set of live connections again, retrying every
//! [`REPUBLISH_INTERVAL`] until the directory takes it, so `wvpc tunnel info` converges.
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
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use uuid::Uuid;
use wvpc_directory::{Directory, LiveConnection};
use wvpc_iris::ServiceStore;
use wvpc_iris::connect::{Router, RouterConfig};
use wvpc_iris::edge::{ConnectionInfo, ConnectionObserver, Edge, TunnelAuthority, TunnelRegistry};
use wvpc_iris::metrics::IrisMetrics;
use wvpc_iris::peers::PeerMap;
use wvpc_iris::relay::{Relay, RelayCa, RelayConfig};
use wvpc_listener::ServerLimits;
use wvpc_tunnel::EdgeIdentity;

use crate::PlatformError;
use crate::live_routes::{LiveRoutes, Removed};

/// Connection records queued for the directory at most; more are dropped (and the node's
/// live connections published again once the directory takes writes).
pub const CONNECTION_RECORD_BACKLOG: usize = 1024;
/// How often the writer tries again to publish the live connections after records were
/// dropped.
pub const REPUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// How an iris node presents itself and what it exposes besides its two listeners.
#[derive(Debug, Clone)]
pub struct IrisOptions {
    /// Name reported to connectors as their location and recorded with their connections.
    pub node_name: String,
    /// Where to serve Prometheus metrics (`None`: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// Timeouts and connection cap of the CONNECT, relay and metrics listeners (each has its
    /// own cap).
    pub server: ServerLimits,
    /// The relay listener (`None`: this node neither relays CONNECTs nor accepts relayed
    /// ones).
    pub relay: Option<RelayOptions>,
    /// Who holds which tunnel, shared with whoever follows the cluster registry (`None`: the
    /// node makes an empty one, [`IrisNode::peers`]).
    pub peers: Option<Arc<PeerMap>>,
}

/// Where the relay listener listens and how peers reach it.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    /// Address of the relay listener (`--relay-listen`).
    pub listen: SocketAddr,
    /// Address other nodes dial (`--relay-advertise`); `None`: the listener's address, which
    /// then must not be unspecified (0.0.0.0, ::).
    pub advertise: Option<SocketAddr>,
}

impl Default for IrisOptions {
    fn default() -> Self {
        Self {
            node_name: "wvpc-dev".into(),
            metrics_listen: None,
            server: ServerLimits::default(),
            relay: None,
            peers: None,
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
    edge: Arc<Edge>,
    router_task: Option<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl IrisNode {
    /// Starts the edge on `edge_listen` and the router on `listen` (TCP), both reading
    /// `directory`. Connections this node recorded in a previous run are cleared by the
    /// writer's first publication (when the directory takes writes).
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
        let (observer, writer) = DirectoryConnections::new(
            directory.clone(),
            options.node_name.clone(),
            registry.metrics(),
            CONNECTION_RECORD_BACKLOG,
        );
        tasks.push(tokio::spawn(writer));
        registry.set_observer(observer);
        let edge_addr = edge.local_addr();
        let serving = edge.clone();
        tasks.push(tokio::spawn(async move { serving.serve().await }));

        let metrics = registry.metrics();
        let metrics_addr = match options.metrics_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| PlatformError::Listen {
                        what: "--metrics",
                        addr,
                        source,
                    })?;
                let local = local_addr(&listener)?;
                tasks.push(tokio::spawn(wvpc_tunnel::metrics::serve_with(
                    listener,
                    metrics.clone(),
                    options.server.clone(),
                )));
                tracing::info!(addr = %local, "iris metrics at http://{local}/metrics");
                Some(local)
            }
            None => None,
        };

        let peers = options.peers.clone().unwrap_or_default();
        let store: Arc<dyn ServiceStore> = routes.clone();
        let mut router_config = RouterConfig::default();
        router_config.node_name = options.node_name.clone();
        router_config.metrics = Some(metrics.clone());
        router_config.server = options.server.clone();
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
        router_config.relay = relay.as_ref().map(|started| started.relay.clone());
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
            edge,
            router_task: Some(router_task),
            tasks,
        })
    }

    /// Live tunnel connections.
    pub fn registry(&self) -> &Arc<TunnelRegistry> {
        &self.registry
    }

    /// Graceful stop: no new CONNECTs or tunnel connections, streams in flight finish
    /// within `grace`, then every tunnel connection is closed with the edge-shutdown code.
    /// Returns whether every stream finished in time.
    pub async fn drain(mut self, grace: Duration) -> bool {
        if let Some(router) = self.router_task.take() {
            router.abort();
        }
        let finished = self.edge.drain(grace).await;
        self.stop();
        finished
    }

    /// Closes everything now.
    pub fn stop(&mut self) {
        self.edge.close();
        if let Some(router) = self.router_task.take() {
            router.abort();
        }
        for task in self.tasks.drain(..) {
            task.abort();
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

// === impl DirectoryConnections ===

/// A change to this node's live connections, queued for the directory.
enum Record {
    Connected(Box<LiveConnection>),
    Disconnected(Uuid),
}

/// Publishes this node's live connections in the directory (`tunnel_connections`): the
/// registry's callbacks update the in-memory set and queue a record without waiting;
/// [`ConnectionWriter`] writes (see the module docs).
struct DirectoryConnections {
    node: String,
    records: mpsc::Sender<Record>,
    shared: Arc<Published>,
}

/// What the callbacks and the writer share.
struct Published {
    /// Every live connection of the node: what a republication writes.
    live: Mutex<HashMap<Uuid, LiveConnection>>,
    /// Records were dropped: the directory no longer matches `live`.
    stale: AtomicBool,
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
            .add(u64::try_from(records).unwrap_or(u64::MAX));
        if !self.stale.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                records,
                reason = why,
                "dropping tunnel connection records; the node publishes its live connections again once the directory takes writes (`wvpc tunnel info` lags until then)"
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
}

impl DirectoryConnections {
    /// The observer for the registry, and the writer task to spawn; the queue holds `backlog`
    /// records.
    fn new(
        directory: Arc<Directory>,
        node: String,
        metrics: Arc<IrisMetrics>,
        backlog: usize,
    ) -> (Arc<Self>, impl Future<Output = ()> + Send + 'static) {
        let (records, queue) = mpsc::channel(backlog.max(1));
        let shared = Arc::new(Published {
            live: Mutex::new(HashMap::new()),
            // The first publication clears what a previous run of the node left.
            stale: AtomicBool::new(true),
            metrics,
        });
        let writer = ConnectionWriter {
            directory,
            node: node.clone(),
            queue,
            shared: shared.clone(),
        };
        let observer = Arc::new(Self {
            node,
            records,
            shared,
        });
        (observer, writer.run())
    }

    fn queue(&self, record: Record) {
        match self.records.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.dropped(1, "the queue to the directory is full");
            }
            // The node is stopping.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl ConnectionObserver for DirectoryConnections {
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

/// Drains the queue into the directory, in order, on blocking threads.
struct ConnectionWriter {
    directory: Arc<Directory>,
    node: String,
    queue: mpsc::Receiver<Record>,
    shared: Arc<Published>,
}

impl ConnectionWriter {
    /// Runs until the node stops (the queue's sender is dropped).
    async fn run(mut self) {
        let mut batch = Vec::new();
        loop {
            if self.shared.stale.load(Ordering::Acquire) {
                if self.republish().await {
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
                            self.shared.dropped(batch.len(), "the directory is not writable");
                            batch.clear();
                        }
                    }
                }
                continue;
            }
            if self.queue.recv_many(&mut batch, 256).await == 0 {
                return;
            }
            let records = std::mem::take(&mut batch);
            let (directory, shared) = (self.directory.clone(), self.shared.clone());
            let written =
                tokio::task::spawn_blocking(move || write(&directory, &shared, records)).await;
            if let Err(err) = written {
                tracing::warn!(error = %err, "tunnel connection writer failed");
                self.shared.dropped(1, "the writer failed");
            }
        }
    }

    /// Writes the whole live set of the node (what was queued before is superseded);
    /// whether the directory took it.
    async fn republish(&mut self) -> bool {
        // Cleared first: a record dropped while this runs marks the set stale again.
        self.shared.stale.store(false, Ordering::Release);
        let mut superseded = 0;
        while self.queue.try_recv().is_ok() {
            superseded += 1;
        }
        // Taken after draining: a record queued from now on is newer than the set.
        let live = self.shared.live();
        let (directory, node) = (self.directory.clone(), self.node.clone());
        let count = live.len();
        let written =
            tokio::task::spawn_blocking(move || directory.replace_tunnel_connections(&node, &live))
                .await;
        match written {
            Ok(Ok(removed)) => {
                tracing::info!(node = %self.node, connections = count, removed, "live tunnel connections published");
                true
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "cannot publish the live tunnel connections yet");
                self.shared.stale.store(true, Ordering::Release);
                self.shared
                    .dropped(superseded, "the directory is not writable");
                false
            }
            Err(err) => {
                tracing::warn!(error = %err, "tunnel connection publication failed");
                self.shared.stale.store(true, Ordering::Release);
                self.shared.dropped(superseded, "the writer failed");
                false
            }
        }
    }
}

/// Writes records in order; at the first failure the rest are dropped and the writer will
/// publish the whole set instead.
fn write(directory: &Directory, shared: &Published, records: Vec<Record>) {
    let total = records.len();
    for (done, record) in records.into_iter().enumerate() {
        let (connection, result) = match record {
            Record::Connected(row) => (row.connection_id, directory.record_tunnel_connection(&row)),
            Record::Disconnected(id) => (id, directory.remove_tunnel_connection(id).map(drop)),
        };
        if let Err(err) = result {
            tracing::warn!(%connection, error = %err, "cannot update the tunnel connection in the directory");
            shared.dropped(total - done, "the directory is not writable");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use wvpc_tunnel::DatagramVersion;

    use super::*;

    struct TempState(PathBuf);

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

    fn recorded(directory: &Directory, tunnel: Uuid) -> BTreeSet<Uuid> {
        directory
            .tunnel_connections(tunnel)
            .unwrap()
            .into_iter()
            .map(|c| c.connection_id)
            .collect()
    }

    /// Waits (bounded) until the directory records exactly `want` for `tunnel`.
    async fn converges(directory: &Directory, tunnel: Uuid, want: &BTreeSet<Uuid>) {
        tokio::time::timeout(Duration::from_secs(60), async {
            while recorded(directory, tunnel) != *want {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the directory records the node's live connections");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_dropped_while_the_directory_is_locked_are_published_again_after() {
        let state =
            TempState(std::env::temp_dir().join(format!("wvpc-records-{}", Uuid::new_v4())));
        let directory = Arc::new(Directory::open(&state.0).unwrap());
        let tunnel = Uuid::new_v4();
        // Left by a previous run of this node: cleared by the first publication.
        let mut stale = LiveConnection {
            connection_id: Uuid::new_v4(),
            tunnel_id: tunnel,
            client_id: Uuid::new_v4(),
            version: "old".into(),
            arch: "linux_amd64".into(),
            conn_index: 0,
            edge_node: "iris-a".into(),
            remote_addr: "127.0.0.1:1".into(),
            since: LiveConnection::since_time(SystemTime::now()),
        };
        directory.record_tunnel_connection(&stale).unwrap();
        stale.connection_id = Uuid::new_v4();
        stale.edge_node = "iris-b".into();
        directory.record_tunnel_connection(&stale).unwrap();
        let other_node = BTreeSet::from([stale.connection_id]);

        let metrics = Arc::new(IrisMetrics::default());
        let (observer, writer) =
            DirectoryConnections::new(directory.clone(), "iris-a".into(), metrics.clone(), 2);
        let writer = tokio::spawn(writer);
        converges(&directory, tunnel, &other_node).await;

        let first = connection(tunnel, 0);
        observer.connected(&first, SystemTime::now());
        let mut want = other_node.clone();
        want.insert(first.connection_id);
        converges(&directory, tunnel, &want).await;

        // Another connection holds the write lock; connectors come and go meanwhile, far more
        // than the queue holds. The callbacks return at once (they run on the edge's path).
        let lock = rusqlite::Connection::open(directory.path()).unwrap();
        lock.execute_batch("BEGIN EXCLUSIVE; DELETE FROM runtime_nodes WHERE 0;")
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
        // The writer gives up on what it took from the queue (the directory is busy).
        tokio::time::timeout(Duration::from_secs(60), async {
            while metrics.connection_records_dropped.get() == dropped {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the writer gives up while the lock is held");
        // Reads are served meanwhile: what was published before the lock.
        assert!(recorded(&directory, tunnel).contains(&first.connection_id));

        lock.execute_batch("ROLLBACK;").unwrap();
        let mut want = other_node.clone();
        want.extend(arrived[5..].iter().map(|c| c.connection_id));
        converges(&directory, tunnel, &want).await;

        // Back to one record at a time.
        observer.disconnected(&arrived[5]);
        want.remove(&arrived[5].connection_id);
        converges(&directory, tunnel, &want).await;
        writer.abort();
    }
}
