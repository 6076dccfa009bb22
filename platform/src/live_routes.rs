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
//! Deletions are announced too ([`LiveRoutes::on_removed`]): iris closes a deleted service's
//! CONNECT pipes (so the pooled connections of every binding-worker end) and a deleted
//! tunnel's connections.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use uuid::Uuid;
use wvpc_directory::{Directory, DirectoryError, RouteSnapshot, Service, ServiceTarget};

use crate::authority::DirectoryAuthority;
use wvpc_errors::ProxyError;
use wvpc_iris::{RouteTarget, RouteTls, ServiceRoute, ServiceStore};

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
        routes: snapshot
            .services
            .iter()
            .map(|s| (s.service_id, service_route(s)))
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
