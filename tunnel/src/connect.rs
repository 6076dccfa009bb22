//! Data-stream handshake: `ConnectRequest` (edge → connector) and `ConnectResponse`
//! (connector → edge), each after the preamble, in Cap'n Proto's standard unpacked framing.
//!
//! Readers take exactly one message off the stream and nothing more, because the proxied bytes
//! follow immediately. Message size is bounded ([`MAX_CONNECT_MESSAGE_BYTES`]) so a peer cannot
//! make us buffer without limit.
//!
//! Failures travel as codes: our connector puts the [`ErrorCode`] wire name in the metadata key
//! [`metadata::PROXY_STATUS_ERROR`] beside the human text; for the stock cloudflared, which only
//! sends text, [`ConnectResponse::failure`] documents the fallback.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::tunnel_stream_capnp::{ConnectionType, connect_request, connect_response};

use crate::preamble::{
    DATA_STREAM_PREAMBLE, StreamKind, read_exact_or, read_signature, read_version,
};

/// Largest `ConnectRequest`/`ConnectResponse` we accept (segment table included).
pub const MAX_CONNECT_MESSAGE_BYTES: usize = 256 * 1024;

/// Most segments we accept in one handshake message (ours always have one).
const MAX_SEGMENTS: usize = 64;

/// Metadata keys on data streams (cloudflared's, plus our `ProxyStatusError`).
pub mod metadata {
    /// Flow id for logs (edge → connector, TCP).
    pub const FLOW_ID: &str = "FlowID";
    /// Optional tracing context (edge → connector).
    pub const CF_TRACE_ID: &str = "cf-trace-id";
    /// `true` when the connector's flow limiter refused the flow (connector → edge).
    pub const FLOW_CONNECT_RATE_LIMITED: &str = "FlowConnectRateLimited";
    /// Our connector's failure as an `ErrorCode` wire name (connector → edge).
    pub const PROXY_STATUS_ERROR: &str = "ProxyStatusError";
    /// HTTP method (edge → connector, http/websocket).
    pub const HTTP_METHOD: &str = "HttpMethod";
    /// HTTP host (edge → connector, http/websocket).
    pub const HTTP_HOST: &str = "HttpHost";
    /// Prefix of one header value: `HttpHeader:<Name>` (both directions).
    pub const HTTP_HEADER_PREFIX: &str = "HttpHeader:";
    /// Decimal HTTP status (connector → edge).
    pub const HTTP_STATUS: &str = "HttpStatus";
}

/// Why a stream handshake could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The stream failed underneath.
    #[error("stream i/o failed: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended in the middle of the handshake.
    #[error("stream ended before the {0} was complete")]
    Truncated(&'static str),
    /// The first 6 bytes are not a known signature.
    #[error("unknown stream signature {0:02x?}: the peer does not speak the tunnel protocol")]
    UnknownSignature([u8; 6]),
    /// A stream of the wrong kind where a data stream was expected.
    #[error("expected a data stream, got a {0:?} stream")]
    WrongKind(StreamKind),
    /// The segment table announces more segments than we accept.
    #[error("handshake message has {0} segments (limit {MAX_SEGMENTS})")]
    TooManySegments(usize),
    /// The message is larger than [`MAX_CONNECT_MESSAGE_BYTES`].
    #[error(
        "handshake message of {0} bytes exceeds the limit of {MAX_CONNECT_MESSAGE_BYTES} bytes"
    )]
    TooLarge(usize),
    /// The message is not a valid Cap'n Proto message of the expected struct.
    #[error("malformed {what}: {source}")]
    Capnp {
        /// Which message.
        what: &'static str,
        /// The decoder's complaint.
        source: capnp::Error,
    },
    /// `ConnectRequest.type` has a value this build does not know.
    #[error("ConnectRequest.type {0} is not http, websocket or tcp")]
    UnknownConnectionType(u16),
}

/// What a data stream proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamType {
    /// An HTTP request (`dest` is a URL).
    Http,
    /// A WebSocket upgrade (`dest` is a URL).
    Websocket,
    /// A raw TCP stream (`dest` is a literal `ip:port`).
    Tcp,
}

