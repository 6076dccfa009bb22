//! Prometheus text metrics for both tunnel ends: counters and gauges on atomics, labelled
//! families, a byte-counting stream wrapper, and the `/metrics` HTTP listener (with the
//! limits of every listener, [`wvpc_listener`]).
//!
//! The exposition is hand-written (text format 0.0.4): every metric is registered once at
//! start-up in a fixed order, so scraping takes no lock but the label maps of families.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use wvpc_listener::{HttpServer, ServerLimits};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
    /// One up now, one down when the guard drops.
    pub fn track(self: &Arc<Self>) -> GaugeGuard {
        self.inc();
        GaugeGuard(self.clone())
    }
}

/// Keeps a [`Gauge`] raised while alive.
#[derive(Debug)]
pub struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counters keyed by one label value (e.g. `result`, `code`).
#[derive(Debug, Default)]
pub struct CounterFamily(Mutex<BTreeMap<String, u64>>);

impl CounterFamily {
    /// Adds one to the counter labelled `value`.
    pub fn inc(&self, value: &str) {
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(value.to_owned())
            .or_default() += 1;
    }
    /// The counter labelled `value` (0 if never incremented).
    pub fn get(&self, value: &str) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(value)
            .copied()
            .unwrap_or(0)
    }
    fn snapshot(&self) -> Vec<(String, u64)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// Writes the text exposition, one metric at a time.
#[derive(Debug, Default)]
pub struct Exposition(String);

impl Exposition {
    /// A counter.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        let _ = writeln!(
            self.0,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    /// A gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) {
        let _ = writeln!(
            self.0,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    /// A gauge with one label and a value per label value.
    pub fn gauges(&mut self, name: &str, help: &str, label: &str, values: &[(&str, i64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (value, n) in values {
            let _ = writeln!(self.0, "{name}{{{label}=\"{}\"}} {n}", escape(value));
        }
    }
    /// A counter family with one label.
    pub fn family(&mut self, name: &str, help: &str, label: &str, family: &CounterFamily) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} counter");
        for (value, n) in family.snapshot() {
            let _ = writeln!(self.0, "{name}{{{label}=\"{}\"}} {n}", escape(&value));
        }
    }
    /// The finished text.
    pub fn finish(self) -> String {
        self.0
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Byte counters of a stream: `read` counts bytes read from it, `written` bytes written to it.
#[derive(Debug, Clone)]
pub struct ByteCounters {
    /// Bytes read from the wrapped stream.
    pub read: Arc<Counter>,
    /// Bytes written to the wrapped stream.
    pub written: Arc<Counter>,
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
            self.counters.read.add(n as u64);
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
            self.counters.written.add(*n as u64);
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

/// Something that renders its metrics as Prometheus text.
pub trait Render: Send + Sync + 'static {
    /// The full exposition.
    fn render(&self) -> String;
}

/// Serves `GET /metrics` (text format 0.0.4) on `listener` until the task is dropped; other
/// paths get 404; each connection is closed after its answer. Default [`ServerLimits`].
pub async fn serve(listener: TcpListener, metrics: Arc<dyn Render>) {
    serve_with(listener, metrics, ServerLimits::default()).await;
}

/// [`serve`] with these timeouts and connection cap.
pub async fn serve_with(listener: TcpListener, metrics: Arc<dyn Render>, limits: ServerLimits) {
    let server = HttpServer::new("metrics", limits);
    wvpc_listener::serve(listener, server, move |request: http::Request<_>| {
        let metrics = metrics.clone();
        async move {
            let (status, body) = if request.uri().path() == "/metrics" {
                (http::StatusCode::OK, metrics.render())
            } else {
                (
                    http::StatusCode::NOT_FOUND,
                    "not found: metrics are at /metrics\n".to_owned(),
                )
            };
            let mut response =
                http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
            *response.status_mut() = status;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            // One scrape per connection: nothing is left open between scrapes.
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            response
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_prometheus_text() {
        let family = CounterFamily::default();
        family.inc("ok");
        family.inc("ok");
        family.inc("say \"hi\"");
        let mut out = Exposition::default();
        out.counter("x_total", "Xs.", 3);
        out.family("r_total", "Results.", "result", &family);
        let text = out.finish();
        assert!(
            text.contains("# TYPE x_total counter\nx_total 3\n"),
            "{text}"
        );
        assert!(text.contains("r_total{result=\"ok\"} 2\n"), "{text}");
        assert!(
            text.contains("r_total{result=\"say \\\"hi\\\"\"} 1\n"),
            "{text}"
        );
    }
}
