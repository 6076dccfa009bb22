//! `wvpc tunnel create|list|info|delete|token` against a directory API (`--api`), with the
//! same output as on the local state; `create` writes the credentials file locally as well.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use http::Method;
use serde_json::{Value, json};
use wvpc_directory::Credentials;

use super::tunnel::{ListedTunnel, TunnelCommand, credentials_path};
use crate::remote::Remote;

/// Runs a tunnel subcommand over the API (`run` is not one of them: connectors dial the edge).
pub async fn run(
    command: TunnelCommand,
    remote: &Remote,
    state: &Path,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match command {
        TunnelCommand::Create { name, json } => {
            let tunnel = remote
                .call(Method::POST, "cfd_tunnel", Some(&json!({ "name": name })))
                .await?;
            let token = tunnel["token"].as_str().unwrap_or_default().to_owned();
            let credentials = Credentials::from_token(&token)
                .context("the directory API answered with an unreadable tunnel token")?;
            let path = credentials_path(state, credentials.tunnel_id);
            super::tunnel::write_credentials_file(&path, &credentials)
                .with_context(|| format!("writing the credentials file {}", path.display()))?;
            super::tunnel::print_created(
                tunnel["name"].as_str().unwrap_or(&name),
                credentials.tunnel_id,
                &token,
                &path,
                json,
                out,
            )
        }
        TunnelCommand::List { json } => {
            let tunnels = remote.list_all("cfd_tunnel").await?;
            // The services column is only in the table.
            let services = if json || tunnels.is_empty() {
                Vec::new()
            } else {
                remote.list_all("connectivity/directory/services").await?
            };
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            let listed: Vec<ListedTunnel> = tunnels
                .iter()
                .map(|t| {
                    let id = text(&t["id"]);
                    ListedTunnel {
                        services: services
                            .iter()
                            .filter(|s| tunnel_of(s) == Some(id.as_str()))
                            .count(),
                        id,
                        name: text(&t["name"]),
                        created_at: text(&t["created_at"]),
                    }
                })
                .collect();
            super::tunnel::print_list(&listed, json, out)
        }
        TunnelCommand::Delete { tunnel } => {
            let (id, name) = find(remote, &tunnel).await?;
            remote
                .call(Method::DELETE, &format!("cfd_tunnel/{id}"), None)
                .await?;
            let _ = std::fs::remove_file(credentials_path(state, id.parse()?));
            writeln!(out, "✅ Deleted tunnel {name:?}: {id}")?;
            Ok(())
        }
        TunnelCommand::Token { tunnel } => {
            let (id, _) = find(remote, &tunnel).await?;
            let token = remote
                .call(Method::GET, &format!("cfd_tunnel/{id}/token"), None)
                .await?;
            writeln!(out, "{}", token.as_str().unwrap_or_default())?;
            Ok(())
        }
        TunnelCommand::Run(_) => anyhow::bail!(
            "`wvpc tunnel run` dials the tunnel edge, not the directory API: pass --edge and \
             --token (from `wvpc tunnel token`)"
        ),
        TunnelCommand::Info { tunnel, json } => {
            let (id, name) = find(remote, &tunnel).await?;
            let created = remote
                .call(Method::GET, &format!("cfd_tunnel/{id}"), None)
                .await?;
            let clients = remote
                .call(Method::GET, &format!("cfd_tunnel/{id}/connections"), None)
                .await?;
            let connections = live_connections(id.parse()?, &clients)
                .context("the directory API answered with unreadable tunnel connections")?;
            super::tunnel::print_info(
                &name,
                &id,
                created["created_at"].as_str().unwrap_or_default(),
                &connections,
                json,
                out,
            )
        }
    }
}

/// The rows of `cfd_tunnel/{id}/connections` (connectors with their `conns`).
fn live_connections(
    tunnel_id: uuid::Uuid,
    clients: &Value,
) -> anyhow::Result<Vec<wvpc_directory::LiveConnection>> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut rows = Vec::new();
    for client in clients.as_array().context("not a list")? {
        for conn in client["conns"]
            .as_array()
            .context("a connector without conns")?
        {
            rows.push(wvpc_directory::LiveConnection {
                connection_id: text(&conn["id"]).parse()?,
                tunnel_id,
                client_id: text(&client["id"]).parse()?,
                version: text(&client["version"]),
                arch: text(&client["arch"]),
                conn_index: conn["conn_index"]
                    .as_u64()
                    .and_then(|i| u8::try_from(i).ok())
                    .unwrap_or(u8::MAX),
                edge_node: text(&conn["colo_name"]),
                remote_addr: text(&conn["origin_ip"]),
                since: text(&conn["opened_at"]),
            });
        }
    }
    rows.sort_by(|a, b| (&a.since, a.conn_index).cmp(&(&b.since, b.conn_index)));
    Ok(rows)
}

fn tunnel_of(service: &Value) -> Option<&str> {
    let host = &service["host"];
    host["resolver_network"]["tunnel_id"]
        .as_str()
        .or_else(|| host["network"]["tunnel_id"].as_str())
}

/// `(id, name)` of the tunnel with this id or name.
async fn find(remote: &Remote, id_or_name: &str) -> anyhow::Result<(String, String)> {
    remote
        .list_all("cfd_tunnel")
        .await?
        .into_iter()
        .find(|t| t["id"] == id_or_name || t["name"] == id_or_name)
        .map(|t| {
            (
                t["id"].as_str().unwrap_or_default().to_owned(),
                t["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .with_context(|| {
            format!("no tunnel with id or name {id_or_name:?}; `wvpc tunnel list` shows them")
        })
}
