//! Decoding a `VpcBinding.fetch` (or `connect`) call from its bytes exactly as the server
//! reads it ([`crate::request::read_fetch`], [`crate::request::read_connect`]), without a
//! connection: the parameters as one Cap'n Proto message in the standard unpacked framing. This is what the fuzz targets drive; the server
//! itself gets the parameters from capnp-rpc.

use http::{HeaderMap, HeaderValue, Method};
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::binding_capnp::vpc_binding;

use crate::request::{BindingTarget, read_connect, read_fetch};

/// A fetch call as the binding-worker would send it on.
#[derive(Debug, Clone)]
pub struct DecodedFetch {
    /// The service (or network) the binding points at.
    pub target: BindingTarget,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The URL's host without its port: the `Host` header.
    pub host: String,
    /// The URL's port (the scheme's by default): a network binding's destination port.
    pub port: u16,
    /// The `Host` header as sent (with the port for a network destination on another port
    /// than the scheme's).
    pub host_header: String,
    /// The method.
    pub method: Method,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
    /// End-to-end headers (hop-by-hop ones and `Host` removed).
    pub headers: HeaderMap,
    /// The protocol asked for with `Upgrade` + `Connection: upgrade`.
    pub upgrade: Option<HeaderValue>,
}

/// Reads `message` (a `VpcBinding.fetch` parameters struct as the root of an unpacked-framing
/// message) as the server reads a call's context and head. A message that is not valid Cap'n
/// Proto is an `http_request_error`, as any unreadable field of a call is.
pub fn decode_fetch_call(message: &[u8]) -> Result<DecodedFetch, ProxyError> {
    let unreadable = |e: capnp::Error| {
        ProxyError::new(ErrorCode::HttpRequestError)
            .with_details(format!("fetch call is unreadable: {e}"))
    };
    let mut bytes = message;
    let reader = capnp::serialize::read_message(&mut bytes, capnp::message::ReaderOptions::new())
        .map_err(unreadable)?;
    let params = reader
        .get_root::<vpc_binding::fetch_params::Reader<'_>>()
        .map_err(unreadable)?;
    let request = read_fetch(
        params.get_context().map_err(unreadable)?,
        params.get_head().map_err(unreadable)?,
    )?;
    Ok(DecodedFetch {
        target: request.target,
        scheme: request.scheme.as_str(),
        host_header: request.host_header(),
        host: request.host,
        port: request.port,
        method: request.method,
        path_and_query: request.path_and_query.to_string(),
        headers: request.headers,
        upgrade: request.upgrade,
    })
}

/// A connect call as the binding-worker would open it.
#[derive(Debug, Clone)]
pub struct DecodedConnect {
    /// The service (or network) the binding points at.
    pub target: BindingTarget,
    /// A network binding's destination host (IPv6 without brackets) and port; `None` for a
    /// service (its `tcp_port` is dialled).
    pub destination: Option<(String, u16)>,
}

/// Reads `message` (a `VpcBinding.connect` parameters struct as the root of an
/// unpacked-framing message) as the server reads a call's context and address.
pub fn decode_connect_call(message: &[u8]) -> Result<DecodedConnect, ProxyError> {
    let unreadable = |e: capnp::Error| {
        ProxyError::new(ErrorCode::HttpRequestError)
            .with_details(format!("connect call is unreadable: {e}"))
    };
    let mut bytes = message;
    let reader = capnp::serialize::read_message(&mut bytes, capnp::message::ReaderOptions::new())
        .map_err(unreadable)?;
    let params = reader
        .get_root::<vpc_binding::connect_params::Reader<'_>>()
        .map_err(unreadable)?;
    let request = read_connect(
        params.get_context().map_err(unreadable)?,
        params.get_address(),
    )?;
    Ok(DecodedConnect {
        target: request.target,
        destination: request.destination,
    })
}

#[cfg(test)]
mod tests {
    use wvpc_schemas::binding_capnp::vpc_binding;

    use super::*;

    fn call(headers: u32) -> Vec<u8> {
        let mut message = capnp::message::Builder::new_default();
        {
            let mut params = message.init_root::<vpc_binding::fetch_params::Builder<'_>>();
            let mut context = params.reborrow().init_context();
            context.set_service_id("0199d9b2-6a5c-7a3e-9d3c-3f1d2b4c5a6e");
            context.set_binding("API");
            let mut head = params.init_head();
            head.set_method("GET");
            head.set_url("http://api.internal/x");
            let mut list = head.init_headers(headers);
            for i in 0..headers {
                let mut h = list.reborrow().get(i);
                h.set_name("x-filler");
                h.set_value(b"1");
            }
        }
        capnp::serialize::write_message_to_words(&message)
    }

