//! What iris needs to know about a VPC service to route to it, and the store it asks.
//!
//! The directory (embedded SQLite) implements [`ServiceStore`] in the CLI's wiring; tests use
//! an in-memory table.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use uuid::Uuid;
pub use wvpc_directory::CertVerificationMode;
use wvpc_errors::ProxyError;

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

/// Looks services up by id. Must be cheap: it is asked on every CONNECT.
pub trait ServiceStore: Send + Sync + 'static {
    /// The service, `Ok(None)` when it does not exist; `Err` for store failures.
    fn route(&self, service_id: Uuid) -> Result<Option<ServiceRoute>, ProxyError>;
}
