//! `wvpc delete <script>`: removes a deployed script with its versions and routes over the
//! directory API (like `wrangler delete`); runtimes stop serving it.

use std::io::Write;

use anyhow::Context as _;
use http::Method;

use super::deployments::connect;
use crate::remote::ApiArgs;

/// `wvpc delete` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DeleteArgs {
    /// The script's name
    pub script: String,
    /// Print what was deleted as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `wvpc delete`.
pub async fn run(
    args: DeleteArgs,
    api: &ApiArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let remote = connect(api, "delete").await?;
    let deleted = remote
        .call(
            Method::DELETE,
            &format!("workers/scripts/{}", args.script),
            None,
        )
        .await
        .with_context(|| format!("deleting script {:?}", args.script))?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&deleted)?)?;
        return Ok(());
    }
    let routes: Vec<&str> = deleted["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str())
        .collect();
    let versions = deleted["versions"].as_u64().unwrap_or(0);
    writeln!(
        out,
        "✅ Deleted script {:?} from account {}: {versions} version{}, {}",
        args.script,
        remote.account,
        if versions == 1 { "" } else { "s" },
        if routes.is_empty() {
            "no routes".to_owned()
        } else {
            format!("routes {}", routes.join(", "))
        }
    )?;
    Ok(())
}
