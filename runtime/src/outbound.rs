//! Egress policy of a script: requests made through `vpc.fetch` go to the binding-worker,
//! everything else is denied (`HTTP-request-denied`). There is no other way out: the runtime
//! builds wasmtime-wasi-http without its default client.
//!
//! A binding fetch is checked against the request's [`Limits`] (URL and header sizes,
//! subrequests, connection slots) and, in `follow` mode, redirects are followed here —
//! through the same binding: for a `vpc_services` binding a `Location` never picks the
//! destination; for a `vpc_networks` binding the URL's host and port *are* the destination
//! (inside the binding's network), so the `Location`'s are.
//!
//! A JavaScript script's `env.X.fetch` is the engine's global `fetch`, *tagged* with the
//! request header [`js_tags::BINDING`] (the engine's fetch streams and stays asynchronous;
//! a custom import would block): a tagged request is routed exactly as `vpc.fetch` through
//! the script's binding of that name, the tags removed. Its failures come back as a `502`
//! response marked [`js_tags::BINDING_ERROR`] with the code's wire name (the engine's fetch
//! would turn an `error-code` into a code-less `TypeError`); the shim throws it as
//! `ProxyError: <code>`. The shim's global `fetch` tags with an empty binding: denied, and
//! told so the same way; an untagged request is denied like any other.
//!
//! `vpc.connect` goes through the same bindings and the same budget ([`OutboundHooks::connect`],
//! [`crate::socket`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{Method, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tracing::Instrument as _;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::NetworkTarget;

use crate::binding_client::{BindingClient, BindingTarget, FetchContext};
use crate::error_map::wasi_http_error;
use crate::exchange_tap::PendingExchange;
use crate::limits::{BudgetExceeded, FetchBudget, Limits, header_section_bytes};
use crate::metrics::ScriptProbe;
use crate::script_output::ScriptOutput;
use crate::socket::{PendingSocket, SocketScope};

/// Redirects followed per fetch before it fails (as in the Fetch standard and Workers).
pub(crate) const MAX_REDIRECTS: u32 = 20;
/// Largest request body kept so that a 307/308 redirect can send it again.
pub(crate) const MAX_REPLAY_BODY: usize = 1 << 20;

/// Script-visible names of failures that have no wasi:http variant (carried as
/// `internal-error(some(<name>))`, which the SDK reads back).
pub(crate) mod limit_names {
    pub const SUBREQUESTS: &str = "subrequest_limit_reached";
    pub const REDIRECTS: &str = "redirect_limit_reached";
    pub const BODY_NOT_REPLAYABLE: &str = "redirect_body_not_replayable";
}

/// The request and response headers of a JavaScript script's binding fetches
/// (`js-build/js/shim.js`).
pub(crate) mod js_tags {
    /// On a request: the binding it goes through.
    pub const BINDING: &str = "wvpc-binding";
    /// On a request: `manual` when the script asked `redirect: "manual"`.
    pub const REDIRECT: &str = "wvpc-redirect";
    /// On a request: the protocol of an upgrade (`websocket`). The engine drops `Upgrade`
    /// and `Connection` and refuses a GET with a body (the frames), so the request arrives
    /// as `POST` ([`METHOD`]); it leaves with `Upgrade` and `Connection: Upgrade`.
    pub const UPGRADE: &str = "wvpc-upgrade";
    /// On a request: `GET`, the method of an upgrade that arrives as `POST` because the
    /// engine refuses a GET with a body.
    pub const METHOD: &str = "wvpc-method";
    /// On a response: the request failed with this code (never passed on from an origin).
    pub const BINDING_ERROR: &str = "wvpc-binding-error";
    /// On a response: `101` — an upgrade, passed to the engine as `200` because the fetch
    /// standard gives a 101 no body, while here its body is the upgraded connection.
    pub const STATUS: &str = "wvpc-status";
}

