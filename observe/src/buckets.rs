//! The upper bounds (seconds) of every latency histogram: from 0.5 ms (a loopback hop) to
//! two minutes (a slow origin), about ×2.5 apart. [`crate::recent`] counts into the same
//! bounds, so the status page's p50/p99 and a Prometheus `histogram_quantile` agree.

use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds in seconds; observations above the last fall in `+Inf`.
pub const LATENCY_SECONDS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// A histogram over [`LATENCY_SECONDS`] (a plain `fn`, so it can construct a family's
/// members: `Family::new_with_constructor(latency_histogram as fn() -> Histogram)`).
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_SECONDS)
}

/// The constructor type of latency histogram families.
pub type LatencyHistogram = fn() -> Histogram;

/// A family of latency histograms labelled by `L`.
pub type LatencyFamily<L> =
    prometheus_client::metrics::family::Family<L, Histogram, LatencyHistogram>;

/// An empty [`LatencyFamily`].
pub fn latency_family<L>() -> LatencyFamily<L>
where
    L: Clone + std::hash::Hash + Eq,
{
    LatencyFamily::new_with_constructor(latency_histogram as LatencyHistogram)
}
