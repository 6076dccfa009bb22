//! iris's routes as an in-memory snapshot of the directory, swapped atomically when it changes,
//! and the tunnel credentials of the [`DirectoryAuthority`] refreshed with them.
//!
//! A watcher waits on the directory's change feed ([`Directory::changes`]: a PostgreSQL
//! notification sent at commit, or on SQLite a poll every [`POLL_INTERVAL`]), then compares
//! the change counter ([`Directory::revision`], bumped by every committed write of any
//! process sharing the store); when it moved, it reads every service in one read transaction
//! ([`Directory::route_snapshot`]) and replaces the whole table behind one `Arc`. A CONNECT
//! therefore never touches the store and never sees half of a change; a deleted service is gone for new CONNECTs while streams
//! already routed keep going. Pooled origin connections of the binding-worker are renewed
//! after [`ROUTE_LEASE`], so steady traffic moves to a changed route too, between requests;
//! in one process ([`LiveRoutes::on_change`], wired by the dev stack) a swap also closes the
//! idle pooled connections of every changed service at once.
//!
//! The same snapshot answers `vpc_networks` bindings ([`ServiceStore::network`]): a tunnel or
//! virtual network is found only in the account that owns it, `cf1:network` is the account's
//! default virtual network, and every answer of one snapshot shares one longest-prefix route
//! table ([`NetworkRouteTable`]), built when the snapshot is loaded, never per CONNECT.
//!
//! Deletions are announced too ([`LiveRoutes::on_removed`]): iris closes a deleted service's
//! CONNECT pipes (so the pooled connections of every binding-worker end) and a deleted
//! tunnel's connections.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use uuid::Uuid;
use wvpc_directory::network_routes::NetworkRouteTable;
use wvpc_directory::teamnet::NetworkSnapshot;
use wvpc_directory::{Directory, DirectoryError, RouteSnapshot, Service, ServiceTarget};

use crate::authority::DirectoryAuthority;
use wvpc_errors::ProxyError;
use wvpc_iris::{NetworkReach, NetworkTarget, RouteTarget, RouteTls, ServiceRoute, ServiceStore};

/// How often the watcher looks at the change counter of a SQLite directory (a PostgreSQL
/// directory notifies instead, see [`wvpc_directory::Changes`]).
pub const POLL_INTERVAL: Duration = wvpc_directory::SQLITE_POLL;

/// How long the binding-worker of the stack reuses an origin connection after its CONNECT:
/// a pooled connection carries the route of its CONNECT, so a change reaches traffic on
/// pooled connections within `POLL_INTERVAL + ROUTE_LEASE`.
pub const ROUTE_LEASE: Duration = Duration::from_millis(500);

/// One consistent routing table.
#[derive(Debug, Default)]
struct Table {
    revision: u64,
    routes: HashMap<Uuid, ServiceRoute>,
    /// Each service's name (the status page).
    names: HashMap<Uuid, String>,
    networks: Networks,
}

/// What `vpc_networks` bindings are routed by, built once per snapshot: the route table
/// behind one `Arc` that every [`NetworkReach`] of the snapshot shares, and who owns what.
#[derive(Debug, Default)]
struct Networks {
    routes: Arc<NetworkRouteTable>,
    /// Each virtual network's account.
    vnet_accounts: HashMap<Uuid, String>,
    /// Each account's default virtual network (`cf1:network`).
    default_vnets: HashMap<String, Uuid>,
    /// Each tunnel's account.
    tunnel_accounts: HashMap<Uuid, String>,
}

impl Networks {
    fn new(snapshot: NetworkSnapshot) -> Self {
        Self {
            routes: Arc::new(NetworkRouteTable::new(snapshot.routes)),
            vnet_accounts: snapshot.vnet_accounts,
            default_vnets: snapshot.default_vnets,
            tunnel_accounts: snapshot.tunnel_accounts,
        }
    }

    /// How `account` reaches `target`; `None` when the tunnel or virtual network is not
    /// that account's (or does not exist).
    fn reach(&self, account: &str, target: &NetworkTarget) -> Option<NetworkReach> {
        let vnet = match *target {
            NetworkTarget::Tunnel(tunnel) => {
                return (self.tunnel_accounts.get(&tunnel).map(String::as_str) == Some(account))
                    .then_some(NetworkReach::Tunnel(tunnel));
            }
            NetworkTarget::AllNetworks => *self.default_vnets.get(account)?,
            NetworkTarget::VirtualNetwork(vnet) => {
                if self.vnet_accounts.get(&vnet).map(String::as_str) != Some(account) {
                    return None;
                }
                vnet
            }
        };
        Some(NetworkReach::VirtualNetwork {
            vnet,
            routes: self.routes.clone(),
        })
    }
}

