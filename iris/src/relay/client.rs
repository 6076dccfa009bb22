//! [`RelayClient`]: one multiplexed HTTP/2 connection over mutual TLS per peer node, dialled
//! on first use and re-dialled when it dies; every relayed CONNECT is one stream on it.
//! Patterned on the binding-worker's CONNECT client to iris.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex as SyncMutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use uuid::Uuid;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_failover::Unanswered;

use super::{RELAY_MISS_HEADER, RELAYED_BY_HEADER, RelayAnswer, RelayConfig};
use crate::connect::PROXY_STATUS_HEADER;
use crate::metrics::IrisMetrics;
use crate::peers::RelayPeer;
use wvpc_tunnel::metrics::GaugeGuard;

/// The connections to peer nodes.
pub struct RelayClient {
    tls: TlsConnector,
    config: RelayConfig,
    metrics: Option<Arc<IrisMetrics>>,
    /// Per (node, address): a node that moved gets a new link.
    links: SyncMutex<HashMap<(String, SocketAddr), Arc<PeerLink>>>,
}

impl std::fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One peer: its connection and whether it is down.
struct PeerLink {
    node: String,
    addr: SocketAddr,
    /// A tokio mutex: while one CONNECT dials, the others wait for that connection.
    current: Mutex<LiveConnection>,
    /// Set while the peer is skipped: until when, and why.
    down: SyncMutex<Option<(Instant, String)>>,
}

/// The connection in use; `sender` is `None` until first use and after it died.
#[derive(Default)]
struct LiveConnection {
    /// Counts dials, so that a late `forget` cannot drop a newer connection.
    generation: u64,
    sender: Option<http2::SendRequest<Empty<Bytes>>>,
}

