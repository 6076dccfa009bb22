//! The `/status.json` document (the `/status` page draws the same one). Each part of a
//! process fills in its sections through [`crate::ops::Observable`]: the tunnel edge its
//! tunnels, the CONNECT router its services, the runtime its scripts. A section a process
//! does not have stays empty.

use serde::{Deserialize, Serialize};

/// Everything `/status.json` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// The process answering.
    pub node: NodeStatus,
    /// When the report was made (RFC 3339, UTC).
    pub generated_at: String,
    /// The windows every summary covers, in minutes (5 and 60, and `?minutes=N` if asked).
    pub windows: Vec<u32>,
    /// Tunnels with at least one live connection to this node.
    #[serde(default)]
    pub tunnels: Vec<TunnelStatus>,
    /// Services this node routed traffic to in the last hour.
    #[serde(default)]
    pub services: Vec<TrafficStatus>,
    /// Scripts this node served in the last hour.
    #[serde(default)]
    pub scripts: Vec<TrafficStatus>,
    /// Other nodes of the cluster.
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
}

/// Which process this is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// `dev`, `iris`, `runtime`, `binding-worker` or `connector`.
    pub role: String,
    /// The node's name (iris: its cluster name; others: the host name).
    pub name: String,
    /// The `wvpc` version.
    pub version: String,
    /// When the process started (RFC 3339, UTC).
    pub started_at: String,
    /// Seconds since it started.
    pub uptime_seconds: u64,
}

/// One tunnel and its connections to this node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TunnelStatus {
    /// The tunnel id.
    pub id: String,
    /// Its name in the directory, if known.
    pub name: Option<String>,
    /// The account owning it, if known (an account's admin token sees its own only).
    #[serde(default)]
    pub account: Option<String>,
    /// Its live connections, by connection index.
    pub connections: Vec<ConnectionStatus>,
}

/// One registered tunnel connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnectionStatus {
    /// The connector's id (one per `cloudflared`/`wvpc tunnel run` process).
    pub connector_id: String,
    /// The connector's version string.
    pub version: String,
    /// The edge node holding the connection.
    pub edge_node: String,
    /// The connection index (0–3) the connector chose.
    pub index: u8,
    /// When it registered (RFC 3339, UTC).
    pub since: String,
    /// The UDP datagram protocol it speaks (`v2` or `v3`).
    pub datagram_version: String,
    /// `active`, or `draining` once the connector unregistered.
    pub state: String,
    /// Where the connector dials from.
    pub origin: String,
    /// TCP streams open on it now.
    pub streams_open: u64,
}

/// Another node of the cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    /// Its name.
    pub name: String,
    /// Where it takes relayed CONNECTs.
    pub address: String,
    /// Whether its last relay dial failed.
    pub down: bool,
}

/// Recent traffic of one service or script.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrafficStatus {
    /// The service id, or the script name.
    pub id: String,
    /// The service's or script's name, if known.
    pub name: Option<String>,
    /// The account owning it, if known (an account's admin token sees its own only).
    #[serde(default)]
    pub account: Option<String>,
    /// Requests since the process started.
    pub total_requests: u64,
    /// Failures since the process started.
    pub total_errors: u64,
    /// One summary per entry of [`StatusReport::windows`], in that order.
    pub windows: Vec<WindowSummary>,
    /// The last 5 minutes in 10-second points.
    pub chart_5m: Vec<ChartPoint>,
    /// The last 60 minutes in 1-minute points.
    pub chart_60m: Vec<ChartPoint>,
}

impl TrafficStatus {
    /// The summary over `minutes`, if the report has that window.
    pub fn window(&self, minutes: u32) -> Option<&WindowSummary> {
        self.windows.iter().find(|w| w.minutes == minutes)
    }
}

/// Traffic over the last `minutes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WindowSummary {
    /// The window's length.
    pub minutes: u32,
    /// Requests (connections for a service) that ended in it.
    pub requests: u64,
    /// Requests per second over the window (or over the uptime, if shorter).
    pub rate_per_second: f64,
    /// Failures by category.
    pub errors: CategoryCounts,
    /// Failures / requests (0 without requests).
    pub error_rate: f64,
    /// Connection latency (a script: request duration), in milliseconds.
    pub latency_ms: Quantiles,
    /// Time of the DNS lookups that were not cache hits, in milliseconds.
    pub dns_ms: Quantiles,
    /// DNS answers taken from the cache.
    pub dns_cache_hits: u64,
    /// DNS lookups that went through the tunnel.
    pub dns_cache_misses: u64,
    /// The most frequent error codes, most frequent first (at most 5).
    pub top_codes: Vec<CodeCount>,
}

/// Failures by the product's three categories.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CategoryCounts {
    /// The tunnel, origin, network or TLS failed.
    pub bad_upstream: u64,
    /// The service configuration or the script is at fault.
    pub client: u64,
    /// workers-vpc itself failed.
    pub internal: u64,
}

impl CategoryCounts {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.bad_upstream + self.client + self.internal
    }
}

/// Estimated quantiles (from histogram buckets); `None` without observations.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Quantiles {
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// How often one error code occurred.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CodeCount {
    /// The wire name (`dns_error`, `connection_refused`, …).
    pub code: String,
    /// `bad_upstream`, `client` or `internal`.
    pub category: String,
    /// Occurrences in the window.
    pub count: u64,
}

/// One point of a chart.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChartPoint {
    /// The start of the point's interval (Unix seconds).
    pub at: u64,
    /// Requests that ended in it.
    pub requests: u64,
    /// Failures among them.
    pub errors: u64,
    /// Median latency in it, in milliseconds.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile latency in it, in milliseconds.
    pub latency_p99_ms: Option<f64>,
}

/// Formats a wall-clock time as RFC 3339 (UTC, whole seconds).
pub fn rfc3339(at: std::time::SystemTime) -> String {
    let at = time::OffsetDateTime::from(at)
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
