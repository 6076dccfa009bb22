//! The mock network of `wvpc dev --mock`: what stands behind iris's two seams
//! ([`ServiceStore`], [`TunnelPool`]) when a script runs without a connector, a private
//! network or a directory. Everything in front of the seams (runtime, binding-worker, iris's
//! router and DNS resolver) is the real code, so a fault produces the code its real cause
//! produces on the real path.
//!
//! [`MockNetwork`] synthesises one service per binding (ids fixed for its lifetime, a hostname
//! resolved through the "tunnel" from the binding's [`BindingMock::dns`]), and serves each TCP
//! flow with an in-process HTTP/1.1 server: a canned response, else the request proxied to
//! [`BindingMock::upstream`], else `501` naming the binding, method and path. `https` flows are
//! served behind TLS with a certificate of the mock's own CA, which the synthetic service
//! trusts (`verify_ca`).
//!
//! Faults act where their real cause would:
//!
//! | code | where | how |
//! |---|---|---|
//! | `connection_refused` | the dial | the flow is refused, as the connector reports a refused dial |
//! | `connection_timeout` | the dial | the dial never completes; iris's stream-open timeout ([`MockNetwork::dial_timeout`]) fires |
//! | `dns_error` | DNS through the tunnel | the name's lookup is answered NXDOMAIN |
//! | `tls_certificate_error` | the TLS handshake | `https`: a certificate nothing trusts; `http` has no handshake, so the dial fails with the code |
//! | `http_response_incomplete` | the response | the body is cut: half of it sent, the connection closed |
//!
//! A fault for every request of a binding applies at its stage directly. A fault scoped to a
//! `path` / `method` is only known once the request is read, after the dial: the mock closes
//! that connection unanswered and marks the request (by its request id) so that the
//! binding-worker's retry on a new connection meets the fault at its stage. The binding-worker
//! retries only idempotent requests without a body, so for others the script sees
//! `connection_terminated` instead.
//!
//! The model can be driven in-process: [`MockNetwork::replace`] (a reloaded file),
//! [`MockNetwork::set_faults`], [`MockNetwork::requests`] (what each binding received) and
//! [`MockNetwork::set_observer`] (one [`Exchange`] per binding request).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex as AsyncMutex, mpsc};
use uuid::Uuid;
use wvpc_errors::{ErrorCode, ProxyError};

use crate::connect::RouterConfig;
use crate::dns::DnsConfig;
use crate::routes::{CertVerificationMode, RouteTarget, RouteTls, ServiceRoute, ServiceStore};
use crate::tunnel_pool::{BoxFuture, BoxIo, FlowContext, TunnelPool, UdpFlow};

/// Port of the synthetic services for `http` requests.
pub const MOCK_HTTP_PORT: u16 = 80;
/// Port of the synthetic services for `https` requests.
pub const MOCK_HTTPS_PORT: u16 = 443;
/// How long a dial that never completes takes to fail with `connection_timeout` by default:
/// the connector's own dial timeout.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request marked for a scoped fault waits for the binding-worker's retry.
const ARMED_FOR: Duration = Duration::from_secs(30);

// === the model ===

/// The fault codes a mock can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultCode {
    /// The dial is refused.
    ConnectionRefused,
    /// The service's name does not resolve (NXDOMAIN).
    DnsError,
    /// The dial never completes.
    ConnectionTimeout,
    /// The origin's TLS certificate is not trusted.
    TlsCertificateError,
    /// The response body is cut short.
    HttpResponseIncomplete,
}

impl FaultCode {
    /// Every code, in documentation order.
    pub const ALL: [FaultCode; 5] = [
        Self::ConnectionRefused,
        Self::DnsError,
        Self::ConnectionTimeout,
        Self::TlsCertificateError,
        Self::HttpResponseIncomplete,
    ];

    /// The RFC 9209 code it produces (also its spelling in the mock file).
    pub const fn error_code(self) -> ErrorCode {
        match self {
            Self::ConnectionRefused => ErrorCode::ConnectionRefused,
            Self::DnsError => ErrorCode::DnsError,
            Self::ConnectionTimeout => ErrorCode::ConnectionTimeout,
            Self::TlsCertificateError => ErrorCode::TlsCertificateError,
            Self::HttpResponseIncomplete => ErrorCode::HttpResponseIncomplete,
        }
    }

    /// The code's name, as in the mock file.
    pub fn name(self) -> &'static str {
        self.error_code().wire_name()
    }

    /// Reads a code name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.name() == name)
    }

    /// Whether the fault acts before the request is read (DNS, dial, TLS handshake).
    const fn before_request(self) -> bool {
        !matches!(self, Self::HttpResponseIncomplete)
    }
}

