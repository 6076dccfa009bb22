//! The `wvpc` command line as a library: the clap command tree ([`Cli`]) and [`run`], which
//! dispatches to one module per subcommand. `main.rs` only parses, sets up logging and turns
//! the result into an exit code.
//!
//! Command output goes to the writer given to [`run`]; logs go to stderr through `tracing`.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

pub mod commands;
pub mod remote;
mod table;

/// `wvpc`: self-hosted Workers VPC services.
#[derive(Debug, clap::Parser)]
#[command(
    name = "wvpc",
    version,
    about = "Self-hosted Workers VPC services: scripts reach private services through tunnels"
)]
pub struct Cli {
    /// State directory: the directory database and tunnel credentials (created if missing)
    #[arg(
        long,
        global = true,
        env = "WVPC_STATE",
        default_value = ".wvpc",
        value_name = "DIR"
    )]
    pub state: PathBuf,
    /// The directory store: postgres://user@host:port/database (libpq URL; sslmode and
    /// sslrootcert are understood) shared by a cluster, or sqlite:<file> [default:
    /// <state>/wvpc.db]
    #[arg(long, global = true, env = "WVPC_DIRECTORY", value_name = "URL")]
    pub directory: Option<String>,
    /// Export the serving processes' request spans over OTLP/HTTP protobuf to
    /// <URL>/v1/traces (e.g. http://127.0.0.1:4318); without it nothing is exported
    #[arg(
        long,
        global = true,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<String>,
    /// Where a directory API is, for the commands that can use one.
    #[command(flatten)]
    pub api: remote::ApiArgs,
    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run a worker script locally with every component (runtime, binding worker, edge)
    Dev(commands::dev::DevArgs),
    /// Run request → expected response cases (YAML or JSON) against the script with a mock of
    /// its bindings' services; print TAP or JUnit XML
    Test(commands::test::TestArgs),
    /// Run the whole platform on this machine as separate processes (directory, iris,
    /// binding-worker, runtime)
    Up(commands::up::UpArgs),
    /// Run a runtime: serves every deployed script, routed by Host
    Runtime(commands::runtime::RuntimeArgs),
    /// Run an iris node: the CONNECT router and the tunnel edge
    Iris(commands::iris::IrisArgs),
    /// Run a binding-worker: serves runtimes' binding fetches through iris
    BindingWorker(commands::binding_worker::BindingWorkerArgs),
    /// Manage tunnels and run connectors
    #[command(subcommand)]
    Tunnel(commands::tunnel::TunnelCommand),
    /// Manage VPC services
    #[command(subcommand)]
    Service(commands::service::ServiceCommand),
    /// Manage virtual networks (private networks that routes belong to)
    #[command(subcommand)]
    Vnet(commands::teamnet::VnetCommand),
    /// Manage routes of private IP networks through tunnels
    #[command(subcommand)]
    Route(commands::teamnet::RouteCommand),
    /// Serve the directory REST API (Cloudflare v4 shape) on the state's database
    Directory(commands::directory::DirectoryArgs),
    /// Manage API tokens of the directory API
    #[command(subcommand)]
    Token(commands::token::TokenCommand),
    /// Manage accounts of the directory
    #[command(subcommand)]
    Account(commands::token::AccountCommand),
    /// Write worker-configuration.d.ts: the TypeScript Env of the script's bindings, from its
    /// config (like `wrangler types`)
    Types(commands::types::TypesArgs),
    /// Upload the built script and its bindings to the directory API
    Deploy(commands::deploy::DeployArgs),
    /// Follow a deployed script's output live, from every runtime
    Tail(commands::tail::TailArgs),
    /// Delete a deployed script with its versions and routes (over the directory API)
    Delete(commands::delete::DeleteArgs),
    /// A deployed script's versions (over the directory API)
    #[command(subcommand)]
    Deployments(commands::deployments::DeploymentsCommand),
    /// Serve an earlier version of a deployed script (over the directory API)
    Rollback(commands::rollback::RollbackArgs),
    /// The tunnel edge's TLS identity (the CA connectors trust)
    #[command(subcommand)]
    Edge(commands::edge::EdgeCommand),
    /// The relay CA iris nodes of one cluster share (node-to-node relays)
    #[command(subcommand)]
    Relay(commands::relay::RelayCommand),
}

impl Cli {
    /// The log filter when `RUST_LOG` is not set: `info`, except that under `wvpc dev --mock`
    /// the components' own warnings about a binding request that failed are left out, since
    /// the mock's request line already says it (and the fault was asked for); `wvpc test`
    /// logs only warnings besides its report.
    pub fn default_log_filter(&self) -> &'static str {
        match &self.command {
            Command::Dev(args) if args.mock.is_some() => {
                "info,wvpc_iris::connect=error,wvpc_binding_worker::rpc=error,\
                 wvpc_runtime::outbound=warn"
            }
            // The report is the output: only warnings, and a failed binding request is what
            // a case tests.
            Command::Test(_) => {
                "warn,wvpc_iris::connect=error,wvpc_binding_worker::rpc=error,\
                 wvpc_runtime::outbound=error"
            }
            _ => "info",
        }
    }
}

