//! Answers a listener gives on its own, before any handler saw a request: 503 at the
//! connection cap, and the explained versions of hyper's bare 400 / 414 / 431 for a request
//! head it cannot parse. Each carries a request id (body and `wvpc-request-id`) and says what
//! to do; a [`PageFn`] renders the body in the listener's own error format.

use http::StatusCode;

/// Response header carrying the request id (the same header every workers-vpc hop uses).
pub const REQUEST_ID_HEADER: &str = "wvpc-request-id";

/// Why a listener answered by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The listener has `max_connections` connections open (503).
    AtConnectionLimit {
        /// The cap in force.
        max_connections: usize,
    },
    /// The request head has more header fields than the listener reads (431).
    TooManyHeaders {
        /// The most the listener reads.
        max_headers: usize,
    },
    /// The request line and headers are larger than the listener reads (431).
    HeadTooLarge {
        /// The most bytes the listener reads.
        max_bytes: usize,
    },
    /// The request target is longer than the HTTP parser reads (414).
    UriTooLong,
    /// The request head is not valid HTTP/1.x (400).
    Malformed,
}

impl Refusal {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::AtConnectionLimit { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::TooManyHeaders { .. } | Refusal::HeadTooLarge { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::Malformed => StatusCode::BAD_REQUEST,
        }
    }

    /// What happened and what to do, one sentence without the request id.
    pub fn explanation(&self) -> String {
        match self {
            Refusal::AtConnectionLimit { max_connections } => format!(
                "the server has {max_connections} connections open, its limit \
                 (max_connections); retry in a moment, and reuse connections rather than \
                 opening new ones"
            ),
            Refusal::TooManyHeaders { max_headers } => format!(
                "the request has more than {max_headers} header fields, the most this server \
                 reads; send fewer (combine repeated fields into one comma-separated field, \
                 or move data into the body)"
            ),
            Refusal::HeadTooLarge { max_bytes } => format!(
                "the request line and headers are larger than {max_bytes} bytes, the most this \
                 server reads; send smaller headers (large cookies or tokens are the usual cause)"
            ),
            Refusal::UriTooLong => "the request target (URL) is longer than this server reads \
                                    (65 534 bytes); shorten it or move data into the body"
                .to_owned(),
            Refusal::Malformed => "the request is not valid HTTP/1.1 (a malformed request \
                                   line or header field); check the client"
                .to_owned(),
        }
    }
}

/// The body of a refusal, in the format of the listener's other errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// `Content-Type` of the body.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

/// Renders a refusal's body, given the refusal and its request id.
pub type PageFn = fn(&Refusal, &str) -> Page;

/// The default [`PageFn`]: one line of plain text, as the runtime writes its errors:
/// `<explanation> (request id <id>)`.
pub fn plain_text_page(refusal: &Refusal, request_id: &str) -> Page {
    Page {
        content_type: "text/plain; charset=utf-8",
        body: format!("{} (request id {request_id})\n", refusal.explanation()),
    }
}

/// A new request id: 32 hex digits, as the runtime makes them.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The whole HTTP/1.1 answer to `refusal`, `Connection: close`; logs it once.
pub(crate) fn response_bytes(listener: &str, refusal: &Refusal, page: PageFn) -> Vec<u8> {
    let request_id = new_request_id();
    let status = refusal.status();
    tracing::info!(
        listener,
        request_id,
        status = status.as_u16(),
        "refused: {}",
        refusal.explanation()
    );
    let Page { content_type, body } = page(refusal, &request_id);
    let retry = if matches!(refusal, Refusal::AtConnectionLimit { .. }) {
        "retry-after: 1\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n{REQUEST_ID_HEADER}: {request_id}\r\n{retry}\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    )
    .into_bytes()
}
