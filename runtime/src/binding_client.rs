//! The capnp client of the binding-worker (`schemas/binding.capnp`, `VpcBinding.fetch` and
//! `VpcBinding.connect`).
//!
//! capnp-rpc objects are `!Send`, while wasmtime's host futures must be `Send`. So capnp
//! connections live in a `LocalSet` on a current-thread tokio runtime, and [`BindingClient`]
//! is the `Send` handle to them: a job goes in over an mpsc channel, the response head (or
//! error) comes back over a oneshot, and the response body is an mpsc-fed
//! [`http_body::Body`] that wasi-http hands to the script. Each serving thread
//! ([`crate::serving_threads`]) has connections of its own and takes the jobs of the fetches
//! made on it, so none of this crosses threads; a fetch made anywhere else goes to one
//! dedicated connection thread.
//!
//! Per fetch: the call is sent with a `ResponseReceiver` implemented here. A request body that
//! is already complete and small (a GET's empty one, a short JSON) goes inside the call when
//! the binding-worker has said it takes that; any other is streamed into the `requestBody`
//! ByteStream obtained by promise pipelining (before the call returns), and always ended — or
//! aborted if the script's body failed. The binding-worker later calls `deliver` once, with a
//! small whole response body inside, or returning the `ByteStream` that feeds the response
//! body.
//! Both bodies are flow-controlled by [`wvpc_schemas::byte_stream_flow`]: the request body is
//! written with a bounded window of unanswered bytes, and each response-body write is
//! answered once the script's body has taken its chunk.
//!
//! Per connect ([`BindingClient::connect`], the host side is [`crate::socket`]): once the
//! request's connection slot is free, the call is sent with a `SocketReceiver` implemented
//! here; the script's bytes are pumped into the returned `toDestination` (then `end()` at
//! the script's FIN, `abort()` when its request ends), and `opened` returns a `ByteStream`
//! that feeds the script's input stream, flow-controlled like a response body.
//!
//! One or more binding-workers: each gets one connection per thread, shared by all fetches
//! of that thread and re-established by the next fetch after it drops; with a [`PlatformSecret`],
//! each connection first passes the mutual handshake of [`wvpc_schemas::binding_auth`].
//! Fetches go round-robin over the binding-workers that are up. One whose dial or handshake
//! fails is marked down for a backoff (250 ms, doubling up to 5 s) and skipped until then;
//! the first fetch after it is the next try, so the runtime recovers by itself.
//!
//! A fetch that could not be sent goes to the next binding-worker: its dial or handshake
//! failed, or it found the reused connection already dead (or the binding-worker draining)
//! before any body bytes were taken. When none could take it, it fails with
//! `destination_unavailable`. A fetch in flight when its connection drops fails with
//! `proxy_internal_error` (the binding-worker may have acted on it, and its body may be
//! consumed).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use capnp::capability::Rc as CapRc;
use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use futures::FutureExt as _;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use wasmtime_wasi_http::WasiBody;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::binding_auth::{HANDSHAKE_TIMEOUT, handshake_as_runtime};
use wvpc_schemas::binding_capnp::{
    binding_context, byte_stream, connect_result, fetch_result, response_receiver, socket_receiver,
    vpc_binding,
};
use wvpc_schemas::byte_stream_flow::{InboxError, InboxReceiver, InboxSender, Taken};
use wvpc_schemas::{
    INLINE_BODY_MAX, MAX_HEAD_HEADERS, NetworkTarget, PlatformSecret, RPC_BUFFER, StreamWriter,
    inbox, read_wire_error,
};

use crate::error_map::wasi_http_error;
use crate::exchange_tap::ExchangeTap;

/// How long connecting to a binding-worker may take before it counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a binding-worker stays marked down after its first failed dial; doubled per
/// further failure, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a binding reaches: the capnp `BindingContext`'s `serviceId`, or its `tunnelId` /
/// `networkId` (then the URL or the `connect()` address is the destination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BindingTarget {
    /// A `vpc_services` binding: the VPC Service id (hyphenated UUID).
    Service(String),
    /// A `vpc_networks` binding.
    Network(NetworkTarget),
}

/// Who is asking, carried in every fetch as the capnp `BindingContext`.
#[derive(Debug, Clone)]
pub(crate) struct FetchContext {
    pub target: BindingTarget,
    pub script: String,
    pub account: String,
    pub request_id: String,
    pub binding: String,
    /// Where the call's time and outcome are counted (`--metrics`).
    pub probe: Option<Arc<crate::metrics::BindingMetrics>>,
    /// The fetch's (or connect's) span: its context goes out as `traceParent`, and a
    /// failure's code is recorded on it.
    pub span: tracing::Span,
}

type FetchReply = Result<http::Response<WasiBody>, ProxyError>;

struct FetchJob {
    context: FetchContext,
    request: http::Request<WasiBody>,
    reply: oneshot::Sender<FetchReply>,
}

