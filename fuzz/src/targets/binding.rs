//! What the binding-worker reads from a runtime: the platform handshake, then Cap'n Proto
//! messages: `VpcBinding.fetch` parameters (context and request head), `VpcBinding.connect`
//! parameters (context and address) and the `WireError` of an aborted request body.

use arbitrary::Unstructured;
use http::{Method, header};
use wvpc_binding_worker::{
    BindingTarget, DecodedConnect, DecodedFetch, decode_connect_call, decode_fetch_call,
};
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::binding_auth::{HandshakeError, handshake_as_binding_worker};
use wvpc_schemas::binding_capnp::{vpc_binding, wire_error};
use wvpc_schemas::read_wire_error;

/// A fetch call read from bytes is either refused as a request (or configuration) error or
/// is a request that is safe to send: an absolute http(s) URL split into a lower-case host
/// and a path starting with `/`, no CONNECT, no hop-by-hop or `Host` header, never a length
/// beside a transfer-coding. The same holds for calls built from structured values, and a
/// `WireError` always reads as some code.
pub fn binding_fetch(data: &[u8]) {
    check_fetch(decode_fetch_call(data));
    check_connect(decode_connect_call(data));

    let mut bytes = data;
    if let Ok(message) =
        capnp::serialize::read_message(&mut bytes, capnp::message::ReaderOptions::new())
        && let Ok(root) = message.get_root::<wire_error::Reader<'_>>()
    {
        let err = read_wire_error(root);
        assert!(ErrorCode::ALL.contains(&err.code));
    }

    let mut u = Unstructured::new(data);
    if let Ok(message) = arbitrary_call(&mut u) {
        check_fetch(decode_fetch_call(&message));
    }
    let mut u = Unstructured::new(data);
    if let Ok(message) = arbitrary_connect(&mut u) {
        check_connect(decode_connect_call(&message));
    }
}

/// A connect call is refused with a caller's code, or names a service with no address, or a
/// network with a lower-case host (no brackets) and a port that is not 0.
fn check_connect(decoded: Result<DecodedConnect, ProxyError>) {
    let connect = match decoded {
        Ok(connect) => connect,
        Err(err) => {
            assert!(
                matches!(
                    err.code,
                    ErrorCode::HttpRequestError
                        | ErrorCode::ProxyConfigurationError
                        | ErrorCode::DestinationNotFound
                ),
                "a bad connect is the caller's error, not {:?}",
                err.code
            );
            assert!(err.details.is_some_and(|d| !d.is_empty()));
            return;
        }
    };
    match (connect.target, connect.destination) {
        (BindingTarget::Service(_), None) => {}
        (BindingTarget::Network(_), Some((host, port))) => {
            assert!(!host.is_empty() && port != 0);
            assert_eq!(host, host.to_ascii_lowercase());
            assert!(!host.starts_with('['));
        }
        (target, destination) => panic!("{target:?} with destination {destination:?}"),
    }
}

const ADDRESSES: &[&str] = &[
    "",
    "db.internal:5432",
    "[fd00::1]:22",
    "10.0.0.1:0",
    "user@db:1",
    "db",
    "[fd00::1",
];

/// A connect parameters message from structured values: each way a binding names its target,
/// and addresses that steer into every branch.
fn arbitrary_connect(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let mut message = capnp::message::Builder::new_default();
    {
        let mut params = message.init_root::<vpc_binding::connect_params::Builder<'_>>();
        let mut context = params.reborrow().init_context();
        let uuid = "0199d9b2-6a5c-7a3e-9d3c-3f1d2b4c5a6e";
        let pick = |u: &mut Unstructured<'_>, known: &[&str]| -> arbitrary::Result<String> {
            Ok(if u.arbitrary()? {
                (*u.choose(known)?).to_owned()
            } else {
                u.arbitrary::<String>()?
            })
        };
        context.set_service_id(pick(u, &["", uuid])?.as_str());
        context.set_tunnel_id(pick(u, &["", uuid])?.as_str());
        context.set_network_id(
            pick(
                u,
                &[
                    "",
                    "cf1:network",
                    "cf1:vnet:0199d9b2-6a5c-7a3e-9d3c-3f1d2b4c5a6e",
                ],
            )?
            .as_str(),
        );
        context.set_binding(u.arbitrary::<&str>()?);
        params.set_address(pick(u, ADDRESSES)?.as_str());
    }
    Ok(capnp::serialize::write_message_to_words(&message))
}

