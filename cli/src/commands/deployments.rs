//! `wvpc deployments list <script>`: a deployed script's versions over the directory API,
//! newest first, the one being served marked (like `wrangler deployments list`).

use std::io::Write;

use anyhow::Context as _;
use http::Method;
use serde_json::Value;

use crate::remote::{ApiArgs, Remote};
use crate::table;

/// `wvpc deployments …`
#[derive(Debug, clap::Subcommand)]
pub enum DeploymentsCommand {
    /// List a script's versions, newest first; ACTIVE marks the one being served
    List {
        /// The script's name
        script: String,
        /// Print the versions as JSON
        #[arg(long)]
        json: bool,
    },
}

/// Connects to the directory API that `command` needs, or says how to name one.
pub(crate) async fn connect(api: &ApiArgs, command: &str) -> anyhow::Result<Remote> {
    let Some(url) = &api.api else {
        anyhow::bail!(
            "wvpc {command} talks to a directory API: pass --api http://HOST:PORT or set \
             WVPC_API (and the token in WVPC_API_TOKEN)"
        );
    };
    Remote::connect(url, api.account.as_deref()).await
}

/// A script's versions, newest first (`GET …/versions`, Cloudflare's `{"items": […]}`).
pub(crate) async fn versions(remote: &Remote, script: &str) -> anyhow::Result<Vec<Value>> {
    let result = remote
        .call(
            Method::GET,
            &format!("workers/scripts/{script}/versions"),
            None,
        )
        .await
        .with_context(|| format!("listing the versions of script {script:?}"))?;
    match result.get("items") {
        Some(Value::Array(items)) => Ok(items.clone()),
        _ => anyhow::bail!(
            "listing the versions of script {script:?}: the API answered no \"items\" list"
        ),
    }
}

/// Runs a deployments subcommand.
pub async fn run(
    command: DeploymentsCommand,
    api: &ApiArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let DeploymentsCommand::List { script, json } = command;
    let remote = connect(api, "deployments list").await?;
    let versions = versions(&remote, &script).await?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&versions)?)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            vec![
                v["number"].to_string(),
                v["id"].as_str().unwrap_or_default().to_owned(),
                etag_prefix(&v["etag"]),
                super::tunnel::short_time(v["created_on"].as_str().unwrap_or_default()),
                v["author"].as_str().unwrap_or("-").to_owned(),
                if v["active"] == true { "yes" } else { "" }.to_owned(),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        table::render(
            &["VERSION", "ID", "ETAG", "CREATED", "AUTHOR", "ACTIVE"],
            &rows
        )
    )?;
    Ok(())
}

/// The first 12 hex characters of an etag: enough to tell modules apart.
pub(crate) fn etag_prefix(etag: &Value) -> String {
    let etag = etag.as_str().unwrap_or_default();
    etag.get(..12).unwrap_or(etag).to_owned()
}
