//! The capnp side: the `VpcBinding` server the runtimes call, the request-body `ByteStream`
//! it hands back, and the streaming of response bodies into the runtime's `ByteStream`.
//!
//! capnp-rpc is `!Send`, so all of this lives on the RPC thread (a current-thread runtime
//! with a `LocalSet`). The HTTP work ([`Proxy`]) runs on the proxy runtime; the two meet
//! through `Send` channels (request body), a join handle (response head) and hyper's body
//! channel (response body), so no fetch ever blocks another.
//!
//! Both bodies are flow-controlled by [`wvpc_schemas::byte_stream_flow`]: the request body's
//! writes are answered when the origin request takes each chunk, and the response body is
//! written with a bounded window of unanswered bytes.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use crate::request::read_connect;
use bytes::Bytes;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{RpcSystem, twoparty};
use futures::FutureExt as _;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::binding_capnp::{byte_stream, response_head, response_receiver, vpc_binding};
use wvpc_schemas::byte_stream_flow::{InboxError, InboxSender, Taken};
use wvpc_schemas::{
    INLINE_BODY_MAX, RPC_BUFFER, StreamWriter, inbox, read_wire_error, write_wire_error,
};

use crate::metrics::Call;
use crate::origin::{OriginResponse, Proxy, describe};
use crate::request::{FetchRequest, read_fetch};
use crate::request_body::{BodyEvent, BodyEvents};

/// Serves one runtime connection on the current `LocalSet`.
/// `permit` (the connection's place under the listener's cap) is held until it ends.
pub(crate) fn serve_runtime(
    stream: TcpStream,
    peer: SocketAddr,
    binding: vpc_binding::Client,
    permit: wvpc_listener::ConnectionPermit,
) {
    let (reader, writer) = stream.into_split();
    // Buffered both ways: a capnp message is a segment table and its segments, and each
    // would otherwise be its own read or write system call.
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::with_capacity(RPC_BUFFER, reader.compat()),
        futures::io::BufWriter::with_capacity(RPC_BUFFER, writer.compat_write()),
        Side::Server,
        capnp::message::ReaderOptions::default(),
    );
    let rpc = RpcSystem::new(Box::new(network), Some(binding.client));
    tokio::task::spawn_local(async move {
        let _permit = permit;
        match rpc.await {
            Ok(()) => tracing::debug!(%peer, "runtime disconnected"),
            Err(err) => tracing::info!(%peer, error = %err, "runtime connection failed"),
        }
    });
}

/// The `VpcBinding` capability: one per binding-worker, shared by every runtime connection.
pub(crate) struct VpcBindingServer {
    proxy: Arc<Proxy>,
    /// Where HTTP work runs.
    runtime: Handle,
    /// Every fetch, from its call to the end of its response body (for draining).
    fetches: TaskTracker,
    /// Set once the worker drains: new fetches are refused.
    draining: Rc<Cell<bool>>,
}

impl VpcBindingServer {
    pub(crate) fn new(
        proxy: Arc<Proxy>,
        runtime: Handle,
        fetches: TaskTracker,
        draining: Rc<Cell<bool>>,
    ) -> Self {
        Self {
            proxy,
            runtime,
            fetches,
            draining,
        }
    }
}

impl vpc_binding::Server for VpcBindingServer {
    fn fetch(
        self: capnp::capability::Rc<Self>,
        params: vpc_binding::FetchParams,
        mut results: vpc_binding::FetchResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        // Everything is set up synchronously: the call returns the request-body stream at
        // once, and the exchange continues as its own task.
        let started = (|| -> Result<(), capnp::Error> {
            if self.draining.get() {
                // Disconnected: the runtime treats the call as never made and sends it to
                // another binding-worker (when no request-body byte was taken yet).
                return Err(capnp::Error::disconnected(
                    "this binding-worker is draining and takes no new fetches".into(),
                ));
            }
            let params = params.get()?;
            let receiver = params.get_response()?;
            let inline = params.get_takes_inline_body();
            let request = read_fetch(params.get_context()?, params.get_head()?);
            let (events_tx, events) = inbox();
            let mut results = results.get();
            results.set_takes_inline_request_body(true);
            if params.get_request_body_complete() {
                // The whole body came with the call: no stream to hand out or to end.
                let body = params.get_inline_request_body()?;
                if !body.is_empty() {
                    let _ =
                        events_tx.push(BodyEvent::Data(Bytes::copy_from_slice(body)), body.len());
                }
                let _ = events_tx.push(BodyEvent::End, 0);
            } else {
                let sink = RequestBodySink {
                    events: RefCell::new(Some(events_tx)),
                };
                results.set_request_body(capnp_rpc::new_client(sink));
            }
            tokio::task::spawn_local(self.fetches.track_future(run_fetch(
                Arc::clone(&self.proxy),
                self.runtime.clone(),
                request,
                events,
                receiver,
                inline,
            )));
            Ok(())
        })();
        std::future::ready(started)
    }

