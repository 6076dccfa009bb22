//! The HTTP/1.1 front of a [`ScriptHost`]: each request gets a request id (returned as
//! `wvpc-request-id` and carried to every hop), is routed to a script version by its host and
//! path, and runs on an instance of that version on its own tokio task: an idle instance
//! that served earlier requests of the version, or a fresh one ([`crate::instances`]).
//!
//! A request no script serves gets 404 naming its host. A trap fails only that request
//! (500), so does a limit (503 for CPU and memory, 504 for wall time, 414 / 431 for an
//! incoming URL / header section over its limit); the server and other requests carry on.
//! What the listener refuses before a request reaches [`handle`] (the connection cap, a head
//! with too many fields or bytes) gets the same plain-text answer with a request id
//! ([`wvpc_listener::Refusal`]).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tracing::Instrument as _;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wvpc_listener::{HttpServer, ServerLimits};

use crate::host::HostState;
use crate::instances::Instance;
use crate::limits::{Isolation, LimitExceeded, Limits, header_section_bytes};
use crate::script::LoadedScript;
use crate::script_host::ScriptHost;
use crate::script_output::{RequestOutcome, RequestSummary};

/// Response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = wvpc_listener::REQUEST_ID_HEADER;

/// The HTTP server of [`ScriptHost::serve_with`]: connection cap, timeouts and the explained
/// refusals of [`wvpc_listener`], every request through [`handle`].
/// Each connection is served on one of `runtimes` ([`crate::serving_threads`]).
pub(crate) async fn serve(
    host: Arc<ScriptHost>,
    listener: TcpListener,
    limits: ServerLimits,
    runtimes: Vec<tokio::runtime::Handle>,
) {
    let server = HttpServer::new("script HTTP", limits).spread_over(runtimes);
    wvpc_listener::serve(listener, server, move |request| {
        let host = host.clone();
        async move { handle(&host, request).await }
    })
    .await;
}

