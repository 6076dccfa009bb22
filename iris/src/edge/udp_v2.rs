//! UDP flows over datagram v2, for connectors that do not advertise a datagram-v3 feature
//! (stock cloudflared by default).
//!
//! Sessions are set up by RPC: the edge opens a stream, writes the RPC signature and calls
//! `SessionManager.registerUdpSession` on the connector's `CloudflaredServer` bootstrap — one
//! stream per call, as cloudflared serves each RPC stream for at most its `--rpc-timeout`.
//! Payloads then travel as type-0 datagrams (`payload || session id || 0x00`), dispatched by
//! the connection's datagram reader ([`super::udp::read_datagrams`]).
//!
//! A session ends in one of three ways, each of which tells the other side:
//! - the flow is dropped or sat idle for the announced idle time: the edge calls
//!   `unregisterUdpSession` on the connector;
//! - the connector expired it: it opens its own RPC stream and calls the edge's
//!   `unregisterUdpSession` ([`serve_connector_stream`]), and the flow sees
//!   `connection_terminated`;
//! - the connection closed: every session goes with it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use capnp::capability::Rc as CapRc;
use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::tunnel_rpc_capnp::session_manager;
use wvpc_tunnel::connect::code_for_connector_error;
use wvpc_tunnel::datagram_v2::encode_udp;
use wvpc_tunnel::rpc_thread::stream_vat;
use wvpc_tunnel::session_rpc::{SESSION_RPC_TIMEOUT, SessionCall, call, session_id};
use wvpc_tunnel::{RequestId, RpcThread};

use super::registry::EdgeConnection;
use crate::tunnel_pool::{BoxFuture, UdpFlow};

/// Largest RPC message accepted from a connector on a session stream (in 8-byte words).
const MAX_RPC_MESSAGE_WORDS: usize = 1 << 14;
/// Datagrams queued per flow before new ones are dropped (UDP semantics).
const FLOW_QUEUE: usize = 256;

/// Opens a session on `conn` by RPC and returns the flow once the connector accepted it.
pub(crate) async fn open(
    conn: Arc<EdgeConnection>,
    rpc: RpcThread,
    dest: SocketAddr,
    idle: Duration,
) -> Result<Box<dyn UdpFlow>, ProxyError> {
    let id = RequestId::random();
    let (payload_tx, payload_rx) = mpsc::channel(FLOW_QUEUE);
    // Registered before the RPC: the first answer may arrive before the RPC returns.
    conn.sessions.insert_v2(id, payload_tx);
    let outcome = call(
        &rpc,
        conn.quic.clone(),
        SessionCall::Register { id, dest, idle },
    )
    .await;
    let refused = match outcome {
        Ok(err) if err.is_empty() => None,
        Ok(err) => Some(refusal(&err, dest)),
        Err(failure) => {
            let code = if conn.quic.close_reason().is_some() {
                ErrorCode::ConnectionTerminated
            } else if dest.port() == 53 {
                ErrorCode::DnsTimeout
            } else {
                ErrorCode::ConnectionTimeout
            };
            Some(ProxyError::new(code).with_details(format!(
                "opening a UDP session to {dest} through the tunnel failed: {failure}"
            )))
        }
    };
    if let Some(err) = refused {
        conn.sessions.remove(id);
        tracing::debug!(tunnel = %conn.info.tunnel_id, %dest, code = %err.code, details = ?err.details, "connector refused a UDP session (v2)");
        return Err(err);
    }
    let last_active = Arc::new(Mutex::new(Instant::now()));
    let (closed_tx, closed_rx) = oneshot::channel();
    tokio::spawn(watch_session(
        conn.clone(),
        rpc,
        id,
        idle,
        last_active.clone(),
        closed_rx,
    ));
    Ok(Box::new(EdgeUdpFlowV2 {
        conn,
        dest,
        id,
        last_active,
        payloads: tokio::sync::Mutex::new(payload_rx),
        _closed: closed_tx,
    }))
}

/// The connector's `registerUdpSession` error text as a code. cloudflared's texts: its flow
/// limiter ("failed to start udp session due to rate limiting: …") → `rate_limited`; Go dial
/// errors by their errno suffix (see [`code_for_connector_error`]); a connector that only
/// speaks v3 ("datagram v3 does not support RegisterUdpSession RPC") and anything else →
/// `destination_unavailable`.
fn refusal(err: &str, dest: SocketAddr) -> ProxyError {
    let code = code_for_connector_error(err).unwrap_or(ErrorCode::DestinationUnavailable);
    ProxyError::new(code).with_details(format!(
        "connector refused the UDP session to {dest}: {err}"
    ))
}

