//! DNS answers as iris's resolver reads them (`wvpc_iris::dns`): over a UDP flow and, after a
//! truncated answer, length-prefixed over a TCP stream.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::Query;
use hickory_proto::rr::{Name, RecordType};
use wvpc_errors::ErrorCode;
use wvpc_iris::dns::{FamilyOutcome, read_answer, read_tcp_message};

use super::ready;

/// The name every seed asks about.
pub const NAME: &str = "api.internal.";

/// An answer is either not DNS (`dns_error`), not ours (ignored), or an outcome whose
/// addresses are of the asked family, at least one, no more than the message can hold, with
/// TTLs that fit the wire's u32. A length-prefixed message reads exactly its length.
pub fn dns_answer(data: &[u8]) {
    let server: SocketAddr = "127.0.0.1:53".parse().expect("an address");
    // The id the seeds carry, so that mutations of real answers stay answers to the question.
    let id = match data {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    };
    let name = Name::from_str(NAME).expect("a valid name");
    for record_type in [RecordType::A, RecordType::AAAA] {
        let query = Query::query(name.clone(), record_type);
        match read_answer(data, id, &query, server) {
            Ok(Some(FamilyOutcome::Addresses(addrs, ttl))) => {
                assert!(!addrs.is_empty());
                // Each address record takes at least 15 bytes on the wire (name pointer,
                // type, class, TTL, length, address).
                assert!(addrs.len() <= data.len() / 15);
                assert!(addrs.iter().all(|ip| match record_type {
                    RecordType::A => matches!(ip, IpAddr::V4(_)),
                    _ => matches!(ip, IpAddr::V6(_)),
                }));
                assert!(ttl <= Duration::from_secs(u64::from(u32::MAX)));
            }
            Ok(Some(FamilyOutcome::NoData(ttl) | FamilyOutcome::NxDomain(ttl))) => {
                assert!(ttl.is_none_or(|t| t <= Duration::from_secs(u64::from(u32::MAX))));
            }
            Ok(Some(FamilyOutcome::Failed(err))) | Err(err) => {
                assert_eq!(err.code, ErrorCode::DnsError);
                assert!(err.details.is_some() || err.rcode.is_some());
            }
            Ok(Some(FamilyOutcome::Truncated) | None) => {}
        }
    }

    let mut stream = data;
    match ready(read_tcp_message(&mut stream)) {
        Ok(message) => {
            let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
            assert_eq!(message, data[2..2 + len]);
            assert_eq!(stream.len(), data.len() - 2 - len);
        }
        Err(err) => {
            assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
            let complete = data.len() >= 2
                && data.len() >= 2 + usize::from(u16::from_be_bytes([data[0], data[1]]));
            assert!(!complete);
        }
    }
}
