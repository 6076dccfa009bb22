//! The CONNECT client to iris: one multiplexed HTTP/2 connection per iris node, dialled on
//! first use and re-dialled when it dies; every origin connection is one CONNECT stream.
//!
//! The CONNECT names the service (`<service-id>:<80|443>` plus `wvpc-service-id`) and the
//! scheme; iris picks the real port, resolves, dials through the tunnel and answers `200`, or
//! a failure status whose `Proxy-Status` header carries the code. A network binding's
//! CONNECT names the network instead (`wvpc-network`) and its authority is the destination
//! `host:port` (`[v6]:port`). `wvpc-scheme: tcp` is a script's `connect()`.
//!
//! The nodes are the `--iris` addresses, a name counting as every address it resolves to;
//! names are resolved again every [`IrisSettings::resolve_interval`] and, at most once a
//! second, after a dial failure or when no node could take a CONNECT (a node added to or
//! removed from the name is picked up; an unanswered lookup keeps the last addresses).
//!
//! CONNECTs go round-robin over the nodes that are up: any node can serve any tunnel (the
//! tunnel is connected to every node, or iris relays), so there is nothing to be sticky for,
//! and spreading keeps every connection exercised. A node whose dial fails is marked down
//! for a backoff (250 ms, doubling up to 5 s); a background task re-dials it when that is
//! over, and CONNECTs skip it until one succeeds — no fetch waits on a node known to be down.
//! A CONNECT that never got an answer head because of its node (the dial failed; the
//! connection closed or broke before the head; GOAWAY; REFUSED_STREAM), or that the node
//! answered with `destination_unavailable` (it holds no connection of the tunnel), is sent to
//! the next node — safe, as no request byte reaches the origin before iris answers `200`. A
//! CONNECT that timed out waiting for its head is not (iris may still be dialling the origin),
//! nor is any other answer iris gave. When no node could take it, the fetch fails at once with
//! `destination_unavailable`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as SyncMutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument as _;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_failover::Unanswered;

use crate::iris_address::IrisAddress;
use crate::origin_tls::{TlsPolicy, Verification};
use crate::request::{BindingTarget, Caller, FetchRequest};

/// Header names shared with iris (`wvpc_iris::connect`); repeated here because the two
/// binaries do not depend on each other.
const SERVICE_ID_HEADER: &str = "wvpc-service-id";
const NETWORK_HEADER: &str = "wvpc-network";
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

/// Least time between two lookups of the names asked for by failures.
const MIN_RESOLVE_GAP: Duration = Duration::from_secs(1);

/// HTTP/2 PINGs on every iris connection: a node that went silent (host down, partition)
/// is found within interval + timeout, and the CONNECTs waiting on it go to another node
/// instead of waiting out the CONNECT timeout.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// What one CONNECT asks iris for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectSpec<'a> {
    pub(crate) target: BindingTarget,
    /// `http`, `https` or `tcp`.
    pub(crate) scheme: &'static str,
    /// A network binding's destination: host (IPv6 without brackets) and port.
    pub(crate) destination: Option<(&'a str, u16)>,
    /// The URL's host as the script wrote it, for iris's logs.
    pub(crate) original_host: Option<&'a str>,
    pub(crate) caller: &'a Caller,
}

impl<'a> ConnectSpec<'a> {
    /// The CONNECT of a fetch.
    pub(crate) fn fetch(request: &'a FetchRequest) -> Self {
        Self {
            target: request.target,
            scheme: request.scheme.as_str(),
            destination: Some((request.host.as_str(), request.port)),
            original_host: Some(request.host.as_str()),
            caller: &request.caller,
        }
    }
}

