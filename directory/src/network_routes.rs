//! The data-plane view of private-network routes: per virtual network, which tunnel reaches
//! an IP, by longest prefix match.
//!
//! A table is built once per directory snapshot ([`NetworkRouteTable::new`]) and asked on
//! every CONNECT of a `vpc_networks` binding: a lookup probes one hash map per prefix length
//! in use in that virtual network, longest first, and never scans the routes.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use uuid::Uuid;

/// One route as the data plane needs it: `network` in virtual network `vnet` goes to
/// `tunnel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkRoute {
    /// The virtual network the route belongs to.
    pub vnet: Uuid,
    /// The CIDR (stored without host bits).
    pub network: IpNet,
    /// The tunnel whose connectors reach it.
    pub tunnel: Uuid,
}

/// Routes of every virtual network, ready for longest-prefix lookups.
#[derive(Debug, Clone, Default)]
pub struct NetworkRouteTable {
    vnets: HashMap<Uuid, VnetRoutes>,
}

/// One virtual network's routes, split by family and prefix length.
#[derive(Debug, Clone, Default)]
struct VnetRoutes {
    /// Prefix lengths in use, longest first, each with its networks (keyed by the address
    /// with host bits cleared).
    v4: Vec<(u8, HashMap<u32, Uuid>)>,
    v6: Vec<(u8, HashMap<u128, Uuid>)>,
}

impl NetworkRouteTable {
    /// A table of `routes`. Two routes for the same network of one virtual network cannot
    /// exist (the directory refuses the second); should they, the later one wins.
    pub fn new(routes: impl IntoIterator<Item = NetworkRoute>) -> Self {
        let mut vnets: HashMap<Uuid, VnetRoutes> = HashMap::new();
        for route in routes {
            let vnet = vnets.entry(route.vnet).or_default();
            match route.network.trunc() {
                IpNet::V4(net) => insert(
                    &mut vnet.v4,
                    net.prefix_len(),
                    u32::from(net.network()),
                    route.tunnel,
                ),
                IpNet::V6(net) => insert(
                    &mut vnet.v6,
                    net.prefix_len(),
                    u128::from(net.network()),
                    route.tunnel,
                ),
            }
        }
        Self { vnets }
    }

    /// The tunnel of the longest route in `vnet` that covers `ip`; `None` when no route does
    /// (`destination_ip_unroutable`). An IPv4-mapped IPv6 address is looked up as IPv4.
    pub fn lookup(&self, vnet: Uuid, ip: IpAddr) -> Option<Uuid> {
        let routes = self.vnets.get(&vnet)?;
        match ip.to_canonical() {
            IpAddr::V4(ip) => longest(&routes.v4, u32::from(ip), 32),
            IpAddr::V6(ip) => longest(&routes.v6, u128::from(ip), 128),
        }
    }

    /// Whether `vnet` has any route.
    pub fn has_routes(&self, vnet: Uuid) -> bool {
        self.vnets.contains_key(&vnet)
    }

    /// The tunnels that `vnet`'s routes lead to, each once.
    pub fn tunnels(&self, vnet: Uuid) -> Vec<Uuid> {
        let mut tunnels = Vec::new();
        if let Some(routes) = self.vnets.get(&vnet) {
            let all = routes
                .v4
                .iter()
                .flat_map(|(_, m)| m.values())
                .chain(routes.v6.iter().flat_map(|(_, m)| m.values()));
            for tunnel in all {
                if !tunnels.contains(tunnel) {
                    tunnels.push(*tunnel);
                }
            }
        }
        tunnels
    }
}

/// Keys are addresses with host bits cleared, so `u32` and `u128` share one helper.
trait Bits: Copy + Eq + std::hash::Hash {
    fn masked(self, prefix: u8, width: u8) -> Self;
}

impl Bits for u32 {
    fn masked(self, prefix: u8, width: u8) -> Self {
        if prefix == 0 {
            0
        } else {
            self & (u32::MAX << (width - prefix))
        }
    }
}

impl Bits for u128 {
    fn masked(self, prefix: u8, width: u8) -> Self {
        if prefix == 0 {
            0
        } else {
            self & (u128::MAX << (width - prefix))
        }
    }
}

fn insert<K: Bits>(levels: &mut Vec<(u8, HashMap<K, Uuid>)>, prefix: u8, key: K, tunnel: Uuid) {
    let at = match levels.binary_search_by(|(len, _)| prefix.cmp(len)) {
        Ok(at) => at,
        Err(at) => {
            levels.insert(at, (prefix, HashMap::new()));
            at
        }
    };
    levels[at].1.insert(key, tunnel);
}

fn longest<K: Bits>(levels: &[(u8, HashMap<K, Uuid>)], ip: K, width: u8) -> Option<Uuid> {
    levels
        .iter()
        .find_map(|(prefix, nets)| nets.get(&ip.masked(*prefix, width)).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(vnet: u128, network: &str, tunnel: u128) -> NetworkRoute {
        NetworkRoute {
            vnet: Uuid::from_u128(vnet),
            network: network.parse().unwrap(),
            tunnel: Uuid::from_u128(tunnel),
        }
    }

    fn lookup(table: &NetworkRouteTable, vnet: u128, ip: &str) -> Option<u128> {
        table
            .lookup(Uuid::from_u128(vnet), ip.parse().unwrap())
            .map(|t| t.as_u128())
    }

    #[test]
    fn the_longest_covering_prefix_wins() {
        let table = NetworkRouteTable::new([
            route(1, "10.0.0.0/8", 100),
            route(1, "10.1.0.0/16", 101),
            route(1, "10.1.2.3/32", 102),
            route(1, "0.0.0.0/0", 103),
        ]);
        assert_eq!(lookup(&table, 1, "10.9.9.9"), Some(100));
        assert_eq!(lookup(&table, 1, "10.1.9.9"), Some(101));
        assert_eq!(lookup(&table, 1, "10.1.2.3"), Some(102));
        assert_eq!(lookup(&table, 1, "192.0.2.1"), Some(103));
    }

    #[test]
    fn the_same_network_in_two_virtual_networks_goes_to_two_tunnels() {
        let table =
            NetworkRouteTable::new([route(1, "10.0.0.0/24", 100), route(2, "10.0.0.0/24", 200)]);
        assert_eq!(lookup(&table, 1, "10.0.0.5"), Some(100));
        assert_eq!(lookup(&table, 2, "10.0.0.5"), Some(200));
        assert_eq!(lookup(&table, 3, "10.0.0.5"), None, "a vnet without routes");
        assert_eq!(lookup(&table, 1, "10.0.1.5"), None, "outside every route");
    }

    #[test]
    fn ipv6_routes_and_mapped_addresses() {
        let table = NetworkRouteTable::new([
            route(1, "fd00::/8", 100),
            route(1, "fd00:1::/32", 101),
            route(1, "10.0.0.0/8", 102),
        ]);
        assert_eq!(lookup(&table, 1, "fd00:1::5"), Some(101));
        assert_eq!(lookup(&table, 1, "fd99::5"), Some(100));
        assert_eq!(lookup(&table, 1, "::ffff:10.2.3.4"), Some(102));
        assert_eq!(lookup(&table, 1, "2001:db8::1"), None);
        assert_eq!(
            table.tunnels(Uuid::from_u128(1)).len(),
            3,
            "each tunnel once"
        );
    }

    #[test]
    fn host_bits_in_a_stored_network_do_not_hide_it() {
        let table = NetworkRouteTable::new([route(1, "10.0.0.5/8", 100)]);
        assert_eq!(lookup(&table, 1, "10.200.0.1"), Some(100));
    }
}