/// What [`LiveRoutes::start`] starts: the routes, the authority it keeps current, and the
/// watcher task.
pub type Started = (
    Arc<LiveRoutes>,
    Arc<DirectoryAuthority>,
    tokio::task::JoinHandle<()>,
);

/// Told the ids of services whose route changed or went away, right after a swap.
pub type ChangeListener = Box<dyn Fn(&[Uuid]) + Send + Sync>;

/// What a reload found deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Services that are gone.
    pub services: Vec<Uuid>,
    /// Tunnels that are gone (their credentials are forgotten already).
    pub tunnels: Vec<Uuid>,
}

/// Told what was deleted, right after the swap that removed it.
pub type RemovalListener = Box<dyn Fn(&Removed) + Send + Sync>;

/// The routes iris reads, kept current by a watcher task.
pub struct LiveRoutes {
    current: RwLock<Arc<Table>>,
    revision: tokio::sync::watch::Sender<u64>,
    listeners: RwLock<Vec<ChangeListener>>,
    removal_listeners: RwLock<Vec<RemovalListener>>,
}

impl std::fmt::Debug for LiveRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveRoutes")
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

impl LiveRoutes {
    /// Loads the current services and tunnel credentials and starts the watcher on the
    /// current tokio runtime; `authority` is refreshed with every reload. The watcher ends
    /// when the returned `LiveRoutes` is dropped or its handle aborted.
    pub fn start(directory: Arc<Directory>) -> Result<Started, DirectoryError> {
        let mut snapshot = directory.route_snapshot()?;
        let authority = Arc::new(DirectoryAuthority::new(
            directory.clone(),
            std::mem::take(&mut snapshot.tunnels),
        ));
        let first = table(snapshot);
        let live = Arc::new(LiveRoutes {
            revision: tokio::sync::watch::Sender::new(first.revision),
            current: RwLock::new(Arc::new(first)),
            listeners: RwLock::new(Vec::new()),
            removal_listeners: RwLock::new(Vec::new()),
        });
        let watcher = tokio::spawn(watch(Arc::downgrade(&live), authority.clone(), directory));
        Ok((live, authority, watcher))
    }

    /// The directory revision the routes reflect.
    pub fn revision(&self) -> u64 {
        self.snapshot().revision
    }

    fn snapshot(&self) -> Arc<Table> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// A service's name and account, as of the current snapshot.
    pub fn service_owner(&self, service_id: Uuid) -> Option<(String, Option<String>)> {
        let table = self.snapshot();
        let name = table.names.get(&service_id)?.clone();
        let account = table
            .routes
            .get(&service_id)
            .and_then(|route| table.networks.tunnel_accounts.get(&route.tunnel_id))
            .cloned();
        Some((name, account))
    }

    /// A tunnel's account, as of the current snapshot.
    pub fn tunnel_account(&self, tunnel_id: Uuid) -> Option<String> {
        self.snapshot()
            .networks
            .tunnel_accounts
            .get(&tunnel_id)
            .cloned()
    }

    /// Waits until the routes reflect directory revision `revision` (or a later one).
    pub async fn caught_up(&self, revision: u64) {
        let mut seen = self.revision.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = seen.wait_for(|current| *current >= revision).await;
    }

    /// Calls `listener` after every swap with the services whose route changed.
    pub fn on_change(&self, listener: ChangeListener) {
        self.listeners
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(listener);
    }

    /// Calls `listener` after every swap that deleted services or tunnels.
    pub fn on_removed(&self, listener: RemovalListener) {
        self.removal_listeners
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(listener);
    }

    fn swap(&self, table: Table, removed_tunnels: Vec<Uuid>) {
        let revision = table.revision;
        let new = Arc::new(table);
        let old = std::mem::replace(
            &mut *self
                .current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            new.clone(),
        );
        let changed: Vec<Uuid> = old
            .routes
            .iter()
            .filter(|(id, route)| new.routes.get(id) != Some(route))
            .map(|(id, _)| *id)
            .collect();
        if !changed.is_empty() {
            for listener in self
                .listeners
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .iter()
            {
                listener(&changed);
            }
        }
        let removed = Removed {
            services: changed
                .into_iter()
                .filter(|id| !new.routes.contains_key(id))
                .collect(),
            tunnels: removed_tunnels,
        };
        if !removed.services.is_empty() || !removed.tunnels.is_empty() {
            tracing::info!(services = ?removed.services, tunnels = ?removed.tunnels, "deleted in the directory");
            for listener in self
                .removal_listeners
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .iter()
            {
                listener(&removed);
            }
        }
        self.revision.send_replace(revision);
    }
}