impl From<StreamType> for ConnectionType {
    fn from(t: StreamType) -> Self {
        match t {
            StreamType::Http => Self::Http,
            StreamType::Websocket => Self::Websocket,
            StreamType::Tcp => Self::Tcp,
        }
    }
}

impl From<ConnectionType> for StreamType {
    fn from(t: ConnectionType) -> Self {
        match t {
            ConnectionType::Http => Self::Http,
            ConnectionType::Websocket => Self::Websocket,
            ConnectionType::Tcp => Self::Tcp,
        }
    }
}

/// One metadata entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Key, e.g. [`metadata::FLOW_ID`].
    pub key: String,
    /// Value.
    pub val: String,
}

impl Metadata {
    /// An entry.
    pub fn new(key: impl Into<String>, val: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            val: val.into(),
        }
    }
}

/// The edge's request on a data stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// For TCP a literal `ip:port` (IPv6 in brackets); for HTTP a URL.
    pub dest: String,
    /// What to proxy.
    pub stream_type: StreamType,
    /// `FlowID`, headers, ...
    pub metadata: Vec<Metadata>,
}

/// The connector's answer on a data stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectResponse {
    /// Empty on success; human text otherwise.
    pub error: String,
    /// `ProxyStatusError`, `FlowConnectRateLimited`, `HttpStatus`, ...
    pub metadata: Vec<Metadata>,
}

fn metadata_value<'m>(metadata: &'m [Metadata], key: &str) -> Option<&'m str> {
    metadata
        .iter()
        .find(|m| m.key == key)
        .map(|m| m.val.as_str())
}

impl ConnectRequest {
    /// A TCP request to `dest` with a flow id.
    pub fn tcp(dest: std::net::SocketAddr, flow_id: impl Into<String>) -> Self {
        Self {
            dest: dest.to_string(),
            stream_type: StreamType::Tcp,
            metadata: vec![Metadata::new(metadata::FLOW_ID, flow_id)],
        }
    }

    /// The value of a metadata key, if present.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        metadata_value(&self.metadata, key)
    }

    /// Preamble (signature + version) and the message, ready to write in one go.
    pub fn encode(&self) -> Vec<u8> {
        let mut message = capnp::message::Builder::new_default();
        {
            let mut root = message.init_root::<connect_request::Builder<'_>>();
            root.set_dest(self.dest.as_str());
            root.set_type(self.stream_type.into());
            encode_metadata(
                root.init_metadata(list_len(self.metadata.len())),
                &self.metadata,
            );
        }
        with_preamble(&message)
    }

    /// Writes preamble and message in one write.
    pub async fn write<W: AsyncWrite + Unpin>(&self, w: &mut W) -> std::io::Result<()> {
        w.write_all(&self.encode()).await
    }

    /// Reads a request after the signature has been consumed (version, then message).
    pub async fn read_after_signature<R: AsyncRead + Unpin>(
        r: &mut R,
    ) -> Result<Self, StreamError> {
        read_version(r).await?;
        let message = read_message(r, "ConnectRequest").await?;
        let capnp_err = |source| StreamError::Capnp {
            what: "ConnectRequest",
            source,
        };
        let root = message
            .get_root::<connect_request::Reader<'_>>()
            .map_err(capnp_err)?;
        let stream_type = root
            .get_type()
            .map_err(|capnp::NotInSchema(n)| StreamError::UnknownConnectionType(n))?
            .into();
        let decode = || -> Result<Self, capnp::Error> {
            Ok(Self {
                dest: root.get_dest()?.to_string()?,
                stream_type,
                metadata: decode_metadata(root.get_metadata()?)?,
            })
        };
        decode().map_err(capnp_err)
    }
}

impl ConnectResponse {
    /// Success.
    pub fn ok() -> Self {
        Self::default()
    }

