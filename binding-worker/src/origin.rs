//! The HTTP client side: one fetch becomes one HTTP/1.1 exchange with the origin, over an
//! idle pooled connection when there is one, else over a fresh CONNECT stream through iris.
//!
//! Connections are pooled per (binding target, scheme, host, port): the host is what `Host`
//! (and, for https, SNI) carries, so two hosts never share a connection, and for a network
//! binding host and port are the destination, so a connection is never reused for another
//! one. A connection goes back to
//! the pool only after its response body was read to the end and hyper reports it ready.
//!
//! A request whose connection broke before any byte of the answer (the origin closed a reused
//! connection, or the connector carrying it died) is sent once more on a new connection when
//! that is safe: it has no body and, unless the connection was a reused one, its method is
//! idempotent.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::header::{self, HeaderValue};
use http::response::Parts;
use http::{Request, Response, Uri};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWriteExt as _, ReadHalf, WriteHalf};
use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::io::ReaderStream;
use uuid::Uuid;
use wvpc_errors::{ErrorCode, ProxyError};

use crate::iris_client::{ConnectSpec, IrisClient};
use crate::metrics::{BindingWorkerMetrics, TargetMetrics};
use crate::origin_tls::{OriginTls, TlsPolicy};
use crate::request::{BindingTarget, FetchRequest, Scheme, strip_hop_by_hop};
use crate::request_body::{BodyEvent, BodyEvents, BodyFinished, RequestBody, RequestBodyError};

/// Timeouts and pool limits of the origin side.
#[derive(Debug, Clone)]
pub(crate) struct OriginSettings {
    /// From the end of the request body to the response head.
    pub(crate) response_timeout: Duration,
    /// Longest gap between pieces of a response body.
    pub(crate) read_timeout: Duration,
    /// Longest wait for the runtime to take a piece of a response body.
    pub(crate) write_timeout: Duration,
    /// How long an idle origin connection is kept.
    pub(crate) idle_timeout: Duration,
    /// Idle connections kept per (service, scheme, host).
    pub(crate) max_idle_per_origin: usize,
    /// Open origin connections (busy or idle) per service.
    pub(crate) max_connections_per_service: usize,
    /// Longest reuse window after a connection's CONNECT (route changes apply after it).
    pub(crate) route_lease: Option<Duration>,
}

/// Sends fetches to origins.
#[derive(Debug)]
pub(crate) struct Proxy {
    iris: IrisClient,
    tls: OriginTls,
    pool: Arc<OriginPool>,
    open: Arc<OpenConnections>,
    settings: OriginSettings,
    metrics: Arc<BindingWorkerMetrics>,
}

/// A response head with its streaming body and the connection it came on.
#[derive(Debug)]
pub(crate) struct OriginResponse {
    /// Status and end-to-end headers.
    pub(crate) head: Parts,
    pub(crate) body: OriginBody,
    pub(crate) lease: Lease,
}

/// A response body as it streams from the origin.
#[derive(Debug)]
pub(crate) enum OriginBody {
    /// An HTTP/1.1 message body.
    Http(Incoming),
    /// After `101 Switching Protocols`: whatever the origin sends on the upgraded connection.
    Upgraded(ReaderStream<ReadHalf<TokioIo<Upgraded>>>),
}

/// Why a response body stopped early.
pub(crate) type BodyError = Box<dyn StdError + Send + Sync>;

impl OriginBody {
    /// The next piece of body data; `None` at the end. Trailers are skipped.
    pub(crate) async fn next_data(&mut self) -> Option<Result<Bytes, BodyError>> {
        match self {
            Self::Http(body) => loop {
                match body.frame().await? {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => return Some(Ok(data)),
                        Err(_trailers) => continue,
                    },
                    Err(err) => return Some(Err(err.into())),
                }
            },
            Self::Upgraded(stream) => stream.next().await.map(|r| r.map_err(Into::into)),
        }
    }
}

