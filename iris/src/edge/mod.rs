//! The tunnel edge: the QUIC listener that connectors (ours or the stock `cloudflared`) dial.
//!
//! Per connection: the first bidirectional stream the connector opens is the control stream
//! ([`registration`]): Cap'n Proto RPC, `registerConnection` checked against a
//! [`TunnelAuthority`]. Registered connections go into the [`TunnelRegistry`], which implements
//! [`crate::TunnelPool`]: TCP flows are streams the edge opens, UDP flows are datagram-v3
//! sessions ([`udp`]) or, for connectors without a v3 feature, datagram-v2 sessions set up by
//! RPC ([`udp_v2`]). A connection that closes leaves the registry at once; one whose connector
//! went silent while flows waited on it is closed within about a second ([`liveness`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use wvpc_iris::edge::{CredentialsAuthority, Edge};
//! let identity = wvpc_tunnel::EdgeIdentity::load_or_create("state/edge".as_ref())?;
//! let authority = Arc::new(CredentialsAuthority::new());
//! let edge = Arc::new(Edge::bind("127.0.0.1:7844".parse()?, &identity, authority, "dev".into())?);
//! let pool: Arc<dyn wvpc_iris::TunnelPool> = edge.registry();
//! tokio::spawn({ let edge = edge.clone(); async move { edge.serve().await } });
//! # let _ = pool; Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use wvpc_tunnel::StreamKind;
use wvpc_tunnel::preamble::read_signature;
use wvpc_tunnel::quic::CloseCode;
use wvpc_tunnel::{EdgeIdentity, QuicConfigError, RpcThread, edge_server_config};

mod admission;
pub mod authority;
mod liveness;
mod registration;
pub mod registry;
mod udp;
mod udp_v2;

pub use admission::AdmissionLimits;
pub use authority::{
    AuthCheck, AuthFailure, CredentialsAuthority, TunnelAuthority, check_credentials,
};
pub use registry::{ConnectionInfo, ConnectionObserver, LiveConnection, TunnelRegistry};
pub use udp::DEFAULT_UDP_IDLE;

use registration::{ControlContext, ControlEvent};

/// A connector must open its control stream and register within this time.
const REGISTRATION_DEADLINE: Duration = Duration::from_secs(10);
/// After refusing a registration, how long the edge lets the connector read the answer and
/// hang up before closing the connection itself.
const REFUSED_GRACE: Duration = Duration::from_secs(5);
/// A stream the connector opens must start with its signature within this time.
const STREAM_SIGNATURE_DEADLINE: Duration = Duration::from_secs(5);

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The TLS/QUIC configuration was refused.
    #[error("edge QUIC configuration: {0}")]
    Config(#[from] QuicConfigError),
    /// The UDP socket could not be bound.
    #[error("cannot listen for tunnel connections on UDP {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// The RPC thread could not start.
    #[error("cannot start the edge RPC thread: {0}")]
    RpcThread(std::io::Error),
}

struct Shared {
    registry: Arc<TunnelRegistry>,
    authority: Arc<dyn TunnelAuthority>,
    node_name: Arc<str>,
    rpc: RpcThread,
}

/// The QUIC listener for tunnel connections.
pub struct Edge {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("local_addr", &self.local_addr)
            .field("node_name", &self.shared.node_name)
            .finish_non_exhaustive()
    }
}

impl Edge {
    /// Binds the listener (UDP `addr`; port 0 picks one). `node_name` is reported to
    /// connectors as the location they are connected to. Must be called inside a tokio
    /// runtime.
    pub fn bind(
        addr: SocketAddr,
        identity: &EdgeIdentity,
        authority: Arc<dyn TunnelAuthority>,
        node_name: String,
    ) -> Result<Self, EdgeError> {
        Self::bind_with_registry(
            addr,
            identity,
            authority,
            node_name,
            Arc::new(TunnelRegistry::default()),
        )
    }

