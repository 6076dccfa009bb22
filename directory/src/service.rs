//! The VPC service object as the API shows it (Cloudflare's `ServiceConfig` JSON shape) and the
//! accessors the data plane routes with.
//!
//! A [`Service`] is always valid: it is only built by the directory from an input that passed
//! [`crate::validation`], or read back from rows that were written that way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// DNS port used for a `resolver_ips` entry that gives no port.
pub const DEFAULT_DNS_PORT: u16 = 53;

/// `http_port` of an `http` service that sets neither port.
pub const DEFAULT_HTTP_PORT: u16 = 80;

/// `https_port` of an `http` service that sets neither port.
pub const DEFAULT_HTTPS_PORT: u16 = 443;

/// A VPC service: one private target reached through one tunnel.
///
/// JSON: `{service_id, name, type, http_port, https_port | tcp_port, app_protocol, host,
/// tls_settings, created_at, updated_at}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Assigned by the directory; bindings refer to it.
    pub service_id: Uuid,
    /// Human-readable name (not unique).
    pub name: String,
    /// `type` plus the ports that belong to it.
    #[serde(flatten)]
    pub kind: ServiceKind,
    /// Where the service lives and which tunnel reaches it.
    pub host: Host,
    /// Origin certificate verification; `null` means the default, `verify_full`.
    pub tls_settings: Option<TlsSettings>,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// Last full replace, RFC 3339 UTC.
    pub updated_at: String,
}

/// The service type with the fields only that type has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServiceKind {
    /// Reached with `fetch()`; the URL scheme picks the port.
    Http {
        /// Port for `http://` URLs; `null` forbids the scheme.
        http_port: Option<u16>,
        /// Port for `https://` URLs; `null` forbids the scheme.
        https_port: Option<u16>,
        /// Port `connect()` dials on the service; absent (and not shown) when it has none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tcp_port: Option<u16>,
    },
    /// Raw TCP (databases through the Hyperdrive equivalent, `connect()`).
    Tcp {
        /// The port the service listens on.
        tcp_port: u16,
        /// Wire protocol hint for database proxies.
        app_protocol: Option<AppProtocol>,
    },
}

/// `type` on its own, e.g. for list filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceType {
    /// `http`
    Http,
    /// `tcp`
    Tcp,
}

/// `app_protocol` of a tcp service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// `postgresql`
    Postgresql,
    /// `mysql`
    Mysql,
}

/// Where the service lives: a hostname resolved inside the private network, or fixed IPs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Host {
    /// `{hostname, resolver_network: {tunnel_id, resolver_ips?}}`
    Hostname {
        /// Name resolved (A and AAAA) through the tunnel.
        hostname: String,
        /// Tunnel and optional resolvers.
        resolver_network: ResolverNetwork,
    },
    /// `{ipv4?, ipv6?, network: {tunnel_id}}`; at least one address is set.
    Ip {
        /// IPv4 address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ipv4: Option<Ipv4Addr>,
        /// IPv6 address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ipv6: Option<Ipv6Addr>,
        /// Tunnel that reaches the addresses.
        network: Network,
    },
}

/// `resolver_network` of a hostname host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolverNetwork {
    /// Tunnel whose connectors resolve and reach the name.
    pub tunnel_id: Uuid,
    /// The virtual network of the account the name is resolved and reached in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_network_id: Option<Uuid>,
    /// Resolvers inside the private network, as given: `ip`, `ip:port` or `[ipv6]:port`.
    /// Absent or empty: the connector's own (system) resolver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver_ips: Option<Vec<String>>,
}

/// `network` of an IP host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Tunnel whose connectors reach the addresses.
    pub tunnel_id: Uuid,
    /// The virtual network of the account the addresses are in (the tunnel has a route
    /// there covering each of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_network_id: Option<Uuid>,
}

/// `tls_settings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsSettings {
    /// How the origin certificate is checked.
    pub cert_verification_mode: CertVerificationMode,
    /// A private CA (one or more PEM certificates) trusted for this service in addition to the
    /// system roots. An extension: Cloudflare has no custom CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
}

/// How the origin's TLS certificate is verified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertVerificationMode {
    /// Chain and hostname (the default).
    #[default]
    VerifyFull,
    /// Chain only.
    VerifyCa,
    /// No verification.
    Disabled,
}

/// Where iris sends a service's traffic: the data-plane view of [`Host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceTarget {
    /// Resolve `name` through the tunnel.
    Hostname {
        /// The name to resolve.
        name: String,
        /// Resolvers to ask (port 53 unless given); empty: the connector's virtual resolver.
        resolvers: Vec<SocketAddr>,
    },
    /// Fixed addresses; at least one is set.
    Ips {
        /// IPv4 address.
        ipv4: Option<Ipv4Addr>,
        /// IPv6 address.
        ipv6: Option<Ipv6Addr>,
    },
}

