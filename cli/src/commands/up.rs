//! `wvpc up`: the whole platform on this machine as separate processes — `wvpc directory`,
//! `wvpc iris`, `wvpc binding-worker` and `wvpc runtime`, all on this `--state`
//! ([`wvpc_platform::up`]). Prints a line starting with `ready` once all four serve; on
//! Ctrl-C or SIGTERM stops them, runtime first.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use wvpc_platform::up::{Platform, PlatformAddrs, current_exe};

use super::dev::shutdown_signal;

/// `wvpc up` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// The runtime's HTTP listener: scripts are served here by Host
    #[arg(long, default_value = "127.0.0.1:8787", value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// The directory API (`wvpc deploy`, `wvpc service --api`, wrangler)
    #[arg(long, default_value = "127.0.0.1:8788", value_name = "IP:PORT")]
    pub api_listen: SocketAddr,
    /// The tunnel edge, where connectors dial in over QUIC (UDP)
    #[arg(long, default_value = "127.0.0.1:7844", value_name = "IP:PORT")]
    pub edge_listen: SocketAddr,
    /// iris's CONNECT listener (binding-worker → iris)
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "IP:PORT")]
    pub iris_listen: SocketAddr,
    /// The binding-worker's listener (runtime → binding-worker)
    #[arg(long, default_value = "127.0.0.1:7001", value_name = "IP:PORT")]
    pub binding_worker_listen: SocketAddr,
    /// Scripts are served at <script>.<account-subdomain>.<DOMAIN>
    #[arg(long, default_value = "workers.localhost", value_name = "DOMAIN")]
    pub workers_domain: String,
}

/// Runs the platform until Ctrl-C, SIGTERM or one component's exit.
pub async fn run(
    args: UpArgs,
    state: &crate::StateDir,
    otlp_endpoint: Option<&str>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let addrs = PlatformAddrs {
        directory: args.api_listen,
        iris: args.iris_listen,
        edge: args.edge_listen,
        binding_worker: args.binding_worker_listen,
        runtime: args.listen,
        workers_domain: args.workers_domain.clone(),
    };
    let mut lines = Vec::new();
    let mut platform = Platform::start(
        &current_exe()?,
        state,
        state.directory.as_deref(),
        otlp_endpoint,
        &addrs,
        |name, line| {
            lines.push(format!("  {name}: {line}"));
        },
    )
    .await?;
    writeln!(
        out,
        "ready: platform on http://{} (scripts at <script>.<account-subdomain>.{}), directory API \
         on http://{}, tunnel edge on {}",
        addrs.runtime, addrs.workers_domain, addrs.directory, addrs.edge
    )?;
    for line in lines {
        writeln!(out, "{line}")?;
    }
    writeln!(out, "  state {}", state.display())?;
    out.flush()?;
    platform.forward_output();
    let failed = tokio::select! {
        () = shutdown_signal() => None,
        (name, status) = platform.exited() => Some((name, status)),
    };
    platform.stop(Duration::from_secs(30)).await;
    match failed {
        None => {
            writeln!(out, "stopped")?;
            Ok(())
        }
        Some((name, status)) => anyhow::bail!("{name} exited ({status}); the platform stopped"),
    }
}
