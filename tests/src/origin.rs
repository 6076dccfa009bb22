//! A private origin for tests: a real HTTP/1.1 server that records what it received.
//!
//! Routes: `GET /big/<n>` streams `n` bytes of [`pattern`]; `POST /echo` streams the request
//! body back; `GET /slow/<ms>` answers after `ms` milliseconds (a request in flight);
//! `/moved/<rest>` answers `307` to `/<rest>`; anything else answers `hello from origin: <path and query>`. Every request is
//! recorded (method, path and query, `Host`, body length) and every accepted TCP connection
//! counted (and the open ones), so tests can assert what reached the origin, whether
//! connections were reused and whether they were closed.
//! [`Origin::stop`] closes the listener *and* every open connection, as a killed process would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Byte `i` of every generated body: deterministic and not periodic in powers of two.
pub fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Longest run [`pattern_at`] returns in one piece.
pub const TAPE_RUN: usize = 64 * 1024;

/// `pattern(0..TAPE_RUN + 251)`, built once: every run of [`pattern`] of up to [`TAPE_RUN`]
/// bytes is a slice of it.
pub fn pattern_tape() -> Bytes {
    use std::sync::OnceLock;
    static TAPE: OnceLock<Bytes> = OnceLock::new();
    TAPE.get_or_init(|| (0..TAPE_RUN + 251).map(pattern).collect::<Vec<u8>>().into())
        .clone()
}

/// `pattern(start..start + len)` for `len <= TAPE_RUN`, without copying.
pub fn pattern_at(tape: &Bytes, start: usize, len: usize) -> Bytes {
    let offset = start % 251;
    tape.slice(offset..offset + len)
}

/// Whether `chunk` is `pattern(start..start + chunk.len())`, compared a run at a time.
pub fn is_pattern_at(tape: &Bytes, start: usize, chunk: &[u8]) -> bool {
    chunk
        .chunks(TAPE_RUN)
        .enumerate()
        .all(|(i, run)| run == &pattern_at(tape, start + i * TAPE_RUN, run.len())[..])
}

/// Checks that `body` is `pattern(0..len)`.
pub fn is_pattern(body: &[u8]) -> bool {
    body.iter().enumerate().all(|(i, b)| *b == pattern(i))
}

/// One request as the origin saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Request method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `Host` header, if any.
    pub host: Option<String>,
    /// Bytes of request body received.
    pub body_len: usize,
}

#[derive(Default)]
struct Record {
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    open: AtomicUsize,
    arrived: tokio::sync::Notify,
    opened_or_closed: tokio::sync::Notify,
}

/// A running origin.
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    record: Arc<Record>,
    server: Option<tokio::task::JoinHandle<()>>,
}

type OriginBody = BoxBody<Bytes, Infallible>;

impl Origin {
    /// Starts an origin on `ip:0`.
    pub async fn start(ip: &str) -> std::io::Result<Self> {
        Self::serve(TcpListener::bind((ip, 0)).await?)
    }

    /// Starts an origin on a listener bound elsewhere (e.g. inside a network namespace:
    /// [`crate::netns::Netns::bind_tcp`]). Needs a tokio runtime.
    pub fn serve_std(listener: std::net::TcpListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Self::serve(TcpListener::from_std(listener)?)
    }

