//! CONNECT pipes by service: which service each open pipe (a CONNECT stream copied to and from
//! a tunnel stream) serves, so that deleting a service closes its pipes on this node.
//!
//! The binding-worker keeps origin connections (HTTP/1.1 over a CONNECT stream) in a pool per
//! service, and reuses them without asking iris again. When a service is deleted
//! ([`ServicePipes::close_service`]), iris closes the service's pipes: the CONNECT stream is
//! reset (the pooled connection dies at the binding-worker, whose next request makes a new
//! CONNECT and gets `destination_not_found`) and the tunnel stream ends (the origin sees its
//! connection close). Never in the middle of an exchange, though: a pipe closes once it is
//! quiet — every byte read has been passed on, the last bytes came from the origin (an
//! answer, not a request still waiting for one) and nothing moved for [`QUIET`]. A response
//! in flight finishes; a request waiting for its answer gets it first.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::IrisMetrics;
use crate::routes::NetworkTarget;

/// How long a pipe of a deleted service must have been idle before it is closed (a response
/// whose body follows its head after a pause is not cut).
pub const QUIET: Duration = Duration::from_secs(1);
/// How often a pipe of a deleted service checks whether it is quiet.
const QUIET_CHECK: Duration = Duration::from_millis(100);

/// What a pipe is counted under: its service, or for a `vpc_networks` binding's CONNECT
/// (no service) the network it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PipeKey {
    Service(Uuid),
    Network(NetworkTarget),
}

/// The open pipes of every service (and network), counted per key.
#[derive(Debug, Default)]
pub(crate) struct ServicePipes {
    services: Mutex<HashMap<PipeKey, Pipes>>,
}

#[derive(Debug)]
struct Pipes {
    /// Cancelled when the service is deleted.
    closing: CancellationToken,
    open: usize,
}

impl ServicePipes {
    /// Counts a new pipe of `key` until the ticket drops.
    pub(crate) fn register(self: &Arc<Self>, key: PipeKey) -> PipeTicket {
        let mut services = self.lock();
        let pipes = services.entry(key).or_insert_with(|| Pipes {
            closing: CancellationToken::new(),
            open: 0,
        });
        pipes.open += 1;
        PipeTicket {
            pipes: self.clone(),
            key,
            closing: pipes.closing.clone(),
        }
    }

    /// Tells every open pipe of `service_id` to close once quiet; returns how many there are.
    pub(crate) fn close_service(&self, service_id: Uuid) -> usize {
        match self.lock().get(&PipeKey::Service(service_id)) {
            Some(pipes) => {
                pipes.closing.cancel();
                pipes.open
            }
            None => 0,
        }
    }

    /// Open pipes counted under `key`.
    #[cfg(test)]
    pub(crate) fn open(&self, key: PipeKey) -> usize {
        self.lock().get(&key).map_or(0, |pipes| pipes.open)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PipeKey, Pipes>> {
        self.services.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One open pipe of a service (or network), counted while alive.
#[derive(Debug)]
pub(crate) struct PipeTicket {
    pipes: Arc<ServicePipes>,
    key: PipeKey,
    closing: CancellationToken,
}

impl Drop for PipeTicket {
    fn drop(&mut self) {
        let mut services = self.pipes.lock();
        if let Some(pipes) = services.get_mut(&self.key) {
            pipes.open = pipes.open.saturating_sub(1);
            if pipes.open == 0 {
                services.remove(&self.key);
            }
        }
    }
}

/// How a pipe ended.
#[derive(Debug)]
pub(crate) enum PipeEnd {
    /// Both sides finished; bytes client → tunnel and tunnel → client.
    Finished(u64, u64),
    /// A side failed.
    Broke(io::Error),
    /// Its service was deleted and the pipe was quiet: both sides were dropped.
    ServiceDeleted,
}

/// Copies bytes both ways between the CONNECT client and the tunnel stream until both sides
/// are done, or until the service is deleted and the pipe is quiet (see the module docs).
pub(crate) async fn pipe<C, T>(
    ticket: PipeTicket,
    client: C,
    tunnel: T,
    buffer: usize,
    metrics: Option<Arc<IrisMetrics>>,
) -> PipeEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Mutex::new(Activity::new()));
    let mut client = Watched {
        io: client,
        side: Side::Client,
        activity: activity.clone(),
    };
    let mut tunnel = Watched {
        io: tunnel,
        side: Side::Tunnel,
        activity: activity.clone(),
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut tunnel, buffer, buffer);
    tokio::pin!(copy);
    let ended = |result: io::Result<(u64, u64)>| match result {
        Ok((up, down)) => PipeEnd::Finished(up, down),
        Err(err) => PipeEnd::Broke(err),
    };
    tokio::select! {
        result = &mut copy => return ended(result),
        () = ticket.closing.cancelled() => {}
    }
    let mut check = tokio::time::interval(QUIET_CHECK);
    loop {
        tokio::select! {
            result = &mut copy => return ended(result),
            _ = check.tick() => {
                if activity.lock().unwrap_or_else(PoisonError::into_inner).quiet() {
                    break;
                }
            }
        }
    }
    if let Some(metrics) = metrics {
        metrics.deleted_service_pipes.inc();
    }
    PipeEnd::ServiceDeleted
}

/// Which end of a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The CONNECT client (the binding-worker).
    Client,
    /// The tunnel stream (the origin).
    Tunnel,
}

