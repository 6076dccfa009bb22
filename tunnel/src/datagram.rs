//! Datagram v3: UDP sessions carried in QUIC DATAGRAM frames, set up in-band.
//!
//! Every datagram starts with a type byte; integers are big-endian:
//! - `0x00` registration: type, flags, dst port u16, idle seconds u16, request id \[16\],
//!   IPv4 (4) or IPv6 (16, flag bit 0) address, optional bundled payload (flag bit 2).
//! - `0x01` payload: type, request id \[16\], payload (≤ [`MAX_PAYLOAD_LEN`]).
//! - `0x02` ICMP: type, a whole IP packet.
//! - `0x03` registration response: type, status, request id \[16\], message length u16, message.
//!
//! There is no close message: each side expires sessions on its own idle timer. The codec is
//! sans-IO and refuses malformed input with a [`DatagramError`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use wvpc_errors::{ErrorCode, ProxyError};

/// Largest UDP payload carried in one datagram (cloudflared's limit).
pub const MAX_PAYLOAD_LEN: usize = 1280;

const TYPE_REGISTRATION: u8 = 0x00;
const TYPE_PAYLOAD: u8 = 0x01;
const TYPE_ICMP: u8 = 0x02;
const TYPE_REGISTRATION_RESPONSE: u8 = 0x03;

const FLAG_IPV6: u8 = 0b001;
const FLAG_TRACED: u8 = 0b010;
const FLAG_BUNDLED: u8 = 0b100;

const REGISTRATION_V4_HEADER: usize = 26;
const REGISTRATION_V6_HEADER: usize = 38;
/// Type byte + request id.
pub const PAYLOAD_HEADER_LEN: usize = 17;
const RESPONSE_HEADER: usize = 20;
const MAX_RESPONSE_MESSAGE: usize = MAX_PAYLOAD_LEN - RESPONSE_HEADER;

/// A 128-bit session id ("request-id-v2"), chosen by the edge.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub [u8; 16]);

impl RequestId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    fn from_slice(bytes: &[u8]) -> Self {
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[..16]);
        Self(id)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// A zero-length datagram.
    #[error("empty datagram")]
    Empty,
    /// The type byte is not one of 0x00..=0x03.
    #[error("unknown datagram type 0x{0:02x}")]
    UnknownType(u8),
    /// Shorter than its fixed header.
    #[error("{kind} datagram of {len} bytes is shorter than its {need}-byte header")]
    TooShort {
        /// Datagram kind.
        kind: &'static str,
        /// Bytes received.
        len: usize,
        /// Bytes required.
        need: usize,
    },
    /// A payload over [`MAX_PAYLOAD_LEN`].
    #[error("UDP payload of {len} bytes exceeds the tunnel limit of {MAX_PAYLOAD_LEN} bytes")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
    },
    /// A registration response whose message length disagrees with the datagram.
    #[error("registration response announces a {announced}-byte message but carries {carried}")]
    MessageLength {
        /// Length field.
        announced: usize,
        /// Bytes present.
        carried: usize,
    },
    /// A registration response message over the limit.
    #[error("registration response message of {0} bytes exceeds {MAX_RESPONSE_MESSAGE} bytes")]
    MessageTooLarge(usize),
}

/// `0x00`: the edge asks the connector to open a UDP session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRegistration {
    /// Session id.
    pub request_id: RequestId,
    /// Where the connector sends the session's datagrams.
    pub dest: SocketAddr,
    /// Idle time after which the connector closes the session (whole seconds on the wire;
    /// zero means the connector's default).
    pub idle: Duration,
    /// Tracing requested (carried, unused).
    pub traced: bool,
    /// A first payload bundled with the registration (may be empty).
    pub payload: Bytes,
}

impl SessionRegistration {
    /// Encodes the registration.
    pub fn encode(&self) -> Result<Bytes, DatagramError> {
        if self.payload.len() > MAX_PAYLOAD_LEN {
            return Err(DatagramError::PayloadTooLarge {
                len: self.payload.len(),
            });
        }
        let mut flags = 0u8;
        if self.dest.is_ipv6() {
            flags |= FLAG_IPV6;
        }
        if self.traced {
            flags |= FLAG_TRACED;
        }
        if !self.payload.is_empty() {
            flags |= FLAG_BUNDLED;
        }
        let idle = u16::try_from(self.idle.as_secs()).unwrap_or(u16::MAX);
        let mut out = BytesMut::with_capacity(REGISTRATION_V6_HEADER + self.payload.len());
        out.put_u8(TYPE_REGISTRATION);
        out.put_u8(flags);
        out.put_u16(self.dest.port());
        out.put_u16(idle);
        out.put_slice(&self.request_id.0);
        match self.dest.ip() {
            IpAddr::V4(ip) => out.put_slice(&ip.octets()),
            IpAddr::V6(ip) => out.put_slice(&ip.octets()),
        }
        out.put_slice(&self.payload);
        Ok(out.freeze())
    }

