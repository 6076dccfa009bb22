//! The registry of live, registered tunnel connections, keyed by tunnel id. It is what
//! iris's router uses to reach a private network: [`TunnelRegistry`] implements
//! [`TunnelPool`] by opening streams (TCP) and UDP sessions (datagram v3 or v2, as the
//! connector advertised) on a live connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_tunnel::quic::CloseCode;
use wvpc_tunnel::{BiStream, ConnectRequest, ConnectResponse, DatagramVersion, RpcThread};

use super::udp::SessionTable;
use crate::tunnel_pool::{BoxFuture, BoxIo, FlowContext, TunnelPool, UdpFlow};

/// How long the edge waits for a connector's `ConnectResponse` (the connector's own dial
/// timeout is shorter, so this only fires when the connector is stuck).
const CONNECT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the edge knows about one registered connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Connection id the edge assigned (sent back in `connectionDetails.uuid`).
    pub connection_id: Uuid,
    /// The tunnel.
    pub tunnel_id: Uuid,
    /// The connector process (random per run).
    pub client_id: Uuid,
    /// HA connection index (0..).
    pub conn_index: u8,
    /// Connector version string.
    pub version: String,
    /// Connector platform, e.g. `linux_amd64`.
    pub arch: String,
    /// Feature strings the connector sent.
    pub features: Vec<String>,
    /// How UDP travels on this connection.
    pub datagram_version: DatagramVersion,
    /// The connector's address as seen by the edge.
    pub remote_addr: SocketAddr,
    /// The connector unregistered: no new flows go to this connection.
    pub draining: bool,
}

/// A registered connection.
pub(crate) struct EdgeConnection {
    pub(crate) info: ConnectionInfo,
    pub(crate) quic: quinn::Connection,
    draining: AtomicBool,
    pub(crate) sessions: SessionTable,
    /// The edge's RPC thread, for datagram-v2 session RPCs on this connection.
    pub(crate) rpc: Option<RpcThread>,
}

impl EdgeConnection {
    pub(crate) fn new(info: ConnectionInfo, quic: quinn::Connection) -> Self {
        Self {
            info,
            quic,
            draining: AtomicBool::new(false),
            sessions: SessionTable::default(),
            rpc: None,
        }
    }

    /// Lets datagram-v2 sessions on this connection make their RPCs on `rpc`.
    pub(crate) fn with_rpc(mut self, rpc: RpcThread) -> Self {
        self.rpc = Some(rpc);
        self
    }

    fn usable(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && self.quic.close_reason().is_none()
    }

    fn snapshot(&self) -> ConnectionInfo {
        ConnectionInfo {
            draining: self.draining.load(Ordering::Acquire),
            ..self.info.clone()
        }
    }
}

/// Why a registration could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// The same connector already holds a live connection with this index.
    Duplicate,
    /// The QUIC connection closed before it could be recorded.
    Closed,
}

/// Live connections per tunnel. Cheap to share (`Arc`); all methods take `&self`.
pub struct TunnelRegistry {
    tunnels: Mutex<HashMap<Uuid, Vec<Arc<EdgeConnection>>>>,
    changed: Notify,
    next: AtomicUsize,
    udp_idle: Duration,
}

impl std::fmt::Debug for TunnelRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tunnels = self.lock().len();
        f.debug_struct("TunnelRegistry")
            .field("tunnels", &tunnels)
            .finish_non_exhaustive()
    }
}

impl Default for TunnelRegistry {
    fn default() -> Self {
        Self::new(super::udp::DEFAULT_UDP_IDLE)
    }
}

