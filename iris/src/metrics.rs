//! iris's metrics (`wvpc iris --metrics`, `wvpc dev --metrics`). Names start with
//! `wvpc_iris_`; docs/operations.md lists them. One [`IrisMetrics`] is shared by the tunnel
//! edge (its registry counts connections, registrations, streams, sessions and bytes) and the
//! CONNECT router (per service: connection outcomes and latency, DNS time and cache use;
//! per node: DNS lookups and errors by code). [`ServiceMetrics`] also keeps each service's
//! last hour for the status page.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use uuid::Uuid;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_observe::buckets::{LatencyFamily, latency_family};
use wvpc_observe::ops::Observable;
use wvpc_observe::recent::{Outcome, Recent, RecentMap};
use wvpc_tunnel::metrics::{ByteCounters, Counter, CounterFamily, Gauge};

/// Counters, gauges and histograms of one iris node.
#[derive(Debug)]
pub struct IrisMetrics {
    /// Registered connections by state (set by the registry).
    tunnel_connections: Family<[(&'static str, &'static str); 1], Gauge>,
    /// Registration answers by result (`ok`, `duplicate`, `unauthorized`, `invalid`,
    /// `rate_limited`, `refused`).
    pub registrations: CounterFamily,
    /// New tunnel connections refused before their handshake (source over its rate).
    pub connections_refused: Counter,
    /// Connections closed because the connector went silent while flows waited on it.
    pub connections_unresponsive: Counter,
    /// TCP streams through tunnels open now.
    pub streams_open: Gauge,
    /// TCP streams the connector accepted.
    pub streams: Counter,
    /// Stream openings retried on another connection because theirs died first.
    pub stream_retries: Counter,
    /// UDP sessions open now.
    pub udp_sessions_open: Gauge,
    /// UDP sessions the connector accepted.
    pub udp_sessions: Counter,
    /// Hostname lookups for CONNECTs (cache hits included), by result: `ok` or the code.
    pub dns_lookups: CounterFamily,
    /// Bytes sent into tunnels (toward origins).
    pub bytes_to_tunnel: Counter,
    /// Bytes received from tunnels (from origins).
    pub bytes_from_tunnel: Counter,
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
    pub relay_streams_open: Gauge,
    /// Peer nodes whose last relay dial failed (skipped for a few seconds, then retried).
    pub relay_peers_down: Gauge,
    /// Times this node found its cluster lease lost (expired or removed while the store was
    /// unreachable) and joined again.
    pub registry_lease_lost: Counter,
    /// Per-service figures.
    pub services: ServiceMetrics,
}

impl Default for IrisMetrics {
    fn default() -> Self {
        Self {
            tunnel_connections: Family::default(),
            registrations: CounterFamily::new("result"),
            connections_refused: Counter::default(),
            connections_unresponsive: Counter::default(),
            streams_open: Gauge::default(),
            streams: Counter::default(),
            stream_retries: Counter::default(),
            udp_sessions_open: Gauge::default(),
            udp_sessions: Counter::default(),
            dns_lookups: CounterFamily::new("result"),
            bytes_to_tunnel: Counter::default(),
            bytes_from_tunnel: Counter::default(),
            errors: CounterFamily::new("code"),
            deleted_service_pipes: Counter::default(),
            connection_records_dropped: Counter::default(),
            relays: CounterFamily::new("result"),
            relay_streams_open: Gauge::default(),
            relay_peers_down: Gauge::default(),
            registry_lease_lost: Counter::default(),
            services: ServiceMetrics::default(),
        }
    }
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
        for (state, count) in [("active", active), ("draining", draining)] {
            self.tunnel_connections
                .get_or_create(&[("state", state)])
                .set(n(count));
        }
    }

    /// Registered connections in `state` (`active` or `draining`).
    pub fn connections_in(&self, state: &'static str) -> i64 {
        self.tunnel_connections
            .get(&[("state", state)])
            .map_or(0, |gauge| gauge.get())
    }

    /// The Prometheus text of these metrics alone (tests and diagnostics).
    pub fn render(&self) -> String {
        wvpc_observe::ops::render_alone(self)
    }
}