/// What moved through a pipe, for [`Activity::quiet`].
#[derive(Debug)]
struct Activity {
    read_from_client: u64,
    written_to_tunnel: u64,
    read_from_tunnel: u64,
    written_to_client: u64,
    /// Who sent the last bytes read.
    last_from: Option<Side>,
    last_moved: Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            read_from_client: 0,
            written_to_tunnel: 0,
            read_from_tunnel: 0,
            written_to_client: 0,
            last_from: None,
            last_moved: Instant::now(),
        }
    }

    fn read(&mut self, side: Side, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        match side {
            Side::Client => self.read_from_client += n,
            Side::Tunnel => self.read_from_tunnel += n,
        }
        self.last_from = Some(side);
        self.last_moved = Instant::now();
    }

    fn wrote(&mut self, side: Side, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        match side {
            Side::Client => self.written_to_client += n,
            Side::Tunnel => self.written_to_tunnel += n,
        }
        self.last_moved = Instant::now();
    }

    /// Between exchanges: nothing buffered, no request waiting for its answer, and idle for
    /// [`QUIET`].
    fn quiet(&self) -> bool {
        self.read_from_client == self.written_to_tunnel
            && self.read_from_tunnel == self.written_to_client
            && self.last_from != Some(Side::Client)
            && self.last_moved.elapsed() >= QUIET
    }
}

/// One end of a pipe, recording what moves through it.
struct Watched<T> {
    io: T,
    side: Side,
    activity: Arc<Mutex<Activity>>,
}

impl<T> Watched<T> {
    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            let side = self.side;
            self.activity().read(side, n);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled
            && *n > 0
        {
            let (side, n) = (self.side, *n);
            self.activity().wrote(side, n);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, duplex};

    use super::*;

    const SERVICE: Uuid = Uuid::from_u128(7);

    /// A pipe between two in-memory streams; returns the far ends (client, tunnel).
    fn start(
        pipes: &Arc<ServicePipes>,
    ) -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<PipeEnd>,
    ) {
        let (client, client_end) = duplex(1024);
        let (tunnel, tunnel_end) = duplex(1024);
        let ticket = pipes.register(PipeKey::Service(SERVICE));
        let task = tokio::spawn(pipe(ticket, client_end, tunnel_end, 1024, None));
        (client, tunnel, task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_services_pipe_closes_once_quiet_but_never_before_the_answer() {
        let pipes = Arc::new(ServicePipes::default());
        let (mut client, mut tunnel, task) = start(&pipes);
        // A request on its way: the pipe waits for the answer.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut request = [0u8; 18];
        tunnel.read_exact(&mut request).await.unwrap();
        assert_eq!(pipes.close_service(SERVICE), 1);
        tokio::time::sleep(QUIET * 3).await;
        assert!(
            !task.is_finished(),
            "a request waiting for its answer is left alone"
        );
        tunnel.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        let mut answer = [0u8; 17];
        client.read_exact(&mut answer).await.unwrap();
        // Answered and quiet: closed, both ends see it.
        assert!(matches!(task.await.unwrap(), PipeEnd::ServiceDeleted));
        assert_eq!(client.read(&mut [0u8; 1]).await.unwrap(), 0);
        assert_eq!(tunnel.read(&mut [0u8; 1]).await.unwrap(), 0);
        assert!(pipes.lock().is_empty(), "nothing is kept for closed pipes");
    }

    #[tokio::test(start_paused = true)]
    async fn pipes_of_other_services_and_finished_pipes_are_untouched() {
        let pipes = Arc::new(ServicePipes::default());
        let (mut client, mut tunnel, task) = start(&pipes);
        assert_eq!(pipes.close_service(Uuid::from_u128(8)), 0);
        tokio::time::sleep(QUIET * 3).await;
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        tunnel.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        tunnel.shutdown().await.unwrap();
        assert!(matches!(task.await.unwrap(), PipeEnd::Finished(4, 0)));
        assert!(pipes.lock().is_empty());
    }
}
