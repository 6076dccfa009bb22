//! `accounts/{account}/cfd_tunnel[/{id}[/token|/connections]]`: tunnels in Cloudflare's
//! `cfd_tunnel` shape. Create answers with the connector token and the cloudflared credentials
//! file; the secret is never listed. `connections` lists the tunnel's live connections across
//! the cluster in Cloudflare's shape (one entry per connector with its `conns`; `colo_name` is
//! the iris node holding the connection).

use base64::Engine as _;
use http::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::envelope::ApiError;
use super::{ApiRequest, Caller, Reply, allow, no_route_segments, paginate, parse_id};
use crate::cluster::ClusterConnection;
use crate::error::DirectoryError;
use crate::tokens::Role;
use crate::tunnel::Tunnel;

/// `POST cfd_tunnel` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTunnel {
    name: String,
    /// Cloudflare's `config_src` (`local` or `cloudflare`); every tunnel here is configured
    /// locally, so it is accepted and not stored.
    #[serde(default)]
    #[expect(dead_code, reason = "accepted for compatibility, has no effect")]
    config_src: Option<String>,
}

fn tunnel_json(tunnel: &Tunnel) -> Value {
    json!({
        "id": tunnel.id,
        "account_tag": tunnel.account_tag,
        "name": tunnel.name,
        "created_at": tunnel.created_at,
        "deleted_at": null,
        "tun_type": "cfd_tunnel",
        "remote_config": false,
    })
}

/// Live connections grouped by connector, in Cloudflare's `cfd_tunnel/{id}/connections` shape.
fn connections_json(rows: &[ClusterConnection]) -> Vec<Value> {
    let mut clients: Vec<(uuid::Uuid, Vec<&ClusterConnection>)> = Vec::new();
    for row in rows {
        match clients
            .iter_mut()
            .find(|(client, _)| *client == row.connection.client_id)
        {
            Some((_, conns)) => conns.push(row),
            None => clients.push((row.connection.client_id, vec![row])),
        }
    }
    clients
        .into_iter()
        .map(|(client, conns)| {
            let first = &conns[0].connection;
            json!({
                "id": client,
                "version": first.version,
                "arch": first.arch,
                "run_at": conns.iter().map(|c| c.connection.since.as_str()).min(),
                "conns": conns.iter().map(|c| json!({
                    "id": c.connection.connection_id,
                    "uuid": c.connection.connection_id,
                    "client_id": client,
                    "client_version": c.connection.version,
                    "colo_name": c.connection.edge_node,
                    "conn_index": c.connection.conn_index,
                    "origin_ip": c.connection.remote_addr,
                    "opened_at": c.connection.since,
                    "is_pending_reconnect": false,
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}

pub(super) fn route(
    caller: &Caller,
    request: &ApiRequest,
    tail: &[&str],
) -> Result<Reply, ApiError> {
    match tail {
        [] => {
            allow(request, &[Method::GET, Method::POST])?;
            if request.method == Method::GET {
                caller.require(Role::Read, "listing tunnels")?;
                let tunnels: Vec<Value> =
                    caller.dir.list_tunnels()?.iter().map(tunnel_json).collect();
                paginate(request, tunnels)
            } else {
                caller.require(Role::Admin, "creating a tunnel")?;
                let body: CreateTunnel = request.json()?;
                let (tunnel, credentials) = caller.dir.create_tunnel(&body.name)?;
                let mut result = tunnel_json(&tunnel);
                result["token"] = json!(credentials.to_token());
                result["credentials_file"] = json!({
                    "AccountTag": credentials.account_tag,
                    "TunnelID": credentials.tunnel_id,
                    "TunnelSecret": base64::engine::general_purpose::STANDARD
                        .encode(&credentials.tunnel_secret),
                });
                Ok(Reply::ok(result))
            }
        }
        [id] => {
            allow(request, &[Method::GET, Method::DELETE])?;
            let id = parse_id("tunnel", id)?;
            if request.method == Method::GET {
                caller.require(Role::Read, "reading a tunnel")?;
                let tunnel = caller
                    .dir
                    .tunnel(id)?
                    .ok_or_else(|| DirectoryError::TunnelNotFound(id.to_string()))?;
                Ok(Reply::ok(tunnel_json(&tunnel)))
            } else {
                caller.require(Role::Admin, "deleting a tunnel")?;
                let tunnel = caller.dir.delete_tunnel(id)?;
                Ok(Reply::ok(tunnel_json(&tunnel)))
            }
        }
        [id, "token"] => {
            allow(request, &[Method::GET])?;
            // The token is the tunnel's secret: only admins see it again.
            caller.require(Role::Admin, "reading a tunnel's token")?;
            let id = parse_id("tunnel", id)?;
            let credentials = caller
                .dir
                .tunnel_credentials(id)?
                .ok_or_else(|| DirectoryError::TunnelNotFound(id.to_string()))?;
            Ok(Reply::ok(json!(credentials.to_token())))
        }
        [id, "connections"] => {
            allow(request, &[Method::GET])?;
            caller.require(Role::Read, "listing a tunnel's connections")?;
            let id = parse_id("tunnel", id)?;
            caller
                .dir
                .tunnel(id)?
                .ok_or_else(|| DirectoryError::TunnelNotFound(id.to_string()))?;
            let Some(cluster) = &caller.cluster else {
                return Err(ApiError::new(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    super::envelope::code::UNAVAILABLE,
                    "this API server does not follow a cluster registry, so it cannot list live \
                     connections; run `wvpc tunnel info` with the --state of the iris nodes",
                ));
            };
            // Handlers run on a blocking thread of the runtime: wait for the registry here.
            let rows =
                tokio::runtime::Handle::current().block_on(cluster.tunnel_connections(id))?;
            Ok(Reply::ok(Value::Array(connections_json(&rows))))
        }
        _ => Err(no_route_segments(&request.segments)),
    }
}
