//! The request body as it travels from the runtime's `ByteStream` writes (capnp thread) to
//! the origin request (proxy runtime): an inbox of events ([`wvpc_schemas::byte_stream_flow`])
//! whose writes are answered as the origin request takes them, so a slow origin slows the
//! script's writes down instead of buffering the body.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::byte_stream_flow::InboxReceiver;

/// The events of one request body, in the order the runtime sent them.
pub(crate) type BodyEvents = InboxReceiver<BodyEvent>;

/// What the runtime did to the request body stream.
#[derive(Debug)]
pub(crate) enum BodyEvent {
    /// A chunk.
    Data(Bytes),
    /// `end()`: the body is complete.
    End,
    /// `abort(error)`: the body broke; the origin request must not look complete.
    Abort(ProxyError),
}

/// Why the request body did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestBodyError {
    /// The script aborted the body with this error.
    #[error("the request body was aborted: {0}")]
    Aborted(ProxyError),
    /// The runtime dropped the stream without `end()` (it disconnected or was cancelled).
    #[error("the request body stream was dropped before it ended")]
    Abandoned,
}

impl RequestBodyError {
    pub(crate) fn to_proxy_error(&self) -> ProxyError {
        match self {
            Self::Aborted(err) => err.clone(),
            Self::Abandoned => {
                ProxyError::new(ErrorCode::HttpRequestError).with_details(self.to_string())
            }
        }
    }
}

/// The origin request's body.
#[derive(Debug)]
pub(crate) struct RequestBody {
    state: State,
    /// Fired once the body has been read to its end: the response timeout starts then.
    finished: Option<oneshot::Sender<()>>,
    /// Set at the same moment, for whoever asks later (is the connection done with it?).
    done: Arc<AtomicBool>,
}

/// Tells when a [`RequestBody`] has been sent completely.
#[derive(Debug)]
pub(crate) struct BodyFinished {
    signal: Option<oneshot::Receiver<()>>,
    done: Arc<AtomicBool>,
}

impl BodyFinished {
    /// Whether the body has been read to its end.
    pub(crate) fn is_finished(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// A flag that turns true once the body has been read to its end.
    pub(crate) fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.done)
    }

    /// Resolves once the body has been read to its end; never if it failed (hyper then fails
    /// the request itself). Can be waited on again after a cancelled wait.
    pub(crate) async fn wait(&mut self) {
        if self.is_finished() {
            return;
        }
        if let Some(signal) = self.signal.as_mut()
            && signal.await.is_ok()
        {
            return;
        }
        self.signal = None;
        std::future::pending::<()>().await;
    }
}

#[derive(Debug)]
enum State {
    Empty,
    Streaming {
        first: Option<Bytes>,
        events: BodyEvents,
    },
    Done,
}

impl RequestBody {
    /// A body known to be empty.
    pub(crate) fn empty() -> (Self, BodyFinished) {
        let done = Arc::new(AtomicBool::new(true));
        let finished = BodyFinished {
            signal: None,
            done: Arc::clone(&done),
        };
        (
            Self {
                state: State::Empty,
                finished: None,
                done,
            },
            finished,
        )
    }

    /// The body fed by `events`. When `peek` is set, waits for the first event so that a body
    /// that is immediately ended is sent as empty rather than chunked.
    pub(crate) async fn from_events(
        mut events: BodyEvents,
        peek: bool,
    ) -> Result<(Self, BodyFinished), ProxyError> {
        let mut first = None;
        if peek {
            match events.recv().await {
                Some(BodyEvent::End) => return Ok(Self::empty()),
                Some(BodyEvent::Data(data)) => first = Some(data),
                Some(BodyEvent::Abort(err)) => return Err(err),
                None => return Err(RequestBodyError::Abandoned.to_proxy_error()),
            }
        }
        let (tx, rx) = oneshot::channel();
        let done = Arc::new(AtomicBool::new(false));
        let finished = BodyFinished {
            signal: Some(rx),
            done: Arc::clone(&done),
        };
        let body = Self {
            state: State::Streaming { first, events },
            finished: Some(tx),
            done,
        };
        Ok((body, finished))
    }

    fn finish(&mut self) {
        self.state = State::Done;
        self.done.store(true, Ordering::Release);
        if let Some(finished) = self.finished.take() {
            let _ = finished.send(());
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = &mut *self;
        let State::Streaming { first, events } = &mut this.state else {
            return Poll::Ready(None);
        };
        if let Some(data) = first.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match events.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(BodyEvent::Data(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(BodyEvent::End)) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(BodyEvent::Abort(err))) => {
                this.state = State::Done;
                Poll::Ready(Some(Err(RequestBodyError::Aborted(err))))
            }
            Poll::Ready(None) => {
                this.state = State::Done;
                Poll::Ready(Some(Err(RequestBodyError::Abandoned)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Empty | State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Empty | State::Done => SizeHint::with_exact(0),
            State::Streaming { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use wvpc_schemas::inbox;

    use super::*;

    #[tokio::test]
    async fn an_ended_body_yields_its_chunks_then_finishes() {
        let (tx, rx) = inbox();
        tx.push(BodyEvent::Data(Bytes::from_static(b"ab")), 2)
            .unwrap();
        tx.push(BodyEvent::Data(Bytes::from_static(b"cd")), 2)
            .unwrap();
        tx.push(BodyEvent::End, 0).unwrap();
        let (body, mut finished) = RequestBody::from_events(rx, true).await.unwrap();
        assert!(!body.is_end_stream());
        assert!(!finished.is_finished());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcd");
        finished.wait().await;
        assert!(finished.is_finished());
    }

    #[tokio::test]
    async fn a_peeked_body_that_ends_at_once_is_empty() {
        let (tx, rx) = inbox();
        tx.push(BodyEvent::End, 0).unwrap();
        let (body, _) = RequestBody::from_events(rx, true).await.unwrap();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn an_aborted_or_abandoned_body_is_an_error_not_a_short_body() {
        let (tx, rx) = inbox();
        tx.push(BodyEvent::Data(Bytes::from_static(b"ab")), 2)
            .unwrap();
        tx.push(
            BodyEvent::Abort(ProxyError::new(ErrorCode::ConnectionReadTimeout)),
            0,
        )
        .unwrap();
        let (body, _) = RequestBody::from_events(rx, false).await.unwrap();
        let err = body.collect().await.unwrap_err();
        assert_eq!(err.to_proxy_error().code, ErrorCode::ConnectionReadTimeout);

        let (tx, rx) = inbox();
        drop(tx);
        let (body, _) = RequestBody::from_events(rx, false).await.unwrap();
        assert!(matches!(
            body.collect().await.unwrap_err(),
            RequestBodyError::Abandoned
        ));
    }
}