impl fmt::Display for FaultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fault rule: for the requests it matches, `rate` percent of the time, wait `latency`
/// and then fail with `code` (no code: latency only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Method the rule is limited to (any when `None`).
    pub method: Option<String>,
    /// Path pattern the rule is limited to, `*` matching any run of characters, with a `?`
    /// the path and query ([`path_matches`]) (any when `None`).
    pub path: Option<String>,
    /// The failure, if any.
    pub code: Option<FaultCode>,
    /// Delay added before the failure or the answer.
    pub latency: Duration,
    /// Percent of matching requests the rule hits (0–100).
    pub rate: u8,
}

impl Fault {
    /// `code` for every request of the binding.
    pub fn new(code: FaultCode) -> Self {
        Self {
            method: None,
            path: None,
            code: Some(code),
            latency: Duration::ZERO,
            rate: 100,
        }
    }

    /// Added latency only, for every request.
    pub fn latency(latency: Duration) -> Self {
        Self {
            code: None,
            latency,
            ..Self::new(FaultCode::ConnectionRefused)
        }
    }

    /// Limited to requests whose path matches `pattern`.
    #[must_use]
    pub fn on_path(mut self, pattern: impl Into<String>) -> Self {
        self.path = Some(pattern.into());
        self
    }

    /// Limited to `method`.
    #[must_use]
    pub fn on_method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// Whether the rule is limited to some requests (so it can only be decided on a request).
    fn scoped(&self) -> bool {
        self.method.is_some() || self.path.is_some()
    }

    fn matches(&self, method: &str, path: &str, path_and_query: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path
                .as_deref()
                .is_none_or(|p| path_matches(p, path, path_and_query))
    }

    fn hits(&self) -> bool {
        self.rate >= 100 || (self.rate > 0 && rand::random_range(0..100u8) < self.rate)
    }
}

/// A canned answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CannedResponse {
    /// Method it answers (any when `None`).
    pub method: Option<String>,
    /// Path pattern it answers, `*` matching any run of characters; with a `?`, the pattern
    /// of the path and query ([`path_matches`]).
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Response headers, in order.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Bytes,
}

/// What one binding's traffic meets instead of the tunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindingMock {
    /// A local server requests no canned response answers are sent to.
    pub upstream: Option<SocketAddr>,
    /// The service's hostname (resolved through the mock's DNS); default `<binding>.mock`.
    pub host: Option<String>,
    /// Canned answers, first match wins.
    pub responses: Vec<CannedResponse>,
    /// Names → addresses answered by DNS through the tunnel (lower-case names).
    pub dns: BTreeMap<String, Vec<IpAddr>>,
    /// Fault rules, first hit wins.
    pub faults: Vec<Fault>,
}

/// The whole mock: binding name → what it meets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MockSpec {
    /// Per binding; bindings not listed answer `501` to everything.
    pub bindings: BTreeMap<String, BindingMock>,
}

/// A request a mocked binding received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The method.
    pub method: String,
    /// `scheme://host/path?query`, the host as the `Host` header said.
    pub url: String,
    /// Path and query.
    pub path: String,
    /// Headers in order (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How one binding request ended, as the mock saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeOutcome {
    /// Answered with this status.
    Status(u16),
    /// Failed with this code.
    Failed(ErrorCode),
}

/// One binding request, for the `wvpc dev --mock` request log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The binding.
    pub binding: String,
    /// Method and URL, when the request was read (a failed dial happens before it is).
    pub request: Option<(String, String)>,
    /// Status or code.
    pub outcome: ExchangeOutcome,
    /// From the dial or the request to the outcome.
    pub elapsed: Duration,
}

impl fmt::Display for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.binding)?;
        match &self.request {
            Some((method, url)) => write!(f, " {method} {url}")?,
            None => write!(f, " (new connection)")?,
        }
        match self.outcome {
            ExchangeOutcome::Status(status) => write!(f, " -> {status}")?,
            ExchangeOutcome::Failed(code) => write!(f, " -> {code}")?,
        }
        write!(f, " ({:.1} ms)", self.elapsed.as_secs_f64() * 1000.0)
    }
}

/// Receives every [`Exchange`].
pub type ExchangeObserver = Arc<dyn Fn(&Exchange) + Send + Sync>;
/// Told the service id of a binding whose mock changed (to close pooled connections).
pub type ChangeObserver = Arc<dyn Fn(Uuid) + Send + Sync>;

/// Why a mock cannot be set up or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MockError {
    /// The spec names a binding the script does not declare.
    #[error("binding {0:?} is not declared by the script (its vpc_services)")]
    UnknownBinding(String),
    /// The mock's TLS identity could not be made.
    #[error("creating the mock's TLS certificates: {0}")]
    Tls(String),
}

// === the network ===