    /// A failure: human text plus the code in `ProxyStatusError` (and `FlowConnectRateLimited`
    /// for `rate_limited`, which cloudflared-aware edges understand).
    pub fn failure(err: &ProxyError) -> Self {
        let mut metadata = vec![Metadata::new(
            metadata::PROXY_STATUS_ERROR,
            err.code.wire_name(),
        )];
        if err.code == ErrorCode::RateLimited {
            metadata.push(Metadata::new(metadata::FLOW_CONNECT_RATE_LIMITED, "true"));
        }
        let error = match &err.details {
            Some(details) if !details.is_empty() => details.clone(),
            _ => err.code.wire_name().to_owned(),
        };
        Self { error, metadata }
    }

    /// The value of a metadata key, if present.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        metadata_value(&self.metadata, key)
    }

    /// `None` on success; otherwise the failure as a code.
    ///
    /// Mapping, in order:
    /// 1. `ProxyStatusError` (our connector) names the code exactly.
    /// 2. `FlowConnectRateLimited=true` (cloudflared's flow limiter) → `rate_limited`.
    /// 3. Stock cloudflared only sends Go's error text. Its TCP dial errors end with the
    ///    operating system's error string, which Go's `syscall` package fixes per errno, so a
    ///    suffix match on those few strings is reliable: `connection refused` →
    ///    `connection_refused`; `i/o timeout` → `connection_timeout`; `no route to host` /
    ///    `network is unreachable` → `destination_ip_unroutable`. We match only these suffixes
    ///    and never any other text.
    /// 4. Anything else → `destination_unavailable` (the text goes into `details`).
    pub fn failure_code(&self) -> Option<ProxyError> {
        if self.error.is_empty() {
            return None;
        }
        let code = self
            .metadata(metadata::PROXY_STATUS_ERROR)
            .and_then(|name| name.parse::<ErrorCode>().ok())
            .or_else(|| {
                (self.metadata(metadata::FLOW_CONNECT_RATE_LIMITED) == Some("true"))
                    .then_some(ErrorCode::RateLimited)
            })
            .or_else(|| code_for_connector_error(&self.error))
            .unwrap_or(ErrorCode::DestinationUnavailable);
        Some(ProxyError::new(code).with_details(self.error.clone()))
    }

    /// Preamble (signature + version) and the message, ready to write in one go.
    pub fn encode(&self) -> Vec<u8> {
        let mut message = capnp::message::Builder::new_default();
        {
            let mut root = message.init_root::<connect_response::Builder<'_>>();
            root.set_error(self.error.as_str());
            encode_metadata(
                root.init_metadata(list_len(self.metadata.len())),
                &self.metadata,
            );
        }
        with_preamble(&message)
    }

    /// Writes preamble and message in one write.
    pub async fn write<W: AsyncWrite + Unpin>(&self, w: &mut W) -> std::io::Result<()> {
        w.write_all(&self.encode()).await
    }

    /// Reads a whole response: signature, version, message.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Self, StreamError> {
        match read_signature(r).await? {
            StreamKind::Data => {}
            other => return Err(StreamError::WrongKind(other)),
        }
        read_version(r).await?;
        let message = read_message(r, "ConnectResponse").await?;
        Self::decode(&message).map_err(|source| StreamError::Capnp {
            what: "ConnectResponse",
            source,
        })
    }

    fn decode(
        message: &capnp::message::Reader<capnp::serialize::OwnedSegments>,
    ) -> Result<Self, capnp::Error> {
        let root = message.get_root::<connect_response::Reader<'_>>()?;
        Ok(Self {
            error: root.get_error()?.to_string()?,
            metadata: decode_metadata(root.get_metadata()?)?,
        })
    }
}

