//! The binding-worker's metrics (`wvpc binding-worker --metrics`, `wvpc dev --metrics`).
//! Names start with `wvpc_binding_worker_`; docs/operations.md lists them. Per service (a
//! network binding's calls are filed under its network target, e.g. `tunnel:<id>`): calls
//! by outcome and failures by category and error code, the time of the CONNECT to iris, the
//! origin's time to first byte, and origin connections opened or reused.
//!
//! Labels are service ids and network targets only, so their number is bounded by the
//! directory. A target's handle ([`TargetMetrics`]) is looked up once per call (one read
//! lock, no allocation once it exists).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use wvpc_errors::ProxyError;
use wvpc_observe::buckets::{LatencyFamily, latency_family};
use wvpc_observe::ops::Observable;
use wvpc_observe::recent::{Outcome, Recent, RecentMap};
use wvpc_observe::status::StatusReport;

use crate::request::BindingTarget;

/// The `service` label of calls whose binding could not be read (a malformed call).
const UNKNOWN_TARGET: &str = "unknown";

/// What a runtime asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Call {
    /// `VpcBinding.fetch`.
    Fetch,
    /// `VpcBinding.connect`.
    Connect,
}

impl Call {
    fn label(self) -> &'static str {
        match self {
            Self::Fetch => "fetch",
            Self::Connect => "connect",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallOutcome {
    service: String,
    call: &'static str,
    /// `success`, or the failure's category.
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallError {
    service: String,
    call: &'static str,
    category: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginConnection {
    service: String,
    /// `opened` (a fresh CONNECT) or `reused` (from the pool).
    connection: &'static str,
}

/// The metric families, shared (cheaply cloned) by the registry and every handle.
#[derive(Debug, Clone)]
struct Families {
    calls: Family<CallOutcome, Counter>,
    errors: Family<CallError, Counter>,
    iris_connect_seconds: LatencyFamily<ServiceLabel>,
    origin_ttfb_seconds: LatencyFamily<ServiceLabel>,
    origin_connections: Family<OriginConnection, Counter>,
}

/// Counters and histograms of one binding-worker, per service or network target.
#[derive(Debug)]
pub struct BindingWorkerMetrics {
    /// Off: nothing is counted (no `--metrics`: nobody would read it).
    enabled: bool,
    /// The handle every target gets when off.
    idle: Arc<TargetMetrics>,
    families: Families,
    targets: RwLock<HashMap<Option<BindingTarget>, Arc<TargetMetrics>>>,
    /// The last hour per service or network target, for the status page.
    recent: RecentMap,
}

impl Default for BindingWorkerMetrics {
    fn default() -> Self {
        let families = Families {
            calls: Family::default(),
            errors: Family::default(),
            iris_connect_seconds: latency_family(),
            origin_ttfb_seconds: latency_family(),
            origin_connections: Family::default(),
        };
        Self {
            enabled: true,
            idle: Arc::new(TargetMetrics::idle(&families)),
            families,
            targets: RwLock::default(),
            recent: RecentMap::default(),
        }
    }
}

impl BindingWorkerMetrics {
    /// Metrics that count nothing: every call's handle does nothing.
    pub fn off() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// The handle of `target` (`None`: a call whose binding could not be read); made on
    /// first use.
    pub(crate) fn target(&self, target: Option<BindingTarget>) -> Arc<TargetMetrics> {
        if !self.enabled {
            return self.idle.clone();
        }
        if let Some(found) = self
            .targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&target)
        {
            return found.clone();
        }
        let service = match target {
            Some(BindingTarget::Service(id)) => id.to_string(),
            Some(BindingTarget::Network(network)) => network.to_string(),
            None => UNKNOWN_TARGET.to_owned(),
        };
        let f = &self.families;
        let label = ServiceLabel {
            service: service.clone(),
        };
        let success = |call: Call| {
            f.calls.get_or_create_owned(&CallOutcome {
                service: service.clone(),
                call: call.label(),
                outcome: "success",
            })
        };
        let connection = |connection| {
            f.origin_connections.get_or_create_owned(&OriginConnection {
                service: service.clone(),
                connection,
            })
        };
        let handle = Arc::new(TargetMetrics {
            fetch_successes: success(Call::Fetch),
            connect_successes: success(Call::Connect),
            iris_connect: f.iris_connect_seconds.get_or_create_owned(&label),
            origin_ttfb: f.origin_ttfb_seconds.get_or_create_owned(&label),
            opened: connection("opened"),
            reused: connection("reused"),
            families: f.clone(),
            recent: Some(self.recent.get(&service)),
            service,
        });
        self.targets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(target)
            .or_insert(handle)
            .clone()
    }

    /// The Prometheus text of these metrics alone (tests and diagnostics).
    pub fn render(&self) -> String {
        wvpc_observe::ops::render_alone(self)
    }
}

impl Observable for BindingWorkerMetrics {
    /// Registers every metric into `registry` (names start with `wvpc_binding_worker_`).
    fn register(&self, registry: &mut Registry) {
        let f = &self.families;
        let r = registry.sub_registry_with_prefix("wvpc_binding_worker");
        r.register(
            "calls",
            "Per service (or network target): fetch and connect calls by outcome (success, \
             bad_upstream, client, internal)",
            f.calls.clone(),
        );
        r.register(
            "errors",
            "Per service (or network target): failed calls by category and error code",
            f.errors.clone(),
        );
        r.register(
            "iris_connect_seconds",
            "Per service (or network target): time from sending a CONNECT to iris to its \
             answer (successful CONNECTs)",
            f.iris_connect_seconds.clone(),
        );
        r.register(
            "origin_ttfb_seconds",
            "Per service (or network target): time from the request written to the origin to \
             its response head",
            f.origin_ttfb_seconds.clone(),
        );
        r.register(
            "origin_connections",
            "Per service (or network target): origin connections opened (a new CONNECT) or \
             reused from the pool, by request",
            f.origin_connections.clone(),
        );
    }

    /// Each service's (or network target's) requests over the last hour, by id; a process
    /// with a directory names them (`wvpc dev`: iris's part).
    fn contribute(&self, report: &mut StatusReport) {
        for (id, recent) in self.recent.active() {
            if id != UNKNOWN_TARGET {
                let status = recent.status(id, None, &report.windows);
                report.service_requests.push(status);
            }
        }
    }
}

/// One service's (or network target's) metrics.
#[derive(Debug)]
pub(crate) struct TargetMetrics {
    service: String,
    fetch_successes: Counter,
    connect_successes: Counter,
    iris_connect: Histogram,
    origin_ttfb: Histogram,
    opened: Counter,
    reused: Counter,
    families: Families,
    /// `None`: the handle of metrics that are off.
    recent: Option<Arc<Recent>>,
}

impl TargetMetrics {
    /// A handle that counts nothing.
    fn idle(families: &Families) -> Self {
        Self {
            service: String::new(),
            fetch_successes: Counter::default(),
            connect_successes: Counter::default(),
            iris_connect: Histogram::new([]),
            origin_ttfb: Histogram::new([]),
            opened: Counter::default(),
            reused: Counter::default(),
            families: families.clone(),
            recent: None,
        }
    }

    /// A call reached the origin `took` after it arrived (a fetch: its response head came;
    /// a connect: it opened).
    pub(crate) fn succeeded(&self, call: Call, took: Duration) {
        let Some(recent) = &self.recent else { return };
        match call {
            Call::Fetch => self.fetch_successes.inc(),
            Call::Connect => self.connect_successes.inc(),
        };
        recent.record(Outcome::Success, Some(took));
    }

    /// A call failed with `err`.
    pub(crate) fn failed(&self, call: Call, err: &ProxyError) {
        let Some(recent) = &self.recent else { return };
        let category = err.category().label();
        self.families
            .calls
            .get_or_create(&CallOutcome {
                service: self.service.clone(),
                call: call.label(),
                outcome: category,
            })
            .inc();
        self.families
            .errors
            .get_or_create(&CallError {
                service: self.service.clone(),
                call: call.label(),
                category,
                code: err.code.wire_name(),
            })
            .inc();
        recent.record(Outcome::failed(err), None);
    }

    /// iris answered a CONNECT `took` after it was sent.
    pub(crate) fn iris_connected(&self, took: Duration) {
        if self.recent.is_none() {
            return;
        }
        self.iris_connect.observe(took.as_secs_f64());
    }

    /// The origin's response head came `took` after the request was written.
    pub(crate) fn first_byte(&self, took: Duration) {
        if self.recent.is_none() {
            return;
        }
        self.origin_ttfb.observe(took.as_secs_f64());
    }

    /// A request went out on a fresh origin connection.
    pub(crate) fn opened(&self) {
        if self.recent.is_some() {
            self.opened.inc();
        }
    }

    /// A request went out on a pooled origin connection.
    pub(crate) fn reused(&self) {
        if self.recent.is_some() {
            self.reused.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;
    use wvpc_errors::ErrorCode;
    use wvpc_schemas::NetworkTarget;

    use super::*;

    #[test]
    fn calls_are_labelled_by_service_or_network_call_and_code() {
        let metrics = BindingWorkerMetrics::default();
        let id = Uuid::from_u128(9);
        let service = metrics.target(Some(BindingTarget::Service(id)));
        assert!(Arc::ptr_eq(
            &service,
            &metrics.target(Some(BindingTarget::Service(id)))
        ));
        service.succeeded(Call::Fetch, Duration::from_millis(6));
        service.iris_connected(Duration::from_millis(2));
        service.first_byte(Duration::from_millis(4));
        service.opened();
        service.reused();
        service.failed(Call::Fetch, &ProxyError::new(ErrorCode::ConnectionRefused));
        let network = metrics.target(Some(BindingTarget::Network(NetworkTarget::Tunnel(
            Uuid::from_u128(1),
        ))));
        network.failed(Call::Connect, &ProxyError::dns("NXDOMAIN"));
        metrics
            .target(None)
            .failed(Call::Fetch, &ProxyError::new(ErrorCode::HttpRequestError));
        let text = metrics.render();
        let s = id.to_string();
        let tunnel = NetworkTarget::Tunnel(Uuid::from_u128(1)).to_string();
        for line in [
            format!(
                "wvpc_binding_worker_calls_total{{service=\"{s}\",call=\"fetch\",outcome=\"success\"}} 1"
            ),
            format!(
                "wvpc_binding_worker_calls_total{{service=\"{s}\",call=\"fetch\",outcome=\"bad_upstream\"}} 1"
            ),
            format!(
                "wvpc_binding_worker_errors_total{{service=\"{s}\",call=\"fetch\",category=\"bad_upstream\",code=\"connection_refused\"}} 1"
            ),
            format!(
                "wvpc_binding_worker_errors_total{{service=\"{tunnel}\",call=\"connect\",category=\"client\",code=\"dns_error\"}} 1"
            ),
            "wvpc_binding_worker_errors_total{service=\"unknown\",call=\"fetch\",category=\"bad_upstream\",code=\"http_request_error\"} 1".to_owned(),
            format!("wvpc_binding_worker_iris_connect_seconds_count{{service=\"{s}\"}} 1"),
            format!(
                "wvpc_binding_worker_origin_ttfb_seconds_bucket{{service=\"{s}\",le=\"0.005\"}} 1"
            ),
            format!(
                "wvpc_binding_worker_origin_connections_total{{service=\"{s}\",connection=\"opened\"}} 1"
            ),
            format!(
                "wvpc_binding_worker_origin_connections_total{{service=\"{s}\",connection=\"reused\"}} 1"
            ),
        ] {
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        // The status lists the service's and the network's requests; not the unread call.
        let mut report = StatusReport {
            windows: vec![5],
            ..StatusReport::default()
        };
        metrics.contribute(&mut report);
        let listed: Vec<(&str, u64, u64)> = report
            .service_requests
            .iter()
            .map(|r| (r.id.as_str(), r.total_requests, r.total_errors))
            .collect();
        let mut expected = vec![(s.as_str(), 2, 1), (tunnel.as_str(), 1, 1)];
        expected.sort();
        assert_eq!(listed, expected);
    }
}