/// The mock network. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct MockNetwork {
    inner: Arc<Inner>,
}

struct Inner {
    /// By binding name; fixed at creation.
    bindings: BTreeMap<String, Arc<BindingState>>,
    by_service: HashMap<Uuid, Arc<BindingState>>,
    by_tunnel: HashMap<Uuid, Arc<BindingState>>,
    tls: MockTls,
    dial_timeout: Duration,
    observer: RwLock<Option<ExchangeObserver>>,
    on_change: RwLock<Option<ChangeObserver>>,
    /// Request id → the scoped fault its retry must meet.
    armed: Mutex<HashMap<String, Armed>>,
}

struct BindingState {
    name: String,
    service_id: Uuid,
    tunnel_id: Uuid,
    mock: RwLock<Arc<BindingMock>>,
    requests: Mutex<Vec<RecordedRequest>>,
}

impl BindingState {
    fn mock(&self) -> Arc<BindingMock> {
        self.mock
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn host(&self, mock: &BindingMock) -> String {
        mock.host
            .clone()
            .unwrap_or_else(|| default_host(&self.name))
    }
}

/// A fault met at the lookup or the dial, and the request it was marked for, if any.
struct StageFault {
    code: FaultCode,
    latency: Duration,
    request: Option<(String, String)>,
}

struct Armed {
    code: FaultCode,
    request: (String, String),
    at: Instant,
}

impl fmt::Debug for MockNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockNetwork")
            .field("bindings", &self.inner.bindings.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl MockNetwork {
    /// A network for a script's `bindings` (every one gets a service, mocked or not),
    /// set up as `spec` says.
    pub fn new(
        bindings: impl IntoIterator<Item = String>,
        spec: MockSpec,
    ) -> Result<Self, MockError> {
        Self::with_dial_timeout(bindings, spec, DEFAULT_DIAL_TIMEOUT)
    }

    /// [`MockNetwork::new`] whose `connection_timeout` fault takes `dial_timeout`.
    pub fn with_dial_timeout(
        bindings: impl IntoIterator<Item = String>,
        spec: MockSpec,
        dial_timeout: Duration,
    ) -> Result<Self, MockError> {
        let bindings: BTreeMap<String, Arc<BindingState>> = bindings
            .into_iter()
            .map(|name| {
                let state = BindingState {
                    name: name.clone(),
                    service_id: Uuid::new_v4(),
                    tunnel_id: Uuid::new_v4(),
                    mock: RwLock::default(),
                    requests: Mutex::default(),
                };
                (name, Arc::new(state))
            })
            .collect();
        let network = Self {
            inner: Arc::new(Inner {
                by_service: bindings
                    .values()
                    .map(|b| (b.service_id, b.clone()))
                    .collect(),
                by_tunnel: bindings
                    .values()
                    .map(|b| (b.tunnel_id, b.clone()))
                    .collect(),
                bindings,
                tls: MockTls::generate()?,
                dial_timeout,
                observer: RwLock::default(),
                on_change: RwLock::default(),
                armed: Mutex::default(),
            }),
        };
        network.replace(spec)?;
        Ok(network)
    }

    /// The synthetic service a binding points at (`None`: not a binding of the script).
    pub fn service_id(&self, binding: &str) -> Option<Uuid> {
        self.inner.bindings.get(binding).map(|b| b.service_id)
    }

    /// The binding names, sorted.
    pub fn bindings(&self) -> Vec<String> {
        self.inner.bindings.keys().cloned().collect()
    }

    /// How long a `connection_timeout` dial takes to fail: iris's stream-open timeout of the
    /// router in front of this network ([`MockNetwork::router_config`]).
    pub fn dial_timeout(&self) -> Duration {
        self.inner.dial_timeout
    }

    /// The router tuning for this network: DNS answers are not cached (a changed mock applies
    /// to the next request) and a dial that never completes fails after
    /// [`MockNetwork::dial_timeout`], as the connector's dial timeout would.
    pub fn router_config(&self) -> RouterConfig {
        RouterConfig {
            node_name: "wvpc-mock".into(),
            dns: DnsConfig {
                min_ttl: Duration::ZERO,
                max_ttl: Duration::ZERO,
                negative_ttl: Duration::ZERO,
                max_negative_ttl: Duration::ZERO,
                ..DnsConfig::default()
            },
            stream_open_timeout: self.inner.dial_timeout,
            ..RouterConfig::default()
        }
    }

    /// Replaces the whole mock (a reloaded file). Bindings `spec` does not list answer `501`.
    pub fn replace(&self, spec: MockSpec) -> Result<(), MockError> {
        if let Some(unknown) = spec
            .bindings
            .keys()
            .find(|name| !self.inner.bindings.contains_key(*name))
        {
            return Err(MockError::UnknownBinding(unknown.clone()));
        }
        let mut specs = spec.bindings;
        for (name, state) in &self.inner.bindings {
            let mock = specs.remove(name).unwrap_or_default();
            *state.mock.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(mock);
            self.changed(state);
        }
        Ok(())
    }

    /// Replaces one binding's fault rules.
    pub fn set_faults(&self, binding: &str, faults: Vec<Fault>) -> Result<(), MockError> {
        self.update(binding, |mock| mock.faults = faults)
    }

    /// Changes one binding's mock in place.
    pub fn update(
        &self,
        binding: &str,
        change: impl FnOnce(&mut BindingMock),
    ) -> Result<(), MockError> {
        let state = self.binding(binding)?;
        {
            let mut guard = state.mock.write().unwrap_or_else(PoisonError::into_inner);
            let mut mock = BindingMock::clone(&guard);
            change(&mut mock);
            *guard = Arc::new(mock);
        }
        self.changed(state);
        Ok(())
    }

    /// Every request `binding` received so far, in order (empty for an unknown binding).
    pub fn requests(&self, binding: &str) -> Vec<RecordedRequest> {
        self.inner
            .bindings
            .get(binding)
            .map(|b| {
                b.requests
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            })
            .unwrap_or_default()
    }

    /// Forgets the recorded requests of every binding.
    pub fn clear_requests(&self) {
        for state in self.inner.bindings.values() {
            state
                .requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
    }

    /// Sends every binding request's outcome to `observer`.
    pub fn set_observer(&self, observer: ExchangeObserver) {
        *self
            .inner
            .observer
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(observer);
    }

    /// Tells `observer` the service of each binding whose mock changes, so that connections
    /// pooled in front of the network are not reused across the change.
    pub fn on_change(&self, observer: ChangeObserver) {
        *self
            .inner
            .on_change
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(observer);
    }

    /// PEM of the CA that signs the certificate `https` flows present (the synthetic
    /// services trust it).
    pub fn ca_pem(&self) -> &str {
        &self.inner.tls.ca_pem
    }

    fn binding(&self, name: &str) -> Result<&Arc<BindingState>, MockError> {
        self.inner
            .bindings
            .get(name)
            .ok_or_else(|| MockError::UnknownBinding(name.to_owned()))
    }

    fn changed(&self, state: &BindingState) {
        let observer = self
            .inner
            .on_change
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(observer) = observer {
            observer(state.service_id);
        }
    }

    fn report(&self, exchange: Exchange) {
        let observer = self
            .inner
            .observer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(observer) = observer {
            observer(&exchange);
        }
    }

    fn arm(&self, request_id: &str, code: FaultCode, request: (String, String)) -> bool {
        if request_id.is_empty() {
            return false;
        }
        let mut armed = self
            .inner
            .armed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        armed.retain(|_, a| a.at.elapsed() < ARMED_FOR);
        armed.insert(
            request_id.to_owned(),
            Armed {
                code,
                request,
                at: Instant::now(),
            },
        );
        true
    }

    /// The scoped fault marked for this request's retry at this stage (DNS or the dial).
    fn take_armed(&self, request_id: &str, dns: bool) -> Option<Armed> {
        let mut armed = self
            .inner
            .armed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let hit = armed
            .get(request_id)
            .is_some_and(|a| (a.code == FaultCode::DnsError) == dns && a.at.elapsed() < ARMED_FOR);
        if hit { armed.remove(request_id) } else { None }
    }

    /// The fault this dial or lookup meets: one marked for its request, else a rule for every
    /// request with a code of this stage.
    fn stage_fault(&self, mock: &BindingMock, ctx: &FlowContext, dns: bool) -> Option<StageFault> {
        if let Some(armed) = self.take_armed(&ctx.request_id, dns) {
            return Some(StageFault {
                code: armed.code,
                latency: Duration::ZERO,
                request: Some(armed.request),
            });
        }
        mock.faults
            .iter()
            .filter(|f| !f.scoped())
            .filter(|f| {
                f.code
                    .is_some_and(|c| c.before_request() && (c == FaultCode::DnsError) == dns)
            })
            .find(|f| f.hits())
            .and_then(|f| {
                Some(StageFault {
                    code: f.code?,
                    latency: f.latency,
                    request: None,
                })
            })
    }
}

fn default_host(binding: &str) -> String {
    let label: String = binding
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("{}.mock", label.trim_matches('-'))
}

impl ServiceStore for MockNetwork {
    fn route(&self, service_id: Uuid) -> Result<Option<ServiceRoute>, ProxyError> {
        let Some(state) = self.inner.by_service.get(&service_id) else {
            return Ok(None);
        };
        let mock = state.mock();
        Ok(Some(ServiceRoute {
            service_id,
            tunnel_id: state.tunnel_id,
            target: RouteTarget::Hostname {
                name: state.host(&mock),
                resolvers: Vec::new(),
            },
            http_port: Some(MOCK_HTTP_PORT),
            https_port: Some(MOCK_HTTPS_PORT),
            tcp_port: None,
            tls: RouteTls {
                cert_verification_mode: CertVerificationMode::VerifyCa,
                ca_certificate: Some(self.inner.tls.ca_pem.clone()),
            },
        }))
    }
}

impl TunnelPool for MockNetwork {
    fn open_tcp<'a>(
        &'a self,
        tunnel: Uuid,
        dest: SocketAddr,
        ctx: &'a FlowContext,
    ) -> BoxFuture<'a, Result<BoxIo, ProxyError>> {
        Box::pin(async move {
            let started = Instant::now();
            let state = self.inner.by_tunnel.get(&tunnel).cloned().ok_or_else(|| {
                ProxyError::new(ErrorCode::DestinationUnavailable)
                    .with_details("the mock has no binding for this tunnel")
            })?;
            let mock = state.mock();
            let https = dest.port() == MOCK_HTTPS_PORT;
            let mut untrusted = false;
            if let Some(StageFault {
                code,
                latency,
                request,
            }) = self.stage_fault(&mock, ctx, false)
            {
                tokio::time::sleep(latency).await;
                let fail = |code: FaultCode, details: &str| {
                    self.report(Exchange {
                        binding: state.name.clone(),
                        request: request.clone(),
                        outcome: ExchangeOutcome::Failed(code.error_code()),
                        elapsed: started.elapsed(),
                    });
                    Err(ProxyError::new(code.error_code())
                        .with_details(format!("mock fault of binding {}: {details}", state.name)))
                };
                match code {
                    FaultCode::ConnectionRefused => {
                        return fail(code, &format!("the dial of {dest} was refused"));
                    }
                    FaultCode::ConnectionTimeout => {
                        // The dial never completes: iris's stream-open timeout ends it, and the
                        // log line is written when it gives up.
                        let _report = OnDrop(Some(|| {
                            self.report(Exchange {
                                binding: state.name.clone(),
                                request: request.clone(),
                                outcome: ExchangeOutcome::Failed(ErrorCode::ConnectionTimeout),
                                elapsed: started.elapsed(),
                            });
                        }));
                        std::future::pending::<()>().await;
                    }
                    FaultCode::TlsCertificateError if !https => {
                        return fail(
                            code,
                            "an http request has no certificate to reject; the flow fails \
                             with the code instead",
                        );
                    }
                    FaultCode::TlsCertificateError => untrusted = true,
                    FaultCode::DnsError | FaultCode::HttpResponseIncomplete => {}
                }
            }
            let upstream = match mock.upstream {
                Some(addr) => match TcpStream::connect(addr).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        Some(stream)
                    }
                    Err(err) => {
                        let code = match err.kind() {
                            std::io::ErrorKind::ConnectionRefused => ErrorCode::ConnectionRefused,
                            std::io::ErrorKind::TimedOut => ErrorCode::ConnectionTimeout,
                            _ => ErrorCode::DestinationIpUnroutable,
                        };
                        self.report(Exchange {
                            binding: state.name.clone(),
                            request: None,
                            outcome: ExchangeOutcome::Failed(code),
                            elapsed: started.elapsed(),
                        });
                        return Err(ProxyError::new(code).with_details(format!(
                            "binding {}: the mock's upstream {addr}: {err}",
                            state.name
                        )));
                    }
                },
                None => None,
            };
            let (near, far) = tokio::io::duplex(64 << 10);
            let flow = Flow {
                network: self.clone(),
                state,
                https,
                request_id: ctx.request_id.clone(),
                upstream: AsyncMutex::new(Upstream::from(upstream)),
            };
            let tls = if https {
                Some(if untrusted {
                    self.inner.tls.untrusted.clone()
                } else {
                    self.inner.tls.trusted.clone()
                })
            } else {
                None
            };
            tokio::spawn(flow.serve(far, tls));
            Ok(Box::new(near) as BoxIo)
        })
    }

    fn open_udp<'a>(
        &'a self,
        tunnel: Uuid,
        _dest: SocketAddr,
        ctx: &'a FlowContext,
    ) -> BoxFuture<'a, Result<Box<dyn UdpFlow>, ProxyError>> {
        Box::pin(async move {
            let started = Instant::now();
            let state = self.inner.by_tunnel.get(&tunnel).cloned().ok_or_else(|| {
                ProxyError::new(ErrorCode::DestinationUnavailable)
                    .with_details("the mock has no binding for this tunnel")
            })?;
            let mock = state.mock();
            let mut nxdomain = false;
            let mut latency = Duration::ZERO;
            if let Some(fault) = self.stage_fault(&mock, ctx, true) {
                // A slow resolver: the answers are late (iris's DNS timeouts apply).
                latency = fault.latency;
                nxdomain = true;
                self.report(Exchange {
                    binding: state.name.clone(),
                    request: fault.request,
                    outcome: ExchangeOutcome::Failed(ErrorCode::DnsError),
                    elapsed: started.elapsed() + latency,
                });
            }
            let (tx, rx) = mpsc::unbounded_channel();
            Ok(Box::new(DnsFlow {
                host: state.host(&mock),
                mock,
                nxdomain,
                latency,
                tx,
                rx: AsyncMutex::new(rx),
            }) as Box<dyn UdpFlow>)
        })
    }
}