/// One `vpc.connect`, as the host side ([`crate::socket`]) hands it to the thread that
/// serves it: the ends of the two byte streams, and where the outcome goes.
pub(crate) struct ConnectJob {
    pub context: FetchContext,
    /// The destination (network binding) or empty (service binding).
    pub address: String,
    /// The connection slot of the request's limits, waited for before anything is sent.
    pub slot: crate::limits::Connection,
    /// The script's bytes towards the destination; closed by the script's FIN.
    pub to_destination: mpsc::Receiver<Bytes>,
    /// Where the destination's bytes go (the script's input stream reads the other end).
    pub from_destination: InboxSender<BodyEvent>,
    /// Why writing towards the destination stopped, for the script's output stream.
    pub write_failed: Arc<std::sync::OnceLock<ProxyError>>,
    /// Cancelled when the request that opened the socket ends: the connection is reset.
    pub request_ended: CancellationToken,
    /// The outcome: the slot, held by the socket from now on, or why it did not open.
    pub opened: oneshot::Sender<Result<OwnedSemaphorePermit, ProxyError>>,
}

/// What a serving thread is asked to do.
enum Job {
    Fetch(FetchJob),
    Connect(ConnectJob),
}

/// `Send` handle to the binding-worker connection thread. Cloning is cheap; the thread ends
/// when the last clone is dropped. Threads that serve requests serve their own fetches
/// instead ([`BindingClient::serve_on_this_thread`]).
#[derive(Clone)]
pub(crate) struct BindingClient {
    jobs: mpsc::UnboundedSender<Job>,
    /// Which binding-workers, with which secret: what every thread's connections are made to.
    target: Arc<Target>,
    /// Given every exchange, when the runtime records them.
    tap: Option<Arc<dyn ExchangeTap>>,
}

/// The binding-workers of a client and the secret they prove they hold.
struct Target {
    binding_workers: Vec<SocketAddr>,
    secret: Option<PlatformSecret>,
}

impl Target {
    /// Fresh connection slots for one thread (built there: connections are `!Send`).
    fn workers(&self) -> Workers {
        Workers {
            slots: self
                .binding_workers
                .iter()
                .copied()
                .map(WorkerSlot::new)
                .collect(),
            next: Cell::new(0),
            secret: self.secret.clone(),
        }
    }
}

thread_local! {
    /// The job queues of the clients whose fetches are served on this thread, by client
    /// ([`BindingClient::key`]).
    static LOCAL_JOBS: RefCell<Vec<(usize, mpsc::UnboundedSender<Job>)>> =
        const { RefCell::new(Vec::new()) };
}

impl BindingClient {
    /// Starts the connection thread for these binding-workers (at least one), which prove
    /// they hold `secret` when there is one. It connects lazily, on the first fetch.
    pub fn start(
        binding_workers: Vec<SocketAddr>,
        secret: Option<PlatformSecret>,
        tap: Option<Arc<dyn ExchangeTap>>,
    ) -> std::io::Result<Self> {
        if binding_workers.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no binding-worker address given: the runtime needs at least one",
            ));
        }
        let target = Arc::new(Target {
            binding_workers,
            secret,
        });
        let (jobs, rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let own = target.clone();
        std::thread::Builder::new()
            .name("wvpc-binding-rpc".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, serve_jobs(own.workers(), rx));
            })?;
        Ok(Self { jobs, target, tap })
    }

    /// Serves the fetches made on this thread here, over connections of this thread's own,
    /// instead of on the connection thread: a fetch then wakes no other thread. Must be
    /// called inside a `LocalSet` that keeps being driven.
    pub fn serve_on_this_thread(&self) {
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::task::spawn_local(serve_jobs(self.target.workers(), rx));
        LOCAL_JOBS.with(|local| local.borrow_mut().push((self.key(), jobs)));
    }

    /// Tells this client apart from others in [`LOCAL_JOBS`].
    fn key(&self) -> usize {
        Arc::as_ptr(&self.target) as usize
    }

    /// Queues `job` on this thread when this thread serves the client's fetches; gives it
    /// back otherwise.
    fn send_here(&self, job: Job) -> Option<Job> {
        LOCAL_JOBS.with(|local| {
            let local = local.borrow();
            match local.iter().find(|(key, _)| *key == self.key()) {
                Some((_, jobs)) => jobs.send(job).err().map(|returned| returned.0),
                None => Some(job),
            }
        })
    }

    /// The exchange tap, if the runtime records exchanges.
    pub fn tap(&self) -> Option<&Arc<dyn ExchangeTap>> {
        self.tap.as_ref()
    }

    /// Sends `request` through the binding described by `context` and waits for the response
    /// head. `first_byte_timeout` bounds that wait (`http_response_timeout`).
    pub async fn fetch(
        &self,
        context: FetchContext,
        request: http::Request<WasiBody>,
        first_byte_timeout: Option<Duration>,
    ) -> FetchReply {
        let (reply, response) = oneshot::channel();
        let job = Job::Fetch(FetchJob {
            context,
            request,
            reply,
        });
        self.dispatch(job)?;
        let response = async {
            response.await.unwrap_or_else(|_| {
                Err(ProxyError::new(ErrorCode::ProxyInternalError)
                    .with_details("the binding-worker ended the fetch without a response"))
            })
        };
        match first_byte_timeout {
            None => response.await,
            Some(limit) => tokio::time::timeout(limit, response)
                .await
                .unwrap_or_else(|_| {
                    Err(ProxyError::new(ErrorCode::HttpResponseTimeout)
                        .with_details(format!("no response head within {limit:?}")))
                }),
        }
    }

    /// Opens a raw TCP connection through the binding (`VpcBinding.connect`), on this thread
    /// when it serves the client's calls. The outcome arrives through `job.opened`.
    pub fn connect(&self, job: ConnectJob) {
        if let Err(err) = self.dispatch(Job::Connect(job)) {
            tracing::error!(error = %err, "connect could not be queued");
        }
    }

    /// Queues `job` on this thread, or on the connection thread. A job that cannot be queued
    /// is answered with `proxy_internal_error` (a fetch's is also returned as `Err`).
    fn dispatch(&self, job: Job) -> Result<(), ProxyError> {
        let Some(job) = self.send_here(job) else {
            return Ok(());
        };
        let stopped = || {
            ProxyError::new(ErrorCode::ProxyInternalError)
                .with_details("the binding-worker client thread has stopped")
        };
        match self.jobs.send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(Job::Connect(job))) => {
                let _ = job.opened.send(Err(stopped()));
                Err(stopped())
            }
            Err(_) => Err(stopped()),
        }
    }
}

