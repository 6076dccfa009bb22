//! Where the iris nodes are: [`IrisAddress`], an `IP:PORT` or a `HOST:PORT` whose name may
//! stand for several nodes, its parsing (the `--iris` syntax) and its resolution.
//!
//! A name is resolved with the system resolver (`getaddrinfo`: `/etc/hosts`, then DNS) when
//! the binding-worker starts — a name that does not resolve then is refused, so a typo shows
//! at once — and again in the background (see `iris_client`): every address it gives is one
//! node; a later failed or empty answer keeps the addresses known before.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// One `--iris` value: a node's CONNECT listener, or a name for one or more of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IrisAddress {
    /// One node.
    Socket(SocketAddr),
    /// Every address `host` resolves to, on `port`; re-resolved while the worker runs.
    Name {
        /// A DNS name (or an `/etc/hosts` name).
        host: String,
        /// The CONNECT port on every address.
        port: u16,
    },
}

/// Why an `--iris` value is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IrisAddressError {
    /// Nothing given.
    #[error("an empty iris address: write HOST:PORT, e.g. 10.0.0.5:8443 or iris.internal:8443")]
    Empty,
    /// No `:PORT`.
    #[error("iris address {0:?} has no port: write HOST:PORT, e.g. {0}:8443")]
    NoPort(String),
    /// A port that is not 1–65535.
    #[error("iris address {value:?}: {port:?} is not a port (1-65535)")]
    BadPort {
        /// The whole value.
        value: String,
        /// What stood after the last `:`.
        port: String,
    },
    /// A host that is neither an IP nor a DNS name.
    #[error(
        "iris address {0:?}: the host is neither an IP address nor a DNS name \
         (letters, digits, '-' and '.'; IPv6 in brackets: [::1]:8443)"
    )]
    BadHost(String),
}

impl IrisAddress {
    /// The name, if this is one.
    pub fn name(&self) -> Option<(&str, u16)> {
        match self {
            Self::Socket(_) => None,
            Self::Name { host, port } => Some((host, *port)),
        }
    }

    /// The addresses it stands for now (blocking: the system resolver). A name that
    /// resolves to nothing is an error.
    pub fn resolve_blocking(&self) -> std::io::Result<Vec<SocketAddr>> {
        use std::net::ToSocketAddrs as _;
        match self {
            Self::Socket(addr) => Ok(vec![*addr]),
            Self::Name { host, port } => {
                nonempty(self, (host.as_str(), *port).to_socket_addrs()?.collect())
            }
        }
    }

    /// As [`Self::resolve_blocking`], without blocking the caller's task.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Self::Socket(addr) => Ok(vec![*addr]),
            Self::Name { host, port } => nonempty(
                self,
                tokio::net::lookup_host((host.as_str(), *port))
                    .await?
                    .collect(),
            ),
        }
    }
}

/// `addrs`, deduplicated in order, or an error naming `address` when empty.
fn nonempty(address: &IrisAddress, mut addrs: Vec<SocketAddr>) -> std::io::Result<Vec<SocketAddr>> {
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|addr| seen.insert(*addr));
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{address} resolves to no address"),
        ));
    }
    Ok(addrs)
}

impl From<SocketAddr> for IrisAddress {
    fn from(addr: SocketAddr) -> Self {
        Self::Socket(addr)
    }
}

impl fmt::Display for IrisAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(addr) => addr.fmt(f),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl FromStr for IrisAddress {
    type Err = IrisAddressError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        if value.is_empty() {
            return Err(IrisAddressError::Empty);
        }
        if let Ok(addr) = value.parse::<SocketAddr>() {
            return Ok(Self::Socket(addr));
        }
        let Some((host, port)) = value.rsplit_once(':') else {
            return Err(IrisAddressError::NoPort(value.to_owned()));
        };
        // A bare IPv6 address ("::1") has colons but no port.
        if host.contains(':') || host.starts_with('[') {
            return Err(if value.parse::<IpAddr>().is_ok() {
                IrisAddressError::NoPort(format!("[{value}]"))
            } else {
                IrisAddressError::BadHost(value.to_owned())
            });
        }
        let port = match port.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => {
                return Err(IrisAddressError::BadPort {
                    value: value.to_owned(),
                    port: port.to_owned(),
                });
            }
        };
        if !is_dns_name(host) {
            return Err(IrisAddressError::BadHost(value.to_owned()));
        }
        Ok(Self::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// Letters, digits and hyphens in dot-separated labels of 1–63 characters, at most 253 in
/// all (a trailing dot allowed).
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_parse() {
        assert_eq!(
            "10.0.0.5:8443".parse::<IrisAddress>(),
            Ok(IrisAddress::Socket("10.0.0.5:8443".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:8443".parse::<IrisAddress>(),
            Ok(IrisAddress::Socket("[::1]:8443".parse().unwrap()))
        );
        assert_eq!(
            " Iris.Internal:8443".parse::<IrisAddress>(),
            Ok(IrisAddress::Name {
                host: "iris.internal".into(),
                port: 8443
            })
        );
        assert_eq!(
            "iris.internal:8443"
                .parse::<IrisAddress>()
                .unwrap()
                .to_string(),
            "iris.internal:8443"
        );
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let cases = [
            ("", IrisAddressError::Empty),
            (
                "iris.internal",
                IrisAddressError::NoPort("iris.internal".into()),
            ),
            ("::1", IrisAddressError::NoPort("[::1]".into())),
            (
                "iris.internal:0",
                IrisAddressError::BadPort {
                    value: "iris.internal:0".into(),
                    port: "0".into(),
                },
            ),
            (
                "iris.internal:http",
                IrisAddressError::BadPort {
                    value: "iris.internal:http".into(),
                    port: "http".into(),
                },
            ),
            (
                "iris internal:8443",
                IrisAddressError::BadHost("iris internal:8443".into()),
            ),
            (
                "http://iris:8443",
                IrisAddressError::BadHost("http://iris:8443".into()),
            ),
        ];
        for (value, want) in cases {
            assert_eq!(value.parse::<IrisAddress>(), Err(want), "{value:?}");
        }
        let message = "iris.internal"
            .parse::<IrisAddress>()
            .unwrap_err()
            .to_string();
        assert!(message.contains("iris.internal:8443"), "{message}");
    }

    #[test]
    fn localhost_resolves_to_loopback_addresses_on_the_given_port() {
        let loopback: IrisAddress = "localhost:8443".parse().unwrap();
        let addrs = loopback.resolve_blocking().expect("localhost resolves");
        assert!(
            !addrs.is_empty()
                && addrs
                    .iter()
                    .all(|a| a.ip().is_loopback() && a.port() == 8443),
            "{addrs:?}"
        );
    }
}
