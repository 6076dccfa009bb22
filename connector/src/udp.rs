//! UDP sessions over datagram v3, connector side. The edge registers a session (`0x00`); we
//! bind a UDP socket connected to the destination (the virtual DNS address goes to a
//! resolver), answer `0x03`, then relay payloads both ways. A session ends after its idle
//! time without traffic, or when its connection closes.
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
    Datagram, MAX_PAYLOAD_LEN, RegistrationResponse, RegistrationStatus,
    STATUS_DESTINATION_PROHIBITED, SessionRegistration, encode_payload,
};
use wvpc_tunnel::metrics::GaugeGuard;
use wvpc_tunnel::{RequestId, VIRTUAL_DNS_RESOLVER};

use crate::egress::EgressPolicy;
use crate::metrics::ConnectorMetrics;
use crate::origin::{FlowLimiter, FlowSlot, OriginRoutes};

/// Idle time when the edge announces 0 (cloudflared's default).
const DEFAULT_IDLE: Duration = Duration::from_secs(210);
/// Receive buffer: room for a payload larger than the tunnel limit, to detect and drop it.
const RECV_BUFFER: usize = 2048;

struct Session {
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    quic: Mutex<quinn::Connection>,
    last_active: Mutex<Instant>,
    closed: CancellationToken,
    _slot: FlowSlot,
    _open: GaugeGuard,
}

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
    egress: EgressPolicy,
    metrics: Arc<ConnectorMetrics>,
}

impl UdpSessions {
    pub(crate) fn new(
        routes: OriginRoutes,
        limiter: FlowLimiter,
        egress: EgressPolicy,
        metrics: Arc<ConnectorMetrics>,
    ) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            routes,
            limiter,
            egress,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RequestId, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the connection's datagrams until it closes; then ends the sessions bound to it.
    pub(crate) async fn serve(self: Arc<Self>, quic: quinn::Connection) {
        while let Ok(raw) = quic.read_datagram().await {
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
        self.metrics.bytes_to_origin.add(payload.len() as u64);
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
        let existing = self.lock().get(&request_id).cloned();
        if let Some(session) = existing {
            // A retransmission, or a move to this connection: answer OK again.
            *session.quic.lock().unwrap_or_else(PoisonError::into_inner) = quic.clone();
            session.touch();
            Self::reply(quic, request_id, RegistrationStatus::Ok, String::new());
            return;
        }
        let is_dns = reg.dest == VIRTUAL_DNS_RESOLVER;
        if let Err(err) = self.egress.check(reg.dest) {
            tracing::warn!(dest = %reg.dest, "destination not in the egress allow-list; UDP session refused");
            self.metrics.error(err.code);
            return Self::reply(
                quic,
                request_id,
                RegistrationStatus::Other(STATUS_DESTINATION_PROHIBITED),
                err.details.unwrap_or_default(),
            );
        }
        let slot = match self.limiter.acquire() {
            Ok(slot) => slot,
            Err(err) => {
                tracing::warn!(dest = %reg.dest, "too many active flows; UDP session refused");
                self.metrics.error(err.code);
                if is_dns {
                    self.metrics.dns_queries.inc("refused");
                }
                let message = err.details.unwrap_or_default();
                return Self::reply(
                    quic,
                    request_id,
                    RegistrationStatus::TooManyActiveFlows,
                    message,
                );
            }
        };
        let target = self.routes.target(reg.dest);
        let socket = match connected_socket(target) {
            Ok(socket) => socket,
            Err((status, message)) => {
                tracing::debug!(dest = %reg.dest, %target, %message, "UDP session refused");
                self.metrics
                    .error(wvpc_errors::ErrorCode::DestinationUnavailable);
                return Self::reply(quic, request_id, status, message);
            }
        };
        let idle = if reg.idle.is_zero() {
            DEFAULT_IDLE
        } else {
            reg.idle
        };
        let session = Arc::new(Session {
            socket: Arc::new(socket),
            target,
            quic: Mutex::new(quic.clone()),
            last_active: Mutex::new(Instant::now()),
            closed: CancellationToken::new(),
            _slot: slot,
            _open: self.metrics.udp_sessions_open.track(),
        });
        self.metrics.udp_sessions.inc();
        if is_dns {
            self.metrics.dns_queries.inc("forwarded");
        }
        self.lock().insert(request_id, session.clone());
        Self::reply(quic, request_id, RegistrationStatus::Ok, String::new());
        if !reg.payload.is_empty() {
            let _ = session.socket.try_send(&reg.payload);
        }
        tracing::debug!(session = %request_id, dest = %reg.dest, %target, idle_s = idle.as_secs(), "UDP session opened");
        tokio::spawn(self.clone().relay(request_id, session, idle));
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
                        self.metrics.bytes_from_origin.add(n as u64);
                        if let Ok(datagram) = encode_payload(request_id, &buf[..n])
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
        let mut sessions = self.lock();
        if sessions
            .get(&request_id)
            .is_some_and(|s| Arc::ptr_eq(s, &session))
        {
            sessions.remove(&request_id);
        }
        drop(sessions);
        tracing::debug!(session = %request_id, "UDP session closed");
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