    #[test]
    fn a_call_reads_into_the_request_that_is_sent() {
        let fetch = decode_fetch_call(&call(3)).unwrap();
        assert_eq!(
            (fetch.scheme, fetch.host.as_str()),
            ("http", "api.internal")
        );
        assert_eq!(fetch.path_and_query, "/x");
        assert_eq!(fetch.headers.get_all("x-filler").iter().count(), 3);
    }

    /// Found by the `binding_fetch` fuzz target: `HeaderMap::with_capacity` panicked on the
    /// peer's count above 24 576, taking the binding-worker's RPC thread down.
    #[test]
    fn a_call_with_too_many_headers_is_a_request_error_not_a_panic() {
        let err = decode_fetch_call(&call(30_000)).unwrap_err();
        assert_eq!(err.code, ErrorCode::HttpRequestError);
        assert!(err.details.unwrap().contains("30000 headers"));
        assert!(decode_fetch_call(&call(wvpc_schemas::MAX_HEAD_HEADERS)).is_ok());
    }

    fn connect_call(tunnel: &str, network: &str, service: &str, address: &str) -> Vec<u8> {
        let mut message = capnp::message::Builder::new_default();
        {
            let mut params = message.init_root::<vpc_binding::connect_params::Builder<'_>>();
            let mut context = params.reborrow().init_context();
            context.set_service_id(service);
            context.set_tunnel_id(tunnel);
            context.set_network_id(network);
            context.set_binding("NET");
            params.set_address(address);
        }
        capnp::serialize::write_message_to_words(&message)
    }

    #[test]
    fn a_connect_call_names_a_network_and_destination_or_a_service() {
        use wvpc_schemas::NetworkTarget;
        let tunnel = "0199d9b2-6a5c-7a3e-9d3c-3f1d2b4c5a6e";
        let decoded = decode_connect_call(&connect_call(tunnel, "", "", "[fd00::1]:5432")).unwrap();
        assert_eq!(
            decoded.target,
            BindingTarget::Network(NetworkTarget::Tunnel(tunnel.parse().unwrap()))
        );
        assert_eq!(decoded.destination, Some(("fd00::1".to_owned(), 5432)));
        let decoded = decode_connect_call(&connect_call("", "cf1:network", "", "db:1")).unwrap();
        assert_eq!(
            decoded.target,
            BindingTarget::Network(NetworkTarget::AllNetworks)
        );
        let decoded = decode_connect_call(&connect_call("", "", tunnel, "")).unwrap();
        assert_eq!(decoded.destination, None);

        let err = decode_connect_call(&connect_call("", "", tunnel, "db:1")).unwrap_err();
        assert_eq!(err.code, ErrorCode::HttpRequestError);
        assert!(err.details.unwrap().contains("address must be empty"));
        let err =
            decode_connect_call(&connect_call(tunnel, "cf1:network", "", "db:1")).unwrap_err();
        assert_eq!(err.code, ErrorCode::ProxyConfigurationError);
        let err = decode_connect_call(&connect_call("", "cf1:vnet:x", "", "db:1")).unwrap_err();
        assert_eq!(err.code, ErrorCode::ProxyConfigurationError);
        assert!(err.details.unwrap().contains("virtual network id"));
        let err = decode_connect_call(&connect_call("", "cf1:network", "", "db")).unwrap_err();
        assert_eq!(err.code, ErrorCode::DestinationNotFound);
    }

    #[test]
    fn a_network_fetch_keeps_the_url_port_and_says_it_in_host() {
        let mut message = capnp::message::Builder::new_default();
        {
            let mut params = message.init_root::<vpc_binding::fetch_params::Builder<'_>>();
            let mut context = params.reborrow().init_context();
            context.set_network_id("cf1:network");
            let mut head = params.init_head();
            head.set_method("GET");
            head.set_url("http://[fd00::5]:8080/x");
        }
        let fetch = decode_fetch_call(&capnp::serialize::write_message_to_words(&message)).unwrap();
        assert_eq!(fetch.port, 8080);
        assert_eq!(fetch.host_header, "[fd00::5]:8080");
    }

    #[test]
    fn bytes_that_are_not_a_call_are_a_request_error() {
        let err = decode_fetch_call(b"\x00\x00\x00\x00\x01\x00\x00\x00\xff\xff").unwrap_err();
        assert_eq!(err.code, ErrorCode::HttpRequestError);
    }
}