/// `host:port`, an IPv6 literal in brackets (a URL host already has them).
pub(crate) fn authority_text(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Settings of the iris connections.
#[derive(Debug, Clone)]
pub(crate) struct IrisSettings {
    /// The `--iris` values (at least one).
    pub(crate) addresses: Vec<IrisAddress>,
    /// Bound on iris's answer to a CONNECT.
    pub(crate) connect_timeout: Duration,
    /// Bound on dialling a node (TCP and the HTTP/2 handshake).
    pub(crate) dial_timeout: Duration,
    /// How often names are looked up again.
    pub(crate) resolve_interval: Duration,
}

/// The connections to the iris nodes.
#[derive(Debug)]
pub(crate) struct IrisClient {
    shared: Arc<Shared>,
}

/// The current iris nodes, while the client lives.
#[derive(Debug, Clone)]
pub(crate) struct IrisNodesView(Weak<Shared>);

impl IrisNodesView {
    /// The node addresses in order, each with whether it is up (empty once the client is
    /// gone).
    pub(crate) fn nodes(&self) -> Vec<(SocketAddr, bool)> {
        self.0.upgrade().map_or_else(Vec::new, |shared| {
            shared
                .nodes()
                .iter()
                .map(|n| (n.addr, n.down().is_none()))
                .collect()
        })
    }
}

/// What the CONNECT path and the background tasks share.
#[derive(Debug)]
struct Shared {
    /// The current nodes; replaced whole when a name's addresses change.
    nodes: RwLock<Arc<[Arc<IrisNode>]>>,
    /// Round-robin position.
    next: AtomicUsize,
    connect_timeout: Duration,
    dial_timeout: Duration,
    /// Wakes the resolver (set when there are names).
    resolve_now: Option<Arc<Notify>>,
    /// Where background work runs.
    runtime: Handle,
    /// Stops the background tasks when the client goes.
    stopping: CancellationToken,
    _stop: DropGuard,
}

/// One iris node: its connection and whether it is up.
#[derive(Debug)]
struct IrisNode {
    addr: SocketAddr,
    /// A tokio mutex: while one task dials, the others wait for that connection.
    current: Mutex<LiveConnection>,
    health: SyncMutex<Health>,
    /// A background re-dial is scheduled.
    probing: AtomicBool,
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
    /// Set while the node is down: skipped until a re-dial succeeds.
    down_since: Option<Instant>,
    /// When the background re-dial is due.
    retry_at: Instant,
    /// The next backoff.
    backoff: Duration,
    /// Why its last dial failed.
    last_error: String,
}

impl IrisClient {
    /// Resolves the names of `settings` now (blocking), the first thing a worker does: a name
    /// that does not resolve is an error. Returns the addresses of each value, in order.
    pub(crate) fn resolve_at_start(
        settings: &IrisSettings,
    ) -> std::io::Result<Vec<Vec<SocketAddr>>> {
        settings
            .addresses
            .iter()
            .map(|address| {
                let addrs = address.resolve_blocking().map_err(|err| {
                    std::io::Error::new(
                        err.kind(),
                        format!("iris address {address} does not resolve: {err}"),
                    )
                })?;
                if address.name().is_some() {
                    tracing::info!(iris = %address, ?addrs, "iris name resolved");
                }
                Ok(addrs)
            })
            .collect()
    }

    /// The client for `settings`, whose values resolved to `known` (see
    /// [`Self::resolve_at_start`]). Background work (re-dials, lookups) runs on `runtime`.
    pub(crate) fn start(
        settings: IrisSettings,
        known: Vec<Vec<SocketAddr>>,
        runtime: Handle,
    ) -> Self {
        let stopping = CancellationToken::new();
        let has_names = settings.addresses.iter().any(|a| a.name().is_some());
        let resolve_now = has_names.then(|| Arc::new(Notify::new()));
        let shared = Arc::new(Shared {
            nodes: RwLock::new(Arc::from([])),
            next: AtomicUsize::new(0),
            connect_timeout: settings.connect_timeout,
            dial_timeout: settings.dial_timeout.min(settings.connect_timeout),
            resolve_now: resolve_now.clone(),
            runtime: runtime.clone(),
            stopping: stopping.clone(),
            _stop: stopping.clone().drop_guard(),
        });
        shared.set_nodes(known.iter().flatten().copied());
        if let Some(resolve_now) = resolve_now {
            runtime.spawn(resolve_names(
                Arc::downgrade(&shared),
                settings.addresses,
                known,
                settings.resolve_interval,
                resolve_now,
                stopping,
            ));
        }
        Self { shared }
    }

    /// Bound on CONNECT answers (reused for the origin TLS handshake).
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.shared.connect_timeout
    }

    /// A view of the node set that does not keep the client alive.
    pub(crate) fn nodes_view(&self) -> IrisNodesView {
        IrisNodesView(Arc::downgrade(&self.shared))
    }

    /// Opens a byte stream to what `request` names: a CONNECT answered with `200`, whose
    /// headers carry the service's TLS settings for `https`.
    pub(crate) async fn connect(
        &self,
        request: &ConnectSpec<'_>,
    ) -> Result<(Upgraded, TlsPolicy), ProxyError> {
        let span = tracing::info_span!(
            "iris_connect",
            scheme = request.scheme,
            iris = tracing::field::Empty,
            code = tracing::field::Empty,
        );
        let traceparent = wvpc_observe::trace::traceparent(&span)
            .and_then(|value| HeaderValue::try_from(value).ok());
        let connected = self
            .connect_traced(request, traceparent.as_ref())
            .instrument(span.clone())
            .await;
        if let Err(err) = &connected {
            span.record("code", tracing::field::display(err.code));
        }
        connected
    }

    /// [`Self::connect`] inside its span; `traceparent` goes on every CONNECT it sends.
    async fn connect_traced(
        &self,
        request: &ConnectSpec<'_>,
        traceparent: Option<&HeaderValue>,
    ) -> Result<(Upgraded, TlsPolicy), ProxyError> {
        let shared = &self.shared;
        let nodes = shared.nodes();
        let count = nodes.len();
        // Nodes this CONNECT is done with; a node whose reused connection turned out dead
        // gets one fresh dial first.
        let mut skip = vec![false; count];
        let mut redialled = vec![false; count];
        let mut failures = Vec::new();
        // The last `destination_unavailable` answer, returned as is when every node that
        // was tried gave one.
        let mut unavailable = None;
        let mut unavailable_answers = 0;
        // Where this CONNECT starts in the rotation; its retries go on from there, so a node
        // that cannot serve does not shift the spread onto its successor.
        let start = shared.next.fetch_add(1, Ordering::Relaxed);
        while let Some(i) = pick(&nodes, &skip, start) {
            let node = &nodes[i];
            let (generation, mut sender, reused) = match node.sender(shared).await {
                Ok(found) => found,
                Err(why) => {
                    skip[i] = true;
                    failures.push(format!("{}: {why}", node.addr));
                    continue;
                }
            };
            let mut connect = connect_request(request)?;
            if let Some(traceparent) = traceparent {
                connect
                    .headers_mut()
                    .insert(wvpc_observe::trace::TRACEPARENT, traceparent.clone());
            }
            tracing::Span::current().record("iris", tracing::field::display(&node.addr));
            let answer =
                tokio::time::timeout(shared.connect_timeout, sender.send_request(connect)).await;
            let response = match answer {
                Err(_elapsed) => {
                    return Err(ProxyError::new(ErrorCode::ConnectionTimeout).with_details(
                        format!(
                            "iris at {} did not answer the CONNECT within {:?}",
                            node.addr, shared.connect_timeout
                        ),
                    ));
                }
                Ok(Ok(response)) => response,
                Ok(Err(err)) => {
                    let Some(unanswered) = Unanswered::classify(&err, sender.is_closed()) else {
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
                let err = refusal(response.status(), response.headers());
                if err.code == ErrorCode::DestinationUnavailable {
                    // This node has no connection of the tunnel (and could not relay): it
                    // sent nothing towards the origin, another node may have one.
                    skip[i] = true;
                    tracing::debug!(iris = %node.addr, error = %err, "iris has no route for the CONNECT; trying another iris node");
                    failures.push(format!("{}: {err}", node.addr));
                    unavailable = Some(err);
                    unavailable_answers += 1;
                    continue;
                }
                return Err(err);
            }
            let tls = tls_policy(response.headers())?;
            let stream = hyper::upgrade::on(response).await.map_err(|err| {
                ProxyError::new(ErrorCode::ProxyInternalError).with_details(format!(
                    "iris accepted the CONNECT but the stream failed: {err}"
                ))
            })?;
            return Ok((stream, tls));
        }
        if let Some(err) = unavailable
            && unavailable_answers == failures.len()
        {
            return Err(err);
        }
        shared.resolve_soon();
        for (i, node) in nodes.iter().enumerate() {
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
}

impl Shared {
    fn nodes(&self) -> Arc<[Arc<IrisNode>]> {
        Arc::clone(&self.nodes.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes `addrs` the node set: nodes already known keep their connection and health.
    fn set_nodes(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut nodes = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
        let mut next: Vec<Arc<IrisNode>> = Vec::new();
        for addr in addrs {
            if next.iter().any(|n| n.addr == addr) {
                continue;
            }
            let node = nodes
                .iter()
                .find(|n| n.addr == addr)
                .cloned()
                .unwrap_or_else(|| Arc::new(IrisNode::new(addr)));
            next.push(node);
        }
        let added: Vec<_> = next
            .iter()
            .filter(|n| !nodes.iter().any(|o| o.addr == n.addr))
            .map(|n| n.addr)
            .collect();
        let removed: Vec<_> = nodes
            .iter()
            .filter(|o| !next.iter().any(|n| n.addr == o.addr))
            .map(|o| o.addr)
            .collect();
        if !nodes.is_empty() && (!added.is_empty() || !removed.is_empty()) {
            tracing::info!(?added, ?removed, "iris nodes changed");
        }
        *nodes = next.into();
    }

    /// Asks for the names to be looked up again (no-op without names).
    fn resolve_soon(&self) {
        if let Some(resolve_now) = &self.resolve_now {
            resolve_now.notify_one();
        }
    }
}

/// The first node from `start` in rotation order that is up and not in `skip`.
fn pick(nodes: &[Arc<IrisNode>], skip: &[bool], start: usize) -> Option<usize> {
    let count = nodes.len();
    (0..count)
        .map(|k| (start + k) % count)
        .find(|&i| !skip[i] && nodes[i].down().is_none())
}

/// Looks the names up every `interval`, and when asked (at most once per
/// [`MIN_RESOLVE_GAP`]); `known` holds each address's last good answer.
async fn resolve_names(
    shared: Weak<Shared>,
    addresses: Vec<IrisAddress>,
    mut known: Vec<Vec<SocketAddr>>,
    interval: Duration,
    resolve_now: Arc<Notify>,
    stopping: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stopping.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = resolve_now.notified() => {}
        }
        for (address, addrs) in addresses.iter().zip(known.iter_mut()) {
            if address.name().is_none() {
                continue;
            }
            match address.resolve().await {
                Ok(fresh) => {
                    if fresh != *addrs {
                        tracing::info!(iris = %address, from = ?addrs, to = ?fresh, "iris name resolves differently");
                        *addrs = fresh;
                    }
                }
                Err(err) => {
                    tracing::warn!(iris = %address, error = %err, kept = ?addrs, "cannot resolve the iris name; keeping its last addresses");
                }
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.set_nodes(known.iter().flatten().copied());
        drop(shared);
        tokio::select! {
            () = stopping.cancelled() => return,
            () = tokio::time::sleep(MIN_RESOLVE_GAP) => {}
        }
    }
}

impl IrisNode {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            current: Mutex::new(LiveConnection::default()),
            health: SyncMutex::new(Health {
                down_since: None,
                retry_at: Instant::now(),
                backoff: FIRST_BACKOFF,
                last_error: String::new(),
            }),
            probing: AtomicBool::new(false),
        }
    }

    /// The live connection, dialled if needed. `reused` tells whether it served before.
    /// `Err` (why) when the node is down or the dial failed (which marks it down).
    async fn sender(
        self: &Arc<Self>,
        shared: &Shared,
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
        match dial(self.addr, shared.dial_timeout).await {
            Ok(sender) => {
                self.mark_up();
                current.generation += 1;
                current.sender = Some(sender.clone());
                Ok((current.generation, sender, false))
            }
            Err(why) => {
                drop(current);
                self.mark_down(&why, shared);
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
        let since = health.down_since?;
        let left = health.retry_at.saturating_duration_since(Instant::now());
        Some(format!(
            "down for {} ms ({}), next try in {} ms",
            since.elapsed().as_millis(),
            health.last_error,
            left.as_millis()
        ))
    }

    /// Marks the node down and schedules its background re-dial.
    fn mark_down(self: &Arc<Self>, why: &str, shared: &Shared) {
        {
            let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            let backoff = health.backoff;
            if health.down_since.is_none() {
                tracing::warn!(iris = %self.addr, error = why, retry_ms = backoff.as_millis() as u64, "iris node unreachable; using the other nodes");
                health.down_since = Some(Instant::now());
            } else {
                tracing::debug!(iris = %self.addr, error = why, retry_ms = backoff.as_millis() as u64, "iris node still unreachable");
            }
            health.retry_at = Instant::now() + backoff;
            health.backoff = (backoff * 2).min(MAX_BACKOFF);
            why.clone_into(&mut health.last_error);
        }
        shared.resolve_soon();
        if !self.probing.swap(true, Ordering::AcqRel) {
            shared.runtime.spawn(redial(
                Arc::downgrade(self),
                shared.dial_timeout,
                shared.stopping.clone(),
            ));
        }
    }

    fn mark_up(&self) {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(since) = health.down_since.take() {
            tracing::info!(iris = %self.addr, down_ms = since.elapsed().as_millis() as u64, "iris node reachable again");
        }
        health.backoff = FIRST_BACKOFF;
    }
}

/// Re-dials a node that is down each time its backoff is over, until a dial succeeds (the
/// connection is kept for the next CONNECT), the node is dropped, or the client stops.
async fn redial(node: Weak<IrisNode>, dial_timeout: Duration, stopping: CancellationToken) {
    loop {
        let wait = match node.upgrade() {
            Some(node) => {
                let health = node.health.lock().unwrap_or_else(PoisonError::into_inner);
                health.retry_at.saturating_duration_since(Instant::now())
            }
            None => return,
        };
        tokio::select! {
            () = stopping.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let Some(node) = node.upgrade() else { return };
        {
            let health = node.health.lock().unwrap_or_else(PoisonError::into_inner);
            if health.down_since.is_none() {
                // A CONNECT's own dial brought it back.
                node.probing.store(false, Ordering::Release);
                return;
            }
            if health.retry_at > Instant::now() {
                continue;
            }
        }
        // Dialled without holding the connection's lock: a CONNECT never waits on a re-dial.
        match dial(node.addr, dial_timeout).await {
            Ok(sender) => {
                let mut current = node.current.lock().await;
                if current
                    .sender
                    .as_ref()
                    .is_none_or(http2::SendRequest::is_closed)
                {
                    current.generation += 1;
                    current.sender = Some(sender);
                }
                drop(current);
                node.probing.store(false, Ordering::Release);
                node.mark_up();
                return;
            }
            Err(why) => {
                let mut health = node.health.lock().unwrap_or_else(PoisonError::into_inner);
                tracing::debug!(iris = %node.addr, error = %why, retry_ms = health.backoff.as_millis() as u64, "iris node still unreachable");
                health.retry_at = Instant::now() + health.backoff;
                health.backoff = (health.backoff * 2).min(MAX_BACKOFF);
                health.last_error = why;
            }
        }
    }
}

/// A new HTTP/2 connection to the iris node at `addr`; `Err` says why not.
async fn dial(
    addr: SocketAddr,
    dial_timeout: Duration,
) -> Result<http2::SendRequest<Empty<Bytes>>, String> {
    tokio::time::timeout(dial_timeout, dial_unbounded(addr))
        .await
        .map_err(|_| format!("dial timed out after {dial_timeout:?}"))?
}

async fn dial_unbounded(addr: SocketAddr) -> Result<http2::SendRequest<Empty<Bytes>>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
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

/// The CONNECT for `request`: the authority and headers name the service (or the network
/// and destination) and the caller.
fn connect_request(request: &ConnectSpec<'_>) -> Result<Request<Empty<Bytes>>, ProxyError> {
    let mut builder = Request::builder().method(Method::CONNECT);
    builder = match (request.target, request.destination) {
        (BindingTarget::Service(id), _) => {
            // iris reads the port from the scheme header; the authority's is conventional.
            let port = if request.scheme == "https" { 443 } else { 80 };
            builder
                .uri(format!("{id}:{port}"))
                .header(SERVICE_ID_HEADER, id.to_string())
        }
        (BindingTarget::Network(network), Some((host, port))) => builder
            .uri(authority_text(host, port))
            .header(NETWORK_HEADER, network.to_string()),
        (BindingTarget::Network(network), None) => {
            return Err(ProxyError::new(ErrorCode::ProxyInternalError)
                .with_details(format!("a CONNECT into {network} without a destination")));
        }
    };
    builder = builder.header(SCHEME_HEADER, request.scheme);
    if let Some(host) = request.original_host {
        builder = builder.header(ORIGINAL_HOST_HEADER, host);
    }
    let caller = request.caller;
    for (name, value) in [
        (REQUEST_ID_HEADER, &caller.request_id),
        (ACCOUNT_HEADER, &caller.account),
        (SCRIPT_HEADER, &caller.script),
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
        // A destination host the URL or address parser let through but HTTP refuses.
        ProxyError::new(ErrorCode::HttpRequestError)
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
