//! The control stream, connector side: `registerConnection` on the edge's bootstrap
//! `RegistrationServer`, then `unregisterConnection` on shutdown. Runs on the connector's RPC
//! thread (capnp-rpc is `!Send`); results come back over channels.

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side};
use tokio::sync::oneshot;
use uuid::Uuid;
use wvpc_schemas::tunnel_rpc_capnp::{connection_response, registration_server};
use wvpc_tunnel::Credentials;
use wvpc_tunnel::rpc_thread::stream_vat;

/// `cause` of a duplicate-connection refusal.
const DUPLICATE_CONNECTION: &str = "EDUPCONN";

/// What the connector sends in `registerConnection`.
#[derive(Debug, Clone)]
pub(crate) struct RegistrationRequest {
    pub(crate) credentials: Credentials,
    pub(crate) conn_index: u8,
    pub(crate) client_id: Uuid,
    pub(crate) features: Vec<String>,
    pub(crate) version: String,
    pub(crate) arch: String,
    pub(crate) origin_local_ip: Vec<u8>,
    pub(crate) previous_attempts: u8,
}

/// The edge's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RegistrationOutcome {
    /// Registered.
    Registered {
        /// Connection id assigned by the edge.
        connection_id: Uuid,
        /// Edge node name.
        location: String,
    },
    /// `EDUPCONN`: this connector already holds this index on the edge.
    Duplicate,
    /// Refused; `retry` false means permanently (e.g. wrong credentials).
    Refused { cause: String, retry: bool },
    /// The RPC itself failed (stream broken, not tunnel RPC).
    Failed(String),
}

/// Asks for `unregisterConnection`; answered when the call returned (or failed).
pub(crate) type UnregisterRequest = oneshot::Sender<()>;

/// Registers on the control stream and keeps the RPC session for a later unregister. Must run
/// on the RPC thread.
pub(crate) async fn run_control_stream(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    request: RegistrationRequest,
    outcome: oneshot::Sender<RegistrationOutcome>,
    unregister: oneshot::Receiver<UnregisterRequest>,
) {
    let network = stream_vat(send, recv, Side::Client, None);
    let mut rpc = RpcSystem::new(network, None);
    let server: registration_server::Client = rpc.bootstrap(Side::Server);
    tokio::task::spawn_local(async move {
        if let Err(e) = rpc.await {
            tracing::debug!(error = %e, "control stream RPC ended");
        }
    });

    let result = register(&server, &request).await;
    let registered = matches!(result, RegistrationOutcome::Registered { .. });
    let _ = outcome.send(result);
    if !registered {
        return;
    }
    // Dropped sender (connection lost) ends the session without a call.
    if let Ok(done) = unregister.await {
        if let Err(e) = server.unregister_connection_request().send().promise.await {
            tracing::debug!(error = %e, "unregisterConnection failed");
        }
        let _ = done.send(());
    }
}

async fn register(
    server: &registration_server::Client,
    r: &RegistrationRequest,
) -> RegistrationOutcome {
    let mut call = server.register_connection_request();
    {
        let mut params = call.get();
        {
            let mut auth = params.reborrow().init_auth();
            auth.set_account_tag(r.credentials.account_tag.as_str());
            auth.set_tunnel_secret(&r.credentials.tunnel_secret);
        }
        params.set_tunnel_id(r.credentials.tunnel_id.as_bytes());
        params.set_conn_index(r.conn_index);
        let mut options = params.init_options();
        options.set_origin_local_ip(&r.origin_local_ip);
        options.set_replace_existing(false);
        options.set_compression_quality(0);
        options.set_num_previous_attempts(r.previous_attempts);
        let mut client = options.init_client();
        client.set_client_id(r.client_id.as_bytes());
        client.set_version(r.version.as_str());
        client.set_arch(r.arch.as_str());
        let mut features = client.init_features(u32::try_from(r.features.len()).unwrap_or(0));
        for (i, f) in r.features.iter().enumerate() {
            features.set(u32::try_from(i).unwrap_or(0), f.as_str());
        }
    }
    match call.send().promise.await {
        Ok(response) => read_outcome(&response).unwrap_or_else(|e| {
            RegistrationOutcome::Failed(format!("malformed registerConnection answer: {e}"))
        }),
        Err(e) => RegistrationOutcome::Failed(format!("registerConnection failed: {e}")),
    }
}

fn read_outcome(
    response: &capnp::capability::Response<registration_server::register_connection_results::Owned>,
) -> Result<RegistrationOutcome, capnp::Error> {
    let result = response.get()?.get_result()?.get_result();
    Ok(match result.which()? {
        connection_response::result::ConnectionDetails(details) => {
            let details = details?;
            let raw = details.get_uuid()?;
            RegistrationOutcome::Registered {
                connection_id: Uuid::from_slice(raw).unwrap_or_default(),
                location: details.get_location_name()?.to_string()?,
            }
        }
        connection_response::result::Error(error) => {
            let error = error?;
            let cause = error.get_cause()?.to_string()?;
            if cause == DUPLICATE_CONNECTION {
                RegistrationOutcome::Duplicate
            } else {
                RegistrationOutcome::Refused {
                    cause,
                    retry: error.get_should_retry(),
                }
            }
        }
    })
}
