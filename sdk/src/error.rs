//! [`ProxyError`]: why a binding fetch (or reading its body) failed.

use std::fmt;

use wasip2::http::types::ErrorCode;

/// A failure between the script and the origin, as a code.
///
/// `Display` is `ProxyError: <code>` — the text Workers VPC puts in the exception a failed
/// `fetch()` throws. An origin's own 4xx/5xx is a [`Response`](crate::Response), never this.
#[derive(Debug, Clone)]
pub struct ProxyError {
    code: ErrorCode,
}

impl ProxyError {
    /// The RFC 9209 Proxy-Status error type (`connection_refused`, `dns_error`,
    /// `destination_unavailable`, …, or `rate_limited`).
    pub fn code(&self) -> &'static str {
        wasi_error_wire_name!(&self.code, ErrorCode)
    }

    /// The wasi:http `error-code` as the host reported it (with payloads such as the DNS rcode).
    pub fn error_code(&self) -> &ErrorCode {
        &self.code
    }

    /// For `dns_error`: the DNS response code name (`NXDOMAIN`, `SERVFAIL`, …).
    pub fn rcode(&self) -> Option<&str> {
        match &self.code {
            ErrorCode::DnsError(payload) => payload.rcode.as_deref(),
            _ => None,
        }
    }

    /// The request could not be built or sent as given (`http_request_error`).
    pub(crate) fn request_error() -> Self {
        Self {
            code: ErrorCode::InternalError(Some("http_request_error".into())),
        }
    }

    /// The host failed in a way it did not classify (`proxy_internal_error`).
    pub(crate) fn internal() -> Self {
        Self {
            code: ErrorCode::InternalError(None),
        }
    }

    /// A body stream failed with `err`; the host attaches an error code when it has one.
    pub(crate) fn from_stream_error(err: &wasip2::io::error::Error) -> Self {
        wasip2::http::types::http_error_code(err).map_or_else(Self::internal, Self::from)
    }
}

impl From<ErrorCode> for ProxyError {
    fn from(code: ErrorCode) -> Self {
        Self { code }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyError: {}", self.code())
    }
}

impl std::error::Error for ProxyError {}
