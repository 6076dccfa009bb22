//! `VpcBinding.connect`: a script's raw TCP connection through a binding.
//!
//! The call returns `toDestination` at once (an inbox like a request body's: the script's
//! writes are answered as the CONNECT stream takes them, within the flow-control window).
//! The socket then opens one CONNECT through iris with `wvpc-scheme: tcp` — a service
//! binding's names the service (iris dials its `tcp_port`), a network binding's names the
//! network and has the address as its authority — and calls `receiver.opened` once: with the
//! code iris refused it with (its `Proxy-Status`), or opened. Bytes are then piped untouched
//! both ways, inside [`wvpc_schemas::socket_frames`] on the CONNECT stream so that a reset
//! is never taken for a clean end:
//!
//! - script → destination (a task on the proxy runtime): chunks are written as they come;
//!   `end()` half-closes (the destination sees FIN, its answer keeps flowing); `abort()` or a
//!   dropped `toDestination` (the runtime went away) resets the connection;
//! - destination → script (on the RPC thread, which owns the capnp stream): chunks go into
//!   `fromDestination` within its window; the destination's FIN is `end()`, a reset or a
//!   broken path is `abort(connection_terminated)`.
//!
//! Limits, from the binding-worker's settings: a socket on which no byte moved either way
//! for `read_timeout` is reset (`connection_read_timeout`); a script that takes no bytes for
//! `write_timeout`, or a destination that takes none for as long, resets it
//! (`connection_write_timeout`). A socket counts against its binding's connection cap
//! (`max_connections_per_service`) while open, and as a fetch in flight, so that a drain
//! waits for it (within its grace period).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, ReadHalf, WriteHalf};
use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::binding_capnp::socket_receiver;
use wvpc_schemas::byte_stream_flow::MAX_WRITE;
use wvpc_schemas::socket_frames::SocketFrames;
use wvpc_schemas::{StreamWriter, write_wire_error};

use crate::iris_client::ConnectSpec;
use crate::metrics::{Call, TargetMetrics};
use crate::origin::{ConnectionPermit, Proxy, describe};
use crate::request::ConnectRequest;
use crate::request_body::{BodyEvent, BodyEvents};

type Reader = SocketFrames<ReadHalf<TokioIo<Upgraded>>>;
type Writer = SocketFrames<WriteHalf<TokioIo<Upgraded>>>;

/// Opens the CONNECT of `request`, counted against its binding's connection cap.
async fn open(
    proxy: &Proxy,
    request: &ConnectRequest,
    probe: &TargetMetrics,
) -> Result<(Upgraded, ConnectionPermit), ProxyError> {
    let permit = proxy.acquire(request.target)?;
    let spec = ConnectSpec {
        target: request.target,
        scheme: "tcp",
        destination: request
            .destination
            .as_ref()
            .map(|(host, port)| (host.as_str(), *port)),
        original_host: request.destination.as_ref().map(|(host, _)| host.as_str()),
        caller: &request.caller,
    };
    let (stream, _tls) = proxy.connect_iris(&spec, probe).await?;
    Ok((stream, permit))
}

/// What both directions of one socket share.
struct SocketState {
    /// Cancelled when the socket must be reset (either side may ask).
    reset: CancellationToken,
    /// Why, when the binding-worker decided it (a timeout, a broken stream).
    reason: Mutex<Option<ProxyError>>,
    started: Instant,
    /// Milliseconds after `started` when a byte last moved, either way.
    last_moved: AtomicU64,
}

impl SocketState {
    fn new() -> Self {
        Self {
            reset: CancellationToken::new(),
            reason: Mutex::new(None),
            started: Instant::now(),
            last_moved: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_moved.store(now, Ordering::Relaxed);
    }

    /// When the socket becomes idle for `idle`, as things stand.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.started + Duration::from_millis(self.last_moved.load(Ordering::Relaxed)) + idle
    }

    /// Resets the socket for `err` (the first reason is kept).
    fn fail(&self, err: ProxyError) {
        let mut reason = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        if reason.is_none() {
            *reason = Some(err);
        }
        drop(reason);
        self.reset.cancel();
    }

    fn reason(&self) -> ProxyError {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| {
                ProxyError::new(ErrorCode::ConnectionTerminated)
                    .with_details("the script reset the connection")
            })
    }
}