/// What to do with the connection once the response body has been read.
#[derive(Debug)]
pub(crate) struct Lease {
    sender: OriginConnection,
    key: PoolKey,
    pool: Arc<OriginPool>,
    /// Whether the request body has been sent completely.
    body_done: Arc<AtomicBool>,
    /// `false` for connections that cannot carry another request (an upgrade was asked).
    reusable: bool,
}

impl Lease {
    /// Returns the connection to the pool once hyper has finished with the exchange. Call
    /// only after the response body was read to its end; dropping the lease instead closes
    /// the connection.
    ///
    /// When the request body is complete too, this waits (briefly: hyper only has to see the
    /// end of the response) so that the connection is back before the caller hears that the
    /// response ended; otherwise a background task waits for the request body.
    pub(crate) async fn release(self, runtime: &Handle) {
        let Self {
            mut sender,
            key,
            pool,
            body_done,
            reusable,
        } = self;
        if !reusable {
            return;
        }
        let idle_timeout = pool.idle_timeout;
        let wait_ready = async move {
            // A connection that does not get ready (the script never ends its body) is dropped.
            if let Ok(Ok(())) = tokio::time::timeout(idle_timeout, sender.http.ready()).await {
                pool.check_in(key, sender);
            }
        };
        if body_done.load(Ordering::Acquire) {
            wait_ready.await;
        } else {
            runtime.spawn(wait_ready);
        }
    }
}

impl Proxy {
    pub(crate) fn new(
        iris: IrisClient,
        tls: OriginTls,
        settings: OriginSettings,
        metrics: Arc<BindingWorkerMetrics>,
    ) -> Self {
        let pool = Arc::new(OriginPool {
            idle: Mutex::new(HashMap::new()),
            idle_timeout: settings.idle_timeout,
            route_lease: settings.route_lease,
            max_idle_per_origin: settings.max_idle_per_origin,
        });
        let open = Arc::new(OpenConnections {
            limit: settings.max_connections_per_service,
            by_service: Mutex::new(HashMap::new()),
        });
        Self {
            iris,
            tls,
            pool,
            open,
            settings,
            metrics,
        }
    }

    /// Where calls and their times are counted.
    pub(crate) fn metrics(&self) -> &BindingWorkerMetrics {
        &self.metrics
    }

    /// Sends `spec`'s CONNECT to iris and counts its time when answered.
    pub(crate) async fn connect_iris(
        &self,
        spec: &ConnectSpec<'_>,
        probe: &TargetMetrics,
    ) -> Result<(Upgraded, TlsPolicy), ProxyError> {
        let sent = Instant::now();
        let answer = self.iris.connect(spec).await?;
        probe.iris_connected(sent.elapsed());
        Ok(answer)
    }

    /// Timeouts and limits.
    pub(crate) fn settings(&self) -> &OriginSettings {
        &self.settings
    }

    /// The pool, for the sweeper.
    pub(crate) fn pool(&self) -> &Arc<OriginPool> {
        &self.pool
    }