fn check_fetch(decoded: Result<DecodedFetch, ProxyError>) {
    let fetch = match decoded {
        Ok(fetch) => fetch,
        Err(err) => {
            assert!(
                matches!(
                    err.code,
                    ErrorCode::HttpRequestError | ErrorCode::ProxyConfigurationError
                ),
                "a bad call is the caller's error, not {:?}",
                err.code
            );
            assert!(err.details.is_some_and(|d| !d.is_empty()));
            return;
        }
    };
    assert!(matches!(fetch.scheme, "http" | "https"));
    if let BindingTarget::Network(_) = fetch.target {
        assert_ne!(fetch.port, 0, "a network destination on port 0");
    }
    assert!(!fetch.host.is_empty());
    assert_eq!(fetch.host, fetch.host.to_ascii_lowercase());
    assert!(fetch.path_and_query.starts_with('/'));
    assert_ne!(fetch.method, Method::CONNECT);
    for hop in [
        header::CONNECTION,
        header::HOST,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        assert!(!fetch.headers.contains_key(&hop), "{hop} is forwarded");
    }
    assert!(!fetch.headers.contains_key("keep-alive"));
    assert!(
        !fetch
            .headers
            .keys()
            .any(|name| name.as_str().starts_with("proxy-"))
    );
    if fetch.headers.contains_key(header::TRANSFER_ENCODING) {
        assert!(!fetch.headers.contains_key(header::CONTENT_LENGTH));
    }
}

/// Header names that make the header handling do something.
const HEADER_NAMES: &[&str] = &[
    "connection",
    "upgrade",
    "host",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
    "proxy-authorization",
    "proxy-x",
    "x-custom",
    "Content-Type",
    "bad name",
    "",
];

const URLS: &[&str] = &[
    "http://api.internal/",
    "https://API.internal:8443/v1?q=1#frag",
    "http://[fd00::1]:81",
    "/relative",
    "ftp://x/",
    "http:///x",
];

/// A fetch parameters message from structured values: URLs and headers that steer into every
/// branch, plus free text, and header counts far above what a real request has.
fn arbitrary_call(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let mut message = capnp::message::Builder::new_default();
    {
        let mut params = message.init_root::<vpc_binding::fetch_params::Builder<'_>>();
        let mut context = params.reborrow().init_context();
        let service_id = if u.arbitrary()? {
            "0199d9b2-6a5c-7a3e-9d3c-3f1d2b4c5a6e".to_owned()
        } else {
            u.arbitrary::<String>()?
        };
        // A network binding instead, now and then: the URL is then the destination.
        if u.ratio(1, 4)? {
            context.set_network_id(*u.choose(&["cf1:network", "cf1:vnet:x", ""])?);
        } else {
            context.set_service_id(service_id.as_str());
        }
        context.set_script(u.arbitrary::<&str>()?);
        context.set_account(u.arbitrary::<&str>()?);
        context.set_request_id(u.arbitrary::<&str>()?);
        context.set_binding(u.arbitrary::<&str>()?);

        let mut head = params.init_head();
        let method = *u.choose(&["GET", "POST", "CONNECT", "get", "PÖST", ""])?;
        head.set_method(method);
        let url = if u.arbitrary()? {
            (*u.choose(URLS)?).to_owned()
        } else {
            u.arbitrary::<String>()?
        };
        head.set_url(url.as_str());
        // Up to 30 000 headers: far more than any limit, to check counts from the peer.
        let count = if u.ratio(1, 8)? {
            u.int_in_range(0..=30_000u32)?
        } else {
            u.int_in_range(0..=8u32)?
        };
        let mut headers = head.init_headers(count);
        for i in 0..count {
            let mut h = headers.reborrow().get(i);
            if u.is_empty() {
                h.set_name("x-filler");
                h.set_value(b"1");
                continue;
            }
            let name = if u.arbitrary()? {
                (*u.choose(HEADER_NAMES)?).to_owned()
            } else {
                u.arbitrary::<String>()?
            };
            h.set_name(name.as_str());
            let value: &[u8] = if u.arbitrary()? {
                u.choose(&[
                    &b"upgrade"[..],
                    b"websocket",
                    b"chunked",
                    b"10",
                    b"x-custom, te",
                ])?
            } else {
                u.arbitrary()?
            };
            h.set_value(value);
        }
    }
    Ok(capnp::serialize::write_message_to_words(&message))
}

/// The platform handshake a binding-worker runs before capnp: bytes from a runtime that does
/// not hold the secret never pass it, whatever they are, and the refusal is typed.
pub fn binding_handshake(data: &[u8]) {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime");
    }
    let secret = wvpc_schemas::PlatformSecret::from_bytes([7; 32]);
    let mut stream = tokio::io::join(data, tokio::io::sink());
    let outcome = RUNTIME.with(|runtime| {
        runtime.block_on(handshake_as_binding_worker(
            &mut stream,
            &secret,
            std::time::Duration::from_secs(5),
        ))
    });
    match outcome {
        Ok(()) => panic!("bytes without the secret passed the platform handshake"),
        Err(err) => assert!(
            !matches!(err, HandshakeError::Timeout(_)),
            "an in-memory peer cannot time out: {err}"
        ),
    }
}