impl ServiceStore for LiveRoutes {
    fn route(&self, service_id: Uuid) -> Result<Option<ServiceRoute>, ProxyError> {
        Ok(self.snapshot().routes.get(&service_id).cloned())
    }

    fn network(
        &self,
        account: &str,
        target: &NetworkTarget,
    ) -> Result<Option<NetworkReach>, ProxyError> {
        Ok(self.snapshot().networks.reach(account, target))
    }
}

async fn watch(
    live: Weak<LiveRoutes>,
    authority: Arc<DirectoryAuthority>,
    directory: Arc<Directory>,
) {
    let mut changes = directory.changes();
    loop {
        changes.changed().await;
        let Some(routes) = live.upgrade() else { return };
        let seen = routes.revision();
        let dir = directory.clone();
        // Directory calls block: keep them off the async workers.
        let reloaded = tokio::task::spawn_blocking(move || {
            if dir.revision()? == seen {
                return Ok(None);
            }
            dir.route_snapshot().map(Some)
        })
        .await;
        match reloaded {
            Ok(Ok(Some(mut snapshot))) => {
                let revision = snapshot.revision;
                let count = snapshot.services.len();
                let removed_tunnels = authority.refresh(std::mem::take(&mut snapshot.tunnels));
                routes.swap(table(snapshot), removed_tunnels);
                tracing::debug!(revision, services = count, "routes reloaded");
            }
            Ok(Ok(None)) => {}
            // The last good table keeps serving; the next tick tries again.
            Ok(Err(err)) => tracing::warn!(error = %err, "reloading routes failed"),
            Err(err) => tracing::warn!(error = %err, "route reload task failed"),
        }
    }
}

fn table(snapshot: RouteSnapshot) -> Table {
    Table {
        revision: snapshot.revision,
        networks: Networks::new(snapshot.networks),
        routes: snapshot
            .services
            .iter()
            .map(|s| (s.service_id, service_route(s)))
            .collect(),
        names: snapshot
            .services
            .iter()
            .map(|s| (s.service_id, s.name.clone()))
            .collect(),
    }
}

