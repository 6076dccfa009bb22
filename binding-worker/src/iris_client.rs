//! The CONNECT client to iris: one multiplexed HTTP/2 connection per iris node, dialled on
//! first use and re-dialled when it dies; every origin connection is one CONNECT stream.
//!
//! The CONNECT names the service (`<service-id>:<80|443>` plus `wvpc-service-id`) and the
//! scheme; iris picks the real port, resolves, dials through the tunnel and answers `200`, or
//! a failure status whose `Proxy-Status` header carries the code.
//!
//! CONNECTs go round-robin over the nodes that are up. A node whose dial fails is marked down
//! for a backoff (250 ms, doubling up to 5 s) and skipped until then; the first CONNECT after
//! it is the next try. A CONNECT that never got an answer head because of its node (the dial
//! failed; the connection closed or broke before the head; GOAWAY; REFUSED_STREAM) is sent to
//! the next node — safe, as no request byte reaches the origin before iris answers `200`. A
//! CONNECT that timed out waiting for its head is not (iris may still be dialling the origin),
//! nor is any answer iris gave. When no node could take it, the fetch fails with
//! `destination_unavailable`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex as SyncMutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use wvpc_errors::{ErrorCode, ProxyError};

use crate::origin::find_source;
use crate::origin_tls::{TlsPolicy, Verification};
use crate::request::FetchRequest;

/// Header names shared with iris (`wvpc_iris::connect`); repeated here because the two
/// binaries do not depend on each other.
const SERVICE_ID_HEADER: &str = "wvpc-service-id";
const SCHEME_HEADER: &str = "wvpc-scheme";
const ORIGINAL_HOST_HEADER: &str = "wvpc-original-host";
const REQUEST_ID_HEADER: &str = "wvpc-request-id";
const ACCOUNT_HEADER: &str = "wvpc-account";
const SCRIPT_HEADER: &str = "wvpc-script";
const PROXY_STATUS_HEADER: &str = "proxy-status";
const TLS_VERIFICATION_HEADER: &str = "wvpc-tls-verification";
const TLS_CA_HEADER: &str = "wvpc-tls-ca";

/// HTTP/2 flow-control windows: large enough that a multi-MiB body is not paced by window
/// updates on a fast link.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// How long a node stays marked down after its first failed dial; doubled per further
/// failure, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Settings of the iris connections.
#[derive(Debug, Clone)]
pub(crate) struct IrisSettings {
    /// The iris nodes' CONNECT listeners (at least one).
    pub(crate) nodes: Vec<SocketAddr>,
    /// Bound on dialling a node and on iris's answer to a CONNECT.
    pub(crate) connect_timeout: Duration,
}

/// The connections to the iris nodes.
#[derive(Debug)]
pub(crate) struct IrisClient {
    nodes: Vec<IrisNode>,
    /// Round-robin position.
    next: AtomicUsize,
    connect_timeout: Duration,
}

/// One iris node: its connection and whether it is up.
#[derive(Debug)]
struct IrisNode {
    addr: SocketAddr,
    /// A tokio mutex: while one task dials, the others wait for that connection.
    current: Mutex<LiveConnection>,
    health: SyncMutex<Health>,
}

/// The connection in use; `sender` is `None` until first use and after it died.
#[derive(Debug, Default)]
struct LiveConnection {
    /// Counts dials, so that a late `forget` cannot drop a newer connection.
    generation: u64,
    sender: Option<http2::SendRequest<Empty<Bytes>>>,
}

/// Whether a node is skipped, and for how long.
#[derive(Debug)]
struct Health {
    /// Set while the node is down: skipped until then.
    down_until: Option<Instant>,
    /// The next backoff.
    backoff: Duration,
    /// Why its last dial failed.
    last_error: String,
}

impl IrisClient {
    pub(crate) fn new(settings: IrisSettings) -> Self {
        let nodes = settings
            .nodes
            .iter()
            .map(|&addr| IrisNode {
                addr,
                current: Mutex::new(LiveConnection::default()),
                health: SyncMutex::new(Health {
                    down_until: None,
                    backoff: FIRST_BACKOFF,
                    last_error: String::new(),
                }),
            })
            .collect();
        Self {
            nodes,
            next: AtomicUsize::new(0),
            connect_timeout: settings.connect_timeout,
        }
    }

