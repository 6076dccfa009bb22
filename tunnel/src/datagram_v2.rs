//! Datagram v2: UDP session payloads in QUIC DATAGRAM frames, with the session set up and torn
//! down by RPC (`SessionManager.registerUdpSession` / `unregisterUdpSession` on RPC streams).
//!
//! Wire format: `payload || metadata || type`, the type byte last:
//! - `0` UDP: metadata is the 16-byte session id → `payload || session_id[16] || 0x00`;
//! - `1` IP packet, `2` IP packet with tracing, `3` tracing spans: not proxied by workers-vpc
//!   (decoded as [`DatagramV2::Other`] and dropped by callers).
//!
//! The codec is sans-IO and refuses malformed input with a [`DatagramError`].

use bytes::{BufMut, Bytes, BytesMut};

use crate::datagram::{DatagramError, MAX_PAYLOAD_LEN, RequestId};

const TYPE_UDP: u8 = 0;
const TYPE_IP: u8 = 1;
const TYPE_IP_WITH_TRACE: u8 = 2;
const TYPE_TRACING_SPAN: u8 = 3;

/// Session id + type byte: what a UDP datagram carries besides its payload.
pub const UDP_SUFFIX_LEN: usize = 17;

/// One decoded v2 datagram. Payloads are zero-copy slices of the received datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatagramV2 {
    /// Type 0: a UDP payload of a registered session.
    Udp {
        /// The session (a UUID chosen by the edge).
        session_id: RequestId,
        /// The UDP payload.
        payload: Bytes,
    },
    /// Types 1–3 (ICMP packets, tracing): the type byte.
    Other(u8),
}

impl DatagramV2 {
    /// Decodes a received datagram.
    pub fn decode(d: Bytes) -> Result<Self, DatagramError> {
        let Some(&kind) = d.last() else {
            return Err(DatagramError::Empty);
        };
        match kind {
            TYPE_UDP => {
                if d.len() < UDP_SUFFIX_LEN {
                    return Err(DatagramError::TooShort {
                        kind: "v2 UDP",
                        len: d.len(),
                        need: UDP_SUFFIX_LEN,
                    });
                }
                let len = d.len() - UDP_SUFFIX_LEN;
                if len > MAX_PAYLOAD_LEN {
                    return Err(DatagramError::PayloadTooLarge { len });
                }
                let mut id = [0u8; 16];
                id.copy_from_slice(&d[len..len + 16]);
                Ok(Self::Udp {
                    session_id: RequestId(id),
                    payload: d.slice(..len),
                })
            }
            TYPE_IP | TYPE_IP_WITH_TRACE | TYPE_TRACING_SPAN => Ok(Self::Other(kind)),
            other => Err(DatagramError::UnknownType(other)),
        }
    }
}

/// Encodes a type-0 UDP datagram: `payload || session_id || 0x00`.
pub fn encode_udp(session_id: RequestId, payload: &[u8]) -> Result<Bytes, DatagramError> {
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(DatagramError::PayloadTooLarge { len: payload.len() });
    }
    let mut out = BytesMut::with_capacity(payload.len() + UDP_SUFFIX_LEN);
    out.put_slice(payload);
    out.put_slice(&session_id.0);
    out.put_u8(TYPE_UDP);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_datagrams_carry_the_session_id_as_a_suffix() {
        let id = RequestId([9; 16]);
        let wire = encode_udp(id, b"query").unwrap();
        assert_eq!(&wire[..5], b"query");
        assert_eq!(&wire[5..21], &[9; 16]);
        assert_eq!(wire[21], 0);
        assert_eq!(
            DatagramV2::decode(wire).unwrap(),
            DatagramV2::Udp {
                session_id: id,
                payload: Bytes::from_static(b"query")
            }
        );
        // An empty payload is a valid datagram.
        let empty = encode_udp(id, b"").unwrap();
        assert_eq!(empty.len(), UDP_SUFFIX_LEN);
        assert!(matches!(
            DatagramV2::decode(empty),
            Ok(DatagramV2::Udp { payload, .. }) if payload.is_empty()
        ));
    }

    #[test]
    fn malformed_datagrams_are_refused() {
        assert_eq!(DatagramV2::decode(Bytes::new()), Err(DatagramError::Empty));
        assert!(matches!(
            DatagramV2::decode(Bytes::from_static(&[1, 2, 0])),
            Err(DatagramError::TooShort { .. })
        ));
        assert_eq!(
            DatagramV2::decode(Bytes::from_static(&[7])),
            Err(DatagramError::UnknownType(7))
        );
        assert_eq!(
            DatagramV2::decode(Bytes::from_static(&[0xaa, 1])),
            Ok(DatagramV2::Other(1))
        );
        assert!(matches!(
            encode_udp(RequestId([0; 16]), &[0; MAX_PAYLOAD_LEN + 1]),
            Err(DatagramError::PayloadTooLarge { .. })
        ));
    }
}