// === connection thread ===

/// The live capnp connection, if any.
#[derive(Clone)]
struct Connection {
    binding: vpc_binding::Client,
    /// Cleared when the RPC system ends (peer closed, I/O error) or a call finds it dead.
    alive: Rc<Cell<bool>>,
    /// The binding-worker answered a fetch with `takesInlineRequestBody`: a small, complete
    /// request body may go inside the call.
    takes_inline_request_body: Rc<Cell<bool>>,
}

/// The binding-workers, each with its connection.
struct Workers {
    slots: Vec<WorkerSlot>,
    /// Round-robin position.
    next: Cell<usize>,
    secret: Option<PlatformSecret>,
}

impl Workers {
    /// The next binding-worker in round-robin order that is up and not in `skip`.
    fn pick(&self, skip: &[bool]) -> Option<usize> {
        let count = self.slots.len();
        let start = self.next.get() % count;
        self.next.set(start + 1);
        (0..count)
            .map(|k| (start + k) % count)
            .find(|&i| !skip[i] && self.slots[i].down().is_none())
    }
}

/// One binding-worker: its connection, (re)established on demand, and whether it is up.
struct WorkerSlot {
    addr: SocketAddr,
    current: tokio::sync::Mutex<Option<Connection>>,
    health: RefCell<Health>,
}

/// Whether a binding-worker is skipped, and for how long.
struct Health {
    /// Set while it is down: skipped until then.
    down_until: Option<Instant>,
    /// The next backoff.
    backoff: Duration,
    /// Why its last dial failed.
    last_error: String,
}

impl WorkerSlot {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            current: tokio::sync::Mutex::new(None),
            health: RefCell::new(Health {
                down_until: None,
                backoff: FIRST_BACKOFF,
                last_error: String::new(),
            }),
        }
    }

    /// The live connection, connecting first if there is none. `reused` tells whether it
    /// existed before this call (and so may have died unnoticed). `Err` (why) when the
    /// binding-worker is down or the dial failed (which marks it down).
    async fn get(&self, secret: Option<&PlatformSecret>) -> Result<(Connection, bool), String> {
        // Held across the connect: concurrent fetches wait for one connection attempt.
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref().filter(|c| c.alive.get()) {
            return Ok((c.clone(), true));
        }
        // Another fetch may have failed to connect while this one waited for the lock.
        if let Some(why) = self.down() {
            return Err(why);
        }
        match connect(self.addr, secret).await {
            Ok(c) => {
                self.mark_up();
                *current = Some(c.clone());
                Ok((c, false))
            }
            Err(why) => {
                self.mark_down(&why);
                Err(why)
            }
        }
    }

    /// `Some(why)` while the binding-worker is marked down.
    fn down(&self) -> Option<String> {
        let health = self.health.borrow();
        let left = health.down_until?.checked_duration_since(Instant::now())?;
        Some(format!(
            "down ({}), next try in {} ms",
            health.last_error,
            left.as_millis()
        ))
    }

    fn mark_down(&self, why: &str) {
        let mut health = self.health.borrow_mut();
        let backoff = health.backoff;
        // The failed fetch is logged where it is answered (`outbound`); this is the detail.
        if health.down_until.is_none() {
            tracing::warn!(binding_worker = %self.addr, error = why, retry_ms = backoff.as_millis() as u64, "binding-worker unreachable; using the others");
        } else {
            tracing::debug!(binding_worker = %self.addr, error = why, retry_ms = backoff.as_millis() as u64, "binding-worker still unreachable");
        }
        health.down_until = Some(Instant::now() + backoff);
        health.backoff = (backoff * 2).min(MAX_BACKOFF);
        why.clone_into(&mut health.last_error);
    }

    fn mark_up(&self) {
        let mut health = self.health.borrow_mut();
        if health.down_until.take().is_some() {
            tracing::info!(binding_worker = %self.addr, "binding-worker reachable again");
        }
        health.backoff = FIRST_BACKOFF;
    }
}

