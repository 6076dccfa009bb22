//! The envelope of a socket's bytes on the binding-worker ↔ iris hop: what lets each end tell
//! a clean half-close from a reset.
//!
//! A `connect()` socket is one HTTP/2 CONNECT stream (`wvpc-scheme: tcp`). HTTP/2 has both a
//! clean end (END_STREAM) and a reset (RST_STREAM), but an upgraded hyper stream shows a
//! reset with `CANCEL` (what dropping a stream sends) as a clean end, and sends END_STREAM
//! when dropped: a broken path would look like the destination's FIN, and a script would
//! take a truncated answer for a whole one. So both ends wrap the CONNECT stream of a `tcp`
//! CONNECT in [`SocketFrames`]: the script's and the destination's bytes travel untouched
//! inside `data` frames, `end` is a half-close, `reset` a reset, and a stream that stops
//! without `end` (or with `reset`) reads as an error ([`io::ErrorKind::ConnectionReset`]),
//! never as a clean end. An iris node that relays the CONNECT passes the frames through.
//!
//! A frame is a one-byte type and a big-endian `u32` payload length, then the payload:
//! `0` data (1..=[`MAX_FRAME`] bytes), `1` end (empty), `2` reset (empty). Anything else from
//! the peer is an error, never a panic.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest payload of one data frame.
pub const MAX_FRAME: usize = 64 << 10;

const DATA: u8 = 0;
const END: u8 = 1;
const RESET: u8 = 2;
const HEADER: usize = 5;

/// A byte stream whose reads and writes are a socket's bytes, carried as frames on `inner`.
///
/// - reads: the peer's data; `Ok(0)` at its `end` frame; `ConnectionReset` at its `reset`
///   frame or when `inner` ends without an `end`; `InvalidData` for a malformed frame;
/// - writes: data frames; `shutdown` sends `end` and shuts `inner`'s write side down;
///   [`SocketFrames::poll_reset`] sends `reset` instead.
#[derive(Debug)]
pub struct SocketFrames<T> {
    inner: T,
    read: ReadState,
    /// Encoded bytes not yet written to `inner`.
    out: Vec<u8>,
    out_pos: usize,
    /// `end` or `reset` queued: no more data may be written.
    closed: bool,
}

#[derive(Debug, Clone, Copy)]
enum ReadState {
    Header { buf: [u8; HEADER], filled: usize },
    Data { remaining: usize },
    Ended,
    Failed(io::ErrorKind),
}

impl<T> SocketFrames<T> {
    /// Frames over `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            read: ReadState::Header {
                buf: [0; HEADER],
                filled: 0,
            },
            out: Vec::new(),
            out_pos: 0,
            closed: false,
        }
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

fn broken(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, why)
}

impl<T: AsyncWrite + Unpin> SocketFrames<T> {
    fn queue(&mut self, kind: u8, payload: &[u8]) {
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        self.out.push(kind);
        // Payloads are at most MAX_FRAME bytes, far below u32::MAX.
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out.extend_from_slice(payload);
    }

    /// Writes what is queued.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Sends a `reset` frame (after the data already written) and flushes it: the peer reads
    /// an error instead of a clean end. Dropping the stream afterwards is enough.
    pub fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closed {
            self.closed = true;
            self.queue(RESET, &[]);
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// [`Self::poll_reset`] as a future.
    pub async fn reset(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_reset(cx)).await
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SocketFrames<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.read {
                ReadState::Ended => return Poll::Ready(Ok(())),
                ReadState::Failed(kind) => {
                    return Poll::Ready(Err(io::Error::new(*kind, "the socket is broken")));
                }
                ReadState::Header { buf, filled } => {
                    let mut header = ReadBuf::new(&mut buf[*filled..]);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut header))?;
                    let n = header.filled().len();
                    if n == 0 {
                        this.read = ReadState::Failed(io::ErrorKind::ConnectionReset);
                        return Poll::Ready(Err(broken(
                            "the peer's stream ended without a clean end of the socket",
                        )));
                    }
                    *filled += n;
                    if *filled < HEADER {
                        continue;
                    }
                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                    this.read = match (buf[0], len) {
                        (DATA, 1..=MAX_FRAME) => ReadState::Data { remaining: len },
                        (END, 0) => ReadState::Ended,
                        (RESET, 0) => {
                            this.read = ReadState::Failed(io::ErrorKind::ConnectionReset);
                            return Poll::Ready(Err(broken("the peer reset the socket")));
                        }
                        _ => {
                            this.read = ReadState::Failed(io::ErrorKind::InvalidData);
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "malformed socket frame",
                            )));
                        }
                    };
                }
                ReadState::Data { remaining } => {
                    if out.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let want = (*remaining).min(out.remaining());
                    let mut part = ReadBuf::new(out.initialize_unfilled_to(want));
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
                    let n = part.filled().len();
                    if n == 0 {
                        this.read = ReadState::Failed(io::ErrorKind::ConnectionReset);
                        return Poll::Ready(Err(broken(
                            "the peer's stream ended in the middle of a frame",
                        )));
                    }
                    out.advance(n);
                    *remaining -= n;
                    if *remaining == 0 {
                        this.read = ReadState::Header {
                            buf: [0; HEADER],
                            filled: 0,
                        };
                    }
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SocketFrames<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // One frame queued at a time: the inner stream's backpressure reaches the writer.
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(MAX_FRAME);
        this.queue(DATA, &buf[..n]);
        // Start writing now; what does not fit waits for the next call or flush.
        if let Poll::Ready(Err(err)) = this.poll_drain(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.closed {
            ready!(this.poll_drain(cx))?;
            this.closed = true;
            this.queue(END, &[]);
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, duplex};

    use super::*;

    #[tokio::test]
    async fn data_and_a_clean_end_go_through_untouched() {
        let (a, b) = duplex(64);
        let (mut a, mut b) = (SocketFrames::new(a), SocketFrames::new(b));
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
            a.shutdown().await.unwrap();
            a
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert!(got == payload);
        // The other direction still works after the half-close.
        let mut a = writer.await.unwrap();
        b.write_all(b"answer").await.unwrap();
        b.shutdown().await.unwrap();
        let mut answer = Vec::new();
        a.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer");
    }

    #[tokio::test]
    async fn a_reset_or_a_stream_that_just_stops_is_an_error_not_an_end() {
        let (a, b) = duplex(64);
        let (mut a, mut b) = (SocketFrames::new(a), SocketFrames::new(b));
        a.write_all(b"partial").await.unwrap();
        a.reset().await.unwrap();
        let mut got = [0u8; 7];
        b.read_exact(&mut got).await.unwrap();
        let err = b.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);

        let (a, b) = duplex(64);
        let (mut a, mut b) = (SocketFrames::new(a), SocketFrames::new(b));
        a.write_all(b"cut").await.unwrap();
        drop(a);
        let mut got = Vec::new();
        let err = b.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(got, b"cut", "the bytes before the break are delivered");
    }

    #[tokio::test]
    async fn malformed_frames_are_errors() {
        for bad in [
            &[9u8, 0, 0, 0, 0][..],
            &[0, 0, 0, 0, 0],
            &[0, 0xff, 0xff, 0xff, 0xff],
            &[1, 0, 0, 0, 1],
        ] {
            let (mut a, b) = duplex(64);
            let mut b = SocketFrames::new(b);
            a.write_all(bad).await.unwrap();
            let err = b.read(&mut [0u8; 8]).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
    }
}
