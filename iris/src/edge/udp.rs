//! UDP flows over datagram v3 (v2 is [`super::udp_v2`]): the edge picks a request id, sends a registration datagram,
//! waits for the connector's `0x03` answer, then exchanges payload datagrams. One reader task
//! per connection dispatches incoming datagrams to flows by request id.
//!
//! v3 has no close message: a flow ends on the edge when it is dropped, and on the connector
//! after the idle time announced at registration. A flow that sat idle for most of that time
//! re-registers before its next send, which resets (or recreates) the connector's session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_tunnel::datagram::{Datagram, RegistrationResponse, SessionRegistration, encode_payload};
use wvpc_tunnel::datagram_v2::DatagramV2;
use wvpc_tunnel::{DatagramVersion, RequestId};

use super::registry::EdgeConnection;
use crate::tunnel_pool::{BoxFuture, UdpFlow};

/// Idle time announced to connectors unless configured otherwise.
pub const DEFAULT_UDP_IDLE: Duration = Duration::from_secs(60);
/// How long to wait for the connector to accept a session.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Datagrams can be lost: resend the registration this often until answered.
const REGISTRATION_RETRANSMIT: Duration = Duration::from_millis(500);
/// Datagrams queued per flow before new ones are dropped (UDP semantics).
const FLOW_QUEUE: usize = 256;

struct SessionSlot {
    payloads: mpsc::Sender<Bytes>,
    registered: Option<oneshot::Sender<RegistrationResponse>>,
}

/// The UDP sessions of one connection, by request id.
#[derive(Default)]
pub(crate) struct SessionTable {
    slots: Mutex<HashMap<RequestId, SessionSlot>>,
}

impl SessionTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<RequestId, SessionSlot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether no session is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Ends every session (the connection closed): their flows see `connection_terminated`.
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// Adds a datagram-v2 session (registered by RPC, so no registration answer to await).
    pub(crate) fn insert_v2(&self, id: RequestId, payloads: mpsc::Sender<Bytes>) {
        self.lock().insert(
            id,
            SessionSlot {
                payloads,
                registered: None,
            },
        );
    }

    /// Ends one session: its flow sees `connection_terminated`. `false` if it was not there.
    pub(crate) fn remove(&self, id: RequestId) -> bool {
        self.lock().remove(&id).is_some()
    }

    fn dispatch(&self, datagram: Datagram, conn: &EdgeConnection) {
        match datagram {
            Datagram::RegistrationResponse(response) => {
                let waiter = self
                    .lock()
                    .get_mut(&response.request_id)
                    .and_then(|s| s.registered.take());
                if let Some(waiter) = waiter {
                    let _ = waiter.send(response);
                }
            }
            Datagram::Payload {
                request_id,
                payload,
            } => {
                let sender = self.lock().get(&request_id).map(|s| s.payloads.clone());
                match sender {
                    Some(sender) => {
                        if sender.try_send(payload).is_err() {
                            tracing::trace!(session = %request_id, "UDP flow queue full; datagram dropped");
                        }
                    }
                    None => {
                        tracing::trace!(session = %request_id, "datagram for an unknown UDP flow dropped")
                    }
                }
            }
            Datagram::Registration(reg) => tracing::debug!(
                tunnel = %conn.info.tunnel_id,
                session = %reg.request_id,
                "connector sent a session registration, which only the edge may send; ignored"
            ),
            Datagram::Icmp(_) => {
                tracing::trace!(tunnel = %conn.info.tunnel_id, "ICMP datagram ignored (not proxied)");
            }
        }
    }
}

/// Reads the connection's datagrams until it closes, dispatching them to flows. The format is
/// the connection's datagram version: v3 (this module) or v2 ([`super::udp_v2`]).
pub(crate) async fn read_datagrams(conn: Arc<EdgeConnection>) {
    let v2 = conn.info.datagram_version == DatagramVersion::V2;
    while let Ok(raw) = conn.quic.read_datagram().await {
        let decoded = if v2 {
            DatagramV2::decode(raw).map(|d| match d {
                DatagramV2::Udp {
                    session_id,
                    payload,
                } => Some(Datagram::Payload {
                    request_id: session_id,
                    payload,
                }),
                DatagramV2::Other(kind) => {
                    tracing::trace!(tunnel = %conn.info.tunnel_id, kind, "v2 datagram ignored (not proxied)");
                    None
                }
            })
        } else {
            Datagram::decode(raw).map(Some)
        };
        match decoded {
            Ok(Some(datagram)) => conn.sessions.dispatch(datagram, &conn),
            Ok(None) => {}
            Err(e) => tracing::debug!(
                tunnel = %conn.info.tunnel_id,
                connection = %conn.info.connection_id,
                error = %e,
                "malformed datagram from connector dropped"
            ),
        }
    }
    conn.sessions.clear();
}

/// Removes the session slot when the flow (or a failed open) goes away.
struct SlotGuard {
    conn: Arc<EdgeConnection>,
    request_id: RequestId,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.conn.sessions.lock().remove(&self.request_id);
    }
}

