//! [`Runtime`]: one script behind an HTTP/1.1 server (`wvpc dev`, `wvpc runtime`).
//!
//! Each request gets a request id (returned as `wvpc-request-id` and carried to every hop),
//! a fresh `Store` and instance from the pre-instantiated script, and runs on its own tokio
//! task. A trap fails only that request (500), so does a limit (503 for CPU and memory, 504
//! for wall time, 414 / 431 for an incoming URL / header section over its limit); the server
//! and other requests carry on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wvpc_schemas::PlatformSecret;

use crate::binding_client::BindingClient;
use crate::config::ScriptConfig;
use crate::host::{HostState, ScriptPre};
use crate::limits::{LimitExceeded, Limits, header_section_bytes};
use crate::outbound::ScriptBindings;
use crate::script::RuntimeError;
use crate::script_output::{PrefixedOutput, ScriptOutput};

/// Response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "wvpc-request-id";

/// How the runtime reaches the rest of workers-vpc.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// The binding-workers' capnp addresses (`VpcBinding` bootstrap capability), at least
    /// one: fetches are spread over them, and fail over to the others when one is down.
    pub binding_workers: Vec<SocketAddr>,
    /// The platform secret the binding-workers must prove they hold (and this runtime
    /// proves to them). `None`: no handshake, for binding-workers started without one.
    pub binding_secret: Option<PlatformSecret>,
    /// Account id that owns the script; sent with every binding fetch.
    pub account: String,
}

/// A loaded script ready to serve requests.
pub struct Runtime {
    pre: ScriptPre<HostState>,
    bindings: Arc<ScriptBindings>,
}

impl Runtime {
    /// Compiles `config.main`, pre-instantiates it and starts the binding-worker client
    /// thread (it connects on the first fetch). Blocking: compiling takes up to a few hundred
    /// milliseconds per MB of wasm (unless the compiled component is in the on-disk cache).
    /// The script's stdout / stderr lines are printed prefixed ([`PrefixedOutput`]).
    pub fn new(config: &ScriptConfig, options: RuntimeOptions) -> Result<Runtime, RuntimeError> {
        Self::with_output(config, options, Arc::new(PrefixedOutput))
    }

    /// [`Runtime::new`], with the script's stdout / stderr lines sent to `output`.
    pub fn with_output(
        config: &ScriptConfig,
        options: RuntimeOptions,
        output: Arc<dyn ScriptOutput>,
    ) -> Result<Runtime, RuntimeError> {
        let engine = crate::engine::shared_engine().map_err(RuntimeError::Engine)?;
        let pre = crate::script::load(&engine, &config.main)?;
        let client = BindingClient::start(options.binding_workers, options.binding_secret)
            .map_err(RuntimeError::BindingClient)?;
        let services = config
            .vpc_services
            .iter()
            .map(|b| (b.binding.clone(), b.service_id.hyphenated().to_string()))
            .collect();
        tracing::info!(
            script = %config.name,
            main = %config.main.display(),
            bindings = ?config.vpc_services.iter().map(|b| &b.binding).collect::<Vec<_>>(),
            limits = ?config.limits,
            "script loaded"
        );
        let bindings = ScriptBindings {
            script: config.name.as_str().into(),
            account: options.account,
            services,
            client,
            limits: config.limits,
            output,
        };
        Ok(Runtime {
            pre,
            bindings: Arc::new(bindings),
        })
    }

    /// Creates one instance of the script in a fresh store and drops it, without running a
    /// request: the fixed cost every request pays (the benchmark measures it).
    pub async fn instantiate_once(&self) -> Result<(), RuntimeError> {
        let mut store = HostState::new_store(
            self.pre.engine(),
            self.bindings.clone(),
            "instantiation-probe".into(),
        );
        self.pre
            .instantiate_async(&mut store)
            .await
            .map(drop)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))
    }

    /// Serves HTTP/1.1 (keep-alive) on `listener` until the future is dropped. Connections
    /// already accepted keep running on their own tasks. Accept errors are logged and do not
    /// end the loop, so the future only ends by being dropped (the `Result` is for callers
    /// that `?` it next to other servers).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) if is_per_connection_error(&err) => {
                    tracing::debug!(error = %err, "accept failed for one connection");
                    continue;
                }
                Err(err) => {
                    // Out of file descriptors and the like: wait for connections to close
                    // instead of spinning.
                    tracing::warn!(error = %err, "accept failed; pausing");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
            }
            let runtime = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let runtime = runtime.clone();
                    async move { Ok::<_, Infallible>(runtime.handle(request).await) }
                });
                if let Err(err) = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
            });
        }
    }

    /// Runs one request through a fresh instance of the script.
    async fn handle(&self, request: http::Request<Incoming>) -> http::Response<HyperOutgoingBody> {
        let request_id: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let mut response = match self.run_script(request, &request_id).await {
            Ok(response) => response,
            Err(failure) => failure.into_response(&request_id),
        };
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        response
    }

    async fn run_script(
        &self,
        request: http::Request<Incoming>,
        request_id: &Arc<str>,
    ) -> Result<http::Response<HyperOutgoingBody>, Failure> {
        if request.uri().authority().is_none()
            && !request.headers().contains_key(http::header::HOST)
        {
            return Err(Failure::BadRequest("the request has no Host header"));
        }
        let limits = self.bindings.limits;
        check_incoming(&request, &limits)?;
        let mut store =
            HostState::new_store(self.pre.engine(), self.bindings.clone(), request_id.clone());
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let (incoming, outparam) = {
            let mut http = store.data_mut().http();
            let incoming = http
                .new_incoming_request(Scheme::Http, request)
                .map_err(|e| Failure::Host(format!("{e:#}")))?;
            let outparam = http
                .new_response_outparam(sender)
                .map_err(|e| Failure::Host(format!("{e:#}")))?;
            (incoming, outparam)
        };

        let pre = self.pre.clone();
        let id = request_id.clone();
        let script = self.bindings.script.clone();
        // Own task: the script may keep streaming its response body after `handle` returned
        // the head. It logs its own failure, once, with the request id.
        let task = tokio::spawn(async move {
            let run = async {
                let instance = pre.instantiate_async(&mut store).await?;
                instance
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
            };
            // Dropping the run at the deadline drops the instance with it.
            let outcome = match tokio::time::timeout(limits.wall_time, run).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err((store.data().limit_exceeded(), Some(err))),
                Err(_) => Err((Some(LimitExceeded::WallTime), None)),
            };
            if let Err((exceeded, err)) = &outcome {
                match exceeded {
                    Some(limit) => tracing::warn!(
                        request_id = %id,
                        script = %script,
                        limit = limit_key(*limit, &limits),
                        "script stopped: it exceeded a limit"
                    ),
                    None => {
                        tracing::error!(request_id = %id, script = %script, error = ?err, "script failed")
                    }
                }
            }
            outcome.map_err(|(exceeded, _)| exceeded)
        });

        match receiver.await {
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
    fn into_response(self, request_id: &str) -> http::Response<HyperOutgoingBody> {
        let (status, body) = match self {
            Failure::BadRequest(why) => (StatusCode::BAD_REQUEST, format!("{why}\n")),
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

/// Accept errors that concern one connection only (it was reset before we took it).
fn is_per_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    )
}