/// Runs a closure when dropped.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

// === DNS ===

/// A UDP flow to the service's resolver: answers from the binding's `dns`.
struct DnsFlow {
    mock: Arc<BindingMock>,
    host: String,
    nxdomain: bool,
    latency: Duration,
    tx: mpsc::UnboundedSender<Bytes>,
    rx: AsyncMutex<mpsc::UnboundedReceiver<Bytes>>,
}

impl DnsFlow {
    fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let msg = Message::from_vec(query).ok()?;
        if msg.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut resp = Message::response(msg.metadata.id, msg.metadata.op_code);
        resp.metadata.recursion_desired = msg.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        resp.add_queries(msg.queries.iter().cloned());
        for q in &msg.queries {
            let name = q
                .name()
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let listed = self.mock.dns.get(&name);
            let addresses: Vec<IpAddr> = match listed {
                _ if self.nxdomain => Vec::new(),
                Some(ips) => ips.clone(),
                None if name == self.host.to_ascii_lowercase() => {
                    vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
                }
                None => Vec::new(),
            };
            if self.nxdomain || (listed.is_none() && addresses.is_empty()) {
                resp.metadata.response_code = ResponseCode::NXDomain;
                continue;
            }
            for ip in addresses {
                let rdata = match (ip, q.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                resp.add_answer(Record::from_rdata(q.name().clone(), 0, rdata));
            }
        }
        resp.to_vec().ok()
    }
}