async fn serve_jobs(workers: Workers, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let workers = Rc::new(workers);
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Fetch(job) => {
                let span = job.context.span.clone();
                tokio::task::spawn_local(fetch(workers.clone(), job).instrument(span))
            }
            Job::Connect(job) => {
                let span = job.context.span.clone();
                tokio::task::spawn_local(connect_socket(workers.clone(), job).instrument(span))
            }
        };
    }
}

/// A new connection to the binding-worker at `addr`, authenticated when there is a secret;
/// `Err` says why not.
async fn connect(addr: SocketAddr, secret: Option<&PlatformSecret>) -> Result<Connection, String> {
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("dial timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    if let Some(secret) = secret {
        handshake_as_runtime(&mut stream, secret, HANDSHAKE_TIMEOUT)
            .await
            .map_err(|e| format!("platform handshake failed: {e}"))?;
    }
    let (read, write) = stream.into_split();
    // Buffered both ways: a capnp message is a segment table and its segments, and each
    // would otherwise be its own read or write system call.
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::with_capacity(RPC_BUFFER, read.compat()),
        futures::io::BufWriter::with_capacity(RPC_BUFFER, write.compat_write()),
        rpc_twoparty_capnp::Side::Client,
        Default::default(),
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let binding: vpc_binding::Client = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
    let alive = Rc::new(Cell::new(true));
    let flag = alive.clone();
    tokio::task::spawn_local(async move {
        match rpc.await {
            Ok(()) => tracing::info!(binding_worker = %addr, "binding-worker connection closed"),
            Err(e) => {
                tracing::warn!(binding_worker = %addr, error = %e, "binding-worker connection lost");
            }
        }
        flag.set(false);
    });
    tracing::debug!(binding_worker = %addr, "connected to the binding-worker");
    Ok(Connection {
        binding,
        alive,
        takes_inline_request_body: Rc::new(Cell::new(false)),
    })
}

/// The pending reply of one fetch: whoever fails or delivers first answers the script.
type ReplySlot = Rc<RefCell<Option<oneshot::Sender<FetchReply>>>>;

fn answer(slot: &ReplySlot, reply: FetchReply) {
    if let Some(tx) = slot.borrow_mut().take() {
        // The script may have stopped waiting; nothing to do then.
        let _ = tx.send(reply);
    }
}

async fn fetch(workers: Rc<Workers>, job: FetchJob) {
    let FetchJob {
        context,
        request,
        reply,
    } = job;
    let reply: ReplySlot = Rc::new(RefCell::new(Some(reply)));
    let (head, mut body) = request.into_parts();
    let start = BodyStart::take(&mut body);
    let count = workers.slots.len();
    // Binding-workers this fetch is done with; a stale connection does not count (the next
    // try may re-dial the same binding-worker), but only so many times.
    let mut skip = vec![false; count];
    let mut stale_retries = 0;
    let mut failures = Vec::new();
    while let Some(i) = workers.pick(&skip) {
        let slot = &workers.slots[i];
        let (connection, reused) = match slot.get(workers.secret.as_ref()).await {
            Ok(c) => c,
            Err(why) => {
                skip[i] = true;
                failures.push(format!("{}: {why}", slot.addr));
                continue;
            }
        };
        let pulled_data = Cell::new(false);
        let Err(err) = attempt(
            &connection,
            &context,
            &head,
            &start,
            &mut body,
            &pulled_data,
            &reply,
        )
        .await
        else {
            return;
        };
        if err.kind == capnp::ErrorKind::Disconnected {
            connection.alive.set(false);
            // A connection that died (or a binding-worker that started draining) before this
            // call was taken: nothing reached an origin, so sending it again cannot duplicate
            // the request.
            if reused && !pulled_data.get() && stale_retries < 2 * count {
                stale_retries += 1;
                tracing::debug!(request_id = %context.request_id, binding_worker = %slot.addr, error = %err, "binding-worker connection was stale; sending the fetch again");
                continue;
            }
        }
        tracing::debug!(request_id = %context.request_id, binding_worker = %slot.addr, error = %err, "binding fetch call failed");
        let err = ProxyError::new(ErrorCode::ProxyInternalError)
            .with_details(format!("binding-worker call failed: {err}"));
        return answer(&reply, Err(err));
    }
    for (i, slot) in workers.slots.iter().enumerate() {
        if !skip[i]
            && let Some(why) = slot.down()
        {
            failures.push(format!("{}: {why}", slot.addr));
        }
    }
    let err = ProxyError::new(ErrorCode::DestinationUnavailable).with_details(format!(
        "no binding-worker is reachable ({})",
        failures.join("; ")
    ));
    answer(&reply, Err(err));
}

/// Fills a capnp `BindingContext`.
fn write_context(mut ctx: binding_context::Builder<'_>, context: &FetchContext) {
    match &context.target {
        BindingTarget::Service(id) => ctx.set_service_id(id.as_str()),
        BindingTarget::Network(network) => {
            if let Some(tunnel) = network.tunnel_id() {
                ctx.set_tunnel_id(tunnel.hyphenated().to_string().as_str());
            }
            if let Some(network_id) = network.network_id() {
                ctx.set_network_id(network_id.as_str());
            }
        }
    }
    ctx.set_script(context.script.as_str());
    ctx.set_account(context.account.as_str());
    ctx.set_request_id(context.request_id.as_str());
    ctx.set_binding(context.binding.as_str());
    if let Some(parent) = wvpc_observe::trace::traceparent(&context.span) {
        ctx.set_trace_parent(parent.as_str());
    }
}