/// The code for a stock cloudflared's error text (a `ConnectResponse.error`, or the `err` of a
/// datagram-v2 `registerUdpSession`), when the text is one cloudflared produces in a fixed form:
///
/// - its dial errors end with the operating system's error string, which Go's `syscall`
///   package fixes per errno, e.g. `dial tcp 127.0.0.1:9: connect: connection refused`
///   (observed from cloudflared 2025.9.0 and 2026.8.2 for a closed loopback port):
///   `connect: connection refused` → `connection_refused`; `i/o timeout` →
///   `connection_timeout`; `connect: no route to host` / `connect: network is unreachable` →
///   `destination_ip_unroutable`;
/// - its flow limiter on UDP sessions: `failed to start udp session due to rate limiting: …`
///   → `rate_limited` (TCP flows signal it with `FlowConnectRateLimited` instead).
///
/// Only these fixed fragments are matched; any other text is left to the caller
/// (`destination_unavailable`, with the text as details).
pub fn code_for_connector_error(text: &str) -> Option<ErrorCode> {
    const SUFFIXES: [(&str, ErrorCode); 4] = [
        ("connect: connection refused", ErrorCode::ConnectionRefused),
        ("i/o timeout", ErrorCode::ConnectionTimeout),
        (
            "connect: no route to host",
            ErrorCode::DestinationIpUnroutable,
        ),
        (
            "connect: network is unreachable",
            ErrorCode::DestinationIpUnroutable,
        ),
    ];
    const RATE_LIMITED_PREFIX: &str = "failed to start udp session due to rate limiting";
    let text = text.trim();
    if text.starts_with(RATE_LIMITED_PREFIX) {
        return Some(ErrorCode::RateLimited);
    }
    SUFFIXES
        .iter()
        .find(|(suffix, _)| text.ends_with(suffix))
        .map(|(_, code)| *code)
}

fn decode_metadata(
    list: capnp::struct_list::Reader<'_, wvpc_schemas::tunnel_stream_capnp::metadata::Owned>,
) -> Result<Vec<Metadata>, capnp::Error> {
    list.iter()
        .map(|m| {
            Ok(Metadata {
                key: m.get_key()?.to_string()?,
                val: m.get_val()?.to_string()?,
            })
        })
        .collect()
}

fn encode_metadata(
    mut list: capnp::struct_list::Builder<'_, wvpc_schemas::tunnel_stream_capnp::metadata::Owned>,
    metadata: &[Metadata],
) {
    for (i, m) in metadata.iter().enumerate() {
        let mut entry = list.reborrow().get(list_len(i));
        entry.set_key(m.key.as_str());
        entry.set_val(m.val.as_str());
    }
}

