//! Datagram-v2 session RPCs, calling side: the edge registers and unregisters sessions on the
//! connector's `CloudflaredServer`, and a connector unregisters the sessions it expired on the
//! edge's `SessionManager`. Either way the caller opens a fresh stream, writes the RPC
//! signature and makes exactly one call on the peer's bootstrap capability, as cloudflared
//! serves each RPC stream for at most its `--rpc-timeout`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side};
use tokio::sync::oneshot;
use wvpc_schemas::tunnel_rpc_capnp::session_manager;

use crate::datagram::RequestId;
use crate::preamble::RPC_STREAM_SIGNATURE;
use crate::rpc_thread::RpcThread;
use crate::rpc_thread::stream_vat;

/// Bound on one session RPC (cloudflared's `--rpc-timeout` is 5 s).
pub const SESSION_RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// One session RPC.
#[derive(Debug, Clone)]
pub enum SessionCall {
    /// `registerUdpSession` (edge → connector).
    Register {
        /// The session id the edge chose.
        id: RequestId,
        /// Where the connector sends the session's datagrams.
        dest: SocketAddr,
        /// `closeAfterIdleHint`.
        idle: Duration,
    },
    /// `unregisterUdpSession` (either way).
    Unregister {
        /// The session.
        id: RequestId,
        /// Why, for the peer's logs.
        message: String,
    },
}

/// Makes one session RPC on a new stream of `quic`, on the RPC thread, bounded by
/// [`SESSION_RPC_TIMEOUT`]. `Ok` carries the peer's error text (`registerUdpSession`'s `err`;
/// empty on success), `Err` says why the call itself failed.
pub async fn call(
    rpc: &RpcThread,
    quic: quinn::Connection,
    call: SessionCall,
) -> Result<String, String> {
    let (tx, rx) = oneshot::channel();
    rpc.spawn_local(move || async move {
        let outcome =
            match tokio::time::timeout(SESSION_RPC_TIMEOUT, call_on_stream(quic, call)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!(
                    "the peer did not answer within {}s",
                    SESSION_RPC_TIMEOUT.as_secs()
                )),
            };
        let _ = tx.send(outcome);
    })
    .map_err(|e| e.to_string())?;
    rx.await
        .unwrap_or_else(|_| Err("the RPC thread stopped".to_owned()))
}

/// A `sessionId` parameter of either session RPC: exactly 16 bytes.
pub fn session_id(raw: &[u8]) -> Result<RequestId, capnp::Error> {
    let id: [u8; 16] = raw.try_into().map_err(|_| {
        capnp::Error::failed(format!("sessionId must be 16 bytes, got {}", raw.len()))
    })?;
    Ok(RequestId(id))
}

async fn call_on_stream(quic: quinn::Connection, call: SessionCall) -> Result<String, String> {
    let (mut send, recv) = quic.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&RPC_STREAM_SIGNATURE)
        .await
        .map_err(|e| e.to_string())?;
    let network = stream_vat(send, recv, Side::Client, None);
    let mut system = RpcSystem::new(network, None);
    let manager: session_manager::Client = system.bootstrap(Side::Server);
    let disconnect = system.get_disconnector();
    tokio::task::spawn_local(async move {
        let _ = system.await;
    });
    let outcome = match call {
        SessionCall::Register { id, dest, idle } => {
            let mut request = manager.register_udp_session_request();
            {
                let mut params = request.get();
                params.set_session_id(&id.0);
                match dest.ip() {
                    IpAddr::V4(ip) => params.set_dst_ip(&ip.octets()),
                    IpAddr::V6(ip) => params.set_dst_ip(&ip.octets()),
                }
                params.set_dst_port(dest.port());
                params.set_close_after_idle_hint(i64::try_from(idle.as_nanos()).unwrap_or(0));
                params.set_trace_context("");
            }
            match request.send().promise.await {
                Ok(response) => response
                    .get()
                    .and_then(|r| r.get_result())
                    .and_then(|r| r.get_err())
                    .and_then(|t| t.to_string().map_err(Into::into))
                    .map_err(|e| format!("malformed registerUdpSession answer: {e}")),
                Err(e) => Err(format!("registerUdpSession failed: {e}")),
            }
        }
        SessionCall::Unregister { id, message } => {
            let mut request = manager.unregister_udp_session_request();
            {
                let mut params = request.get();
                params.set_session_id(&id.0);
                params.set_message(message.as_str());
            }
            match request.send().promise.await {
                Ok(_) => Ok(String::new()),
                Err(e) => Err(format!("unregisterUdpSession failed: {e}")),
            }
        }
    };
    drop(manager);
    let _ = disconnect.await;
    outcome
}
