//! What a `vpc_networks` binding names, in the one spelling every hop uses: the wrangler
//! config and deploy metadata (`tunnel_id` or `network_id`), the capnp `BindingContext`
//! (`tunnelId` / `networkId`) and iris's `wvpc-network` CONNECT header.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// `network_id` of every tunnel of the account: the account's default virtual network.
pub const ALL_NETWORKS: &str = "cf1:network";
/// Prefix of a `network_id` naming one virtual network: `cf1:vnet:<uuid>`.
pub const VNET_PREFIX: &str = "cf1:vnet:";
/// Prefix of the `wvpc-network` header value of a binding by `tunnel_id`: `tunnel:<uuid>`.
pub const TUNNEL_PREFIX: &str = "tunnel:";

/// Where a `vpc_networks` binding reaches: the URL (or `connect()` address) picks the
/// destination inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetworkTarget {
    /// `tunnel_id`: anything that one tunnel's connectors can reach.
    Tunnel(Uuid),
    /// `network_id: "cf1:network"`: the account's default virtual network, whose routes pick
    /// the tunnel by longest prefix match.
    AllNetworks,
    /// `network_id: "cf1:vnet:<uuid>"`: one virtual network of the account.
    VirtualNetwork(Uuid),
}

/// Why a `network_id` (or a `wvpc-network` value) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkIdError {
    /// Neither `cf1:network` nor `cf1:vnet:<uuid>`.
    #[error("{0:?} is not a network id (use \"cf1:network\" or \"cf1:vnet:<virtual network id>\")")]
    Unknown(String),
    /// `cf1:vnet:` followed by something that is not a UUID.
    #[error("{0:?} does not end in a virtual network id (a UUID, as `wvpc vnet list` prints)")]
    BadVnetId(String),
}

impl NetworkTarget {
    /// Reads a `network_id`: `cf1:network` or `cf1:vnet:<uuid>`.
    pub fn parse_network_id(value: &str) -> Result<Self, NetworkIdError> {
        if value == ALL_NETWORKS {
            return Ok(Self::AllNetworks);
        }
        let Some(id) = value.strip_prefix(VNET_PREFIX) else {
            return Err(NetworkIdError::Unknown(value.to_owned()));
        };
        Uuid::parse_str(id)
            .map(Self::VirtualNetwork)
            .map_err(|_| NetworkIdError::BadVnetId(value.to_owned()))
    }

    /// The `network_id` spelling; `None` for a binding by `tunnel_id`.
    pub fn network_id(&self) -> Option<String> {
        match self {
            Self::Tunnel(_) => None,
            Self::AllNetworks => Some(ALL_NETWORKS.to_owned()),
            Self::VirtualNetwork(id) => Some(format!("{VNET_PREFIX}{id}")),
        }
    }

    /// The tunnel of a binding by `tunnel_id`.
    pub fn tunnel_id(&self) -> Option<Uuid> {
        match self {
            Self::Tunnel(id) => Some(*id),
            _ => None,
        }
    }
}

/// The `wvpc-network` header value: `tunnel:<uuid>`, `cf1:network` or `cf1:vnet:<uuid>`.
impl fmt::Display for NetworkTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tunnel(id) => write!(f, "{TUNNEL_PREFIX}{id}"),
            Self::AllNetworks => f.write_str(ALL_NETWORKS),
            Self::VirtualNetwork(id) => write!(f, "{VNET_PREFIX}{id}"),
        }
    }
}

/// Reads the [`Display`](fmt::Display) form back.
impl FromStr for NetworkTarget {
    type Err = NetworkIdError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.strip_prefix(TUNNEL_PREFIX) {
            Some(id) => Uuid::parse_str(id)
                .map(Self::Tunnel)
                .map_err(|_| NetworkIdError::Unknown(value.to_owned())),
            None => Self::parse_network_id(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_reads_back_from_its_header_value() {
        let id = Uuid::from_u128(7);
        for target in [
            NetworkTarget::Tunnel(id),
            NetworkTarget::AllNetworks,
            NetworkTarget::VirtualNetwork(id),
        ] {
            assert_eq!(target.to_string().parse::<NetworkTarget>(), Ok(target));
        }
        assert_eq!(
            NetworkTarget::VirtualNetwork(id).network_id().unwrap(),
            format!("cf1:vnet:{id}")
        );
    }

    #[test]
    fn bad_network_ids_say_what_is_expected() {
        let err = NetworkTarget::parse_network_id("cf1:networks").unwrap_err();
        assert!(err.to_string().contains("cf1:vnet:<virtual network id>"));
        let err = NetworkTarget::parse_network_id("cf1:vnet:abc").unwrap_err();
        assert_eq!(err, NetworkIdError::BadVnetId("cf1:vnet:abc".into()));
        // A tunnel id is a binding's `tunnel_id`, not a `network_id`.
        assert!(NetworkTarget::parse_network_id(&format!("tunnel:{}", Uuid::nil())).is_err());
    }
}