/// What every request of one script shares: who it is, what it may reach, its limits.
pub(crate) struct ScriptBindings {
    /// Script name (`name` in its config).
    pub script: Arc<str>,
    /// Account that owns the script.
    pub account: Arc<str>,
    /// The version being run (the deployment's version id; `local` for `wvpc dev`).
    pub version: Arc<str>,
    /// Binding name → VPC Service id (hyphenated UUID), from `vpc_services`.
    pub services: HashMap<String, String>,
    /// Binding name → the network it reaches, from `vpc_networks`.
    pub networks: HashMap<String, NetworkTarget>,
    /// The binding-worker connection.
    pub client: BindingClient,
    /// Per-request limits (`limits`).
    pub limits: Limits,
    /// Where the script's stdout / stderr lines go.
    pub output: Arc<dyn ScriptOutput>,
    /// The script's and its bindings' metrics (`--metrics`).
    pub metrics: Option<ScriptProbe>,
}

/// How a fetch treats 3xx responses (`fetch-init.redirect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Redirect {
    Follow,
    Manual,
}

/// Where the next `send_request` goes: one binding of the script.
pub(crate) struct Route {
    binding: String,
    target: BindingTarget,
    redirect: Redirect,
}

/// The `WasiHttpHooks` of one request.
pub(crate) struct OutboundHooks {
    bindings: Arc<ScriptBindings>,
    request_id: Arc<str>,
    budget: Arc<FetchBudget>,
    /// Set by `vpc.fetch` right before it delegates to wasi-http's `handle`.
    pending: Option<Route>,
    /// The request's sockets: reset when these hooks go (the request ended).
    sockets: SocketScope,
}

