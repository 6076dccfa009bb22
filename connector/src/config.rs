//! What a connector needs to run: credentials, edge addresses, the edge's CA, DNS resolvers and
//! limits. Validated once, before any connection is dialed.

use std::net::SocketAddr;
use std::time::Duration;

use wvpc_tunnel::{Credentials, DatagramVersion};

use crate::ConnectorError;
use crate::egress::AllowRule;

/// Default timeout for dialing an origin (TCP connect).
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time to let in-flight flows finish after `unregisterConnection` on shutdown.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);

/// Connector configuration. Build with [`ConnectorConfig::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    /// The tunnel's credentials (from a token or a credentials file).
    pub credentials: Credentials,
    /// Edge addresses; connection `i` dials `edge[i % edge.len()]`.
    pub edge: Vec<SocketAddr>,
    /// PEM of the CA the edge's certificate chains to (iris's `ca.pem`).
    pub ca_pem: Vec<u8>,
    /// Resolvers for the virtual DNS address; empty means the host's resolver
    /// (first `nameserver` of `/etc/resolv.conf`, else `127.0.0.1:53`).
    pub dns_resolvers: Vec<SocketAddr>,
    /// Number of concurrent connections to the edge (HA), at least 1.
    pub ha_connections: usize,
    /// Timeout for dialing an origin.
    pub dial_timeout: Duration,
    /// Most concurrent TCP flows plus UDP sessions; 0 means unlimited.
    pub max_active_flows: usize,
    /// How long in-flight flows may finish after unregistering on shutdown.
    pub grace_period: Duration,
    /// Version string reported to the edge.
    pub version: String,
    /// How UDP sessions travel: v3 (in-band, the default) or v2 (set up by RPC), announced to
    /// the edge in the feature list.
    pub datagram_version: DatagramVersion,
    /// Egress allow-list; empty allows every destination, otherwise only what a rule covers
    /// (the virtual DNS resolver stays reachable).
    pub allow: Vec<AllowRule>,
}

impl ConnectorConfig {
    /// A configuration with defaults: 1 HA connection, host DNS resolver, no flow limit.
    pub fn new(credentials: Credentials, edge: Vec<SocketAddr>, ca_pem: Vec<u8>) -> Self {
        Self {
            credentials,
            edge,
            ca_pem,
            dns_resolvers: Vec::new(),
            ha_connections: 1,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            max_active_flows: 0,
            grace_period: DEFAULT_GRACE_PERIOD,
            version: format!("wvpc-connector/{}", env!("CARGO_PKG_VERSION")),
            datagram_version: DatagramVersion::V3,
            allow: Vec::new(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConnectorError> {
        let bad = |msg: String| Err(ConnectorError::Config(msg));
        if self.edge.is_empty() {
            return bad("no edge address: pass at least one --edge host:port".into());
        }
        if !(1..=usize::from(u8::MAX)).contains(&self.ha_connections) {
            return bad(format!(
                "ha_connections must be between 1 and 255, got {}",
                self.ha_connections
            ));
        }
        if self.dial_timeout.is_zero() {
            return bad("dial_timeout must be greater than zero".into());
        }
        Ok(())
    }
}

/// The resolvers named by `nameserver` lines of a `resolv.conf`, on port 53. IPv6 addresses
/// with a zone (`fe80::1%eth0`) and malformed lines are skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next()?.trim();
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let ip = words.next()?.parse::<std::net::IpAddr>().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The host's resolver: the first `nameserver` of `/etc/resolv.conf`, else `127.0.0.1:53`.
pub fn host_resolver() -> SocketAddr {
    std::fs::read_to_string("/etc/resolv.conf")
        .ok()
        .and_then(|text| parse_resolv_conf(&text).into_iter().next())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 53)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_found() {
        let text = "\
# generated
search example.internal
nameserver 10.0.0.2
nameserver   2001:db8::53   # secondary
nameserver fe80::1%eth0
nameserver not-an-ip
options ndots:2
;nameserver 10.9.9.9
";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
        assert!(parse_resolv_conf("").is_empty());
    }

    #[test]
    fn config_without_edges_is_refused_with_a_hint() {
        let creds = Credentials::mint("acct", uuid::Uuid::new_v4());
        let err = ConnectorConfig::new(creds.clone(), vec![], vec![])
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("--edge"), "{err}");
        let mut config =
            ConnectorConfig::new(creds, vec!["127.0.0.1:7844".parse().unwrap()], vec![]);
        config.ha_connections = 0;
        assert!(config.validate().is_err());
    }
}
