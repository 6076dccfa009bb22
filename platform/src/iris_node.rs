//! One iris node: the CONNECT router and the QUIC tunnel edge over the directory of a state
//! dir, with its metrics listener and its live connections published in the directory
//! (`tunnel_connections`, read by `wvpc tunnel info`). `wvpc iris` runs one alone; the
//! one-process stack of `wvpc dev` ([`crate::stack`]) runs one beside the runtime.
//!
//! The edge never waits for the directory: routes and credentials are in memory
//! ([`LiveRoutes`], [`crate::authority`]), and connection records go through a queue that
//! one writer task drains in order on a blocking thread.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use wvpc_directory::{Directory, LiveConnection};
use wvpc_iris::ServiceStore;
use wvpc_iris::connect::{Router, RouterConfig};
use wvpc_iris::edge::{ConnectionInfo, ConnectionObserver, Edge, TunnelAuthority, TunnelRegistry};
use wvpc_tunnel::EdgeIdentity;

use crate::PlatformError;
use crate::live_routes::LiveRoutes;

/// How an iris node presents itself and what it exposes besides its two listeners.
#[derive(Debug, Clone)]
pub struct IrisOptions {
    /// Name reported to connectors as their location and recorded with their connections.
    pub node_name: String,
    /// Where to serve Prometheus metrics (`None`: not served).
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for IrisOptions {
    fn default() -> Self {
        Self {
            node_name: "wvpc-dev".into(),
            metrics_listen: None,
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
    registry: Arc<TunnelRegistry>,
    edge: Arc<Edge>,
    router_task: Option<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl IrisNode {
    /// Starts the edge on `edge_listen` and the router on `listen` (TCP), both reading
    /// `directory`. Connections this node recorded in a previous run are cleared first.
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
        let stale = directory.clear_tunnel_connections(&options.node_name)?;
        if stale > 0 {
            tracing::info!(node = %options.node_name, connections = stale, "cleared connections left by this node's previous run");
        }
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
        let (records, queue) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(record_connections(directory.clone(), queue)));
        registry.set_observer(Arc::new(DirectoryConnections {
            records,
            node: options.node_name.clone(),
        }));
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
                tasks.push(tokio::spawn(wvpc_tunnel::metrics::serve(
                    listener,
                    metrics.clone(),
                )));
                tracing::info!(addr = %local, "iris metrics at http://{local}/metrics");
                Some(local)
            }
            None => None,
        };

        let store: Arc<dyn ServiceStore> = routes.clone();
        let mut router_config = RouterConfig::default();
        router_config.metrics = Some(metrics);
        let router = Router::new(store, registry.clone(), router_config);
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
    Disconnected(uuid::Uuid),
}

/// Publishes this node's live connections in the directory (`tunnel_connections`): the
/// registry's callbacks only queue, [`record_connections`] writes.
struct DirectoryConnections {
    records: mpsc::UnboundedSender<Record>,
    node: String,
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
        let _ = self.records.send(Record::Connected(Box::new(row)));
    }

    fn disconnected(&self, info: &ConnectionInfo) {
        let _ = self.records.send(Record::Disconnected(info.connection_id));
    }
}

/// Writes queued connection records in order, each batch on one blocking thread, until the
/// node stops. A record that cannot be written is logged and dropped: the table is for
/// `wvpc tunnel info`, and the next start of the node clears what it left.
async fn record_connections(directory: Arc<Directory>, mut queue: mpsc::UnboundedReceiver<Record>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, 256).await > 0 {
        let directory = directory.clone();
        let records = std::mem::take(&mut batch);
        let written = tokio::task::spawn_blocking(move || {
            for record in records {
                let (connection, result) = match record {
                    Record::Connected(row) => {
                        (row.connection_id, directory.record_tunnel_connection(&row))
                    }
                    Record::Disconnected(id) => {
                        (id, directory.remove_tunnel_connection(id).map(drop))
                    }
                };
                if let Err(err) = result {
                    tracing::warn!(%connection, error = %err, "cannot update the tunnel connection in the directory");
                }
            }
        })
        .await;
        if let Err(err) = written {
            tracing::warn!(error = %err, "tunnel connection writer failed");
        }
    }
}
