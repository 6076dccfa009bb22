//! `wvpc test`: runs a cases file (request → expected response) against the script with a
//! mock of its bindings' services ([`wvpc_testing::Script::run_cases`]) and prints TAP or
//! JUnit XML. Fails (exit status 1) when a case fails or a file is bad.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use wvpc_platform::mock_file;
use wvpc_testing::{Script, cases, report};

/// `wvpc test` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// Cases file (YAML, JSON or JSONC): a list of {name, request, faults, expect}
    /// [default: the first of wvpc.test.yaml, wvpc.test.yml, wvpc.test.jsonc, wvpc.test.json
    /// next to the config]
    #[arg(value_name = "CASES")]
    pub cases: Option<PathBuf>,
    /// Worker config (wrangler-style JSON, JSONC or TOML) [default: the first of
    /// wrangler.jsonc, wrangler.json, wrangler.toml in the current directory]
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Mock file, as for `wvpc dev --mock` [default: wvpc.mock.jsonc next to the config, if it
    /// exists; without one, every binding answers 501 unless a case sets a fault]
    #[arg(long, value_name = "FILE")]
    pub mock: Option<PathBuf>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Tap)]
    pub format: Format,
    /// Write the report to FILE instead of stdout (a one-line summary goes to stdout)
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// The report's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// TAP version 14
    Tap,
    /// JUnit XML
    Junit,
}

/// Why `wvpc test` fails when the file was fine: some cases failed.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} cases failed")]
pub struct CasesFailed {
    /// Failed cases.
    pub failed: usize,
    /// All cases.
    pub total: usize,
}

/// Runs `wvpc test`.
pub async fn run(args: TestArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let cwd = std::env::current_dir()?;
    let config_path = super::dev::find_config(args.config.as_deref(), &cwd)?;
    let cases_path = cases::path_for(args.cases.as_deref(), &config_path);
    if !cases_path.exists() {
        anyhow::bail!(
            "no cases file at {} (create one, e.g. `- {{name: home, request: GET /, expect: \
             {{status: 200}}}}`, or name it: wvpc test <CASES>)",
            cases_path.display()
        );
    }
    let mut script = Script::from_config(&config_path);
    let default_mock = mock_file::path_for(None, &config_path);
    match &args.mock {
        Some(path) => script = script.mock_file(path),
        None if default_mock.is_file() => script = script.mock_file(&default_mock),
        None => tracing::warn!(
            "no mock file at {}: bindings answer 501 except where a case sets a fault",
            default_mock.display()
        ),
    }
    let mut report = script.run_cases(&cases_path).await?;
    // Named as the user would (`wvpc.test.yaml`), not by the absolute path it was found at.
    if let Ok(relative) = report.file.strip_prefix(&cwd) {
        report.file = relative.to_owned();
    }
    let text = match args.format {
        Format::Tap => report::tap(&report),
        Format::Junit => report::junit(&report),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, &text)
                .with_context(|| format!("writing the report to {}", path.display()))?;
            writeln!(
                out,
                "{} passed, {} failed; report in {}",
                report.cases.len() - report.failed(),
                report.failed(),
                path.display()
            )?;
        }
        None => out.write_all(text.as_bytes())?,
    }
    out.flush()?;
    if report.passed() {
        Ok(())
    } else {
        Err(CasesFailed {
            failed: report.failed(),
            total: report.cases.len(),
        }
        .into())
    }
}