/// Why a `resolver_ips` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolverAddrError {
    /// Neither `ip` nor `ip:port`.
    #[error("{0:?} is not an IP address or ip:port")]
    Syntax(String),
    /// `ip:0`.
    #[error("{0:?} has port 0")]
    PortZero(String),
}

// === impl Service ===

impl Service {
    /// `http` or `tcp`.
    pub fn service_type(&self) -> ServiceType {
        self.kind.service_type()
    }

    /// The tunnel whose connectors reach the service.
    pub fn tunnel_id(&self) -> Uuid {
        self.host.tunnel_id()
    }

    /// Port for `http://` requests; `None` for tcp services or when the scheme is disabled.
    pub fn http_port(&self) -> Option<u16> {
        match self.kind {
            ServiceKind::Http { http_port, .. } => http_port,
            ServiceKind::Tcp { .. } => None,
        }
    }

    /// Port for `https://` requests; `None` for tcp services or when the scheme is disabled.
    pub fn https_port(&self) -> Option<u16> {
        match self.kind {
            ServiceKind::Http { https_port, .. } => https_port,
            ServiceKind::Tcp { .. } => None,
        }
    }

    /// The port `connect()` dials: a tcp service's port, or an http service's optional
    /// `tcp_port`.
    pub fn tcp_port(&self) -> Option<u16> {
        match self.kind {
            ServiceKind::Tcp { tcp_port, .. } => Some(tcp_port),
            ServiceKind::Http { tcp_port, .. } => tcp_port,
        }
    }

    /// The virtual network named in `host.network` / `host.resolver_network`, if any.
    pub fn virtual_network_id(&self) -> Option<Uuid> {
        match &self.host {
            Host::Hostname {
                resolver_network, ..
            } => resolver_network.virtual_network_id,
            Host::Ip { network, .. } => network.virtual_network_id,
        }
    }

    /// The effective verification mode (`verify_full` when `tls_settings` is absent).
    pub fn cert_verification_mode(&self) -> CertVerificationMode {
        self.tls_settings
            .as_ref()
            .map(|t| t.cert_verification_mode)
            .unwrap_or_default()
    }

    /// The private CA (PEM) trusted for this service's https origin, if any.
    pub fn ca_certificate(&self) -> Option<&str> {
        self.tls_settings.as_ref()?.ca_certificate.as_deref()
    }

    /// Where to send traffic: hostname plus resolver socket addresses, or the fixed IPs.
    pub fn target(&self) -> ServiceTarget {
        self.host.target()
    }
}

// === impl ServiceKind ===

impl ServiceKind {
    /// `http` or `tcp`.
    pub fn service_type(&self) -> ServiceType {
        match self {
            ServiceKind::Http { .. } => ServiceType::Http,
            ServiceKind::Tcp { .. } => ServiceType::Tcp,
        }
    }
}

// === impl Host ===

impl Host {
    /// The tunnel named in `network` or `resolver_network`.
    pub fn tunnel_id(&self) -> Uuid {
        match self {
            Host::Hostname {
                resolver_network, ..
            } => resolver_network.tunnel_id,
            Host::Ip { network, .. } => network.tunnel_id,
        }
    }

    /// The data-plane view of the host.
    pub fn target(&self) -> ServiceTarget {
        match self {
            Host::Hostname {
                hostname,
                resolver_network,
            } => ServiceTarget::Hostname {
                name: hostname.clone(),
                resolvers: resolver_network.resolver_addrs(),
            },
            Host::Ip { ipv4, ipv6, .. } => ServiceTarget::Ips {
                ipv4: *ipv4,
                ipv6: *ipv6,
            },
        }
    }
}

// === impl ResolverNetwork ===

impl ResolverNetwork {
    /// The resolvers as socket addresses (port 53 unless given); empty when none are set.
    pub fn resolver_addrs(&self) -> Vec<SocketAddr> {
        // Stored entries passed validation, so nothing is dropped here in practice.
        self.resolver_ips
            .iter()
            .flatten()
            .filter_map(|entry| parse_resolver_addr(entry).ok())
            .collect()
    }
}

/// Parses a `resolver_ips` entry: `10.0.0.53`, `fd00::53`, `10.0.0.53:5353` or `[fd00::53]:5353`.
pub fn parse_resolver_addr(entry: &str) -> Result<SocketAddr, ResolverAddrError> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_DNS_PORT));
    }
    match entry.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => Err(ResolverAddrError::PortZero(entry.to_owned())),
        Ok(addr) => Ok(addr),
        Err(_) => Err(ResolverAddrError::Syntax(entry.to_owned())),
    }
}

// === string forms ===

impl ServiceType {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::Http => "http",
            ServiceType::Tcp => "tcp",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "http" => Some(ServiceType::Http),
            "tcp" => Some(ServiceType::Tcp),
            _ => None,
        }
    }
}

impl AppProtocol {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Postgresql => "postgresql",
            AppProtocol::Mysql => "mysql",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "postgresql" => Some(AppProtocol::Postgresql),
            "mysql" => Some(AppProtocol::Mysql),
            _ => None,
        }
    }
}

