//! `wvpc dev`: every component in one process over real sockets ([`crate::stack`]), with the
//! embedded directory of the state dir. Prints a line starting with `ready` once it serves.
//! With `--mock`, the script runs against a mock network instead
//! ([`wvpc_platform::mock_stack`]) and every binding request is printed as one line. With
//! `--record FILE`, every binding exchange on the real path is written into FILE as a mock
//! file ([`wvpc_platform::mock_record`]) and printed as one line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use anyhow::Context as _;
use uuid::Uuid;
use wvpc_directory::Directory;
use wvpc_runtime::ScriptConfig;

use wvpc_iris::dev_mock::{Exchange, MockNetwork};
use wvpc_platform::mock_file::{self, MockFileWatch};
use wvpc_platform::mock_record::MockRecorder;
use wvpc_platform::mock_stack::{MockStack, MockStackConfig};
use wvpc_platform::script_sources::{self, SourceWatch};
use wvpc_platform::stack::{IrisOptions, Stack, StackConfig, describe_bindings};

/// Config file names looked for in the current directory, in order, when `--config` is absent.
pub const DEFAULT_CONFIG_FILES: [&str; 3] = ["wrangler.jsonc", "wrangler.json", "wrangler.toml"];

/// `wvpc dev` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Worker config (wrangler-style JSON, JSONC or TOML) [default: the first of wrangler.jsonc,
    /// wrangler.json, wrangler.toml in the current directory]
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Port of the local HTTP server that runs the script (on 127.0.0.1)
    #[arg(long, default_value_t = 8787)]
    pub port: u16,
    /// Address where the tunnel edge (iris) accepts connectors over QUIC
    #[arg(long, default_value = "127.0.0.1:7844", value_name = "IP:PORT")]
    pub edge_listen: SocketAddr,
    /// Address of the directory REST API (`wvpc service … --api`, `wvpc deploy`, wrangler)
    #[arg(long, default_value = "127.0.0.1:8788", value_name = "IP:PORT")]
    pub api_listen: SocketAddr,
    /// Open the operations listener on IP:PORT: Prometheus metrics of iris, the
    /// binding-worker and the runtime at /metrics, the status page at /status (and
    /// /status.json) for loopback peers or an account's admin token
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Run the script against a mock of its bindings' services instead of the edge and the
    /// tunnels: no connector, no directory entries, no DNS server. FILE (JSON, JSONC or TOML)
    /// says what each binding meets: canned responses, an upstream, DNS names, faults. It is
    /// reloaded when it changes [default FILE: wvpc.mock.jsonc next to the config]
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pub mock: Option<Option<PathBuf>>,
    /// Record every binding exchange on the real path (edge, tunnel, connector) into FILE, a
    /// mock file that `--mock FILE` replays offline: one entry per binding, method and path
    /// with its query (the latest wins), failures as faults. FILE is replaced, and rewritten
    /// atomically as exchanges arrive; large or binary bodies go to `<stem>.bodies/` beside it
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Timeouts and connection cap of the listeners.
    #[command(flatten)]
    pub server: super::server_args::ServerArgs,
}

impl DevArgs {
    /// The config to load: `--config` as given, or the first of [`DEFAULT_CONFIG_FILES`] that
    /// exists in `dir`.
    pub fn config_path(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        find_config(self.config.as_deref(), dir)
    }
}

/// The config to load: `given`, or the first of [`DEFAULT_CONFIG_FILES`] that exists in
/// `dir`.
pub fn find_config(given: Option<&Path>, dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    DEFAULT_CONFIG_FILES
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no worker config in {}: create one of {} or pass --config <path>",
                dir.display(),
                DEFAULT_CONFIG_FILES.join(", ")
            )
        })
}

