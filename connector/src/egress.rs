//! The egress allow-list (`--allow`): which destinations the edge may ask this connector to
//! reach. Without rules everything is allowed; with rules, only what a rule names (deny by
//! default). The virtual DNS resolver stays reachable either way: iris resolves hostname
//! services through it, and it only ever reaches the resolvers this connector was configured
//! with. Refusals are answered with `destination_ip_prohibited`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_tunnel::VIRTUAL_DNS_RESOLVER;

/// One allow-list entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowRule {
    /// Every port of every address in `addr/prefix`.
    Network {
        /// Network address (bits past the prefix are ignored).
        addr: IpAddr,
        /// Prefix length.
        prefix: u8,
    },
    /// Exactly one `ip:port`.
    Addr(SocketAddr),
}

impl AllowRule {
    /// Whether the rule covers `dest`.
    pub fn covers(&self, dest: SocketAddr) -> bool {
        match *self {
            Self::Addr(addr) => addr == dest,
            Self::Network { addr, prefix } => match (addr, dest.ip()) {
                (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match(
                    u128::from(u32::from(net)),
                    u128::from(u32::from(ip)),
                    prefix,
                    32,
                ),
                (IpAddr::V6(net), IpAddr::V6(ip)) => {
                    prefix_match(u128::from(net), u128::from(ip), prefix, 128)
                }
                (IpAddr::V4(net), IpAddr::V6(ip)) => ip.to_ipv4_mapped().is_some_and(|ip| {
                    prefix_match(
                        u128::from(u32::from(net)),
                        u128::from(u32::from(ip)),
                        prefix,
                        32,
                    )
                }),
                (IpAddr::V6(_), IpAddr::V4(_)) => false,
            },
        }
    }
}

fn prefix_match(net: u128, ip: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix.min(bits));
    (net >> shift) == (ip >> shift)
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Network { addr, prefix } => write!(f, "{addr}/{prefix}"),
            Self::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

/// Why an allow-list entry could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--allow {input:?}: {problem} (expected a CIDR like 10.0.0.0/8, an IP, or ip:port / \
     host:port)"
)]
pub struct AllowRuleError {
    /// The entry as given.
    pub input: String,
    /// What was wrong.
    pub problem: String,
}

impl FromStr for AllowRule {
    type Err = AllowRuleError;

    /// `10.0.0.0/8`, `2001:db8::/32`, `10.0.0.5` (one host, any port), `10.0.0.5:8080`,
    /// `[2001:db8::5]:443`. Host names are resolved by the caller (see the CLI's `--allow`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = |problem: String| AllowRuleError {
            input: s.to_owned(),
            problem,
        };
        if let Some((addr, prefix)) = s.split_once('/') {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| error(format!("{addr:?} is not an IP address")))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| error(format!("prefix {prefix:?} must be 0..={max}")))?;
            return Ok(Self::Network { addr, prefix });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            return Ok(Self::Network { addr: ip, prefix });
        }
        s.parse::<SocketAddr>()
            .map(Self::Addr)
            .map_err(|_| error("not a CIDR, an IP or an ip:port".into()))
    }
}

/// The allow-list the connector enforces.
#[derive(Debug, Clone, Default)]
pub(crate) struct EgressPolicy {
    rules: Vec<AllowRule>,
}

impl EgressPolicy {
    pub(crate) fn new(rules: Vec<AllowRule>) -> Self {
        Self { rules }
    }

    /// `Ok` when `dest` may be reached, else `destination_ip_prohibited`.
    pub(crate) fn check(&self, dest: SocketAddr) -> Result<(), ProxyError> {
        if self.rules.is_empty()
            || dest == VIRTUAL_DNS_RESOLVER
            || self.rules.iter().any(|r| r.covers(dest))
        {
            return Ok(());
        }
        Err(
            ProxyError::new(ErrorCode::DestinationIpProhibited).with_details(format!(
                "{dest} is not in this connector's egress allow-list (--allow)"
            )),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> AllowRule {
        s.parse().unwrap()
    }

    #[test]
    fn rules_parse_and_cover_what_they_name() {
        let net = rule("10.1.0.0/16");
        assert!(net.covers("10.1.200.3:80".parse().unwrap()));
        assert!(!net.covers("10.2.0.1:80".parse().unwrap()));
        assert!(net.covers("[::ffff:10.1.0.9]:80".parse().unwrap()));
        let host = rule("127.0.0.2");
        assert!(host.covers("127.0.0.2:1".parse().unwrap()));
        assert!(!host.covers("127.0.0.3:1".parse().unwrap()));
        let port = rule("[2001:db8::5]:443");
        assert!(port.covers("[2001:db8::5]:443".parse().unwrap()));
        assert!(!port.covers("[2001:db8::5]:80".parse().unwrap()));
        assert!(rule("2001:db8::/32").covers("[2001:db8:1::1]:9".parse().unwrap()));
        assert!(rule("0.0.0.0/0").covers("192.0.2.1:9".parse().unwrap()));

        let err = "10.0.0.0/33".parse::<AllowRule>().unwrap_err();
        assert!(err.to_string().contains("prefix \"33\""), "{err}");
        let err = "db.internal:5432".parse::<AllowRule>().unwrap_err();
        assert!(
            err.to_string().contains("--allow \"db.internal:5432\""),
            "{err}"
        );
    }

    #[test]
    fn a_policy_denies_by_default_but_keeps_the_virtual_resolver() {
        let open = EgressPolicy::default();
        assert!(open.check("192.0.2.1:80".parse().unwrap()).is_ok());
        let policy = EgressPolicy::new(vec![rule("127.0.0.2:8080")]);
        assert!(policy.check("127.0.0.2:8080".parse().unwrap()).is_ok());
        assert!(policy.check(VIRTUAL_DNS_RESOLVER).is_ok());
        let err = policy.check("127.0.0.2:8081".parse().unwrap()).unwrap_err();
        assert_eq!(err.code, ErrorCode::DestinationIpProhibited);
        assert!(err.details.unwrap().contains("127.0.0.2:8081"));
    }
}