    /// Bound on dialling and on CONNECT answers (reused for the origin TLS handshake).
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Opens a byte stream to `request`'s service: a CONNECT answered with `200`, whose
    /// headers carry the service's TLS settings for `https`.
    pub(crate) async fn connect(
        &self,
        request: &FetchRequest,
    ) -> Result<(Upgraded, TlsPolicy), ProxyError> {
        let count = self.nodes.len();
        // Nodes this CONNECT is done with; a node whose reused connection turned out dead
        // gets one fresh dial first.
        let mut skip = vec![false; count];
        let mut redialled = vec![false; count];
        let mut failures = Vec::new();
        while let Some(i) = self.pick(&skip) {
            let node = &self.nodes[i];
            let (generation, mut sender, reused) = match node.sender(self.connect_timeout).await {
                Ok(found) => found,
                Err(why) => {
                    skip[i] = true;
                    failures.push(format!("{}: {why}", node.addr));
                    continue;
                }
            };
            let connect = connect_request(request)?;
            let answer =
                tokio::time::timeout(self.connect_timeout, sender.send_request(connect)).await;
            let response = match answer {
                Err(_elapsed) => {
                    return Err(ProxyError::new(ErrorCode::ConnectionTimeout).with_details(
                        format!(
                            "iris at {} did not answer the CONNECT within {:?}",
                            node.addr, self.connect_timeout
                        ),
                    ));
                }
                Ok(Ok(response)) => response,
                Ok(Err(err)) => {
                    let Some(unanswered) = Unanswered::classify(&err, &sender) else {
                        return Err(ProxyError::new(ErrorCode::ProxyInternalError).with_details(
                            format!("CONNECT to iris at {} failed: {err}", node.addr),
                        ));
                    };
                    if unanswered.connection_gone {
                        node.forget(generation).await;
                    }
                    if unanswered.connection_gone && reused && !redialled[i] {
                        redialled[i] = true;
                    } else {
                        skip[i] = true;
                    }
                    tracing::debug!(iris = %node.addr, error = %err, "CONNECT got no answer; trying another iris node");
                    failures.push(format!("{}: {}", node.addr, unanswered.why));
                    continue;
                }
            };
            if response.status() != StatusCode::OK {
                return Err(refusal(response.status(), response.headers()));
            }
            let tls = tls_policy(response.headers())?;
            let stream = hyper::upgrade::on(response).await.map_err(|err| {
                ProxyError::new(ErrorCode::ProxyInternalError).with_details(format!(
                    "iris accepted the CONNECT but the stream failed: {err}"
                ))
            })?;
            return Ok((stream, tls));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if !skip[i]
                && let Some(why) = node.down()
            {
                failures.push(format!("{}: {why}", node.addr));
            }
        }
        Err(
            ProxyError::new(ErrorCode::DestinationUnavailable).with_details(format!(
                "no iris node could take the CONNECT ({})",
                failures.join("; ")
            )),
        )
    }

    /// The next node in round-robin order that is up and not in `skip`.
    fn pick(&self, skip: &[bool]) -> Option<usize> {
        let count = self.nodes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        (0..count)
            .map(|k| (start + k) % count)
            .find(|&i| !skip[i] && self.nodes[i].down().is_none())
    }
}

/// Why a CONNECT got no answer head, when that makes it safe to send to another node.
struct Unanswered {
    why: &'static str,
    /// The whole connection is unusable (not just this stream refused).
    connection_gone: bool,
}

impl Unanswered {
    fn classify(err: &hyper::Error, sender: &http2::SendRequest<Empty<Bytes>>) -> Option<Self> {
        if let Some(h2) = find_source::<h2::Error>(err) {
            if h2.is_go_away() {
                return Some(Self {
                    why: "iris is going away (GOAWAY) and did not take the CONNECT",
                    connection_gone: true,
                });
            }
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Some(Self {
                    why: "iris refused the stream (REFUSED_STREAM)",
                    connection_gone: false,
                });
            }
            if h2.is_io() {
                return Some(Self {
                    why: "the connection broke before iris answered",
                    connection_gone: true,
                });
            }
        }
        if find_source::<std::io::Error>(err).is_some() {
            return Some(Self {
                why: "the connection broke before iris answered",
                connection_gone: true,
            });
        }
        if sender.is_closed() || err.is_closed() || err.is_canceled() || err.is_incomplete_message()
        {
            return Some(Self {
                why: "the connection closed before iris answered",
                connection_gone: true,
            });
        }
        None
    }
}

impl IrisNode {
    /// The live connection, dialled if needed. `reused` tells whether it served before.
    /// `Err` (why) when the node is down or the dial failed (which marks it down).
    async fn sender(
        &self,
        connect_timeout: Duration,
    ) -> Result<(u64, http2::SendRequest<Empty<Bytes>>, bool), String> {
        let mut current = self.current.lock().await;
        if let Some(sender) = current.sender.as_ref()
            && !sender.is_closed()
        {
            return Ok((current.generation, sender.clone(), true));
        }
        // Another CONNECT may have failed to dial while this one waited for the lock.
        if let Some(why) = self.down() {
            return Err(why);
        }
        match dial(self.addr, connect_timeout).await {
            Ok(sender) => {
                self.mark_up();
                current.generation += 1;
                current.sender = Some(sender.clone());
                Ok((current.generation, sender, false))
            }
            Err(why) => {
                self.mark_down(&why);
                Err(why)
            }
        }
    }

    /// Drops the connection of `generation` if it is still the current one.
    async fn forget(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.generation == generation {
            current.sender = None;
        }
    }

