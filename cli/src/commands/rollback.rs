//! `wvpc rollback <script> [<version>]`: serves an earlier version of a deployed script (like
//! `wrangler rollback`). The version is a number (`wvpc deployments list` shows them) or an id;
//! without one, the version before the active one. Routes stay as they are: they belong to
//! the script, not to a version.

use std::io::Write;

use anyhow::Context as _;
use http::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use super::deployments::{connect, etag_prefix, versions};
use crate::UsageError;
use crate::remote::ApiArgs;

/// `wvpc rollback` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RollbackArgs {
    /// The script's name
    pub script: String,
    /// The version to serve: its number or its id [default: the one before the active one]
    pub version: Option<String>,
    /// Print the activated version as JSON
    #[arg(long)]
    pub json: bool,
}

/// Which version the user named.
enum Wanted {
    Number(u64),
    Id(Uuid),
    BeforeActive,
}

/// Runs `wvpc rollback`.
pub async fn run(
    args: RollbackArgs,
    api: &ApiArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let wanted = match args.version.as_deref() {
        None => Wanted::BeforeActive,
        Some(text) => match (text.parse::<u64>(), Uuid::try_parse(text)) {
            (Ok(number), _) => Wanted::Number(number),
            (_, Ok(id)) => Wanted::Id(id),
            _ => {
                return Err(UsageError(format!(
                    "<VERSION> {text:?}: expected a version number (e.g. 3) or a version id (a \
                     UUID); `wvpc deployments list {}` shows them",
                    args.script
                ))
                .into());
            }
        },
    };
    let script = &args.script;
    let remote = connect(api, "rollback").await?;
    let versions = versions(&remote, script).await?;
    let active = versions.iter().find(|v| v["active"] == true);
    let number = |v: &Value| v["number"].as_u64().unwrap_or(0);
    let target = match wanted {
        Wanted::Number(n) => versions.iter().find(|v| number(v) == n).with_context(|| {
            format!(
                "script {script:?} has no version {n} (it keeps versions {}); `wvpc deployments \
                 list {script}` shows them",
                kept(&versions)
            )
        })?,
        Wanted::Id(id) => versions
            .iter()
            .find(|v| v["id"].as_str() == Some(&id.to_string()))
            .with_context(|| {
                format!(
                    "script {script:?} has no version {id}; `wvpc deployments list {script}` \
                     shows them"
                )
            })?,
        Wanted::BeforeActive => {
            let active_number = active.map_or(u64::MAX, number);
            versions
                .iter()
                .filter(|v| number(v) < active_number)
                .max_by_key(|v| number(v))
                .with_context(|| {
                    format!(
                        "script {script:?} serves version {active_number}, its oldest kept \
                         version: there is none before it to roll back to"
                    )
                })?
        }
    };
    let describe = |v: &Value| {
        format!(
            "version {} ({}, etag {})",
            number(v),
            v["id"].as_str().unwrap_or_default(),
            etag_prefix(&v["etag"])
        )
    };
    if target["active"] == true {
        if args.json {
            writeln!(out, "{}", serde_json::to_string_pretty(target)?)?;
        } else {
            writeln!(
                out,
                "Script {script:?} already serves {}; nothing changed",
                describe(target)
            )?;
        }
        return Ok(());
    }
    let result = remote
        .call(
            Method::POST,
            &format!("workers/scripts/{script}/deployments"),
            Some(&json!({
                "strategy": "percentage",
                "versions": [{ "version_id": target["id"], "percentage": 100 }],
            })),
        )
        .await
        .with_context(|| format!("rolling back script {script:?}"))?;
    let activated = &result["version"];
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(activated)?)?;
        return Ok(());
    }
    write!(
        out,
        "✅ Script {script:?} now serves {}",
        describe(activated)
    )?;
    match active {
        Some(before) => writeln!(out, "; it served version {} before", number(before))?,
        None => writeln!(out)?,
    }
    Ok(())
}

/// `1–3`, or `4–53`: the range of version numbers kept.
fn kept(versions: &[Value]) -> String {
    let numbers = versions.iter().filter_map(|v| v["number"].as_u64());
    match (numbers.clone().min(), numbers.max()) {
        (Some(low), Some(high)) if low < high => format!("{low}–{high}"),
        (Some(only), _) => only.to_string(),
        _ => "none".into(),
    }
}