    fn connect(
        self: capnp::capability::Rc<Self>,
        params: vpc_binding::ConnectParams,
        results: vpc_binding::ConnectResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        std::future::ready(self.start_connect(params, results))
    }
}

impl VpcBindingServer {
    /// Starts one `connect`: `toDestination` is returned at once; opening and piping run as
    /// a task tracked like a fetch (see [`crate::socket`]).
    fn start_connect(
        &self,
        params: vpc_binding::ConnectParams,
        mut results: vpc_binding::ConnectResults,
    ) -> Result<(), capnp::Error> {
        if self.draining.get() {
            return Err(capnp::Error::disconnected(
                "this binding-worker is draining and takes no new connections".into(),
            ));
        }
        let params = params.get()?;
        let receiver = params.get_receiver()?;
        let request = read_connect(params.get_context()?, params.get_address());
        let (events_tx, events) = inbox();
        let sink = RequestBodySink {
            events: RefCell::new(Some(events_tx)),
        };
        results
            .get()
            .set_to_destination(capnp_rpc::new_client(sink));
        tokio::task::spawn_local(self.fetches.track_future(crate::socket::run_socket(
            Arc::clone(&self.proxy),
            self.runtime.clone(),
            request,
            events,
            receiver,
        )));
        Ok(())
    }
}

/// One fetch after the call returned: exchange with the origin, deliver, stream the body.
async fn run_fetch(
    proxy: Arc<Proxy>,
    runtime: Handle,
    request: Result<FetchRequest, ProxyError>,
    events: BodyEvents,
    receiver: response_receiver::Client,
    takes_inline_body: bool,
) {
    let body_timeouts = BodyTimeouts {
        read: proxy.settings().read_timeout,
        write: proxy.settings().write_timeout,
    };
    let arrived = std::time::Instant::now();
    let probe = proxy
        .metrics()
        .target(request.as_ref().ok().map(|r| r.target));
    let mut span = tracing::Span::none();
    let (ids, exchanged) = match request {
        Err(err) => (("-".to_owned(), "-".to_owned()), Err(err)),
        Ok(request) => {
            let ids = (
                request.caller.request_id.clone(),
                request.target.to_string(),
            );
            span = request.caller.span("fetch", &request.target);
            let exchange = runtime.spawn(
                async move { proxy.exchange(request, events).await }.instrument(span.clone()),
            );
            let exchanged = exchange.await.unwrap_or_else(|join_error| {
                Err(ProxyError::new(ErrorCode::ProxyInternalError)
                    .with_details(format!("the exchange task failed: {join_error}")))
            });
            (ids, exchanged)
        }
    };
    let (request_id, target) = ids;
    match &exchanged {
        Ok(_) => probe.succeeded(Call::Fetch, arrived.elapsed()),
        Err(err) => probe.failed(Call::Fetch, err),
    }
    match exchanged {
        Err(err) => {
            span.record("code", tracing::field::display(err.code));
            tracing::warn!(
                %request_id, %target, code = %err.code,
                rcode = err.rcode.as_deref().unwrap_or(""),
                details = err.details.as_deref().unwrap_or(""),
                "fetch failed"
            );
            deliver_error(&receiver, &err).await;
        }
        Ok(response) => {
            stream_response(
                &receiver,
                response,
                &runtime,
                &request_id,
                body_timeouts,
                takes_inline_body,
            )
            .await;
        }
    }
}

async fn deliver_error(receiver: &response_receiver::Client, err: &ProxyError) {
    let mut call = receiver.deliver_request();
    write_wire_error(call.get().init_result().init_error(), err);
    if let Err(capnp_err) = call.send().promise.await {
        tracing::debug!(error = %capnp_err, "runtime did not take the error result");
    }
}

