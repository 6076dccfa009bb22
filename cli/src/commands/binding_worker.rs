//! `wvpc binding-worker`: a standalone binding-worker — the capnp server runtimes call for
//! their binding fetches — in front of one or more iris nodes. Runtimes must prove they hold
//! the platform secret (`<state>/platform/secret`, or `--secret-file`). Prints a line
//! starting with `ready` once it listens; on SIGTERM or Ctrl-C it drains (no new connections
//! or fetches, fetches in flight finish within `--grace-period`) and prints `stopped: …`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use wvpc_binding_worker::{BindingWorker, BindingWorkerConfig, IrisAddress, PlatformSecret};
use wvpc_observe::ops::Ops;

use super::dev::shutdown_signal;
use super::iris::parse_duration;

/// `wvpc binding-worker` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BindingWorkerArgs {
    /// Address runtimes connect to (capnp over TCP)
    #[arg(long, default_value = "127.0.0.1:7001", value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// CONNECT address of an iris node, or a name standing for every address it resolves to
    /// (looked up again every 30 s and after failures); repeat or separate with commas for
    /// several (fetches go round-robin and fail over between them)
    #[arg(
        long = "iris",
        required = true,
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    pub iris: Vec<IrisAddress>,
    /// The platform secret runtimes must prove they hold [default: <state>/platform/secret,
    /// created if missing]
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// On shutdown, how long fetches in flight may finish (e.g. 30s, 500ms, 2m)
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub grace_period: Duration,
    /// Bound on dialling iris and on iris's answer to a CONNECT (tunnel dial included)
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,
    /// From the end of a request body to the origin's response head
    #[arg(long, default_value = "100s", value_parser = parse_duration, value_name = "DURATION")]
    pub response_timeout: Duration,
    /// How long an origin connection is reused after its CONNECT: bounds how long a changed
    /// service or a draining connector keeps pooled traffic
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub route_lease: Duration,
    /// Threads for the HTTP work besides the RPC thread. 0: the RPC thread does it all, which
    /// costs least per fetch and uses one core; more for a binding-worker that needs more
    /// cores (or run more binding-workers: runtimes spread fetches over them)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub proxy_threads: usize,
    /// Serve Prometheus metrics on http://IP:PORT/metrics (and the status page, to
    /// loopback peers only; port 0: any free port)
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<SocketAddr>,
}

/// Runs a binding-worker until SIGTERM or Ctrl-C, then drains.
pub async fn run(
    args: BindingWorkerArgs,
    state: &Path,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let (secret, secret_path) = load_secret(args.secret_file.as_deref(), state)?;
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {} for runtimes", args.listen))?;
    let mut config = BindingWorkerConfig::with_iris(args.iris.clone());
    config.secret = Some(secret.clone());
    config.proxy_threads = args.proxy_threads;
    config.connect_timeout = args.connect_timeout;
    config.response_timeout = args.response_timeout;
    config.route_lease = Some(args.route_lease);
    // Counted only when someone can read it.
    if args.metrics.is_some() {
        config.metrics = Arc::new(wvpc_binding_worker::BindingWorkerMetrics::default());
    }
    let metrics = config.metrics.clone();
    let worker = BindingWorker::start(listener, config).context("starting the binding-worker")?;
    // The binding-worker has no directory to check tokens with: its status answers loopback
    // peers only.
    let ops_listener = match args.metrics {
        Some(addr) => {
            let ops = Ops::new("binding-worker", wvpc_observe::ops::host_name()).with(metrics);
            let (local, task) = wvpc_observe::ops::start(addr, Arc::new(ops), Default::default())
                .await
                .with_context(|| format!("--metrics {addr}: cannot listen"))?;
            tracing::info!(addr = %local, "operations listener: http://{local}/metrics, http://{local}/status");
            Some((local, task))
        }
        None => None,
    };
    let iris: Vec<String> = args.iris.iter().map(ToString::to_string).collect();
    let nodes: Vec<String> = worker
        .iris_nodes()
        .iter()
        .map(|(addr, _)| addr.to_string())
        .collect();
    let resolved = if args.iris.iter().any(|a| a.name().is_some()) {
        format!("; nodes now: {}", nodes.join(", "))
    } else {
        String::new()
    };
    writeln!(
        out,
        "ready: binding-worker on {} (iris: {}{resolved})",
        worker.local_addr(),
        iris.join(", ")
    )?;
    writeln!(
        out,
        "  runtimes authenticate with {} (fingerprint {})",
        secret_path.display(),
        secret.fingerprint()
    )?;
    if let Some((addr, _)) = &ops_listener {
        writeln!(out, "  metrics on http://{addr}/metrics")?;
    }
    out.flush()?;
    shutdown_signal().await;
    let finished = worker.drain(args.grace_period).await;
    if let Some((_, task)) = ops_listener {
        task.abort();
    }
    writeln!(
        out,
        "stopped: {}",
        if finished {
            "every fetch finished"
        } else {
            "grace period over, remaining fetches were closed"
        }
    )?;
    Ok(())
}

/// The secret from `--secret-file`, or the state's own (created if missing), and its path.
pub(crate) fn load_secret(
    secret_file: Option<&Path>,
    state: &Path,
) -> anyhow::Result<(PlatformSecret, PathBuf)> {
    match secret_file {
        Some(path) => {
            let secret = PlatformSecret::from_file(path).map_err(|err| {
                let hint = if err.kind() == std::io::ErrorKind::NotFound {
                    " (copy <state>/platform/secret there from the machine whose state \
                     created it)"
                } else {
                    ""
                };
                anyhow::Error::new(err).context(format!("--secret-file {}{hint}", path.display()))
            })?;
            Ok((secret, path.to_owned()))
        }
        None => {
            let secret = PlatformSecret::load_or_create(state)?;
            Ok((secret, PlatformSecret::path_in(state)))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::{Cli, Command};

    fn iris_of(args: &[&str]) -> Result<Vec<String>, String> {
        let mut argv = vec!["wvpc", "binding-worker"];
        argv.extend(args);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::BindingWorker(args),
                ..
            }) => Ok(args.iris.iter().map(ToString::to_string).collect()),
            Ok(_) => unreachable!(),
            Err(err) => Err(err.to_string()),
        }
    }

    #[test]
    fn iris_takes_repeated_and_comma_separated_addresses_and_names() {
        assert_eq!(
            iris_of(&["--iris", "10.0.0.5:8443"]),
            Ok(vec!["10.0.0.5:8443".to_owned()])
        );
        assert_eq!(
            iris_of(&[
                "--iris",
                "10.0.0.5:8443,iris.internal:8443",
                "--iris",
                "[::1]:8443"
            ]),
            Ok(vec![
                "10.0.0.5:8443".to_owned(),
                "iris.internal:8443".to_owned(),
                "[::1]:8443".to_owned()
            ])
        );
        let err = iris_of(&["--iris", "10.0.0.5:8443,iris.internal"]).unwrap_err();
        assert!(
            err.contains("--iris") && err.contains("has no port"),
            "{err}"
        );
        assert!(iris_of(&[]).unwrap_err().contains("--iris"));
    }
}