    /// Sends `request` with the body fed by `events` and waits for the response head.
    pub(crate) async fn exchange(
        &self,
        request: FetchRequest,
        events: BodyEvents,
    ) -> Result<OriginResponse, ProxyError> {
        let probe = self.metrics.target(Some(request.target));
        if request.upgrade.is_some() {
            return self.exchange_upgrade(request, events, &probe).await;
        }
        let peek = !request.body_is_framed() && request.method_expects_no_body();
        let (body, mut body_finished) = RequestBody::from_events(events, peek).await?;
        let body_was_empty = http_body::Body::is_end_stream(&body);
        let key = PoolKey::of(&request);
        let mut outgoing = build_request(&request, body)?;

        // A body-less request is sent at most twice: a second time only when its first
        // connection broke before any answer.
        let mut replayed = false;
        while let Some(mut sender) = self.pool.check_out(&key) {
            match self
                .send(&mut sender, outgoing, &mut body_finished, &probe)
                .await
            {
                Attempt::Answered(response) => {
                    probe.reused();
                    return Ok(self.respond(response, sender, key, &body_finished));
                }
                // Never written: the idle connection went away; try another.
                Attempt::Unsent(back) => outgoing = back,
                // The idle connection was closed by the origin as we wrote: a body-less request
                // can be repeated safely on a fresh connection (pingora's "reused only" retry).
                Attempt::Failed(err)
                    if body_was_empty && err.code == ErrorCode::ConnectionTerminated =>
                {
                    tracing::debug!(error = %err, "reused origin connection was closed; retrying");
                    let (body, finished) = RequestBody::empty();
                    body_finished = finished;
                    outgoing = build_request(&request, body)?;
                    replayed = true;
                    break;
                }
                Attempt::Failed(err) => return Err(err),
            }
        }

        loop {
            let mut sender = self.open(&request, &probe).await?;
            match self
                .send(&mut sender, outgoing, &mut body_finished, &probe)
                .await
            {
                Attempt::Answered(response) => {
                    return Ok(self.respond(response, sender, key, &body_finished));
                }
                Attempt::Unsent(_) => {
                    return Err(ProxyError::new(ErrorCode::ConnectionTerminated)
                        .with_details("the origin connection closed before the request was sent"));
                }
                // The connection broke before any answer: typically the connector carrying it
                // died and iris closed the pipe. An idempotent request without a body may be
                // sent again (RFC 9110 §9.2.2): a new CONNECT, which iris routes over a live
                // connection of the tunnel.
                Attempt::Failed(err)
                    if !replayed
                        && body_was_empty
                        && request.method.is_idempotent()
                        && err.code == ErrorCode::ConnectionTerminated =>
                {
                    tracing::debug!(
                        request_id = %request.caller.request_id,
                        error = %err,
                        "origin connection broke before the response head; sending the request again"
                    );
                    let (body, finished) = RequestBody::empty();
                    body_finished = finished;
                    outgoing = build_request(&request, body)?;
                    replayed = true;
                }
                Attempt::Failed(err) => return Err(err),
            }
        }
    }