impl OutboundHooks {
    pub fn new(bindings: Arc<ScriptBindings>, request_id: Arc<str>) -> Self {
        let budget = Arc::new(FetchBudget::new(bindings.limits));
        Self {
            bindings,
            request_id,
            budget,
            pending: None,
            sockets: SocketScope::default(),
        }
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The span of one binding fetch or connect, a child of the script request's span (the
    /// current one: hooks run inside the request's task).
    fn binding_span(&self, connect: bool, route: &Route) -> tracing::Span {
        let (service_id, network) = match &route.target {
            BindingTarget::Service(id) => (Some(id.as_str()), None),
            BindingTarget::Network(network) => (None, Some(tracing::field::display(network))),
        };
        if connect {
            tracing::info_span!(
                "binding_connect",
                request_id = %self.request_id,
                binding = %route.binding,
                service_id,
                network,
                code = tracing::field::Empty,
            )
        } else {
            tracing::info_span!(
                "binding_fetch",
                request_id = %self.request_id,
                binding = %route.binding,
                service_id,
                network,
                code = tracing::field::Empty,
            )
        }
    }

    /// The route of `binding` when the script declares it (in `vpc_services` or
    /// `vpc_networks`): only the script's own bindings are there.
    pub fn route_for(&self, binding: &str, redirect: Redirect) -> Option<Route> {
        let target = match self.bindings.services.get(binding) {
            Some(id) => BindingTarget::Service(id.clone()),
            None => BindingTarget::Network(*self.bindings.networks.get(binding)?),
        };
        Some(Route {
            binding: binding.to_owned(),
            target,
            redirect,
        })
    }

    /// `vpc.connect(binding, address)` for a declared binding's `route`: checks the
    /// address, counts a subrequest, reserves a connection slot and starts opening. The
    /// errors are the script's, at once (nothing was sent).
    pub fn connect(
        &self,
        route: Route,
        address: String,
    ) -> Result<PendingSocket, wasmtime_wasi_http::p2::bindings::http::types::ErrorCode> {
        use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode as Wasi;
        let request_id = &*self.request_id;
        let network = matches!(route.target, BindingTarget::Network(_));
        if let Err(why) = crate::socket::check_address(&address, network) {
            tracing::info!(request_id, binding = %route.binding, %why, "connect refused: bad address");
            return Err(Wasi::DestinationNotFound);
        }
        if let Err(exceeded) = self.budget.take_subrequest() {
            log_budget(request_id, exceeded);
            return Err(Wasi::InternalError(Some(limit_names::SUBREQUESTS.into())));
        }
        let slot = match self.budget.reserve_connection() {
            Ok(slot) => slot,
            Err(exceeded) => {
                log_budget(request_id, exceeded);
                return Err(Wasi::ConnectionLimitReached);
            }
        };
        let span = self.binding_span(true, &route);
        let context = FetchContext {
            target: route.target,
            script: self.bindings.script.to_string(),
            account: self.bindings.account.to_string(),
            request_id: request_id.to_owned(),
            probe: self.probe(&route.binding),
            binding: route.binding,
            span,
        };
        Ok(crate::socket::open(
            &self.bindings.client,
            context,
            address,
            slot,
            &self.sockets,
        ))
    }

    /// The metrics of the script's `binding`, when it has metrics.
    fn probe(&self, binding: &str) -> Option<Arc<crate::metrics::BindingMetrics>> {
        self.bindings.metrics.as_ref()?.binding(binding)
    }

    /// Resets the sockets the request opened (it has ended).
    pub fn end_sockets(&self) {
        self.sockets.end();
    }

    pub fn set_pending(&mut self, route: Route) {
        self.pending = Some(route);
    }

    pub fn clear_pending(&mut self) {
        self.pending = None;
    }
}

type ErrorFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;
type SendFuture = Box<
    dyn Future<Output = Result<(http::Response<WasiBody>, ErrorFuture), wasmtime_wasi_http::Error>>
        + Send,
>;

fn named(name: &str) -> wasmtime_wasi_http::Error {
    wasmtime_wasi_http::Error::InternalError(Some(name.to_owned()))
}

fn fail(err: wasmtime_wasi_http::Error) -> SendFuture {
    Box::new(async { Err(err) })
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: ErrorFuture,
    ) -> SendFuture {
        let request_id = self.request_id.clone();
        let (route, tagged) = match self.pending.take() {
            Some(route) => (route, false),
            None => match take_js_tags(&mut request) {
                Some((binding, redirect)) if !binding.is_empty() => {
                    match self.route_for(&binding, redirect) {
                        Some(route) => (route, true),
                        None => {
                            tracing::warn!(
                                request_id = %request_id,
                                binding = %binding,
                                "script used a binding that its config does not declare"
                            );
                            return answer_failure(wasmtime_wasi_http::Error::ConfigurationError);
                        }
                    }
                }
                // No binding: untagged, or a JavaScript script's global `fetch` (tagged with
                // none), which is told the code.
                tags => {
                    tracing::info!(
                        request_id = %request_id,
                        uri = %request.uri(),
                        "denied a script's outgoing request that did not go through a binding"
                    );
                    let denied = wasmtime_wasi_http::Error::HttpRequestDenied;
                    return match tags {
                        Some(_) => answer_failure(denied),
                        None => fail(denied),
                    };
                }
            },
        };
        let fail = move |err| match tagged {
            true => answer_failure(err),
            false => fail(err),
        };
        // The URL's host only becomes the Host header / SNI at the binding-worker, but it
        // must be there: fetch() takes absolute http(s) URLs only.
        if request.uri().host().is_none_or(str::is_empty)
            || !matches!(request.uri().scheme_str(), Some("http" | "https"))
        {
            tracing::info!(request_id = %request_id, uri = %request.uri(), "refused a fetch without an absolute http(s) URL");
            return fail(wasmtime_wasi_http::Error::HttpRequestUriInvalid);
        }
        if let Err(err) = check_sizes(&request, self.budget.limits(), &request_id) {
            return fail(err);
        }
        if let Err(exceeded) = self.budget.take_subrequest() {
            log_budget(&request_id, exceeded);
            return fail(named(limit_names::SUBREQUESTS));
        }
        let connection = match self.budget.reserve_connection() {
            Ok(connection) => connection,
            Err(exceeded) => {
                log_budget(&request_id, exceeded);
                return fail(wasmtime_wasi_http::Error::ConnectionLimitReached);
            }
        };
        let span = self.binding_span(false, &route);
        let context = FetchContext {
            target: route.target,
            script: self.bindings.script.to_string(),
            account: self.bindings.account.to_string(),
            request_id: request_id.to_string(),
            probe: self.probe(&route.binding),
            binding: route.binding,
            span: span.clone(),
        };
        let sender = Sender {
            client: self.bindings.client.clone(),
            budget: self.budget.clone(),
            context,
            first_byte_timeout: options.and_then(|o| o.first_byte_timeout),
        };
        let redirect = route.redirect;
        let sent = async move {
            let permit = connection.acquire().await;
            let mut response = match sender.send(request, redirect).await {
                Ok(response) => response,
                Err(err) if tagged => return failure_response(&err),
                Err(err) => return Err(err),
            };
            if tagged {
                // Only the runtime marks a failure or an upgrade; an origin cannot forge one.
                response.headers_mut().remove(js_tags::BINDING_ERROR);
                response.headers_mut().remove(js_tags::STATUS);
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    *response.status_mut() = StatusCode::OK;
                    response
                        .headers_mut()
                        .insert(js_tags::STATUS, http::HeaderValue::from_static("101"));
                }
            }
            let response = response.map(|body| {
                HeldBody {
                    inner: body,
                    _permit: permit,
                }
                .boxed_unsync()
            });
            Ok((response, Box::new(async { Ok(()) }) as ErrorFuture))
        };
        Box::new(sent.instrument(span))
    }

    /// The URL carries the host to the binding-worker; no `Host` header is forwarded.
    fn set_host_header(&mut self) -> bool {
        false
    }

    /// A script may ask for an upgrade (WebSocket), which the binding-worker passes through
    /// end to end: `Upgrade` and `Connection` are allowed; the other hop-by-hop headers stay
    /// forbidden.
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        Arc::new(is_forbidden)
    }

    fn is_forbidden_header(&mut self, name: &http::HeaderName) -> bool {
        is_forbidden(name)
    }
}

