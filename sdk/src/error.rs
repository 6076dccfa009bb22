//! [`ProxyError`]: why a binding fetch (or reading its body) failed.

use std::fmt;

use wasip2::http::types::ErrorCode;

/// A failure between the script and the origin, as a code.
///
/// `Display` is `ProxyError: <code>` — the text Workers VPC puts in the exception a failed
/// `fetch()` throws — followed by ` (<detail>)` when the SDK refused the request itself.
///
/// Besides the RFC 9209 types, [`code`](Self::code) can be one of the runtime's limits:
/// `subrequest_limit_reached` (`limits.subrequests`), `redirect_limit_reached` (more than 20
/// redirects), `redirect_body_not_replayable` (a 307/308 for a body that cannot be sent
/// again), and `connection_limit_reached` (too many fetches waiting for a connection). An origin's own 4xx/5xx is a [`Response`](crate::Response), never this.
#[derive(Debug, Clone)]
pub struct ProxyError {
    code: ErrorCode,
    /// Why the SDK refused the request itself (the host's errors carry only a code).
    detail: Option<String>,
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

    /// Why the SDK refused a request before sending it (e.g. a relative URL), if it did.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// For `dns_error`: the DNS response code name (`NXDOMAIN`, `SERVFAIL`, …).
    pub fn rcode(&self) -> Option<&str> {
        match &self.code {
            ErrorCode::DnsError(payload) => payload.rcode.as_deref(),
            _ => None,
        }
    }

    /// The request could not be built or sent as given (`http_request_error`), and why.
    pub(crate) fn request_error(detail: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::InternalError(Some("http_request_error".into())),
            detail: Some(detail.into()),
        }
    }

    /// The host failed in a way it did not classify (`proxy_internal_error`).
    pub(crate) fn internal() -> Self {
        Self::from(ErrorCode::InternalError(None))
    }

    /// A body stream failed with `err`; the host attaches an error code when it has one.
    pub(crate) fn from_stream_error(err: &wasip2::io::error::Error) -> Self {
        wasip2::http::types::http_error_code(err).map_or_else(Self::internal, Self::from)
    }
}

impl From<ErrorCode> for ProxyError {
    fn from(code: ErrorCode) -> Self {
        Self { code, detail: None }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyError: {}", self.code())?;
        match &self.detail {
            Some(detail) => write!(f, " ({detail})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for ProxyError {}