impl UdpFlow for DnsFlow {
    fn send(&self, payload: Bytes) -> BoxFuture<'_, Result<(), ProxyError>> {
        Box::pin(async move {
            if let Some(answer) = self.answer(&payload) {
                if self.latency.is_zero() {
                    let _ = self.tx.send(Bytes::from(answer));
                } else {
                    let (tx, latency) = (self.tx.clone(), self.latency);
                    tokio::spawn(async move {
                        tokio::time::sleep(latency).await;
                        let _ = tx.send(Bytes::from(answer));
                    });
                }
            }
            Ok(())
        })
    }

    fn recv(&self) -> BoxFuture<'_, Result<Bytes, ProxyError>> {
        Box::pin(async move {
            self.rx
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| ProxyError::new(ErrorCode::ConnectionTerminated))
        })
    }
}

// === the per-binding HTTP server ===

type MockBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Why a flow is closed without an answer.
#[derive(Debug, thiserror::Error)]
enum FlowClosed {
    #[error("the request matched a fault that acts before the request; closing for the retry")]
    Fault,
    #[error("reading the request body: {0}")]
    Body(hyper::Error),
    #[error("the upstream failed: {0}")]
    Upstream(String),
}

enum Upstream {
    None,
    Dialed(TcpStream),
    Open(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

impl From<Option<TcpStream>> for Upstream {
    fn from(stream: Option<TcpStream>) -> Self {
        stream.map_or(Self::None, Self::Dialed)
    }
}

/// One TCP flow of a binding.
struct Flow {
    network: MockNetwork,
    state: Arc<BindingState>,
    https: bool,
    request_id: String,
    upstream: AsyncMutex<Upstream>,
}

impl Flow {
    async fn serve(self, io: tokio::io::DuplexStream, tls: Option<Arc<rustls::ServerConfig>>) {
        let flow = Arc::new(self);
        let service = hyper::service::service_fn(move |request| {
            let flow = flow.clone();
            async move { flow.handle(request).await }
        });
        let builder = hyper::server::conn::http1::Builder::new();
        let served = match tls {
            Some(config) => match tokio_rustls::TlsAcceptor::from(config).accept(io).await {
                // A client that rejects the certificate ends the flow here.
                Ok(tls) => builder.serve_connection(TokioIo::new(tls), service).await,
                Err(_) => return,
            },
            None => builder.serve_connection(TokioIo::new(io), service).await,
        };
        if let Err(err) = served {
            tracing::debug!(error = %err, "mock flow closed");
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Result<Response<MockBody>, FlowClosed> {
        let started = Instant::now();
        let (head, body) = request.into_parts();
        let method = head.method.to_string();
        let path = head.uri.path().to_owned();
        let path_and_query = head
            .uri
            .path_and_query()
            .map_or_else(|| path.clone(), |pq| pq.as_str().to_owned());
        let host = head
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let scheme = if self.https { "https" } else { "http" };
        let url = format!("{scheme}://{host}{path_and_query}");
        let body = body.collect().await.map_err(FlowClosed::Body)?.to_bytes();
        self.state
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(RecordedRequest {
                method: method.clone(),
                url: url.clone(),
                path: path_and_query.clone(),
                headers: head
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: body.clone(),
            });
        let mock = self.state.mock();
        let report = |outcome| {
            self.network.report(Exchange {
                binding: self.state.name.clone(),
                request: Some((method.clone(), url.clone())),
                outcome,
                elapsed: started.elapsed(),
            });
        };

        // Rules for every request whose code acts before the request already acted there.
        let fault = mock
            .faults
            .iter()
            .filter(|f| f.scoped() || !f.code.is_some_and(FaultCode::before_request))
            .find(|f| f.matches(&method, &path, &path_and_query) && f.hits());
        let mut cut = false;
        if let Some(fault) = fault {
            tokio::time::sleep(fault.latency).await;
            match fault.code {
                Some(code) if code.before_request() => {
                    // The binding-worker sends a request again on a new connection only when
                    // that is safe; any other sees the connection end (and is logged so here).
                    let retried = body.is_empty() && head.method.is_idempotent();
                    if !(retried
                        && self
                            .network
                            .arm(&self.request_id, code, (method.clone(), url.clone())))
                    {
                        report(ExchangeOutcome::Failed(ErrorCode::ConnectionTerminated));
                    }
                    return Err(FlowClosed::Fault);
                }
                Some(_) => cut = true,
                None => {}
            }
        }

        let answer = if let Some(canned) = mock.responses.iter().find(|r| {
            r.method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(&method))
                && path_matches(&r.path, &path, &path_and_query)
        }) {
            let mut response = Response::builder().status(canned.status);
            for (name, value) in &canned.headers {
                response = response.header(name, value);
            }
            response
                .body(canned.body.clone())
                .map_err(|e| FlowClosed::Upstream(format!("a canned response is invalid: {e}")))?
        } else if mock.upstream.is_some() {
            match self.forward(head, body).await {
                Ok(response) => response,
                Err(err) => {
                    report(ExchangeOutcome::Failed(ErrorCode::ConnectionTerminated));
                    return Err(err);
                }
            }
        } else {
            let text = format!(
                "no mock response for binding {}: {method} {path} (add one to bindings.{}.responses \
                 in the mock file, or set bindings.{}.upstream)\n",
                self.state.name, self.state.name, self.state.name
            );
            Response::builder()
                .status(StatusCode::NOT_IMPLEMENTED)
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Bytes::from(text))
                .map_err(|e| FlowClosed::Upstream(e.to_string()))?
        };

        let (mut parts, body) = answer.into_parts();
        if cut {
            report(ExchangeOutcome::Failed(ErrorCode::HttpResponseIncomplete));
            // Promise the whole body (at least one byte), send half of it, then break off.
            let promised = body.len().max(1);
            parts.headers.remove(header::TRANSFER_ENCODING);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, header::HeaderValue::from(promised));
            let half = body.slice(..body.len() / 2);
            return Ok(Response::from_parts(parts, CutBody::new(half).boxed()));
        }
        report(ExchangeOutcome::Status(parts.status.as_u16()));
        Ok(Response::from_parts(
            parts,
            Full::new(body).map_err(|never| match never {}).boxed(),
        ))
    }

    /// Sends the request to the binding's upstream over this flow's connection to it.
    async fn forward(
        &self,
        head: http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Bytes>, FlowClosed> {
        let mut upstream = self.upstream.lock().await;
        if let Upstream::Dialed(_) = &*upstream {
            let Upstream::Dialed(stream) = std::mem::replace(&mut *upstream, Upstream::None) else {
                unreachable!("checked above");
            };
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| FlowClosed::Upstream(e.to_string()))?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "mock upstream connection closed");
                }
            });
            *upstream = Upstream::Open(sender);
        }
        let Upstream::Open(sender) = &mut *upstream else {
            return Err(FlowClosed::Upstream("no upstream connection".into()));
        };
        let mut request = Request::from_parts(head, Full::new(body));
        request.headers_mut().remove(header::TRANSFER_ENCODING);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| FlowClosed::Upstream(e.to_string()))?;
        let (mut parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| FlowClosed::Upstream(e.to_string()))?
            .to_bytes();
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.headers.remove(header::CONTENT_LENGTH);
        Ok(Response::from_parts(parts, body))
    }
}

