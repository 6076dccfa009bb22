//! The tunnel protocol's parsers (`wvpc-tunnel`): datagram v3 and v2, stream preambles,
//! `ConnectRequest` and `ConnectResponse`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_tunnel::connect::MAX_CONNECT_MESSAGE_BYTES;
use wvpc_tunnel::datagram::{
    MAX_PAYLOAD_LEN, RegistrationResponse, RegistrationStatus, SessionRegistration, encode_payload,
};
use wvpc_tunnel::datagram_v2::{DatagramV2, encode_udp};
use wvpc_tunnel::preamble::{read_signature, read_version};
use wvpc_tunnel::{
    ConnectRequest, ConnectResponse, Datagram, Metadata, RequestId, StreamError, StreamKind,
    StreamType,
};

use super::ready;

fn request_id(u: &mut Unstructured<'_>) -> arbitrary::Result<RequestId> {
    Ok(RequestId(u.arbitrary()?))
}

fn payload(u: &mut Unstructured<'_>) -> arbitrary::Result<Bytes> {
    let len = u.int_in_range(0..=MAX_PAYLOAD_LEN)?;
    Ok(Bytes::copy_from_slice(u.bytes(len.min(u.len()))?))
}

/// Datagram v3: what decodes re-encodes to the same datagram (or to one that decodes to the
/// same value), payloads stay within the tunnel limit, and encoded values decode back.
pub fn datagram_v3(data: &[u8]) {
    match Datagram::decode(Bytes::copy_from_slice(data)) {
        Ok(Datagram::Registration(reg)) => {
            assert!(reg.payload.len() <= MAX_PAYLOAD_LEN);
            let wire = reg.encode().expect("a decoded registration encodes");
            assert_eq!(
                Datagram::decode(wire),
                Ok(Datagram::Registration(reg)),
                "registration round trip"
            );
        }
        Ok(Datagram::Payload {
            request_id,
            payload,
        }) => {
            assert!(payload.len() <= MAX_PAYLOAD_LEN);
            let wire = encode_payload(request_id, &payload).expect("a decoded payload encodes");
            assert_eq!(&wire[..], data, "payload datagrams re-encode byte for byte");
        }
        Ok(Datagram::Icmp(packet)) => assert_eq!(&packet[..], &data[1..]),
        Ok(Datagram::RegistrationResponse(resp)) => {
            assert_eq!(
                resp.failure().is_none(),
                resp.status == RegistrationStatus::Ok
            );
            if let Some(failure) = resp.failure() {
                assert!(failure.details.is_some_and(|d| !d.is_empty()));
            }
            let Ok(Datagram::RegistrationResponse(again)) = Datagram::decode(resp.encode()) else {
                panic!("a re-encoded registration response does not decode");
            };
            assert_eq!(again.request_id, resp.request_id);
            assert_eq!(again.status, resp.status);
            // The message may have been cut at the limit, never changed.
            assert!(resp.message.starts_with(&again.message));
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }

    let mut u = Unstructured::new(data);
    if let Ok((reg, resp, id, body)) = arbitrary_v3(&mut u) {
        let wire = reg.encode().expect("a payload within the limit encodes");
        assert_eq!(
            Datagram::decode(wire),
            Ok(Datagram::Registration(reg)),
            "encoded registration decodes back"
        );
        let wire = resp.encode();
        let Ok(Datagram::RegistrationResponse(got)) = Datagram::decode(wire) else {
            panic!("an encoded registration response does not decode");
        };
        assert_eq!((got.request_id, got.status), (resp.request_id, resp.status));
        assert!(resp.message.starts_with(&got.message));
        let wire = encode_payload(id, &body).expect("a payload within the limit encodes");
        assert_eq!(
            Datagram::decode(wire),
            Ok(Datagram::Payload {
                request_id: id,
                payload: body
            })
        );
    }
}

type V3Values = (SessionRegistration, RegistrationResponse, RequestId, Bytes);

fn arbitrary_v3(u: &mut Unstructured<'_>) -> arbitrary::Result<V3Values> {
    let ip: IpAddr = u.arbitrary()?;
    let reg = SessionRegistration {
        request_id: request_id(u)?,
        dest: SocketAddr::new(ip, u.arbitrary()?),
        idle: Duration::from_secs(u64::from(u.arbitrary::<u16>()?)),
        traced: u.arbitrary()?,
        payload: payload(u)?,
    };
    let resp = RegistrationResponse {
        request_id: request_id(u)?,
        status: RegistrationStatus::from_byte(u.arbitrary()?),
        message: u.arbitrary()?,
    };
    Ok((reg, resp, request_id(u)?, payload(u)?))
}

/// Datagram v2: UDP datagrams re-encode byte for byte; the other types are recognised by their
/// last byte only.
pub fn datagram_v2(data: &[u8]) {
    match DatagramV2::decode(Bytes::copy_from_slice(data)) {
        Ok(DatagramV2::Udp {
            session_id,
            payload,
        }) => {
            assert!(payload.len() <= MAX_PAYLOAD_LEN);
            let wire = encode_udp(session_id, &payload).expect("a decoded payload encodes");
            assert_eq!(&wire[..], data);
        }
        Ok(DatagramV2::Other(kind)) => {
            assert!((1..=3).contains(&kind));
            assert_eq!(data.last(), Some(&kind));
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
    let mut u = Unstructured::new(data);
    if let (Ok(id), Ok(body)) = (request_id(&mut u), payload(&mut u)) {
        let wire = encode_udp(id, &body).expect("a payload within the limit encodes");
        assert_eq!(
            DatagramV2::decode(wire),
            Ok(DatagramV2::Udp {
                session_id: id,
                payload: body
            })
        );
    }
}

/// Stream preambles: a signature is recognised exactly, anything else is refused naming the
/// bytes, a short stream is `Truncated`.
pub fn stream_preamble(data: &[u8]) {
    let mut r = data;
    match ready(read_signature(&mut r)) {
        Ok(kind) => {
            assert_eq!(data[..6], kind.signature());
            if kind == StreamKind::Data {
                match ready(read_version(&mut r)) {
                    Ok(version) => assert_eq!(version, data[6..8]),
                    Err(StreamError::Truncated(_)) => assert!(data.len() < 8),
                    Err(other) => panic!("unexpected version error {other:?}"),
                }
            }
        }
        Err(StreamError::UnknownSignature(signature)) => {
            assert_eq!(signature, data[..6]);
            assert_eq!(StreamKind::from_signature(signature), None);
        }
        Err(StreamError::Truncated(_)) => assert!(data.len() < 6),
        Err(other) => panic!("unexpected signature error {other:?}"),
    }
}

fn check_stream_error(err: &StreamError) {
    assert!(!err.to_string().is_empty());
    if let StreamError::TooLarge(n) = err {
        assert!(*n > MAX_CONNECT_MESSAGE_BYTES);
    }
}

/// `ConnectRequest` (what follows the signature): a request that reads re-encodes to one that
/// reads back equal; the reader never takes more than the size limit; encoded requests decode
/// back.
pub fn connect_request(data: &[u8]) {
    let mut r = data;
    match ready(ConnectRequest::read_after_signature(&mut r)) {
        Ok(request) => {
            assert!(data.len() - r.len() <= 2 + MAX_CONNECT_MESSAGE_BYTES);
            assert_request_round_trips(&request);
        }
        Err(err) => check_stream_error(&err),
    }
    let mut u = Unstructured::new(data);
    if let Ok(request) = arbitrary_request(&mut u) {
        assert_request_round_trips(&request);
    }
}

fn assert_request_round_trips(request: &ConnectRequest) {
    let wire = request.encode();
    let mut r = &wire[6..];
    if wire.len() - 8 > MAX_CONNECT_MESSAGE_BYTES {
        // Empty entries cost the reader a word each, and several when encoded.
        let read = ready(ConnectRequest::read_after_signature(&mut r));
        assert!(matches!(read, Err(StreamError::TooLarge(_))));
        return;
    }
    let again = ready(ConnectRequest::read_after_signature(&mut r))
        .unwrap_or_else(|err| panic!("an encoded ConnectRequest does not read back: {err}"));
    assert_eq!(&again, request);
    assert!(
        r.is_empty(),
        "the reader takes the whole message and nothing more"
    );
}

fn metadata(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<Metadata>> {
    let n = u.int_in_range(0..=16)?;
    (0..n)
        .map(|_| {
            Ok(Metadata::new(
                u.arbitrary::<String>()?,
                u.arbitrary::<String>()?,
            ))
        })
        .collect()
}

fn arbitrary_request(u: &mut Unstructured<'_>) -> arbitrary::Result<ConnectRequest> {
    Ok(ConnectRequest {
        dest: u.arbitrary()?,
        stream_type: *u.choose(&[StreamType::Http, StreamType::Websocket, StreamType::Tcp])?,
        metadata: metadata(u)?,
    })
}

/// `ConnectResponse` (with its preamble): reads back equal after re-encoding; a failure always
/// has a code, and the code we send is the code read.
pub fn connect_response(data: &[u8]) {
    let mut r = data;
    match ready(ConnectResponse::read(&mut r)) {
        Ok(response) => {
            assert!(data.len() - r.len() <= 8 + MAX_CONNECT_MESSAGE_BYTES);
            assert_eq!(
                response.failure_code().is_some(),
                !response.error.is_empty()
            );
            assert_response_round_trips(&response);
        }
        Err(err) => check_stream_error(&err),
    }
    let mut u = Unstructured::new(data);
    if let Ok((response, code, details)) = arbitrary_response(&mut u) {
        assert_response_round_trips(&response);
        let mut err = ProxyError::new(code);
        if let Some(details) = details {
            err = err.with_details(details);
        }
        let sent = ConnectResponse::failure(&err);
        let read = sent.failure_code().expect("a failure reads as a failure");
        assert_eq!(read.code, code, "the code sent is the code read");
    }
}

fn assert_response_round_trips(response: &ConnectResponse) {
    let wire = response.encode();
    let mut r = &wire[..];
    if wire.len() - 8 > MAX_CONNECT_MESSAGE_BYTES {
        let read = ready(ConnectResponse::read(&mut r));
        assert!(matches!(read, Err(StreamError::TooLarge(_))));
        return;
    }
    let again = ready(ConnectResponse::read(&mut r))
        .unwrap_or_else(|err| panic!("an encoded ConnectResponse does not read back: {err}"));
    assert_eq!(&again, response);
    assert!(r.is_empty());
}

fn arbitrary_response(
    u: &mut Unstructured<'_>,
) -> arbitrary::Result<(ConnectResponse, ErrorCode, Option<String>)> {
    let response = ConnectResponse {
        error: u.arbitrary()?,
        metadata: metadata(u)?,
    };
    let code = *u.choose(&ErrorCode::ALL)?;
    let details = Option::<String>::arbitrary(u)?;
    Ok((response, code, details))
}