fn list_len(n: usize) -> u32 {
    // Metadata lists are built from our own small vectors; u32 overflow would be a bug.
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn with_preamble<A: capnp::message::Allocator>(message: &capnp::message::Builder<A>) -> Vec<u8> {
    let words = capnp::serialize::write_message_to_words(message);
    let mut out = Vec::with_capacity(DATA_STREAM_PREAMBLE.len() + words.len());
    out.extend_from_slice(&DATA_STREAM_PREAMBLE);
    out.extend_from_slice(&words);
    out
}

/// Reads exactly one unpacked-framing message, bounded in size and segment count.
async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
) -> Result<capnp::message::Reader<capnp::serialize::OwnedSegments>, StreamError> {
    let mut first = [0u8; 4];
    read_exact_or(r, &mut first, "capnp segment table").await?;
    let segments = usize::try_from(u32::from_le_bytes(first))
        .ok()
        .and_then(|n| n.checked_add(1))
        .filter(|n| *n <= MAX_SEGMENTS)
        .ok_or(StreamError::TooManySegments(
            u32::from_le_bytes(first) as usize + 1,
        ))?;
    // The table is (1 + segments) u32s, padded to a whole 8-byte word.
    let table_words = (1 + segments).div_ceil(2);
    let mut table = vec![0u8; table_words * 8];
    table[..4].copy_from_slice(&first);
    read_exact_or(r, &mut table[4..], "capnp segment table").await?;
    let mut body_bytes = 0usize;
    for i in 0..segments {
        let at = 4 + i * 4;
        let words = u32::from_le_bytes([table[at], table[at + 1], table[at + 2], table[at + 3]]);
        body_bytes = body_bytes.saturating_add((words as usize).saturating_mul(8));
    }
    let total = table.len().saturating_add(body_bytes);
    if total > MAX_CONNECT_MESSAGE_BYTES {
        return Err(StreamError::TooLarge(total));
    }
    let mut buf = table;
    buf.resize(total, 0);
    let table_len = table_words * 8;
    read_exact_or(r, &mut buf[table_len..], what).await?;
    // Reading visits each word of a well-formed message once. Without a limit tied to the
    // message, a list of empty structs (no words per element) decodes into millions of
    // metadata entries from a few bytes; twice the message's words bounds that.
    let mut options = capnp::message::ReaderOptions::new();
    options.traversal_limit_in_words(Some(2 * total / 8));
    capnp::serialize::read_message(&buf[..], options)
        .map_err(|source| StreamError::Capnp { what, source })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::preamble::{RPC_STREAM_SIGNATURE, read_signature};

    /// What is left on the stream after the handshake: the proxied bytes.
    async fn rest<R: AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn request_round_trips_and_leaves_the_body_unread() {
        let req = ConnectRequest::tcp("[2606:4700:cf1:2000::1]:53".parse().unwrap(), "flow-1");
        assert_eq!(req.dest, "[2606:4700:cf1:2000::1]:53");
        let mut wire = req.encode();
        wire.extend_from_slice(b"body bytes");
        let mut r = &wire[..];
        assert_eq!(read_signature(&mut r).await.unwrap(), StreamKind::Data);
        let got = ConnectRequest::read_after_signature(&mut r).await.unwrap();
        assert_eq!(got, req);
        assert_eq!(got.metadata(metadata::FLOW_ID), Some("flow-1"));
        assert_eq!(rest(&mut r).await, b"body bytes");
    }

    #[tokio::test]
    async fn response_round_trips_and_carries_the_code() {
        let err =
            ProxyError::new(ErrorCode::ConnectionRefused).with_details("dial 10.0.0.1:80: refused");
        let resp = ConnectResponse::failure(&err);
        let mut wire = resp.encode();
        wire.extend_from_slice(b"x");
        let mut r = &wire[..];
        let got = ConnectResponse::read(&mut r).await.unwrap();
        assert_eq!(got, resp);
        let failure = got.failure_code().unwrap();
        assert_eq!(failure.code, ErrorCode::ConnectionRefused);
        assert_eq!(
            failure.details.as_deref(),
            Some("dial 10.0.0.1:80: refused")
        );
        assert_eq!(rest(&mut r).await, b"x");
        assert_eq!(ConnectResponse::ok().failure_code(), None);
    }

    #[test]
    fn cloudflared_text_errors_map_to_codes() {
        let text = |error: &str, metadata: Vec<Metadata>| {
            ConnectResponse {
                error: error.into(),
                metadata,
            }
            .failure_code()
            .unwrap()
            .code
        };
        // The exact texts cloudflared 2025.9.0 and 2026.8.2 sent for a closed port and for an
        // address without a route.
        assert_eq!(
            text(
                "unable to dial tcp to origin 127.0.0.2:44841: dial tcp 127.0.0.2:44841: \
                 connect: connection refused",
                vec![]
            ),
            ErrorCode::ConnectionRefused
        );
        assert_eq!(
            text(
                "unable to dial tcp to origin 198.51.100.7:80: dial tcp 198.51.100.7:80: \
                 connect: network is unreachable",
                vec![]
            ),
            ErrorCode::DestinationIpUnroutable
        );
        assert_eq!(
            code_for_connector_error(
                "failed to start udp session due to rate limiting: too many concurrent flows"
            ),
            Some(ErrorCode::RateLimited)
        );
        assert_eq!(
            code_for_connector_error("datagram v3 does not support RegisterUdpSession RPC"),
            None
        );
        assert_eq!(
            text("dial tcp 10.9.9.9:80: i/o timeout", vec![]),
            ErrorCode::ConnectionTimeout
        );
        assert_eq!(
            text("dial tcp 10.0.0.1:80: connect: no route to host", vec![]),
            ErrorCode::DestinationIpUnroutable
        );
        assert_eq!(
            text(
                "failed to start tcp flow due to rate limiting: too many",
                vec![Metadata::new(metadata::FLOW_CONNECT_RATE_LIMITED, "true")]
            ),
            ErrorCode::RateLimited
        );
        assert_eq!(
            text("something else broke", vec![]),
            ErrorCode::DestinationUnavailable
        );
        // Our key wins over any text.
        assert_eq!(
            text(
                "connect: connection refused",
                vec![Metadata::new(metadata::PROXY_STATUS_ERROR, "dns_timeout")]
            ),
            ErrorCode::DnsTimeout
        );
    }

    /// A `ConnectRequest` message (without preamble) whose metadata list is a list of empty
    /// structs with a huge element count.
    fn amplified_metadata_list() -> Vec<u8> {
        vec![
            0x00, 0x00, 0x00, 0x00, 0x0d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
            0x02, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00, 0x05, 0x00, 0x00, 0x00,
            0xda, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x17, 0x00, 0x00, 0x00, 0x5b, 0x32,
            0x36, 0x32, 0x36, 0x3a, 0x34, 0x37, 0x30, 0x30, 0x3a, 0x63, 0x66, 0x31, 0x3a, 0x32,
            0x30, 0x30, 0x30, 0x3a, 0x3a, 0x31, 0x5d, 0x3a, 0x35, 0x33, 0x00, 0x00, 0x00, 0x2d,
            0x31, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x05, 0x00,
            0x00, 0x00, 0x3a, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x3a, 0x00, 0x00, 0x00,
            0x46, 0x6c, 0x6f, 0x77, 0x49, 0x44, 0x00, 0x00, 0x66, 0x6c, 0x6f, 0x75, 0x2d, 0x32,
            0x00, 0x00,
        ]
    }

    #[tokio::test]
    async fn malformed_handshakes_are_refused_with_a_reason() {
        // Wrong signature.
        let mut r = &RPC_STREAM_SIGNATURE[..];
        assert!(matches!(
            ConnectResponse::read(&mut r).await,
            Err(StreamError::WrongKind(StreamKind::Rpc))
        ));

        // Truncated message body.
        let wire = ConnectResponse::ok().encode();
        let mut r = &wire[..wire.len() - 3];
        assert!(matches!(
            ConnectResponse::read(&mut r).await,
            Err(StreamError::Truncated(_))
        ));

        // Segment table announcing a huge body: refused before reading it.
        let mut wire = DATA_STREAM_PREAMBLE.to_vec();
        wire.extend_from_slice(&0u32.to_le_bytes());
        wire.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut r = &wire[..];
        assert!(matches!(
            ConnectResponse::read(&mut r).await,
            Err(StreamError::TooLarge(_))
        ));

        // Too many segments.
        let mut wire = DATA_STREAM_PREAMBLE.to_vec();
        wire.extend_from_slice(&10_000u32.to_le_bytes());
        let mut r = &wire[..];
        assert!(matches!(
            ConnectResponse::read(&mut r).await,
            Err(StreamError::TooManySegments(10_001))
        ));

        // A 114-byte request whose metadata list holds 65 536 empty entries (found by the
        // `connect_request` fuzz target): refused, not decoded into a 65 536-entry vector.
        let mut wire = DATA_STREAM_PREAMBLE.to_vec();
        wire.extend_from_slice(&amplified_metadata_list());
        let mut r = &wire[6..];
        assert!(matches!(
            ConnectRequest::read_after_signature(&mut r).await,
            Err(StreamError::Capnp { .. })
        ));

        // Garbage words where a struct pointer should be.
        let mut wire = DATA_STREAM_PREAMBLE.to_vec();
        wire.extend_from_slice(&0u32.to_le_bytes());
        wire.extend_from_slice(&1u32.to_le_bytes());
        wire.extend_from_slice(&[0xff; 8]);
        let mut r = &wire[..];
        assert!(matches!(
            ConnectResponse::read(&mut r).await,
            Err(StreamError::Capnp { .. })
        ));
    }
}
