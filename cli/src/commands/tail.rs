//! `wvpc tail <script>`: follows a deployed script's output live, from every runtime of the
//! platform, like `wrangler tail`. Runtimes announce their control listeners in the
//! directory; this command connects to each (with the token derived from the platform
//! secret of `--state`) and prints every line the script writes, as it happens.

use std::io::Write;
use std::sync::Arc;

use wvpc_directory::tail::{TailTarget, follow};
use wvpc_platform::runtime_node::TAIL_TOKEN_PURPOSE;

use super::dev::shutdown_signal;
use crate::remote::{ApiArgs, Remote};

/// `wvpc tail` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// The script's name
    pub script: String,
    /// `pretty` (time, request id, text) or `json` (one event object per line)
    #[arg(long, value_enum, default_value = "pretty")]
    pub format: TailFormat,
    /// File holding the platform secret [default: <state>/platform/secret]
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<std::path::PathBuf>,
}

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TailFormat {
    /// `2026-12-03T10:00:00.123Z [proxy 5f3a1b2c] GET /hello -> 200`
    Pretty,
    /// The events as JSON lines
    Json,
}

/// Follows the script until Ctrl-C.
pub async fn run(
    args: TailArgs,
    state: &crate::StateDir,
    api: &ApiArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let directory = Arc::new(state.open_directory()?);
    // The account: --account, else the API token's (with --api), else the state's own.
    let account_id = match (&api.account, &api.api) {
        (Some(account), _) => account.clone(),
        (None, Some(url)) => Remote::connect(url, None).await?.account,
        (None, None) => directory.account_id().to_owned(),
    };
    let (secret, _) = super::binding_worker::load_secret(args.secret_file.as_deref(), state)?;
    let lister = directory.clone();
    let mut lines = follow(
        Arc::new(move || {
            Ok(lister
                .live_runtimes()?
                .into_iter()
                .map(|node| node.control_addr)
                .collect())
        }),
        secret.derive_token(TAIL_TOKEN_PURPOSE),
        TailTarget {
            account_id: account_id.clone(),
            script: args.script.clone(),
        },
    );
    let runtimes = directory.live_runtimes()?.len();
    // Status goes to stderr: stdout carries only the script's lines.
    eprintln!(
        "following {:?} of account {account_id} on {runtimes} runtime(s); Ctrl-C to stop",
        args.script
    );
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let line = tokio::select! {
            line = lines.recv() => line,
            () = &mut shutdown => break,
        };
        let Some(line) = line else { break };
        match args.format {
            TailFormat::Json => out.write_all(&line)?,
            TailFormat::Pretty => write!(out, "{}", pretty(&line))?,
        }
        writeln!(out)?;
        out.flush()?;
    }
    Ok(())
}

/// One event as a human reads it: `12:00:01.123 [proxy 5f3a1b2c] text`, or for a request
/// `12:00:01.130 [proxy 5f3a1b2c] GET http://… 200 ok`.
fn pretty(line: &[u8]) -> String {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(line) else {
        return String::from_utf8_lossy(line).into_owned();
    };
    let text = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
    let when = event["timestamp_ms"]
        .as_i64()
        .and_then(|ms| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
        })
        .map(|t| {
            format!(
                "{:02}:{:02}:{:02}.{:03}",
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        })
        .unwrap_or_default();
    let request = text("request_id");
    let request = request.get(..8).unwrap_or(&request);
    let what = match event["type"].as_str() {
        Some("request") => format!(
            "{} {} {} {}",
            text("method"),
            text("url"),
            event["status"],
            text("outcome")
        ),
        _ if event["stream"] == "stderr" => format!("(stderr) {}", text("text")),
        _ => text("text"),
    };
    format!("{when} [{} {request}] {what}", text("script"))
}
