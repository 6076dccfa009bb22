//! A consistent picture of every service, every tunnel's credentials and every private
//! network route, for routers that keep routes and connector credentials in memory.

use uuid::Uuid;

use crate::database::Directory;
use crate::error::DirectoryError;
use crate::service::Service;
use crate::services::all_services;
use crate::store::params;
use crate::teamnet::NetworkSnapshot;

/// Every service of every account as of one committed revision.
#[derive(Debug, Clone)]
pub struct RouteSnapshot {
    /// The revision the services were read at ([`Directory::revision`]).
    pub revision: u64,
    /// Every service, oldest first.
    pub services: Vec<Service>,
    /// Every tunnel's credentials.
    pub tunnels: Vec<TunnelKey>,
    /// Every virtual network and network route, each account's default virtual network and
    /// each tunnel's account (what `vpc_networks` bindings are routed by).
    pub networks: NetworkSnapshot,
}

/// What a connector must present to register a connection of a tunnel.
#[derive(Clone, PartialEq, Eq)]
pub struct TunnelKey {
    /// The tunnel.
    pub tunnel_id: Uuid,
    /// Its account (`AccountTag` of the credentials).
    pub account_tag: String,
    /// Its secret.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TunnelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("TunnelKey")
            .field("tunnel_id", &self.tunnel_id)
            .field("account_tag", &self.account_tag)
            .finish_non_exhaustive()
    }
}

impl Directory {
    /// Reads the revision and every service in one read transaction, so the snapshot never
    /// mixes two commits.
    pub fn route_snapshot(&self) -> Result<RouteSnapshot, DirectoryError> {
        self.read_consistent(|tx| {
            let revision = crate::database::read_revision(tx)?;
            let services = all_services(tx)?;
            let tunnels = tx
                .query_map(
                    "SELECT tunnel_id, account_id, secret FROM tunnels",
                    params![],
                    |row| {
                        Ok((
                            row.get::<String>(0)?,
                            row.get::<String>(1)?,
                            row.get::<Vec<u8>>(2)?,
                        ))
                    },
                )?
                .into_iter()
                .map(|row| {
                    let (id, account_tag, secret) = row;
                    Ok(TunnelKey {
                        tunnel_id: crate::tunnel::parse_uuid("tunnel id", &id)?,
                        account_tag,
                        secret,
                    })
                })
                .collect::<Result<Vec<_>, DirectoryError>>()?;
            let networks = crate::teamnet::network_snapshot(tx)?;
            Ok(RouteSnapshot {
                revision,
                services,
                tunnels,
                networks,
            })
        })
    }
}
