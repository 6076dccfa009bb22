//! A copy of every binding exchange a script makes, as the script sees it, for
//! `wvpc dev --record` ([`RuntimeOptions::exchange_tap`](crate::RuntimeOptions)).
//!
//! The tap sits where a binding fetch's outcome reaches the script (each hop of a fetch, so a
//! followed redirect is two exchanges): a failed fetch is reported at once with its code; a
//! response is reported when the script has its whole body. The body is copied as it streams
//! to the script — each chunk is a reference-counted clone, never a delay or a buffer in front
//! of the script — up to [`MAX_TAPPED_BODY`].
//!
//! Without a tap nothing of this runs: the hook is an `Option` checked once per fetch.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use wasmtime_wasi_http::WasiBody;
use wvpc_errors::ErrorCode;

/// The largest response body a tap is given; a larger one is reported as
/// [`TappedBody::TooLarge`].
pub const MAX_TAPPED_BODY: usize = 16 << 20;

/// Receives the binding exchanges of every script of a runtime. Called on the runtime's
/// threads, while a script runs: it must only hand the exchange on (e.g. over a channel).
pub trait ExchangeTap: Send + Sync + std::fmt::Debug {
    /// One exchange, once its outcome is known.
    fn exchange(&self, exchange: TappedExchange);
}

/// One binding exchange: the request as sent and what came back.
#[derive(Debug, Clone)]
pub struct TappedExchange {
    /// The script.
    pub script: String,
    /// The binding (as the script's config names it).
    pub binding: String,
    /// The request's method.
    pub method: http::Method,
    /// The request's URL (the path and query are what the service received).
    pub uri: http::Uri,
    /// What came back.
    pub outcome: TappedOutcome,
}

/// How a binding exchange ended.
#[derive(Debug, Clone)]
pub enum TappedOutcome {
    /// A response (its body as far as the script read it, see [`TappedBody`]).
    Response {
        /// Its status.
        status: http::StatusCode,
        /// Its headers, as the script received them.
        headers: http::HeaderMap,
        /// Its body.
        body: TappedBody,
    },
    /// No response: the fetch failed with this code.
    Failed(ErrorCode),
}

/// A response body, as the script read it.
#[derive(Debug, Clone)]
pub enum TappedBody {
    /// The whole body.
    Complete(Bytes),
    /// The script stopped reading (or dropped the response) after these bytes.
    Unread(Bytes),
    /// The body failed after these bytes, with this code.
    Failed(Bytes, ErrorCode),
    /// Longer than [`MAX_TAPPED_BODY`]; `bytes` were read before the copy stopped.
    TooLarge {
        /// How many bytes the script had read when the copy stopped.
        bytes: usize,
    },
}

/// The request side of an exchange whose response body is still streaming.
pub(crate) struct PendingExchange {
    pub tap: Arc<dyn ExchangeTap>,
    pub script: String,
    pub binding: String,
    pub method: http::Method,
    pub uri: http::Uri,
}

impl PendingExchange {
    /// Reports a fetch that failed before any response.
    pub fn failed(self, code: ErrorCode) {
        let tap = self.tap.clone();
        tap.exchange(self.into_exchange(TappedOutcome::Failed(code)));
    }

    /// The response with its body wrapped so that the exchange is reported once the script
    /// has read it (or stopped reading it).
    pub fn response(self, response: http::Response<WasiBody>) -> http::Response<WasiBody> {
        use http_body_util::BodyExt as _;
        let (parts, inner) = response.into_parts();
        let body = TapBody {
            inner,
            chunks: Vec::new(),
            bytes: 0,
            too_large: false,
            head: Some((self, parts.status, parts.headers.clone())),
        };
        http::Response::from_parts(parts, body.boxed_unsync())
    }

    fn into_exchange(self, outcome: TappedOutcome) -> TappedExchange {
        TappedExchange {
            script: self.script,
            binding: self.binding,
            method: self.method,
            uri: self.uri,
            outcome,
        }
    }
}

/// The response body on its way to the script, keeping a copy of its chunks.
struct TapBody {
    inner: WasiBody,
    chunks: Vec<Bytes>,
    bytes: usize,
    too_large: bool,
    /// Taken when the exchange is reported.
    head: Option<(PendingExchange, http::StatusCode, http::HeaderMap)>,
}

/// How the copy ended.
enum End {
    Complete,
    Unread,
    Failed(ErrorCode),
}

impl TapBody {
    fn report(&mut self, end: End) {
        let Some((pending, status, headers)) = self.head.take() else {
            return;
        };
        let chunks = std::mem::take(&mut self.chunks);
        let joined = || {
            let mut all = BytesMut::with_capacity(self.bytes);
            for chunk in &chunks {
                all.extend_from_slice(chunk);
            }
            all.freeze()
        };
        let body = match end {
            _ if self.too_large => TappedBody::TooLarge { bytes: self.bytes },
            End::Complete => TappedBody::Complete(joined()),
            End::Unread => TappedBody::Unread(joined()),
            End::Failed(code) => TappedBody::Failed(joined(), code),
        };
        let tap = pending.tap.clone();
        tap.exchange(pending.into_exchange(TappedOutcome::Response {
            status,
            headers,
            body,
        }));
    }
}

impl Body for TapBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len();
                    if self.bytes > MAX_TAPPED_BODY {
                        self.too_large = true;
                        self.chunks = Vec::new();
                    } else if !self.too_large {
                        self.chunks.push(data.clone());
                    }
                }
                // The reader may stop polling once the body says it ended.
                if self.inner.is_end_stream() {
                    self.report(End::Complete);
                }
            }
            Some(Err(err)) => {
                let code = body_error_code(err);
                self.report(End::Failed(code));
            }
            None => self.report(End::Complete),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TapBody {
    fn drop(&mut self) {
        // An empty or whole body may be dropped without its last poll.
        let end = if self.inner.is_end_stream() {
            End::Complete
        } else {
            End::Unread
        };
        self.report(end);
    }
}

/// The code of a failed response body (the wasi:http error the binding client raised).
fn body_error_code(err: &wasmtime_wasi_http::Error) -> ErrorCode {
    use wasmtime_wasi_http::Error as E;
    match err {
        E::HttpResponseIncomplete => ErrorCode::HttpResponseIncomplete,
        E::ConnectionTerminated => ErrorCode::ConnectionTerminated,
        E::ConnectionReadTimeout => ErrorCode::ConnectionReadTimeout,
        E::HttpResponseBodySize(_) => ErrorCode::HttpResponseBodySize,
        E::HttpResponseTimeout => ErrorCode::HttpResponseTimeout,
        E::HttpProtocolError => ErrorCode::HttpProtocolError,
        E::TlsProtocolError => ErrorCode::TlsProtocolError,
        _ => ErrorCode::ProxyInternalError,
    }
}
