//! The registry of live, registered tunnel connections, keyed by tunnel id. It is what
//! iris's router uses to reach a private network: [`TunnelRegistry`] implements
//! [`TunnelPool`] by opening streams (TCP) and UDP sessions (datagram v3 or v2, as the
//! connector advertised) on a live connection.
//!
//! **Spreading.** A new stream goes to the usable connection with the fewest open streams
//! (ties broken round-robin), across every connector (replica) of the tunnel. Draining
//! connections (the connector unregistered) and closed ones are never picked.
//!
//! **Failover.** A connection whose QUIC connection is seen closed (close frame, idle
//! timeout, failed stream open, or a peer found silent by [`super::liveness`] in about a
//! second) leaves the registry at once. A TCP flow is retried on
//! another live connection of the tunnel when its connection died *before the connector's
//! `ConnectResponse` arrived*: until that answer iris has sent nothing but the
//! `ConnectRequest` (the CONNECT is not answered yet, so no byte of the caller's request has
//! left iris), hence the origin has at most seen a TCP connection attempt, never a request.
//! A connector that answered, refused or reset the stream on a live connection is final.
//! Once the flow is piping, a dying connection ends it (the caller sees
//! `connection_terminated`); it is never replayed here: only the caller knows whether its
//! request may be sent again (the binding-worker repeats idempotent ones without a body).
//!
//! **Draining.** Each connection tracks its piping flows ([`FlowSet`]): a graceful drain
//! closes the idle ones (pooled keep-alive connections between requests) at once and waits
//! only for flows that carry a request.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use uuid::Uuid;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_tunnel::connect::{Metadata, metadata};
use wvpc_tunnel::flows::{Facing, FlowSet, TrackedIo};
use wvpc_tunnel::metrics::CountingIo;
use wvpc_tunnel::quic::CloseCode;
use wvpc_tunnel::{BiStream, ConnectRequest, ConnectResponse, DatagramVersion, RpcThread};

use super::admission::{Admission, AdmissionLimits};
use super::udp::SessionTable;
use crate::metrics::IrisMetrics;
use crate::tunnel_pool::{BoxFuture, BoxIo, FlowContext, TunnelPool, UdpFlow};

/// How long the edge waits for a connector's `ConnectResponse` (the connector's own dial
/// timeout is shorter, so this only fires when the connector is stuck).
const CONNECT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the edge knows about one registered connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Connection id the edge assigned (sent back in `connectionDetails.uuid`).
    pub connection_id: Uuid,
    /// The tunnel.
    pub tunnel_id: Uuid,
    /// The connector process (random per run).
    pub client_id: Uuid,
    /// HA connection index (0..).
    pub conn_index: u8,
    /// Connector version string.
    pub version: String,
    /// Connector platform, e.g. `linux_amd64`.
    pub arch: String,
    /// Feature strings the connector sent.
    pub features: Vec<String>,
    /// How UDP travels on this connection.
    pub datagram_version: DatagramVersion,
    /// The connector's address as seen by the edge.
    pub remote_addr: SocketAddr,
    /// The connector unregistered: no new flows go to this connection.
    pub draining: bool,
}

/// A live connection as the status page shows it.
#[derive(Debug, Clone)]
pub struct LiveConnection {
    /// What it registered with.
    pub info: ConnectionInfo,
    /// When it registered.
    pub since: SystemTime,
    /// TCP streams open on it now.
    pub streams_open: usize,
}

/// A registered connection.
pub(crate) struct EdgeConnection {
    pub(crate) info: ConnectionInfo,
    pub(crate) quic: quinn::Connection,
    draining: AtomicBool,
    pub(crate) sessions: SessionTable,
    /// The edge's RPC thread, for datagram-v2 session RPCs on this connection.
    pub(crate) rpc: Option<RpcThread>,
    /// TCP streams open on this connection (the load that spreading balances).
    open_streams: AtomicUsize,
    /// Streams waiting for the connector's `ConnectResponse`.
    opening: AtomicUsize,
    /// Piping TCP flows, with who spoke last on each.
    pub(crate) flows: Arc<FlowSet>,
    /// Wakes the liveness watcher when a stream starts opening on an idle connection.
    pub(crate) flow_started: Notify,
    /// When the connection registered.
    since: SystemTime,
}

