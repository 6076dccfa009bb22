//! The one error taxonomy of workers-vpc.
//!
//! Every failure on the request path (runtime → binding-worker → iris → tunnel → connector →
//! origin) is one [`ErrorCode`]: an RFC 9209 Proxy-Status error type, plus `rate_limited`.
//! The code is what crosses process boundaries — as a capnp enum in `binding.capnp`, as the
//! `Proxy-Status` header on a CONNECT response, as metadata on a tunnel stream — never free
//! text. Text travels only as an optional, human-oriented `details` field.
//!
//! This crate is sans-IO and dependency-light so that every component, the CLI and the tests
//! can share it.

#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

/// A failure on the request path, as a code (RFC 9209 error types plus `rate_limited`).
///
/// Wire names are stable and snake_case; new codes are appended, never renumbered (the
/// discriminant is the capnp enum ordinal in `schemas/binding.capnp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u16)]
pub enum ErrorCode {
    /// DNS resolution of the service hostname timed out.
    DnsTimeout = 0,
    /// DNS resolution failed (NXDOMAIN, SERVFAIL, no usable records, malformed answer).
    DnsError = 1,
    /// No route to the destination: the service does not exist (or was deleted).
    DestinationNotFound = 2,
    /// The destination is unavailable: no live connector for the service's tunnel.
    DestinationUnavailable = 3,
    /// The destination IP is prohibited by policy.
    DestinationIpProhibited = 4,
    /// No network route exists to the destination IP.
    DestinationIpUnroutable = 5,
    /// The origin refused the TCP connection.
    ConnectionRefused = 6,
    /// The connection was closed before a complete response arrived.
    ConnectionTerminated = 7,
    /// The connection attempt timed out.
    ConnectionTimeout = 8,
    /// No data arrived within the read timeout.
    ConnectionReadTimeout = 9,
    /// Data could not be written within the write timeout.
    ConnectionWriteTimeout = 10,
    /// A limit on concurrent connections was reached.
    ConnectionLimitReached = 11,
    /// TLS handshake or protocol failure with the origin.
    TlsProtocolError = 12,
    /// The origin's certificate failed verification.
    TlsCertificateError = 13,
    /// The origin sent a TLS alert.
    TlsAlertReceived = 14,
    /// The request could not be sent (malformed, unsupported).
    HttpRequestError = 15,
    /// The request was refused by policy before being forwarded.
    HttpRequestDenied = 16,
    /// The origin's response was cut off.
    HttpResponseIncomplete = 17,
    /// The origin's response header section was too large.
    HttpResponseHeaderSectionSize = 18,
    /// One origin response header was too large.
    HttpResponseHeaderSize = 19,
    /// The origin's response body was too large.
    HttpResponseBodySize = 20,
    /// The origin did not answer in time.
    HttpResponseTimeout = 21,
    /// An HTTP upgrade (WebSocket) failed.
    HttpUpgradeFailed = 22,
    /// The origin spoke invalid HTTP.
    HttpProtocolError = 23,
    /// The proxy produced its own response.
    ProxyInternalResponse = 24,
    /// A bug or internal failure in workers-vpc.
    ProxyInternalError = 25,
    /// workers-vpc is misconfigured for this request (e.g. an undeclared binding).
    ProxyConfigurationError = 26,
    /// The request would loop through the proxy.
    ProxyLoopDetected = 27,
    /// A rate limit on new connections or flows was exceeded.
    RateLimited = 28,
}

/// Who is at fault, as shown to operators (the product's three metric categories).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// The tunnel, the origin, the private network or its TLS failed.
    BadUpstream,
    /// The service configuration or the script's behaviour is at fault.
    Client,
    /// workers-vpc itself failed.
    Internal,
}

impl Category {
    /// Every category, in the order the product's Metrics tab lists them.
    pub const ALL: [Category; 3] = [Self::BadUpstream, Self::Client, Self::Internal];

    /// The metric label and JSON name: `bad_upstream`, `client` or `internal`.
    pub const fn label(self) -> &'static str {
        match self {
            Self::BadUpstream => "bad_upstream",
            Self::Client => "client",
            Self::Internal => "internal",
        }
    }

    /// The name the product's Metrics tab shows: `Bad Upstream`, `Client`, `Internal`.
    pub const fn title(self) -> &'static str {
        match self {
            Self::BadUpstream => "Bad Upstream",
            Self::Client => "Client",
            Self::Internal => "Internal",
        }
    }

    /// Position in [`Category::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Self::BadUpstream => 0,
            Self::Client => 1,
            Self::Internal => 2,
        }
    }
}

