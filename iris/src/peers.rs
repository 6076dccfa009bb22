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

    /// Every node holding a connection of some tunnel, by name, with its relay address.
    pub fn nodes(&self) -> Vec<(String, SocketAddr)> {
        let mut nodes: Vec<(String, SocketAddr)> = self
            .current()
            .values()
            .flatten()
            .map(|peer| (peer.node.clone(), peer.addr))
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
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

/// Holders the registry listed before: one that a view no longer lists is merged into the
/// next views, after the listed ones and with no connections counted, until `grace` after the
/// first view that missed it. Views that could not be read do not count.
#[derive(Debug)]
pub struct HolderMemory {
    grace: Duration,
    /// (tunnel, node) → the holder as last listed, and since when views miss it.
    known: HashMap<(Uuid, String), (RelayPeer, Option<Instant>)>,
}

impl HolderMemory {
    /// Remembers holders for `grace` (a lease TTL: a node that is alive has joined again by
    /// then).
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            known: HashMap::new(),
        }
    }

    /// `listed` (the registry's view read at `now`) plus the holders missing from it for less
    /// than `grace`.
    pub fn merge(
        &mut self,
        mut listed: HashMap<Uuid, Vec<RelayPeer>>,
        now: Instant,
    ) -> HashMap<Uuid, Vec<RelayPeer>> {
        for (_, missing_since) in self.known.values_mut() {
            missing_since.get_or_insert(now);
        }
        for (tunnel, peers) in &listed {
            for peer in peers {
                self.known
                    .insert((*tunnel, peer.node.clone()), (peer.clone(), None));
            }
        }
        let grace = self.grace;
        self.known.retain(|_, (_, missing_since)| {
            missing_since.is_none_or(|since| now.saturating_duration_since(since) < grace)
        });
        for ((tunnel, _), (peer, missing_since)) in &self.known {
            if missing_since.is_some() {
                listed.entry(*tunnel).or_default().push(RelayPeer {
                    connections: 0,
                    ..peer.clone()
                });
            }
        }
        listed
    }

    /// When the next missing holder is forgotten (the view should be merged again then).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.known
            .values()
            .filter_map(|(_, missing_since)| missing_since.map(|since| since + self.grace))
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
    fn a_holder_missing_from_the_views_is_kept_last_until_a_grace_after_the_first_miss() {
        let tunnel = Uuid::new_v4();
        let mut memory = HolderMemory::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let view = |peers: Vec<RelayPeer>| HashMap::from([(tunnel, peers)]);
        let merged = memory.merge(view(vec![peer("b", 2), peer("c", 1)]), start);
        assert_eq!(merged[&tunnel], vec![peer("b", 2), peer("c", 1)]);
        assert_eq!(memory.next_expiry(), None);
        // The store was away for a minute (no views read), then b's rows are missing (its
        // lease looked expired): b stays, after c, with no count, for the grace from now.
        let map = PeerMap::new();
        map.replace(memory.merge(view(vec![peer("c", 1)]), at(60)));
        assert_eq!(map.holders(tunnel), vec![peer("c", 1), peer("b", 0)]);
        assert_eq!(memory.next_expiry(), Some(at(70)));
        // b is listed again: counted again, and nothing is due to be forgotten.
        let merged = memory.merge(view(vec![peer("b", 2), peer("c", 1)]), at(65));
        assert_eq!(merged[&tunnel], vec![peer("b", 2), peer("c", 1)]);
        assert_eq!(memory.next_expiry(), None);
        // Nobody is listed any more: both are kept until the grace after that first miss.
        let merged = memory.merge(HashMap::new(), at(66));
        assert_eq!(merged[&tunnel].len(), 2);
        let merged = memory.merge(HashMap::new(), at(75));
        assert_eq!(merged[&tunnel].len(), 2);
        let merged = memory.merge(HashMap::new(), at(76));
        assert!(merged.is_empty(), "{merged:?}");
        assert_eq!(memory.next_expiry(), None);
    }
}