impl EdgeConnection {
    pub(crate) fn new(info: ConnectionInfo, quic: quinn::Connection) -> Self {
        Self {
            info,
            quic,
            draining: AtomicBool::new(false),
            sessions: SessionTable::default(),
            rpc: None,
            open_streams: AtomicUsize::new(0),
            opening: AtomicUsize::new(0),
            flows: Arc::default(),
            flow_started: Notify::new(),
            since: SystemTime::now(),
        }
    }

    /// Lets datagram-v2 sessions on this connection make their RPCs on `rpc`.
    pub(crate) fn with_rpc(mut self, rpc: RpcThread) -> Self {
        self.rpc = Some(rpc);
        self
    }

    fn usable(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && self.quic.close_reason().is_none()
    }

    /// Whether something waits on the connector: a stream opening, a UDP session, or a flow
    /// awaiting or receiving an answer.
    pub(crate) fn waiting_on_peer(&self) -> bool {
        self.opening.load(Ordering::Acquire) > 0
            || !self.sessions.is_empty()
            || self.flows.any_busy()
    }

    fn snapshot(&self) -> ConnectionInfo {
        ConnectionInfo {
            draining: self.draining.load(Ordering::Acquire),
            ..self.info.clone()
        }
    }
}

/// Why a registration could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// The same connector already holds a live connection with this index.
    Duplicate,
    /// The QUIC connection closed before it could be recorded.
    Closed,
    /// The tunnel was deleted ([`TunnelRegistry::remove_tunnel`]) while this registration
    /// was being checked.
    TunnelRemoved,
}

/// Told when connections come and go (e.g. to publish them in a shared store for
/// `wvpc tunnel info`). Called outside the registry's lock; must not block for long.
pub trait ConnectionObserver: Send + Sync + 'static {
    /// A connection registered at `since`.
    fn connected(&self, info: &ConnectionInfo, since: SystemTime);
    /// A connection left (closed, replaced or dropped by the edge).
    fn disconnected(&self, info: &ConnectionInfo);
}

/// Live connections per tunnel. Cheap to share (`Arc`); all methods take `&self`.
pub struct TunnelRegistry {
    tunnels: Mutex<HashMap<Uuid, Vec<Arc<EdgeConnection>>>>,
    changed: Notify,
    next: AtomicUsize,
    udp_idle: Duration,
    metrics: Arc<IrisMetrics>,
    admission: Admission,
    observer: Mutex<Option<Arc<dyn ConnectionObserver>>>,
    /// Signalled whenever a tunnel stream closes (for draining).
    stream_closed: Arc<Notify>,
    /// Tunnels deleted while this node ran: a registration checked against credentials read
    /// just before the deletion is still refused. Taken inside the `tunnels` lock.
    removed: Mutex<HashSet<Uuid>>,
}

impl std::fmt::Debug for TunnelRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tunnels = self.lock().len();
        f.debug_struct("TunnelRegistry")
            .field("tunnels", &tunnels)
            .finish_non_exhaustive()
    }
}

impl Default for TunnelRegistry {
    fn default() -> Self {
        Self::new(super::udp::DEFAULT_UDP_IDLE)
    }
}

impl TunnelRegistry {
    /// An empty registry. `udp_idle` is the idle time announced to connectors for UDP
    /// sessions (they close a session after that long without traffic).
    pub fn new(udp_idle: Duration) -> Self {
        Self {
            tunnels: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            next: AtomicUsize::new(0),
            udp_idle,
            metrics: Arc::new(IrisMetrics::default()),
            admission: Admission::default(),
            observer: Mutex::new(None),
            stream_closed: Arc::new(Notify::new()),
            removed: Mutex::new(HashSet::new()),
        }
    }

    /// This registry with other registration flood limits.
    pub fn with_admission_limits(mut self, limits: AdmissionLimits) -> Self {
        self.admission = Admission::new(limits);
        self
    }