/// Runs `wvpc dev` until Ctrl-C or SIGTERM.
pub async fn run(
    args: DevArgs,
    state: &crate::StateDir,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let cwd = std::env::current_dir()?;
    let config_path = args.config_path(&cwd)?;
    if let (Some(_), Some(record)) = (&args.mock, &args.record) {
        anyhow::bail!(
            "--record {} cannot be used with --mock: --record runs the script against the real \
             tunnel and writes what it sees into a mock file; --mock replays such a file without \
             the tunnel. Record first (`wvpc dev --record FILE`), then replay (`wvpc dev --mock \
             FILE`)",
            record.display()
        );
    }
    if let Some(mock) = &args.mock {
        let mock_path = mock_file::path_for(mock.as_deref(), &config_path);
        return run_mock(&args, &config_path, &mock_path, out).await;
    }
    // The error names the file, the field and the problem; service names resolve in the
    // state's directory.
    let directory = state.open_directory()?;
    let script = ScriptConfig::load_resolving(&config_path, &|name| {
        resolve_service_name(&directory, state, name)
    })?;
    // A JavaScript main is built before anything starts: its errors end `wvpc dev` here.
    let (served, watched, mut sources) = first_build(&script, out).await?;
    let (recorder, mut recorded) = match &args.record {
        Some(path) => {
            let (recorder, events) = MockRecorder::start(path, &config_path)?;
            (Some(recorder), Some(events))
        }
        None => (None, None),
    };
    let limits = args.server.limits();
    let api_listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("listening on {} for the directory API", args.api_listen))?;
    let api_addr = api_listener.local_addr()?;
    let cluster = Arc::new(
        wvpc_directory::ClusterRegistry::beside(
            &directory,
            state,
            wvpc_directory::cluster::DEFAULT_LEASE_TTL,
        )
        .await?,
    );
    let api = tokio::spawn(wvpc_directory::api::serve_cluster(
        Arc::new(directory),
        Some(cluster.clone()),
        api_listener,
        limits.clone(),
    ));
    let stack = Stack::start_with(
        StackConfig {
            state: state.path.clone(),
            directory: state.directory.clone(),
            script: served,
            listen: SocketAddr::from(([127, 0, 0, 1], args.port)),
            edge_listen: args.edge_listen,
            server: limits.clone(),
            exchange_tap: recorder
                .clone()
                .map(|r| Arc::new(r) as Arc<dyn wvpc_runtime::ExchangeTap>),
        },
        IrisOptions {
            metrics_listen: args.metrics,
            server: limits,
            cluster: Some(cluster),
            role: "dev",
            ..IrisOptions::default()
        },
    )
    .await?;
    writeln!(
        out,
        "ready: serving script {:?} on http://{}",
        script.name, stack.script_addr
    )?;
    for line in describe_bindings(&script, &stack.directory) {
        writeln!(out, "  binding {line}")?;
    }
    writeln!(
        out,
        "  tunnel edge on {} (QUIC); connectors elsewhere trust it with --cacert {}",
        stack.edge_addr,
        stack.edge_ca_path.display()
    )?;
    writeln!(
        out,
        "  directory API on http://{api_addr}{}",
        wvpc_directory::api::PREFIX
    )?;
    if let Some(addr) = stack.metrics_addr {
        writeln!(out, "  metrics on http://{addr}/metrics")?;
        writeln!(out, "  status page on http://{addr}/status")?;
    }
    writeln!(out, "  state {}", state.display())?;
    if let Some(recorder) = &recorder {
        writeln!(
            out,
            "  recording binding exchanges into {} (replay: wvpc dev --mock {})",
            recorder.path().display(),
            recorder.path().display()
        )?;
    }
    out.flush()?;
    writeln!(
        out,
        "  watching {watched} source file(s): an edit rebuilds and serves the new build"
    )?;
    out.flush()?;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut poll = tokio::time::interval(SOURCE_POLL);
    loop {
        let event = async {
            match &mut recorded {
                Some(events) => events.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            Some(event) = event => {
                writeln!(out, "{event}")?;
                out.flush()?;
            }
            _ = poll.tick() => {
                if let Some(changed) = sources.changed()
                    && let Some(wasm) = rebuild(&script, &changed, &mut sources, out).await?
                {
                    reloaded(stack.reload_script(&script, &wasm).await, out)?;
                }
            }
        }
    }
    tracing::info!("shutting down");
    api.abort();
    stack.shutdown();
    Ok(())
}

/// `path` relative to `cwd` when it is inside it (as the user wrote it), else as it is.
fn shown<'a>(path: &'a Path, cwd: &Path) -> &'a Path {
    path.strip_prefix(cwd).unwrap_or(path)
}

/// How often `wvpc dev` looks at its script's sources.
const SOURCE_POLL: std::time::Duration = std::time::Duration::from_millis(300);