/// One `vpc.connect`: waits for a connection slot of the request, calls `VpcBinding.connect`
/// (again on the next binding-worker when a reused connection turns out dead before the call
/// was taken, as a fetch does), answers the script once `opened` arrives, then pumps the
/// script's bytes into `toDestination` until the script's FIN (`end`) or the end of its
/// request (`abort`). The destination's bytes flow the other way through the `BodySink` that
/// `opened` returns, straight into the script's input stream.
async fn connect_socket(workers: Rc<Workers>, job: ConnectJob) {
    let ConnectJob {
        context,
        address,
        slot,
        mut to_destination,
        from_destination,
        write_failed,
        request_ended,
        mut opened,
    } = job;
    // A script may drop its pending socket, or its request end, while the slot is awaited.
    let permit = tokio::select! {
        permit = slot.acquire() => permit,
        () = opened.closed() => return,
        () = request_ended.cancelled() => return,
    };
    // The call's time, as for a fetch, starts once it holds its connection slot.
    let started = Instant::now();
    let (outcome_tx, outcome) = oneshot::channel();
    let called = Rc::new(Cell::new(false));
    let receiver: socket_receiver::Client = capnp_rpc::new_client(SocketOpener {
        outcome: RefCell::new(Some(outcome_tx)),
        sink: RefCell::new(Some(from_destination)),
        request_ended: request_ended.clone(),
        called: called.clone(),
    });
    let fail = |opened: oneshot::Sender<_>, err: ProxyError| {
        log_connect_error(&context, &err);
        if let Some(probe) = &context.probe {
            probe.failed(&err);
        }
        let _ = opened.send(Err(err));
    };
    let count = workers.slots.len();
    let mut skip = vec![false; count];
    let mut stale_retries = 0;
    let mut failures = Vec::new();
    let stream = loop {
        let Some(i) = workers.pick(&skip) else {
            for (i, slot) in workers.slots.iter().enumerate() {
                if !skip[i]
                    && let Some(why) = slot.down()
                {
                    failures.push(format!("{}: {why}", slot.addr));
                }
            }
            let err = ProxyError::new(ErrorCode::DestinationUnavailable).with_details(format!(
                "no binding-worker is reachable ({})",
                failures.join("; ")
            ));
            return fail(opened, err);
        };
        let slot = &workers.slots[i];
        let (connection, reused) = match slot.get(workers.secret.as_ref()).await {
            Ok(c) => c,
            Err(why) => {
                skip[i] = true;
                failures.push(format!("{}: {why}", slot.addr));
                continue;
            }
        };
        let mut call = connection.binding.connect_request();
        {
            let mut params = call.get();
            write_context(params.reborrow().init_context(), &context);
            params.set_address(address.as_str());
            params.set_receiver(receiver.clone());
        }
        let err = match call.send().promise.await {
            Ok(response) => match response.get().and_then(|r| r.get_to_destination()) {
                Ok(stream) => break stream,
                Err(err) => err,
            },
            Err(err) => err,
        };
        if err.kind == capnp::ErrorKind::Disconnected {
            connection.alive.set(false);
            // Nothing was written yet and the destination was not reached: trying again
            // cannot open two connections.
            if reused && !called.get() && stale_retries < 2 * count {
                stale_retries += 1;
                tracing::debug!(request_id = %context.request_id, binding_worker = %slot.addr, error = %err, "binding-worker connection was stale; sending the connect again");
                continue;
            }
        }
        let err = ProxyError::new(ErrorCode::ProxyInternalError)
            .with_details(format!("binding-worker connect call failed: {err}"));
        return fail(opened, err);
    };
    // Only the binding-worker holds the receiver now: if its connection breaks before
    // `opened`, the outcome channel closes instead of waiting for ever.
    drop(receiver);
    let mut writer = StreamWriter::new(stream);
    let outcome = tokio::select! {
        outcome = outcome => outcome.unwrap_or_else(|_| {
            Err(ProxyError::new(ErrorCode::ProxyInternalError)
                .with_details("the binding-worker ended the connect without opening it"))
        }),
        () = opened.closed() => Err(ProxyError::new(ErrorCode::ConnectionTerminated)
            .with_details("the script dropped the socket while it was being opened")),
        () = request_ended.cancelled() => Err(ProxyError::new(ErrorCode::ConnectionTerminated)
            .with_details("the request that opened the socket ended")),
    };
    if let Err(err) = outcome {
        let _ = writer.abort(&err).await;
        return fail(opened, err);
    }
    tracing::debug!(request_id = %context.request_id, binding = %context.binding, "socket opened");
    if let Some(probe) = &context.probe {
        probe.connected(started.elapsed());
    }
    if opened.send(Ok(permit)).is_err() {
        let err = ProxyError::new(ErrorCode::ConnectionTerminated)
            .with_details("the script dropped the socket while it was being opened");
        let _ = writer.abort(&err).await;
        return;
    }
    // The script's bytes, in order, then its FIN; a reset when its request ends first.
    let pump = async {
        while let Some(bytes) = to_destination.recv().await {
            writer.write(&bytes).await?;
        }
        writer.end().await
    };
    let pumped = tokio::select! {
        pumped = pump => Some(pumped),
        () = request_ended.cancelled() => None,
    };
    match pumped {
        Some(Ok(())) => {}
        Some(Err(err)) => {
            tracing::debug!(request_id = %context.request_id, error = %err, "the destination side stopped taking the script's bytes");
            let _ = write_failed.set(
                ProxyError::new(ErrorCode::ConnectionTerminated)
                    .with_details("the connection no longer takes bytes towards the destination"),
            );
        }
        None => {
            let err = ProxyError::new(ErrorCode::ConnectionTerminated)
                .with_details("the request that opened the socket ended");
            let _ = writer.abort(&err).await;
        }
    }
}