/// Routes one request and runs it on an instance of its script.
async fn handle(
    host: &ScriptHost,
    request: http::Request<Incoming>,
) -> http::Response<HyperOutgoingBody> {
    let request_id: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
    // The request's span: its binding fetches' spans are its children. A `traceparent`
    // from the client continues the client's trace.
    let span = tracing::info_span!(
        "script_request",
        request_id = %request_id,
        method = %request.method(),
        script = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    if let Some(parent) = request
        .headers()
        .get(wvpc_observe::trace::TRACEPARENT)
        .and_then(|value| value.to_str().ok())
    {
        wvpc_observe::trace::continue_traceparent(&span, parent);
    }
    let mut response = handle_in(host, request, &request_id, &span)
        .instrument(span.clone())
        .await;
    span.record("status", response.status().as_u16());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// [`handle`] inside the request's span.
async fn handle_in(
    host: &ScriptHost,
    request: http::Request<Incoming>,
    request_id: &Arc<str>,
    span: &tracing::Span,
) -> http::Response<HyperOutgoingBody> {
    match request_host(&request) {
        Err(failure) => failure.into_response(request_id),
        Ok(name) => match host.resolve(&name, request.uri().path()) {
            None => {
                tracing::debug!(request_id = %request_id, host = %name, "no script serves the host");
                if let Some(metrics) = host.metrics() {
                    metrics.unrouted();
                }
                Failure::NoScript(format!(
                    "no script is served at host {name:?} (a script answers at \
                     <script>.<account subdomain>.{} when its workers_dev is on, and at the \
                     hosts and paths of its routes)",
                    host.workers_domain()
                ))
                .into_response(request_id)
            }
            Some(script) => {
                span.record("script", tracing::field::display(&script.bindings.script));
                let method = request.method().clone();
                let uri = request.uri().clone();
                let arrived = Instant::now();
                let (response, outcome) = match run_script(&script, request, request_id).await {
                    Ok(response) => (response, RequestOutcome::Ok),
                    Err(failure) => {
                        let outcome = failure.outcome();
                        (failure.into_response(request_id), outcome)
                    }
                };
                let bindings = &script.bindings;
                if let Some(probe) = &bindings.metrics {
                    probe.script.request(outcome, arrived.elapsed());
                }
                bindings.output.request(&RequestSummary {
                    account_id: &bindings.account,
                    script: &bindings.script,
                    version: &bindings.version,
                    request_id,
                    method: method.as_str(),
                    host: &name,
                    path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()),
                    status: response.status().as_u16(),
                    outcome,
                });
                response
            }
        },
    }
}

/// The host a request is for: the authority of an absolute-form target, else the `Host`
/// header; without port, lowercase.
fn request_host(request: &http::Request<Incoming>) -> Result<String, Failure> {
    if let Some(authority) = request.uri().authority() {
        return Ok(authority.host().to_ascii_lowercase());
    }
    let value = request
        .headers()
        .get(http::header::HOST)
        .ok_or(Failure::BadRequest("the request has no Host header"))?;
    let value = value
        .to_str()
        .map_err(|_| Failure::BadRequest("the Host header is not a valid host"))?;
    Ok(without_port(value.trim()).to_ascii_lowercase())
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Runs one request on an instance of `script`: an idle one of this version when it keeps
/// them ([`Isolation::Instance`]), else a fresh one.
async fn run_script(
    script: &Arc<LoadedScript>,
    request: http::Request<Incoming>,
    request_id: &Arc<str>,
) -> Result<http::Response<HyperOutgoingBody>, Failure> {
    let bindings = &script.bindings;
    let limits = bindings.limits;
    check_incoming(&request, &limits)?;
    let reuse = limits.isolation == Isolation::Instance && !script.one_request_per_instance;
    let mut instance = match reuse.then(|| script.instances.take()).flatten() {
        Some(mut idle) => {
            HostState::start_request(&mut idle.store, request_id.clone());
            idle
        }
        None => Instance::new(HostState::new_store(
            script.pre.engine(),
            bindings.clone(),
            request_id.clone(),
        )),
    };
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let (incoming, outparam) = {
        let mut http = instance.store.data_mut().http();
        let incoming = http
            .new_incoming_request(Scheme::Http, request)
            .map_err(|e| Failure::Host(format!("{e:#}")))?;
        let outparam = http
            .new_response_outparam(sender)
            .map_err(|e| Failure::Host(format!("{e:#}")))?;
        (incoming, outparam)
    };

    let script = script.clone();
    let id = request_id.clone();
    // The response head, relayed by the task: it learns on the way whether the script
    // answered and whether anyone was still waiting for the answer.
    let (head_sender, head) = tokio::sync::oneshot::channel();
    // Own task: the script may keep streaming its response body after `handle` returned
    // the head. It logs its own failure, once, with the request id.
    let run_request = async move {
        let pre = &script.pre;
        let mut relay = HeadRelay {
            from_script: receiver,
            to_handler: Some(head_sender),
            answered: false,
            cancelled: false,
        };
        let result = {
            let run = async {
                let proxy = match instance.script.take() {
                    Some(proxy) => proxy,
                    None => {
                        let started = Instant::now();
                        let proxy = pre.instantiate_async(&mut instance.store).await?;
                        if let Some(probe) = &script.bindings.metrics {
                            probe.script.instantiated(started.elapsed());
                        }
                        proxy
                    }
                };
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut instance.store, incoming, outparam)
                    .await?;
                instance.script = Some(proxy);
                wasmtime::Result::<()>::Ok(())
            };
            // Dropping the run at the deadline stops the guest where it is; its instance is
            // not reused.
            let run = tokio::time::timeout(limits.wall_time, run);
            tokio::pin!(run);
            loop {
                tokio::select! {
                    biased;
                    head = &mut relay.from_script, if relay.to_handler.is_some() => {
                        relay.forward(head.ok());
                    }
                    result = &mut run => break result,
                }
            }
        };
        // The script may have set the head in the same step that `handle` returned.
        if relay.to_handler.is_some() {
            let head = relay.from_script.try_recv().ok();
            relay.forward(head);
        }
        let outcome = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err((instance.store.data().limit_exceeded(), Some(err))),
            Err(_) => Err((Some(LimitExceeded::WallTime), None)),
        };
        let bindings = &script.bindings;
        if let Err((exceeded, err)) = &outcome {
            match exceeded {
                Some(limit) => tracing::warn!(
                    request_id = %id,
                    account = %bindings.account,
                    script = %bindings.script,
                    version = %bindings.version,
                    limit = limit_key(*limit, &limits),
                    "script stopped: it exceeded a limit"
                ),
                None => tracing::error!(
                    request_id = %id,
                    account = %bindings.account,
                    script = %bindings.script,
                    version = %bindings.version,
                    error = ?err,
                    "script failed"
                ),
            }
        }
        // Only an instance whose request ended cleanly serves another: after a trap or a
        // limit its state is wherever the guest stopped.
        if reuse
            && outcome.is_ok()
            && relay.answered
            && !relay.cancelled
            && instance.store.data().limit_exceeded().is_none()
        {
            script.instances.give_back(instance);
        }
        outcome.map_err(|(exceeded, _)| exceeded)
    };
    // The script's binding fetches are children of the request's span.
    let task = tokio::spawn(run_request.instrument(tracing::Span::current()));

    match head.await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(code)) => Err(Failure::ScriptError(code)),
        Err(_) => match task.await {
            Ok(Ok(())) => Err(Failure::NoResponse),
            Ok(Err(Some(limit))) => Err(Failure::Limit(limit, limits)),
            Ok(Err(None)) => Err(Failure::Trap),
            Err(join) => Err(Failure::Host(format!("script task failed: {join}"))),
        },
    }
}

/// What the script set as its response: a head, or the error it answered with.
type Head = Result<http::Response<HyperOutgoingBody>, ErrorCode>;

