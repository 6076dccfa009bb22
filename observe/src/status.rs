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
    /// Services this node opened connections to in the last hour (iris: CONNECTs, each
    /// an origin connection a binding-worker may reuse for many requests).
    #[serde(default)]
    pub services: Vec<TrafficStatus>,
    /// Services this node sent requests to in the last hour (binding-workers: every fetch
    /// and socket, with the origin's time to first byte as latency).
    #[serde(default)]
    pub service_requests: Vec<TrafficStatus>,
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
    /// Observations per bucket of [`crate::buckets::LATENCY_SECONDS`] (the last: above it),
    /// behind `latency_ms`, so summaries of several nodes can be merged.
    #[serde(default)]
    pub latency_counts: Vec<u64>,
    /// Time of the DNS lookups that were not cache hits, in milliseconds.
    pub dns_ms: Quantiles,
    /// Per bucket, behind `dns_ms`.
    #[serde(default)]
    pub dns_counts: Vec<u64>,
    /// DNS answers taken from the cache.
    pub dns_cache_hits: u64,
    /// DNS lookups that went through the tunnel.
    pub dns_cache_misses: u64,
    /// Every error code that occurred, most frequent first.
    pub codes: Vec<CodeCount>,
}

impl WindowSummary {
    /// Adds `other` (the same window on another node): counts add up, and the quantiles
    /// are estimated again from the merged buckets.
    pub fn merge(&mut self, other: &WindowSummary) {
        self.requests += other.requests;
        self.rate_per_second += other.rate_per_second;
        self.errors.bad_upstream += other.errors.bad_upstream;
        self.errors.client += other.errors.client;
        self.errors.internal += other.errors.internal;
        self.error_rate = if self.requests == 0 {
            0.0
        } else {
            self.errors.total() as f64 / self.requests as f64
        };
        add_counts(&mut self.latency_counts, &other.latency_counts);
        add_counts(&mut self.dns_counts, &other.dns_counts);
        self.latency_ms = Quantiles::from_counts(&self.latency_counts);
        self.dns_ms = Quantiles::from_counts(&self.dns_counts);
        self.dns_cache_hits += other.dns_cache_hits;
        self.dns_cache_misses += other.dns_cache_misses;
        for code in &other.codes {
            match self
                .codes
                .iter_mut()
                .find(|c| c.code == code.code && c.category == code.category)
            {
                Some(mine) => mine.count += code.count,
                None => self.codes.push(code.clone()),
            }
        }
        sort_codes(&mut self.codes);
    }
}

fn add_counts(mine: &mut Vec<u64>, theirs: &[u64]) {
    if mine.len() < theirs.len() {
        mine.resize(theirs.len(), 0);
    }
    for (a, b) in mine.iter_mut().zip(theirs) {
        *a += b;
    }
}

/// Most frequent first, then by name.
pub(crate) fn sort_codes(codes: &mut [CodeCount]) {
    codes.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.code.cmp(&b.code)));
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

impl Quantiles {
    /// The median and 99th percentile of observations counted per bucket of
    /// [`crate::buckets::LATENCY_SECONDS`] (the last count: above the last bound).
    pub fn from_counts(counts: &[u64]) -> Self {
        Self {
            p50: quantile_ms(counts, 0.5),
            p99: quantile_ms(counts, 0.99),
        }
    }
}

/// The `q` quantile in milliseconds, interpolated linearly inside its bucket (as
/// Prometheus's `histogram_quantile` does); the bucket above the last bound answers the last
/// bound.
pub fn quantile_ms(counts: &[u64], q: f64) -> Option<f64> {
    use crate::buckets::LATENCY_SECONDS;
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, n) in counts.iter().enumerate() {
        if *n > 0 && (below + n) as f64 >= rank {
            let Some(upper) = LATENCY_SECONDS.get(i) else {
                return Some(LATENCY_SECONDS[LATENCY_SECONDS.len() - 1] * 1000.0);
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_SECONDS[i - 1] };
            let within = ((rank - below as f64) / *n as f64).clamp(0.0, 1.0);
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
        below += n;
    }
    None
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
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(requests: u64, latency: &[u64], code: &str, count: u64) -> WindowSummary {
        WindowSummary {
            minutes: 5,
            requests,
            errors: CategoryCounts {
                bad_upstream: count,
                ..CategoryCounts::default()
            },
            latency_counts: latency.to_vec(),
            latency_ms: Quantiles::from_counts(latency),
            codes: vec![CodeCount {
                code: code.into(),
                category: "bad_upstream".into(),
                count,
            }],
            ..WindowSummary::default()
        }
    }

    #[test]
    fn summaries_of_two_nodes_merge_their_counts_and_buckets() {
        // Node a: 10 fast connections; node b: 10 slow ones (the 5th bucket, ≤ 10 ms).
        let mut a = summary(10, &[10], "connection_refused", 1);
        let b = summary(10, &[0, 0, 0, 0, 10], "dns_error", 3);
        a.merge(&b);
        assert_eq!(a.requests, 20);
        assert_eq!(a.errors.bad_upstream, 4);
        assert!((a.error_rate - 0.2).abs() < 1e-9);
        assert_eq!(a.latency_counts, vec![10, 0, 0, 0, 10]);
        let p99 = a.latency_ms.p99.unwrap();
        assert!(p99 > 5.0 && p99 <= 10.0, "{p99}");
        let codes: Vec<_> = a.codes.iter().map(|c| (c.code.as_str(), c.count)).collect();
        assert_eq!(codes, [("dns_error", 3), ("connection_refused", 1)]);
    }
}
