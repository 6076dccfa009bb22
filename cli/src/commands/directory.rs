//! `wvpc directory`: serves the directory REST API (`wvpc_directory::api`) on the state's
//! database until Ctrl-C or SIGTERM. Prints a line starting with `ready` once it listens.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use wvpc_directory::cluster::DEFAULT_LEASE_TTL;
use wvpc_directory::{ClusterRegistry, SERVICE_LIMIT};

/// `wvpc directory` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DirectoryArgs {
    /// Address of the API's HTTP listener
    #[arg(long, default_value = "127.0.0.1:8788", value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// Most VPC services one account may have
    #[arg(long, default_value_t = SERVICE_LIMIT, value_name = "N")]
    pub service_limit: usize,
    /// Timeouts and connection cap of the listeners.
    #[command(flatten)]
    pub server: super::server_args::ServerArgs,
}

/// Runs the API server.
pub async fn run(
    args: DirectoryArgs,
    state: &crate::StateDir,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let directory = Arc::new(
        state
            .open_directory()?
            .with_service_limit(args.service_limit),
    );
    // `cfd_tunnel/{id}/connections` reads what the iris nodes publish beside the directory.
    let cluster = Arc::new(ClusterRegistry::beside(&directory, state, DEFAULT_LEASE_TTL).await?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {} for the directory API", args.listen))?;
    let addr = listener.local_addr()?;
    writeln!(
        out,
        "ready: directory API on http://{addr}{} (account {}, state {})",
        wvpc_directory::api::PREFIX,
        directory.account_id(),
        state.display()
    )?;
    out.flush()?;
    tokio::select! {
        result = wvpc_directory::api::serve_cluster(directory, Some(cluster), listener, args.server.limits()) => result?,
        () = super::dev::shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}