    /// An upgrade (e.g. WebSocket): the request goes out on a fresh connection with an empty
    /// body. On `101` the connection becomes a byte pipe: the script's request-body stream
    /// feeds it, and what the origin sends is the response body. Any other answer is an
    /// ordinary response (the origin declined), and the connection is not reused.
    async fn exchange_upgrade(
        &self,
        request: FetchRequest,
        events: BodyEvents,
        probe: &TargetMetrics,
    ) -> Result<OriginResponse, ProxyError> {
        let (body, mut finished) = RequestBody::empty();
        let outgoing = build_request(&request, body)?;
        let key = PoolKey::of(&request);
        let mut connection = self.open(&request, probe).await?;
        let mut response = match self
            .send(&mut connection, outgoing, &mut finished, probe)
            .await
        {
            Attempt::Answered(response) => response,
            Attempt::Unsent(_) => {
                return Err(ProxyError::new(ErrorCode::ConnectionTerminated)
                    .with_details("the origin connection closed before the upgrade was sent"));
            }
            Attempt::Failed(err) => return Err(err),
        };
        if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            let mut declined = self.respond(response, connection, key, &finished);
            declined.lease.reusable = false;
            return Ok(declined);
        }
        let on_upgrade = hyper::upgrade::on(&mut response);
        let (mut head, _) = response.into_parts();
        let protocol = head.headers.get(header::UPGRADE).cloned();
        let upgraded = on_upgrade.await.map_err(|err| {
            ProxyError::new(ErrorCode::HttpUpgradeFailed).with_details(format!(
                "the origin answered 101 but the upgrade failed: {err}"
            ))
        })?;
        strip_hop_by_hop(&mut head.headers);
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(protocol) = protocol {
            head.headers.insert(header::UPGRADE, protocol);
        }
        let (read, write) = tokio::io::split(TokioIo::new(upgraded));
        tokio::spawn(pump_into_upgraded(events, write));
        let lease = Lease {
            sender: connection,
            key,
            pool: Arc::clone(&self.pool),
            body_done: finished.flag(),
            reusable: false,
        };
        Ok(OriginResponse {
            head,
            body: OriginBody::Upgraded(ReaderStream::new(read)),
            lease,
        })
    }

    /// A fresh origin connection: CONNECT through iris, TLS for https (SNI = URL host,
    /// verified as the service's TLS settings in iris's answer say), then an HTTP/1.1
    /// handshake on it. Counts against the service's connection cap while it is open.
    async fn open(
        &self,
        request: &FetchRequest,
        probe: &TargetMetrics,
    ) -> Result<OriginConnection, ProxyError> {
        let permit = self.acquire(request.target)?;
        let (stream, tls): (_, TlsPolicy) = self
            .connect_iris(&ConnectSpec::fetch(request), probe)
            .await?;
        let request_id = request.caller.request_id.clone();
        let opened = match request.scheme {
            Scheme::Http => http1_handshake(stream, request_id, permit).await,
            Scheme::Https => {
                let handshake = self.tls.handshake(&request.host, &tls, stream);
                let tls = tokio::time::timeout(self.iris.connect_timeout(), handshake)
                    .await
                    .map_err(|_| {
                        ProxyError::new(ErrorCode::ConnectionTimeout)
                            .with_details("the origin did not complete the TLS handshake in time")
                    })??;
                http1_handshake(TokioIo::new(tls), request_id, permit).await
            }
        }?;
        probe.opened();
        Ok(opened)
    }

    /// A slot under the target's connection cap; an idle pooled connection of the target
    /// (perhaps for another host) gives way to a new one.
    pub(crate) fn acquire(&self, target: BindingTarget) -> Result<ConnectionPermit, ProxyError> {
        match self.open.acquire(target) {
            Ok(permit) => Ok(permit),
            Err(err) if self.pool.evict_one(target) => self.open.acquire(target).map_err(|_| err),
            Err(err) => Err(err),
        }
    }

    /// Sends one request; the response timeout starts once the body has been sent. The
    /// origin's time to first byte is counted from then too (from the send when the head
    /// came first).
    async fn send(
        &self,
        sender: &mut OriginConnection,
        outgoing: Request<RequestBody>,
        body_finished: &mut BodyFinished,
        probe: &TargetMetrics,
    ) -> Attempt {
        let timeout = self.settings.response_timeout;
        let sent = Instant::now();
        let written = OnceLock::new();
        let deadline = async {
            body_finished.wait().await;
            let _ = written.set(Instant::now());
            tokio::time::sleep(timeout).await;
        };
        // Its span ends at the response head (or the failure), not with the body.
        let span = tracing::info_span!(
            "origin_exchange",
            method = %outgoing.method(),
            status = tracing::field::Empty,
            code = tracing::field::Empty,
        );
        let attempt = tokio::select! {
            answer = sender.http.try_send_request(outgoing) => match answer {
                Ok(response) => {
                    probe.first_byte(written.get().unwrap_or(&sent).elapsed());
                    Attempt::Answered(response)
                }
                Err(mut err) => match err.take_message() {
                    Some(back) => Attempt::Unsent(back),
                    None => Attempt::Failed(origin_error(err.error())),
                },
            },
            () = deadline => Attempt::Failed(ProxyError::new(ErrorCode::HttpResponseTimeout).with_details(
                format!("the origin sent no response head within {timeout:?} of the request"),
            )),
        };
        match &attempt {
            Attempt::Answered(response) => span.record("status", response.status().as_u16()),
            Attempt::Failed(err) => span.record("code", tracing::field::display(err.code)),
            Attempt::Unsent(_) => &span,
        };
        attempt
    }

    fn respond(
        &self,
        response: Response<Incoming>,
        sender: OriginConnection,
        key: PoolKey,
        body_finished: &BodyFinished,
    ) -> OriginResponse {
        let (mut head, body) = response.into_parts();
        let body = OriginBody::Http(body);
        strip_hop_by_hop(&mut head.headers);
        head.headers.remove(header::TRANSFER_ENCODING);
        let lease = Lease {
            sender,
            key,
            pool: Arc::clone(&self.pool),
            body_done: body_finished.flag(),
            reusable: true,
        };
        OriginResponse { head, body, lease }
    }
}

