//! The metric vocabulary both tunnel ends count with, on [`prometheus_client`]: counters and
//! gauges (shared handles: a clone counts into the same value, so each is registered once
//! and incremented anywhere), one-label counter families, a guard that holds a gauge up, and
//! a byte-counting stream wrapper. Each end registers its struct of metrics into its
//! process's registry; the operations listener (`wvpc_observe::ops`) serves it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;

/// Keeps a [`Gauge`] raised by one while alive.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// Raises `gauge` by one until the guard drops.
    pub fn raise(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The label set of a [`CounterFamily`]: one name, one value, both fixed strings (results
/// and error codes are), so counting allocates nothing.
type OneLabel = [(&'static str, &'static str); 1];

/// Counters keyed by the value of one label (`result`, `code`, …).
#[derive(Debug, Clone)]
pub struct CounterFamily {
    label: &'static str,
    family: Family<OneLabel, Counter>,
}

impl CounterFamily {
    /// A family whose counters are labelled `label`.
    pub fn new(label: &'static str) -> Self {
        Self {
            label,
            family: Family::default(),
        }
    }
    /// Adds one to the counter labelled `value`.
    pub fn inc(&self, value: &'static str) {
        self.family.get_or_create(&[(self.label, value)]).inc();
    }
    /// The counter labelled `value` (0 if never incremented).
    pub fn get(&self, value: &'static str) -> u64 {
        self.family
            .get(&[(self.label, value)])
            .map_or(0, |counter| counter.get())
    }
    /// The family, to register.
    pub fn metric(&self) -> Family<OneLabel, Counter> {
        self.family.clone()
    }
}

/// Byte counters of a stream: `read` counts bytes read from it, `written` bytes written to it.
#[derive(Debug, Clone)]
pub struct ByteCounters {
    /// Bytes read from the wrapped stream.
    pub read: Counter,
    /// Bytes written to the wrapped stream.
    pub written: Counter,
}

/// A stream whose traffic is counted as it flows (so long-lived, pooled flows show up in
/// the metrics before they end).
#[derive(Debug)]
pub struct CountingIo<T> {
    inner: T,
    counters: ByteCounters,
}

impl<T> CountingIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, counters: ByteCounters) -> Self {
        Self { inner, counters }
    }
    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountingIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.counters.read.inc_by(n as u64);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountingIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            self.counters.written.inc_by(*n as u64);
        }
        poll
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn families_and_guards_count_into_the_registered_metrics() {
        let family = CounterFamily::new("result");
        family.inc("ok");
        family.inc("ok");
        family.inc("say \"hi\"");
        let gauge = Gauge::default();
        let mut registry = Registry::default();
        registry.register("wvpc_r", "Results", family.metric());
        registry.register("wvpc_open", "Open things", gauge.clone());
        let held = GaugeGuard::raise(&gauge);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("wvpc_r_total{result=\"ok\"} 2\n"), "{text}");
        assert!(
            text.contains("wvpc_r_total{result=\"say \\\"hi\\\"\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("wvpc_open 1\n"), "{text}");
        drop(held);
        assert_eq!(gauge.get(), 0);
        assert_eq!(family.get("ok"), 2);
        assert_eq!(family.get("never"), 0);
    }
}
