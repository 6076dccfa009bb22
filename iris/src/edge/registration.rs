//! The control stream: Cap'n Proto RPC with the edge as server and `RegistrationServer` as
//! its bootstrap capability. Runs on the edge's RPC thread (capnp-rpc is `!Send`) and reports
//! the outcome to the connection's task through a channel.

use std::cell::RefCell;
use std::sync::Arc;

use capnp::capability::Rc as CapRc;
use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side};
use tokio::sync::mpsc;
use uuid::Uuid;
use wvpc_schemas::tunnel_rpc_capnp::registration_server;
use wvpc_tunnel::rpc_thread::stream_vat;
use wvpc_tunnel::{DatagramVersion, RpcThread};

use super::authority::TunnelAuthority;
use super::registry::{ConnectionInfo, EdgeConnection, RecordError, TunnelRegistry};

/// `cause` cloudflared treats as "duplicate connection: try another edge address".
const DUPLICATE_CONNECTION: &str = "EDUPCONN";
/// Largest RPC message accepted on the control stream (in 8-byte words): the connector's
/// local configuration is the biggest thing sent here.
const MAX_RPC_MESSAGE_WORDS: usize = 1 << 20;

/// What happened on a control stream, as seen by the connection's task.
pub(crate) enum ControlEvent {
    /// The connector registered; the connection is in the registry.
    Registered(Arc<EdgeConnection>),
    /// Registration was refused (already answered on the stream).
    Refused(String),
    /// The RPC session ended; `Some` carries the failure.
    Ended(Option<String>),
}

/// Everything the control stream needs; `Send`, so it can travel to the RPC thread.
pub(crate) struct ControlContext {
    pub(crate) registry: Arc<TunnelRegistry>,
    pub(crate) authority: Arc<dyn TunnelAuthority>,
    pub(crate) node_name: Arc<str>,
    pub(crate) quic: quinn::Connection,
    pub(crate) events: mpsc::UnboundedSender<ControlEvent>,
    /// The RPC thread, handed to the connection for datagram-v2 session RPCs.
    pub(crate) rpc: RpcThread,
}

/// Serves the control stream until it ends. Must run on the RPC thread (inside a `LocalSet`).
pub(crate) async fn serve_control_stream(
    ctx: ControlContext,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let events = ctx.events.clone();
    let network = stream_vat(send, recv, Side::Server, Some(MAX_RPC_MESSAGE_WORDS));
    let service = RegistrationService {
        ctx,
        registered: RefCell::new(None),
    };
    let client: registration_server::Client = capnp_rpc::new_client(service);
    let rpc = RpcSystem::new(network, Some(client.client));
    let ended = rpc.await.err().map(|e| e.to_string());
    let _ = events.send(ControlEvent::Ended(ended));
}

struct RegistrationService {
    ctx: ControlContext,
    /// `(tunnel, connection)` once registered on this stream.
    registered: RefCell<Option<(Uuid, Uuid)>>,
}

/// A refusal, as sent back in `ConnectionError`.
struct Refusal {
    cause: String,
    should_retry: bool,
}

impl Refusal {
    fn permanent(cause: impl Into<String>) -> Self {
        Self {
            cause: cause.into(),
            should_retry: false,
        }
    }

    /// The tunnel was deleted while this node ran: the same permanent answer as for a tunnel
    /// the directory does not know.
    fn deleted(tunnel_id: Uuid, remote: std::net::SocketAddr) -> Self {
        tracing::warn!(tunnel = %tunnel_id, %remote, "tunnel registration refused: the tunnel was deleted");
        Self::permanent(format!(
            "Unauthorized: {}",
            super::AuthFailure::UnknownTunnel(tunnel_id)
        ))
    }
}