/// The binding and redirect mode a JavaScript script tagged `request` with, the tags
/// removed; `None` for an untagged request.
fn take_js_tags(request: &mut http::Request<WasiBody>) -> Option<(String, Redirect)> {
    let headers = request.headers_mut();
    let binding = headers.remove(js_tags::BINDING)?;
    let redirect = match headers.remove(js_tags::REDIRECT) {
        Some(mode) if mode.as_bytes().eq_ignore_ascii_case(b"manual") => Redirect::Manual,
        _ => Redirect::Follow,
    };
    if let Some(protocol) = headers.remove(js_tags::UPGRADE) {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("Upgrade"),
        );
        // The body is the upgraded connection's bytes, not an HTTP body.
        headers.remove(header::CONTENT_LENGTH);
    }
    if headers.remove(js_tags::METHOD).is_some_and(|m| m == "GET")
        && headers.contains_key(header::UPGRADE)
    {
        *request.method_mut() = Method::GET;
    }
    Some((
        String::from_utf8_lossy(binding.as_bytes()).into_owned(),
        redirect,
    ))
}

/// A tagged request's failure as the response the shim reads it from.
fn failure_response(
    err: &wasmtime_wasi_http::Error,
) -> Result<(http::Response<WasiBody>, ErrorFuture), wasmtime_wasi_http::Error> {
    let code = crate::error_map::wire_name(&crate::error_map::error_code_of(err));
    let response = http::Response::builder()
        .status(StatusCode::BAD_GATEWAY)
        .header(js_tags::BINDING_ERROR, code)
        .body(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))?;
    Ok((response, Box::new(async { Ok(()) }) as ErrorFuture))
}

fn answer_failure(err: wasmtime_wasi_http::Error) -> SendFuture {
    Box::new(async move { failure_response(&err) })
}