/// The one log line per failed connect.
fn log_connect_error(context: &FetchContext, err: &ProxyError) {
    context
        .span
        .record("code", tracing::field::display(err.code));
    if err.code == ErrorCode::ProxyInternalError {
        tracing::error!(request_id = %context.request_id, binding = %context.binding, code = %err.code, details = ?err.details, "binding connect failed");
    } else {
        tracing::info!(request_id = %context.request_id, binding = %context.binding, code = %err.code, rcode = ?err.rcode, details = ?err.details, "binding connect failed");
    }
}

/// `SocketReceiver`: turns `opened` into the connect's outcome and, when it opened, gives the
/// binding-worker the stream of the destination's bytes.
struct SocketOpener {
    outcome: RefCell<Option<oneshot::Sender<Result<(), ProxyError>>>>,
    sink: RefCell<Option<InboxSender<BodyEvent>>>,
    request_ended: CancellationToken,
    /// `opened` was called (a connect is then never sent again).
    called: Rc<Cell<bool>>,
}

impl socket_receiver::Server for SocketOpener {
    async fn opened(
        self: CapRc<Self>,
        params: socket_receiver::OpenedParams,
        mut results: socket_receiver::OpenedResults,
    ) -> Result<(), capnp::Error> {
        let Some(outcome) = self.outcome.borrow_mut().take() else {
            return Err(capnp::Error::failed(
                "opened was already called for this connect".into(),
            ));
        };
        self.called.set(true);
        let result = match params.get().and_then(|p| p.get_result()) {
            Ok(result) => result,
            Err(err) => {
                let _ = outcome.send(Err(ProxyError::new(ErrorCode::ProxyInternalError)
                    .with_details(format!("unreadable opened call: {err}"))));
                return Err(err);
            }
        };
        match result.which() {
            Ok(connect_result::Opened(())) => {
                if let Some(events) = self.sink.borrow_mut().take() {
                    results
                        .get()
                        .set_from_destination(capnp_rpc::new_client(BodySink {
                            events: RefCell::new(Some(events)),
                            request_ended: Some(self.request_ended.clone()),
                        }));
                }
                let _ = outcome.send(Ok(()));
            }
            Ok(connect_result::Error(err)) => {
                let _ = outcome.send(Err(read_wire_error(err?)));
            }
            Ok(connect_result::Unspecified(())) | Err(_) => {
                let _ = outcome.send(Err(ProxyError::new(ErrorCode::ProxyInternalError)
                    .with_details(
                        "binding-worker answered a connect with neither opened nor an error",
                    )));
            }
        }
        Ok(())
    }
}

/// What the script's request body already held when its fetch started: the chunks taken
/// without waiting (at most a little over [`INLINE_BODY_MAX`] bytes), and how the body went on.
/// Kept for every attempt, so a fetch sent again after a stale connection loses none of it.
struct BodyStart {
    chunks: Vec<Bytes>,
    bytes: usize,
    /// The body ended right after `chunks`.
    complete: bool,
    /// The body failed right after `chunks` (why).
    failed: Option<String>,
}

impl BodyStart {
    fn take(body: &mut WasiBody) -> Self {
        let mut start = Self {
            chunks: Vec::new(),
            bytes: 0,
            complete: false,
            failed: None,
        };
        while start.bytes <= INLINE_BODY_MAX {
            match body.frame().now_or_never() {
                None => break,
                Some(None) => {
                    start.complete = true;
                    break;
                }
                Some(Some(Ok(frame))) => {
                    // Trailers are not carried.
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        start.bytes += data.len();
                        start.chunks.push(data);
                    }
                }
                Some(Some(Err(err))) => {
                    start.failed = Some(err.to_string());
                    break;
                }
            }
        }
        start
    }

    /// The whole body, small enough to go inside the call.
    fn inline(&self) -> bool {
        self.complete && self.bytes <= INLINE_BODY_MAX
    }
}