/// Idle bounds on streaming a response body.
#[derive(Debug, Clone, Copy)]
struct BodyTimeouts {
    /// Between two pieces from the origin.
    read: std::time::Duration,
    /// For the runtime to take one piece.
    write: std::time::Duration,
}

/// How streaming a response body ended.
enum Pumped {
    Complete,
    /// The origin's body broke or stalled, or the runtime stopped taking it: the body is
    /// aborted with this code.
    OriginFailed(ProxyError),
    /// The runtime stopped reading (cancelled, disconnected).
    ReceiverGone(capnp::Error),
}

/// Delivers the head, then streams the body within the flow-control window; a fully read
/// connection goes back to the pool. A small body that has already arrived whole, for a
/// runtime that `takes_inline_body`, goes inside `deliver` instead (no stream calls).
async fn stream_response(
    receiver: &response_receiver::Client,
    response: OriginResponse,
    runtime: &Handle,
    request_id: &str,
    timeouts: BodyTimeouts,
    takes_inline_body: bool,
) {
    let OriginResponse {
        head,
        mut body,
        lease,
    } = response;
    // What the origin has already sent, taken without waiting; streamed first if the body
    // turns out not to be small and complete.
    let mut early = std::collections::VecDeque::new();
    if takes_inline_body {
        let mut taken = 0;
        while let Some(next) = body.next_data().now_or_never() {
            let last = !matches!(next, Some(Ok(_)));
            if let Some(Ok(data)) = &next {
                taken += data.len();
            }
            early.push_back(next);
            if last || taken > INLINE_BODY_MAX {
                break;
            }
        }
        if let Some(None) = early.back() {
            early.pop_back();
            // Everything before the end is data: the probe stops at the first item that is not.
            let mut whole = Vec::with_capacity(taken);
            for data in early.iter().flatten().flatten() {
                whole.extend_from_slice(data);
            }
            // Back in the pool before the runtime hears of the response, for its next fetch.
            lease.release(runtime).await;
            let mut deliver = receiver.deliver_request();
            {
                let mut params = deliver.get();
                write_response_head(params.reborrow().init_result().init_response(), &head);
                params.set_inline_body(&whole);
                params.set_body_complete(true);
            }
            if let Err(err) = deliver.send().promise.await {
                tracing::debug!(%request_id, error = %err, "deliver failed");
            }
            return;
        }
    }
    let mut deliver = receiver.deliver_request();
    write_response_head(deliver.get().init_result().init_response(), &head);
    let delivered = deliver.send();
    // Pipelined: body chunks start flowing before `deliver` returns.
    let mut sink = StreamWriter::new(delivered.pipeline.get_body());

    let pumped = loop {
        let next = match early.pop_front() {
            Some(next) => Ok(next),
            None => tokio::time::timeout(timeouts.read, body.next_data()).await,
        };
        let data = match next {
            Err(_) => {
                break Pumped::OriginFailed(
                    ProxyError::new(ErrorCode::ConnectionReadTimeout).with_details(format!(
                        "the origin sent no body data for {:?}",
                        timeouts.read
                    )),
                );
            }
            Ok(None) => break Pumped::Complete,
            Ok(Some(Ok(data))) => data,
            Ok(Some(Err(err))) => {
                break Pumped::OriginFailed(
                    ProxyError::new(ErrorCode::HttpResponseIncomplete)
                        .with_details(describe(err.as_ref())),
                );
            }
        }; // trailers are not forwarded
        match tokio::time::timeout(timeouts.write, sink.write(&data)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => break Pumped::ReceiverGone(err),
            Err(_) => {
                break Pumped::OriginFailed(
                    ProxyError::new(ErrorCode::ConnectionWriteTimeout).with_details(format!(
                        "the script took no response body data for {:?}",
                        timeouts.write
                    )),
                );
            }
        }
    };
    match pumped {
        Pumped::Complete => {
            // The exchange is over whatever the runtime does with end(): reuse the connection
            // (before end() so that the runtime's next fetch finds it).
            lease.release(runtime).await;
            // Until the script has taken the last window, bounded like a write.
            match tokio::time::timeout(timeouts.write, sink.end()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::debug!(%request_id, error = %err, "runtime refused the end of the body");
                }
                Err(_) => {
                    tracing::debug!(%request_id, "the script did not take the end of the body in time");
                }
            }
        }
        Pumped::OriginFailed(err) => {
            // The origin connection (the body and its sender) is closed, and stops counting
            // against the service's cap, before the runtime hears why.
            drop(body);
            drop(lease);
            tracing::warn!(%request_id, code = %err.code, details = err.details.as_deref().unwrap_or(""), "origin response body broke");
            // A runtime that stopped reading takes the abort only after its pending writes, if
            // ever: wait for it no longer than for a write.
            match tokio::time::timeout(timeouts.write, sink.abort(&err)).await {
                Ok(Ok(_)) => {}
                Ok(Err(capnp_err)) => {
                    tracing::debug!(%request_id, error = %capnp_err, "runtime did not take the abort");
                }
                Err(_) => {
                    tracing::debug!(%request_id, "runtime did not take the abort in time");
                    return;
                }
            }
        }
        Pumped::ReceiverGone(err) => {
            tracing::debug!(%request_id, error = %err, "runtime stopped reading the response body");
        }
    }
    if let Err(err) = delivered.promise.await {
        tracing::debug!(%request_id, error = %err, "deliver failed");
    }
}

