//! The `wvpc` binary: parse, set up logging (and the span exporter of `--otlp-endpoint`),
//! run, and map the result to an exit code (0 ok, 1 failure, 2 usage).

use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};
use wvpc_observe::trace::Exporter;

/// mimalloc instead of glibc's malloc, with `--features mimalloc`: see docs/performance.md
/// ("What was measured and left as an option").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Usage errors from clap print their own message and exit with 2.
    let cli = wvpc_cli::Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cli.default_log_filter()));
    // The log shows events only: spans exist for the exporter, and without one no span
    // is enabled at all (the hops' spans then cost nothing but a callsite check).
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| m.is_event()));
    let exporter = match (&cli.otlp_endpoint, cli.command.trace_role()) {
        (Some(endpoint), Some(role)) if !endpoint.is_empty() => {
            match Exporter::start(endpoint, role) {
                Ok(exporter) => Some(exporter),
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    tracing_subscriber::registry()
        .with(exporter.as_ref().map(Exporter::layer))
        .with(log)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(wvpc_cli::run(cli, &mut std::io::stdout()));
    // Outside the runtime: the exporter's last batch goes out from its own thread.
    drop(runtime);
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if err.is::<wvpc_cli::UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
