//! One iris node: the CONNECT router and the QUIC tunnel edge over the directory of a state
//! dir, with its metrics listener and its live connections published in the directory
//! (`tunnel_connections`, read by `wvpc tunnel info`). `wvpc iris` runs one alone; the
//! one-process stack of `wvpc dev` ([`crate::stack`]) runs one beside the runtime.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use wvpc_directory::{Directory, LiveConnection};
use wvpc_iris::ServiceStore;
use wvpc_iris::connect::{Router, RouterConfig};
use wvpc_iris::edge::{ConnectionInfo, ConnectionObserver, Edge, TunnelAuthority, TunnelRegistry};
use wvpc_tunnel::EdgeIdentity;

use crate::live_routes::LiveRoutes;
use crate::stack::DirectoryAuthority;

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
    ) -> anyhow::Result<IrisNode> {
        let edge_dir = crate::commands::edge::identity_dir(state);
        let edge_identity = EdgeIdentity::load_or_create(&edge_dir)
            .with_context(|| format!("loading the edge TLS identity in {}", edge_dir.display()))?;
        let stale = directory.clear_tunnel_connections(&options.node_name)?;
        if stale > 0 {
            tracing::info!(node = %options.node_name, connections = stale, "cleared connections left by this node's previous run");
        }
        let authority: Arc<dyn TunnelAuthority> = Arc::new(DirectoryAuthority(directory.clone()));
        let edge = Edge::bind(
            edge_listen,
            &edge_identity,
            authority,
            options.node_name.clone(),
        )
        .with_context(|| format!("starting the tunnel edge on {edge_listen} (UDP)"))?;
        let edge = Arc::new(edge);
        let registry = edge.registry();
        registry.set_observer(Arc::new(DirectoryConnections {
            directory: directory.clone(),
            node: options.node_name.clone(),
        }));
        let edge_addr = edge.local_addr();
        let mut tasks = Vec::new();
        let serving = edge.clone();
        tasks.push(tokio::spawn(async move { serving.serve().await }));

        let metrics = registry.metrics();
        let metrics_addr = match options.metrics_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("--metrics {addr}: cannot listen"))?;
                let local = listener.local_addr()?;
                tasks.push(tokio::spawn(wvpc_tunnel::metrics::serve(
                    listener,
                    metrics.clone(),
                )));
                tracing::info!(addr = %local, "iris metrics at http://{local}/metrics");
                Some(local)
            }
            None => None,
        };

        // iris reads an in-memory snapshot that follows the directory within POLL_INTERVAL.
        let (routes, watcher) = LiveRoutes::start(directory)?;
        tasks.push(watcher);
        let store: Arc<dyn ServiceStore> = routes.clone();
        let mut router_config = RouterConfig::default();
        router_config.metrics = Some(metrics);
        let router = Router::new(store, registry.clone(), router_config);
        let iris_listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen} for CONNECT"))?;
        let iris_addr = iris_listener.local_addr()?;
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

// === impl DirectoryConnections ===

/// Publishes this node's live connections in the directory (`tunnel_connections`).
struct DirectoryConnections {
    directory: Arc<Directory>,
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
        if let Err(err) = self.directory.record_tunnel_connection(&row) {
            tracing::warn!(connection = %info.connection_id, error = %err, "cannot record the tunnel connection in the directory");
        }
    }

    fn disconnected(&self, info: &ConnectionInfo) {
        if let Err(err) = self.directory.remove_tunnel_connection(info.connection_id) {
            tracing::warn!(connection = %info.connection_id, error = %err, "cannot remove the tunnel connection from the directory");
        }
    }
}
