//! What iris needs to know about a VPC service (or a `vpc_networks` binding's network) to
//! route to it, and the store it asks.
//!
//! The directory (embedded SQLite) implements [`ServiceStore`] in the CLI's wiring; tests use
//! an in-memory table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use uuid::Uuid;
pub use wvpc_directory::CertVerificationMode;
pub use wvpc_directory::network_routes::{NetworkRoute, NetworkRouteTable};
use wvpc_errors::ProxyError;
pub use wvpc_schemas::NetworkTarget;

/// Where a service lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// A hostname resolved through the tunnel.
    Hostname {
        /// The name to resolve (A and AAAA).
        name: String,
        /// Resolvers inside the private network (`resolver_ips`, port 53 unless given).
        /// Empty: the connector's virtual resolver.
        resolvers: Vec<SocketAddr>,
    },
    /// Fixed addresses (either or both).
    Ips {
        /// IPv4 address, if any.
        ipv4: Option<Ipv4Addr>,
        /// IPv6 address, if any.
        ipv6: Option<Ipv6Addr>,
    },
}

/// A service as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoute {
    /// The service's id.
    pub service_id: Uuid,
    /// Tunnel whose connectors reach the service.
    pub tunnel_id: Uuid,
    /// Host of the service.
    pub target: RouteTarget,
    /// Port for `http` requests; `None` forbids the scheme.
    pub http_port: Option<u16>,
    /// Port for `https` requests; `None` forbids the scheme.
    pub https_port: Option<u16>,
    /// Port for `tcp` services.
    pub tcp_port: Option<u16>,
    /// How the origin's certificate is checked for `https` (by the binding-worker, which runs
    /// TLS end to end; iris hands these settings over in its CONNECT answer).
    pub tls: RouteTls,
}

/// A service's `tls_settings`, as the binding-worker needs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTls {
    /// `verify_full` (chain and host name), `verify_ca` (chain only) or `disabled`.
    pub cert_verification_mode: CertVerificationMode,
    /// PEM of a private CA trusted besides the system roots.
    pub ca_certificate: Option<String>,
}

impl ServiceRoute {
    /// The destination port for a URL scheme, or `None` when the service does not allow it.
    pub fn port_for_scheme(&self, scheme: &str) -> Option<u16> {
        match scheme {
            "http" => self.http_port,
            "https" => self.https_port,
            "tcp" => self.tcp_port,
            _ => None,
        }
    }
}

/// How iris reaches the destinations of a `vpc_networks` binding
/// ([`wvpc_schemas::NetworkTarget`]): the CONNECT's authority is the destination, and this
/// says which tunnel carries it.
#[derive(Debug, Clone)]
pub enum NetworkReach {
    /// A binding by `tunnel_id`: every destination goes through this tunnel (a hostname is
    /// resolved by its connectors' virtual resolver).
    Tunnel(Uuid),
    /// A binding by `network_id` (`cf1:network` is the account's default virtual network):
    /// an IP goes to the tunnel of its longest matching route in `vnet`
    /// ([`NetworkRouteTable::lookup`]); none is `destination_ip_unroutable`.
    VirtualNetwork {
        /// The virtual network.
        vnet: Uuid,
        /// Every virtual network's routes (shared by all lookups of one snapshot).
        routes: Arc<NetworkRouteTable>,
    },
}

impl NetworkReach {
    /// The tunnel that carries a connection to `ip`, `None` when no route covers it.
    pub fn tunnel_for(&self, ip: IpAddr) -> Option<Uuid> {
        match self {
            Self::Tunnel(tunnel) => Some(*tunnel),
            Self::VirtualNetwork { vnet, routes } => routes.lookup(*vnet, ip),
        }
    }
}

/// Looks services up by id. Must be cheap: it is asked on every CONNECT.
pub trait ServiceStore: Send + Sync + 'static {
    /// The service, `Ok(None)` when it does not exist; `Err` for store failures.
    fn route(&self, service_id: Uuid) -> Result<Option<ServiceRoute>, ProxyError>;

    /// How `account` reaches the network a `vpc_networks` binding names; `Ok(None)` when the
    /// tunnel or virtual network does not exist in that account (`destination_not_found`).
    /// Stores without networks (the default) know none.
    fn network(
        &self,
        account: &str,
        target: &NetworkTarget,
    ) -> Result<Option<NetworkReach>, ProxyError> {
        let _ = (account, target);
        Ok(None)
    }
}
