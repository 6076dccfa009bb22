//! An iris node's sections of the status report: its live tunnel connections (from the tunnel
//! registry), the last hour of each service it routed (from the router's metrics), and its
//! cluster peers. Names and owning accounts come from the node's route snapshot, tunnel names
//! from the directory (the report is made on a blocking thread). Also what the iris and
//! runtime nodes share to open their operations listener: the admin token check, the start.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;
use wvpc_directory::Directory;
use wvpc_iris::edge::TunnelRegistry;
use wvpc_iris::metrics::IrisMetrics;
use wvpc_iris::peers::PeerMap;
use wvpc_iris::relay::Relay;
use wvpc_observe::ops::{Observable, TokenCheck};
use wvpc_observe::status::{
    ConnectionStatus, PeerStatus, StatusReport, TrafficStatus, TunnelStatus, rfc3339,
};

use crate::live_routes::LiveRoutes;

/// What an iris node shows on `/status`.
pub(crate) struct IrisStatus {
    pub(crate) node_name: String,
    pub(crate) registry: Arc<TunnelRegistry>,
    pub(crate) metrics: Arc<IrisMetrics>,
    pub(crate) routes: Arc<LiveRoutes>,
    pub(crate) directory: Arc<Directory>,
    pub(crate) peers: Arc<PeerMap>,
    pub(crate) relay: Option<Arc<Relay>>,
}

impl IrisStatus {
    fn tunnel_name(&self, tunnel: Uuid, account: Option<&str>) -> Option<String> {
        let directory = self.directory.for_account(account?).ok()??;
        directory.tunnel(tunnel).ok()?.map(|t| t.name)
    }
}

impl IrisStatus {
    /// Fills in the name and account of the service `status.id` names.
    fn name(&self, status: &mut TrafficStatus) {
        if let Some((name, account)) = status
            .id
            .parse::<Uuid>()
            .ok()
            .and_then(|service| self.routes.service_owner(service))
        {
            status.name = Some(name);
            status.account = account;
        }
    }
}

impl Observable for IrisStatus {
    fn contribute(&self, report: &mut StatusReport) {
        let mut tunnels: BTreeMap<Uuid, Vec<ConnectionStatus>> = BTreeMap::new();
        for live in self.registry.live() {
            let info = &live.info;
            tunnels
                .entry(info.tunnel_id)
                .or_default()
                .push(ConnectionStatus {
                    connector_id: info.client_id.to_string(),
                    version: info.version.clone(),
                    edge_node: self.node_name.clone(),
                    index: info.conn_index,
                    since: rfc3339(live.since),
                    datagram_version: info.datagram_version.to_string(),
                    state: if info.draining { "draining" } else { "active" }.to_owned(),
                    origin: info.remote_addr.to_string(),
                    streams_open: live.streams_open as u64,
                });
        }
        for (id, connections) in tunnels {
            let account = self.routes.tunnel_account(id);
            report.tunnels.push(TunnelStatus {
                id: id.to_string(),
                name: self.tunnel_name(id, account.as_deref()),
                account,
                connections,
            });
        }
        for (id, recent) in self.metrics.services.recent() {
            let mut status = recent.status(id, None, &report.windows);
            self.name(&mut status);
            report.services.push(status);
        }
        // What other parts of the process (the binding-worker of `wvpc dev`) counted by
        // service id, named the same way.
        for status in &mut report.service_requests {
            if status.name.is_none() {
                self.name(status);
            }
        }
        let down = self
            .relay
            .as_ref()
            .map(|r| r.peers_down())
            .unwrap_or_default();
        report.peers.extend(
            self.peers
                .nodes()
                .into_iter()
                .filter(|(node, _)| *node != self.node_name)
                .map(|(name, addr)| PeerStatus {
                    down: down.contains(&name),
                    name,
                    address: addr.to_string(),
                }),
        );
    }
}

/// Opens the operations listener `--metrics` asked for on `addr`.
pub(crate) async fn start_ops(
    addr: std::net::SocketAddr,
    ops: wvpc_observe::ops::Ops,
    limits: wvpc_listener::ServerLimits,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), crate::PlatformError> {
    let (local, task) = wvpc_observe::ops::start(addr, Arc::new(ops), limits)
        .await
        .map_err(|source| crate::PlatformError::Listen {
            what: "--metrics",
            addr,
            source,
        })?;
    tracing::info!(addr = %local, "operations listener: http://{local}/metrics, http://{local}/status");
    Ok((local, task))
}

/// Accepts the admin tokens of the directory's accounts (for non-loopback status readers).
pub(crate) fn admin_token_check(directory: Arc<Directory>) -> TokenCheck {
    Arc::new(move |bearer: &str| {
        let token = directory.authenticate(bearer).ok()??;
        (token.role == wvpc_directory::Role::Admin).then_some(token.account_id)
    })
}