impl TunnelRegistry {
    /// An empty registry. `udp_idle` is the idle time announced to connectors for UDP
    /// sessions (they close a session after that long without traffic).
    pub fn new(udp_idle: Duration) -> Self {
        Self {
            tunnels: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            next: AtomicUsize::new(0),
            udp_idle,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Vec<Arc<EdgeConnection>>>> {
        self.tunnels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live connections of a tunnel.
    pub fn connections(&self, tunnel_id: Uuid) -> Vec<ConnectionInfo> {
        self.lock()
            .get(&tunnel_id)
            .map(|conns| conns.iter().map(|c| c.snapshot()).collect())
            .unwrap_or_default()
    }

    /// Tunnels with at least one live connection.
    pub fn tunnels(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    /// Resolves once the tunnel has a usable connection (at once if it already has one).
    pub async fn wait_for_connection(&self, tunnel_id: Uuid) {
        self.wait_until(tunnel_id, |conns| !conns.is_empty()).await;
    }

    /// Resolves once the tunnel has at least `count` usable connections.
    pub async fn wait_for_connections(&self, tunnel_id: Uuid, count: usize) {
        self.wait_until(tunnel_id, |conns| conns.len() >= count)
            .await;
    }

    /// Resolves once the tunnel has no connection left.
    pub async fn wait_for_no_connection(&self, tunnel_id: Uuid) {
        self.wait_until(tunnel_id, |conns| conns.is_empty()).await;
    }

    async fn wait_until(&self, tunnel_id: Uuid, done: impl Fn(&[ConnectionInfo]) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Register interest before checking, so a change in between is not missed.
            notified.as_mut().enable();
            let usable: Vec<ConnectionInfo> = self
                .connections(tunnel_id)
                .into_iter()
                .filter(|c| !c.draining)
                .collect();
            if done(&usable) {
                return;
            }
            notified.await;
        }
    }

    /// Records a registered connection. A live entry for the same connector process and index
    /// is a duplicate, unless it comes from the same address: then the connector reconnected
    /// from its socket before the edge noticed the old connection die, and the new one
    /// replaces it.
    pub(crate) fn record(&self, conn: Arc<EdgeConnection>) -> Result<(), RecordError> {
        let mut replaced = None;
        {
            let mut tunnels = self.lock();
            // Checked under the lock: a connection its task closes after this point is then
            // removed by that task (`forget` takes the lock too).
            if conn.quic.close_reason().is_some() {
                return Err(RecordError::Closed);
            }
            let conns = tunnels.entry(conn.info.tunnel_id).or_default();
            if let Some(pos) = conns.iter().position(|c| {
                c.info.client_id == conn.info.client_id
                    && c.info.conn_index == conn.info.conn_index
                    && c.quic.close_reason().is_none()
            }) {
                if conns[pos].info.remote_addr != conn.info.remote_addr {
                    return Err(RecordError::Duplicate);
                }
                replaced = Some(conns.remove(pos));
            }
            conns.push(conn);
        }
        if let Some(old) = replaced {
            tracing::info!(
                tunnel = %old.info.tunnel_id,
                connection = %old.info.connection_id,
                "connector reconnected from the same address; closing its previous connection"
            );
            old.sessions.clear();
            old.quic.close(
                CloseCode::Replaced.varint(),
                b"replaced by a newer connection",
            );
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// Stops routing new flows to a connection (the connector called `unregisterConnection`).
    pub(crate) fn drain(&self, tunnel_id: Uuid, connection_id: Uuid) {
        if let Some(conn) = self.find(tunnel_id, connection_id) {
            conn.draining.store(true, Ordering::Release);
            self.changed.notify_waiters();
        }
    }

    /// Forgets whatever was recorded for a QUIC connection (it closed).
    pub(crate) fn forget(&self, quic: &quinn::Connection) {
        let id = quic.stable_id();
        let mut removed = Vec::new();
        self.lock().retain(|_, conns| {
            conns.retain(|c| {
                let this = c.quic.stable_id() == id;
                if this {
                    removed.push(c.clone());
                }
                !this
            });
            !conns.is_empty()
        });
        for conn in &removed {
            conn.sessions.clear();
        }
        if !removed.is_empty() {
            self.changed.notify_waiters();
        }
    }

    /// Closes every connection of a tunnel (e.g. it was deleted or its credentials rotated).
    /// Connectors reconnect and must register again, which re-checks their credentials.
    /// Returns how many connections were closed.
    pub fn disconnect_tunnel(&self, tunnel_id: Uuid) -> usize {
        let conns = self.lock().remove(&tunnel_id).unwrap_or_default();
        for conn in &conns {
            conn.sessions.clear();
            conn.quic.close(
                CloseCode::Disconnected.varint(),
                b"tunnel disconnected by the edge",
            );
        }
        if !conns.is_empty() {
            tracing::info!(tunnel = %tunnel_id, connections = conns.len(), "tunnel connections dropped by the edge");
            self.changed.notify_waiters();
        }
        conns.len()
    }

    fn find(&self, tunnel_id: Uuid, connection_id: Uuid) -> Option<Arc<EdgeConnection>> {
        self.lock()
            .get(&tunnel_id)?
            .iter()
            .find(|c| c.info.connection_id == connection_id)
            .cloned()
    }

    /// Usable connections of a tunnel, rotated so that successive flows spread over them.
    fn candidates(&self, tunnel_id: Uuid) -> Vec<Arc<EdgeConnection>> {
        let mut conns: Vec<_> = self
            .lock()
            .get(&tunnel_id)
            .map(|c| c.iter().filter(|c| c.usable()).cloned().collect())
            .unwrap_or_default();
        if !conns.is_empty() {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % conns.len();
            conns.rotate_left(start);
        }
        conns
    }

    /// Opens a raw bidirectional stream on a live connection of the tunnel. The caller writes
    /// the preamble; [`TunnelPool::open_tcp`] is the usual way in.
    pub async fn open_stream(&self, tunnel_id: Uuid) -> Result<BiStream, ProxyError> {
        let candidates = self.candidates(tunnel_id);
        if candidates.is_empty() {
            return Err(no_connection(tunnel_id));
        }
        let mut last = None;
        for conn in candidates {
            match conn.quic.open_bi().await {
                Ok((send, recv)) => return Ok(BiStream::new(send, recv)),
                // That connection just died; the next one may be fine.
                Err(e) => last = Some(e),
            }
        }
        Err(
            ProxyError::new(ErrorCode::DestinationUnavailable).with_details(format!(
                "every connection of tunnel {tunnel_id} failed to open a stream: {}",
                last.map(|e| e.to_string()).unwrap_or_default()
            )),
        )
    }

    async fn connect_tcp(
        &self,
        tunnel_id: Uuid,
        dest: SocketAddr,
        ctx: &FlowContext,
    ) -> Result<BoxIo, ProxyError> {
        let mut stream = self.open_stream(tunnel_id).await?;
        let flow_id = if ctx.request_id.is_empty() {
            Uuid::new_v4().to_string()
        } else {
            ctx.request_id.clone()
        };
        let request = ConnectRequest::tcp(dest, flow_id);
        let terminated = |what: &str, e: &dyn std::fmt::Display| {
            ProxyError::new(ErrorCode::ConnectionTerminated)
                .with_details(format!("tunnel stream to {dest} {what}: {e}"))
        };
        if let Err(e) = request.write(&mut stream.send).await {
            return Err(terminated("failed while sending the request", &e));
        }
        let response = match tokio::time::timeout(
            CONNECT_RESPONSE_TIMEOUT,
            ConnectResponse::read(&mut stream.recv),
        )
        .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                stream.abort();
                return Err(terminated("failed before the connector answered", &e));
            }
            Err(_) => {
                stream.abort();
                return Err(
                    ProxyError::new(ErrorCode::ConnectionTimeout).with_details(format!(
                        "the connector did not answer for {dest} within {}s",
                        CONNECT_RESPONSE_TIMEOUT.as_secs()
                    )),
                );
            }
        };
        if let Some(err) = response.failure_code() {
            stream.abort();
            tracing::debug!(tunnel = %tunnel_id, %dest, code = %err.code, "connector refused the flow");
            return Err(err);
        }
        Ok(Box::new(stream))
    }

    async fn connect_udp(
        &self,
        tunnel_id: Uuid,
        dest: SocketAddr,
    ) -> Result<Box<dyn UdpFlow>, ProxyError> {
        let candidates = self.candidates(tunnel_id);
        // Each connection speaks the datagram version its connector advertised.
        let conn = candidates
            .into_iter()
            .next()
            .ok_or_else(|| no_connection(tunnel_id))?;
        match (conn.info.datagram_version, conn.rpc.clone()) {
            (DatagramVersion::V3, _) => super::udp::open(conn, dest, self.udp_idle).await,
            (DatagramVersion::V2, Some(rpc)) => {
                super::udp_v2::open(conn, rpc, dest, self.udp_idle).await
            }
            (DatagramVersion::V2, None) => Err(ProxyError::new(ErrorCode::ProxyInternalError)
                .with_details("datagram-v2 connection without an RPC thread")),
        }
    }
}

fn no_connection(tunnel_id: Uuid) -> ProxyError {
    ProxyError::new(ErrorCode::DestinationUnavailable)
        .with_details(format!("no connector is connected for tunnel {tunnel_id}"))
}

impl TunnelPool for TunnelRegistry {
    fn open_tcp<'a>(
        &'a self,
        tunnel: Uuid,
        dest: SocketAddr,
        ctx: &'a FlowContext,
    ) -> BoxFuture<'a, Result<BoxIo, ProxyError>> {
        Box::pin(self.connect_tcp(tunnel, dest, ctx))
    }

    fn open_udp<'a>(
        &'a self,
        tunnel: Uuid,
        dest: SocketAddr,
        _ctx: &'a FlowContext,
    ) -> BoxFuture<'a, Result<Box<dyn UdpFlow>, ProxyError>> {
        Box::pin(self.connect_udp(tunnel, dest))
    }
}
