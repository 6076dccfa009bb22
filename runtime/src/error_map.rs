//! How workers-vpc failures reach a script: [`ProxyError`] → wasi:http `error-code`.
//!
//! The wasi:http `error-code` variant is modelled on the same RFC 9209 registry as
//! [`wvpc_errors::ErrorCode`], so almost every code has a variant of the same name:
//!
//! | wvpc code (wire name) | wasi:http `error-code` |
//! |---|---|
//! | `dns_timeout` | `DNS-timeout` |
//! | `dns_error` | `DNS-error { rcode: <rcode>, info-code: none }` |
//! | `destination_not_found` | `destination-not-found` |
//! | `destination_unavailable` | `destination-unavailable` |
//! | `destination_ip_prohibited` | `destination-IP-prohibited` |
//! | `destination_ip_unroutable` | `destination-IP-unroutable` |
//! | `connection_refused` | `connection-refused` |
//! | `connection_terminated` | `connection-terminated` |
//! | `connection_timeout` | `connection-timeout` |
//! | `connection_read_timeout` | `connection-read-timeout` |
//! | `connection_write_timeout` | `connection-write-timeout` |
//! | `connection_limit_reached` | `connection-limit-reached` |
//! | `tls_protocol_error` | `TLS-protocol-error` |
//! | `tls_certificate_error` | `TLS-certificate-error` |
//! | `tls_alert_received` | `TLS-alert-received { alert-id: none, alert-message: <details> }` |
//! | `http_request_error` | `internal-error(some("http_request_error"))` (no variant) |
//! | `http_request_denied` | `HTTP-request-denied` |
//! | `http_response_incomplete` | `HTTP-response-incomplete` |
//! | `http_response_header_section_size` | `HTTP-response-header-section-size(none)` |
//! | `http_response_header_size` | `HTTP-response-header-size { none, none }` |
//! | `http_response_body_size` | `HTTP-response-body-size(none)` |
//! | `http_response_timeout` | `HTTP-response-timeout` |
//! | `http_upgrade_failed` | `HTTP-upgrade-failed` |
//! | `http_protocol_error` | `HTTP-protocol-error` |
//! | `proxy_internal_response` | `internal-error(some("proxy_internal_response"))` (no variant) |
//! | `proxy_internal_error` | `internal-error(none)` (details stay in the logs) |
//! | `proxy_configuration_error` | `configuration-error` |
//! | `proxy_loop_detected` | `loop-detected` |
//! | `rate_limited` | `internal-error(some("rate_limited"))` (no variant) |
//!
//! The convention for codes without a variant — `internal-error` carrying the wire name — is
//! what the SDK (`wvpc_sdk::ProxyError::code`) reverses; `sdk/src/wire_name.rs` holds that
//! reverse table and the tests here check the round trip for every code.
//!
//! This module also repairs one gap in wasmtime-wasi-http 48: a failure of a response *body*
//! reaches the guest as a `wasi:io/error` whose `http-error-code` is `none`, because the body
//! error is a [`wasmtime_wasi_http::Error`], not an `error-code`. [`add_http_error_code`]
//! shadows `wasi:http/types.http-error-code` so that such errors (e.g. a body aborted with
//! `http_response_incomplete`) are reported as codes too.

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi_http::p2::bindings::http::types::{
    DnsErrorPayload, ErrorCode, FieldSizePayload, TlsAlertReceivedPayload,
};
use wvpc_errors::{ErrorCode as Code, ProxyError};

/// The wasi:http `error-code` a script sees for `err` (see the module table).
pub fn wasi_error_code(err: &ProxyError) -> ErrorCode {
    let named = |code: Code| ErrorCode::InternalError(Some(code.wire_name().to_owned()));
    match err.code {
        Code::DnsTimeout => ErrorCode::DnsTimeout,
        Code::DnsError => ErrorCode::DnsError(DnsErrorPayload {
            rcode: err.rcode.clone(),
            info_code: None,
        }),
        Code::DestinationNotFound => ErrorCode::DestinationNotFound,
        Code::DestinationUnavailable => ErrorCode::DestinationUnavailable,
        Code::DestinationIpProhibited => ErrorCode::DestinationIpProhibited,
        Code::DestinationIpUnroutable => ErrorCode::DestinationIpUnroutable,
        Code::ConnectionRefused => ErrorCode::ConnectionRefused,
        Code::ConnectionTerminated => ErrorCode::ConnectionTerminated,
        Code::ConnectionTimeout => ErrorCode::ConnectionTimeout,
        Code::ConnectionReadTimeout => ErrorCode::ConnectionReadTimeout,
        Code::ConnectionWriteTimeout => ErrorCode::ConnectionWriteTimeout,
        Code::ConnectionLimitReached => ErrorCode::ConnectionLimitReached,
        Code::TlsProtocolError => ErrorCode::TlsProtocolError,
        Code::TlsCertificateError => ErrorCode::TlsCertificateError,
        Code::TlsAlertReceived => ErrorCode::TlsAlertReceived(TlsAlertReceivedPayload {
            alert_id: None,
            alert_message: err.details.clone(),
        }),
        Code::HttpRequestError => named(Code::HttpRequestError),
        Code::HttpRequestDenied => ErrorCode::HttpRequestDenied,
        Code::HttpResponseIncomplete => ErrorCode::HttpResponseIncomplete,
        Code::HttpResponseHeaderSectionSize => ErrorCode::HttpResponseHeaderSectionSize(None),
        Code::HttpResponseHeaderSize => ErrorCode::HttpResponseHeaderSize(FieldSizePayload {
            field_name: None,
            field_size: None,
        }),
        Code::HttpResponseBodySize => ErrorCode::HttpResponseBodySize(None),
        Code::HttpResponseTimeout => ErrorCode::HttpResponseTimeout,
        Code::HttpUpgradeFailed => ErrorCode::HttpUpgradeFailed,
        Code::HttpProtocolError => ErrorCode::HttpProtocolError,
        Code::ProxyInternalResponse => named(Code::ProxyInternalResponse),
        Code::ProxyConfigurationError => ErrorCode::ConfigurationError,
        Code::ProxyLoopDetected => ErrorCode::LoopDetected,
        Code::RateLimited => named(Code::RateLimited),
        // `proxy_internal_error`, and codes added to wvpc-errors after this table: the script
        // learns that the platform failed, the details go to the runtime's log.
        _ => ErrorCode::InternalError(None),
    }
}

