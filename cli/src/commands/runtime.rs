//! `wvpc runtime`: serves every script deployed in the directory of `--state`, routed by
//! `Host` ([`wvpc_platform::runtime_node`]). Prints a line starting with `ready` once it
//! serves; deploys, redeploys and deletes reach it without a restart.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use wvpc_platform::runtime_node::{RuntimeNode, RuntimeNodeOptions};

use super::dev::shutdown_signal;

/// `wvpc runtime` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Where scripts are served (HTTP)
    #[arg(long, default_value = "127.0.0.1:8787", value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// A binding-worker to send binding fetches to (repeat for several: calls are spread
    /// over them and fail over)
    #[arg(
        long = "binding-worker",
        default_value = "127.0.0.1:7001",
        value_name = "IP:PORT"
    )]
    pub binding_workers: Vec<SocketAddr>,
    /// Scripts are served at <script>.<account-subdomain>.<DOMAIN> (and their routes)
    #[arg(long, default_value = "workers.localhost", value_name = "DOMAIN")]
    pub workers_domain: String,
    /// Control listener, where `wvpc tail` follows scripts' output (port 0: any free port;
    /// the runtime announces it in the directory)
    #[arg(long, default_value = "127.0.0.1:0", value_name = "IP:PORT")]
    pub control_listen: SocketAddr,
    /// File holding the platform secret shared with binding-workers [default:
    /// <state>/platform/secret, created if missing]
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Serve Prometheus metrics (/metrics) and the status page (/status) here (port 0: any
    /// free port)
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Timeouts and connection cap of the listeners.
    #[command(flatten)]
    pub server: super::server_args::ServerArgs,
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn run(
    args: RuntimeArgs,
    state: &crate::StateDir,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let (secret, _) = super::binding_worker::load_secret(args.secret_file.as_deref(), state)?;
    let directory = Arc::new(state.open_directory()?);
    let node = RuntimeNode::start(
        directory,
        RuntimeNodeOptions {
            listen: args.listen,
            control_listen: args.control_listen,
            binding_workers: args.binding_workers.clone(),
            secret,
            workers_domain: args.workers_domain.clone(),
            server: args.server.limits(),
            metrics_listen: args.metrics,
        },
    )
    .await?;
    let served = node.host.served();
    writeln!(
        out,
        "ready: runtime on http://{} (control {}), serving {} script(s) at \
         <script>.<account-subdomain>.{}",
        node.addr,
        node.control_addr,
        served.len(),
        args.workers_domain
    )?;
    writeln!(
        out,
        "  binding-workers {}",
        args.binding_workers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    if let Some(addr) = node.metrics_addr {
        writeln!(out, "  metrics on http://{addr}/metrics")?;
    }
    writeln!(out, "  state {}", state.display())?;
    out.flush()?;
    shutdown_signal().await;
    tracing::info!("runtime stopping");
    node.stop().await;
    writeln!(out, "stopped")?;
    Ok(())
}
