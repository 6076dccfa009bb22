//! iris's Prometheus metrics (`wvpc iris --metrics`, `wvpc dev --metrics`). Names start with
//! `wvpc_iris_`; docs/operations.md lists them. One [`IrisMetrics`] is shared by the tunnel
//! edge (its registry counts connections, registrations, streams, sessions and bytes) and the
//! CONNECT router (DNS lookups and errors by code).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use wvpc_errors::ErrorCode;
use wvpc_tunnel::metrics::{ByteCounters, Counter, CounterFamily, Exposition, Gauge, Render};

/// Counters and gauges of one iris node.
#[derive(Debug, Default)]
pub struct IrisMetrics {
    /// Registered connections serving traffic (set by the registry).
    pub(crate) connections_active: AtomicI64,
    /// Registered connections whose connector unregistered (set by the registry).
    pub(crate) connections_draining: AtomicI64,
    /// Registration answers by result (`ok`, `duplicate`, `unauthorized`, `invalid`,
    /// `rate_limited`, `refused`).
    pub registrations: CounterFamily,
    /// New tunnel connections refused before their handshake (source over its rate).
    pub connections_refused: Counter,
    /// Connections closed because the connector went silent while flows waited on it.
    pub connections_unresponsive: Counter,
    /// TCP streams through tunnels open now.
    pub streams_open: Arc<Gauge>,
    /// TCP streams the connector accepted.
    pub streams: Counter,
    /// Stream openings retried on another connection because theirs died first.
    pub stream_retries: Counter,
    /// UDP sessions open now.
    pub udp_sessions_open: Arc<Gauge>,
    /// UDP sessions the connector accepted.
    pub udp_sessions: Counter,
    /// Hostname lookups for CONNECTs (cache hits included), by result: `ok` or the code.
    pub dns_lookups: CounterFamily,
    /// Bytes sent into tunnels (toward origins).
    pub bytes_to_tunnel: Arc<Counter>,
    /// Bytes received from tunnels (from origins).
    pub bytes_from_tunnel: Arc<Counter>,
    /// Refused CONNECTs by `ErrorCode` wire name.
    pub errors: CounterFamily,
    /// CONNECT pipes closed because their service was deleted.
    pub deleted_service_pipes: Counter,
    /// Connection records (for `wvpc tunnel info`) dropped because the queue to the directory
    /// was full or the directory could not be written; the node publishes its live
    /// connections again once it can.
    pub connection_records_dropped: Counter,
    /// Relayed CONNECT attempts by result: `ok` (the holder answered `200`), `refused` (its
    /// final failure, passed through), `miss` (it held no usable connection), `peer_down`
    /// (no dial, or its stream failed before the answer), `error` (no answer in time).
    pub relays: CounterFamily,
    /// Relayed CONNECT streams (through another node) open now.
    pub relay_streams_open: Arc<Gauge>,
    /// Peer nodes whose last relay dial failed (skipped for a few seconds, then retried).
    pub relay_peers_down: Gauge,
    /// Times this node found its cluster lease lost (expired or removed while the store was
    /// unreachable) and joined again.
    pub registry_lease_lost: Counter,
}

impl IrisMetrics {
    /// Counts a refused CONNECT.
    pub fn error(&self, code: ErrorCode) {
        self.errors.inc(code.wire_name());
    }

    /// Counters for a tunnel stream: what is read from it came from the origin.
    pub(crate) fn tunnel_bytes(&self) -> ByteCounters {
        ByteCounters {
            read: self.bytes_from_tunnel.clone(),
            written: self.bytes_to_tunnel.clone(),
        }
    }

    pub(crate) fn set_connections(&self, active: usize, draining: usize) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.connections_active.store(n(active), Ordering::Relaxed);
        self.connections_draining
            .store(n(draining), Ordering::Relaxed);
    }
}

impl Render for IrisMetrics {
    fn render(&self) -> String {
        let mut out = Exposition::default();
        out.gauges(
            "wvpc_iris_tunnel_connections",
            "Registered tunnel connections by state.",
            "state",
            &[
                ("active", self.connections_active.load(Ordering::Relaxed)),
                (
                    "draining",
                    self.connections_draining.load(Ordering::Relaxed),
                ),
            ],
        );
        out.family(
            "wvpc_iris_registrations_total",
            "Tunnel registration attempts by result.",
            "result",
            &self.registrations,
        );
        out.counter(
            "wvpc_iris_connections_refused_total",
            "Tunnel connections refused before the handshake (source rate limit).",
            self.connections_refused.get(),
        );
        out.counter(
            "wvpc_iris_connections_unresponsive_total",
            "Tunnel connections closed because the connector went silent while flows waited.",
            self.connections_unresponsive.get(),
        );
        out.gauge(
            "wvpc_iris_streams_open",
            "TCP streams through tunnels open now.",
            self.streams_open.get(),
        );
        out.counter(
            "wvpc_iris_streams_total",
            "TCP streams through tunnels accepted by connectors.",
            self.streams.get(),
        );
        out.counter(
            "wvpc_iris_stream_retries_total",
            "Stream openings retried on another connection after theirs died.",
            self.stream_retries.get(),
        );
        out.gauge(
            "wvpc_iris_udp_sessions_open",
            "UDP sessions through tunnels open now.",
            self.udp_sessions_open.get(),
        );
        out.counter(
            "wvpc_iris_udp_sessions_total",
            "UDP sessions accepted by connectors.",
            self.udp_sessions.get(),
        );
        out.family(
            "wvpc_iris_dns_lookups_total",
            "Service hostname lookups by result.",
            "result",
            &self.dns_lookups,
        );
        out.counter(
            "wvpc_iris_bytes_to_tunnel_total",
            "Bytes sent into tunnels.",
            self.bytes_to_tunnel.get(),
        );
        out.counter(
            "wvpc_iris_bytes_from_tunnel_total",
            "Bytes received from tunnels.",
            self.bytes_from_tunnel.get(),
        );
        out.family(
            "wvpc_iris_errors_total",
            "Refused CONNECTs by error code.",
            "code",
            &self.errors,
        );
        out.counter(
            "wvpc_iris_deleted_service_pipes_total",
            "CONNECT pipes closed because their service was deleted.",
            self.deleted_service_pipes.get(),
        );
        out.counter(
            "wvpc_iris_connection_records_dropped_total",
            "Tunnel connection records dropped (queue full or directory busy); republished later.",
            self.connection_records_dropped.get(),
        );
        out.family(
            "wvpc_iris_relays_total",
            "Relayed CONNECT attempts to other nodes by result.",
            "result",
            &self.relays,
        );
        out.gauge(
            "wvpc_iris_relay_streams_open",
            "Relayed CONNECT streams through other nodes open now.",
            self.relay_streams_open.get(),
        );
        out.gauge(
            "wvpc_iris_relay_peers_down",
            "Peer nodes whose last relay dial failed.",
            self.relay_peers_down.get(),
        );
        out.counter(
            "wvpc_iris_registry_lease_lost_total",
            "Cluster leases found lost (expired or removed while the store was unreachable); the node joined again.",
            self.registry_lease_lost.get(),
        );
        out.finish()
    }
}