/// wasi-http's default forbidden headers, less the two an upgrade needs.
fn is_forbidden(name: &http::HeaderName) -> bool {
    *name != http::header::UPGRADE
        && *name != http::header::CONNECTION
        && wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
}

/// URL and header-section limits of an outgoing request.
fn check_sizes(
    request: &http::Request<WasiBody>,
    limits: &Limits,
    request_id: &str,
) -> Result<(), wasmtime_wasi_http::Error> {
    let url = request.uri().to_string().len();
    if url > limits.url_bytes {
        tracing::info!(
            request_id,
            url_bytes = url,
            limit = limits.url_bytes,
            "fetch refused: URL longer than limits.url_bytes"
        );
        return Err(wasmtime_wasi_http::Error::HttpRequestUriTooLong);
    }
    let headers = header_section_bytes(request.headers());
    if headers > limits.header_bytes {
        tracing::info!(
            request_id,
            header_bytes = headers,
            limit = limits.header_bytes,
            "fetch refused: headers larger than limits.header_bytes"
        );
        return Err(wasmtime_wasi_http::Error::HttpRequestHeaderSectionSize(
            u32::try_from(headers).ok(),
        ));
    }
    Ok(())
}

fn log_budget(request_id: &str, exceeded: BudgetExceeded) {
    match exceeded {
        BudgetExceeded::Subrequests(limit) => tracing::warn!(
            request_id,
            limit,
            "fetch or connect refused: the request used all its subrequests (limits.subrequests)"
        ),
        BudgetExceeded::QueuedConnections(limit) => tracing::warn!(
            request_id,
            limit,
            "fetch or connect refused: too many waiting for a connection \
             (limits.connections / limits.queued_connections)"
        ),
    }
}

/// Sends one script fetch, hop after hop when it follows redirects.
struct Sender {
    client: BindingClient,
    budget: Arc<FetchBudget>,
    context: FetchContext,
    first_byte_timeout: Option<Duration>,
}

impl Sender {
    async fn send(
        &self,
        request: http::Request<WasiBody>,
        redirect: Redirect,
    ) -> Result<http::Response<WasiBody>, wasmtime_wasi_http::Error> {
        let (mut head, body) = request.into_parts();
        if redirect == Redirect::Manual {
            return self.hop(http::Request::from_parts(head, body)).await;
        }
        let (recorded, replay) = Recording::wrap(body);
        let mut next_body = Some(recorded);
        let mut redirects = 0;
        loop {
            let body = next_body.take().unwrap_or_else(empty_body);
            let response = self
                .hop(http::Request::from_parts(head.clone(), body))
                .await?;
            let status = response.status();
            let Some(location) = redirect_location(&response) else {
                return Ok(response);
            };
            let request_id = &self.context.request_id;
            let Some(next) = resolve_location(&head.uri, &location) else {
                tracing::info!(request_id, %location, "redirect Location is not a valid URL");
                return Err(wasmtime_wasi_http::Error::HttpProtocolError);
            };
            redirects += 1;
            if redirects > MAX_REDIRECTS {
                tracing::warn!(
                    request_id,
                    limit = MAX_REDIRECTS,
                    "fetch followed too many redirects"
                );
                return Err(named(limit_names::REDIRECTS));
            }
            if let Err(exceeded) = self.budget.take_subrequest() {
                log_budget(request_id, exceeded);
                return Err(named(limit_names::SUBREQUESTS));
            }
            // The redirect's own body is not read: dropping it frees its connection.
            drop(response);
            let to_get = status == StatusCode::SEE_OTHER && head.method != Method::HEAD
                || matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                    && head.method == Method::POST;
            if to_get {
                head.method = Method::GET;
                for name in BODY_HEADERS {
                    head.headers.remove(name);
                }
            } else {
                match replay.replayed().await {
                    Some(replayed) => next_body = Some(replayed),
                    None => {
                        tracing::info!(
                            request_id,
                            status = status.as_u16(),
                            "cannot follow the redirect: the request body cannot be sent again"
                        );
                        return Err(named(limit_names::BODY_NOT_REPLAYABLE));
                    }
                }
            }
            if !same_origin(&next, &head.uri) {
                // Credentials meant for one host are not sent to another (Fetch standard).
                head.headers.remove(header::AUTHORIZATION);
            }
            tracing::debug!(request_id, status = status.as_u16(), location = %next, "following a redirect through the same binding");
            head.uri = next;
        }
    }