/// A body that sends its part, lets the server flush it, then fails: the server aborts the
/// connection mid-body, after the head and the part reached the client (an origin that closes
/// early). Failing in the same poll as the data would abort before anything is flushed.
struct CutBody {
    part: Option<Bytes>,
    flushed: bool,
}

impl CutBody {
    fn new(part: Bytes) -> Self {
        Self {
            part: Some(part),
            flushed: false,
        }
    }
}

impl hyper::body::Body for CutBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if let Some(part) = self.part.take() {
            return Poll::Ready(Some(Ok(Frame::data(part))));
        }
        if !self.flushed {
            // hyper flushes what it holds when the body is not ready; fail on the next poll.
            self.flushed = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(
            "the mock's http_response_incomplete fault cut the body".into(),
        )))
    }
}

// === TLS ===

/// The mock's TLS identities: one its services trust, one nothing trusts.
struct MockTls {
    ca_pem: String,
    trusted: Arc<rustls::ServerConfig>,
    untrusted: Arc<rustls::ServerConfig>,
}

impl MockTls {
    fn generate() -> Result<Self, MockError> {
        use wvpc_tls::ca::{CertificateAuthority, ExtendedKeyUsagePurpose, IssuedLeaf};
        let tls = |e: &dyn fmt::Display| MockError::Tls(e.to_string());
        let serving = |ca: &CertificateAuthority| -> Result<IssuedLeaf, MockError> {
            ca.issue(
                &["localhost"],
                "workers-vpc mock service",
                &[ExtendedKeyUsagePurpose::ServerAuth],
            )
            .map_err(|e| tls(&e))
        };
        let ca = CertificateAuthority::generate("workers-vpc mock CA").map_err(|e| tls(&e))?;
        let leaf = serving(&ca)?;
        let trusted = server_config(vec![leaf.cert_der, ca.cert_der().clone()], &leaf.key_pem)?;
        // A CA of its own that no service trusts: its leaf fails verification as a stranger's.
        let stranger = CertificateAuthority::generate("a stranger").map_err(|e| tls(&e))?;
        let leaf = serving(&stranger)?;
        let untrusted = server_config(vec![leaf.cert_der], &leaf.key_pem)?;
        Ok(Self {
            ca_pem: ca.cert_pem().to_owned(),
            trusted,
            untrusted,
        })
    }
}