/// How one try to send a request on a connection went.
enum Attempt {
    Answered(Response<Incoming>),
    Unsent(Request<RequestBody>),
    Failed(ProxyError),
}

/// Starts HTTP/1.1 on an origin byte stream; the connection runs as its own task.
async fn http1_handshake<T>(
    io: T,
    request_id: String,
    permit: ConnectionPermit,
) -> Result<OriginConnection, ProxyError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (http, connection) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| origin_error(&e))?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(%request_id, error = %err, "origin connection ended with an error");
        }
    });
    Ok(OriginConnection {
        http,
        opened: Instant::now(),
        _permit: permit,
    })
}

/// One origin connection, counted against its service's cap until dropped (dropping the
/// sender also ends the connection).
#[derive(Debug)]
pub(crate) struct OriginConnection {
    http: http1::SendRequest<RequestBody>,
    /// When the connection's CONNECT was made (it carries the route iris chose then).
    opened: Instant,
    _permit: ConnectionPermit,
}

/// Copies the script's request-body stream into an upgraded connection; `end()` half-closes
/// it, `abort()` closes it.
async fn pump_into_upgraded(mut events: BodyEvents, mut write: WriteHalf<TokioIo<Upgraded>>) {
    while let Some(event) = events.recv().await {
        match event {
            BodyEvent::Data(bytes) => {
                if write.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            BodyEvent::End => {
                let _ = write.shutdown().await;
                return;
            }
            BodyEvent::Abort(_) => return,
        }
    }
}

/// Open origin connections (and sockets) per binding target, against the per-service cap
/// (a network binding counts as one "service").
#[derive(Debug)]
struct OpenConnections {
    limit: usize,
    by_service: Mutex<HashMap<BindingTarget, usize>>,
}

impl OpenConnections {
    /// A slot for one more connection to `target`, or `connection_limit_reached`.
    fn acquire(self: &Arc<Self>, target: BindingTarget) -> Result<ConnectionPermit, ProxyError> {
        let mut open = self
            .by_service
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(target).or_default();
        if *count >= self.limit {
            return Err(
                ProxyError::new(ErrorCode::ConnectionLimitReached).with_details(format!(
                    "{target} already has {} open origin connections \
                     (max_connections_per_service)",
                    self.limit
                )),
            );
        }
        *count += 1;
        Ok(ConnectionPermit {
            open: Arc::clone(self),
            target,
        })
    }
}

/// One counted origin connection; released when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    open: Arc<OpenConnections>,
    target: BindingTarget,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self
            .open
            .by_service
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.target) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.target);
            }
        }
    }
}

/// The origin request: origin-form target, end-to-end headers, `Host` = the URL's host.
fn build_request(
    request: &FetchRequest,
    body: RequestBody,
) -> Result<Request<RequestBody>, ProxyError> {
    let mut outgoing = Request::new(body);
    *outgoing.method_mut() = request.method.clone();
    *outgoing.uri_mut() = Uri::from(request.path_and_query.clone());
    *outgoing.headers_mut() = request.headers.clone();
    let host = HeaderValue::from_str(&request.host_header()).map_err(|_| {
        ProxyError::new(ErrorCode::HttpRequestError).with_details(format!(
            "URL host {:?} cannot be a Host header",
            request.host
        ))
    })?;
    outgoing.headers_mut().insert(header::HOST, host);
    if let Some(protocol) = &request.upgrade {
        outgoing
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        outgoing
            .headers_mut()
            .insert(header::UPGRADE, protocol.clone());
    }
    Ok(outgoing)
}

