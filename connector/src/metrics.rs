//! The connector's Prometheus metrics (`wvpc tunnel run --metrics`). Names start with
//! `wvpc_connector_`; docs/operations.md lists them.

use std::sync::Arc;

use wvpc_errors::ErrorCode;
use wvpc_tunnel::metrics::{ByteCounters, Counter, CounterFamily, Exposition, Gauge, Render};

/// Counters and gauges of one connector process.
#[derive(Debug, Default)]
pub struct ConnectorMetrics {
    /// Connections dialling or registering.
    pub connecting: Arc<Gauge>,
    /// Registered connections serving traffic.
    pub registered: Arc<Gauge>,
    /// Connections unregistered and finishing their flows.
    pub draining: Arc<Gauge>,
    /// Registration answers by result (`ok`, `duplicate`, `refused`, `failed`).
    pub registrations: CounterFamily,
    /// TCP streams being proxied.
    pub streams_open: Arc<Gauge>,
    /// TCP streams the edge opened (data streams with a `ConnectRequest`).
    pub streams: Counter,
    /// UDP sessions open.
    pub udp_sessions_open: Arc<Gauge>,
    /// UDP sessions registered.
    pub udp_sessions: Counter,
    /// Flows (TCP or UDP) to the virtual DNS resolver, by result (`forwarded`, `refused`).
    pub dns_queries: CounterFamily,
    /// Bytes from the edge to origins.
    pub bytes_to_origin: Arc<Counter>,
    /// Bytes from origins to the edge.
    pub bytes_from_origin: Arc<Counter>,
    /// Refused or failed flows, by `ErrorCode` wire name.
    pub errors: CounterFamily,
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
}

impl Render for ConnectorMetrics {
    fn render(&self) -> String {
        let mut out = Exposition::default();
        out.gauges(
            "wvpc_connector_connections",
            "Connections to the edge by state.",
            "state",
            &[
                ("connecting", self.connecting.get()),
                ("registered", self.registered.get()),
                ("draining", self.draining.get()),
            ],
        );
        out.family(
            "wvpc_connector_registrations_total",
            "Registration attempts by result.",
            "result",
            &self.registrations,
        );
        out.gauge(
            "wvpc_connector_streams_open",
            "TCP streams being proxied.",
            self.streams_open.get(),
        );
        out.counter(
            "wvpc_connector_streams_total",
            "TCP streams opened by the edge.",
            self.streams.get(),
        );
        out.gauge(
            "wvpc_connector_udp_sessions_open",
            "UDP sessions open.",
            self.udp_sessions_open.get(),
        );
        out.counter(
            "wvpc_connector_udp_sessions_total",
            "UDP sessions registered by the edge.",
            self.udp_sessions.get(),
        );
        out.family(
            "wvpc_connector_dns_queries_total",
            "Flows to the virtual DNS resolver by result.",
            "result",
            &self.dns_queries,
        );
        out.counter(
            "wvpc_connector_bytes_to_origin_total",
            "Bytes sent from the edge to origins.",
            self.bytes_to_origin.get(),
        );
        out.counter(
            "wvpc_connector_bytes_from_origin_total",
            "Bytes sent from origins to the edge.",
            self.bytes_from_origin.get(),
        );
        out.family(
            "wvpc_connector_errors_total",
            "Refused or failed flows by error code.",
            "code",
            &self.errors,
        );
        out.finish()
    }
}