fn server_config(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, MockError> {
    use rustls::pki_types::pem::PemObject as _;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| MockError::Tls(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MockError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| MockError::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

// === paths ===

/// Whether a request matches a rule's path `pattern`: a pattern with a `?` is matched against
/// the path and query (`/search?q=*`, as `wvpc dev --record` writes them), any other against
/// the path alone.
pub fn path_matches(pattern: &str, path: &str, path_and_query: &str) -> bool {
    if pattern.contains('?') {
        glob_match(pattern, path_and_query)
    } else {
        glob_match(pattern, path)
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (`/` included)
/// and everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_runs_of_any_characters() {
        assert!(glob_match("/users/1", "/users/1"));
        assert!(!glob_match("/users/1", "/users/12"));
        assert!(glob_match("/flaky/*", "/flaky/a/b"));
        assert!(glob_match("/flaky/*", "/flaky/"));
        assert!(!glob_match("/flaky/*", "/flaky"));
        assert!(glob_match("*", "/anything"));
        assert!(glob_match("/a/*/c", "/a/b/x/c"));
        assert!(!glob_match("/a/*/c", "/a/b/d"));
    }

    #[test]
    fn a_pattern_with_a_query_matches_the_query_too() {
        assert!(path_matches("/search?q=a", "/search", "/search?q=a"));
        assert!(!path_matches("/search?q=a", "/search", "/search?q=b"));
        assert!(!path_matches("/search?q=a", "/search", "/search"));
        assert!(path_matches("/search?q=*", "/search", "/search?q=b"));
        // Without a `?`, the query does not matter.
        assert!(path_matches("/search", "/search", "/search?q=b"));
    }

    #[test]
    fn fault_codes_read_their_wire_names() {
        for code in FaultCode::ALL {
            assert_eq!(FaultCode::parse(code.name()), Some(code));
        }
        assert_eq!(FaultCode::parse("connection_reset"), None);
    }

    #[test]
    fn a_spec_naming_an_undeclared_binding_is_refused() {
        let mut spec = MockSpec::default();
        spec.bindings.insert("OTHER".into(), BindingMock::default());
        let err = MockNetwork::new(["API".to_owned()], spec).unwrap_err();
        assert!(matches!(err, MockError::UnknownBinding(name) if name == "OTHER"));
    }
}
