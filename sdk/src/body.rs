//! Message bodies: [`Body`] (what a request or response carries) and [`IncomingBody`] (a body
//! arriving from the host, read chunk by chunk).

use std::fmt;
use std::io::{self, Read};

use wasip2::http::types::{IncomingBody as WasiIncomingBody, OutgoingBody};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

use crate::error::ProxyError;

/// Largest chunk read from an incoming body at once.
const READ_CHUNK: u64 = 64 * 1024;

/// Largest body written whole before its request starts ([`Body::settle_whole`]): one write
/// the host's body buffer always takes, and what the host sends inside its call.
const WHOLE_BODY_MAX: usize = 8 * 1024;

/// The body of a [`Request`](crate::Request) or [`Response`](crate::Response).
///
/// Incoming bodies and readers are streamed, never buffered whole.
#[derive(Default)]
pub struct Body(Source);

#[derive(Default)]
enum Source {
    #[default]
    Empty,
    Bytes(Vec<u8>),
    Reader(Box<dyn Read>),
    Incoming(IncomingBody),
}

impl Body {
    /// No body.
    pub fn empty() -> Self {
        Self(Source::Empty)
    }

    /// A body streamed from `reader` until it returns 0.
    pub fn from_reader(reader: impl Read + 'static) -> Self {
        Self(Source::Reader(Box::new(reader)))
    }

    /// Reads the whole body into memory.
    pub fn into_bytes(self) -> Result<Vec<u8>, ProxyError> {
        match self.0 {
            Source::Empty => Ok(Vec::new()),
            Source::Bytes(bytes) => Ok(bytes),
            Source::Reader(mut reader) => {
                let mut bytes = Vec::new();
                reader
                    .read_to_end(&mut bytes)
                    .map_err(|_| ProxyError::internal())?;
                Ok(bytes)
            }
            Source::Incoming(mut incoming) => {
                let mut bytes = Vec::new();
                while let Some(chunk) = incoming.chunk()? {
                    bytes.extend_from_slice(&chunk);
                }
                Ok(bytes)
            }
        }
    }

    /// Reads the whole body as UTF-8 text (invalid sequences are replaced).
    pub fn into_text(self) -> Result<String, ProxyError> {
        Ok(String::from_utf8_lossy(&self.into_bytes()?).into_owned())
    }

    /// Whether the whole body is known before the request starts, and small: then it is
    /// written and finished first, and the host sends it inside the call that starts the
    /// request instead of streaming it after. An incoming body that has already ended
    /// (a GET's) becomes empty here; the check does not wait.
    pub(crate) fn settle_whole(&mut self) -> bool {
        if let Source::Incoming(incoming) = &mut self.0
            && incoming.ended_now()
        {
            self.0 = Source::Empty;
        }
        match &self.0 {
            Source::Empty => true,
            Source::Bytes(bytes) => bytes.len() <= WHOLE_BODY_MAX,
            Source::Reader(_) | Source::Incoming(_) => false,
        }
    }

    /// The incoming stream, if this body arrived from the host and was not read yet.
    pub fn into_incoming(self) -> Option<IncomingBody> {
        match self.0 {
            Source::Incoming(incoming) => Some(incoming),
            _ => None,
        }
    }

    /// Streams this body into `out` and finishes it.
    ///
    /// [`Sent::Complete`] when every byte went out and the body was finished;
    /// [`Sent::Closed`] when the receiver stopped taking it (the fetch's outcome then tells
    /// why). An error means reading the source failed: `out` is dropped unfinished, which tells
    /// the receiver that the body is incomplete.
    pub(crate) fn send(self, out: OutgoingBody) -> Result<Sent, ProxyError> {
        let Ok(stream) = out.write() else {
            return Err(ProxyError::internal());
        };
        let sent = match self.0 {
            Source::Empty => Ok(Sent::Complete),
            Source::Bytes(bytes) => write_all(&stream, &bytes),
            Source::Reader(mut reader) => {
                let mut buf = vec![0; READ_CHUNK as usize];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break Ok(Sent::Complete),
                        Ok(n) => match write_all(&stream, &buf[..n]) {
                            Ok(Sent::Complete) => {}
                            other => break other,
                        },
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(err) => {
                            break Err(ProxyError::request_error(format!(
                                "reading the request body failed: {err}"
                            )));
                        }
                    }
                }
            }
            Source::Incoming(mut incoming) => loop {
                match incoming.chunk() {
                    Ok(None) => break Ok(Sent::Complete),
                    Ok(Some(chunk)) => match write_all(&stream, &chunk) {
                        Ok(Sent::Complete) => {}
                        other => break other,
                    },
                    Err(err) => break Err(err),
                }
            },
        };
        match sent {
            Ok(Sent::Complete) => {
                let _ = stream.blocking_flush();
                drop(stream); // a child of `out`: must go first
                OutgoingBody::finish(out, None).map_err(ProxyError::from)?;
                Ok(Sent::Complete)
            }
            Ok(Sent::Closed) => Ok(Sent::Closed),
            Err(err) => Err(err),
        }
    }
}

