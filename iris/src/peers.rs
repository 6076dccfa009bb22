//! Which other iris nodes hold live connections of a tunnel: the cluster registry's view,
//! read by the relay when this node has no connection of a service's tunnel.
//!
//! The map is a hint, replaced as a whole by whoever follows the cluster registry: a stale
//! entry costs one refused relay hop (the holder answers with a relay miss), never a wrong
//! answer. Reads never block on storage.
//!
//! [`HolderMemory`] keeps, for a while, holders that dropped out of the registry's view: after
//! the store was away for longer than the leases, every node's rows look expired until each
//! node joins again, and a holder that is alive must not look gone meanwhile.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

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

/// Holders the registry listed recently: merged into each new view, after the listed ones
/// and with no connections counted, until `grace` after they were last listed.
#[derive(Debug)]
pub struct HolderMemory {
    grace: Duration,
    last_listed: HashMap<(Uuid, String), (RelayPeer, Instant)>,
}

impl HolderMemory {
    /// Remembers holders for `grace` (a lease TTL: a node that is alive has joined again by
    /// then).
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            last_listed: HashMap::new(),
        }
    }

    /// `listed` (the registry's view at `now`) plus the holders listed within `grace` before.
    pub fn merge(
        &mut self,
        mut listed: HashMap<Uuid, Vec<RelayPeer>>,
        now: Instant,
    ) -> HashMap<Uuid, Vec<RelayPeer>> {
        for (tunnel, peers) in &listed {
            for peer in peers {
                self.last_listed
                    .insert((*tunnel, peer.node.clone()), (peer.clone(), now));
            }
        }
        let grace = self.grace;
        self.last_listed
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < grace);
        for ((tunnel, node), (peer, seen)) in &self.last_listed {
            if *seen == now {
                continue;
            }
            let peers = listed.entry(*tunnel).or_default();
            if !peers.iter().any(|p| &p.node == node) {
                peers.push(RelayPeer {
                    connections: 0,
                    ..peer.clone()
                });
            }
        }
        listed
    }

    /// When the next remembered holder is forgotten (the view should be merged again then).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.last_listed
            .values()
            .map(|(_, seen)| *seen + self.grace)
            .min()
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

    #[test]
    fn a_holder_that_drops_out_of_the_view_is_kept_last_until_its_grace_ends() {
        let tunnel = Uuid::new_v4();
        let mut memory = HolderMemory::new(Duration::from_secs(10));
        let start = Instant::now();
        let view = |peers: Vec<RelayPeer>| HashMap::from([(tunnel, peers)]);
        let merged = memory.merge(view(vec![peer("b", 2), peer("c", 1)]), start);
        assert_eq!(merged[&tunnel], vec![peer("b", 2), peer("c", 1)]);
        // b's rows vanish (its lease looked expired): b stays, after c, with no count.
        let map = PeerMap::new();
        map.replace(memory.merge(view(vec![peer("c", 1)]), start + Duration::from_secs(3)));
        assert_eq!(map.holders(tunnel), vec![peer("c", 1), peer("b", 0)]);
        assert_eq!(memory.next_expiry(), Some(start + Duration::from_secs(10)));
        // b is listed again: counted again.
        let merged = memory.merge(
            view(vec![peer("b", 2), peer("c", 1)]),
            start + Duration::from_secs(4),
        );
        assert_eq!(merged[&tunnel], vec![peer("b", 2), peer("c", 1)]);
        // Nobody is listed any more: both are kept until a grace after they were last seen.
        let empty = HashMap::new();
        let merged = memory.merge(empty.clone(), start + Duration::from_secs(13));
        assert_eq!(merged[&tunnel].len(), 2);
        let merged = memory.merge(empty, start + Duration::from_secs(14));
        assert!(
            merged.is_empty() || merged[&tunnel].is_empty(),
            "{merged:?}"
        );
        assert_eq!(memory.next_expiry(), None);
    }
}
