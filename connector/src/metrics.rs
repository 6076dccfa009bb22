//! The connector's metrics (`wvpc tunnel run --metrics`). Names start with
//! `wvpc_connector_`; docs/operations.md lists them.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use wvpc_errors::ErrorCode;
use wvpc_observe::buckets::latency_histogram;
use wvpc_observe::ops::Observable;
use wvpc_tunnel::metrics::{ByteCounters, Counter, CounterFamily, Gauge};

/// Counters, gauges and histograms of one connector process.
#[derive(Debug)]
pub struct ConnectorMetrics {
    /// Connections to the edge by state (`connecting`, `registered`, `draining`).
    connections: Family<[(&'static str, &'static str); 1], Gauge>,
    /// Registration answers by result (`ok`, `duplicate`, `refused`, `failed`).
    pub registrations: CounterFamily,
    /// TCP streams being proxied.
    pub streams_open: Gauge,
    /// TCP streams the edge opened (data streams with a `ConnectRequest`).
    pub streams: Counter,
    /// UDP sessions open.
    pub udp_sessions_open: Gauge,
    /// UDP sessions registered.
    pub udp_sessions: Counter,
    /// Flows (TCP or UDP) to the virtual DNS resolver, by result (`forwarded`, `refused`).
    pub dns_queries: CounterFamily,
    /// Bytes from the edge to origins.
    pub bytes_to_origin: Counter,
    /// Bytes from origins to the edge.
    pub bytes_from_origin: Counter,
    /// Refused or failed flows, by `ErrorCode` wire name.
    pub errors: CounterFamily,
    /// Time to dial an origin (TCP connect), successful dials only.
    pub origin_dial_seconds: Histogram,
}

impl Default for ConnectorMetrics {
    fn default() -> Self {
        Self {
            connections: Family::default(),
            registrations: CounterFamily::new("result"),
            streams_open: Gauge::default(),
            streams: Counter::default(),
            udp_sessions_open: Gauge::default(),
            udp_sessions: Counter::default(),
            dns_queries: CounterFamily::new("result"),
            bytes_to_origin: Counter::default(),
            bytes_from_origin: Counter::default(),
            errors: CounterFamily::new("code"),
            origin_dial_seconds: latency_histogram(),
        }
    }
}

impl ConnectorMetrics {
    /// Counts a refused or failed flow.
    pub(crate) fn error(&self, code: ErrorCode) {
        self.errors.inc(code.wire_name());
    }

    /// Counters for an origin socket: what is read from it goes to the edge.
    pub(crate) fn origin_bytes(&self) -> ByteCounters {
        ByteCounters {
            read: self.bytes_from_origin.clone(),
            written: self.bytes_to_origin.clone(),
        }
    }

    /// The gauge of connections in `state` (`connecting`, `registered` or `draining`).
    pub fn connections(&self, state: &'static str) -> Gauge {
        self.connections.get_or_create_owned(&[("state", state)])
    }

    /// The Prometheus text of these metrics alone (tests and diagnostics).
    pub fn render(&self) -> String {
        wvpc_observe::ops::render_alone(self)
    }
}

impl Observable for ConnectorMetrics {
    /// Registers every metric into `registry` (names start with `wvpc_connector_`).
    fn register(&self, registry: &mut Registry) {
        for state in ["connecting", "registered", "draining"] {
            self.connections(state);
        }
        let r = registry.sub_registry_with_prefix("wvpc_connector");
        r.register(
            "connections",
            "Connections to the edge by state",
            self.connections.clone(),
        );
        r.register(
            "registrations",
            "Registration attempts by result",
            self.registrations.metric(),
        );
        r.register(
            "streams_open",
            "TCP streams being proxied",
            self.streams_open.clone(),
        );
        r.register(
            "streams",
            "TCP streams opened by the edge",
            self.streams.clone(),
        );
        r.register(
            "udp_sessions_open",
            "UDP sessions open",
            self.udp_sessions_open.clone(),
        );
        r.register(
            "udp_sessions",
            "UDP sessions registered by the edge",
            self.udp_sessions.clone(),
        );
        r.register(
            "dns_queries",
            "Flows to the virtual DNS resolver by result",
            self.dns_queries.metric(),
        );
        r.register(
            "bytes_to_origin",
            "Bytes sent from the edge to origins",
            self.bytes_to_origin.clone(),
        );
        r.register(
            "bytes_from_origin",
            "Bytes sent from origins to the edge",
            self.bytes_from_origin.clone(),
        );
        r.register(
            "errors",
            "Refused or failed flows by error code",
            self.errors.metric(),
        );
        r.register(
            "origin_dial_seconds",
            "Time to open a TCP connection to an origin (successful dials)",
            self.origin_dial_seconds.clone(),
        );
    }
}