    fn serve(listener: TcpListener) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let record = Arc::new(Record::default());
        let rec = record.clone();
        let server = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            // Aborting this task drops `conns`, which aborts every connection task.
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                rec.connections.fetch_add(1, Ordering::SeqCst);
                rec.open.fetch_add(1, Ordering::SeqCst);
                rec.opened_or_closed.notify_waiters();
                // Closed connections leave the set (a long run keeps it small).
                while conns.try_join_next().is_some() {}
                let rec = rec.clone();
                conns.spawn(async move {
                    let closed = OnClose(rec.clone());
                    let svc = service_fn(move |req| handle(rec.clone(), req));
                    // Like nginx, answer a client that half-closes after its request
                    // (a script's raw socket does) instead of dropping the connection.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .half_close(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                    drop(closed);
                });
            }
        });
        Ok(Self {
            addr,
            record,
            server: Some(server),
        })
    }

    /// Requests seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.record.seen.lock().unwrap().clone()
    }

    /// Resolves once a request for `path` (path and query) has arrived.
    pub async fn wait_seen(&self, path: &str) {
        loop {
            let arrived = self.record.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.seen().iter().any(|s| s.path == path) {
                return;
            }
            arrived.await;
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.record.connections.load(Ordering::SeqCst)
    }

    /// TCP connections open now.
    pub fn open_connections(&self) -> usize {
        self.record.open.load(Ordering::SeqCst)
    }

    /// Resolves once exactly `count` TCP connections are open.
    pub async fn wait_open_connections(&self, count: usize) {
        loop {
            let changed = self.record.opened_or_closed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.open_connections() == count {
                return;
            }
            changed.await;
        }
    }

    /// Stops listening and closes every connection (later connects are refused).
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

/// Counts a connection as closed when its task ends (or is aborted).
struct OnClose(Arc<Record>);

impl Drop for OnClose {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.opened_or_closed.notify_waiters();
    }
}

async fn handle(
    rec: Arc<Record>,
    req: Request<Incoming>,
) -> Result<Response<OriginBody>, Infallible> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.to_string());
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let index = {
        let mut seen = rec.seen.lock().unwrap();
        seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            host,
            body_len: 0,
        });
        seen.len() - 1
    };
    rec.arrived.notify_waiters();
    if method == "POST" && req.uri().path() == "/echo" {
        // Stream the body back as it arrives, counting it.
        let counted = req.into_body().into_data_stream().map(move |chunk| {
            let chunk = chunk.unwrap_or_default();
            rec.seen.lock().unwrap()[index].body_len += chunk.len();
            Ok::<_, Infallible>(Frame::data(chunk))
        });
        return Ok(Response::new(http_body_util::BodyExt::boxed(
            StreamBody::new(counted),
        )));
    }
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    rec.seen.lock().unwrap()[index].body_len = body_len;
    if let Some(n) = req_path_number(&path, "/big/") {
        const CHUNK: usize = 64 * 1024;
        // Slices of one shared tape: a body of any size costs the origin no memory.
        let tape = pattern_tape();
        let chunks = futures::stream::iter((0..n).step_by(CHUNK).map(move |start| {
            let end = (start + CHUNK).min(n);
            Ok::<_, Infallible>(Frame::data(pattern_at(&tape, start, end - start)))
        }));
        let mut resp = Response::new(http_body_util::BodyExt::boxed(StreamBody::new(chunks)));
        resp.headers_mut()
            .insert(hyper::header::CONTENT_LENGTH, n.into());
        return Ok(resp);
    }
    if let Some(rest) = path.strip_prefix("/moved/") {
        // A 307 (same method and body) to `/<rest>`.
        let mut resp = Response::new(http_body_util::BodyExt::boxed(Full::new(Bytes::new())));
        *resp.status_mut() = hyper::StatusCode::TEMPORARY_REDIRECT;
        if let Ok(location) = format!("/{rest}").parse() {
            resp.headers_mut().insert(hyper::header::LOCATION, location);
        }
        return Ok(resp);
    }
    if let Some(ms) = req_path_number(&path, "/slow/") {
        tokio::time::sleep(std::time::Duration::from_millis(ms as u64)).await;
    }
    let body = format!("hello from origin: {path}");
    Ok(Response::new(http_body_util::BodyExt::boxed(Full::new(
        Bytes::from(body),
    ))))
}

/// The number after `prefix` in a path like `/slow/300?i=4`.
fn req_path_number(path: &str, prefix: &str) -> Option<usize> {
    let rest = path.strip_prefix(prefix)?;
    rest.split(['?', '/']).next()?.parse().ok()
}