/// Passes the script's response head on to the request's handler.
struct HeadRelay {
    from_script: tokio::sync::oneshot::Receiver<Head>,
    to_handler: Option<tokio::sync::oneshot::Sender<Head>>,
    /// The script set a response (not an error).
    answered: bool,
    /// The handler was gone (the client left) before the head reached it.
    cancelled: bool,
}

impl HeadRelay {
    /// Forwards `head`; `None` (the script set none) tells the handler to ask the task why.
    fn forward(&mut self, head: Option<Head>) {
        let Some(to_handler) = self.to_handler.take() else {
            return;
        };
        if let Some(head) = head {
            self.answered = head.is_ok();
            self.cancelled = to_handler.send(head).is_err();
        }
    }
}

/// URL and header-section limits of a request to the script.
fn check_incoming(request: &http::Request<Incoming>, limits: &Limits) -> Result<(), Failure> {
    let url = request.uri().to_string().len();
    if url > limits.url_bytes {
        return Err(Failure::TooLarge(
            StatusCode::URI_TOO_LONG,
            format!(
                "the URL is {url} bytes, more than this script accepts (limits.url_bytes = {})",
                limits.url_bytes
            ),
        ));
    }
    let headers = header_section_bytes(request.headers());
    if headers > limits.header_bytes {
        return Err(Failure::TooLarge(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the headers are {headers} bytes, more than this script accepts \
                 (limits.header_bytes = {})",
                limits.header_bytes
            ),
        ));
    }
    Ok(())
}

/// The config key and value of a limit, for messages: `cpu_ms = 50`.
fn limit_key(limit: LimitExceeded, limits: &Limits) -> String {
    match limit {
        LimitExceeded::Cpu => format!("cpu_ms = {}", limits.cpu.as_millis()),
        LimitExceeded::Memory => format!("memory_mb = {}", limits.memory_bytes >> 20),
        LimitExceeded::WallTime => format!("wall_time_ms = {}", limits.wall_time.as_millis()),
    }
}

/// Why a request got no response from the script.
enum Failure {
    BadRequest(&'static str),
    /// No script serves the request's host and path; the message names the host.
    NoScript(String),
    /// The incoming URL or headers are over their limit.
    TooLarge(StatusCode, String),
    /// The script ran into a limit; already logged.
    Limit(LimitExceeded, Limits),
    /// The script trapped (panic, CPU or memory limit, host bug); already logged.
    Trap,
    /// `handle` returned without setting the response.
    NoResponse,
    /// The script set an error instead of a response.
    ScriptError(ErrorCode),
    Host(String),
}

impl Failure {
    /// How the request ended, for [`RequestSummary`].
    fn outcome(&self) -> RequestOutcome {
        match self {
            Failure::BadRequest(_) | Failure::NoScript(_) | Failure::TooLarge(..) => {
                RequestOutcome::Refused
            }
            Failure::Limit(LimitExceeded::Cpu, _) => RequestOutcome::ExceededCpu,
            Failure::Limit(LimitExceeded::Memory, _) => RequestOutcome::ExceededMemory,
            Failure::Limit(LimitExceeded::WallTime, _) => RequestOutcome::ExceededWallTime,
            Failure::Trap | Failure::NoResponse | Failure::ScriptError(_) => {
                RequestOutcome::Exception
            }
            Failure::Host(_) => RequestOutcome::InternalError,
        }
    }

    fn into_response(self, request_id: &str) -> http::Response<HyperOutgoingBody> {
        let (status, body) = match self {
            Failure::BadRequest(why) => (StatusCode::BAD_REQUEST, format!("{why}\n")),
            Failure::NoScript(why) => (StatusCode::NOT_FOUND, format!("{why}\n")),
            Failure::TooLarge(status, why) => {
                tracing::info!(request_id, status = status.as_u16(), "{why}");
                (status, format!("{why}\n"))
            }
            Failure::Limit(limit, limits) => {
                let (status, what) = match limit {
                    LimitExceeded::Cpu => (StatusCode::SERVICE_UNAVAILABLE, "CPU time"),
                    LimitExceeded::Memory => (StatusCode::SERVICE_UNAVAILABLE, "memory"),
                    LimitExceeded::WallTime => (StatusCode::GATEWAY_TIMEOUT, "wall-clock time"),
                };
                (
                    status,
                    format!(
                        "the script exceeded its {what} limit (limits.{}; request id \
                         {request_id})\n",
                        limit_key(limit, &limits)
                    ),
                )
            }
            Failure::Trap => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the script failed (request id {request_id}; see the runtime log)\n"),
            ),
            Failure::NoResponse => {
                tracing::error!(request_id, "script returned without sending a response");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the script did not send a response (request id {request_id})\n"),
                )
            }
            Failure::ScriptError(code) => {
                tracing::warn!(request_id, code = ?code, "script answered with an error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the script answered with an error (request id {request_id})\n"),
                )
            }
            Failure::Host(why) => {
                tracing::error!(request_id, error = %why, "request failed in the runtime");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("internal error (request id {request_id})\n"),
                )
            }
        };
        let body = Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync();
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}
