//! `wvpc tunnel create|list|info|delete|token|run`: tunnels in the local directory, their
//! cloudflared-format credentials, their live connections, and the connector.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use wvpc_directory::cluster::DEFAULT_LEASE_TTL;
use wvpc_directory::{ClusterRegistry, Credentials, Directory, LiveConnection, Tunnel};

use super::tunnel_run::{self, TunnelRunArgs};
use crate::table;

/// `wvpc tunnel …`
#[derive(Debug, clap::Subcommand)]
pub enum TunnelCommand {
    /// Create a tunnel; prints its id and token and writes a cloudflared credentials file
    Create {
        /// Tunnel name (unique in the account)
        name: String,
        /// Print {"id","name","token","credentials_file"} as JSON
        #[arg(long)]
        json: bool,
    },
    /// List tunnels
    List {
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Show a tunnel and its live connections across the cluster (as the iris nodes holding
    /// them publish them, each with the node's name)
    Info {
        /// Tunnel id or name
        #[arg(value_name = "ID|NAME")]
        tunnel: String,
        /// Print {"id","name","connections":[…]} as JSON
        #[arg(long)]
        json: bool,
    },
    /// Delete a tunnel (refused while VPC services or network routes use it)
    Delete {
        /// Tunnel id or name
        #[arg(value_name = "ID|NAME")]
        tunnel: String,
    },
    /// Print a tunnel's token again
    Token {
        /// Tunnel id or name
        #[arg(value_name = "ID|NAME")]
        tunnel: String,
    },
    /// Run a connector for a tunnel (inside the private network)
    Run(TunnelRunArgs),
}

/// Runs a tunnel subcommand.
pub async fn run(
    command: TunnelCommand,
    state: &crate::StateDir,
    api: &crate::remote::ApiArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    if let Some(url) = &api.api
        && !matches!(command, TunnelCommand::Run(_))
    {
        let remote = crate::remote::Remote::connect(url, api.account.as_deref()).await?;
        return super::tunnel_remote::run(command, &remote, state, out).await;
    }
    match command {
        TunnelCommand::Create { name, json } => {
            create(&state.open_directory()?, state, &name, json, out)
        }
        TunnelCommand::List { json } => list(&state.open_directory()?, json, out),
        TunnelCommand::Info { tunnel, json } => {
            info(&state.open_directory()?, state, &tunnel, json, out).await
        }
        TunnelCommand::Delete { tunnel } => delete(&state.open_directory()?, state, &tunnel, out),
        TunnelCommand::Token { tunnel } => token(&state.open_directory()?, &tunnel, out),
        TunnelCommand::Run(args) => tunnel_run::run(args, state, out).await,
    }
}

/// Where the cloudflared credentials file of a tunnel is written.
pub fn credentials_path(state: &Path, tunnel_id: uuid::Uuid) -> PathBuf {
    state.join("tunnels").join(format!("{tunnel_id}.json"))
}

fn create(
    dir: &Directory,
    state: &Path,
    name: &str,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (tunnel, credentials) = dir.create_tunnel(name)?;
    let path = credentials_path(state, tunnel.id);
    write_credentials_file(&path, &credentials).with_context(|| {
        format!(
            "tunnel {:?} ({}) was created, but its credentials file {} could not be written; \
             `wvpc tunnel token {}` prints the token",
            tunnel.name,
            tunnel.id,
            path.display(),
            tunnel.id
        )
    })?;
    print_created(
        &tunnel.name,
        tunnel.id,
        &credentials.to_token(),
        &path,
        json,
        out,
    )
}

/// What `tunnel create` prints, locally and over the API alike.
pub(crate) fn print_created(
    name: &str,
    id: uuid::Uuid,
    token: &str,
    path: &Path,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if json {
        let body = serde_json::json!({
            "id": id,
            "name": name,
            "token": token,
            "credentials_file": path,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
        return Ok(());
    }
    writeln!(out, "✅ Created tunnel {name:?}: {id}")?;
    writeln!(
        out,
        "Credentials file (cloudflared format): {}",
        path.display()
    )?;
    writeln!(out, "Token (secret: whoever has it can serve this tunnel):")?;
    writeln!(out, "{token}")?;
    writeln!(out)?;
    writeln!(out, "Run a connector inside the private network with:")?;
    writeln!(
        out,
        "  wvpc tunnel run --edge <edge host:port> --token <token>"
    )?;
    writeln!(
        out,
        "or with stock cloudflared (CA from `wvpc edge ca export --out ca.pem`):"
    )?;
    writeln!(
        out,
        "  cloudflared tunnel --no-autoupdate --protocol quic --edge <edge host:port> \\\n    \
         --cacert ca.pem run --credentials-file {} {id}",
        path.display()
    )?;
    Ok(())
}

fn list(dir: &Directory, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let tunnels = dir.list_tunnels()?;
    // The services column is only in the table.
    let services = if json || tunnels.is_empty() {
        Vec::new()
    } else {
        dir.list_services(None)?
    };
    let listed: Vec<ListedTunnel> = tunnels
        .iter()
        .map(|t| ListedTunnel {
            id: t.id.to_string(),
            name: t.name.clone(),
            created_at: t.created_at.clone(),
            services: services.iter().filter(|s| s.tunnel_id() == t.id).count(),
        })
        .collect();
    print_list(&listed, json, out)
}

/// One row of `tunnel list`: a tunnel and how many services use it.
pub(crate) struct ListedTunnel {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) created_at: String,
    pub(crate) services: usize,
}

/// What `tunnel list` prints, locally and over the API alike.
pub(crate) fn print_list(
    tunnels: &[ListedTunnel],
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if json {
        let body: Vec<_> = tunnels
            .iter()
            .map(|t| serde_json::json!({ "id": t.id, "name": t.name, "created_at": t.created_at }))
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
        return Ok(());
    }
    if tunnels.is_empty() {
        writeln!(
            out,
            "No tunnels. Create one with `wvpc tunnel create <name>`."
        )?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = tunnels
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.name.clone(),
                t.services.to_string(),
                short_time(&t.created_at),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        table::render(&["ID", "NAME", "SERVICES", "CREATED"], &rows)
    )?;
    Ok(())
}

async fn info(
    dir: &Directory,
    state: &Path,
    id_or_name: &str,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let tunnel = find(dir, id_or_name)?;
    // Every process sharing the state publishes there; readers only trust rows whose node
    // lease is unexpired, so the TTL given here does not matter.
    let registry = ClusterRegistry::beside(dir, state, DEFAULT_LEASE_TTL)
        .await
        .context("reading the cluster registry")?;
    let connections: Vec<LiveConnection> = registry
        .tunnel_connections(tunnel.id)
        .await
        .context("reading the tunnel's live connections")?
        .into_iter()
        .map(|c| c.connection)
        .collect();
    print_info(
        &tunnel.name,
        &tunnel.id.to_string(),
        &tunnel.created_at,
        &connections,
        json,
        out,
    )
}

/// What `tunnel info` prints, locally and over the API alike.
pub(crate) fn print_info(
    name: &str,
    id: &str,
    created_at: &str,
    connections: &[LiveConnection],
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if json {
        let body = serde_json::json!({
            "id": id,
            "name": name,
            "created_at": created_at,
            "connections": connections,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
        return Ok(());
    }
    writeln!(out, "Tunnel {name:?}: {id}")?;
    writeln!(out, "Created {}", short_time(created_at))?;
    if connections.is_empty() {
        writeln!(
            out,
            "No live connections. Start a connector with `wvpc tunnel run --edge <host:port> --token <token>`."
        )?;
        return Ok(());
    }
    let replicas = {
        let mut ids: Vec<_> = connections.iter().map(|c| c.client_id).collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    writeln!(
        out,
        "{} live connection(s) from {replicas} connector(s):",
        connections.len()
    )?;
    let rows: Vec<Vec<String>> = connections
        .iter()
        .map(|c| {
            vec![
                c.client_id.to_string(),
                c.version.clone(),
                c.arch.clone(),
                c.conn_index.to_string(),
                c.edge_node.clone(),
                c.remote_addr.clone(),
                short_time(&c.since),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        table::render(
            &[
                "CONNECTOR",
                "VERSION",
                "ARCH",
                "INDEX",
                "EDGE",
                "ORIGIN IP",
                "SINCE"
            ],
            &rows
        )
    )?;
    Ok(())
}

fn delete(
    dir: &Directory,
    state: &Path,
    id_or_name: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let tunnel = find(dir, id_or_name)?;
    dir.delete_tunnel(tunnel.id)?;
    let path = credentials_path(state, tunnel.id);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove credentials file")
        }
    }
    writeln!(out, "✅ Deleted tunnel {:?}: {}", tunnel.name, tunnel.id)?;
    Ok(())
}

fn token(dir: &Directory, id_or_name: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let tunnel = find(dir, id_or_name)?;
    let credentials = dir
        .tunnel_credentials(tunnel.id)?
        .with_context(|| format!("tunnel {} was deleted meanwhile", tunnel.id))?;
    writeln!(out, "{}", credentials.to_token())?;
    Ok(())
}

fn find(dir: &Directory, id_or_name: &str) -> anyhow::Result<Tunnel> {
    dir.find_tunnel(id_or_name)?.with_context(|| {
        format!("no tunnel with id or name {id_or_name:?}; `wvpc tunnel list` shows them")
    })
}

/// Writes the credentials file readable by its owner only (it holds the secret).
pub(crate) fn write_credentials_file(path: &Path, credentials: &Credentials) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(credentials.to_file_json().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(())
}

/// `2026-01-02T03:04:05.123456Z` → `2026-01-02 03:04:05`.
pub(crate) fn short_time(rfc3339: &str) -> String {
    rfc3339.get(..19).unwrap_or(rfc3339).replacen('T', " ", 1)
}
