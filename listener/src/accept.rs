//! [`Acceptor`]: the accept loop of every listener. It caps the connections open at once
//! (one more gets a short 503, or is closed for non-HTTP listeners, before the process runs
//! out of file descriptors), and it survives accept failures: a failure of one connection is
//! skipped, running out of descriptors (`EMFILE`, `ENFILE`) or anything else backs off
//! briefly and keeps accepting, never spinning and never ending the loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::refusal::{PageFn, Refusal, response_bytes};

/// Pause after an accept failure that is not one connection's: descriptors come back as
/// connections close.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Refused connections being answered at once; past that they are closed unanswered, so
/// that refusing never takes more than a few descriptors.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// Bound on answering one refused connection (write the 503, read what the client sent).
const REFUSAL_TIME: Duration = Duration::from_secs(1);
/// Bytes read from a refused connection before closing it: closing with unread bytes
/// resets the connection, and the client could lose the 503 before reading it.
const REFUSAL_DRAIN: usize = 64 << 10;

/// How a connection over the cap is turned away.
#[derive(Debug, Clone, Copy)]
pub enum RefuseWith {
    /// An HTTP/1.1 503 whose body the [`PageFn`] renders, then close.
    Http(PageFn),
    /// Close at once (listeners that do not speak HTTP).
    Close,
}

/// One accepted connection within the cap.
#[derive(Debug)]
pub struct Admitted {
    /// The connection.
    pub stream: TcpStream,
    /// Its peer.
    pub peer: SocketAddr,
    /// Its place under the cap: keep it as long as the connection is open.
    pub permit: ConnectionPermit,
}

/// A connection's place under its listener's cap; released when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    _permit: OwnedSemaphorePermit,
}

/// A listener with a connection cap (see the module doc).
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    name: &'static str,
    max_connections: usize,
    slots: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    refuse: RefuseWith,
    /// Accept failures in a row (for logging the first one and the recovery).
    failing: AtomicU64,
}

impl Acceptor {
    /// Accepts on `listener`, at most `max_connections` (at least 1) open at once; `name`
    /// names the listener in logs.
    pub fn new(
        listener: TcpListener,
        name: &'static str,
        max_connections: usize,
        refuse: RefuseWith,
    ) -> Self {
        let max_connections = max_connections.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            listener,
            name,
            max_connections,
            slots: Arc::new(Semaphore::new(max_connections)),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)),
            refuse,
            failing: AtomicU64::new(0),
        }
    }

    /// The address listened on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Connections open now (admitted and not yet closed).
    pub fn open_connections(&self) -> usize {
        self.max_connections - self.slots.available_permits()
    }

    /// The next connection within the cap. Connections over the cap are refused on the way
    /// ([`RefuseWith`]); accept failures are skipped or waited out. Cancel-safe.
    pub async fn accept(&self) -> Admitted {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.recovered();
                    match self.slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            return Admitted {
                                stream,
                                peer,
                                permit: ConnectionPermit { _permit: permit },
                            };
                        }
                        Err(_) => self.refuse(stream, peer),
                    }
                }
                Err(err) if is_per_connection(&err) => {
                    tracing::debug!(listener = self.name, error = %err, "a connection failed while accepted");
                }
                Err(err) => {
                    if self.failing.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(
                            listener = self.name,
                            error = %err,
                            "accepting connections fails (out of file descriptors?); retrying \
                             every {} ms",
                            ACCEPT_BACKOFF.as_millis()
                        );
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    fn recovered(&self) {
        let failures = self.failing.swap(0, Ordering::Relaxed);
        if failures > 0 {
            tracing::info!(
                listener = self.name,
                failures,
                "accepting connections again"
            );
        }
    }

    /// Turns away a connection over the cap, without waiting for it.
    fn refuse(&self, stream: TcpStream, peer: SocketAddr) {
        let RefuseWith::Http(page) = self.refuse else {
            tracing::debug!(listener = self.name, %peer, "closed a connection over the cap");
            return;
        };
        let Ok(slot) = self.refusals.clone().try_acquire_owned() else {
            tracing::debug!(listener = self.name, %peer, "closed a connection over the cap unanswered");
            return;
        };
        let refusal = Refusal::AtConnectionLimit {
            max_connections: self.max_connections,
        };
        let answer = response_bytes(self.name, &refusal, page);
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(REFUSAL_TIME, answer_and_close(stream, &answer)).await;
        });
    }
}

/// Writes `answer`, ends the write side, and reads until the client closes (bounded) so
/// that closing does not reset the connection under the answer.
async fn answer_and_close(mut stream: TcpStream, answer: &[u8]) -> std::io::Result<()> {
    stream.write_all(answer).await?;
    stream.shutdown().await?;
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < REFUSAL_DRAIN {
        match stream.read(&mut buf).await? {
            0 => break,
            n => drained += n,
        }
    }
    Ok(())
}

/// Accept errors that concern one connection only (it was reset before it was taken).
fn is_per_connection(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::WouldBlock
    )
}