impl Observable for IrisMetrics {
    /// Registers every metric into `registry` (names start with `wvpc_iris_`).
    fn register(&self, registry: &mut Registry) {
        self.set_connections(
            usize::try_from(self.connections_in("active")).unwrap_or(0),
            usize::try_from(self.connections_in("draining")).unwrap_or(0),
        );
        let r = registry.sub_registry_with_prefix("wvpc_iris");
        r.register(
            "tunnel_connections",
            "Registered tunnel connections by state",
            self.tunnel_connections.clone(),
        );
        r.register(
            "registrations",
            "Tunnel registration attempts by result",
            self.registrations.metric(),
        );
        r.register(
            "connections_refused",
            "Tunnel connections refused before the handshake (source rate limit)",
            self.connections_refused.clone(),
        );
        r.register(
            "connections_unresponsive",
            "Tunnel connections closed because the connector went silent while flows waited",
            self.connections_unresponsive.clone(),
        );
        r.register(
            "streams_open",
            "TCP streams through tunnels open now",
            self.streams_open.clone(),
        );
        r.register(
            "streams",
            "TCP streams through tunnels accepted by connectors",
            self.streams.clone(),
        );
        r.register(
            "stream_retries",
            "Stream openings retried on another connection after theirs died",
            self.stream_retries.clone(),
        );
        r.register(
            "udp_sessions_open",
            "UDP sessions through tunnels open now",
            self.udp_sessions_open.clone(),
        );
        r.register(
            "udp_sessions",
            "UDP sessions accepted by connectors",
            self.udp_sessions.clone(),
        );
        r.register(
            "dns_lookups",
            "Service hostname lookups (cache hits included) by result",
            self.dns_lookups.metric(),
        );
        r.register(
            "bytes_to_tunnel",
            "Bytes sent into tunnels",
            self.bytes_to_tunnel.clone(),
        );
        r.register(
            "bytes_from_tunnel",
            "Bytes received from tunnels",
            self.bytes_from_tunnel.clone(),
        );
        r.register(
            "errors",
            "Refused CONNECTs by error code",
            self.errors.metric(),
        );
        r.register(
            "deleted_service_pipes",
            "CONNECT pipes closed because their service was deleted",
            self.deleted_service_pipes.clone(),
        );
        r.register(
            "connection_records_dropped",
            "Tunnel connection records dropped (queue full or directory busy); republished later",
            self.connection_records_dropped.clone(),
        );
        r.register(
            "relays",
            "Relayed CONNECT attempts to other nodes by result",
            self.relays.metric(),
        );
        r.register(
            "relay_streams_open",
            "Relayed CONNECT streams through other nodes open now",
            self.relay_streams_open.clone(),
        );
        r.register(
            "relay_peers_down",
            "Peer nodes whose last relay dial failed",
            self.relay_peers_down.clone(),
        );
        r.register(
            "registry_lease_lost",
            "Cluster leases found lost (expired or removed while the store was unreachable); the node joined again",
            self.registry_lease_lost.clone(),
        );
        self.services.register(r);
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceOutcome {
    service: String,
    /// `success`, or the failure's category.
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceError {
    service: String,
    category: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceCache {
    service: String,
    /// `hit` or `miss`.
    result: &'static str,
}

/// Per-service figures: connections by outcome (the product's Metrics tab: success, Bad
/// Upstream, Client, Internal) and by error code, connection latency (CONNECT received to the
/// stream piping), DNS lookup time and cache use. Labels are service ids only, so their
/// number is bounded by the directory's services.
#[derive(Debug)]
pub struct ServiceMetrics {
    connect_seconds: LatencyFamily<ServiceLabel>,
    dns_seconds: LatencyFamily<ServiceLabel>,
    dns_cache: Family<ServiceCache, Counter>,
    connections: Family<ServiceOutcome, Counter>,
    errors: Family<ServiceError, Counter>,
    recent: RecentMap,
    handles: RwLock<HashMap<Uuid, Arc<ServiceHandle>>>,
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        Self {
            connect_seconds: latency_family(),
            dns_seconds: latency_family(),
            dns_cache: Family::default(),
            connections: Family::default(),
            errors: Family::default(),
            recent: RecentMap::default(),
            handles: RwLock::default(),
        }
    }
}

/// One service's metrics, looked up once per CONNECT.
#[derive(Debug)]
pub struct ServiceHandle {
    id: String,
    connect: Histogram,
    dns: Histogram,
    dns_hits: Counter,
    dns_misses: Counter,
    successes: Counter,
    recent: Arc<Recent>,
}

impl ServiceMetrics {
    /// The handle of `service` (made on first use).
    pub fn service(&self, service: Uuid) -> Arc<ServiceHandle> {
        if let Some(handle) = self
            .handles
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&service)
        {
            return handle.clone();
        }
        let id = service.to_string();
        let label = ServiceLabel {
            service: id.clone(),
        };
        let cache = |result| ServiceCache {
            service: id.clone(),
            result,
        };
        let handle = Arc::new(ServiceHandle {
            connect: self.connect_seconds.get_or_create_owned(&label),
            dns: self.dns_seconds.get_or_create_owned(&label),
            dns_hits: self.dns_cache.get_or_create_owned(&cache("hit")),
            dns_misses: self.dns_cache.get_or_create_owned(&cache("miss")),
            successes: self.connections.get_or_create_owned(&ServiceOutcome {
                service: id.clone(),
                outcome: "success",
            }),
            recent: self.recent.get(&id),
            id,
        });
        self.handles
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(service)
            .or_insert(handle)
            .clone()
    }

    /// The last hour of every service with traffic in it.
    pub fn recent(&self) -> Vec<(String, Arc<Recent>)> {
        self.recent.active()
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "service_connect_seconds",
            "Per service: time from a CONNECT's arrival to its stream piping (successful CONNECTs)",
            self.connect_seconds.clone(),
        );
        registry.register(
            "service_dns_seconds",
            "Per service: time of hostname lookups through the tunnel (cache hits excluded)",
            self.dns_seconds.clone(),
        );
        registry.register(
            "service_dns_cache",
            "Per service: hostname answers from the cache (hit) or looked up (miss)",
            self.dns_cache.clone(),
        );
        registry.register(
            "service_connections",
            "Per service: CONNECTs by outcome (success, bad_upstream, client, internal)",
            self.connections.clone(),
        );
        registry.register(
            "service_errors",
            "Per service: failed CONNECTs by category and error code",
            self.errors.clone(),
        );
    }
}

impl ServiceHandle {
    /// A CONNECT reached the origin `took` after it arrived.
    pub fn connected(&self, took: Duration) {
        self.successes.inc();
        self.connect.observe(took.as_secs_f64());
        self.recent.record(Outcome::Success, Some(took));
    }

