//! `vpc.connect`: a script's raw TCP connections through its bindings, as the guest sees them
//! — the `pending-socket` resource and the wasi `input-stream` / `output-stream` pair it
//! turns into.
//!
//! The bytes cross to the thread that holds the capnp connection
//! ([`crate::binding_client`]) over two bounded queues, so both directions are
//! flow-controlled end to end:
//! - towards the destination, an `mpsc` channel of at most [`QUEUED_WRITES`] chunks of
//!   [`MAX_WRITE`] bytes: `check-write` says 0 while it is full, and the pump on the other
//!   side writes each chunk into `toDestination` within the `ByteStream` window. Dropping the
//!   output stream closes the channel: the pump sends `end()` (FIN) after the bytes queued.
//! - from the destination, an [`inbox`](wvpc_schemas::inbox) that `fromDestination` fills:
//!   each `write` is answered when the script's stream takes its chunk. Its `end()` is the
//!   input stream's `closed`; an `abort(code)` — or a stream that stopped without either —
//!   is `last-operation-failed` with that code (`connection_terminated` for the latter),
//!   which `wasi:http/types.http-error-code` reads back ([`crate::error_map`]).
//!
//! A socket holds one connection slot of its request's limits (taken when it opens) until
//! both of its streams are dropped; it counts as one subrequest. It lives no longer than its
//! request: when the request ends ([`SocketScope`]), the connection is reset and the streams
//! of a reused instance fail with `connection_terminated`.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt as _;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::byte_stream_flow::{InboxReceiver, MAX_WRITE};
use wvpc_schemas::inbox;

use crate::binding_client::{BindingClient, BodyEvent, ConnectJob, FetchContext};
use crate::error_map::wasi_http_error;
use crate::limits::Connection;

/// Chunks of the script's bytes queued towards the destination before `check-write` says 0.
const QUEUED_WRITES: usize = 4;

/// The sockets of one request: cancelled (every connection reset) when the request ends.
#[derive(Default)]
pub(crate) struct SocketScope(CancellationToken);

impl SocketScope {
    /// Ends every socket the request opened.
    pub fn end(&self) {
        self.0.cancel();
    }
}

impl Drop for SocketScope {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Why an `address` was refused (`destination-not-found` for the script; this for the log).
pub(crate) fn check_address(address: &str, network: bool) -> Result<(), String> {
    if !network {
        return match address.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "a vpc_services binding connects to its service's tcp_port: the address must \
                 be empty, not {address:?}"
            )),
        };
    }
    if address.is_empty() {
        return Err(
            "a vpc_networks binding needs the destination as the address: host:port or \
             [v6]:port"
                .into(),
        );
    }
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let Some((v6, port)) = rest.split_once("]:") else {
            return Err(format!("{address:?} is not [v6]:port"));
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{v6:?} in {address:?} is not an IPv6 address"));
        }
        (None, port)
    } else {
        let Some((host, port)) = address.rsplit_once(':') else {
            return Err(format!("{address:?} has no port: use host:port"));
        };
        if host.contains(':') {
            return Err(format!(
                "{address:?}: an IPv6 address goes in brackets, [v6]:port"
            ));
        }
        (Some(host), port)
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
    if !port_ok {
        return Err(format!(
            "{port:?} in {address:?} is not a port (1 to 65535)"
        ));
    }
    if let Some(host) = host
        && !valid_host(host)
    {
        return Err(format!(
            "{host:?} in {address:?} is neither an IPv4 address nor a hostname"
        ));
    }
    Ok(())
}