    fn decode(d: &Bytes) -> Result<Self, DatagramError> {
        let short = |need| DatagramError::TooShort {
            kind: "registration",
            len: d.len(),
            need,
        };
        if d.len() < REGISTRATION_V4_HEADER {
            return Err(short(REGISTRATION_V4_HEADER));
        }
        let flags = d[1];
        let port = u16::from_be_bytes([d[2], d[3]]);
        let idle = Duration::from_secs(u64::from(u16::from_be_bytes([d[4], d[5]])));
        let request_id = RequestId::from_slice(&d[6..22]);
        let (ip, header) = if flags & FLAG_IPV6 != 0 {
            if d.len() < REGISTRATION_V6_HEADER {
                return Err(short(REGISTRATION_V6_HEADER));
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&d[22..38]);
            (IpAddr::V6(Ipv6Addr::from(octets)), REGISTRATION_V6_HEADER)
        } else {
            (
                IpAddr::V4(Ipv4Addr::new(d[22], d[23], d[24], d[25])),
                REGISTRATION_V4_HEADER,
            )
        };
        // Trailing bytes without the bundled flag are ignored, as cloudflared does.
        let payload = if flags & FLAG_BUNDLED != 0 {
            d.slice(header..)
        } else {
            Bytes::new()
        };
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(DatagramError::PayloadTooLarge { len: payload.len() });
        }
        Ok(Self {
            request_id,
            dest: SocketAddr::new(ip, port),
            idle,
            traced: flags & FLAG_TRACED != 0,
            payload,
        })
    }
}

/// Status byte of a registration response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationStatus {
    /// `0x00`: the session is ready.
    Ok,
    /// `0x01`: the destination cannot be reached.
    DestinationUnreachable,
    /// `0x02`: the connector could not bind a local UDP socket.
    UnableToBindSocket,
    /// `0x03`: the connector's flow limit is reached.
    TooManyActiveFlows,
    /// `0xff`: another failure, described by the message.
    ErrorWithMessage,
    /// A status this build does not know.
    Other(u8),
}

impl RegistrationStatus {
    /// The wire byte.
    pub const fn to_byte(self) -> u8 {
        match self {
            Self::Ok => 0x00,
            Self::DestinationUnreachable => 0x01,
            Self::UnableToBindSocket => 0x02,
            Self::TooManyActiveFlows => 0x03,
            Self::ErrorWithMessage => 0xff,
            Self::Other(b) => b,
        }
    }

    /// The status for a wire byte.
    pub const fn from_byte(b: u8) -> Self {
        match b {
            0x00 => Self::Ok,
            0x01 => Self::DestinationUnreachable,
            0x02 => Self::UnableToBindSocket,
            0x03 => Self::TooManyActiveFlows,
            0xff => Self::ErrorWithMessage,
            other => Self::Other(other),
        }
    }
}

/// Our connector's status byte for a session its egress allow-list refuses (an extension:
/// cloudflared defines no such status; an edge that does not know it reports
/// `destination_unavailable`). Sent as [`RegistrationStatus::Other`].
pub const STATUS_DESTINATION_PROHIBITED: u8 = 0x80;

/// `0x03`: the connector's answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationResponse {
    /// Session id.
    pub request_id: RequestId,
    /// Outcome.
    pub status: RegistrationStatus,
    /// Human text (empty on success).
    pub message: String,
}

impl RegistrationResponse {
    /// Encodes the response; an over-long message is cut at a character boundary.
    pub fn encode(&self) -> Bytes {
        let mut message = self.message.as_str();
        if message.len() > MAX_RESPONSE_MESSAGE {
            let mut end = MAX_RESPONSE_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message = &message[..end];
        }
        let mut out = BytesMut::with_capacity(RESPONSE_HEADER + message.len());
        out.put_u8(TYPE_REGISTRATION_RESPONSE);
        out.put_u8(self.status.to_byte());
        out.put_slice(&self.request_id.0);
        // Both bounded by MAX_RESPONSE_MESSAGE above.
        out.put_u16(u16::try_from(message.len()).unwrap_or(0));
        out.put_slice(message.as_bytes());
        out.freeze()
    }