    /// This registry counting into `metrics` (shared with the router).
    pub fn with_metrics(mut self, metrics: Arc<IrisMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The metrics the edge counts into.
    pub fn metrics(&self) -> Arc<IrisMetrics> {
        self.metrics.clone()
    }

    /// Sets who is told about connections coming and going.
    pub fn set_observer(&self, observer: Arc<dyn ConnectionObserver>) {
        *self.observer.lock().unwrap_or_else(PoisonError::into_inner) = Some(observer);
    }

    fn observer(&self) -> Option<Arc<dyn ConnectionObserver>> {
        self.observer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a new connection from `ip` may start (source rate limit).
    pub(crate) fn admit_source(&self, ip: std::net::IpAddr) -> bool {
        let admitted = self.admission.admit_source(ip);
        if !admitted {
            self.metrics.connections_refused.inc();
        }
        admitted
    }

    /// Whether a registration for `tunnel` may be checked now (per-tunnel rate limit).
    pub(crate) fn admit_registration(&self, tunnel: Uuid) -> bool {
        self.admission.admit_tunnel(tunnel)
    }

    /// Counts a registration answer: `Ok`, or the refusal's cause.
    pub(crate) fn count_registration(&self, refusal_cause: Option<&str>) {
        let result = match refusal_cause {
            None => "ok",
            Some("EDUPCONN") => "duplicate",
            Some(c) if c.starts_with("Unauthorized") => "unauthorized",
            Some(c) if c.starts_with("rate limited") => "rate_limited",
            Some(c) if c.starts_with("invalid") => "invalid",
            Some(c) if c.starts_with(super::authority::UNAVAILABLE_CAUSE) => "unavailable",
            Some(_) => "refused",
        };
        self.metrics.registrations.inc(result);
    }

    /// Resolves once no tunnel stream is open (for a graceful drain).
    pub async fn wait_streams_closed(&self) {
        loop {
            let notified = self.stream_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.metrics.streams_open.get() <= 0 {
                return;
            }
            notified.await;
        }
    }

    /// Graceful drain of the flows: closes idle ones (pooled connections between requests)
    /// at once and each busy one as soon as it turns idle; resolves once no tunnel stream is
    /// open.
    pub async fn drain_streams(&self) {
        const TICK: Duration = Duration::from_millis(100);
        loop {
            let notified = self.stream_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let conns: Vec<Arc<EdgeConnection>> = self.lock().values().flatten().cloned().collect();
            for conn in conns {
                conn.flows.close_idle();
            }
            if self.metrics.streams_open.get() <= 0 {
                return;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Refreshes the connection gauges; call after every change, with the lock released.
    fn changed(&self) {
        let (mut active, mut draining) = (0, 0);
        for conns in self.lock().values() {
            for c in conns {
                if c.draining.load(Ordering::Acquire) {
                    draining += 1;
                } else {
                    active += 1;
                }
            }
        }
        self.metrics.set_connections(active, draining);
        self.changed.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Vec<Arc<EdgeConnection>>>> {
        self.tunnels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a connection of `tunnel_id` can take new streams now (registered, not
    /// draining, not closed): the router's choice between serving locally and relaying.
    pub fn has_usable_connection(&self, tunnel_id: Uuid) -> bool {
        self.lock()
            .get(&tunnel_id)
            .is_some_and(|conns| conns.iter().any(|c| c.usable()))
    }

    /// The live connections of a tunnel.
    pub fn connections(&self, tunnel_id: Uuid) -> Vec<ConnectionInfo> {
        self.lock()
            .get(&tunnel_id)
            .map(|conns| conns.iter().map(|c| c.snapshot()).collect())
            .unwrap_or_default()
    }

    /// Every live connection with when it registered and its open streams, by tunnel and
    /// index (the status page).
    pub fn live(&self) -> Vec<LiveConnection> {
        let mut live: Vec<LiveConnection> = self
            .lock()
            .values()
            .flatten()
            .map(|c| LiveConnection {
                info: c.snapshot(),
                since: c.since,
                streams_open: c.open_streams.load(Ordering::Relaxed),
            })
            .collect();
        live.sort_by_key(|c| (c.info.tunnel_id, c.info.conn_index, c.since));
        live
    }

    /// Tunnels with at least one live connection.
    pub fn tunnels(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    /// Resolves once the tunnel has a usable connection (at once if it already has one).
    pub async fn wait_for_connection(&self, tunnel_id: Uuid) {
        self.wait_until(tunnel_id, |conns| !conns.is_empty()).await;
    }

    /// Resolves once the tunnel has at least `count` usable connections.
    pub async fn wait_for_connections(&self, tunnel_id: Uuid, count: usize) {
        self.wait_until(tunnel_id, |conns| conns.len() >= count)
            .await;
    }

    /// Resolves once the tunnel has no connection left.
    pub async fn wait_for_no_connection(&self, tunnel_id: Uuid) {
        self.wait_until(tunnel_id, |conns| conns.is_empty()).await;
    }

    /// Resolves once `done` holds for every connection of the tunnel, draining ones included.
    pub async fn wait_for(&self, tunnel_id: Uuid, done: impl Fn(&[ConnectionInfo]) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.connections(tunnel_id)) {
                return;
            }
            notified.await;
        }
    }

    async fn wait_until(&self, tunnel_id: Uuid, done: impl Fn(&[ConnectionInfo]) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Register interest before checking, so a change in between is not missed.
            notified.as_mut().enable();
            let usable: Vec<ConnectionInfo> = self
                .connections(tunnel_id)
                .into_iter()
                .filter(|c| !c.draining)
                .collect();
            if done(&usable) {
                return;
            }
            notified.await;
        }
    }

    /// Records a registered connection. A live entry for the same connector process and index
    /// is a duplicate, unless it comes from the same address: then the connector reconnected
    /// from its socket before the edge noticed the old connection die, and the new one
    /// replaces it.
    pub(crate) fn record(&self, conn: Arc<EdgeConnection>) -> Result<(), RecordError> {
        let mut replaced = None;
        {
            let mut tunnels = self.lock();
            // Checked under the lock: a connection its task closes after this point is then
            // removed by that task (`forget` takes the lock too).
            if conn.quic.close_reason().is_some() {
                return Err(RecordError::Closed);
            }
            if self.removed_tunnel(conn.info.tunnel_id) {
                return Err(RecordError::TunnelRemoved);
            }
            let conns = tunnels.entry(conn.info.tunnel_id).or_default();
            if let Some(pos) = conns.iter().position(|c| {
                c.info.client_id == conn.info.client_id
                    && c.info.conn_index == conn.info.conn_index
                    && c.quic.close_reason().is_none()
            }) {
                if conns[pos].info.remote_addr != conn.info.remote_addr {
                    return Err(RecordError::Duplicate);
                }
                replaced = Some(conns.remove(pos));
            }
            conns.push(conn.clone());
        }
        let observer = self.observer();
        if let Some(old) = replaced {
            if let Some(observer) = &observer {
                observer.disconnected(&old.info);
            }
            tracing::info!(
                tunnel = %old.info.tunnel_id,
                connection = %old.info.connection_id,
                "connector reconnected from the same address; closing its previous connection"
            );
            old.sessions.clear();
            old.quic.close(
                CloseCode::Replaced.varint(),
                b"replaced by a newer connection",
            );
        }
        if let Some(observer) = &observer {
            observer.connected(&conn.info, conn.since);
        }
        self.changed();
        Ok(())
    }

    /// Stops routing new flows to a connection (the connector called `unregisterConnection`).
    pub(crate) fn drain(&self, tunnel_id: Uuid, connection_id: Uuid) {
        if let Some(conn) = self.find(tunnel_id, connection_id) {
            conn.draining.store(true, Ordering::Release);
            self.changed();
        }
    }

    /// Forgets whatever was recorded for a QUIC connection (it closed).
    pub(crate) fn forget(&self, quic: &quinn::Connection) {
        let id = quic.stable_id();
        let mut removed = Vec::new();
        self.lock().retain(|_, conns| {
            conns.retain(|c| {
                let this = c.quic.stable_id() == id;
                if this {
                    removed.push(c.clone());
                }
                !this
            });
            !conns.is_empty()
        });
        let observer = self.observer();
        for conn in &removed {
            conn.sessions.clear();
            if let Some(observer) = &observer {
                observer.disconnected(&conn.info);
            }
        }
        if !removed.is_empty() {
            self.changed();
        }
    }

    /// Closes every connection of a tunnel (e.g. its credentials rotated). Connectors
    /// reconnect and must register again, which re-checks their credentials. Returns how many
    /// connections were closed.
    pub fn disconnect_tunnel(&self, tunnel_id: Uuid) -> usize {
        let conns = self.lock().remove(&tunnel_id).unwrap_or_default();
        self.close_all(tunnel_id, conns, "tunnel disconnected by the edge")
    }

    /// The tunnel was deleted: closes its connections with [`CloseCode::Disconnected`] and
    /// `reason` (which connectors log), and refuses its registrations from now on, even one
    /// whose credentials were checked just before. Returns how many connections were closed.
    pub fn remove_tunnel(&self, tunnel_id: Uuid, reason: &str) -> usize {
        let conns = {
            let mut tunnels = self.lock();
            self.removed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(tunnel_id);
            tunnels.remove(&tunnel_id).unwrap_or_default()
        };
        self.close_all(tunnel_id, conns, reason)
    }

    /// Whether [`TunnelRegistry::remove_tunnel`] was called for the tunnel.
    pub fn removed_tunnel(&self, tunnel_id: Uuid) -> bool {
        self.removed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&tunnel_id)
    }

    fn close_all(&self, tunnel_id: Uuid, conns: Vec<Arc<EdgeConnection>>, reason: &str) -> usize {
        let observer = self.observer();
        for conn in &conns {
            conn.sessions.clear();
            if let Some(observer) = &observer {
                observer.disconnected(&conn.info);
            }
            conn.quic
                .close(CloseCode::Disconnected.varint(), reason.as_bytes());
        }
        if !conns.is_empty() {
            tracing::info!(tunnel = %tunnel_id, connections = conns.len(), %reason, "tunnel connections closed by the edge");
            self.changed();
        }
        conns.len()
    }

    fn find(&self, tunnel_id: Uuid, connection_id: Uuid) -> Option<Arc<EdgeConnection>> {
        self.lock()
            .get(&tunnel_id)?
            .iter()
            .find(|c| c.info.connection_id == connection_id)
            .cloned()
    }

    /// Usable connections of a tunnel, least-loaded first (ties rotate round-robin, so
    /// successive flows spread over idle connections too).
    fn candidates(&self, tunnel_id: Uuid) -> Vec<Arc<EdgeConnection>> {
        let mut conns: Vec<_> = self
            .lock()
            .get(&tunnel_id)
            .map(|c| c.iter().filter(|c| c.usable()).cloned().collect())
            .unwrap_or_default();
        if !conns.is_empty() {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % conns.len();
            conns.rotate_left(start);
            // Stable: equal loads keep the rotated order.
            conns.sort_by_key(|c| c.open_streams.load(Ordering::Relaxed));
        }
        conns
    }

    /// Stops using a connection seen dead (before its own task notices).
    fn retire(&self, conn: &EdgeConnection, why: &dyn std::fmt::Display) {
        tracing::info!(
            tunnel = %conn.info.tunnel_id,
            connection = %conn.info.connection_id,
            reason = %why,
            "tunnel connection failed; no more flows go to it"
        );
        self.forget(&conn.quic);
    }

    /// Opens a raw bidirectional stream on a live connection of the tunnel. The caller writes
    /// the preamble; [`TunnelPool::open_tcp`] is the usual way in.
    pub async fn open_stream(&self, tunnel_id: Uuid) -> Result<BiStream, ProxyError> {
        let candidates = self.candidates(tunnel_id);
        if candidates.is_empty() {
            return Err(no_connection(tunnel_id));
        }
        let mut last = None;
        for conn in candidates {
            match conn.quic.open_bi().await {
                Ok((send, recv)) => return Ok(BiStream::new(send, recv)),
                // That connection just died; the next one may be fine.
                Err(e) => {
                    self.retire(&conn, &e);
                    last = Some(e);
                }
            }
        }
        Err(
            ProxyError::new(ErrorCode::DestinationUnavailable).with_details(format!(
                "every connection of tunnel {tunnel_id} failed to open a stream: {}",
                last.map(|e| e.to_string()).unwrap_or_default()
            )),
        )
    }

    async fn connect_tcp(
        &self,
        tunnel_id: Uuid,
        dest: SocketAddr,
        ctx: &FlowContext,
    ) -> Result<BoxIo, ProxyError> {
        let flow_id = if ctx.request_id.is_empty() {
            Uuid::new_v4().to_string()
        } else {
            ctx.request_id.clone()
        };
        // The trace context of the span the flow is opened in (the router's `tunnel_open`),
        // for the connector's span of the stream.
        let trace = wvpc_observe::trace::cf_trace_id(&tracing::Span::current());
        let mut died: Option<ProxyError> = None;
        loop {
            // A connection that died is out of the registry, so it is not picked again.
            let Some(conn) = self.candidates(tunnel_id).into_iter().next() else {
                return Err(match died {
                    // The flow never reached the connector's dial: nothing else can serve it.
                    Some(err) => {
                        ProxyError::new(ErrorCode::DestinationUnavailable).with_details(format!(
                            "no live connection of tunnel {tunnel_id} is left ({})",
                            err.details.unwrap_or_default()
                        ))
                    }
                    None => no_connection(tunnel_id),
                });
            };
            match self
                .connect_on(&conn, dest, &flow_id, trace.as_deref())
                .await
            {
                Ok(stream) => return Ok(stream),
                Err(Failure::Final(err)) => return Err(err),
                Err(Failure::ConnectionDied(err)) => {
                    self.retire(&conn, &err);
                    self.metrics.stream_retries.inc();
                    tracing::debug!(tunnel = %tunnel_id, %dest, flow = %flow_id, "flow retried on another connection");
                    died = Some(err);
                }
            }
        }
    }

    /// One attempt on one connection. [`Failure::ConnectionDied`] only before the connector
    /// answered (see the module docs for why that is safe to retry).
    async fn connect_on(
        &self,
        conn: &Arc<EdgeConnection>,
        dest: SocketAddr,
        flow_id: &str,
        trace: Option<&str>,
    ) -> Result<BoxIo, Failure> {
        let terminated = |what: &str, e: &dyn std::fmt::Display| {
            ProxyError::new(ErrorCode::ConnectionTerminated)
                .with_details(format!("tunnel stream to {dest} {what}: {e}"))
        };
        let classify = |err: ProxyError| {
            if conn.quic.close_reason().is_some() {
                Failure::ConnectionDied(err)
            } else {
                Failure::Final(err)
            }
        };
        let (send, recv) = match conn.quic.open_bi().await {
            Ok(halves) => halves,
            Err(e) => return Err(Failure::ConnectionDied(terminated("could not open", &e))),
        };
        let mut stream = BiStream::new(send, recv);
        let guard = StreamGuard::enter(conn.clone(), self.metrics.clone(), &self.stream_closed);
        let opening = Opening::enter(conn);
        let mut request = ConnectRequest::tcp(dest, flow_id.to_owned());
        if let Some(trace) = trace {
            request
                .metadata
                .push(Metadata::new(metadata::CF_TRACE_ID, trace));
        }
        if let Err(e) = request.write(&mut stream.send).await {
            return Err(classify(terminated("failed while sending the request", &e)));
        }
        let response = match tokio::time::timeout(
            CONNECT_RESPONSE_TIMEOUT,
            ConnectResponse::read(&mut stream.recv),
        )
        .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                stream.abort();
                return Err(classify(terminated(
                    "failed before the connector answered",
                    &e,
                )));
            }
            Err(_) => {
                stream.abort();
                return Err(Failure::Final(
                    ProxyError::new(ErrorCode::ConnectionTimeout).with_details(format!(
                        "the connector did not answer for {dest} within {}s",
                        CONNECT_RESPONSE_TIMEOUT.as_secs()
                    )),
                ));
            }
        };
        if let Some(err) = response.failure_code() {
            stream.abort();
            tracing::debug!(tunnel = %conn.info.tunnel_id, %dest, code = %err.code, "connector refused the flow");
            return Err(Failure::Final(err));
        }
        self.metrics.streams.inc();
        let flow = conn.flows.enter();
        drop(opening);
        Ok(Box::new(TunnelStream {
            io: TrackedIo::new(
                CountingIo::new(stream, self.metrics.tunnel_bytes()),
                flow,
                Facing::Origin,
            ),
            _guard: guard,
        }))
    }

    async fn connect_udp(
        &self,
        tunnel_id: Uuid,
        dest: SocketAddr,
    ) -> Result<Box<dyn UdpFlow>, ProxyError> {
        let candidates = self.candidates(tunnel_id);
        // Each connection speaks the datagram version its connector advertised.
        let conn = candidates
            .into_iter()
            .next()
            .ok_or_else(|| no_connection(tunnel_id))?;
        let flow = match (conn.info.datagram_version, conn.rpc.clone()) {
            (DatagramVersion::V3, _) => super::udp::open(conn, dest, self.udp_idle).await?,
            (DatagramVersion::V2, Some(rpc)) => {
                super::udp_v2::open(conn, rpc, dest, self.udp_idle).await?
            }
            (DatagramVersion::V2, None) => {
                return Err(ProxyError::new(ErrorCode::ProxyInternalError)
                    .with_details("datagram-v2 connection without an RPC thread"));
            }
        };
        self.metrics.udp_sessions.inc();
        Ok(Box::new(CountedUdpFlow {
            flow,
            _open: wvpc_tunnel::metrics::GaugeGuard::raise(&self.metrics.udp_sessions_open),
        }))
    }
}

/// How one attempt at a TCP flow failed.
enum Failure {
    /// The answer (or a failure on a live connection): the flow fails with it.
    Final(ProxyError),
    /// The connection died before the connector answered: try another connection.
    ConnectionDied(ProxyError),
}

/// Counts a tunnel stream as open (per connection and overall) while alive.
struct StreamGuard {
    conn: Arc<EdgeConnection>,
    metrics: Arc<IrisMetrics>,
    closed: Arc<Notify>,
}

impl StreamGuard {
    fn enter(conn: Arc<EdgeConnection>, metrics: Arc<IrisMetrics>, closed: &Arc<Notify>) -> Self {
        conn.open_streams.fetch_add(1, Ordering::Relaxed);
        metrics.streams_open.inc();
        Self {
            conn,
            metrics,
            closed: closed.clone(),
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.conn.open_streams.fetch_sub(1, Ordering::Relaxed);
        self.metrics.streams_open.dec();
        self.closed.notify_waiters();
    }
}

/// A stream waiting for the connector's answer, which the liveness watcher must know about.
struct Opening<'a>(&'a EdgeConnection);

impl<'a> Opening<'a> {
    fn enter(conn: &'a EdgeConnection) -> Self {
        if conn.opening.fetch_add(1, Ordering::AcqRel) == 0 {
            conn.flow_started.notify_one();
        }
        Self(conn)
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.opening.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connected TCP flow through a tunnel, counted while it lives; its reads are the origin's
/// bytes, its writes the caller's.
struct TunnelStream {
    io: TrackedIo<CountingIo<BiStream>>,
    _guard: StreamGuard,
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A UDP flow counted as an open session while alive.
struct CountedUdpFlow {
    flow: Box<dyn UdpFlow>,
    _open: wvpc_tunnel::metrics::GaugeGuard,
}

impl UdpFlow for CountedUdpFlow {
    fn send(&self, payload: bytes::Bytes) -> BoxFuture<'_, Result<(), ProxyError>> {
        self.flow.send(payload)
    }
    fn recv(&self) -> BoxFuture<'_, Result<bytes::Bytes, ProxyError>> {
        self.flow.recv()
    }
}

fn no_connection(tunnel_id: Uuid) -> ProxyError {
    ProxyError::new(ErrorCode::DestinationUnavailable)
        .with_details(format!("no connector is connected for tunnel {tunnel_id}"))
}

impl TunnelPool for TunnelRegistry {
    fn has_usable_connection(&self, tunnel: Uuid) -> bool {
        TunnelRegistry::has_usable_connection(self, tunnel)
    }

    fn open_tcp<'a>(
        &'a self,
        tunnel: Uuid,
        dest: SocketAddr,
        ctx: &'a FlowContext,
    ) -> BoxFuture<'a, Result<BoxIo, ProxyError>> {
        Box::pin(self.connect_tcp(tunnel, dest, ctx))
    }

    fn open_udp<'a>(
        &'a self,
        tunnel: Uuid,
        dest: SocketAddr,
        _ctx: &'a FlowContext,
    ) -> BoxFuture<'a, Result<Box<dyn UdpFlow>, ProxyError>> {
        Box::pin(self.connect_udp(tunnel, dest))
    }
}
