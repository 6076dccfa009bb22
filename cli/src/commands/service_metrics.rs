//! `wvpc service metrics <id>`: a service's traffic over the last N minutes, read from each
//! node's `/status.json` (its operations listener, `--metrics`) and added up: the requests
//! binding-workers sent it (with the origin's time to first byte) and the connections iris
//! nodes opened to it (with connection latency and DNS time); for each, rate, errors by
//! category and code, and quantiles from the merged histogram buckets.

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
    /// Operations listener of a node (the --metrics address of `wvpc iris`,
    /// `wvpc binding-worker` or `wvpc dev`), as http://IP:PORT; repeat or separate with
    /// commas for every node. A node off loopback needs an admin token in WVPC_API_TOKEN
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
    role: String,
    url: String,
    window: WindowSummary,
}

/// One kind of figures (connections at iris nodes, requests at binding-workers): each node's
/// and their sum.
#[derive(Debug, Default, serde::Serialize)]
struct Figures {
    total: WindowSummary,
    nodes: Vec<NodeFigures>,
}

impl Figures {
    fn add(&mut self, node: NodeFigures) {
        self.total.merge(&node.window);
        self.nodes.push(node);
    }
}

/// Reads every node and prints the figures.
pub async fn run(args: MetricsArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let token = std::env::var("WVPC_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let id = args.service_id.to_string();
    let empty = || WindowSummary {
        minutes: args.minutes,
        ..WindowSummary::default()
    };
    let (mut connections, mut requests) = (Figures::default(), Figures::default());
    connections.total = empty();
    requests.total = empty();
    let mut name = None;
    for url in &args.nodes {
        let report = fetch_report(url, Some(args.minutes), token.as_deref()).await?;
        // iris nodes (and `wvpc dev`) count connections, binding-workers requests.
        let counts_connections = matches!(report.node.role.as_str(), "iris" | "dev");
        let counts_requests = matches!(report.node.role.as_str(), "binding-worker" | "dev");
        for (list, figures, counted) in [
            (&report.services, &mut connections, counts_connections),
            (&report.service_requests, &mut requests, counts_requests),
        ] {
            let found = list.iter().find(|s| s.id == id);
            if !counted && found.is_none() {
                continue;
            }
            if let Some(found) = found {
                name = name.clone().or_else(|| found.name.clone());
            }
            figures.add(NodeFigures {
                node: report.node.name.clone(),
                role: report.node.role.clone(),
                url: url.clone(),
                window: found
                    .and_then(|s| s.window(args.minutes).cloned())
                    .unwrap_or_else(empty),
            });
        }
    }
    if args.json {
        let json = serde_json::json!({
            "service_id": id,
            "name": name,
            "minutes": args.minutes,
            "requests": requests,
            "connections": connections,
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
        args.nodes.len(),
        plural(args.nodes.len() as u64)
    )?;
    if requests.total.requests == 0 && connections.total.requests == 0 {
        writeln!(
            out,
            "No traffic to this service in that time (iris nodes count the connections they \
             routed, binding-workers the requests they sent; check that every node is listed \
             with --node)."
        )?;
        return Ok(());
    }
    if !requests.nodes.is_empty() {
        writeln!(out, "\nRequests (binding-workers: every fetch and socket)")?;
        print_figures(&requests, "REQUESTS", "FIRST BYTE P50 / P99", false, out)?;
    }
    if !connections.nodes.is_empty() {
        writeln!(
            out,
            "\nConnections (iris: CONNECTs to the service's tunnel; an origin connection \
             carries many requests)"
        )?;
        print_figures(&connections, "CONNECTIONS", "CONNECT P50 / P99", true, out)?;
    }
    Ok(())
}

/// One table of per-node figures, then errors by category and by code.
fn print_figures(
    figures: &Figures,
    count: &str,
    latency: &str,
    dns: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let all = &figures.total;
    let row = |label: &str, w: &WindowSummary| {
        let mut row = vec![
            label.to_owned(),
            w.requests.to_string(),
            format!("{:.2}", w.rate_per_second),
            w.errors.total().to_string(),
            format!("{:.1}%", w.error_rate * 100.0),
            quantiles(&w.latency_ms),
        ];
        if dns {
            row.push(quantiles(&w.dns_ms));
            row.push(format!("{}/{}", w.dns_cache_hits, w.dns_cache_misses));
        }
        row
    };
    let mut rows: Vec<Vec<String>> = figures
        .nodes
        .iter()
        .map(|n| row(&n.node, &n.window))
        .collect();
    if figures.nodes.len() > 1 {
        rows.push(row("all", all));
    }
    let mut headers = vec!["NODE", count, "PER SECOND", "ERRORS", "ERROR RATE", latency];
    if dns {
        headers.extend(["DNS P50 / P99", "DNS HITS/LOOKUPS"]);
    }
    write!(out, "{}", table::render(&headers, &rows))?;
    writeln!(
        out,
        "Errors by category: {} {} · {} {} · {} {}",
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
            "{}",
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
