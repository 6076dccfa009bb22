//! [`serve`]: an HTTP/1.1 (and optionally HTTP/2) server over an [`Acceptor`], with the
//! timeouts of [`ServerLimits`] watched per connection. Connections run on the accepting
//! runtime, or are dealt in turn to a set of runtimes ([`HttpServer::spread_over`]) where each
//! stays with all its requests.
//!
//! Each connection has a watchdog beside hyper's connection future. It knows whether a
//! request is in flight (from the handler's call until hyper dropped its response body, or
//! longer while a [`ConnectionUse`] hold lives), and when the connection's first byte since
//! it became idle arrived. From that it closes:
//! - an HTTP/1 connection whose request head is not complete `header_read_timeout` after its
//!   first byte, or after the connection was accepted (slowloris);
//! - a connection idle for `idle_timeout` (HTTP/2: no stream open; it gets a GOAWAY first).
//!
//! hyper's own `header_read_timeout` is not used: it starts when hyper waits for the next
//! request, so on keep-alive connections it cuts idle time and head time with one bound.
//!
//! When hyper cannot parse an HTTP/1 request head it writes a bare 400 / 414 / 431 and
//! closes. The connection's I/O recognises that answer (a response head written while no
//! request is in flight and no answer of the handler is waiting can only be hyper's) and
//! writes an explained one instead ([`Refusal`]).

use std::convert::Infallible;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::accept::{Acceptor, Admitted, ConnectionPermit, RefuseWith};
use crate::limits::ServerLimits;
use crate::refusal::{PageFn, Refusal, plain_text_page, response_bytes};

/// The HTTP/2 preface's first bytes: how a connection shows it speaks HTTP/2.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// HTTP/2 settings of a listener that accepts HTTP/2 besides HTTP/1.1.
#[derive(Debug, Clone, Copy, Default)]
pub struct Http2Settings {
    /// Streams one client may have open at once (`None`: hyper's default).
    pub max_concurrent_streams: Option<u32>,
    /// Flow-control window of each stream, in bytes.
    pub stream_window: Option<u32>,
    /// Flow-control window of the connection, in bytes.
    pub connection_window: Option<u32>,
}

/// What an HTTP listener is: its name in logs, its limits, the format of its own error
/// answers and whether it accepts HTTP/2.
#[derive(Debug, Clone)]
pub struct HttpServer {
    /// Names the listener in logs ("script HTTP", "directory API", …).
    pub name: &'static str,
    /// Timeouts and caps.
    pub limits: ServerLimits,
    /// Renders the body of the listener's own answers ([`plain_text_page`] by default).
    pub page: PageFn,
    /// `Some`: HTTP/2 is accepted too (by its preface), with these settings.
    pub http2: Option<Http2Settings>,
    /// `Some`: each accepted connection is served on one of these runtimes, in turn, instead
    /// of the accepting one ([`HttpServer::spread_over`]).
    pub spread: Option<Arc<Spread>>,
}

/// Runtimes that connections are dealt to in turn: each connection, and every task its
/// requests spawn, then stays on one (typically current-thread) runtime.
#[derive(Debug)]
pub struct Spread {
    runtimes: Vec<tokio::runtime::Handle>,
    next: std::sync::atomic::AtomicUsize,
}

impl Spread {
    fn next(&self) -> &tokio::runtime::Handle {
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.runtimes[turn % self.runtimes.len()]
    }
}

impl HttpServer {
    /// An HTTP/1.1 listener with plain-text error answers.
    pub fn new(name: &'static str, limits: ServerLimits) -> Self {
        Self {
            name,
            limits,
            page: plain_text_page,
            http2: None,
            spread: None,
        }
    }

    /// The same, serving each connection on one of `runtimes` in turn (none: on the
    /// accepting runtime). Those runtimes must keep being driven while connections last.
    pub fn spread_over(mut self, runtimes: Vec<tokio::runtime::Handle>) -> Self {
        self.spread = (!runtimes.is_empty()).then(|| {
            Arc::new(Spread {
                runtimes,
                next: Default::default(),
            })
        });
        self
    }

    /// The same, rendering its own answers with `page`.
    pub fn with_page(mut self, page: PageFn) -> Self {
        self.page = page;
        self
    }