/// An IPv4 literal or a DNS name (labels of letters, digits, `-` and `_`, at most 253 bytes).
fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        // All digits and dots, but not an IPv4 address: a typo, not a name.
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Starts opening a connection through `client` (on this thread when it serves the client's
/// calls, as fetches are) once `slot` is free; the returned resource resolves when
/// `opened` arrives.
pub(crate) fn open(
    client: &BindingClient,
    context: FetchContext,
    address: String,
    slot: Connection,
    scope: &SocketScope,
) -> PendingSocket {
    let (to_destination_tx, to_destination) = mpsc::channel(QUEUED_WRITES);
    let (from_destination, from_destination_rx) = inbox();
    let write_failed = Arc::new(OnceLock::new());
    let (opened, outcome) = oneshot::channel();
    client.connect(ConnectJob {
        context,
        address,
        slot,
        to_destination,
        from_destination,
        write_failed: write_failed.clone(),
        request_ended: scope.0.clone(),
        opened,
    });
    PendingSocket {
        state: Pending::Opening {
            outcome,
            halves: Halves {
                to_destination: to_destination_tx,
                from_destination: from_destination_rx,
                write_failed,
                request_ended: scope.0.clone(),
            },
        },
    }
}

/// The host side of both streams, made before the connection opens.
struct Halves {
    to_destination: mpsc::Sender<Bytes>,
    from_destination: InboxReceiver<BodyEvent>,
    write_failed: Arc<OnceLock<ProxyError>>,
    request_ended: CancellationToken,
}

/// The `pending-socket` resource.
pub struct PendingSocket {
    state: Pending,
}

enum Pending {
    Opening {
        outcome: oneshot::Receiver<Result<OwnedSemaphorePermit, ProxyError>>,
        halves: Halves,
    },
    Ready(Result<(SocketInput, SocketOutput), ProxyError>),
    Taken,
}

impl PendingSocket {
    /// `None` while opening; then once the two streams (or why not); later
    /// `Some(Err(internal))`.
    pub(crate) fn take(&mut self) -> Option<Result<(SocketInput, SocketOutput), ProxyError>> {
        if let Pending::Opening { outcome, .. } = &mut self.state {
            let outcome = match outcome.try_recv() {
                Ok(outcome) => outcome,
                Err(oneshot::error::TryRecvError::Empty) => return None,
                Err(oneshot::error::TryRecvError::Closed) => Err(lost()),
            };
            self.settle(outcome);
        }
        match std::mem::replace(&mut self.state, Pending::Taken) {
            Pending::Ready(ready) => Some(ready),
            Pending::Taken => Some(Err(ProxyError::new(ErrorCode::ProxyInternalError)
                .with_details("the socket was already taken from this pending-socket"))),
            Pending::Opening { .. } => unreachable!("settled above"),
        }
    }

    fn settle(&mut self, outcome: Result<OwnedSemaphorePermit, ProxyError>) {
        let Pending::Opening { halves, .. } = std::mem::replace(&mut self.state, Pending::Taken)
        else {
            return;
        };
        self.state = Pending::Ready(outcome.map(|permit| {
            let slot = Arc::new(permit);
            (
                SocketInput {
                    events: halves.from_destination,
                    next: None,
                    buffered: Bytes::new(),
                    state: ReadState::Open,
                    request_ended: halves.request_ended.clone(),
                    _slot: slot.clone(),
                },
                SocketOutput {
                    sender: halves.to_destination,
                    permit: None,
                    write_failed: halves.write_failed,
                    failed: false,
                    request_ended: halves.request_ended,
                    _slot: slot,
                },
            )
        }));
    }
}

/// The outcome channel closed without an answer: the thread serving the connect went away.
fn lost() -> ProxyError {
    ProxyError::new(ErrorCode::ProxyInternalError)
        .with_details("the binding-worker client stopped before the connection opened")
}

#[async_trait]
impl Pollable for PendingSocket {
    async fn ready(&mut self) {
        if let Pending::Opening { outcome, .. } = &mut self.state {
            let outcome = outcome.await.unwrap_or_else(|_| Err(lost()));
            self.settle(outcome);
        }
    }
}

/// The error a stream operation reports: its `http-error-code` reads back as `err`'s code.
fn failed(err: &ProxyError) -> StreamError {
    StreamError::LastOperationFailed(wasmtime::Error::from(wasi_http_error(err)))
}

fn request_ended() -> ProxyError {
    ProxyError::new(ErrorCode::ConnectionTerminated)
        .with_details("the request that opened the socket has ended")
}

/// The destination's bytes (`input-stream`).
pub(crate) struct SocketInput {
    events: InboxReceiver<BodyEvent>,
    /// An event taken by [`Pollable::ready`], not yet read.
    next: Option<Option<BodyEvent>>,
    /// The rest of a chunk larger than the last read.
    buffered: Bytes,
    state: ReadState,
    request_ended: CancellationToken,
    _slot: Arc<OwnedSemaphorePermit>,
}

enum ReadState {
    Open,
    /// FIN, or a failure already reported: `closed` from now on.
    Closed,
}

impl SocketInput {
    fn take_event(&mut self) -> Option<Option<BodyEvent>> {
        self.next
            .take()
            .or_else(|| self.events.recv().now_or_never())
    }
}

#[async_trait]
impl InputStream for SocketInput {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        if !self.buffered.is_empty() {
            let n = size.min(self.buffered.len());
            return Ok(self.buffered.split_to(n));
        }
        if matches!(self.state, ReadState::Closed) {
            return Err(StreamError::Closed);
        }
        if self.request_ended.is_cancelled() {
            self.state = ReadState::Closed;
            return Err(failed(&request_ended()));
        }
        if size == 0 {
            return Ok(Bytes::new());
        }
        match self.take_event() {
            None => Ok(Bytes::new()),
            Some(Some(BodyEvent::Data(mut bytes))) => {
                let n = size.min(bytes.len());
                let now = bytes.split_to(n);
                self.buffered = bytes;
                Ok(now)
            }
            Some(Some(BodyEvent::End)) => {
                self.state = ReadState::Closed;
                Err(StreamError::Closed)
            }
            Some(Some(BodyEvent::Abort(err))) => {
                self.state = ReadState::Closed;
                Err(failed(&err))
            }
            Some(None) => {
                self.state = ReadState::Closed;
                Err(failed(
                    &ProxyError::new(ErrorCode::ConnectionTerminated)
                        .with_details("the connection to the destination broke without an end"),
                ))
            }
        }
    }
}