impl RelayClient {
    /// A client presenting `tls`'s certificate.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        config: RelayConfig,
        metrics: Option<Arc<IrisMetrics>>,
    ) -> Self {
        Self {
            tls: TlsConnector::from(tls),
            config,
            metrics,
            links: SyncMutex::default(),
        }
    }

    fn count(&self, result: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.relays.inc(result);
        }
    }

    /// Peer nodes skipped now because their last dial failed.
    pub fn peers_down(&self) -> Vec<String> {
        let links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        let mut down: Vec<String> = links
            .values()
            .filter(|link| link.down().is_some())
            .map(|link| link.node.clone())
            .collect();
        down.sort();
        down.dedup();
        down
    }

    fn link(&self, peer: &RelayPeer) -> Arc<PeerLink> {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        links
            .entry((peer.node.clone(), peer.addr))
            .or_insert_with(|| {
                Arc::new(PeerLink {
                    node: peer.node.clone(),
                    addr: peer.addr,
                    current: Mutex::default(),
                    down: SyncMutex::default(),
                })
            })
            .clone()
    }

    /// Tries `holders` in order (this node and peers marked down skipped).
    pub(crate) async fn forward(
        &self,
        tunnel: Uuid,
        holders: &[RelayPeer],
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<RelayAnswer, ProxyError> {
        let mut failures = Vec::new();
        for peer in holders {
            if peer.node == self.config.node_name {
                continue;
            }
            let link = self.link(peer);
            if let Some(why) = link.down() {
                failures.push(format!("{}: {why}", peer.node));
                continue;
            }
            let mut redialled = false;
            loop {
                let (generation, mut sender, reused) = match self.sender(&link).await {
                    Ok(found) => found,
                    Err(why) => {
                        self.count("peer_down");
                        failures.push(format!("{}: {why}", peer.node));
                        break;
                    }
                };
                let request = self.request(uri, headers)?;
                let timeout = self.config.answer_timeout;
                let answer = tokio::time::timeout(timeout, sender.send_request(request)).await;
                let response = match answer {
                    Err(_elapsed) => {
                        // The holder may be dialling the origin: not replayed elsewhere.
                        self.count("error");
                        return Err(ProxyError::new(ErrorCode::ConnectionTimeout).with_details(
                            format!(
                                "node {} did not answer the relayed CONNECT within {timeout:?}",
                                peer.node
                            ),
                        ));
                    }
                    Ok(Ok(response)) => response,
                    Ok(Err(err)) => {
                        let Some(unanswered) = Unanswered::classify(&err, sender.is_closed())
                        else {
                            self.count("error");
                            return Err(ProxyError::new(ErrorCode::ProxyInternalError)
                                .with_details(format!(
                                    "the relayed CONNECT to node {} failed: {err}",
                                    peer.node
                                )));
                        };
                        if unanswered.connection_gone {
                            link.forget(generation).await;
                            if reused && !redialled {
                                // A connection that died while idle: one fresh dial.
                                redialled = true;
                                continue;
                            }
                        }
                        tracing::debug!(peer = %peer.node, error = %err, "relayed CONNECT got no answer; trying another holder");
                        self.count("peer_down");
                        failures.push(format!("{}: {}", peer.node, unanswered.why));
                        break;
                    }
                };
                if response.headers().contains_key(RELAY_MISS_HEADER) {
                    self.count("miss");
                    failures.push(format!(
                        "{}: holds no usable connection of the tunnel any more",
                        peer.node
                    ));
                    break;
                }
                return self.answer(response, &peer.node).await;
            }
        }
        Err(
            ProxyError::new(ErrorCode::DestinationUnavailable).with_details(format!(
                "this node holds no connection of tunnel {tunnel} and no node holding one could take the CONNECT ({})",
                failures.join("; ")
            )),
        )
    }

    /// A holder's final answer, as this node passes it on.
    async fn answer(
        &self,
        response: http::Response<hyper::body::Incoming>,
        peer: &str,
    ) -> Result<RelayAnswer, ProxyError> {
        let status = response.status();
        if status != StatusCode::OK {
            self.count("refused");
            let proxy_status = response
                .headers()
                .get(PROXY_STATUS_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let error = proxy_status
                .as_deref()
                .and_then(ProxyError::from_proxy_status)
                .unwrap_or_else(|| {
                    ProxyError::new(ErrorCode::ProxyInternalError).with_details(format!(
                        "node {peer} answered the relayed CONNECT with {status} and no Proxy-Status error"
                    ))
                });
            return Ok(RelayAnswer::Refused {
                status,
                proxy_status,
                error,
                peer: peer.to_owned(),
            });
        }
        let mut headers = HeaderMap::new();
        for (name, value) in response.headers() {
            if name.as_str().starts_with("wvpc-") {
                headers.append(name.clone(), value.clone());
            }
        }
        let upgraded = hyper::upgrade::on(response).await.map_err(|err| {
            self.count("error");
            ProxyError::new(ErrorCode::ConnectionTerminated).with_details(format!(
                "node {peer} accepted the relayed CONNECT but its stream failed: {err}"
            ))
        })?;
        self.count("ok");
        let open = self
            .metrics
            .as_ref()
            .map(|metrics| GaugeGuard::raise(&metrics.relay_streams_open));
        Ok(RelayAnswer::Opened {
            io: Box::new(TokioIo::new(upgraded)),
            headers,
            peer: peer.to_owned(),
            open,
        })
    }

    /// The relayed CONNECT: the same authority, the caller's `wvpc-*` headers, and who relays.
    fn request(&self, uri: &Uri, headers: &HeaderMap) -> Result<Request<Empty<Bytes>>, ProxyError> {
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(uri.clone())
            .body(Empty::new())
            .map_err(|e| {
                ProxyError::new(ErrorCode::ProxyInternalError)
                    .with_details(format!("cannot build the relayed CONNECT: {e}"))
            })?;
        let forwarded = request.headers_mut();
        for (name, value) in headers {
            let name_text = name.as_str();
            if name_text.starts_with("wvpc-") && name_text != RELAYED_BY_HEADER {
                forwarded.append(name.clone(), value.clone());
            }
        }
        let me = HeaderValue::from_str(&self.config.node_name).map_err(|_| {
            ProxyError::new(ErrorCode::ProxyConfigurationError).with_details(format!(
                "node name {:?} is not a valid header value",
                self.config.node_name
            ))
        })?;
        forwarded.insert(RELAYED_BY_HEADER, me);
        // The holder's `connect` span is the child of this node's `relay` span (current).
        if let Some(parent) = wvpc_observe::trace::traceparent(&tracing::Span::current())
            .and_then(|value| HeaderValue::try_from(value).ok())
        {
            forwarded.insert(wvpc_observe::trace::TRACEPARENT, parent);
        }
        Ok(request)
    }

    /// The peer's live connection, dialled if needed; `reused` tells whether it served
    /// before. `Err` (why) when the dial failed, which marks the peer down.
    async fn sender(
        &self,
        link: &PeerLink,
    ) -> Result<(u64, http2::SendRequest<Empty<Bytes>>, bool), String> {
        let mut current = link.current.lock().await;
        if let Some(sender) = current.sender.as_ref()
            && !sender.is_closed()
        {
            return Ok((current.generation, sender.clone(), true));
        }
        // Another CONNECT may have failed to dial while this one waited for the lock.
        if let Some(why) = link.down() {
            return Err(why);
        }
        let timeout = self.config.dial_timeout;
        let dialled = tokio::time::timeout(timeout, self.dial(link))
            .await
            .unwrap_or_else(|_| Err(format!("dial timed out after {timeout:?}")));
        match dialled {
            Ok(sender) => {
                link.mark_up(self.metrics.as_deref());
                current.generation += 1;
                current.sender = Some(sender.clone());
                Ok((current.generation, sender, false))
            }
            Err(why) => {
                link.mark_down(&why, self.config.peer_down_for, self.metrics.as_deref());
                Err(why)
            }
        }
    }

    /// A new connection to the peer: TCP, mutual TLS for its node name, HTTP/2.
    async fn dial(&self, link: &PeerLink) -> Result<http2::SendRequest<Empty<Bytes>>, String> {
        let tcp = TcpStream::connect(link.addr)
            .await
            .map_err(|e| format!("connecting to {}: {e}", link.addr))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let name = ServerName::try_from(link.node.clone())
            .map_err(|_| format!("node name {:?} is not a DNS name", link.node))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {} failed: {e}", link.addr))?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(self.config.stream_window)
            .initial_connection_window_size(self.config.connection_window)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {} failed: {e}", link.addr))?;
        let (node, addr) = (link.node.clone(), link.addr);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::info!(peer = %node, %addr, error = %err, "relay connection closed");
            }
        });
        tracing::debug!(peer = %link.node, addr = %link.addr, "connected to relay peer");
        Ok(sender)
    }
}

impl PeerLink {
    /// `Some(why)` while the peer is marked down.
    fn down(&self) -> Option<String> {
        let down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        let (until, why) = down.as_ref()?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(format!("down ({why}), next try in {} ms", left.as_millis()))
    }

    fn mark_down(&self, why: &str, down_for: Duration, metrics: Option<&IrisMetrics>) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if down.is_none() {
            tracing::warn!(peer = %self.node, addr = %self.addr, error = why, skip_ms = down_for.as_millis() as u64, "relay peer unreachable; skipping it");
            if let Some(metrics) = metrics {
                metrics.relay_peers_down.inc();
            }
        }
        *down = Some((Instant::now() + down_for, why.to_owned()));
    }

    fn mark_up(&self, metrics: Option<&IrisMetrics>) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if down.take().is_some() {
            tracing::info!(peer = %self.node, addr = %self.addr, "relay peer reachable again");
            if let Some(metrics) = metrics {
                metrics.relay_peers_down.dec();
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
}