    async fn hop(
        &self,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, wasmtime_wasi_http::Error> {
        // The recorder keeps service bindings' exchanges only (a mock answers by service).
        let tap = match self.context.target {
            BindingTarget::Service(_) => self.client.tap(),
            BindingTarget::Network(_) => None,
        };
        let pending = tap.map(|tap| PendingExchange {
            tap: tap.clone(),
            script: self.context.script.clone(),
            binding: self.context.binding.clone(),
            method: request.method().clone(),
            uri: request.uri().clone(),
        });
        let called = Instant::now();
        let fetched = self
            .client
            .fetch(self.context.clone(), request, self.first_byte_timeout)
            .await;
        if let Some(probe) = &self.context.probe {
            match &fetched {
                Ok(_) => probe.fetched(called.elapsed()),
                Err(err) => probe.failed(err),
            }
        }
        match (fetched, pending) {
            (Ok(response), None) => Ok(response),
            (Ok(response), Some(pending)) => Ok(pending.response(response)),
            (Err(err), pending) => {
                log_fetch_error(&self.context.request_id, &self.context.binding, &err);
                self.context
                    .span
                    .record("code", tracing::field::display(err.code));
                if let Some(pending) = pending {
                    pending.failed(err.code);
                }
                Err(wasi_http_error(&err))
            }
        }
    }
}

/// Headers describing a body, dropped when a redirect turns the request into a GET.
const BODY_HEADERS: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_LANGUAGE,
];

fn empty_body() -> WasiBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The `Location` of a redirect response (301, 302, 303, 307, 308), if it has one.
fn redirect_location(response: &http::Response<WasiBody>) -> Option<String> {
    if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = response.headers().get(header::LOCATION)?.to_str().ok()?;
    Some(location.to_owned())
}

/// `location` resolved against `base` as RFC 3986 §5 says (`url`'s join): an absolute URL,
/// scheme-relative (`//host/x`), an absolute path, a relative path or a query only; `://`
/// inside a query (`/login?next=https://app/`) is just data. The fragment is dropped; only
/// `http` and `https` URLs with a host are followed.
pub(crate) fn resolve_location(base: &Uri, location: &str) -> Option<Uri> {
    let base = url::Url::parse(&base.to_string()).ok()?;
    let mut next = base.join(location.trim()).ok()?;
    next.set_fragment(None);
    if !matches!(next.scheme(), "http" | "https") || next.host_str().is_none_or(str::is_empty) {
        return None;
    }
    next.as_str().parse().ok()
}

/// Whether two request URLs have the same origin (scheme, host and port, default ports
/// included), so that credentials may follow a redirect from one to the other.
fn same_origin(a: &Uri, b: &Uri) -> bool {
    let origin = |uri: &Uri| url::Url::parse(&uri.to_string()).ok().map(|u| u.origin());
    matches!((origin(a), origin(b)), (Some(a), Some(b)) if a == b)
}

/// A request body as it streams to the binding, with a copy of its first
/// [`MAX_REPLAY_BODY`] bytes kept for a 307/308 redirect.
struct Recording {
    inner: WasiBody,
    state: watch::Sender<RecordState>,
}

#[derive(Default)]
struct RecordState {
    frames: Vec<Bytes>,
    bytes: usize,
    /// The body ended normally.
    complete: bool,
    /// Too big, or failed: it cannot be replayed.
    lost: bool,
}

/// The replay side of a [`Recording`].
struct Replay(watch::Receiver<RecordState>);