impl ErrorCode {
    /// Every code, in wire (ordinal) order.
    pub const ALL: [ErrorCode; 29] = [
        Self::DnsTimeout,
        Self::DnsError,
        Self::DestinationNotFound,
        Self::DestinationUnavailable,
        Self::DestinationIpProhibited,
        Self::DestinationIpUnroutable,
        Self::ConnectionRefused,
        Self::ConnectionTerminated,
        Self::ConnectionTimeout,
        Self::ConnectionReadTimeout,
        Self::ConnectionWriteTimeout,
        Self::ConnectionLimitReached,
        Self::TlsProtocolError,
        Self::TlsCertificateError,
        Self::TlsAlertReceived,
        Self::HttpRequestError,
        Self::HttpRequestDenied,
        Self::HttpResponseIncomplete,
        Self::HttpResponseHeaderSectionSize,
        Self::HttpResponseHeaderSize,
        Self::HttpResponseBodySize,
        Self::HttpResponseTimeout,
        Self::HttpUpgradeFailed,
        Self::HttpProtocolError,
        Self::ProxyInternalResponse,
        Self::ProxyInternalError,
        Self::ProxyConfigurationError,
        Self::ProxyLoopDetected,
        Self::RateLimited,
    ];

    /// The stable wire name (RFC 9209 error type, or `rate_limited`).
    pub const fn wire_name(self) -> &'static str {
        match self {
            Self::DnsTimeout => "dns_timeout",
            Self::DnsError => "dns_error",
            Self::DestinationNotFound => "destination_not_found",
            Self::DestinationUnavailable => "destination_unavailable",
            Self::DestinationIpProhibited => "destination_ip_prohibited",
            Self::DestinationIpUnroutable => "destination_ip_unroutable",
            Self::ConnectionRefused => "connection_refused",
            Self::ConnectionTerminated => "connection_terminated",
            Self::ConnectionTimeout => "connection_timeout",
            Self::ConnectionReadTimeout => "connection_read_timeout",
            Self::ConnectionWriteTimeout => "connection_write_timeout",
            Self::ConnectionLimitReached => "connection_limit_reached",
            Self::TlsProtocolError => "tls_protocol_error",
            Self::TlsCertificateError => "tls_certificate_error",
            Self::TlsAlertReceived => "tls_alert_received",
            Self::HttpRequestError => "http_request_error",
            Self::HttpRequestDenied => "http_request_denied",
            Self::HttpResponseIncomplete => "http_response_incomplete",
            Self::HttpResponseHeaderSectionSize => "http_response_header_section_size",
            Self::HttpResponseHeaderSize => "http_response_header_size",
            Self::HttpResponseBodySize => "http_response_body_size",
            Self::HttpResponseTimeout => "http_response_timeout",
            Self::HttpUpgradeFailed => "http_upgrade_failed",
            Self::HttpProtocolError => "http_protocol_error",
            Self::ProxyInternalResponse => "proxy_internal_response",
            Self::ProxyInternalError => "proxy_internal_error",
            Self::ProxyConfigurationError => "proxy_configuration_error",
            Self::ProxyLoopDetected => "proxy_loop_detected",
            Self::RateLimited => "rate_limited",
        }
    }

    /// The capnp enum ordinal of this code.
    pub const fn ordinal(self) -> u16 {
        self as u16
    }

    /// The code for a capnp enum ordinal, if this build knows it.
    pub fn from_ordinal(ordinal: u16) -> Option<Self> {
        Self::ALL.get(usize::from(ordinal)).copied()
    }

    /// Default category, as the product's error table files each code (spec §4.2–4.4).
    /// `dns_error` is [`Category::Client`] only for NXDOMAIN, which [`ProxyError::category`]
    /// knows from the rcode. The two codes the product table lacks are ours:
    /// `proxy_configuration_error` (the script's bindings) is Client, `proxy_internal_response`
    /// Internal.
    pub const fn category(self) -> Category {
        match self {
            Self::ConnectionReadTimeout
            | Self::ConnectionWriteTimeout
            | Self::RateLimited
            | Self::ProxyConfigurationError => Category::Client,
            Self::ProxyInternalError | Self::ProxyInternalResponse => Category::Internal,
            _ => Category::BadUpstream,
        }
    }

    /// HTTP status that a proxy hop (iris, the dev server) answers with for this code.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::DnsTimeout
            | Self::ConnectionTimeout
            | Self::ConnectionReadTimeout
            | Self::ConnectionWriteTimeout
            | Self::HttpResponseTimeout => 504,
            Self::DestinationNotFound => 404,
            Self::DestinationUnavailable => 503,
            Self::DestinationIpProhibited | Self::HttpRequestDenied => 403,
            Self::HttpRequestError => 400,
            Self::ConnectionLimitReached | Self::RateLimited => 429,
            Self::ProxyInternalError | Self::ProxyConfigurationError => 500,
            Self::ProxyLoopDetected => 508,
            _ => 502,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire_name())
    }
}