impl RegistrationService {
    async fn register(
        &self,
        params: registration_server::register_connection_params::Reader<'_>,
    ) -> Result<Arc<EdgeConnection>, Refusal> {
        let remote = self.ctx.quic.remote_address();
        if self.registered.borrow().is_some() {
            return Err(Refusal::permanent("this connection is already registered"));
        }
        let invalid = |what: String| Refusal::permanent(format!("invalid registration: {what}"));
        let capnp_invalid = |e: capnp::Error| invalid(e.to_string());

        let raw_id = params.get_tunnel_id().map_err(capnp_invalid)?;
        let tunnel_id = Uuid::from_slice(raw_id)
            .map_err(|_| invalid(format!("tunnelId must be 16 bytes, got {}", raw_id.len())))?;
        let auth = params.get_auth().map_err(capnp_invalid)?;
        let account_tag = auth
            .get_account_tag()
            .and_then(|t| t.to_string().map_err(Into::into))
            .map_err(capnp_invalid)?;
        let secret = auth.get_tunnel_secret().map_err(capnp_invalid)?;

        if !self.ctx.registry.admit_registration(tunnel_id) {
            tracing::warn!(tunnel = %tunnel_id, %remote, "tunnel registration refused: too many attempts for this tunnel (registration flood limit)");
            return Err(Refusal {
                cause: "rate limited: too many registrations for this tunnel; retry later".into(),
                should_retry: true,
            });
        }
        if self.ctx.registry.removed_tunnel(tunnel_id) {
            return Err(Refusal::deleted(tunnel_id, remote));
        }
        // Answered from memory; a lookup the authority cannot answer so runs elsewhere, and
        // other registrations on this thread go on meanwhile.
        let check = self
            .ctx
            .authority
            .authorize(tunnel_id, &account_tag, secret);
        if let Err(failure) = check.await {
            tracing::warn!(
                tunnel = %tunnel_id,
                account = %account_tag,
                %remote,
                reason = %failure,
                retry = failure.is_retryable(),
                "tunnel registration refused"
            );
            return Err(if failure.is_retryable() {
                Refusal {
                    cause: failure.to_string(),
                    should_retry: true,
                }
            } else {
                Refusal::permanent(format!("Unauthorized: {failure}"))
            });
        }
        if self.registered.borrow().is_some() {
            return Err(Refusal::permanent("this connection is already registered"));
        }

        let conn_index = params.get_conn_index();
        let options = params.get_options().map_err(capnp_invalid)?;
        let client = options.get_client().map_err(capnp_invalid)?;
        let raw_client = client.get_client_id().map_err(capnp_invalid)?;
        let client_id = Uuid::from_slice(raw_client).map_err(|_| {
            invalid(format!(
                "clientId must be 16 bytes, got {}",
                raw_client.len()
            ))
        })?;
        let text = |r: capnp::Result<capnp::text::Reader<'_>>| {
            r.and_then(|t| t.to_string().map_err(Into::into))
                .map_err(capnp_invalid)
        };
        let version = text(client.get_version())?;
        let arch = text(client.get_arch())?;
        let features = client
            .get_features()
            .map_err(capnp_invalid)?
            .iter()
            .map(text)
            .collect::<Result<Vec<_>, _>>()?;
        let datagram_version = DatagramVersion::from_features(&features);

        let info = ConnectionInfo {
            connection_id: Uuid::new_v4(),
            tunnel_id,
            client_id,
            conn_index,
            version,
            arch,
            features,
            datagram_version,
            remote_addr: remote,
            draining: false,
        };
        let conn = Arc::new(
            EdgeConnection::new(info, self.ctx.quic.clone()).with_rpc(self.ctx.rpc.clone()),
        );
        match self.ctx.registry.record(conn.clone()) {
            Ok(()) => {}
            Err(RecordError::Duplicate) => {
                tracing::warn!(
                    tunnel = %tunnel_id, %client_id, conn_index, %remote,
                    "tunnel registration refused: this connector already holds a live connection with this index"
                );
                return Err(Refusal {
                    cause: DUPLICATE_CONNECTION.to_owned(),
                    should_retry: true,
                });
            }
            Err(RecordError::Closed) => {
                return Err(Refusal {
                    cause: "connection closed during registration".to_owned(),
                    should_retry: true,
                });
            }
            Err(RecordError::TunnelRemoved) => return Err(Refusal::deleted(tunnel_id, remote)),
        }
        *self.registered.borrow_mut() = Some((tunnel_id, conn.info.connection_id));
        tracing::info!(
            tunnel = %tunnel_id,
            connection = %conn.info.connection_id,
            %client_id,
            conn_index,
            version = %conn.info.version,
            arch = %conn.info.arch,
            datagrams = ?datagram_version,
            features = ?conn.info.features,
            %remote,
            "tunnel connection registered"
        );
        Ok(conn)
    }
}

impl registration_server::Server for RegistrationService {
    async fn register_connection(
        self: CapRc<Self>,
        params: registration_server::RegisterConnectionParams,
        mut results: registration_server::RegisterConnectionResults,
    ) -> Result<(), capnp::Error> {
        let outcome = self.register(params.get()?).await;
        self.ctx
            .registry
            .count_registration(outcome.as_ref().err().map(|r| r.cause.as_str()));
        let result = results.get().init_result().init_result();
        let event = match outcome {
            Ok(conn) => {
                let mut details = result.init_connection_details();
                details.set_uuid(conn.info.connection_id.as_bytes());
                details.set_location_name(&*self.ctx.node_name);
                details.set_tunnel_is_remotely_managed(false);
                ControlEvent::Registered(conn)
            }
            Err(refusal) => {
                let mut error = result.init_error();
                error.set_cause(refusal.cause.as_str());
                error.set_should_retry(refusal.should_retry);
                error.set_retry_after(0);
                ControlEvent::Refused(refusal.cause)
            }
        };
        let _ = self.ctx.events.send(event);
        Ok(())
    }

    async fn unregister_connection(
        self: CapRc<Self>,
        _: registration_server::UnregisterConnectionParams,
        _: registration_server::UnregisterConnectionResults,
    ) -> Result<(), capnp::Error> {
        if let Some((tunnel, connection)) = *self.registered.borrow() {
            tracing::info!(%tunnel, %connection, "connector unregistered; draining its connection");
            self.ctx.registry.drain(tunnel, connection);
        }
        Ok(())
    }

    async fn update_local_configuration(
        self: CapRc<Self>,
        params: registration_server::UpdateLocalConfigurationParams,
        _: registration_server::UpdateLocalConfigurationResults,
    ) -> Result<(), capnp::Error> {
        let size = params.get()?.get_config()?.len();
        tracing::debug!(
            bytes = size,
            "connector reported its local configuration (acknowledged, unused)"
        );
        Ok(())
    }
}