    /// `Some(why)` while the node is marked down.
    fn down(&self) -> Option<String> {
        let health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let until = health.down_until?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(format!(
            "down ({}), next try in {} ms",
            health.last_error,
            left.as_millis()
        ))
    }

    fn mark_down(&self, why: &str) {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let backoff = health.backoff;
        if health.down_until.is_none() {
            tracing::warn!(iris = %self.addr, error = why, retry_ms = backoff.as_millis() as u64, "iris node unreachable; using the other nodes");
        } else {
            tracing::debug!(iris = %self.addr, error = why, retry_ms = backoff.as_millis() as u64, "iris node still unreachable");
        }
        health.down_until = Some(Instant::now() + backoff);
        health.backoff = (backoff * 2).min(MAX_BACKOFF);
        why.clone_into(&mut health.last_error);
    }

    fn mark_up(&self) {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if health.down_until.take().is_some() {
            tracing::info!(iris = %self.addr, "iris node reachable again");
        }
        health.backoff = FIRST_BACKOFF;
    }
}

/// A new HTTP/2 connection to the iris node at `addr`; `Err` says why not.
async fn dial(
    addr: SocketAddr,
    connect_timeout: Duration,
) -> Result<http2::SendRequest<Empty<Bytes>>, String> {
    let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("dial timed out after {connect_timeout:?}"))?
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::info!(%addr, error = %err, "iris connection closed");
        }
    });
    tracing::debug!(%addr, "connected to iris");
    Ok(sender)
}

/// The CONNECT for `request`: the authority and headers name the service and the caller.
fn connect_request(request: &FetchRequest) -> Result<Request<Empty<Bytes>>, ProxyError> {
    let mut builder = Request::builder()
        .method(Method::CONNECT)
        .uri(format!(
            "{}:{}",
            request.service_id,
            request.scheme.default_port()
        ))
        .header(SERVICE_ID_HEADER, request.service_id.to_string())
        .header(SCHEME_HEADER, request.scheme.as_str())
        .header(ORIGINAL_HOST_HEADER, request.host.as_str());
    for (name, value) in [
        (REQUEST_ID_HEADER, &request.caller.request_id),
        (ACCOUNT_HEADER, &request.caller.account),
        (SCRIPT_HEADER, &request.caller.script),
    ] {
        if value.is_empty() {
            continue;
        }
        let value = HeaderValue::from_str(value).map_err(|_| {
            ProxyError::new(ErrorCode::ProxyConfigurationError).with_details(format!(
                "binding context value for {name} is not a valid header value"
            ))
        })?;
        builder = builder.header(name, value);
    }
    builder.body(Empty::new()).map_err(|e| {
        ProxyError::new(ErrorCode::ProxyInternalError)
            .with_details(format!("cannot build the CONNECT: {e}"))
    })
}

/// The service's TLS settings from a `200` answer; without them, `verify_full` and no CA.
fn tls_policy(headers: &http::HeaderMap) -> Result<TlsPolicy, ProxyError> {
    use base64::Engine as _;
    let bad = |why: String| {
        ProxyError::new(ErrorCode::ProxyInternalError)
            .with_details(format!("iris answered the CONNECT with {why}"))
    };
    let verification = match headers.get(TLS_VERIFICATION_HEADER) {
        None => Verification::default(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(Verification::parse)
            .ok_or_else(|| bad(format!("an unknown {TLS_VERIFICATION_HEADER} {value:?}")))?,
    };
    let ca_certificate = match headers.get(TLS_CA_HEADER) {
        None => None,
        Some(value) => {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(value.as_bytes())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| bad(format!("a {TLS_CA_HEADER} that is not base64 of PEM text")))?;
            Some(pem)
        }
    };
    Ok(TlsPolicy {
        verification,
        ca_certificate,
    })
}

/// The error a non-200 CONNECT answer carries.
fn refusal(status: StatusCode, headers: &http::HeaderMap) -> ProxyError {
    headers
        .get(PROXY_STATUS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(ProxyError::from_proxy_status)
        .unwrap_or_else(|| {
            ProxyError::new(ErrorCode::ProxyInternalError).with_details(format!(
                "iris answered the CONNECT with {status} and no Proxy-Status error"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_without_proxy_status_is_an_internal_error() {
        let mut headers = http::HeaderMap::new();
        let err = refusal(StatusCode::BAD_GATEWAY, &headers);
        assert_eq!(err.code, ErrorCode::ProxyInternalError);
        headers.insert(
            PROXY_STATUS_HEADER,
            HeaderValue::from_static("iris; error=nonsense"),
        );
        assert_eq!(
            refusal(StatusCode::BAD_GATEWAY, &headers).code,
            ErrorCode::ProxyInternalError
        );
        headers.insert(
            PROXY_STATUS_HEADER,
            HeaderValue::from_static("iris; error=dns_error; rcode=\"NXDOMAIN\""),
        );
        assert_eq!(
            refusal(StatusCode::BAD_GATEWAY, &headers),
            ProxyError::dns("NXDOMAIN")
        );
    }
}
