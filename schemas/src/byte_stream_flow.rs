//! Flow control of the bodies carried by `ByteStream` (`binding.capnp`), on both sides.
//!
//! `ByteStream.write` is a plain call that the receiver answers once its reader has taken the
//! chunk. [`StreamWriter`] keeps writes in flight up to [`WINDOW`] bytes and, when the window
//! is full, waits for the oldest answers. The receiver queues each chunk in an [`inbox`] as the
//! call is dispatched, so chunks keep the order of the calls (capnp delivers the calls made on
//! one capability in order), and the call's answer waits until the reader takes the chunk. So
//! a body costs at most a window of memory on either side, however slow the reader is. An
//! inbox refuses a writer that ignores the window ([`INBOX_LIMIT`]).
//!
//! capnp's own `-> stream` calls are not used: capnp-rpc gives every capability that receives
//! one a flow controller whose task never ends, so one was kept per body for the life of the
//! connection.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use capnp::capability::{Promise, Response};
use tokio::sync::{mpsc, oneshot};
use wvpc_errors::ProxyError;

use crate::binding_capnp::byte_stream;
use crate::write_wire_error;

/// Bytes a writer keeps unanswered on one stream before it waits.
pub const WINDOW: usize = 256 << 10;
/// Largest `ByteStream.write`; bigger pieces are split.
pub const MAX_WRITE: usize = 64 << 10;
/// Unread bytes an inbox takes before it refuses writes: the window with room to spare, so
/// only a writer that ignores the window is refused.
pub const INBOX_LIMIT: usize = 2 * WINDOW;

type WriteAnswer = Promise<Response<byte_stream::write_results::Owned>, capnp::Error>;

/// Writes one body into a remote `ByteStream` with a bounded window of unanswered bytes.
///
/// Every method may be cancelled (e.g. by a timeout) without losing track of what is in
/// flight; the usual thing to do then is [`StreamWriter::abort`].
pub struct StreamWriter {
    stream: byte_stream::Client,
    /// Writes sent and not yet answered, oldest first, with their sizes.
    in_flight: VecDeque<(usize, WriteAnswer)>,
    in_flight_bytes: usize,
}

impl StreamWriter {
    /// A writer for `stream`.
    pub fn new(stream: byte_stream::Client) -> Self {
        Self {
            stream,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
        }
    }

    /// Sends `data` (in pieces of at most [`MAX_WRITE`]), first waiting for room in the window.
    /// `Err` when the receiver refused a write (it stopped reading, or the connection broke).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), capnp::Error> {
        for piece in data.chunks(MAX_WRITE) {
            while !self.in_flight.is_empty() && self.in_flight_bytes + piece.len() > WINDOW {
                self.take_oldest_answer().await?;
            }
            let mut write = self.stream.write_request();
            write.get().set_bytes(piece);
            self.in_flight
                .push_back((piece.len(), write.send().promise));
            self.in_flight_bytes += piece.len();
        }
        Ok(())
    }

    /// Ends the stream: sends `end` at once (it follows the writes), then waits until every
    /// write is answered, i.e. the reader has taken the whole body. `Err` when a write or the
    /// end was refused.
    pub async fn end(&mut self) -> Result<(), capnp::Error> {
        let end = self.stream.end_request().send().promise;
        self.flush().await?;
        end.await.map(drop)
    }

    /// Waits until every write sent so far is answered.
    pub async fn flush(&mut self) -> Result<(), capnp::Error> {
        while !self.in_flight.is_empty() {
            self.take_oldest_answer().await?;
        }
        Ok(())
    }

    /// Breaks the stream with `error`, which the receiver surfaces after the chunks it already
    /// has. Unanswered writes are forgotten. `Err` when the receiver refused the abort.
    pub async fn abort(&mut self, error: &ProxyError) -> Result<(), capnp::Error> {
        self.in_flight.clear();
        self.in_flight_bytes = 0;
        let mut abort = self.stream.abort_request();
        write_wire_error(abort.get().init_error(), error);
        abort.send().promise.await.map(drop)
    }

    async fn take_oldest_answer(&mut self) -> Result<(), capnp::Error> {
        let Some((_, answer)) = self.in_flight.front_mut() else {
            return Ok(());
        };
        // Popped only once answered: a cancelled wait leaves the write in the window.
        let answered = answer.await;
        if let Some((bytes, _)) = self.in_flight.pop_front() {
            self.in_flight_bytes -= bytes;
        }
        answered.map(drop)
    }
}