/// [`wasi_error_code`] as the embedder-side error that `WasiHttpHooks::send_request` and
/// response bodies return; wasmtime-wasi-http turns it back into the same `error-code`.
pub(crate) fn wasi_http_error(err: &ProxyError) -> wasmtime_wasi_http::Error {
    match wasi_error_code(err) {
        // wasmtime-wasi-http 48's `From<ErrorCode>` maps this one to the *request* header
        // variant; build the response variant directly.
        ErrorCode::HttpResponseHeaderSize(p) => wasmtime_wasi_http::Error::HttpResponseHeaderSize {
            field_name: p.field_name,
            field_size: p.field_size,
        },
        code => code.into(),
    }
}

/// The `error-code` for an embedder-side error, as wasmtime-wasi-http reports it for a failed
/// response future (its own conversion is private).
pub(crate) fn error_code_of(err: &wasmtime_wasi_http::Error) -> ErrorCode {
    use wasmtime_wasi_http::Error as E;
    match err {
        E::Hyper(e) => std::error::Error::source(e)
            .and_then(|cause| cause.downcast_ref::<ErrorCode>())
            .cloned()
            .unwrap_or(ErrorCode::HttpProtocolError),
        E::Connect(_) => ErrorCode::ConnectionRefused,
        E::Tls(_) => ErrorCode::TlsProtocolError,
        E::HttpRequestBodySize(n) => ErrorCode::HttpRequestBodySize(*n),
        E::DnsTimeout => ErrorCode::DnsTimeout,
        E::DnsError { rcode, info_code } => ErrorCode::DnsError(DnsErrorPayload {
            rcode: rcode.clone(),
            info_code: *info_code,
        }),
        E::DestinationNotFound => ErrorCode::DestinationNotFound,
        E::DestinationUnavailable => ErrorCode::DestinationUnavailable,
        E::DestinationIpProhibited => ErrorCode::DestinationIpProhibited,
        E::DestinationIpUnroutable => ErrorCode::DestinationIpUnroutable,
        E::ConnectionRefused => ErrorCode::ConnectionRefused,
        E::ConnectionTerminated => ErrorCode::ConnectionTerminated,
        E::ConnectionTimeout => ErrorCode::ConnectionTimeout,
        E::ConnectionReadTimeout => ErrorCode::ConnectionReadTimeout,
        E::ConnectionWriteTimeout => ErrorCode::ConnectionWriteTimeout,
        E::ConnectionLimitReached => ErrorCode::ConnectionLimitReached,
        E::TlsProtocolError => ErrorCode::TlsProtocolError,
        E::TlsCertificateError => ErrorCode::TlsCertificateError,
        E::TlsAlertReceived {
            alert_id,
            alert_message,
        } => ErrorCode::TlsAlertReceived(TlsAlertReceivedPayload {
            alert_id: *alert_id,
            alert_message: alert_message.clone(),
        }),
        E::HttpRequestDenied => ErrorCode::HttpRequestDenied,
        E::HttpRequestLengthRequired => ErrorCode::HttpRequestLengthRequired,
        E::HttpRequestMethodInvalid => ErrorCode::HttpRequestMethodInvalid,
        E::HttpRequestUriInvalid => ErrorCode::HttpRequestUriInvalid,
        E::HttpRequestUriTooLong => ErrorCode::HttpRequestUriTooLong,
        E::HttpRequestHeaderSectionSize(n) => ErrorCode::HttpRequestHeaderSectionSize(*n),
        E::HttpRequestHeaderSize {
            field_name,
            field_size,
        } => ErrorCode::HttpRequestHeaderSize(Some(FieldSizePayload {
            field_name: field_name.clone(),
            field_size: *field_size,
        })),
        E::HttpRequestTrailerSectionSize(n) => ErrorCode::HttpRequestTrailerSectionSize(*n),
        E::HttpRequestTrailerSize {
            field_name,
            field_size,
        } => ErrorCode::HttpRequestTrailerSize(FieldSizePayload {
            field_name: field_name.clone(),
            field_size: *field_size,
        }),
        E::HttpResponseIncomplete => ErrorCode::HttpResponseIncomplete,
        E::HttpResponseHeaderSectionSize(n) => ErrorCode::HttpResponseHeaderSectionSize(*n),
        E::HttpResponseHeaderSize {
            field_name,
            field_size,
        } => ErrorCode::HttpResponseHeaderSize(FieldSizePayload {
            field_name: field_name.clone(),
            field_size: *field_size,
        }),
        E::HttpResponseBodySize(n) => ErrorCode::HttpResponseBodySize(*n),
        E::HttpResponseTrailerSectionSize(n) => ErrorCode::HttpResponseTrailerSectionSize(*n),
        E::HttpResponseTrailerSize {
            field_name,
            field_size,
        } => ErrorCode::HttpResponseTrailerSize(FieldSizePayload {
            field_name: field_name.clone(),
            field_size: *field_size,
        }),
        E::HttpResponseTransferCoding(c) => ErrorCode::HttpResponseTransferCoding(c.clone()),
        E::HttpResponseContentCoding(c) => ErrorCode::HttpResponseContentCoding(c.clone()),
        E::HttpResponseTimeout => ErrorCode::HttpResponseTimeout,
        E::HttpUpgradeFailed => ErrorCode::HttpUpgradeFailed,
        E::HttpProtocolError => ErrorCode::HttpProtocolError,
        E::LoopDetected => ErrorCode::LoopDetected,
        E::ConfigurationError => ErrorCode::ConfigurationError,
        E::InternalError(m) => ErrorCode::InternalError(m.clone()),
        // Variants added by later wasmtime releases.
        _ => ErrorCode::InternalError(None),
    }
}