/// What the router needs of a service.
pub fn service_route(s: &Service) -> ServiceRoute {
    ServiceRoute {
        service_id: s.service_id,
        tunnel_id: s.tunnel_id(),
        target: match s.target() {
            ServiceTarget::Hostname { name, resolvers } => {
                RouteTarget::Hostname { name, resolvers }
            }
            ServiceTarget::Ips { ipv4, ipv6 } => RouteTarget::Ips { ipv4, ipv6 },
        },
        http_port: s.http_port(),
        https_port: s.https_port(),
        tcp_port: s.tcp_port(),
        tls: RouteTls {
            cert_verification_mode: s.cert_verification_mode(),
            ca_certificate: s.ca_certificate().map(str::to_owned),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wvpc_directory::network_routes::NetworkRoute;

    const MINE: &str = "0123456789abcdef0123456789abcdef";
    const THEIRS: &str = "fedcba9876543210fedcba9876543210";

    fn networks() -> (Networks, Uuid, Uuid, Uuid, Uuid, Uuid) {
        let (my_default, my_lab, their_default) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let (my_tunnel, their_tunnel) = (Uuid::new_v4(), Uuid::new_v4());
        let snapshot = NetworkSnapshot {
            vnet_accounts: [
                (my_default, MINE.to_owned()),
                (my_lab, MINE.to_owned()),
                (their_default, THEIRS.to_owned()),
            ]
            .into(),
            default_vnets: [
                (MINE.to_owned(), my_default),
                (THEIRS.to_owned(), their_default),
            ]
            .into(),
            tunnel_accounts: [
                (my_tunnel, MINE.to_owned()),
                (their_tunnel, THEIRS.to_owned()),
            ]
            .into(),
            routes: vec![
                NetworkRoute {
                    vnet: my_default,
                    network: "10.0.0.0/8".parse().unwrap(),
                    tunnel: my_tunnel,
                },
                NetworkRoute {
                    vnet: their_default,
                    network: "10.0.0.0/8".parse().unwrap(),
                    tunnel: their_tunnel,
                },
            ],
        };
        (
            Networks::new(snapshot),
            my_default,
            my_lab,
            their_default,
            my_tunnel,
            their_tunnel,
        )
    }

    fn tunnel_for(reach: Option<NetworkReach>, ip: &str) -> Option<Uuid> {
        reach.expect("reachable").tunnel_for(ip.parse().unwrap())
    }

    #[test]
    fn a_tunnel_binding_reaches_only_the_accounts_own_tunnel() {
        let (networks, _, _, _, mine, theirs) = networks();
        assert!(matches!(
            networks.reach(MINE, &NetworkTarget::Tunnel(mine)),
            Some(NetworkReach::Tunnel(t)) if t == mine
        ));
        assert!(
            networks
                .reach(MINE, &NetworkTarget::Tunnel(theirs))
                .is_none()
        );
        assert!(
            networks
                .reach(MINE, &NetworkTarget::Tunnel(Uuid::new_v4()))
                .is_none()
        );
        assert!(
            networks
                .reach(THEIRS, &NetworkTarget::Tunnel(mine))
                .is_none()
        );
    }

    #[test]
    fn all_networks_is_the_accounts_default_virtual_network() {
        let (networks, my_default, ..) = networks();
        let mine = tunnel_for(
            networks.reach(MINE, &NetworkTarget::AllNetworks),
            "10.1.2.3",
        );
        let theirs = tunnel_for(
            networks.reach(THEIRS, &NetworkTarget::AllNetworks),
            "10.1.2.3",
        );
        assert_ne!(mine, theirs, "each account's own routes");
        assert!(mine.is_some() && theirs.is_some());
        assert!(matches!(
            networks.reach(MINE, &NetworkTarget::AllNetworks),
            Some(NetworkReach::VirtualNetwork { vnet, .. }) if vnet == my_default
        ));
        assert_eq!(
            tunnel_for(
                networks.reach(MINE, &NetworkTarget::AllNetworks),
                "192.0.2.1"
            ),
            None,
            "unrouted"
        );
        assert!(
            networks
                .reach("no such account", &NetworkTarget::AllNetworks)
                .is_none()
        );
    }

    #[test]
    fn a_virtual_network_is_reached_only_from_its_account_and_shares_one_table() {
        let (networks, _, my_lab, their_default, ..) = networks();
        let Some(NetworkReach::VirtualNetwork { vnet, routes }) =
            networks.reach(MINE, &NetworkTarget::VirtualNetwork(my_lab))
        else {
            panic!("my lab is reachable");
        };
        assert_eq!(vnet, my_lab);
        assert!(
            Arc::ptr_eq(&routes, &networks.routes),
            "built once per snapshot"
        );
        assert_eq!(
            routes.lookup(my_lab, "10.0.0.1".parse().unwrap()),
            None,
            "no routes in the lab"
        );
        assert!(
            networks
                .reach(MINE, &NetworkTarget::VirtualNetwork(their_default))
                .is_none()
        );
        assert!(
            networks
                .reach(MINE, &NetworkTarget::VirtualNetwork(Uuid::new_v4()))
                .is_none()
        );
    }

    /// The real thing: a directory's routes reach `network()` through `start`, and a change
    /// is followed.
    #[tokio::test]
    async fn the_directorys_routes_are_answered_and_followed() {
        let state = tempfile::tempdir().unwrap();
        let dir = Arc::new(Directory::open(state.path()).unwrap());
        let account = dir.account_id().to_owned();
        let (office, _) = dir.create_tunnel("office").unwrap();
        let route = |network: &str| wvpc_directory::RouteInput {
            network: Some(network.into()),
            tunnel_id: Some(office.id.to_string()),
            ..Default::default()
        };
        dir.create_network_route(&route("10.0.0.0/8")).unwrap();
        let (live, _authority, watcher) = LiveRoutes::start(dir.clone()).unwrap();
        let tunnel = |ip: &str| {
            live.network(&account, &NetworkTarget::AllNetworks)
                .unwrap()
                .expect("the default network")
                .tunnel_for(ip.parse().unwrap())
        };
        assert_eq!(tunnel("10.1.2.3"), Some(office.id));
        assert_eq!(tunnel("192.168.1.1"), None);
        assert!(matches!(
            live.network(&account, &NetworkTarget::Tunnel(office.id)).unwrap(),
            Some(NetworkReach::Tunnel(t)) if t == office.id
        ));
        assert!(
            live.network("another account", &NetworkTarget::Tunnel(office.id))
                .unwrap()
                .is_none()
        );

        dir.create_network_route(&route("192.168.0.0/16")).unwrap();
        // A hang guard only: the reload takes one poll.
        tokio::time::timeout(
            Duration::from_secs(10),
            live.caught_up(dir.revision().unwrap()),
        )
        .await
        .expect("the routes follow the directory");
        assert_eq!(tunnel("192.168.1.1"), Some(office.id));
        watcher.abort();
    }
}