    fn decode(d: &Bytes) -> Result<Self, DatagramError> {
        if d.len() < RESPONSE_HEADER {
            return Err(DatagramError::TooShort {
                kind: "registration response",
                len: d.len(),
                need: RESPONSE_HEADER,
            });
        }
        let announced = usize::from(u16::from_be_bytes([d[18], d[19]]));
        if announced > MAX_RESPONSE_MESSAGE {
            return Err(DatagramError::MessageTooLarge(announced));
        }
        let carried = d.len() - RESPONSE_HEADER;
        if carried < announced {
            return Err(DatagramError::MessageLength { announced, carried });
        }
        Ok(Self {
            request_id: RequestId::from_slice(&d[2..18]),
            status: RegistrationStatus::from_byte(d[1]),
            message: String::from_utf8_lossy(&d[RESPONSE_HEADER..RESPONSE_HEADER + announced])
                .into_owned(),
        })
    }

    /// `None` when the session is ready; otherwise the failure as a code: unreachable →
    /// `destination_ip_unroutable`, too many flows → `rate_limited`, refused by the egress
    /// allow-list ([`STATUS_DESTINATION_PROHIBITED`]) → `destination_ip_prohibited`, anything
    /// else (no socket, other error) → `destination_unavailable`, with the connector's message
    /// as details.
    pub fn failure(&self) -> Option<ProxyError> {
        let code = match self.status {
            RegistrationStatus::Ok => return None,
            RegistrationStatus::DestinationUnreachable => ErrorCode::DestinationIpUnroutable,
            RegistrationStatus::TooManyActiveFlows => ErrorCode::RateLimited,
            RegistrationStatus::Other(STATUS_DESTINATION_PROHIBITED) => {
                ErrorCode::DestinationIpProhibited
            }
            RegistrationStatus::UnableToBindSocket
            | RegistrationStatus::ErrorWithMessage
            | RegistrationStatus::Other(_) => ErrorCode::DestinationUnavailable,
        };
        let details = if self.message.is_empty() {
            format!("connector refused the UDP session ({:?})", self.status)
        } else {
            format!("connector refused the UDP session: {}", self.message)
        };
        Some(ProxyError::new(code).with_details(details))
    }
}

/// One decoded v3 datagram. Payloads are zero-copy slices of the received datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram {
    /// `0x00`.
    Registration(SessionRegistration),
    /// `0x01`: a session payload.
    Payload {
        /// Session id.
        request_id: RequestId,
        /// UDP payload.
        payload: Bytes,
    },
    /// `0x02`: a whole IP packet carrying ICMP (not proxied by workers-vpc).
    Icmp(Bytes),
    /// `0x03`.
    RegistrationResponse(RegistrationResponse),
}

impl Datagram {
    /// Decodes a received datagram.
    pub fn decode(d: Bytes) -> Result<Self, DatagramError> {
        let Some(&kind) = d.first() else {
            return Err(DatagramError::Empty);
        };
        match kind {
            TYPE_REGISTRATION => SessionRegistration::decode(&d).map(Self::Registration),
            TYPE_PAYLOAD => {
                if d.len() < PAYLOAD_HEADER_LEN {
                    return Err(DatagramError::TooShort {
                        kind: "payload",
                        len: d.len(),
                        need: PAYLOAD_HEADER_LEN,
                    });
                }
                let len = d.len() - PAYLOAD_HEADER_LEN;
                if len > MAX_PAYLOAD_LEN {
                    return Err(DatagramError::PayloadTooLarge { len });
                }
                Ok(Self::Payload {
                    request_id: RequestId::from_slice(&d[1..PAYLOAD_HEADER_LEN]),
                    payload: d.slice(PAYLOAD_HEADER_LEN..),
                })
            }
            TYPE_ICMP => Ok(Self::Icmp(d.slice(1..))),
            TYPE_REGISTRATION_RESPONSE => {
                RegistrationResponse::decode(&d).map(Self::RegistrationResponse)
            }
            other => Err(DatagramError::UnknownType(other)),
        }
    }
}

