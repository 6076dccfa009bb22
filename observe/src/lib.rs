//! What every workers-vpc process shows of itself to its operator.
//!
//! - [`buckets`]: the histogram buckets every latency metric shares, so Prometheus
//!   quantiles and the status page's estimates agree.
//! - [`recent`]: the last hour of traffic per service and per script, in 10-second slots:
//!   requests, failures by category and code, latency and DNS time. The status page and
//!   `wvpc service metrics` read it; Prometheus reads the registry instead.
//! - [`status`]: the `/status.json` document.
//! - [`ops`]: the operations listener `--metrics` opens: `/metrics` (Prometheus text 0.0.4),
//!   `/status` (a self-refreshing page) and `/status.json`, the last two for loopback peers
//!   or holders of an admin token; and [`ops::Observable`], through which each part of a
//!   process (the tunnel edge, the CONNECT router, the runtime) registers its metrics and
//!   fills in its sections of the status.
//!
//! - [`client`]: reading another process's `/status.json` (`wvpc service metrics`).
//! - [`trace`]: the OTLP exporter of `--otlp-endpoint` and the trace context that crosses
//!   hops (`traceparent`, cloudflared's `cf-trace-id`).
//!
//! Metrics are [`prometheus_client`] metrics: each part of a process keeps its own struct of
//! counters and histograms and registers it into the process's one registry at start-up.

pub mod buckets;
pub mod client;
pub mod ops;
pub mod recent;
pub mod status;
pub mod trace;

pub use prometheus_client;
