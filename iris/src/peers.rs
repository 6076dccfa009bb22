//! Which other iris nodes hold live connections of a tunnel: the cluster registry's view,
//! read by the relay when this node has no connection of a service's tunnel.
//!
//! The map is a hint, replaced as a whole by whoever follows the cluster registry: a stale
//! entry costs one refused relay hop (the holder answers with a relay miss), never a wrong
//! answer. Reads never block on storage.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use uuid::Uuid;

/// Another iris node holding connections of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPeer {
    /// The node's name (unique in the cluster; named in its relay certificate).
    pub node: String,
    /// Where the node's relay listener accepts relayed CONNECTs.
    pub addr: SocketAddr,
    /// How many live connections of the tunnel it holds.
    pub connections: usize,
}

/// Tunnel id → the nodes holding its connections (this node excluded by the feeder or
/// skipped by the reader).
#[derive(Debug, Default)]
pub struct PeerMap {
    holders: RwLock<Arc<HashMap<Uuid, Vec<RelayPeer>>>>,
}

impl PeerMap {
    /// An empty map: no peer holds anything (a single node).
    pub fn new() -> Self {
        Self::default()
    }

    /// The nodes holding connections of `tunnel_id`, most connections first.
    pub fn holders(&self, tunnel_id: Uuid) -> Vec<RelayPeer> {
        self.current().get(&tunnel_id).cloned().unwrap_or_default()
    }

    /// Replaces the whole map.
    pub fn replace(&self, mut holders: HashMap<Uuid, Vec<RelayPeer>>) {
        for peers in holders.values_mut() {
            peers.sort_by(|a, b| b.connections.cmp(&a.connections).then(a.node.cmp(&b.node)));
        }
        *self.holders.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(holders);
    }

    fn current(&self) -> Arc<HashMap<Uuid, Vec<RelayPeer>>> {
        self.holders
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(node: &str, connections: usize) -> RelayPeer {
        RelayPeer {
            node: node.into(),
            addr: "127.0.0.2:1".parse().unwrap(),
            connections,
        }
    }

    #[test]
    fn holders_come_most_connections_first_and_replace_swaps_everything() {
        let map = PeerMap::new();
        let tunnel = Uuid::new_v4();
        assert!(map.holders(tunnel).is_empty());
        map.replace(HashMap::from([(tunnel, vec![peer("a", 1), peer("b", 3)])]));
        let nodes: Vec<_> = map.holders(tunnel).into_iter().map(|p| p.node).collect();
        assert_eq!(nodes, ["b", "a"]);
        map.replace(HashMap::new());
        assert!(map.holders(tunnel).is_empty());
    }
}
