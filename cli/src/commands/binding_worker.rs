//! `wvpc binding-worker`: a standalone binding-worker — the capnp server runtimes call for
//! their binding fetches — in front of one or more iris nodes. Runtimes must prove they hold
//! the platform secret (`<state>/platform/secret`, or `--secret-file`). Prints a line
//! starting with `ready` once it listens; on SIGTERM or Ctrl-C it drains (no new connections
//! or fetches, fetches in flight finish within `--grace-period`) and prints `stopped: …`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use wvpc_binding_worker::{BindingWorker, BindingWorkerConfig, PlatformSecret};

use super::dev::shutdown_signal;
use super::iris::parse_duration;

/// `wvpc binding-worker` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BindingWorkerArgs {
    /// Address runtimes connect to (capnp over TCP)
    #[arg(long, default_value = "127.0.0.1:7001", value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// CONNECT address of an iris node; repeat for several (fetches fail over between them)
    #[arg(long = "iris", required = true, value_name = "IP:PORT")]
    pub iris: Vec<SocketAddr>,
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
    let mut config = BindingWorkerConfig::with_iris_nodes(args.iris.clone());
    config.secret = Some(secret.clone());
    config.proxy_runtime = Some(tokio::runtime::Handle::current());
    config.connect_timeout = args.connect_timeout;
    config.response_timeout = args.response_timeout;
    config.route_lease = Some(args.route_lease);
    let worker = BindingWorker::start(listener, config).context("starting the binding-worker")?;
    let iris: Vec<String> = args.iris.iter().map(ToString::to_string).collect();
    writeln!(
        out,
        "ready: binding-worker on {} (iris: {})",
        worker.local_addr(),
        iris.join(", ")
    )?;
    writeln!(
        out,
        "  runtimes authenticate with {} (fingerprint {})",
        secret_path.display(),
        secret.fingerprint()
    )?;
    out.flush()?;
    shutdown_signal().await;
    let finished = worker.drain(args.grace_period).await;
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
