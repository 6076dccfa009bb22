//! UDP sessions, connector side. Over datagram v3 the edge registers a session in-band
//! (`0x00`) and we answer `0x03`; over datagram v2 ([`UdpMode::V2`]) it calls
//! `registerUdpSession` on an RPC stream (see `streams`) and we answer there. Either way we
//! bind a UDP socket connected to the destination (the virtual DNS address goes to a
//! resolver), then relay payloads both ways. A session ends after its idle time without
//! traffic (over v2 we then call the edge's `unregisterUdpSession`, as cloudflared does), when
//! the edge unregisters it (v2), or when its connection closes.
//!
//! Sessions are shared by all connections of the connector: a registration for a known id
//! arriving on another connection moves the session there (as cloudflared does).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wvpc_tunnel::datagram::{
    Datagram, DatagramError, MAX_PAYLOAD_LEN, RegistrationResponse, RegistrationStatus,
    STATUS_DESTINATION_PROHIBITED, SessionRegistration, encode_payload,
};
use wvpc_tunnel::datagram_v2::{DatagramV2, encode_udp};
use wvpc_tunnel::metrics::GaugeGuard;
use wvpc_tunnel::session_rpc::{self, SessionCall};
use wvpc_tunnel::{DatagramVersion, RequestId, RpcThread, VIRTUAL_DNS_RESOLVER};

use crate::egress::EgressPolicy;
use crate::metrics::ConnectorMetrics;
use crate::origin::{FlowLimiter, FlowSlot, OriginRoutes};

/// Idle time when the edge announces 0 (cloudflared's default).
const DEFAULT_IDLE: Duration = Duration::from_secs(210);
/// Receive buffer: room for a payload larger than the tunnel limit, to detect and drop it.
const RECV_BUFFER: usize = 2048;

/// How this connector's UDP sessions travel, fixed for its life (as in cloudflared).
#[derive(Clone)]
pub(crate) enum UdpMode {
    /// Datagram v3.
    V3,
    /// Datagram v2; session RPCs to the edge run on this thread.
    V2(RpcThread),
}

impl UdpMode {
    pub(crate) fn new(version: DatagramVersion, rpc: &RpcThread) -> Self {
        match version {
            DatagramVersion::V3 => Self::V3,
            DatagramVersion::V2 => Self::V2(rpc.clone()),
        }
    }

    fn encode(&self, id: RequestId, payload: &[u8]) -> Result<bytes::Bytes, DatagramError> {
        match self {
            Self::V3 => encode_payload(id, payload),
            Self::V2(_) => encode_udp(id, payload),
        }
    }
}

/// `registerUdpSession`'s error text when the flow limit is reached: cloudflared's words, which
/// edges map to `rate_limited`.
const V2_RATE_LIMITED: &str = "failed to start udp session due to rate limiting";

struct Session {
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    quic: Mutex<quinn::Connection>,
    last_active: Mutex<Instant>,
    closed: CancellationToken,
    _slot: FlowSlot,
    _open: GaugeGuard,
}

/// Why a session could not be opened: the v3 status and a message.
type Refusal = (RegistrationStatus, String);