/// Ends the session when the flow is dropped or idles out, and tells the connector.
async fn watch_session(
    conn: Arc<EdgeConnection>,
    rpc: RpcThread,
    id: RequestId,
    idle: Duration,
    last_active: Arc<Mutex<Instant>>,
    mut closed: oneshot::Receiver<()>,
) {
    let message = loop {
        let deadline = *last_active.lock().unwrap_or_else(PoisonError::into_inner) + idle;
        tokio::select! {
            _ = &mut closed => break "the edge closed the session",
            () = tokio::time::sleep_until(deadline) => {
                let last = *last_active.lock().unwrap_or_else(PoisonError::into_inner);
                if last + idle <= Instant::now() {
                    break "idle timeout on the edge";
                }
            }
        }
    };
    // Already gone when the connector unregistered it or the connection closed.
    if !conn.sessions.remove(id) || conn.quic.close_reason().is_some() {
        return;
    }
    let outcome = call(
        &rpc,
        conn.quic.clone(),
        SessionCall::Unregister {
            id,
            message: message.to_owned(),
        },
    )
    .await;
    match outcome {
        Ok(_) => tracing::trace!(session = %id, reason = message, "UDP session unregistered (v2)"),
        Err(e) => {
            tracing::debug!(session = %id, reason = message, error = %e, "unregisterUdpSession on the connector failed")
        }
    }
}

/// A v2 UDP session seen from the edge.
struct EdgeUdpFlowV2 {
    conn: Arc<EdgeConnection>,
    dest: SocketAddr,
    id: RequestId,
    last_active: Arc<Mutex<Instant>>,
    payloads: tokio::sync::Mutex<mpsc::Receiver<Bytes>>,
    /// Dropping it tells the watcher to unregister the session.
    _closed: oneshot::Sender<()>,
}

impl EdgeUdpFlowV2 {
    fn touch(&self) {
        *self
            .last_active
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn send_now(&self, payload: &[u8]) -> Result<(), ProxyError> {
        let datagram = encode_udp(self.id, payload).map_err(|e| {
            ProxyError::new(ErrorCode::ProxyInternalError).with_details(e.to_string())
        })?;
        self.touch();
        self.conn
            .quic
            .send_datagram(datagram)
            .map_err(|e| super::udp::send_error(self.dest, e))
    }
}

impl UdpFlow for EdgeUdpFlowV2 {
    fn send(&self, payload: Bytes) -> BoxFuture<'_, Result<(), ProxyError>> {
        Box::pin(async move { self.send_now(&payload) })
    }

    fn recv(&self) -> BoxFuture<'_, Result<Bytes, ProxyError>> {
        Box::pin(async move {
            let payload = self.payloads.lock().await.recv().await.ok_or_else(|| {
                ProxyError::new(ErrorCode::ConnectionTerminated).with_details(format!(
                    "the UDP session to {} ended (unregistered by the connector, or its tunnel \
                     connection closed)",
                    self.dest
                ))
            })?;
            self.touch();
            Ok(payload)
        })
    }
}

/// Serves one stream the connector opened after registering. RPC streams (datagram v2: the
/// connector unregistering a session it expired) get the edge's `SessionManager`; anything else
/// is reset with a logged reason. Runs on the RPC thread after the signature was read.
pub(crate) async fn serve_connector_stream(
    conn: Arc<EdgeConnection>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let network = stream_vat(send, recv, Side::Server, Some(MAX_RPC_MESSAGE_WORDS));
    let tunnel = conn.info.tunnel_id;
    let service: session_manager::Client = capnp_rpc::new_client(EdgeSessionService { conn });
    let system = RpcSystem::new(network, Some(service.client));
    match tokio::time::timeout(SESSION_RPC_TIMEOUT, system).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(%tunnel, error = %e, "connector RPC stream failed")
        }
        Err(_) => tracing::debug!(%tunnel, "connector RPC stream held open too long; closed"),
    }
}

/// The edge's `SessionManager`, for connectors that unregister sessions.
struct EdgeSessionService {
    conn: Arc<EdgeConnection>,
}

impl session_manager::Server for EdgeSessionService {
    async fn register_udp_session(
        self: CapRc<Self>,
        _: session_manager::RegisterUdpSessionParams,
        mut results: session_manager::RegisterUdpSessionResults,
    ) -> Result<(), capnp::Error> {
        tracing::debug!(tunnel = %self.conn.info.tunnel_id, "connector tried to register a UDP session; refused");
        results
            .get()
            .init_result()
            .set_err("only the edge registers UDP sessions");
        Ok(())
    }

    async fn unregister_udp_session(
        self: CapRc<Self>,
        params: session_manager::UnregisterUdpSessionParams,
        _: session_manager::UnregisterUdpSessionResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let id = session_id(params.get_session_id()?)?;
        let message = params.get_message()?.to_string()?;
        let known = self.conn.sessions.remove(id);
        tracing::debug!(
            tunnel = %self.conn.info.tunnel_id,
            session = %id,
            known,
            %message,
            "connector unregistered a UDP session"
        );
        Ok(())
    }
}