fn write_response_head(mut out: response_head::Builder<'_>, head: &http::response::Parts) {
    out.set_status(head.status.as_u16());
    let count = u32::try_from(head.headers.len()).unwrap_or(u32::MAX);
    let mut list = out.init_headers(count);
    for (i, (name, value)) in head.headers.iter().enumerate().take(count as usize) {
        let mut entry = list.reborrow().get(i as u32);
        entry.set_name(name.as_str());
        entry.set_value(value.as_bytes());
    }
}

/// The request-body `ByteStream` handed to the runtime: writes feed the origin request, and
/// each is answered once the origin request has taken its chunk.
struct RequestBodySink {
    /// `None` after `end` or `abort`.
    events: RefCell<Option<InboxSender<BodyEvent>>>,
}

impl RequestBodySink {
    /// Queues `event` in call order; `Err` when the body is over or refused it.
    fn push(&self, event: BodyEvent, bytes: usize) -> Result<Taken, capnp::Error> {
        let events = self.events.borrow();
        let Some(events) = events.as_ref() else {
            return Err(capnp::Error::failed(
                "request body written after end() or abort()".into(),
            ));
        };
        events.push(event, bytes).map_err(refused)
    }
}

fn refused(err: InboxError) -> capnp::Error {
    match err {
        InboxError::Closed => {
            capnp::Error::disconnected("the origin request is over and reads no more body".into())
        }
        InboxError::Overflow => capnp::Error::failed(format!("request body: {err}")),
    }
}

impl byte_stream::Server for RequestBodySink {
    fn write(
        self: capnp::capability::Rc<Self>,
        params: byte_stream::WriteParams,
        _results: byte_stream::WriteResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        // Queued now, as the call is dispatched, so that chunks keep the order of the calls;
        // the answer waits until the origin request takes the chunk (the writer's window).
        let queued = (|| -> Result<_, capnp::Error> {
            let bytes = params.get()?.get_bytes()?;
            let len = bytes.len();
            self.push(BodyEvent::Data(Bytes::copy_from_slice(bytes)), len)
        })();
        async move { queued?.await.map_err(refused) }
    }

    fn end(
        self: capnp::capability::Rc<Self>,
        _params: byte_stream::EndParams,
        _results: byte_stream::EndResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        if let Some(events) = self.events.borrow_mut().take() {
            // An origin that no longer reads is not the runtime's problem at end().
            let _ = events.push(BodyEvent::End, 0);
        }
        std::future::ready(Ok(()))
    }

    fn abort(
        self: capnp::capability::Rc<Self>,
        params: byte_stream::AbortParams,
        _results: byte_stream::AbortResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let sender = self.events.borrow_mut().take();
        let err = params
            .get()
            .and_then(|p| p.get_error())
            .map(read_wire_error)
            .unwrap_or_else(|e| {
                ProxyError::new(ErrorCode::HttpRequestError).with_details(format!(
                    "request body aborted with an unreadable error: {e}"
                ))
            });
        if let Some(events) = sender {
            let _ = events.push(BodyEvent::Abort(err), 0);
        }
        std::future::ready(Ok(()))
    }
}