/// One `VpcBinding.fetch` call on `connection`. `Ok` once the call was accepted and the
/// request body sent (the outcome then arrives through the receiver); `Err` if the call
/// failed, with `pulled_data` telling whether body bytes were already taken from `body`
/// (beyond `start`, which every attempt sends again).
async fn attempt(
    connection: &Connection,
    context: &FetchContext,
    head: &http::request::Parts,
    start: &BodyStart,
    body: &mut WasiBody,
    pulled_data: &Cell<bool>,
    reply: &ReplySlot,
) -> Result<(), capnp::Error> {
    let inline = start.inline() && connection.takes_inline_request_body.get();
    let mut call = connection.binding.fetch_request();
    {
        let mut params = call.get();
        write_context(params.reborrow().init_context(), context);

        let mut request_head = params.reborrow().init_head();
        request_head.set_method(head.method.as_str());
        request_head.set_url(head.uri.to_string().as_str());
        let count = u32::try_from(head.headers.len()).unwrap_or(u32::MAX);
        let mut headers = request_head.init_headers(count);
        for (i, (name, value)) in (0..count).zip(head.headers.iter()) {
            let mut header = headers.reborrow().get(i);
            header.set_name(name.as_str());
            header.set_value(value.as_bytes());
        }

        params.set_response(capnp_rpc::new_client(Receiver {
            slot: reply.clone(),
        }));
        params.set_takes_inline_body(true);
        if inline {
            params.set_request_body_complete(true);
            if start.bytes > 0 {
                let out = params.init_inline_request_body(start.bytes as u32);
                let mut at = 0;
                for chunk in &start.chunks {
                    out[at..at + chunk.len()].copy_from_slice(chunk);
                    at += chunk.len();
                }
            }
        }
    }
    let call = call.send();
    // Whether this binding-worker takes the next small body inside the call.
    let learn = |response: capnp::capability::Response<vpc_binding::fetch_results::Owned>| {
        let takes = response
            .get()
            .is_ok_and(|r| r.get_takes_inline_request_body());
        connection.takes_inline_request_body.set(takes);
    };
    if inline {
        return call.promise.await.map(learn);
    }
    let request_body = call.pipeline.get_request_body();
    // Stream the body while the call is in flight (pipelined on `requestBody`); a failed call
    // stops the copy at once.
    let send_body = std::pin::pin!(send_request_body(request_body, start, body, pulled_data));
    match futures::future::select(call.promise, send_body).await {
        futures::future::Either::Left((Ok(response), send_body)) => {
            learn(response);
            send_body.await;
            Ok(())
        }
        futures::future::Either::Left((Err(err), _)) => Err(err),
        futures::future::Either::Right(((), promise)) => promise.await.map(learn),
    }
}

/// Streams the script's request body into `stream` (what `start` took first, then the rest),
/// then ends it — or aborts it when the script's body failed. A write the binding-worker
/// refuses stops the copy: the outcome of the fetch arrives through `deliver` regardless.
async fn send_request_body(
    stream: byte_stream::Client,
    start: &BodyStart,
    body: &mut WasiBody,
    pulled_data: &Cell<bool>,
) {
    let mut stream = StreamWriter::new(stream);
    for chunk in &start.chunks {
        if let Err(err) = stream.write(chunk).await {
            tracing::debug!(error = %err, "binding-worker stopped reading the request body");
            return;
        }
    }
    if let Some(err) = &start.failed {
        pulled_data.set(true);
        let err = ProxyError::new(ErrorCode::HttpRequestError)
            .with_details(format!("the script's request body failed: {err}"));
        let _ = stream.abort(&err).await;
        return;
    }
    // After a complete start there is nothing more to read.
    let mut rest = (!start.complete).then_some(body);
    while let Some(body) = rest.as_mut() {
        match body.frame().await {
            None => rest = None,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                }; // trailers: not carried
                if data.is_empty() {
                    continue;
                }
                pulled_data.set(true);
                if let Err(err) = stream.write(&data).await {
                    tracing::debug!(error = %err, "binding-worker stopped reading the request body");
                    return;
                }
            }
            Some(Err(err)) => {
                pulled_data.set(true);
                let err = ProxyError::new(ErrorCode::HttpRequestError)
                    .with_details(format!("the script's request body failed: {err}"));
                let _ = stream.abort(&err).await;
                return;
            }
        }
    }
    if let Err(err) = stream.end().await {
        tracing::debug!(error = %err, "binding-worker did not take the request body end");
    }
}

/// `ResponseReceiver`: turns `deliver` into the script's response (or error).
struct Receiver {
    slot: ReplySlot,
}