/// Maps a hyper client error (origin side) to a code.
pub(crate) fn origin_error(err: &hyper::Error) -> ProxyError {
    if let Some(body_error) = find_source::<RequestBodyError>(err) {
        return body_error.to_proxy_error();
    }
    let code = if err.is_parse_too_large() {
        ErrorCode::HttpResponseHeaderSectionSize
    } else if err.is_parse() || err.is_parse_status() {
        ErrorCode::HttpProtocolError
    } else if err.is_timeout() {
        ErrorCode::HttpResponseTimeout
    } else if err.is_user() {
        ErrorCode::HttpRequestError
    } else {
        // Incomplete message, closed or reset connection: the origin (or the tunnel) went
        // away before a complete response head.
        ErrorCode::ConnectionTerminated
    };
    ProxyError::new(code).with_details(describe(err))
}

/// An error and its causes on one line.
pub(crate) fn describe(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The first error of type `T` in `err`'s chain.
pub(crate) fn find_source<'a, T: StdError + 'static>(
    err: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Which origin connections can serve a request: same binding target, scheme, host and
/// port (for a service the port is the scheme's, so it changes nothing; for a network it is
/// the destination's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    target: BindingTarget,
    scheme: Scheme,
    host: String,
    port: u16,
}

impl PoolKey {
    fn of(request: &FetchRequest) -> Self {
        let port = match request.target {
            BindingTarget::Service(_) => request.scheme.default_port(),
            BindingTarget::Network(_) => request.port,
        };
        Self {
            target: request.target,
            scheme: request.scheme,
            host: request.host.clone(),
            port,
        }
    }
}

/// Idle HTTP/1.1 origin connections.
#[derive(Debug)]
pub(crate) struct OriginPool {
    idle: Mutex<HashMap<PoolKey, Vec<IdleConnection>>>,
    idle_timeout: Duration,
    route_lease: Option<Duration>,
    max_idle_per_origin: usize,
}

#[derive(Debug)]
struct IdleConnection {
    sender: OriginConnection,
    since: Instant,
}

impl IdleConnection {
    fn usable(&self, idle_timeout: Duration, route_lease: Option<Duration>) -> bool {
        !self.sender.http.is_closed()
            && self.sender.http.is_ready()
            && self.since.elapsed() < idle_timeout
            && route_lease.is_none_or(|lease| self.sender.opened.elapsed() < lease)
    }
}

impl OriginPool {
    /// The most recently used live connection for `key` (likeliest to still be open).
    fn check_out(&self, key: &PoolKey) -> Option<OriginConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(key)?;
        let mut found = None;
        while let Some(candidate) = list.pop() {
            if candidate.usable(self.idle_timeout, self.route_lease) {
                found = Some(candidate.sender);
                break;
            }
        }
        if list.is_empty() {
            idle.remove(key);
        }
        found
    }

    fn check_in(&self, key: PoolKey, sender: OriginConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(key).or_default();
        if list.len() < self.max_idle_per_origin {
            list.push(IdleConnection {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes one idle connection of `target` (any scheme and host); whether there was one.
    fn evict_one(&self, target: BindingTarget) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(key) = idle.keys().find(|k| k.target == target).cloned() else {
            return false;
        };
        let evicted = idle.get_mut(&key).and_then(|list| {
            // The oldest: the least likely to be wanted again soon.
            (!list.is_empty()).then(|| list.remove(0))
        });
        if idle.get(&key).is_some_and(Vec::is_empty) {
            idle.remove(&key);
        }
        drop(idle);
        evicted.is_some()
    }

    /// Closes every idle connection of `service_id` (its route changed).
    pub(crate) fn forget_service(&self, service_id: Uuid) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|key, _| key.target != BindingTarget::Service(service_id));
    }

    /// Closes connections idle for too long or closed by the origin.
    pub(crate) fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|_, list| {
            list.retain(|c| c.usable(self.idle_timeout, self.route_lease));
            !list.is_empty()
        });
    }

    /// How often [`Self::sweep`] should run.
    pub(crate) fn sweep_interval(&self) -> Duration {
        (self.idle_timeout / 2).max(Duration::from_secs(1))
    }
}