impl Command {
    /// The role a serving command's spans are exported as (`service.name` `wvpc-<role>`);
    /// `None` for the commands that export none (`wvpc up` passes the endpoint on to its
    /// four processes instead).
    pub fn trace_role(&self) -> Option<&'static str> {
        Some(match self {
            Command::Dev(_) => "dev",
            Command::Runtime(_) => "runtime",
            Command::Iris(_) => "iris",
            Command::BindingWorker(_) => "binding-worker",
            Command::Tunnel(commands::tunnel::TunnelCommand::Run(_)) => "connector",
            _ => return None,
        })
    }

    /// Whether the command serves until stopped (and so holds many connections).
    fn serves(&self) -> bool {
        matches!(
            self,
            Command::Dev(_)
                | Command::Up(_)
                | Command::Runtime(_)
                | Command::Iris(_)
                | Command::BindingWorker(_)
                | Command::Directory(_)
                | Command::Tunnel(commands::tunnel::TunnelCommand::Run(_))
        )
    }
}

/// The `--state` directory and the `--directory` store a command works on; reads as the
/// state directory's path.
#[derive(Debug, Clone)]
pub struct StateDir {
    /// The state directory (tunnel credentials, edge identity, platform secret).
    pub path: PathBuf,
    /// `--directory`: where the directory is stored, if not in `<state>/wvpc.db`.
    pub directory: Option<String>,
}

impl StateDir {
    /// The state directory with the default store, `<state>/wvpc.db`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            directory: None,
        }
    }

    /// Opens the directory `--directory` names (or the state's SQLite file). A bad URL or an
    /// unreachable store is an error naming it.
    pub fn open_directory(
        &self,
    ) -> Result<wvpc_directory::Directory, wvpc_directory::DirectoryError> {
        wvpc_directory::Directory::open_spec(self.directory.as_deref(), &self.path)
    }
}

impl std::ops::Deref for StateDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

/// A command called the wrong way, found after parsing (exit code 2, like clap's own).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs the command; its output goes to `out`.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    // `wvpc test` and `wvpc types` keep no state: they leave no directory behind in the
    // project.
    if !matches!(cli.command, Command::Test(_) | Command::Types(_)) {
        std::fs::create_dir_all(&cli.state)
            .with_context(|| format!("cannot create state directory {}", cli.state.display()))?;
    }
    if cli.command.serves() {
        // Before any listener exists: their connection caps are sized from this limit.
        commands::server_args::raise_fd_limit();
    }
    let state = StateDir {
        path: cli.state.clone(),
        directory: cli.directory.clone(),
    };
    match cli.command {
        Command::Dev(args) => commands::dev::run(args, &state, out).await,
        Command::Test(args) => commands::test::run(args, out).await,
        Command::Up(args) => {
            commands::up::run(args, &state, cli.otlp_endpoint.as_deref(), out).await
        }
        Command::Runtime(args) => commands::runtime::run(args, &state, out).await,
        Command::Iris(args) => commands::iris::run(args, &state, out).await,
        Command::BindingWorker(args) => commands::binding_worker::run(args, &state, out).await,
        Command::Tunnel(command) => commands::tunnel::run(command, &state, &cli.api, out).await,
        Command::Service(command) => commands::service::run(command, &state, &cli.api, out).await,
        Command::Vnet(command) => commands::teamnet::run_vnet(command, &state, &cli.api, out).await,
        Command::Route(command) => {
            commands::teamnet::run_route(command, &state, &cli.api, out).await
        }
        Command::Directory(args) => commands::directory::run(args, &state, out).await,
        Command::Token(command) => commands::token::run(command, &state, out),
        Command::Account(command) => {
            commands::token::run_account(command, &state, &cli.api, out).await
        }
        Command::Types(args) => commands::types::run(args, out),
        Command::Deploy(args) => commands::deploy::run(args, &cli.api, out).await,
        Command::Tail(args) => commands::tail::run(args, &state, &cli.api, out).await,
        Command::Delete(args) => commands::delete::run(args, &cli.api, out).await,
        Command::Deployments(command) => commands::deployments::run(command, &cli.api, out).await,
        Command::Rollback(args) => commands::rollback::run(args, &cli.api, out).await,
        Command::Edge(command) => commands::edge::run(command, &state, out),
        Command::Relay(command) => commands::relay::run(command, &state, out),
    }
}
