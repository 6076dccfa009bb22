//! The runtime's metrics (`wvpc runtime --metrics`, `wvpc dev --metrics`). Names start with
//! `wvpc_runtime_`; docs/operations.md lists them. Per script (labelled by account and
//! script name): requests by outcome and their time to the response head, the time to make
//! a wasm instance; per binding of a script: the time of a binding call as the script sees
//! it (call → response head, or → socket open) and failed calls by category and error code.
//! Each script's last hour is kept for the status page.
//!
//! Labels are account ids, script and binding names only, so their number is bounded by
//! the deployed scripts. A script's handle ([`ScriptMetrics`]) and its bindings' handles are
//! looked up when a version is loaded, so a request takes no lock and allocates nothing to
//! count itself.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use wvpc_errors::{Category, ErrorCode, ProxyError};
use wvpc_observe::buckets::{LatencyFamily, latency_family};
use wvpc_observe::ops::Observable;
use wvpc_observe::recent::{Outcome, Recent, RecentMap};
use wvpc_observe::status::StatusReport;

use crate::script_output::RequestOutcome;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScriptLabel {
    account: String,
    script: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScriptOutcome {
    account: String,
    script: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BindingLabel {
    account: String,
    script: String,
    binding: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BindingOutcome {
    account: String,
    script: String,
    binding: String,
    /// `success`, or the failure's category.
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BindingError {
    account: String,
    script: String,
    binding: String,
    category: &'static str,
    code: &'static str,
}

/// Every outcome a request to a script can have, in [`outcome_index`] order.
const OUTCOMES: [RequestOutcome; 7] = [
    RequestOutcome::Ok,
    RequestOutcome::Exception,
    RequestOutcome::ExceededCpu,
    RequestOutcome::ExceededMemory,
    RequestOutcome::ExceededWallTime,
    RequestOutcome::Refused,
    RequestOutcome::InternalError,
];

fn outcome_index(outcome: RequestOutcome) -> usize {
    match outcome {
        RequestOutcome::Ok => 0,
        RequestOutcome::Exception => 1,
        RequestOutcome::ExceededCpu => 2,
        RequestOutcome::ExceededMemory => 3,
        RequestOutcome::ExceededWallTime => 4,
        RequestOutcome::Refused => 5,
        RequestOutcome::InternalError => 6,
    }
}

/// The `outcome` label of a request.
fn outcome_label(outcome: RequestOutcome) -> &'static str {
    match outcome {
        RequestOutcome::Ok => "ok",
        RequestOutcome::Exception => "exception",
        RequestOutcome::ExceededCpu => "exceeded_cpu",
        RequestOutcome::ExceededMemory => "exceeded_memory",
        RequestOutcome::ExceededWallTime => "exceeded_wall_time",
        RequestOutcome::Refused => "refused",
        RequestOutcome::InternalError => "internal_error",
    }
}

/// How the status page files a request's outcome. Its rows count failures by category and
/// error code: what the script did wrong (an exception, a limit, a request it refused) is
/// the client's; the runtime failing is internal. The exact outcome is the `outcome` label
/// of `wvpc_runtime_requests_total`.
fn recent_outcome(outcome: RequestOutcome) -> Outcome {
    match outcome {
        RequestOutcome::Ok => Outcome::Success,
        RequestOutcome::Exception
        | RequestOutcome::ExceededCpu
        | RequestOutcome::ExceededMemory => {
            Outcome::Failed(ErrorCode::ProxyInternalResponse, Category::Client)
        }
        RequestOutcome::ExceededWallTime => {
            Outcome::Failed(ErrorCode::HttpResponseTimeout, Category::Client)
        }
        RequestOutcome::Refused => Outcome::Failed(ErrorCode::HttpRequestError, Category::Client),
        RequestOutcome::InternalError => {
            Outcome::Failed(ErrorCode::ProxyInternalError, Category::Internal)
        }
    }
}

/// The metric families, shared (cheaply cloned) by the registry and every handle.
#[derive(Debug, Clone)]
struct Families {
    requests: Family<ScriptOutcome, Counter>,
    request_seconds: LatencyFamily<ScriptLabel>,
    instantiate_seconds: LatencyFamily<ScriptLabel>,
    unrouted: Counter,
    binding_fetch_seconds: LatencyFamily<BindingLabel>,
    binding_connect_seconds: LatencyFamily<BindingLabel>,
    binding_calls: Family<BindingOutcome, Counter>,
    binding_errors: Family<BindingError, Counter>,
}

/// Counters and histograms of one runtime process, per script and binding.
#[derive(Debug)]
pub struct RuntimeMetrics {
    families: Families,
    /// Each script's last hour, keyed `<account>/<script>`.
    recent: RecentMap,
    scripts: RwLock<HashMap<(String, String), Arc<ScriptMetrics>>>,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        Self {
            families: Families {
                requests: Family::default(),
                request_seconds: latency_family(),
                instantiate_seconds: latency_family(),
                unrouted: Counter::default(),
                binding_fetch_seconds: latency_family(),
                binding_connect_seconds: latency_family(),
                binding_calls: Family::default(),
                binding_errors: Family::default(),
            },
            recent: RecentMap::default(),
            scripts: RwLock::default(),
        }
    }
}

impl RuntimeMetrics {
    /// The handle of `script` of `account` (made on first use; every version of the script
    /// shares it).
    pub fn script(&self, account: &str, script: &str) -> Arc<ScriptMetrics> {
        let key = (account.to_owned(), script.to_owned());
        if let Some(found) = self
            .scripts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return found.clone();
        }
        let label = ScriptLabel {
            account: key.0.clone(),
            script: key.1.clone(),
        };
        let families = &self.families;
        let outcomes = OUTCOMES.map(|outcome| {
            families.requests.get_or_create_owned(&ScriptOutcome {
                account: key.0.clone(),
                script: key.1.clone(),
                outcome: outcome_label(outcome),
            })
        });
        let handle = Arc::new(ScriptMetrics {
            request_seconds: families.request_seconds.get_or_create_owned(&label),
            instantiate_seconds: families.instantiate_seconds.get_or_create_owned(&label),
            outcomes,
            recent: self.recent.get(&format!("{}/{}", key.0, key.1)),
            bindings: RwLock::default(),
            families: families.clone(),
            label,
        });
        self.scripts
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert(handle)
            .clone()
    }

    /// Counts a request that no script serves (404 naming its host).
    pub fn unrouted(&self) {
        self.families.unrouted.inc();
    }

    /// The Prometheus text of these metrics alone (tests and diagnostics).
    pub fn render(&self) -> String {
        wvpc_observe::ops::render_alone(self)
    }
}

impl Observable for RuntimeMetrics {
    /// Registers every metric into `registry` (names start with `wvpc_runtime_`).
    fn register(&self, registry: &mut Registry) {
        let f = &self.families;
        let r = registry.sub_registry_with_prefix("wvpc_runtime");
        r.register(
            "requests",
            "Per script: requests by outcome (ok, exception, exceeded_cpu, exceeded_memory, \
             exceeded_wall_time, refused, internal_error)",
            f.requests.clone(),
        );
        r.register(
            "request_seconds",
            "Per script: time from a request's arrival to its response head",
            f.request_seconds.clone(),
        );
        r.register(
            "unrouted_requests",
            "Requests no script serves (404 naming the host)",
            f.unrouted.clone(),
        );
        r.register(
            "instantiate_seconds",
            "Per script: time to make a wasm instance for a request",
            f.instantiate_seconds.clone(),
        );
        r.register(
            "binding_fetch_seconds",
            "Per script and binding: time from a binding fetch's call to its response head \
             (successful calls; each redirect hop is a call)",
            f.binding_fetch_seconds.clone(),
        );
        r.register(
            "binding_connect_seconds",
            "Per script and binding: time from a binding connect's call to the socket's opening \
             (successful calls)",
            f.binding_connect_seconds.clone(),
        );
        r.register(
            "binding_calls",
            "Per script and binding: fetch and connect calls by outcome (success, bad_upstream, \
             client, internal)",
            f.binding_calls.clone(),
        );
        r.register(
            "binding_errors",
            "Per script and binding: failed fetch and connect calls by category and error code",
            f.binding_errors.clone(),
        );
    }

    fn contribute(&self, report: &mut StatusReport) {
        for (key, recent) in self.recent.active() {
            let (account, script) = key.split_once('/').unwrap_or(("", &key));
            let mut status =
                recent.status(script.to_owned(), Some(script.to_owned()), &report.windows);
            status.account = Some(account.to_owned());
            report.scripts.push(status);
        }
    }
}

/// One script's metrics, looked up once per loaded version.
#[derive(Debug)]
pub struct ScriptMetrics {
    label: ScriptLabel,
    request_seconds: Histogram,
    instantiate_seconds: Histogram,
    /// `wvpc_runtime_requests_total` per outcome, in [`OUTCOMES`] order.
    outcomes: [Counter; 7],
    recent: Arc<Recent>,
    bindings: RwLock<HashMap<String, Arc<BindingMetrics>>>,
    families: Families,
}

impl ScriptMetrics {
    /// A request ended with `outcome`, its response head `took` after it arrived.
    pub fn request(&self, outcome: RequestOutcome, took: Duration) {
        self.outcomes[outcome_index(outcome)].inc();
        self.request_seconds.observe(took.as_secs_f64());
        self.recent.record(recent_outcome(outcome), Some(took));
    }

    /// A wasm instance of the script was made in `took`.
    pub fn instantiated(&self, took: Duration) {
        self.instantiate_seconds.observe(took.as_secs_f64());
    }

    /// The handle of the script's binding `binding` (made on first use).
    pub fn binding(&self, binding: &str) -> Arc<BindingMetrics> {
        if let Some(found) = self
            .bindings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(binding)
        {
            return found.clone();
        }
        let label = BindingLabel {
            account: self.label.account.clone(),
            script: self.label.script.clone(),
            binding: binding.to_owned(),
        };
        let handle = Arc::new(BindingMetrics {
            fetch_seconds: self
                .families
                .binding_fetch_seconds
                .get_or_create_owned(&label),
            connect_seconds: self
                .families
                .binding_connect_seconds
                .get_or_create_owned(&label),
            successes: self
                .families
                .binding_calls
                .get_or_create_owned(&BindingOutcome {
                    account: label.account.clone(),
                    script: label.script.clone(),
                    binding: label.binding.clone(),
                    outcome: "success",
                }),
            families: self.families.clone(),
            label,
        });
        self.bindings
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(binding.to_owned())
            .or_insert(handle)
            .clone()
    }
}

/// One binding's metrics, as one script sees it.
#[derive(Debug)]
pub struct BindingMetrics {
    label: BindingLabel,
    fetch_seconds: Histogram,
    connect_seconds: Histogram,
    successes: Counter,
    families: Families,
}

impl BindingMetrics {
    /// A fetch got its response head `took` after the call.
    pub fn fetched(&self, took: Duration) {
        self.successes.inc();
        self.fetch_seconds.observe(took.as_secs_f64());
    }

    /// A connect's socket opened `took` after the call.
    pub fn connected(&self, took: Duration) {
        self.successes.inc();
        self.connect_seconds.observe(took.as_secs_f64());
    }

    /// A fetch or connect failed with `err`.
    pub fn failed(&self, err: &ProxyError) {
        let category = err.category().label();
        let label = &self.label;
        self.families
            .binding_calls
            .get_or_create(&BindingOutcome {
                account: label.account.clone(),
                script: label.script.clone(),
                binding: label.binding.clone(),
                outcome: category,
            })
            .inc();
        self.families
            .binding_errors
            .get_or_create(&BindingError {
                account: label.account.clone(),
                script: label.script.clone(),
                binding: label.binding.clone(),
                category,
                code: err.code.wire_name(),
            })
            .inc();
    }
}

/// A script version's handles: the script's, and each of its bindings' (by name).
#[derive(Debug, Clone)]
pub(crate) struct ScriptProbe {
    pub script: Arc<ScriptMetrics>,
    bindings: HashMap<String, Arc<BindingMetrics>>,
}

impl ScriptProbe {
    /// The handles of `script` of `account` and of its `bindings`.
    pub fn new<'a>(
        metrics: &RuntimeMetrics,
        account: &str,
        script: &str,
        bindings: impl IntoIterator<Item = &'a String>,
    ) -> Self {
        let handle = metrics.script(account, script);
        let bindings = bindings
            .into_iter()
            .map(|name| (name.clone(), handle.binding(name)))
            .collect();
        Self {
            script: handle,
            bindings,
        }
    }

    /// The handle of the version's binding `binding`, if it declares it.
    pub fn binding(&self, binding: &str) -> Option<Arc<BindingMetrics>> {
        self.bindings.get(binding).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_and_bindings_are_counted_by_outcome_and_code() {
        let metrics = RuntimeMetrics::default();
        let names = ["api".to_owned()];
        let probe = ScriptProbe::new(&metrics, "acct", "proxy", &names);
        probe
            .script
            .request(RequestOutcome::Ok, Duration::from_millis(3));
        probe
            .script
            .request(RequestOutcome::ExceededCpu, Duration::from_millis(50));
        probe.script.instantiated(Duration::from_micros(700));
        let api = probe.binding("api").unwrap();
        assert!(probe.binding("other").is_none());
        api.fetched(Duration::from_millis(2));
        api.connected(Duration::from_millis(1));
        api.failed(&ProxyError::dns("NXDOMAIN"));
        metrics.unrouted();
        let text = metrics.render();
        for line in [
            r#"wvpc_runtime_requests_total{account="acct",script="proxy",outcome="ok"} 1"#,
            r#"wvpc_runtime_requests_total{account="acct",script="proxy",outcome="exceeded_cpu"} 1"#,
            r#"wvpc_runtime_request_seconds_count{account="acct",script="proxy"} 2"#,
            r#"wvpc_runtime_instantiate_seconds_bucket{account="acct",script="proxy",le="0.001"} 1"#,
            r#"wvpc_runtime_unrouted_requests_total 1"#,
            r#"wvpc_runtime_binding_fetch_seconds_count{account="acct",script="proxy",binding="api"} 1"#,
            r#"wvpc_runtime_binding_connect_seconds_count{account="acct",script="proxy",binding="api"} 1"#,
            r#"wvpc_runtime_binding_calls_total{account="acct",script="proxy",binding="api",outcome="success"} 2"#,
            r#"wvpc_runtime_binding_calls_total{account="acct",script="proxy",binding="api",outcome="client"} 1"#,
            r#"wvpc_runtime_binding_errors_total{account="acct",script="proxy",binding="api",category="client",code="dns_error"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // A later version of the script counts into the same series.
        let again = ScriptProbe::new(&metrics, "acct", "proxy", &names);
        assert!(Arc::ptr_eq(&again.script, &probe.script));

        let mut report = StatusReport {
            windows: vec![5],
            ..StatusReport::default()
        };
        metrics.contribute(&mut report);
        assert_eq!(report.scripts.len(), 1);
        let script = &report.scripts[0];
        assert_eq!(script.id, "proxy");
        assert_eq!(script.account.as_deref(), Some("acct"));
        assert_eq!(script.total_requests, 2);
        assert_eq!(script.total_errors, 1);
        assert_eq!(script.window(5).unwrap().errors.client, 1);
    }
}