impl CertVerificationMode {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CertVerificationMode::VerifyFull => "verify_full",
            CertVerificationMode::VerifyCa => "verify_ca",
            CertVerificationMode::Disabled => "disabled",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "verify_full" => Some(CertVerificationMode::VerifyFull),
            "verify_ca" => Some(CertVerificationMode::VerifyCa),
            "disabled" => Some(CertVerificationMode::Disabled),
            _ => None,
        }
    }
}

impl std::fmt::Display for ServiceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for AppProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for CertVerificationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(host: Host, kind: ServiceKind) -> Service {
        Service {
            service_id: Uuid::nil(),
            name: "api".into(),
            kind,
            host,
            tls_settings: None,
            created_at: "2026-01-01T00:00:00.000000Z".into(),
            updated_at: "2026-01-01T00:00:00.000000Z".into(),
        }
    }

    #[test]
    fn json_shape_matches_the_api() {
        let tunnel = Uuid::new_v4();
        let s = sample(
            Host::Hostname {
                hostname: "api.internal".into(),
                resolver_network: ResolverNetwork {
                    virtual_network_id: None,
                    tunnel_id: tunnel,
                    resolver_ips: Some(vec!["10.0.0.53".into()]),
                },
            },
            ServiceKind::Http {
                http_port: Some(80),
                https_port: None,
                tcp_port: None,
            },
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["type"], "http");
        assert_eq!(v["http_port"], 80);
        assert!(
            v["https_port"].is_null(),
            "a disabled scheme is shown as null"
        );
        assert!(v.get("tcp_port").is_none());
        assert_eq!(v["host"]["hostname"], "api.internal");
        assert_eq!(
            v["host"]["resolver_network"]["tunnel_id"],
            tunnel.to_string()
        );
        assert!(v["tls_settings"].is_null());
        let back: Service = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);

        let tcp = sample(
            Host::Ip {
                ipv4: Some(Ipv4Addr::new(10, 0, 0, 5)),
                ipv6: None,
                network: Network {
                    tunnel_id: tunnel,
                    virtual_network_id: None,
                },
            },
            ServiceKind::Tcp {
                tcp_port: 5432,
                app_protocol: Some(AppProtocol::Postgresql),
            },
        );
        let v = serde_json::to_value(&tcp).unwrap();
        assert_eq!(v["type"], "tcp");
        assert_eq!(v["tcp_port"], 5432);
        assert_eq!(v["app_protocol"], "postgresql");
        assert!(v.get("http_port").is_none());
        assert_eq!(v["host"]["ipv4"], "10.0.0.5");
        assert!(v["host"].get("ipv6").is_none());
        assert_eq!(serde_json::from_value::<Service>(v).unwrap(), tcp);
    }

    #[test]
    fn accessors_give_what_the_router_needs() {
        let tunnel = Uuid::new_v4();
        let s = sample(
            Host::Hostname {
                hostname: "api.internal".into(),
                resolver_network: ResolverNetwork {
                    virtual_network_id: None,
                    tunnel_id: tunnel,
                    resolver_ips: Some(vec![
                        "10.0.0.53".into(),
                        "127.0.0.1:5353".into(),
                        "[::1]:5353".into(),
                        "fd00::53".into(),
                    ]),
                },
            },
            ServiceKind::Http {
                http_port: None,
                https_port: Some(8443),
                tcp_port: None,
            },
        );
        assert_eq!(s.tunnel_id(), tunnel);
        assert_eq!(s.http_port(), None);
        assert_eq!(s.https_port(), Some(8443));
        assert_eq!(s.tcp_port(), None);
        assert_eq!(s.cert_verification_mode(), CertVerificationMode::VerifyFull);
        assert_eq!(
            s.target(),
            ServiceTarget::Hostname {
                name: "api.internal".into(),
                resolvers: vec![
                    "10.0.0.53:53".parse().unwrap(),
                    "127.0.0.1:5353".parse().unwrap(),
                    "[::1]:5353".parse().unwrap(),
                    "[fd00::53]:53".parse().unwrap(),
                ],
            }
        );
    }

    #[test]
    fn resolver_entries_parse_with_and_without_port() {
        assert_eq!(
            parse_resolver_addr("1.1.1.1"),
            Ok("1.1.1.1:53".parse().unwrap())
        );
        assert_eq!(parse_resolver_addr("::1"), Ok("[::1]:53".parse().unwrap()));
        assert_eq!(
            parse_resolver_addr("1.1.1.1:0"),
            Err(ResolverAddrError::PortZero("1.1.1.1:0".into()))
        );
        assert!(matches!(
            parse_resolver_addr("::1:53:x"),
            Err(ResolverAddrError::Syntax(_))
        ));
        assert!(matches!(
            parse_resolver_addr("dns.internal"),
            Err(ResolverAddrError::Syntax(_))
        ));
    }
}