/// How far [`Body::send`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    Complete,
    Closed,
}

/// Writes `bytes`, waiting for the stream to accept them.
fn write_all(stream: &OutputStream, mut bytes: &[u8]) -> Result<Sent, ProxyError> {
    while !bytes.is_empty() {
        let ready = match stream.check_write() {
            Ok(0) => {
                stream.subscribe().block();
                continue;
            }
            Ok(n) => usize::try_from(n).unwrap_or(usize::MAX).min(bytes.len()),
            Err(StreamError::Closed) => return Ok(Sent::Closed),
            Err(StreamError::LastOperationFailed(err)) => {
                return Err(ProxyError::from_stream_error(&err));
            }
        };
        let (now, rest) = bytes.split_at(ready);
        match stream.write(now) {
            Ok(()) => bytes = rest,
            Err(StreamError::Closed) => return Ok(Sent::Closed),
            Err(StreamError::LastOperationFailed(err)) => {
                return Err(ProxyError::from_stream_error(&err));
            }
        }
    }
    Ok(Sent::Complete)
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Self(Source::Bytes(bytes))
    }
}

impl From<&[u8]> for Body {
    fn from(bytes: &[u8]) -> Self {
        Self(Source::Bytes(bytes.to_vec()))
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Self(Source::Bytes(text.into_bytes()))
    }
}

impl From<&str> for Body {
    fn from(text: &str) -> Self {
        Self(Source::Bytes(text.as_bytes().to_vec()))
    }
}

impl From<IncomingBody> for Body {
    fn from(incoming: IncomingBody) -> Self {
        Self(Source::Incoming(incoming))
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::Empty => f.write_str("Body::Empty"),
            Source::Bytes(b) => write!(f, "Body::Bytes({} bytes)", b.len()),
            Source::Reader(_) => f.write_str("Body::Reader"),
            Source::Incoming(_) => f.write_str("Body::Incoming"),
        }
    }
}

/// A body arriving from the host (the incoming request's, or a fetched response's), read in
/// chunks as they arrive. Implements [`Read`]; a failure mid-stream (e.g. the origin's
/// response was cut off) is a [`ProxyError`] such as `http_response_incomplete`.
pub struct IncomingBody {
    // Field order is drop order: the stream is a child of the body resource.
    stream: Option<InputStream>,
    _body: WasiIncomingBody,
    /// A failure [`Self::ended_now`] met, reported by the next read.
    failed: Option<ProxyError>,
}

impl IncomingBody {
    pub(crate) fn new(body: WasiIncomingBody) -> Self {
        let stream = body.stream().ok();
        Self {
            stream,
            _body: body,
            failed: None,
        }
    }

    /// Whether the body has ended with no data left, checked without waiting and without
    /// taking any data (a zero-length read).
    fn ended_now(&mut self) -> bool {
        let Some(stream) = &self.stream else {
            return self.failed.is_none();
        };
        match stream.read(0) {
            Ok(_) => false,
            Err(StreamError::Closed) => {
                self.stream = None;
                true
            }
            Err(StreamError::LastOperationFailed(err)) => {
                self.stream = None;
                self.failed = Some(ProxyError::from_stream_error(&err));
                false
            }
        }
    }

    /// The next chunk, or `None` at the end of the body. Blocks until data arrives.
    pub fn chunk(&mut self) -> Result<Option<Vec<u8>>, ProxyError> {
        if let Some(err) = self.failed.take() {
            return Err(err);
        }
        let Some(stream) = &self.stream else {
            return Ok(None);
        };
        loop {
            match stream.blocking_read(READ_CHUNK) {
                Ok(chunk) if chunk.is_empty() => continue,
                Ok(chunk) => return Ok(Some(chunk)),
                Err(StreamError::Closed) => {
                    self.stream = None;
                    return Ok(None);
                }
                Err(StreamError::LastOperationFailed(err)) => {
                    self.stream = None;
                    return Err(ProxyError::from_stream_error(&err));
                }
            }
        }
    }
}

impl Read for IncomingBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(err) = self.failed.take() {
            return Err(io::Error::other(err));
        }
        let Some(stream) = &self.stream else {
            return Ok(0);
        };
        let want = u64::try_from(buf.len()).unwrap_or(u64::MAX).min(READ_CHUNK);
        loop {
            match stream.blocking_read(want) {
                Ok(chunk) if chunk.is_empty() && !buf.is_empty() => continue,
                Ok(chunk) => {
                    buf[..chunk.len()].copy_from_slice(&chunk);
                    return Ok(chunk.len());
                }
                Err(StreamError::Closed) => {
                    self.stream = None;
                    return Ok(0);
                }
                Err(StreamError::LastOperationFailed(err)) => {
                    self.stream = None;
                    return Err(io::Error::other(ProxyError::from_stream_error(&err)));
                }
            }
        }
    }
}