    /// A CONNECT failed with `err`.
    pub fn failed(&self, metrics: &ServiceMetrics, err: &ProxyError) {
        let category = err.category();
        metrics
            .connections
            .get_or_create(&ServiceOutcome {
                service: self.id.clone(),
                outcome: category.label(),
            })
            .inc();
        metrics
            .errors
            .get_or_create(&ServiceError {
                service: self.id.clone(),
                category: category.label(),
                code: err.code.wire_name(),
            })
            .inc();
        self.recent.record(Outcome::failed(err), None);
    }

    /// A hostname answer came from the cache.
    pub fn dns_hit(&self) {
        self.dns_hits.inc();
        self.recent.record_dns_hit();
    }

    /// A hostname lookup went through the tunnel and took `took`.
    pub fn dns_lookup(&self, took: Duration) {
        self.dns_misses.inc();
        self.dns.observe(took.as_secs_f64());
        self.recent.record_dns_lookup(took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_figures_are_labelled_by_id_outcome_and_code() {
        let metrics = IrisMetrics::default();
        let id = Uuid::from_u128(7);
        let service = metrics.services.service(id);
        service.connected(Duration::from_millis(3));
        service.dns_lookup(Duration::from_millis(2));
        service.dns_hit();
        service.failed(&metrics.services, &ProxyError::dns("NXDOMAIN"));
        service.failed(
            &metrics.services,
            &ProxyError::new(ErrorCode::ConnectionRefused),
        );
        let text = metrics.render();
        let s = id.to_string();
        for line in [
            format!("wvpc_iris_service_connections_total{{service=\"{s}\",outcome=\"success\"}} 1"),
            format!("wvpc_iris_service_connections_total{{service=\"{s}\",outcome=\"client\"}} 1"),
            format!(
                "wvpc_iris_service_connections_total{{service=\"{s}\",outcome=\"bad_upstream\"}} 1"
            ),
            format!(
                "wvpc_iris_service_errors_total{{service=\"{s}\",category=\"client\",code=\"dns_error\"}} 1"
            ),
            format!("wvpc_iris_service_dns_cache_total{{service=\"{s}\",result=\"hit\"}} 1"),
            format!("wvpc_iris_service_connect_seconds_bucket{{service=\"{s}\",le=\"0.005\"}} 1"),
            format!("wvpc_iris_service_connect_seconds_count{{service=\"{s}\"}} 1"),
            format!("wvpc_iris_service_dns_seconds_count{{service=\"{s}\"}} 1"),
        ] {
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        let recent = metrics.services.recent();
        assert_eq!(recent.len(), 1);
        let status = recent[0].1.status(s, None, &[5]);
        assert_eq!(status.total_requests, 3);
        assert_eq!(status.window(5).unwrap().dns_cache_hits, 1);
    }
}