/// The limits of one socket.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// No byte either way for this long resets the socket.
    idle: Duration,
    /// The script, or the destination, taking no bytes for this long resets it.
    write: Duration,
}

/// One `connect` after the call returned: open, tell the runtime, pipe both ways.
pub(crate) async fn run_socket(
    proxy: Arc<Proxy>,
    runtime: Handle,
    request: Result<ConnectRequest, ProxyError>,
    events: BodyEvents,
    receiver: socket_receiver::Client,
) {
    let limits = Limits {
        idle: proxy.settings().read_timeout,
        write: proxy.settings().write_timeout,
    };
    let (request_id, target) = match &request {
        Ok(r) => (r.caller.request_id.clone(), r.target.to_string()),
        Err(_) => ("-".to_owned(), "-".to_owned()),
    };
    let arrived = std::time::Instant::now();
    let probe = proxy
        .metrics()
        .target(request.as_ref().ok().map(|r| r.target));
    let mut span = tracing::Span::none();
    let opened = match request {
        Err(err) => Err(err),
        Ok(request) => {
            let proxy = Arc::clone(&proxy);
            span = request.caller.span("connect", &request.target);
            let probe = probe.clone();
            runtime
                .spawn(async move { open(&proxy, &request, &probe).await }.instrument(span.clone()))
                .await
                .unwrap_or_else(|join_error| {
                    Err(ProxyError::new(ErrorCode::ProxyInternalError)
                        .with_details(format!("opening the connection failed: {join_error}")))
                })
        }
    };
    match &opened {
        Ok(_) => probe.succeeded(Call::Connect, arrived.elapsed()),
        Err(err) => probe.failed(Call::Connect, err),
    }
    let (stream, permit) = match opened {
        Ok(opened) => opened,
        Err(err) => {
            span.record("code", tracing::field::display(err.code));
            tracing::warn!(
                %request_id, %target, code = %err.code,
                rcode = err.rcode.as_deref().unwrap_or(""),
                details = err.details.as_deref().unwrap_or(""),
                "connect failed"
            );
            // What the script wrote is dropped with the inbox: its writes fail.
            drop(events);
            let mut call = receiver.opened_request();
            write_wire_error(call.get().init_result().init_error(), &err);
            if let Err(capnp_err) = call.send().promise.await {
                tracing::debug!(%request_id, error = %capnp_err, "runtime did not take the connect error");
            }
            return;
        }
    };
    let mut call = receiver.opened_request();
    call.get().init_result().set_opened(());
    let opened_call = call.send();
    // Pipelined: the destination's first bytes may follow before `opened` returns.
    let sink = StreamWriter::new(opened_call.pipeline.get_from_destination());
    let (read, write) = tokio::io::split(TokioIo::new(stream));
    let state = Arc::new(SocketState::new());
    let writer = runtime.spawn(to_destination(
        events,
        SocketFrames::new(write),
        Arc::clone(&state),
        limits,
    ));
    let fin = from_destination(SocketFrames::new(read), sink, &state, limits, &request_id).await;
    let mut writer = std::pin::pin!(writer);
    let mut written = None;
    if fin {
        // The destination is done; the script's side may still be writing, within the idle
        // limit.
        loop {
            let idle_at = state.idle_deadline(limits.idle);
            tokio::select! {
                done = &mut writer => {
                    written = Some(done);
                    break;
                }
                () = tokio::time::sleep_until(idle_at) => {
                    if state.idle_deadline(limits.idle) <= Instant::now() {
                        state.fail(idle_error(limits.idle));
                        break;
                    }
                }
            }
        }
    }
    // The CONNECT stream goes once the writer is over too. A finished task must not be
    // polled again, so its result is kept from the loop above.
    let written = match written {
        Some(done) => done,
        None => writer.await,
    };
    if written.is_err() {
        tracing::debug!(%request_id, "the socket's writer task failed");
    }
    drop(permit);
    if let Err(err) = opened_call.promise.await {
        tracing::debug!(%request_id, error = %err, "runtime did not take opened");
    }
    tracing::debug!(%request_id, %target, "socket closed");
}

