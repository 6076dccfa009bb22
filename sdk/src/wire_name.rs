// The reverse of the runtime's error table (`runtime/src/error_map.rs`): a wasi:http
// `error-code` → the RFC 9209 Proxy-Status wire name the product reports (`connection_refused`,
// `dns_error`, …, plus `rate_limited`).
//
// It is a macro over the enum's name because host (wasmtime bindgen) and guest (wasip2) each
// have their own `ErrorCode` type with the same variants; the runtime's tests `include!` this
// file to check the round trip for every code. Keep this file free of `//!` comments and of
// anything but the macro.
//
// - Variants with an RFC 9209 counterpart map to it.
// - `internal-error(some(name))` carries the codes that have no variant (`rate_limited`,
//   `http_request_error`, `proxy_internal_response`) and the runtime's own fetch limits
//   (`subrequest_limit_reached`, `redirect_limit_reached`, `redirect_body_not_replayable`);
//   any other `internal-error` is `proxy_internal_error`.
// - Request-side variants that only a local check can produce (method/URI/header/body size
//   invalid, length required) are `http_request_error`.

/// Expands to the `&'static str` wire name of `$code` (an `&ErrorCode` or `ErrorCode`
/// expression); `$ErrorCode` names the wasi:http `error-code` enum in scope.
macro_rules! wasi_error_wire_name {
    ($code:expr, $ErrorCode:ident) => {
        match $code {
            $ErrorCode::DnsTimeout => "dns_timeout",
            $ErrorCode::DnsError(_) => "dns_error",
            $ErrorCode::DestinationNotFound => "destination_not_found",
            $ErrorCode::DestinationUnavailable => "destination_unavailable",
            $ErrorCode::DestinationIpProhibited => "destination_ip_prohibited",
            $ErrorCode::DestinationIpUnroutable => "destination_ip_unroutable",
            $ErrorCode::ConnectionRefused => "connection_refused",
            $ErrorCode::ConnectionTerminated => "connection_terminated",
            $ErrorCode::ConnectionTimeout => "connection_timeout",
            $ErrorCode::ConnectionReadTimeout => "connection_read_timeout",
            $ErrorCode::ConnectionWriteTimeout => "connection_write_timeout",
            $ErrorCode::ConnectionLimitReached => "connection_limit_reached",
            $ErrorCode::TlsProtocolError => "tls_protocol_error",
            $ErrorCode::TlsCertificateError => "tls_certificate_error",
            $ErrorCode::TlsAlertReceived(_) => "tls_alert_received",
            $ErrorCode::HttpRequestDenied => "http_request_denied",
            $ErrorCode::HttpRequestLengthRequired
            | $ErrorCode::HttpRequestBodySize(_)
            | $ErrorCode::HttpRequestMethodInvalid
            | $ErrorCode::HttpRequestUriInvalid
            | $ErrorCode::HttpRequestUriTooLong
            | $ErrorCode::HttpRequestHeaderSectionSize(_)
            | $ErrorCode::HttpRequestHeaderSize(_)
            | $ErrorCode::HttpRequestTrailerSectionSize(_)
            | $ErrorCode::HttpRequestTrailerSize(_) => "http_request_error",
            $ErrorCode::HttpResponseIncomplete => "http_response_incomplete",
            $ErrorCode::HttpResponseHeaderSectionSize(_) => "http_response_header_section_size",
            $ErrorCode::HttpResponseHeaderSize(_) => "http_response_header_size",
            $ErrorCode::HttpResponseBodySize(_) => "http_response_body_size",
            $ErrorCode::HttpResponseTrailerSectionSize(_) => "http_response_trailer_section_size",
            $ErrorCode::HttpResponseTrailerSize(_) => "http_response_trailer_size",
            $ErrorCode::HttpResponseTransferCoding(_) => "http_response_transfer_coding",
            $ErrorCode::HttpResponseContentCoding(_) => "http_response_content_coding",
            $ErrorCode::HttpResponseTimeout => "http_response_timeout",
            $ErrorCode::HttpUpgradeFailed => "http_upgrade_failed",
            $ErrorCode::HttpProtocolError => "http_protocol_error",
            $ErrorCode::LoopDetected => "proxy_loop_detected",
            $ErrorCode::ConfigurationError => "proxy_configuration_error",
            $ErrorCode::InternalError(Some(name)) if name.as_str() == "rate_limited" => {
                "rate_limited"
            }
            $ErrorCode::InternalError(Some(name)) if name.as_str() == "http_request_error" => {
                "http_request_error"
            }
            $ErrorCode::InternalError(Some(name)) if name.as_str() == "proxy_internal_response" => {
                "proxy_internal_response"
            }
            $ErrorCode::InternalError(Some(name))
                if name.as_str() == "subrequest_limit_reached" =>
            {
                "subrequest_limit_reached"
            }
            $ErrorCode::InternalError(Some(name)) if name.as_str() == "redirect_limit_reached" => {
                "redirect_limit_reached"
            }
            $ErrorCode::InternalError(Some(name))
                if name.as_str() == "redirect_body_not_replayable" =>
            {
                "redirect_body_not_replayable"
            }
            $ErrorCode::InternalError(_) => "proxy_internal_error",
        }
    };
}