impl Session {
    fn touch(&self) {
        *self
            .last_active
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn quic(&self) -> quinn::Connection {
        self.quic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Every UDP session of a connector, by request id.
pub(crate) struct UdpSessions {
    sessions: Mutex<HashMap<RequestId, Arc<Session>>>,
    routes: OriginRoutes,
    limiter: FlowLimiter,
    mode: UdpMode,
    egress: EgressPolicy,
    metrics: Arc<ConnectorMetrics>,
}

impl UdpSessions {
    pub(crate) fn new(
        routes: OriginRoutes,
        limiter: FlowLimiter,
        mode: UdpMode,
        egress: EgressPolicy,
        metrics: Arc<ConnectorMetrics>,
    ) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            routes,
            limiter,
            mode,
            egress,
            metrics,
        }
    }

    /// Whether sessions are set up by RPC (datagram v2).
    pub(crate) fn by_rpc(&self) -> bool {
        matches!(self.mode, UdpMode::V2(_))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RequestId, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the connection's datagrams until it closes; then ends the sessions bound to it.
    pub(crate) async fn serve(self: Arc<Self>, quic: quinn::Connection) {
        while let Ok(raw) = quic.read_datagram().await {
            if self.by_rpc() {
                match DatagramV2::decode(raw) {
                    Ok(DatagramV2::Udp {
                        session_id,
                        payload,
                    }) => self.forward(session_id, &payload),
                    Ok(DatagramV2::Other(kind)) => {
                        tracing::trace!(kind, "v2 datagram ignored (not proxied)");
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "malformed datagram from the edge dropped");
                    }
                }
                continue;
            }
            match Datagram::decode(raw) {
                Ok(Datagram::Registration(reg)) => self.register(reg, &quic),
                Ok(Datagram::Payload {
                    request_id,
                    payload,
                }) => self.forward(request_id, &payload),
                Ok(Datagram::Icmp(_)) => tracing::trace!("ICMP datagram ignored (not proxied)"),
                Ok(Datagram::RegistrationResponse(_)) => {
                    tracing::debug!(
                        "edge sent a registration response, which only connectors send; ignored"
                    );
                }
                Err(e) => tracing::debug!(error = %e, "malformed datagram from the edge dropped"),
            }
        }
        let id = quic.stable_id();
        self.lock().retain(|_, s| {
            let bound_here = s.quic().stable_id() == id;
            if bound_here {
                s.closed.cancel();
            }
            !bound_here
        });
    }

    fn forward(&self, request_id: RequestId, payload: &[u8]) {
        let Some(session) = self.lock().get(&request_id).cloned() else {
            tracing::trace!(session = %request_id, "payload for an unknown UDP session dropped");
            return;
        };
        session.touch();
        self.metrics.bytes_to_origin.inc_by(payload.len() as u64);
        if let Err(e) = session.socket.try_send(payload) {
            tracing::trace!(session = %request_id, error = %e, "UDP payload to origin dropped");
        }
    }

    fn reply(
        quic: &quinn::Connection,
        request_id: RequestId,
        status: RegistrationStatus,
        message: String,
    ) {
        let response = RegistrationResponse {
            request_id,
            status,
            message,
        };
        if let Err(e) = quic.send_datagram(response.encode()) {
            tracing::debug!(session = %request_id, error = %e, "registration response not sent");
        }
    }

    fn register(self: &Arc<Self>, reg: SessionRegistration, quic: &quinn::Connection) {
        let request_id = reg.request_id;
        match self.open(request_id, reg.dest, reg.idle, quic) {
            Ok(session) => {
                Self::reply(quic, request_id, RegistrationStatus::Ok, String::new());
                if let Some(session) = session
                    && !reg.payload.is_empty()
                {
                    let _ = session.socket.try_send(&reg.payload);
                }
            }
            Err((status, message)) => Self::reply(quic, request_id, status, message),
        }
    }

    /// `registerUdpSession` (datagram v2): the error text for the edge, empty on success.
    pub(crate) fn register_by_rpc(
        self: &Arc<Self>,
        id: RequestId,
        dest: SocketAddr,
        idle: Duration,
        quic: &quinn::Connection,
    ) -> String {
        match self.open(id, dest, idle, quic) {
            Ok(_) => String::new(),
            Err((RegistrationStatus::TooManyActiveFlows, message)) => {
                format!("{V2_RATE_LIMITED}: {message}")
            }
            Err((_, message)) => message,
        }
    }

    /// `unregisterUdpSession` from the edge (datagram v2): ends the session without telling
    /// the edge back.
    pub(crate) fn unregister_by_rpc(&self, id: RequestId, message: &str) {
        match self.lock().remove(&id) {
            Some(session) => {
                tracing::debug!(session = %id, %message, "edge unregistered the UDP session");
                session.closed.cancel();
            }
            None => {
                tracing::debug!(session = %id, %message, "edge unregistered an unknown UDP session")
            }
        }
    }

    /// Opens (or, for a known id, moves to `quic` and refreshes) a session. `Some` is a new
    /// session.
    fn open(
        self: &Arc<Self>,
        request_id: RequestId,
        dest: SocketAddr,
        idle: Duration,
        quic: &quinn::Connection,
    ) -> Result<Option<Arc<Session>>, Refusal> {
        let existing = self.lock().get(&request_id).cloned();
        if let Some(session) = existing {
            // A retransmission, or a move to this connection.
            *session.quic.lock().unwrap_or_else(PoisonError::into_inner) = quic.clone();
            session.touch();
            return Ok(None);
        }
        let is_dns = dest == VIRTUAL_DNS_RESOLVER;
        if let Err(err) = self.egress.check(dest) {
            tracing::warn!(%dest, "destination not in the egress allow-list; UDP session refused");
            self.metrics.error(err.code);
            return Err((
                RegistrationStatus::Other(STATUS_DESTINATION_PROHIBITED),
                err.details.unwrap_or_default(),
            ));
        }
        let slot = match self.limiter.acquire() {
            Ok(slot) => slot,
            Err(err) => {
                tracing::warn!(%dest, "too many active flows; UDP session refused");
                self.metrics.error(err.code);
                if is_dns {
                    self.metrics.dns_queries.inc("refused");
                }
                let message = err.details.unwrap_or_default();
                return Err((RegistrationStatus::TooManyActiveFlows, message));
            }
        };
        let target = self.routes.target(dest);
        let socket = connected_socket(target).inspect_err(|(_, message)| {
            tracing::debug!(%dest, %target, %message, "UDP session refused");
            self.metrics
                .error(wvpc_errors::ErrorCode::DestinationUnavailable);
        })?;
        let idle = if idle.is_zero() { DEFAULT_IDLE } else { idle };
        let session = Arc::new(Session {
            socket: Arc::new(socket),
            target,
            quic: Mutex::new(quic.clone()),
            last_active: Mutex::new(Instant::now()),
            closed: CancellationToken::new(),
            _slot: slot,
            _open: GaugeGuard::raise(&self.metrics.udp_sessions_open),
        });
        self.metrics.udp_sessions.inc();
        if is_dns {
            self.metrics.dns_queries.inc("forwarded");
        }
        self.lock().insert(request_id, session.clone());
        tracing::debug!(session = %request_id, %dest, %target, idle_s = idle.as_secs(), "UDP session opened");
        tokio::spawn(self.clone().relay(request_id, session.clone(), idle));
        Ok(Some(session))
    }

    /// Origin → edge, until the session idles out or its connection closes.
    async fn relay(self: Arc<Self>, request_id: RequestId, session: Arc<Session>, idle: Duration) {
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            let deadline = *session
                .last_active
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                + idle;
            tokio::select! {
                _ = session.closed.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => {
                    let last = *session.last_active.lock().unwrap_or_else(PoisonError::into_inner);
                    if last + idle <= Instant::now() {
                        break;
                    }
                }
                received = session.socket.recv(&mut buf) => match received {
                    Ok(n) if n > MAX_PAYLOAD_LEN => {
                        tracing::debug!(session = %request_id, bytes = n, "UDP reply over the tunnel limit dropped");
                    }
                    Ok(n) => {
                        session.touch();
                        self.metrics.bytes_from_origin.inc_by(n as u64);
                        if let Ok(datagram) = self.mode.encode(request_id, &buf[..n])
                            && let Err(e) = session.quic().send_datagram(datagram)
                        {
                            tracing::trace!(session = %request_id, error = %e, "UDP reply to edge dropped");
                        }
                    }
                    Err(e) => {
                        // e.g. ICMP port unreachable surfaced as ECONNREFUSED: keep the session,
                        // the edge's own timeout decides.
                        tracing::trace!(session = %request_id, target = %session.target, error = %e, "UDP receive error");
                    }
                },
            }
        }
        // Still listed: it idled out here (not unregistered by the edge, not moved).
        let expired = {
            let mut sessions = self.lock();
            let expired = sessions
                .get(&request_id)
                .is_some_and(|s| Arc::ptr_eq(s, &session));
            if expired {
                sessions.remove(&request_id);
            }
            expired
        };
        tracing::debug!(session = %request_id, "UDP session closed");
        if let (UdpMode::V2(rpc), true) = (&self.mode, expired && !session.closed.is_cancelled()) {
            let quic = session.quic();
            let outcome = session_rpc::call(
                rpc,
                quic,
                SessionCall::Unregister {
                    id: request_id,
                    message: "idle timeout on the connector".into(),
                },
            )
            .await;
            if let Err(e) = outcome {
                tracing::debug!(session = %request_id, error = %e, "unregisterUdpSession on the edge failed");
            }
        }
    }
}

/// A non-blocking UDP socket connected to `target` (no network traffic: connect only sets the
/// peer), so registration never waits.
fn connected_socket(target: SocketAddr) -> Result<UdpSocket, (RegistrationStatus, String)> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let std_socket = std::net::UdpSocket::bind(local)
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .map_err(|e| {
            (
                RegistrationStatus::UnableToBindSocket,
                format!("bind udp {local}: {e}"),
            )
        })?;
    std_socket.connect(target).map_err(|e| {
        (
            RegistrationStatus::DestinationUnreachable,
            format!("dial udp {target}: {e}"),
        )
    })?;
    UdpSocket::from_std(std_socket).map_err(|e| {
        (
            RegistrationStatus::UnableToBindSocket,
            format!("udp socket for {target}: {e}"),
        )
    })
}