pub(crate) fn send_error(dest: SocketAddr, e: quinn::SendDatagramError) -> ProxyError {
    let code = match e {
        quinn::SendDatagramError::ConnectionLost(_) => ErrorCode::ConnectionTerminated,
        quinn::SendDatagramError::TooLarge => ErrorCode::ProxyInternalError,
        quinn::SendDatagramError::UnsupportedByPeer | quinn::SendDatagramError::Disabled => {
            ErrorCode::DestinationUnavailable
        }
    };
    ProxyError::new(code).with_details(format!("UDP datagram to {dest} not sent: {e}"))
}

/// Opens a session on `conn` and waits until the connector accepts it.
pub(crate) async fn open(
    conn: Arc<EdgeConnection>,
    dest: SocketAddr,
    idle: Duration,
) -> Result<Box<dyn UdpFlow>, ProxyError> {
    let request_id = RequestId::random();
    let (payload_tx, payload_rx) = mpsc::channel(FLOW_QUEUE);
    let (registered_tx, mut registered_rx) = oneshot::channel();
    conn.sessions.lock().insert(
        request_id,
        SessionSlot {
            payloads: payload_tx,
            registered: Some(registered_tx),
        },
    );
    let guard = SlotGuard {
        conn: conn.clone(),
        request_id,
    };

    let registration = SessionRegistration {
        request_id,
        dest,
        idle,
        traced: false,
        payload: Bytes::new(),
    }
    .encode()
    .map_err(|e| ProxyError::new(ErrorCode::ProxyInternalError).with_details(e.to_string()))?;
    let deadline = Instant::now() + REGISTRATION_TIMEOUT;
    let response = loop {
        conn.quic
            .send_datagram(registration.clone())
            .map_err(|e| send_error(dest, e))?;
        let next = (Instant::now() + REGISTRATION_RETRANSMIT).min(deadline);
        match tokio::time::timeout_at(next, &mut registered_rx).await {
            Ok(Ok(response)) => break response,
            Ok(Err(_)) => {
                return Err(
                    ProxyError::new(ErrorCode::ConnectionTerminated).with_details(format!(
                        "tunnel connection closed while opening UDP flow to {dest}"
                    )),
                );
            }
            Err(_) if Instant::now() >= deadline => {
                let code = if dest.port() == 53 {
                    ErrorCode::DnsTimeout
                } else {
                    ErrorCode::ConnectionTimeout
                };
                return Err(ProxyError::new(code).with_details(format!(
                    "the connector did not accept a UDP flow to {dest} within {}s",
                    REGISTRATION_TIMEOUT.as_secs()
                )));
            }
            Err(_) => {}
        }
    };
    if let Some(err) = response.failure() {
        tracing::debug!(tunnel = %conn.info.tunnel_id, %dest, code = %err.code, "connector refused a UDP flow");
        return Err(err);
    }
    Ok(Box::new(EdgeUdpFlow {
        conn,
        dest,
        request_id,
        registration,
        idle,
        last_sent: Mutex::new(Instant::now()),
        payloads: tokio::sync::Mutex::new(payload_rx),
        _guard: guard,
    }))
}

/// A v3 UDP session seen from the edge.
struct EdgeUdpFlow {
    conn: Arc<EdgeConnection>,
    dest: SocketAddr,
    request_id: RequestId,
    registration: Bytes,
    idle: Duration,
    last_sent: Mutex<Instant>,
    payloads: tokio::sync::Mutex<mpsc::Receiver<Bytes>>,
    _guard: SlotGuard,
}

impl EdgeUdpFlow {
    fn send_now(&self, payload: &[u8]) -> Result<(), ProxyError> {
        let datagram = encode_payload(self.request_id, payload).map_err(|e| {
            ProxyError::new(ErrorCode::ProxyInternalError).with_details(e.to_string())
        })?;
        let refresh = {
            let mut last = self
                .last_sent
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let stale = last.elapsed() >= self.idle * 3 / 4;
            *last = Instant::now();
            stale
        };
        if refresh {
            // The connector may have expired the session: registering again resets or
            // recreates it (its answer is ignored).
            self.conn
                .quic
                .send_datagram(self.registration.clone())
                .map_err(|e| send_error(self.dest, e))?;
        }
        self.conn
            .quic
            .send_datagram(datagram)
            .map_err(|e| send_error(self.dest, e))
    }
}

impl UdpFlow for EdgeUdpFlow {
    fn send(&self, payload: Bytes) -> BoxFuture<'_, Result<(), ProxyError>> {
        Box::pin(async move { self.send_now(&payload) })
    }

    fn recv(&self) -> BoxFuture<'_, Result<Bytes, ProxyError>> {
        Box::pin(async move {
            self.payloads.lock().await.recv().await.ok_or_else(|| {
                ProxyError::new(ErrorCode::ConnectionTerminated).with_details(format!(
                    "tunnel connection of the UDP flow to {} closed",
                    self.dest
                ))
            })
        })
    }
}
