//! The tunnel protocol shared by iris (the edge) and the connector, compatible with
//! cloudflared: credentials and tokens ([`credentials`]), stream preambles ([`preamble`]),
//! `ConnectRequest`/`ConnectResponse` framing ([`connect`]), datagram v3 ([`datagram`]) and v2
//! ([`datagram_v2`]),
//! feature strings ([`features`]), the edge's TLS identity ([`identity`]), QUIC endpoint
//! configuration ([`quic`]), the proxied flows and whether each carries a request
//! ([`flows`]), Prometheus metrics for both ends ([`metrics`]), the thread that
//! hosts `!Send` Cap'n Proto RPC ([`rpc_thread`]) and the datagram-v2 session RPCs made on it
//! ([`session_rpc`]).
//!
//! Protocol logic here is sans-IO where it can be; the QUIC endpoints themselves live in
//! `wvpc-iris` (edge) and `wvpc-connector`.

#![forbid(unsafe_code)]

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

pub mod connect;
pub mod credentials;
pub mod datagram;
pub mod datagram_v2;
pub mod features;
pub mod flows;
pub mod identity;
pub mod metrics;
pub mod preamble;
pub mod quic;
pub mod rpc_thread;
pub mod session_rpc;

pub use connect::{ConnectRequest, ConnectResponse, Metadata, StreamError, StreamType};
pub use credentials::{Credentials, CredentialsError};
pub use datagram::{Datagram, DatagramError, RequestId};
pub use features::DatagramVersion;
pub use identity::{EdgeIdentity, IdentityError, QUIC_SERVER_NAME};
pub use preamble::StreamKind;
pub use quic::{
    ALPN, BiStream, CloseCode, QuicConfigError, connector_client_config, edge_server_config,
};
pub use rpc_thread::{RpcThread, RpcThreadGone};

/// The connector's virtual DNS resolver, `[2606:4700:cf1:2000::1]:53`: flows (TCP or UDP) to
/// it go to the connector host's resolver, or to its `--dns-resolver-addrs`.
pub const VIRTUAL_DNS_RESOLVER: SocketAddr = SocketAddr::V6(SocketAddrV6::new(
    Ipv6Addr::new(0x2606, 0x4700, 0x0cf1, 0x2000, 0, 0, 0, 1),
    53,
    0,
    0,
));

#[cfg(test)]
mod tests {
    #[test]
    fn virtual_resolver_address_is_cloudflareds() {
        assert_eq!(
            super::VIRTUAL_DNS_RESOLVER.to_string(),
            "[2606:4700:cf1:2000::1]:53"
        );
    }
}
