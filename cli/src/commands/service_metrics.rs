//! `wvpc service metrics <id>`: a service's traffic over the last N minutes, as the iris
//! nodes that routed it count it, read from each node's `/status.json` (its operations
//! listener, `--metrics`) and added up: connections, rate, errors by category and code,
//! connection latency and DNS time (quantiles from the merged histogram buckets).

use std::io::Write;

use uuid::Uuid;
use wvpc_errors::Category;
use wvpc_observe::client::fetch_report;
use wvpc_observe::status::{Quantiles, WindowSummary};

use crate::table;

/// `wvpc service metrics`
#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    /// Service id
    pub service_id: Uuid,
    /// The window to sum up, in minutes (nodes keep one hour)
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub minutes: u32,
    /// Operations listener of an iris node (its --metrics address, or `wvpc dev`'s), as
    /// http://IP:PORT; repeat or separate with commas for every node. A node off loopback
    /// needs an admin token in WVPC_API_TOKEN
    #[arg(
        long = "node",
        env = "WVPC_NODES",
        value_delimiter = ',',
        required = true,
        value_name = "URL"
    )]
    pub nodes: Vec<String>,
    /// Print the merged summary (and each node's) as JSON
    #[arg(long)]
    pub json: bool,
}

/// One node's figures for the service.
#[derive(Debug, serde::Serialize)]
struct NodeFigures {
    node: String,
    url: String,
    window: WindowSummary,
}

/// Reads every node and prints the figures.
pub async fn run(args: MetricsArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let token = std::env::var("WVPC_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let id = args.service_id.to_string();
    let mut nodes = Vec::new();
    let mut name = None;
    for url in &args.nodes {
        let report = fetch_report(url, Some(args.minutes), token.as_deref()).await?;
        let window = report
            .services
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| {
                name = name.clone().or_else(|| s.name.clone());
                s.window(args.minutes).cloned()
            })
            .unwrap_or_else(|| WindowSummary {
                minutes: args.minutes,
                ..WindowSummary::default()
            });
        nodes.push(NodeFigures {
            node: report.node.name,
            url: url.clone(),
            window,
        });
    }
    let mut all = WindowSummary {
        minutes: args.minutes,
        ..WindowSummary::default()
    };
    for node in &nodes {
        all.merge(&node.window);
    }
    if args.json {
        let json = serde_json::json!({
            "service_id": id,
            "name": name,
            "minutes": args.minutes,
            "total": all,
            "nodes": nodes,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        return Ok(());
    }
    let title = name.map_or(id.clone(), |name| format!("{id} ({name})"));
    writeln!(
        out,
        "VPC service {title}: last {} minute{} on {} node{}",
        args.minutes,
        plural(args.minutes.into()),
        nodes.len(),
        plural(nodes.len() as u64)
    )?;
    if all.requests == 0 {
        writeln!(
            out,
            "No connections to this service in that time (a node counts the CONNECTs it \
             routed; check that every iris node is listed with --node)."
        )?;
        return Ok(());
    }
    let row = |label: &str, w: &WindowSummary| {
        vec![
            label.to_owned(),
            w.requests.to_string(),
            format!("{:.2}", w.rate_per_second),
            w.errors.total().to_string(),
            format!("{:.1}%", w.error_rate * 100.0),
            quantiles(&w.latency_ms),
            quantiles(&w.dns_ms),
            format!("{}/{}", w.dns_cache_hits, w.dns_cache_misses),
        ]
    };
    let mut rows: Vec<Vec<String>> = nodes.iter().map(|n| row(&n.node, &n.window)).collect();
    if nodes.len() > 1 {
        rows.push(row("all", &all));
    }
    write!(
        out,
        "{}",
        table::render(
            &[
                "NODE",
                "CONNECTIONS",
                "PER SECOND",
                "ERRORS",
                "ERROR RATE",
                "CONNECT P50 / P99",
                "DNS P50 / P99",
                "DNS HITS/LOOKUPS",
            ],
            &rows,
        )
    )?;
    writeln!(
        out,
        "\nErrors by category: {} {} · {} {} · {} {}",
        Category::BadUpstream.title(),
        all.errors.bad_upstream,
        Category::Client.title(),
        all.errors.client,
        Category::Internal.title(),
        all.errors.internal
    )?;
    if !all.codes.is_empty() {
        let rows: Vec<Vec<String>> = all
            .codes
            .iter()
            .map(|c| {
                let category = Category::ALL
                    .into_iter()
                    .find(|k| k.label() == c.category)
                    .map_or_else(|| c.category.clone(), |k| k.title().to_owned());
                vec![c.code.clone(), category, c.count.to_string()]
            })
            .collect();
        write!(
            out,
            "\n{}",
            table::render(&["ERROR CODE", "CATEGORY", "COUNT"], &rows)
        )?;
    }
    Ok(())
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn quantiles(q: &Quantiles) -> String {
    format!("{} / {}", ms(q.p50), ms(q.p99))
}

fn ms(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if v < 10.0 => format!("{v:.2} ms"),
        Some(v) if v < 1000.0 => format!("{v:.0} ms"),
        Some(v) => format!("{:.2} s", v / 1000.0),
    }
}