    /// The same, accepting HTTP/2 as well.
    pub fn with_http2(mut self, settings: Http2Settings) -> Self {
        self.http2 = Some(settings);
        self
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let limits = &self.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .keep_alive(true)
            // The watchdog times heads and idle time apart (see the module doc).
            .header_read_timeout(None)
            .max_headers(limits.max_request_headers)
            .max_buf_size(limits.max_head_bytes.max(8192));
        if let Some(settings) = self.http2 {
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(limits.http2_keep_alive_interval)
                .keep_alive_timeout(limits.http2_keep_alive_timeout)
                .max_concurrent_streams(settings.max_concurrent_streams)
                .initial_stream_window_size(settings.stream_window)
                .initial_connection_window_size(settings.connection_window);
            builder
        } else {
            builder.http1_only()
        }
    }
}

/// Serves `handler` on `listener` until the future is dropped; it never ends by itself.
/// Connections already accepted keep running on their own tasks.
pub async fn serve<F, Fut, B>(listener: TcpListener, server: HttpServer, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let plain = |stream: TcpStream| std::future::ready(Ok((stream, ())));
    serve_with(listener, server, plain, handler).await;
}

/// Like [`serve`], but each accepted connection first goes through `handshake` (TLS, for
/// instance), which must finish within the header-read timeout; a failed or late handshake
/// closes the connection. What the handshake learned about the peer (`X`, e.g. its verified
/// certificate names) is put in the extensions of every request of the connection.
pub async fn serve_with<H, HFut, S, X, F, Fut, B>(
    listener: TcpListener,
    server: HttpServer,
    handshake: H,
    handler: F,
) where
    H: Fn(TcpStream) -> HFut + Clone + Send + Sync + 'static,
    HFut: Future<Output = std::io::Result<(S, X)>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    X: Clone + Send + Sync + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let acceptor = Acceptor::new(
        listener,
        server.name,
        server.limits.max_connections,
        RefuseWith::Http(server.page),
    );
    let server = Arc::new(server);
    loop {
        let admitted = acceptor.accept().await;
        let (server, handshake, handler) = (server.clone(), handshake.clone(), handler.clone());
        let Admitted {
            stream,
            peer,
            permit,
        } = admitted;
        let Some(spread) = server.spread.clone() else {
            tokio::spawn(serve_admitted(
                stream, peer, permit, server, handshake, handler,
            ));
            continue;
        };
        // Moved to its runtime's reactor: off this one first, on the other from inside it.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(listener = server.name, %peer, error = %err, "cannot hand the connection over");
                continue;
            }
        };
        spread.next().spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve_admitted(stream, peer, permit, server, handshake, handler).await,
                Err(err) => {
                    tracing::debug!(listener = server.name, %peer, error = %err, "cannot take the connection over");
                }
            }
        });
    }
}

/// One accepted connection: its handshake, then its requests.
async fn serve_admitted<H, HFut, S, X, F, Fut, B>(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    permit: ConnectionPermit,
    server: Arc<HttpServer>,
    handshake: H,
    handler: F,
) where
    H: Fn(TcpStream) -> HFut + Clone + Send + Sync + 'static,
    HFut: Future<Output = std::io::Result<(S, X)>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    X: Clone + Send + Sync + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(listener = server.name, %peer, error = %err, "cannot set TCP_NODELAY");
    }
    let timeout = server.limits.header_read_timeout;
    let (stream, learned) = match tokio::time::timeout(timeout, handshake(stream)).await {
        Ok(Ok(done)) => done,
        Ok(Err(err)) => {
            tracing::debug!(listener = server.name, %peer, error = %err, "connection handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(listener = server.name, %peer, ?timeout, "connection handshake timed out");
            return;
        }
    };
    serve_connection(stream, peer, permit, learned, server, handler).await;
}