impl response_receiver::Server for Receiver {
    async fn deliver(
        self: CapRc<Self>,
        params: response_receiver::DeliverParams,
        mut results: response_receiver::DeliverResults,
    ) -> Result<(), capnp::Error> {
        if self.slot.borrow().is_none() {
            return Err(capnp::Error::failed(
                "deliver was already called for this fetch".into(),
            ));
        }
        let params = params.get()?;
        let result = params.get_result()?;
        let head = match result.which() {
            Ok(fetch_result::Response(head)) => head?,
            Ok(fetch_result::Error(err)) => {
                answer(&self.slot, Err(read_wire_error(err?)));
                return Ok(());
            }
            Ok(fetch_result::Unspecified(())) | Err(_) => {
                let err = ProxyError::new(ErrorCode::ProxyInternalError).with_details(
                    "binding-worker delivered a result that is neither response nor error",
                );
                answer(&self.slot, Err(err));
                return Ok(());
            }
        };

        let headers = head.get_headers()?;
        if headers.len() > MAX_HEAD_HEADERS {
            let err =
                ProxyError::new(ErrorCode::HttpResponseHeaderSectionSize).with_details(format!(
                    "the response has {} headers; at most {MAX_HEAD_HEADERS} are taken",
                    headers.len()
                ));
            answer(&self.slot, Err(err));
            return Err(capnp::Error::failed("too many response headers".into()));
        }
        let mut response = http::Response::builder().status(head.get_status());
        for header in headers {
            response = response.header(header.get_name()?.to_str()?, header.get_value()?);
        }
        // A small body that came whole inside `deliver`: no stream follows.
        let (body, sink) = if params.get_body_complete() {
            let whole = Bytes::copy_from_slice(params.get_inline_body()?);
            let body = http_body_util::Full::new(whole)
                .map_err(|never| match never {})
                .boxed_unsync();
            (body, None)
        } else {
            let (tx, rx) = inbox();
            let body = ResponseBody {
                events: rx,
                finished: false,
            }
            .boxed_unsync();
            (body, Some(tx))
        };
        match response.body(body) {
            Ok(response) => {
                if let Some(tx) = sink {
                    results.get().set_body(capnp_rpc::new_client(BodySink {
                        events: RefCell::new(Some(tx)),
                        request_ended: None,
                    }));
                }
                answer(&self.slot, Ok(response));
                Ok(())
            }
            Err(err) => {
                let err = ProxyError::new(ErrorCode::HttpProtocolError)
                    .with_details(format!("invalid response head from the origin: {err}"));
                answer(&self.slot, Err(err));
                Err(capnp::Error::failed("invalid response head".into()))
            }
        }
    }
}

/// What travels from a `ByteStream` (a response body, a socket's bytes from the destination)
/// to the script.
pub(crate) enum BodyEvent {
    Data(Bytes),
    End,
    Abort(ProxyError),
}

/// `ByteStream` server for a response body: each write is answered once the script's body
/// has taken its chunk.
struct BodySink {
    /// `None` after `end` / `abort`.
    events: RefCell<Option<InboxSender<BodyEvent>>>,
    /// A socket's: cancelled when the request that opened it ended, after which nothing is
    /// taken (the script no longer reads).
    request_ended: Option<CancellationToken>,
}

impl BodySink {
    /// Queues `event` now, in call order (the methods below call this before any await).
    fn push(&self, event: BodyEvent, bytes: usize) -> Result<Taken, capnp::Error> {
        if self
            .request_ended
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            self.events.borrow_mut().take();
            return Err(capnp::Error::failed(
                "the request that opened this socket has ended".into(),
            ));
        }
        let events = self.events.borrow();
        let Some(events) = events.as_ref() else {
            return Err(capnp::Error::failed(
                "the response body already ended".into(),
            ));
        };
        events.push(event, bytes).map_err(refused)
    }

    /// Queues the last event; later writes are refused.
    fn finish(&self, event: BodyEvent) -> Result<(), capnp::Error> {
        let result = self.push(event, 0).map(drop);
        self.events.borrow_mut().take();
        result
    }
}

fn refused(err: InboxError) -> capnp::Error {
    match err {
        InboxError::Closed => capnp::Error::failed("the script no longer reads this stream".into()),
        InboxError::Overflow => capnp::Error::failed(format!("stream to the script: {err}")),
    }
}

impl byte_stream::Server for BodySink {
    fn write(
        self: CapRc<Self>,
        params: byte_stream::WriteParams,
        _: byte_stream::WriteResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let queued = (|| -> Result<_, capnp::Error> {
            let bytes = params.get()?.get_bytes()?;
            let len = bytes.len();
            self.push(BodyEvent::Data(Bytes::copy_from_slice(bytes)), len)
        })();
        async move { queued?.await.map_err(refused) }
    }

    fn end(
        self: CapRc<Self>,
        _: byte_stream::EndParams,
        _: byte_stream::EndResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        std::future::ready(self.finish(BodyEvent::End))
    }

    fn abort(
        self: CapRc<Self>,
        params: byte_stream::AbortParams,
        _: byte_stream::AbortResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let finished = params
            .get()
            .and_then(|p| p.get_error())
            .map(read_wire_error)
            .and_then(|err| self.finish(BodyEvent::Abort(err)));
        std::future::ready(finished)
    }
}

/// The response body as wasi-http sees it. A stream that stops without `end` (the
/// binding-worker dropped it, the connection broke) is `http_response_incomplete`.
struct ResponseBody {
    events: InboxReceiver<BodyEvent>,
    finished: bool,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let event = std::task::ready!(self.events.poll_recv(cx));
        Poll::Ready(match event {
            Some(BodyEvent::Data(bytes)) => Some(Ok(Frame::data(bytes))),
            Some(BodyEvent::End) => {
                self.finished = true;
                None
            }
            Some(BodyEvent::Abort(err)) => {
                self.finished = true;
                Some(Err(wasi_http_error(&err)))
            }
            None => {
                self.finished = true;
                Some(Err(wasmtime_wasi_http::Error::HttpResponseIncomplete))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}
