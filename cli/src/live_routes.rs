//! iris's routes as an in-memory snapshot of the directory, swapped atomically when it changes.
//!
//! A watcher polls the directory's change counter ([`Directory::revision`], bumped by every
//! committed write of any process sharing the database) every [`POLL_INTERVAL`]; when it
//! moved, it reads every service in one read transaction ([`Directory::route_snapshot`]) and
//! replaces the whole table behind one `Arc`. A CONNECT therefore never touches SQLite and
//! never sees half of a change; a deleted service is gone for new CONNECTs while streams
//! already routed keep going. Pooled origin connections of the binding-worker are renewed
//! after [`ROUTE_LEASE`], so steady traffic moves to a changed route too, between requests.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use uuid::Uuid;
use wvpc_directory::{Directory, DirectoryError, RouteSnapshot, Service, ServiceTarget};
use wvpc_errors::ProxyError;
use wvpc_iris::{RouteTarget, RouteTls, ServiceRoute, ServiceStore};

/// How often the watcher looks at the change counter.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

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

/// The routes iris reads, kept current by a watcher task.
#[derive(Debug)]
pub struct LiveRoutes {
    current: RwLock<Arc<Table>>,
}

impl LiveRoutes {
    /// Loads the current services and starts the watcher on the current tokio runtime. The
    /// watcher ends when the returned `LiveRoutes` is dropped or its handle aborted.
    pub fn start(
        directory: Arc<Directory>,
    ) -> Result<(Arc<LiveRoutes>, tokio::task::JoinHandle<()>), DirectoryError> {
        let live = Arc::new(LiveRoutes {
            current: RwLock::new(Arc::new(table(directory.route_snapshot()?))),
        });
        let watcher = tokio::spawn(watch(Arc::downgrade(&live), directory));
        Ok((live, watcher))
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

    fn swap(&self, table: Table) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(table);
    }
}

impl ServiceStore for LiveRoutes {
    fn route(&self, service_id: Uuid) -> Result<Option<ServiceRoute>, ProxyError> {
        Ok(self.snapshot().routes.get(&service_id).cloned())
    }
}

async fn watch(live: Weak<LiveRoutes>, directory: Arc<Directory>) {
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(routes) = live.upgrade() else { return };
        let seen = routes.revision();
        let dir = directory.clone();
        // SQLite calls block: keep them off the async workers.
        let reloaded = tokio::task::spawn_blocking(move || {
            if dir.revision()? == seen {
                return Ok(None);
            }
            dir.route_snapshot().map(Some)
        })
        .await;
        match reloaded {
            Ok(Ok(Some(snapshot))) => {
                let revision = snapshot.revision;
                let count = snapshot.services.len();
                routes.swap(table(snapshot));
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