/// Serves one connection until it ends or the watchdog closes it.
async fn serve_connection<S, X, F, Fut, B>(
    stream: S,
    peer: std::net::SocketAddr,
    permit: ConnectionPermit,
    learned: X,
    server: Arc<HttpServer>,
    handler: F,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    X: Clone + Send + Sync + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let state = Arc::new(ConnectionState::default());
    let io = WatchedIo {
        inner: stream,
        state: state.clone(),
        server: server.clone(),
        pending: None,
        _permit: permit,
    };
    let in_service = state.clone();
    let service = service_fn(move |mut request: Request<Incoming>| {
        let busy = InUse::new(in_service.clone());
        request.extensions_mut().insert(ConnectionUse {
            state: in_service.clone(),
        });
        request.extensions_mut().insert(learned.clone());
        let response = handler(request);
        let answering = in_service.clone();
        async move {
            let response = response.await;
            answering.answered();
            Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let builder = server.builder();
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let limits = &server.limits;
    let mut goaway_sent = false;
    loop {
        let changed = state.changed.notified();
        let deadline = if goaway_sent {
            // The client had a header-read timeout's time to finish after the GOAWAY.
            Some((Instant::now() + limits.header_read_timeout, Expiry::Idle))
        } else {
            state.deadline(limits)
        };
        tokio::select! {
            biased;
            ended = connection.as_mut() => {
                if let Err(err) = ended {
                    tracing::debug!(listener = server.name, %peer, error = %err, "connection ended with an error");
                }
                return;
            }
            () = changed, if !goaway_sent => {}
            expiry = expire_at(deadline) => match expiry {
                Expiry::Idle if state.is_http2() && !goaway_sent => {
                    tracing::debug!(listener = server.name, %peer, "closing an idle HTTP/2 connection");
                    connection.as_mut().graceful_shutdown();
                    goaway_sent = true;
                }
                expiry => {
                    tracing::debug!(listener = server.name, %peer, ?expiry, "closing a connection");
                    return;
                }
            },
        }
    }
}

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// No request within `idle_timeout`.
    Idle,
    /// A request head not complete within `header_read_timeout`.
    HeadNotComplete,
}

async fn expire_at(deadline: Option<(Instant, Expiry)>) -> Expiry {
    match deadline {
        Some((at, expiry)) => {
            tokio::time::sleep_until(at).await;
            expiry
        }
        None => std::future::pending().await,
    }
}

// === connection state ===

/// What the watchdog and the I/O know of a connection.
#[derive(Debug)]
struct ConnectionState {
    activity: Mutex<Activity>,
    /// Wakes the watchdog when a request starts or ends, or a new one's first byte arrives.
    changed: Notify,
}

#[derive(Debug)]
struct Activity {
    /// Requests whose response is not finished, plus [`ConnectionUse`] holds.
    in_flight: usize,
    /// When the connection was accepted or its last request finished.
    idle_since: Instant,
    /// First byte read since `idle_since`.
    first_byte: Option<Instant>,
    /// Bytes read since `idle_since` (tells a too-large head from too many fields).
    bytes_since_idle: usize,
    /// Requests seen so far.
    requests: u64,
    /// Responses the handler returned whose head is not written yet.
    unwritten_answers: usize,
    /// The client sent the HTTP/2 preface.
    http2: bool,
}

impl Default for ConnectionState {
    fn default() -> Self {
        Self {
            activity: Mutex::new(Activity {
                in_flight: 0,
                idle_since: Instant::now(),
                first_byte: None,
                bytes_since_idle: 0,
                requests: 0,
                unwritten_answers: 0,
                http2: false,
            }),
            changed: Notify::new(),
        }
    }
}

impl ConnectionState {
    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_http2(&self) -> bool {
        self.activity().http2
    }

    /// When the connection is to be closed if nothing changes, and why.
    fn deadline(&self, limits: &ServerLimits) -> Option<(Instant, Expiry)> {
        let activity = self.activity();
        if activity.in_flight > 0 {
            return None;
        }
        if activity.http2 {
            // Bytes between streams are pings and settings, not a request head.
            return Some((activity.idle_since + limits.idle_timeout, Expiry::Idle));
        }
        match activity.first_byte {
            Some(first) => Some((first + limits.header_read_timeout, Expiry::HeadNotComplete)),
            None if activity.requests == 0 => Some((
                activity.idle_since + limits.header_read_timeout,
                Expiry::HeadNotComplete,
            )),
            None => Some((activity.idle_since + limits.idle_timeout, Expiry::Idle)),
        }
    }

    fn request_started(&self) {
        let mut activity = self.activity();
        activity.requests += 1;
        self.hold_locked(&mut activity);
    }

    fn hold_locked(&self, activity: &mut Activity) {
        activity.in_flight += 1;
        if activity.in_flight == 1 {
            self.changed.notify_one();
        }
    }

    fn answered(&self) {
        self.activity().unwritten_answers += 1;
    }

    fn released(&self) {
        let mut activity = self.activity();
        activity.in_flight = activity.in_flight.saturating_sub(1);
        if activity.in_flight == 0 {
            activity.idle_since = Instant::now();
            activity.first_byte = None;
            activity.bytes_since_idle = 0;
            self.changed.notify_one();
        }
    }

    fn read(&self, bytes: &[u8]) {
        let mut activity = self.activity();
        if activity.requests == 0 && activity.bytes_since_idle == 0 {
            // A first read shorter than the preface is judged by what it has.
            let n = bytes.len().min(H2_PREFACE_START.len());
            activity.http2 = bytes[..n] == H2_PREFACE_START[..n];
        }
        if activity.in_flight > 0 {
            return;
        }
        activity.bytes_since_idle = activity.bytes_since_idle.saturating_add(bytes.len());
        if activity.first_byte.is_none() {
            activity.first_byte = Some(Instant::now());
            self.changed.notify_one();
        }
    }
}

/// Marks a connection busy while it lives.
#[derive(Debug)]
struct InUse {
    state: Arc<ConnectionState>,
}

impl InUse {
    fn new(state: Arc<ConnectionState>) -> Self {
        state.request_started();
        Self { state }
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.state.released();
    }
}

/// In every request's extensions: lets a handler keep its connection from being closed as
/// idle after the response, for work that outlives it (the pipe of a CONNECT).
#[derive(Debug, Clone)]
pub struct ConnectionUse {
    state: Arc<ConnectionState>,
}

impl ConnectionUse {
    /// The connection counts as busy until the returned hold is dropped.
    pub fn hold(&self) -> ConnectionHold {
        let mut activity = self.state.activity();
        self.state.hold_locked(&mut activity);
        ConnectionHold {
            state: self.state.clone(),
        }
    }
}

/// See [`ConnectionUse::hold`].
#[derive(Debug)]
pub struct ConnectionHold {
    state: Arc<ConnectionState>,
}

impl Drop for ConnectionHold {
    fn drop(&mut self) {
        self.state.released();
    }
}

/// A response body that keeps its connection busy until hyper is done with it.
struct Tracked<B> {
    body: B,
    _busy: InUse,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// === I/O ===

/// The connection's socket: reports reads to the state, holds the connection's place under
/// the cap, and swaps hyper's bare parse-error answers for explained ones.
struct WatchedIo<S> {
    inner: S,
    state: Arc<ConnectionState>,
    server: Arc<HttpServer>,
    /// An explained answer being written in place of hyper's, and how much is written.
    pending: Option<(Vec<u8>, usize)>,
    _permit: ConnectionPermit,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WatchedIo<S> {
    /// The refusal hyper is answering with `written`, when it is one of its automatic
    /// answers to an unparsable head: a response head written while the handler has no
    /// answer waiting to be written and no request in flight. (hyper may drop a finished
    /// body before it writes the head, so the answers are counted apart.)
    fn automatic_answer(&self, written: &[u8]) -> Option<Refusal> {
        // hyper answers an HTTP/1.0 request in HTTP/1.0; its own refusals are HTTP/1.1.
        let status = written
            .strip_prefix(b"HTTP/1.1 ")
            .or_else(|| written.strip_prefix(b"HTTP/1.0 "))?
            .get(..4)?;
        let automatic = written.starts_with(b"HTTP/1.1 ");
        let mut activity = self.state.activity();
        if activity.http2 {
            return None;
        }
        if activity.unwritten_answers > 0 {
            // The head of the handler's answer (a 100 Continue comes before it).
            if !status.starts_with(b"1") {
                activity.unwritten_answers -= 1;
            }
            return None;
        }
        if activity.in_flight > 0 || !automatic {
            return None;
        }
        let limits = &self.server.limits;
        match status {
            b"431 " if activity.bytes_since_idle >= limits.max_head_bytes => {
                Some(Refusal::HeadTooLarge {
                    max_bytes: limits.max_head_bytes,
                })
            }
            b"431 " => Some(Refusal::TooManyHeaders {
                max_headers: limits.max_request_headers,
            }),
            b"414 " => Some(Refusal::UriTooLong),
            b"400 " => Some(Refusal::Malformed),
            _ => None,
        }
    }

    /// Replaces a write with `refusal`'s answer; reports the original as written.
    fn replace(&mut self, cx: &mut Context<'_>, refusal: &Refusal, len: usize) -> usize {
        let answer = response_bytes(self.server.name, refusal, self.server.page);
        self.pending = Some((answer, 0));
        // Start writing now; what is left goes out on the next flush.
        let _ = self.poll_pending(cx);
        len
    }

    /// Writes what is left of a replaced answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((answer, written)) = &mut self.pending {
            if *written == answer.len() {
                self.pending = None;
                break;
            }
            let n =
                std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
        {
            self.state.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(refusal) = self.automatic_answer(buf) {
            return Poll::Ready(Ok(self.replace(cx, &refusal, buf.len())));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        let first = bufs.iter().find(|b| !b.is_empty());
        if let Some(refusal) = first.and_then(|first| self.automatic_answer(first)) {
            let len = bufs.iter().map(|b| b.len()).sum();
            return Poll::Ready(Ok(self.replace(cx, &refusal, len)));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
