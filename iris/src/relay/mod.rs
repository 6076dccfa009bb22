//! Node-to-node relay: a CONNECT for a tunnel this node holds no usable connection of is
//! forwarded, whole, to a node that holds one ([`PeerMap`]), which serves it with its own
//! unchanged router (route, DNS through its tunnel connections, dial) and answers; this node
//! passes the answer back and pipes the bytes.
//!
//! - Transport: one multiplexed HTTP/2 connection per peer over mutual TLS from the cluster's
//!   relay CA ([`identity`]), to the peer's relay listener ([`crate::Router::serve_relay`]).
//! - Headers: the caller's `wvpc-*` headers travel unchanged, plus [`RELAYED_BY_HEADER`]
//!   naming this node (it must equal the name in this node's certificate). A relayed request
//!   is never relayed again: a holder without a usable connection answers `503
//!   destination_unavailable` with [`RELAY_MISS_HEADER`], and a request naming the receiving
//!   node itself is a loop (`508 proxy_loop_detected`).
//! - Retries: the next holder is tried only while nothing of the caller's request can have
//!   left this node — the peer could not be dialled, answered a relay miss, or its stream
//!   failed before the answer head. Every other answer is final and passed through (status,
//!   `Proxy-Status` with this node's member appended, and the `wvpc-*` headers of a `200`);
//!   a stream that dies after `200` is never replayed.
//! - A peer whose dial failed is skipped for [`RelayConfig::peer_down_for`].
//! - Timeouts nest: the holder's stream open (20 s) < [`RelayConfig::answer_timeout`] (25 s)
//!   < the binding-worker's CONNECT timeout (30 s); dials are bounded by
//!   [`RelayConfig::dial_timeout`] (2 s).

pub mod identity;

mod client;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode, Uri};
use uuid::Uuid;
use wvpc_errors::ProxyError;
use wvpc_tunnel::metrics::GaugeGuard;

use crate::metrics::IrisMetrics;
use crate::peers::PeerMap;
use crate::tunnel_pool::BoxIo;

pub use client::RelayClient;
pub use identity::{RelayCa, RelayIdentity, RelayIdentityError};

/// Request header of a relayed CONNECT: the name of the node that relayed it.
pub const RELAYED_BY_HEADER: &str = "wvpc-relayed-by";
/// Answer header of a relayed CONNECT the receiving node holds no usable connection for
/// (with `503 destination_unavailable`): the relaying node may try another holder.
pub const RELAY_MISS_HEADER: &str = "wvpc-relay-miss";

/// Tuning of the relay.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// This node's name: sent in [`RELAYED_BY_HEADER`], skipped among holders.
    pub node_name: String,
    /// Bound on dialling a peer (TCP, TLS and HTTP/2 handshake): short, so that a dead peer
    /// costs little.
    pub dial_timeout: Duration,
    /// Bound on a peer's answer to a relayed CONNECT: above the peer's own stream-open
    /// timeout (20 s), below the binding-worker's CONNECT timeout (30 s).
    pub answer_timeout: Duration,
    /// How long a peer whose dial failed is skipped.
    pub peer_down_for: Duration,
    /// HTTP/2 flow-control window per stream of a peer connection, in bytes.
    pub stream_window: u32,
    /// HTTP/2 flow-control window of a peer connection, in bytes.
    pub connection_window: u32,
}

impl RelayConfig {
    /// The defaults for node `node_name`.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            dial_timeout: Duration::from_secs(2),
            answer_timeout: Duration::from_secs(25),
            peer_down_for: Duration::from_secs(3),
            stream_window: 1 << 20,
            connection_window: 16 << 20,
        }
    }
}

/// The relay of one node: who holds which tunnel, and the connections to them.
#[derive(Debug)]
pub struct Relay {
    peers: Arc<PeerMap>,
    client: RelayClient,
    node_name: String,
}

impl Relay {
    /// A relay that finds holders in `peers` and dials them as `identity` (whose node name
    /// must be `config.node_name`).
    pub fn new(
        identity: &RelayIdentity,
        peers: Arc<PeerMap>,
        config: RelayConfig,
        metrics: Option<Arc<IrisMetrics>>,
    ) -> Result<Self, RelayIdentityError> {
        if identity.node() != config.node_name {
            return Err(RelayIdentityError::Tls(format!(
                "the relay certificate names {:?}, not this node {:?}",
                identity.node(),
                config.node_name
            )));
        }
        Ok(Self {
            peers,
            node_name: config.node_name.clone(),
            client: RelayClient::new(identity.client_config()?, config, metrics),
        })
    }

    /// Who holds which tunnel (filled by the cluster registry's follower).
    pub fn peers(&self) -> &Arc<PeerMap> {
        &self.peers
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Peer nodes skipped now because their last relay dial failed.
    pub fn peers_down(&self) -> Vec<String> {
        self.client.peers_down()
    }

    /// Whether any other node is known to hold `tunnel` (down or not).
    pub(crate) fn has_holders(&self, tunnel: Uuid) -> bool {
        self.peers
            .holders(tunnel)
            .iter()
            .any(|peer| peer.node != self.node_name)
    }

    /// Forwards a CONNECT (`uri`, and the `wvpc-*` among `headers`) to the holders of
    /// `tunnel` in turn (see the module doc for when the next one is tried).
    pub(crate) async fn forward(
        &self,
        tunnel: Uuid,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<RelayAnswer, ProxyError> {
        self.client
            .forward(tunnel, &self.peers.holders(tunnel), uri, headers)
            .await
    }
}

/// A holder's final answer to a relayed CONNECT.
pub(crate) enum RelayAnswer {
    /// `200`: the stream to the destination, through the holder.
    Opened {
        /// The byte stream (the relayed CONNECT's upgraded stream).
        io: BoxIo,
        /// The holder's `wvpc-*` answer headers (TLS settings), passed through verbatim.
        headers: HeaderMap,
        /// The holder's node name.
        peer: String,
        /// Counts the relayed stream as open while it lives.
        open: Option<GaugeGuard>,
    },
    /// Any other answer: final, passed through.
    Refused {
        /// The holder's status.
        status: StatusCode,
        /// The holder's `Proxy-Status`, if it sent one.
        proxy_status: Option<String>,
        /// The error it carries (for this node's log and metrics).
        error: ProxyError,
        /// The holder's node name.
        peer: String,
    },
}

/// `Proxy-Status` of a relayed refusal: the holder's members first (RFC 9209: nearest the
/// origin first), then this node's, naming the holder as its next hop.
pub(crate) fn append_proxy_status(holder: &str, node: &str, peer: &str) -> String {
    let member = format!("{node}; next-hop=\"{}\"", peer.replace(['"', '\\'], ""));
    if holder.trim().is_empty() {
        member
    } else {
        format!("{holder}, {member}")
    }
}

#[cfg(test)]
mod tests;