/// After an edit of `changed`: builds the script again. The component to serve, or `None`
/// (the failure printed) when the previous build must serve on.
async fn rebuild(
    script: &ScriptConfig,
    changed: &Path,
    sources: &mut SourceWatch,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<Option<PathBuf>> {
    let cwd = std::env::current_dir().unwrap_or_default();
    writeln!(
        out,
        "{} changed: rebuilding",
        shown(changed, &cwd).display()
    )?;
    out.flush()?;
    match script_sources::build(script).await {
        Err(err) => {
            writeln!(
                out,
                "build failed; still serving the previous build:\n{err}"
            )?;
            out.flush()?;
            Ok(None)
        }
        Ok(build) => {
            *sources = SourceWatch::new(&build.sources);
            Ok(Some(build.wasm))
        }
    }
}

/// Says whether the rebuilt script now serves.
fn reloaded(
    result: Result<(), wvpc_platform::PlatformError>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match result {
        Ok(()) => writeln!(out, "rebuilt: serving the new build")?,
        Err(err) => writeln!(
            out,
            "the new build does not load; still serving the previous one: {err}"
        )?,
    }
    out.flush()?;
    Ok(())
}

/// Builds `script` before anything starts (a JavaScript main: its errors end `wvpc dev`
/// here) and watches its sources from then on. The config to start the stack with: its
/// `main` is the built component, so that loading it does not build again.
async fn first_build(
    script: &ScriptConfig,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<(ScriptConfig, usize, SourceWatch)> {
    let cwd = std::env::current_dir().unwrap_or_default();
    if script.is_javascript() {
        writeln!(out, "building {}", shown(&script.main, &cwd).display())?;
        out.flush()?;
    }
    let build = script_sources::build(script).await?;
    if let Some(cached) = build.cached {
        writeln!(
            out,
            "built {}{}",
            shown(&script.main, &cwd).display(),
            if cached {
                " (unchanged: from the build cache)"
            } else {
                ""
            }
        )?;
    }
    let served = ScriptConfig {
        main: build.wasm,
        ..script.clone()
    };
    Ok((
        served,
        build.sources.len(),
        SourceWatch::new(&build.sources),
    ))
}

/// `wvpc dev --mock`: the script against the mock in `mock_path`, one line per binding
/// request, the file reloaded when it changes.
async fn run_mock(
    args: &DevArgs,
    config_path: &Path,
    mock_path: &Path,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    // The mock names the services: a `service` name in the config needs no directory.
    let script = ScriptConfig::load_resolving(config_path, &|_| Ok(Uuid::nil()))?;
    // Watched from before the first load, so that an edit made meanwhile is not missed.
    let mut watch = MockFileWatch::new(mock_path);
    let spec = mock_file::load(mock_path, &script).map_err(|err| match err {
        mock_file::MockFileError::Config(wvpc_runtime::ConfigError::Read { path, source })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            anyhow::anyhow!(
                "no mock file at {} (create it, e.g. {{\"bindings\": {{\"API\": {{\"responses\": \
                 [{{\"path\": \"/*\", \"body\": \"hello\"}}]}}}}}}, or pass --mock <file>)",
                path.display()
            )
        }
        other => other.into(),
    })?;
    let (served, watched, mut sources) = first_build(&script, out).await?;
    let bindings = script.vpc_services.iter().map(|b| b.binding.clone());
    let network = MockNetwork::new(bindings, spec)?;
    let (exchanges, mut printed) = tokio::sync::mpsc::unbounded_channel::<Exchange>();
    network.set_observer(Arc::new(move |exchange: &Exchange| {
        let _ = exchanges.send(exchange.clone());
    }));
    let stack = MockStack::start(MockStackConfig {
        script: served,
        mock: network.clone(),
        listen: SocketAddr::from(([127, 0, 0, 1], args.port)),
        server: args.server.limits(),
    })
    .await?;
    writeln!(
        out,
        "ready: serving script {:?} on http://{} with the mock {}",
        script.name,
        stack.script_addr,
        mock_path.display()
    )?;
    for binding in network.bindings() {
        writeln!(out, "  binding {binding} -> mock")?;
    }
    writeln!(
        out,
        "  watching {watched} source file(s): an edit rebuilds and serves the new build"
    )?;
    out.flush()?;
    let mut poll = tokio::time::interval(mock_file::MOCK_FILE_POLL);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(exchange) = printed.recv() => writeln!(out, "{exchange}")?,
            _ = poll.tick() => {
                match watch.poll(&script, &network) {
                    None => {}
                    Some(Ok(())) => writeln!(out, "mock reloaded from {}", mock_path.display())?,
                    Some(Err(err)) => writeln!(out, "{err}\n  (keeping the last good mock)")?,
                }
                if let Some(changed) = sources.changed()
                    && let Some(wasm) = rebuild(&script, &changed, &mut sources, out).await?
                {
                    reloaded(stack.reload_script(&script, &wasm).await, out)?;
                }
            }
        }
        out.flush()?;
    }
    tracing::info!("shutting down");
    stack.shutdown();
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM, and, for a component started by `wvpc up`, when `wvpc up`
/// is gone ([`wvpc_platform::up::EXIT_WITH_STDIN_ENV`]).
pub(crate) async fn shutdown_signal() {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let term = async {
        match term {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch SIGTERM; stop with Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
        () = parent_gone() => tracing::info!("wvpc up is gone; stopping"),
    }
}

/// Resolves when stdin ends, if `wvpc up` asked for it; never otherwise.
async fn parent_gone() {
    if std::env::var_os(wvpc_platform::up::EXIT_WITH_STDIN_ENV).is_none() {
        return std::future::pending().await;
    }
    let (gone, wait) = tokio::sync::oneshot::channel::<()>();
    // A plain thread: a blocking read of stdin must not hold up the runtime's shutdown.
    let watcher = std::thread::Builder::new()
        .name("wvpc-parent-watch".into())
        .spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = gone.send(());
        });
    if watcher.is_err() {
        return std::future::pending().await;
    }
    let _ = wait.await;
}

/// A `vpc_services` entry's `service` name → the id of the one service of that name.
pub(crate) fn resolve_service_name(
    directory: &Directory,
    state: &Path,
    name: &str,
) -> Result<Uuid, String> {
    let services = directory
        .list_services(None)
        .map_err(|err| err.to_string())?;
    let ids: Vec<Uuid> = services
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.service_id)
        .collect();
    match ids.as_slice() {
        [id] => Ok(*id),
        [] => Err(format!(
            "no VPC service named {name:?} in the directory at {} (`wvpc service list` shows \
             them)",
            state.display()
        )),
        _ => Err(format!(
            "{} VPC services are named {name:?} ({}); bind by service_id instead",
            ids.len(),
            ids.iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