/// Encodes a `0x01` payload datagram.
pub fn encode_payload(request_id: RequestId, payload: &[u8]) -> Result<Bytes, DatagramError> {
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(DatagramError::PayloadTooLarge { len: payload.len() });
    }
    let mut out = BytesMut::with_capacity(PAYLOAD_HEADER_LEN + payload.len());
    out.put_u8(TYPE_PAYLOAD);
    out.put_slice(&request_id.0);
    out.put_slice(payload);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> RequestId {
        RequestId([7; 16])
    }

    #[test]
    fn registration_layout_matches_the_reference() {
        let reg = SessionRegistration {
            request_id: id(),
            dest: "10.1.2.3:53".parse().unwrap(),
            idle: Duration::from_secs(30),
            traced: false,
            payload: Bytes::new(),
        };
        let wire = reg.encode().unwrap();
        assert_eq!(wire.len(), 26);
        assert_eq!(&wire[..6], &[0x00, 0x00, 0x00, 53, 0x00, 30]);
        assert_eq!(&wire[6..22], &[7; 16]);
        assert_eq!(&wire[22..], &[10, 1, 2, 3]);
        assert_eq!(Datagram::decode(wire).unwrap(), Datagram::Registration(reg));

        let v6 = SessionRegistration {
            request_id: id(),
            dest: crate::VIRTUAL_DNS_RESOLVER,
            idle: Duration::from_secs(5),
            traced: true,
            payload: Bytes::from_static(b"query"),
        };
        let wire = v6.encode().unwrap();
        assert_eq!(wire.len(), 38 + 5);
        assert_eq!(wire[1], FLAG_IPV6 | FLAG_TRACED | FLAG_BUNDLED);
        assert_eq!(Datagram::decode(wire).unwrap(), Datagram::Registration(v6));
    }

    #[test]
    fn payload_and_response_round_trip() {
        let wire = encode_payload(id(), b"hello").unwrap();
        assert_eq!(wire[0], 0x01);
        assert_eq!(
            Datagram::decode(wire).unwrap(),
            Datagram::Payload {
                request_id: id(),
                payload: Bytes::from_static(b"hello")
            }
        );

        let resp = RegistrationResponse {
            request_id: id(),
            status: RegistrationStatus::TooManyActiveFlows,
            message: "too many".into(),
        };
        let wire = resp.encode();
        assert_eq!(&wire[..2], &[0x03, 0x03]);
        assert_eq!(&wire[18..20], &[0, 8]);
        let Datagram::RegistrationResponse(got) = Datagram::decode(wire).unwrap() else {
            panic!("not a response")
        };
        assert_eq!(got, resp);
        assert_eq!(got.failure().unwrap().code, ErrorCode::RateLimited);

        let ok = RegistrationResponse {
            request_id: id(),
            status: RegistrationStatus::Ok,
            message: String::new(),
        };
        assert_eq!(ok.failure(), None);
        let unreachable = RegistrationResponse {
            status: RegistrationStatus::DestinationUnreachable,
            ..ok
        };
        assert_eq!(
            unreachable.failure().unwrap().code,
            ErrorCode::DestinationIpUnroutable
        );
    }

    #[test]
    fn malformed_datagrams_are_refused() {
        let decode = |b: &[u8]| Datagram::decode(Bytes::copy_from_slice(b));
        assert_eq!(decode(&[]), Err(DatagramError::Empty));
        assert_eq!(decode(&[0x09, 1, 2]), Err(DatagramError::UnknownType(0x09)));
        assert!(matches!(
            decode(&[0x00; 25]),
            Err(DatagramError::TooShort { need: 26, .. })
        ));
        let mut v6_short = vec![0x00, FLAG_IPV6];
        v6_short.extend_from_slice(&[0; 30]);
        assert!(matches!(
            decode(&v6_short),
            Err(DatagramError::TooShort { need: 38, .. })
        ));
        assert!(matches!(
            decode(&[0x01; 16]),
            Err(DatagramError::TooShort { need: 17, .. })
        ));
        let big = vec![0x01; PAYLOAD_HEADER_LEN + MAX_PAYLOAD_LEN + 1];
        assert_eq!(
            decode(&big),
            Err(DatagramError::PayloadTooLarge {
                len: MAX_PAYLOAD_LEN + 1
            })
        );
        let mut lying = vec![0x03, 0x00];
        lying.extend_from_slice(&[0; 16]);
        lying.extend_from_slice(&10u16.to_be_bytes());
        lying.extend_from_slice(b"abc");
        assert_eq!(
            decode(&lying),
            Err(DatagramError::MessageLength {
                announced: 10,
                carried: 3
            })
        );
        assert!(encode_payload(id(), &[0; MAX_PAYLOAD_LEN + 1]).is_err());
    }
}