/// A wire name that is not an [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown proxy error type {0:?}")]
pub struct UnknownErrorCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.wire_name() == s)
            .ok_or_else(|| UnknownErrorCode(s.to_owned()))
    }
}

/// A failure with its code and optional parameters, as carried between hops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ProxyError {
    /// What failed.
    pub code: ErrorCode,
    /// For `dns_error`: the DNS response code name (`NXDOMAIN`, `SERVFAIL`, …).
    pub rcode: Option<String>,
    /// Human-oriented detail, safe to show to the script author. Never parsed.
    pub details: Option<String>,
}

impl ProxyError {
    /// An error with a code and nothing else.
    pub const fn new(code: ErrorCode) -> Self {
        Self {
            code,
            rcode: None,
            details: None,
        }
    }

    /// Adds human-oriented detail.
    #[must_use]
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// A `dns_error` with its response code name.
    pub fn dns(rcode: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::DnsError,
            rcode: Some(rcode.into()),
            details: None,
        }
    }

    /// Category for metrics: NXDOMAIN is the client's fault, other DNS failures are upstream.
    pub fn category(&self) -> Category {
        match (self.code, self.rcode.as_deref()) {
            (ErrorCode::DnsError, Some("NXDOMAIN")) => Category::Client,
            (ErrorCode::DnsError, _) => Category::BadUpstream,
            (code, _) => code.category(),
        }
    }

    /// Renders the RFC 9209 `Proxy-Status` field value for proxy `node`.
    pub fn to_proxy_status(&self, node: &str) -> String {
        let mut out = format!("{node}; error={}", self.code.wire_name());
        if let Some(rcode) = &self.rcode {
            out.push_str("; rcode=");
            push_sf_string(&mut out, rcode);
        }
        if let Some(details) = &self.details {
            out.push_str("; details=");
            push_sf_string(&mut out, details);
        }
        out
    }

    /// Reads the first error out of a `Proxy-Status` field value. Returns `None` when no
    /// member carries a known `error` parameter.
    pub fn from_proxy_status(value: &str) -> Option<Self> {
        proxy_status_members(value).find_map(|params| {
            let mut code = None;
            let mut rcode = None;
            let mut details = None;
            for (key, val) in params {
                match key.as_str() {
                    "error" => code = val.parse::<ErrorCode>().ok(),
                    "rcode" => rcode = Some(val),
                    "details" => details = Some(val),
                    _ => {}
                }
            }
            code.map(|code| ProxyError {
                code,
                rcode,
                details,
            })
        })
    }
}

impl From<ErrorCode> for ProxyError {
    fn from(code: ErrorCode) -> Self {
        Self::new(code)
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyError: {}", self.code)?;
        if let Some(rcode) = &self.rcode {
            write!(f, " ({rcode})")?;
        }
        if let Some(details) = &self.details {
            write!(f, ": {details}")?;
        }
        Ok(())
    }
}

/// Appends an RFC 8941 sf-string (quoted, `"` and `\` escaped, non-printables dropped).
fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' | '\\' => {
                out.push('\\');
                out.push(ch);
            }
            ' '..='~' => out.push(ch),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