    /// [`Edge::bind`] with a registry built by the caller (e.g. another UDP idle time).
    pub fn bind_with_registry(
        addr: SocketAddr,
        identity: &EdgeIdentity,
        authority: Arc<dyn TunnelAuthority>,
        node_name: String,
        registry: Arc<TunnelRegistry>,
    ) -> Result<Self, EdgeError> {
        let config = edge_server_config(identity)?;
        let endpoint = quinn::Endpoint::server(config, addr)
            .map_err(|source| EdgeError::Bind { addr, source })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| EdgeError::Bind { addr, source })?;
        let rpc = RpcThread::spawn("wvpc-edge-rpc").map_err(EdgeError::RpcThread)?;
        tracing::info!(%local_addr, node = %node_name, "tunnel edge listening (QUIC)");
        Ok(Self {
            endpoint,
            local_addr,
            shared: Arc::new(Shared {
                registry,
                authority,
                node_name: node_name.into(),
                rpc,
            }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The registry of live connections (also the [`crate::TunnelPool`]).
    pub fn registry(&self) -> Arc<TunnelRegistry> {
        self.shared.registry.clone()
    }

    /// Accepts connections until [`Edge::close`]. Each connection runs in its own task.
    pub async fn serve(&self) {
        while let Some(incoming) = self.endpoint.accept().await {
            tokio::spawn(handle_incoming(incoming, self.shared.clone()));
        }
    }

    /// Drains the edge: refuses new tunnel connections, closes idle flows (pooled connections
    /// between requests) at once, lets flows that carry a request finish for at most `grace`,
    /// then closes every connection with [`CloseCode::EdgeShutdown`] (connectors reconnect
    /// elsewhere or when the edge is back). Returns whether every stream finished.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.endpoint.set_server_config(None);
        let open = self.shared.registry.metrics().streams_open.get();
        tracing::info!(
            open_streams = open,
            grace_s = grace.as_secs_f32(),
            "tunnel edge draining"
        );
        let finished = tokio::time::timeout(grace, self.shared.registry.drain_streams())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(
                open_streams = self.shared.registry.metrics().streams_open.get(),
                "grace period over; closing tunnel connections with streams still open"
            );
        }
        self.close();
        finished
    }

    /// Closes every connection and stops [`Edge::serve`].
    pub fn close(&self) {
        self.endpoint
            .close(CloseCode::EdgeShutdown.varint(), b"edge shutting down");
    }
}

async fn handle_incoming(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    if !shared.registry.admit_source(remote.ip()) {
        tracing::warn!(%remote, "tunnel connection refused: too many new connections from this address (registration flood limit)");
        incoming.refuse();
        return;
    }
    let quic = match incoming.await {
        Ok(quic) => quic,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "tunnel handshake failed");
            return;
        }
    };
    let deadline = Instant::now() + REGISTRATION_DEADLINE;
    let Some(conn) = register(&quic, &shared, deadline).await else {
        // The connection is closed; a registration that raced with closing it is undone.
        shared.registry.forget(&quic);
        return;
    };

    let (tunnel, connection) = (conn.info.tunnel_id, conn.info.connection_id);
    let reader = tokio::spawn(udp::read_datagrams(conn.clone()));
    let watcher = tokio::spawn(liveness::watch(conn.clone(), shared.registry.clone()));
    // Streams the connector opens after registering: datagram-v2 session RPCs.
    while let Ok((send, recv)) = quic.accept_bi().await {
        tokio::spawn(connector_stream(
            conn.clone(),
            shared.rpc.clone(),
            send,
            recv,
        ));
    }
    shared.registry.forget(&quic);
    reader.abort();
    watcher.abort();
    let reason = quic
        .close_reason()
        .map(|r| r.to_string())
        .unwrap_or_default();
    tracing::info!(%tunnel, %connection, %remote, %reason, "tunnel connection closed");
}

/// One stream the connector opened after registering: an RPC stream (datagram v2) is served by
/// [`udp_v2::serve_connector_stream`]; anything else is reset, with the reason logged.
async fn connector_stream(
    conn: Arc<registry::EdgeConnection>,
    rpc: RpcThread,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (tunnel, connection) = (conn.info.tunnel_id, conn.info.connection_id);
    let refuse = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream| {
        let _ = send.reset(quinn::VarInt::from_u32(0));
        let _ = recv.stop(quinn::VarInt::from_u32(0));
    };
    match tokio::time::timeout(STREAM_SIGNATURE_DEADLINE, read_signature(&mut recv)).await {
        Ok(Ok(StreamKind::Rpc)) => {
            if rpc
                .spawn_local(move || udp_v2::serve_connector_stream(conn, send, recv))
                .is_err()
            {
                tracing::debug!(%tunnel, %connection, "edge RPC thread gone; connector stream dropped");
            }
        }
        Ok(Ok(StreamKind::Data)) => {
            tracing::warn!(%tunnel, %connection, "connector opened a data stream, which only the edge may open; reset");
            refuse(&mut send, &mut recv);
        }
        Ok(Err(e)) => {
            tracing::warn!(%tunnel, %connection, error = %e, "connector opened a stream that is not tunnel RPC; reset");
            refuse(&mut send, &mut recv);
        }
        Err(_) => {
            tracing::warn!(%tunnel, %connection, "connector stream sent no signature in time; reset");
            refuse(&mut send, &mut recv);
        }
    }
}

/// Takes the control stream and waits for the registration. `None` when the connection was
/// refused or closed (with the reason logged).
async fn register(
    quic: &quinn::Connection,
    shared: &Shared,
    deadline: Instant,
) -> Option<Arc<registry::EdgeConnection>> {
    let remote = quic.remote_address();
    let (send, recv) = match tokio::time::timeout_at(deadline, quic.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "tunnel connection closed before opening its control stream");
            return None;
        }
        Err(_) => {
            tracing::warn!(%remote, "tunnel connection opened no control stream in time; closed");
            quic.close(
                CloseCode::RegistrationTimeout.varint(),
                b"no control stream",
            );
            return None;
        }
    };
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let ctx = ControlContext {
        registry: shared.registry.clone(),
        authority: shared.authority.clone(),
        node_name: shared.node_name.clone(),
        quic: quic.clone(),
        events: events_tx,
        rpc: shared.rpc.clone(),
    };
    if shared
        .rpc
        .spawn_local(move || registration::serve_control_stream(ctx, send, recv))
        .is_err()
    {
        quic.close(CloseCode::EdgeShutdown.varint(), b"edge shutting down");
        return None;
    }
    match tokio::time::timeout_at(deadline, events.recv()).await {
        Ok(Some(ControlEvent::Registered(conn))) => Some(conn),
        Ok(Some(ControlEvent::Refused(cause))) => {
            // Let the connector read the answer and hang up; then close it ourselves.
            let _ = tokio::time::timeout(REFUSED_GRACE, quic.closed()).await;
            quic.close(CloseCode::RegistrationRefused.varint(), cause.as_bytes());
            None
        }
        Ok(ended) => {
            let error = match ended {
                Some(ControlEvent::Ended(Some(error))) => error,
                _ => "stream closed".to_owned(),
            };
            tracing::warn!(%remote, %error, "tunnel control stream ended before registration; connection closed");
            quic.close(
                CloseCode::ProtocolViolation.varint(),
                b"control stream is not tunnel RPC",
            );
            None
        }
        Err(_) => {
            tracing::warn!(%remote, "tunnel connection did not register in time; closed");
            quic.close(
                CloseCode::RegistrationTimeout.varint(),
                b"registration timeout",
            );
            None
        }
    }
}