/// The script's bytes towards the destination, until `end()` (half-close), `abort()` or a
/// reset of the socket.
async fn to_destination(
    mut events: BodyEvents,
    mut frames: Writer,
    state: Arc<SocketState>,
    limits: Limits,
) {
    loop {
        let event = tokio::select! {
            biased;
            () = state.reset.cancelled() => None,
            event = events.recv() => event,
        };
        match event {
            Some(BodyEvent::Data(bytes)) => {
                state.touch();
                match tokio::time::timeout(limits.write, frames.write_all(&bytes)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        state.fail(
                            ProxyError::new(ErrorCode::ConnectionTerminated)
                                .with_details(format!("the connection broke: {}", describe(&err))),
                        );
                        return;
                    }
                    Err(_) => {
                        state.fail(
                            ProxyError::new(ErrorCode::ConnectionWriteTimeout).with_details(
                                format!("the destination took no bytes for {:?}", limits.write),
                            ),
                        );
                        break;
                    }
                }
            }
            Some(BodyEvent::End) => {
                // Half-close: the destination sees FIN, its answer keeps coming.
                if let Err(err) = tokio::time::timeout(limits.write, frames.shutdown())
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
                {
                    state.fail(
                        ProxyError::new(ErrorCode::ConnectionTerminated)
                            .with_details(format!("the half-close failed: {}", describe(&err))),
                    );
                }
                return;
            }
            // `abort()`, the runtime gone without `end()`, or a reset from the other side.
            Some(BodyEvent::Abort(_)) | None => {
                state.reset.cancel();
                break;
            }
        }
    }
    // Best effort, and bounded: a peer that takes nothing gets the stream dropped instead.
    let _ = tokio::time::timeout(limits.write, frames.reset()).await;
}

/// The destination's bytes into `fromDestination`, until its FIN (`true`), a reset, or a
/// limit.
async fn from_destination(
    mut frames: Reader,
    mut sink: StreamWriter,
    state: &SocketState,
    limits: Limits,
    request_id: &str,
) -> bool {
    let mut buf = vec![0u8; MAX_WRITE];
    let broke = loop {
        let idle_at = state.idle_deadline(limits.idle);
        tokio::select! {
            () = state.reset.cancelled() => break state.reason(),
            () = tokio::time::sleep_until(idle_at) => {
                if state.idle_deadline(limits.idle) <= Instant::now() {
                    break idle_error(limits.idle);
                }
            }
            read = frames.read(&mut buf) => match read {
                Ok(0) => {
                    // The destination's FIN.
                    match tokio::time::timeout(limits.write, sink.end()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => {
                            tracing::debug!(%request_id, error = %err, "runtime refused the end of the socket");
                        }
                        Err(_) => {
                            tracing::debug!(%request_id, "the script did not take the end of the socket in time");
                        }
                    }
                    return true;
                }
                Ok(n) => {
                    state.touch();
                    match tokio::time::timeout(limits.write, sink.write(&buf[..n])).await {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => {
                            tracing::debug!(%request_id, error = %err, "runtime stopped reading the socket");
                            state.reset.cancel();
                            return false;
                        }
                        Err(_) => break ProxyError::new(ErrorCode::ConnectionWriteTimeout)
                            .with_details(format!(
                                "the script took no bytes from the socket for {:?}",
                                limits.write
                            )),
                    }
                }
                Err(err) => break ProxyError::new(ErrorCode::ConnectionTerminated).with_details(
                    format!("the connection to the destination broke: {}", describe(&err)),
                ),
            },
        }
    };
    state.fail(broke.clone());
    let err = state.reason();
    tracing::debug!(%request_id, code = %err.code, details = err.details.as_deref().unwrap_or(""), "socket reset");
    match tokio::time::timeout(limits.write, sink.abort(&err)).await {
        Ok(Ok(())) => {}
        Ok(Err(capnp_err)) => {
            tracing::debug!(%request_id, error = %capnp_err, "runtime did not take the abort");
        }
        Err(_) => tracing::debug!(%request_id, "runtime did not take the abort in time"),
    }
    false
}

fn idle_error(idle: Duration) -> ProxyError {
    ProxyError::new(ErrorCode::ConnectionReadTimeout).with_details(format!(
        "no byte moved either way on the socket for {idle:?}"
    ))
}