/// Replaces `wasi:http/types.http-error-code` with one that also recognises body errors (see
/// the module docs). Call after the wasi:http interfaces were added to `linker`.
pub(crate) fn add_http_error_code<T>(
    linker: &mut Linker<T>,
    table: fn(&mut T) -> &mut wasmtime::component::ResourceTable,
) -> wasmtime::Result<()>
where
    T: Send + 'static,
{
    linker.allow_shadowing(true);
    linker.instance("wasi:http/types@0.2.12")?.func_wrap(
        "http-error-code",
        move |mut store, (err,): (Resource<wasmtime::Error>,)| {
            let err = table(store.data_mut()).get(&err)?;
            let code = err.downcast_ref::<ErrorCode>().cloned().or_else(|| {
                err.downcast_ref::<wasmtime_wasi_http::Error>()
                    .map(error_code_of)
            });
            Ok((code,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

// The SDK's reverse table, shared as source so both sides read codes the same way.
include!("../../sdk/src/wire_name.rs");

/// The wire name a script reads for `code` (`connection_refused`): what the Rust SDK's
/// `ProxyError` prints, and what a JavaScript script's binding fetch throws.
pub(crate) fn wire_name(code: &ErrorCode) -> &'static str {
    wasi_error_wire_name!(code, ErrorCode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_and_round_trips_through_the_sdk_reverse_table() {
        for code in Code::ALL {
            let wasi = wasi_error_code(&ProxyError::new(code));
            assert_eq!(
                wasi_error_wire_name!(&wasi, ErrorCode),
                code.wire_name(),
                "{wasi:?}"
            );
            // What the guest sees after the embedder-side detour (response futures, bodies).
            let back = error_code_of(&wasi_http_error(&ProxyError::new(code)));
            assert_eq!(format!("{back:?}"), format!("{wasi:?}"), "{code}");
        }
    }

    #[test]
    fn dns_errors_carry_the_rcode_and_tls_alerts_the_details() {
        let wasi = wasi_error_code(&ProxyError::dns("NXDOMAIN"));
        let ErrorCode::DnsError(payload) = wasi else {
            panic!("{wasi:?}")
        };
        assert_eq!(payload.rcode.as_deref(), Some("NXDOMAIN"));
        assert_eq!(payload.info_code, None);

        let err = ProxyError::new(Code::TlsAlertReceived).with_details("handshake_failure");
        let ErrorCode::TlsAlertReceived(alert) = wasi_error_code(&err) else {
            panic!()
        };
        assert_eq!(alert.alert_message.as_deref(), Some("handshake_failure"));
    }

    #[test]
    fn codes_without_a_variant_use_the_internal_error_convention() {
        let wasi = wasi_error_code(&ProxyError::new(Code::RateLimited));
        assert!(matches!(&wasi, ErrorCode::InternalError(Some(n)) if n == "rate_limited"));
        let internal = ProxyError::new(Code::ProxyInternalError).with_details("secret detail");
        assert!(matches!(
            wasi_error_code(&internal),
            ErrorCode::InternalError(None)
        ));
    }
}