/// Why an inbox refused an item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    /// The reader is gone: nobody will take the item.
    #[error("the reader of this stream is gone")]
    Closed,
    /// The writer sent more than [`INBOX_LIMIT`] bytes that the reader has not taken.
    #[error(
        "the writer sent more than {INBOX_LIMIT} bytes the reader has not taken yet, \
         ignoring the flow-control window of {WINDOW} bytes"
    )]
    Overflow,
}

/// A new inbox: the [`InboxSender`] lives with the `ByteStream` server, the [`InboxReceiver`]
/// with the reader (any thread).
pub fn inbox<T>() -> (InboxSender<T>, InboxReceiver<T>) {
    let (queue, items) = mpsc::unbounded_channel();
    let unread = Arc::new(AtomicUsize::new(0));
    (
        InboxSender {
            queue,
            unread: Arc::clone(&unread),
        },
        InboxReceiver { items, unread },
    )
}

struct Queued<T> {
    item: T,
    bytes: usize,
    taken: oneshot::Sender<()>,
}

/// The queueing end of an inbox. Dropping it ends the stream for the reader (after the
/// items already queued).
pub struct InboxSender<T> {
    queue: mpsc::UnboundedSender<Queued<T>>,
    /// Bytes queued and not yet taken.
    unread: Arc<AtomicUsize>,
}

impl<T> InboxSender<T> {
    /// Queues `item`, which holds `bytes` of body, behind the items queued before it. The
    /// returned [`Taken`] resolves once the reader has taken it; queueing itself never waits,
    /// so it keeps the order of the calls that queue.
    pub fn push(&self, item: T, bytes: usize) -> Result<Taken, InboxError> {
        if self.unread.fetch_add(bytes, Ordering::AcqRel) + bytes > INBOX_LIMIT {
            self.unread.fetch_sub(bytes, Ordering::AcqRel);
            return Err(InboxError::Overflow);
        }
        let (taken, signal) = oneshot::channel();
        self.queue
            .send(Queued { item, bytes, taken })
            .map_err(|_| {
                self.unread.fetch_sub(bytes, Ordering::AcqRel);
                InboxError::Closed
            })?;
        Ok(Taken(signal))
    }
}

/// Resolves once the reader has taken the item; `Err(Closed)` if it went away first.
pub struct Taken(oneshot::Receiver<()>);

impl Future for Taken {
    type Output = Result<(), InboxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(ready!(Pin::new(&mut self.0).poll(cx)).map_err(|_| InboxError::Closed))
    }
}

/// The reading end of an inbox. Dropping it drops every queued item, and the writes waiting
/// on them fail.
pub struct InboxReceiver<T> {
    items: mpsc::UnboundedReceiver<Queued<T>>,
    unread: Arc<AtomicUsize>,
}

impl<T> InboxReceiver<T> {
    /// The next item, which also answers its write; `None` once the sender is gone and the
    /// queue is empty.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let Some(queued) = ready!(self.items.poll_recv(cx)) else {
            return Poll::Ready(None);
        };
        self.unread.fetch_sub(queued.bytes, Ordering::AcqRel);
        // The writer may have stopped waiting (it aborted); the item is taken all the same.
        let _ = queued.taken.send(());
        Poll::Ready(Some(queued.item))
    }

    /// [`Self::poll_recv`] as a future.
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl<T> std::fmt::Debug for InboxReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxReceiver")
            .field("unread", &self.unread.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_come_out_in_order_and_are_answered_when_taken() {
        let (tx, mut rx) = inbox();
        let first = tx.push("a", 10).unwrap();
        let mut second = tx.push("b", 20).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some("a"));
        first.await.unwrap();
        // Not taken yet: still waiting.
        assert!(futures_poll_once(&mut second).is_pending());
        assert_eq!(rx.recv().await, Some("b"));
        second.await.unwrap();
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_writer_past_the_limit_is_refused_until_the_reader_catches_up() {
        let (tx, mut rx) = inbox();
        let _kept = tx.push(1, INBOX_LIMIT).unwrap();
        assert_eq!(tx.push(2, 1).err(), Some(InboxError::Overflow));
        assert_eq!(rx.recv().await, Some(1));
        tx.push(3, INBOX_LIMIT).unwrap();
    }

    #[tokio::test]
    async fn a_gone_reader_fails_queued_and_new_items() {
        let (tx, rx) = inbox();
        let queued = tx.push((), 5).unwrap();
        drop(rx);
        assert_eq!(queued.await, Err(InboxError::Closed));
        assert_eq!(tx.push((), 5).err(), Some(InboxError::Closed));
    }

    fn futures_poll_once(taken: &mut Taken) -> Poll<Result<(), InboxError>> {
        let waker = std::task::Waker::noop();
        Pin::new(taken).poll(&mut Context::from_waker(waker))
    }
}