/// Splits a `Proxy-Status` list into members, each as its `(key, value)` parameters.
/// Tolerant: anything that does not parse ends the member it appears in.
fn proxy_status_members(value: &str) -> impl Iterator<Item = Vec<(String, String)>> + '_ {
    split_outside_quotes(value, ',').into_iter().map(|member| {
        split_outside_quotes(member, ';')
            .into_iter()
            .skip(1) // the proxy node name
            .filter_map(|param| {
                let (k, v) = param.split_once('=')?;
                Some((k.trim().to_owned(), unquote(v.trim())))
            })
            .collect()
    })
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut in_quotes, mut escaped) = (0, false, false);
    for (i, ch) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quotes && ch == '\\' {
            escaped = true;
        } else if ch == '"' {
            in_quotes = !in_quotes;
        } else if ch == sep && !in_quotes {
            parts.push(s[start..i].trim());
            start = i + ch.len_utf8();
        }
    }
    parts.push(s[start..].trim());
    parts
}

fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return v.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut escaped = false;
    for ch in inner.chars() {
        if !escaped && ch == '\\' {
            escaped = true;
        } else {
            out.push(ch);
            escaped = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_by_name_and_ordinal() {
        for (i, code) in ErrorCode::ALL.iter().copied().enumerate() {
            assert_eq!(
                usize::from(code.ordinal()),
                i,
                "{code} is out of order in ALL"
            );
            assert_eq!(code.wire_name().parse::<ErrorCode>(), Ok(code));
            assert_eq!(ErrorCode::from_ordinal(code.ordinal()), Some(code));
        }
        assert_eq!(ErrorCode::from_ordinal(ErrorCode::ALL.len() as u16), None);
        assert!("nope".parse::<ErrorCode>().is_err());
    }

    #[test]
    fn proxy_status_round_trips_with_parameters() {
        let err = ProxyError::dns("NXDOMAIN").with_details("name \"api.internal\" \\ gone");
        let header = err.to_proxy_status("iris");
        assert_eq!(
            header,
            r#"iris; error=dns_error; rcode="NXDOMAIN"; details="name \"api.internal\" \\ gone""#
        );
        assert_eq!(ProxyError::from_proxy_status(&header), Some(err));
    }

    #[test]
    fn proxy_status_takes_the_first_member_with_an_error() {
        let v = r#"origin-cache, iris; error=connection_refused; details="a, b; c""#;
        let err = ProxyError::from_proxy_status(v).expect("an error member");
        assert_eq!(err.code, ErrorCode::ConnectionRefused);
        assert_eq!(err.details.as_deref(), Some("a, b; c"));
        assert_eq!(ProxyError::from_proxy_status("iris; error=bogus"), None);
        assert_eq!(ProxyError::from_proxy_status(""), None);
    }

    #[test]
    fn nxdomain_is_the_clients_fault_other_dns_failures_are_upstream() {
        assert_eq!(ProxyError::dns("NXDOMAIN").category(), Category::Client);
        assert_eq!(
            ProxyError::dns("SERVFAIL").category(),
            Category::BadUpstream
        );
        assert_eq!(
            ProxyError::new(ErrorCode::RateLimited).category(),
            Category::Client
        );
    }

    #[test]
    fn categories_follow_the_product_error_table() {
        use Category::{BadUpstream, Client, Internal};
        let client = [
            ErrorCode::ConnectionReadTimeout,
            ErrorCode::ConnectionWriteTimeout,
            ErrorCode::RateLimited,
            ErrorCode::ProxyConfigurationError,
        ];
        let internal = [
            ErrorCode::ProxyInternalError,
            ErrorCode::ProxyInternalResponse,
        ];
        for code in ErrorCode::ALL {
            let expected = if client.contains(&code) {
                Client
            } else if internal.contains(&code) {
                Internal
            } else {
                BadUpstream
            };
            assert_eq!(code.category(), expected, "{code}");
        }
        // Listed by the product as Bad Upstream, although a proxy might see them otherwise.
        for code in [
            ErrorCode::DestinationNotFound,
            ErrorCode::HttpRequestDenied,
            ErrorCode::HttpRequestError,
            ErrorCode::ProxyLoopDetected,
        ] {
            assert_eq!(code.category(), BadUpstream, "{code}");
        }
    }

    #[test]
    fn display_is_what_scripts_see() {
        assert_eq!(
            ProxyError::new(ErrorCode::ConnectionRefused).to_string(),
            "ProxyError: connection_refused"
        );
    }
}