impl Recording {
    fn wrap(inner: WasiBody) -> (WasiBody, Replay) {
        let (state, receiver) = watch::channel(RecordState::default());
        (Recording { inner, state }.boxed_unsync(), Replay(receiver))
    }
}

impl Body for Recording {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        self.state.send_modify(|state| match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref().filter(|_| !state.lost) {
                    state.bytes += data.len();
                    if state.bytes > MAX_REPLAY_BODY {
                        state.lost = true;
                        state.frames = Vec::new();
                    } else {
                        state.frames.push(data.clone());
                    }
                }
            }
            Some(Err(_)) => state.lost = true,
            None => state.complete = true,
        });
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Replay {
    /// The whole body again, once the first send took all of it; `None` if it was too big,
    /// failed, or was left unread (the origin answered before reading it).
    async fn replayed(&self) -> Option<WasiBody> {
        let mut receiver = self.0.clone();
        // Settled when complete or lost, or when the first send dropped the body.
        let _ = receiver.wait_for(|s| s.complete || s.lost).await;
        let state = receiver.borrow();
        if !state.complete || state.lost {
            return None;
        }
        let mut body = BytesMut::with_capacity(state.bytes);
        for frame in &state.frames {
            body.extend_from_slice(frame);
        }
        Some(
            http_body_util::Full::new(body.freeze())
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
    }
}

/// A response body that holds its fetch's connection slot until it is consumed or dropped.
struct HeldBody {
    inner: WasiBody,
    _permit: OwnedSemaphorePermit,
}

impl Body for HeldBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The one log line per failed binding fetch.
fn log_fetch_error(request_id: &str, binding: &str, err: &ProxyError) {
    if err.code == ErrorCode::ProxyInternalError {
        tracing::error!(request_id, binding, code = %err.code, details = ?err.details, "binding fetch failed");
    } else {
        tracing::info!(
            request_id,
            binding,
            code = %err.code,
            rcode = ?err.rcode,
            details = ?err.details,
            "binding fetch failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_request_url() {
        let base: Uri = "http://api.internal:8080/a/b/c?x=1".parse().unwrap();
        let cases = [
            ("/login?next=%2F", "http://api.internal:8080/login?next=%2F"),
            ("d", "http://api.internal:8080/a/b/d"),
            ("../d#frag", "http://api.internal:8080/a/d"),
            ("./", "http://api.internal:8080/a/b/"),
            ("?y=2", "http://api.internal:8080/a/b/c?y=2"),
            ("//other.internal/p", "http://other.internal/p"),
            ("https://secure.internal", "https://secure.internal/"),
            // `://` in the query of a relative Location is data, not a scheme.
            (
                "/login?next=https://app/",
                "http://api.internal:8080/login?next=https://app/",
            ),
            ("d?u=http://x", "http://api.internal:8080/a/b/d?u=http://x"),
            ("/a b", "http://api.internal:8080/a%20b"),
        ];
        for (location, expected) in cases {
            assert_eq!(
                resolve_location(&base, location).map(|u| u.to_string()),
                Some(expected.to_owned()),
                "{location}"
            );
        }
        assert_eq!(resolve_location(&base, "ftp://x/"), None);
        assert_eq!(resolve_location(&base, "http://"), None);
    }

    #[test]
    fn credentials_follow_redirects_within_one_origin_only() {
        let uri = |u: &str| u.parse::<Uri>().unwrap();
        assert!(same_origin(
            &uri("http://a.internal/x"),
            &uri("http://a.internal:80/y")
        ));
        assert!(!same_origin(
            &uri("http://a.internal/x"),
            &uri("https://a.internal/x")
        ));
        assert!(!same_origin(
            &uri("http://a.internal/x"),
            &uri("http://b.internal/x")
        ));
        assert!(!same_origin(
            &uri("http://a.internal/x"),
            &uri("http://a.internal:8080/x")
        ));
    }
}