#[async_trait]
impl Pollable for SocketInput {
    async fn ready(&mut self) {
        if !self.buffered.is_empty()
            || self.next.is_some()
            || matches!(self.state, ReadState::Closed)
        {
            return;
        }
        let request_ended = self.request_ended.clone();
        tokio::select! {
            event = self.events.recv() => self.next = Some(event),
            () = request_ended.cancelled() => {}
        }
    }
}

/// The script's bytes towards the destination (`output-stream`). Dropping it is the FIN.
pub(crate) struct SocketOutput {
    sender: mpsc::Sender<Bytes>,
    /// Room for one chunk, reserved by `check-write` or `ready`.
    permit: Option<mpsc::OwnedPermit<Bytes>>,
    write_failed: Arc<OnceLock<ProxyError>>,
    /// The failure was reported: `closed` from now on.
    failed: bool,
    request_ended: CancellationToken,
    _slot: Arc<OwnedSemaphorePermit>,
}

impl SocketOutput {
    /// The failure to report, once; then `closed`.
    fn broken(&mut self) -> StreamError {
        if self.failed {
            return StreamError::Closed;
        }
        self.failed = true;
        self.permit = None;
        let err = match self.write_failed.get() {
            Some(err) => err.clone(),
            None if self.request_ended.is_cancelled() => request_ended(),
            None => ProxyError::new(ErrorCode::ConnectionTerminated)
                .with_details("the connection towards the destination was closed"),
        };
        failed(&err)
    }

    fn check(&mut self) -> StreamResult<()> {
        if self.failed || self.write_failed.get().is_some() || self.request_ended.is_cancelled() {
            return Err(self.broken());
        }
        Ok(())
    }
}

#[async_trait]
impl OutputStream for SocketOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.check()?;
        if bytes.is_empty() {
            return Ok(());
        }
        if bytes.len() > MAX_WRITE {
            return Err(StreamError::trap("write larger than check-write allowed"));
        }
        let Some(permit) = self.permit.take() else {
            return Err(StreamError::trap("write without room from check-write"));
        };
        permit.send(bytes);
        Ok(())
    }

    /// The bytes written are queued, in order, towards the destination; nothing more to wait
    /// for here (the pump writes them as the window allows).
    fn flush(&mut self) -> StreamResult<()> {
        self.check()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.check()?;
        if self.permit.is_some() {
            return Ok(MAX_WRITE);
        }
        match self.sender.clone().try_reserve_owned() {
            Ok(permit) => {
                self.permit = Some(permit);
                Ok(MAX_WRITE)
            }
            Err(TrySendError::Full(_)) => Ok(0),
            Err(TrySendError::Closed(_)) => Err(self.broken()),
        }
    }
}

#[async_trait]
impl Pollable for SocketOutput {
    async fn ready(&mut self) {
        if self.permit.is_some() || self.failed || self.write_failed.get().is_some() {
            return;
        }
        let request_ended = self.request_ended.clone();
        tokio::select! {
            permit = self.sender.clone().reserve_owned() => self.permit = permit.ok(),
            () = request_ended.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_address;

    #[test]
    fn addresses_of_network_bindings() {
        for good in [
            "10.0.0.5:6379",
            "db.internal:5432",
            "[fd00::1]:443",
            "[::1]:1",
            "localhost:65535",
            "redis_primary.svc.local.:6379",
        ] {
            assert_eq!(check_address(good, true), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "needs the destination"),
            ("10.0.0.5", "has no port"),
            ("10.0.0.5:0", "not a port"),
            ("10.0.0.5:65536", "not a port"),
            ("10.0.0.5:+80", "not a port"),
            ("10.0.0.5:", "not a port"),
            ("fd00::1:443", "goes in brackets"),
            ("[fd00::1]", "not [v6]:port"),
            ("[not-v6]:80", "not an IPv6 address"),
            (":80", "neither an IPv4 address nor a hostname"),
            ("bad host:80", "neither an IPv4 address nor a hostname"),
            ("10.0.0.256:80", "neither an IPv4 address nor a hostname"),
        ] {
            let err = check_address(bad, true).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn service_bindings_take_no_address() {
        assert_eq!(check_address("", false), Ok(()));
        let err = check_address("10.0.0.5:6379", false).unwrap_err();
        assert!(err.contains("must be empty"), "{err}");
    }
}
