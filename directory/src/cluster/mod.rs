//! The cluster registry: which iris node holds which live tunnel connection, with a *lease*
//! per node so that a node that dies without saying goodbye is forgotten on its own.
//!
//! Every iris process [`ClusterRegistry::join`]s under its node name with a new random
//! incarnation and a lease that expires [`ClusterRegistry::lease_ttl`] after the store's own
//! clock reads it, and refreshes it every TTL/3 ([`ClusterRegistry::heartbeat`]). Connection
//! rows hang off the node row (deleted with it). Readers ([`ClusterRegistry::snapshot`],
//! [`ClusterRegistry::tunnel_connections`]) only trust rows whose node lease is unexpired by
//! the store's clock, so nothing depends on node clocks or on when the janitor
//! ([`ClusterRegistry::expire`], run by every node) deletes expired nodes. A heartbeat that
//! finds no row of its incarnation (expired, removed by another node's janitor during a
//! partition, or taken over by a process with the same name) reports
//! [`RegistryError::LeaseLost`]: the node joins again and publishes its connections again.
//!
//! Two backends behind the same API:
//! - SQLite ([`ClusterRegistry::sqlite`]): tables of their own in `<state>/wvpc.db`, shared by
//!   the processes of one machine; lease times from SQLite's clock; changes seen by polling
//!   a change counter that triggers bump.
//! - PostgreSQL ([`ClusterRegistry::postgres`]): the cluster's store; lease times from the
//!   server's `now()`; changes announced by a trigger (`pg_notify('wvpc_tunnels', …)`) and
//!   heard on a dedicated `LISTEN` connection, with a reload on every (re)connect.
//!
//! Both keep their own schema version (`cluster_schema_version`), apart from the directory's
//! migrations. The registry is a routing *hint*: a stale entry costs a refused relay hop, never
//! a wrong answer.

mod postgres;
mod sqlite;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

use crate::connections::LiveConnection;

pub use postgres::PgListenConfig;

/// How long a node's lease lasts without a heartbeat, by default (`--lease-ttl`).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// The shortest lease accepted: the heartbeat (TTL/3) must fit a store round trip.
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(300);
/// The notification channel of the PostgreSQL backend.
pub const NOTIFY_CHANNEL: &str = "wvpc_tunnels";
/// How often a change feed reports a change anyway, so that a lost notification (or a lease
/// that expired without a janitor deleting it yet) is caught up with.
pub const SAFETY_RELOAD: Duration = Duration::from_secs(30);

/// A node's membership: its name and the incarnation of this process. Heartbeats, publications
/// and withdrawals are refused once another incarnation owns the name or the lease expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The node's name, unique in the cluster.
    pub node_name: String,
    /// Random per [`ClusterRegistry::join`].
    pub incarnation: Uuid,
    /// Where other nodes reach this node's relay listener (`None`: not relaying).
    pub relay_addr: Option<SocketAddr>,
}

/// A live connection somewhere in the cluster: the row as the holding node published it
/// ([`LiveConnection::edge_node`] is the holder's name) and how to reach that node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterConnection {
    /// The connection (with the holding node in `edge_node`).
    #[serde(flatten)]
    pub connection: LiveConnection,
    /// The holding node's relay listener, if it has one.
    pub relay_addr: Option<SocketAddr>,
}

/// What can go wrong with the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// This incarnation no longer owns the node's row: join again and publish again.
    #[error(
        "iris node {node:?} lost its cluster lease (it expired while the store could not be \
         reached, another node's janitor removed it, or another process joined with the same \
         node name)"
    )]
    LeaseLost {
        /// The node name.
        node: String,
    },
    /// The store cannot be reached or did not answer in time; retry later.
    #[error("the cluster registry is unavailable: {0}")]
    Unavailable(String),
    /// The store's registry schema was written by a newer build.
    #[error(
        "the cluster registry's schema is version {found}, newer than this build supports \
         ({supported}); upgrade wvpc"
    )]
    SchemaTooNew {
        /// Version found.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// A stored row does not parse.
    #[error("corrupt cluster registry row ({what}): {detail}")]
    Corrupt {
        /// Which value.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A bad argument (node name, TTL).
    #[error("{0}")]
    Invalid(String),
}

impl From<rusqlite::Error> for RegistryError {
    fn from(err: rusqlite::Error) -> Self {
        RegistryError::Unavailable(format!("SQLite: {err}"))
    }
}

impl From<tokio_postgres::Error> for RegistryError {
    fn from(err: tokio_postgres::Error) -> Self {
        RegistryError::Unavailable(format!("PostgreSQL: {err}"))
    }
}

impl From<deadpool_postgres::PoolError> for RegistryError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        RegistryError::Unavailable(format!("PostgreSQL pool: {err}"))
    }
}

enum Backend {
    Sqlite(sqlite::SqliteRegistry),
    Postgres(postgres::PgRegistry),
}

/// The cluster registry (see the module docs). Cheap to share behind an `Arc`; every call is
/// bounded by [`ClusterRegistry::call_timeout`], after which it fails as
/// [`RegistryError::Unavailable`].
pub struct ClusterRegistry {
    backend: Backend,
    ttl: Duration,
    changes: watch::Receiver<u64>,
    /// Follows the store's changes; ends with the registry.
    feed: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ClusterRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        };
        f.debug_struct("ClusterRegistry")
            .field("backend", &kind)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Drop for ClusterRegistry {
    fn drop(&mut self) {
        self.feed.abort();
    }
}

fn check_ttl(ttl: Duration) -> Result<(), RegistryError> {
    if ttl < MIN_LEASE_TTL {
        return Err(RegistryError::Invalid(format!(
            "the lease TTL {ttl:?} is shorter than the minimum {MIN_LEASE_TTL:?}"
        )));
    }
    if ttl > crate::cluster::MAX_LEASE_TTL {
        return Err(RegistryError::Invalid(format!(
            "the lease TTL {ttl:?} is longer than the maximum {MAX_LEASE_TTL:?}"
        )));
    }
    Ok(())
}

/// The longest lease accepted (a dead node would be trusted that long).
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);

impl ClusterRegistry {
    /// The registry in `<state_dir>/wvpc.db` (created if needed), for the processes of one
    /// machine. Must run inside a tokio runtime (it starts the change poll).
    pub async fn sqlite(state_dir: &Path, ttl: Duration) -> Result<Self, RegistryError> {
        check_ttl(ttl)?;
        std::fs::create_dir_all(state_dir).map_err(|err| {
            RegistryError::Unavailable(format!("creating {}: {err}", state_dir.display()))
        })?;
        let path = state_dir.join(crate::DB_FILE_NAME);
        let registry = tokio::task::spawn_blocking(move || sqlite::SqliteRegistry::open(&path))
            .await
            .map_err(|err| RegistryError::Unavailable(format!("opening SQLite: {err}")))??;
        let (tx, changes) = watch::channel(0);
        let feed = tokio::spawn(registry.clone().follow(tx));
        Ok(Self {
            backend: Backend::Sqlite(registry),
            ttl,
            changes,
            feed,
        })
    }

    /// The registry in the PostgreSQL database of `pool` (its tables created or migrated under
    /// an advisory lock), with changes heard on a connection of its own made from `listen`.
    pub async fn postgres(
        pool: deadpool_postgres::Pool,
        listen: PgListenConfig,
        ttl: Duration,
    ) -> Result<Self, RegistryError> {
        check_ttl(ttl)?;
        let registry = postgres::PgRegistry::open(pool).await?;
        let (tx, changes) = watch::channel(0);
        let feed = tokio::spawn(listen.follow(tx));
        Ok(Self {
            backend: Backend::Postgres(registry),
            ttl,
            changes,
            feed,
        })
    }

    /// [`ClusterRegistry::postgres`] from a `postgres://` URL, without TLS (tests and trusted
    /// networks).
    pub async fn postgres_url(url: &str, ttl: Duration) -> Result<Self, RegistryError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|err| RegistryError::Invalid(format!("invalid PostgreSQL URL: {err}")))?;
        Self::postgres_with(config, tokio_postgres::NoTls, ttl).await
    }

    /// The registry beside `directory`: in its PostgreSQL database (with the same TLS
    /// settings, on a small pool of the registry's own, so heartbeats never queue behind
    /// directory reads), or in the SQLite file of `state_dir` when the directory is SQLite.
    pub async fn beside(
        directory: &crate::Directory,
        state_dir: &Path,
        ttl: Duration,
    ) -> Result<Self, RegistryError> {
        let Some(store) = directory.postgres() else {
            return Self::sqlite(state_dir, ttl).await;
        };
        let location = store.location();
        let tls = location
            .tls_config()
            .map_err(|err| RegistryError::Invalid(format!("{}: {err}", location.label)))?;
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
        Self::postgres_with(location.config.clone(), tls, ttl).await
    }

    async fn postgres_with<T>(
        config: tokio_postgres::Config,
        tls: T,
        ttl: Duration,
    ) -> Result<Self, RegistryError>
    where
        T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>
            + Clone
            + Send
            + Sync
            + 'static,
        T::Stream: Sync + Send + 'static,
        T::TlsConnect: Sync + Send,
        <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
    {
        let mut pool_config = config.clone();
        pool_config.connect_timeout(crate::STORE_WAIT);
        let manager = deadpool_postgres::Manager::new(pool_config, tls.clone());
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(4)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(crate::STORE_WAIT))
            .create_timeout(Some(crate::STORE_WAIT))
            .build()
            .map_err(|err| RegistryError::Invalid(format!("PostgreSQL pool: {err}")))?;
        Self::postgres(pool, PgListenConfig::new(config, tls), ttl).await
    }

    /// How long a lease lasts without a heartbeat.
    pub fn lease_ttl(&self) -> Duration {
        self.ttl
    }

    /// How often a node should heartbeat: a third of the TTL, so two beats may fail.
    pub fn heartbeat_interval(&self) -> Duration {
        self.ttl / 3
    }

    /// How long one call may take before it counts as the store being unavailable.
    pub fn call_timeout(&self) -> Duration {
        self.heartbeat_interval().max(Duration::from_secs(1))
    }

    /// Joins as `node_name` with a new incarnation: the node's row is (re)written with a
    /// fresh lease and the connections a previous run of the node left are deleted.
    pub async fn join(
        &self,
        node_name: &str,
        relay_addr: Option<SocketAddr>,
    ) -> Result<Lease, RegistryError> {
        if node_name.is_empty() || node_name.len() > 255 || node_name.contains(char::is_control) {
            return Err(RegistryError::Invalid(format!(
                "invalid node name {node_name:?}: 1 to 255 characters, no control characters"
            )));
        }
        let lease = Lease {
            node_name: node_name.to_owned(),
            incarnation: Uuid::new_v4(),
            relay_addr,
        };
        let ttl = self.ttl;
        self.bounded(async {
            match &self.backend {
                Backend::Sqlite(b) => b.run(move |c| sqlite::join(c, &lease, ttl)).await,
                Backend::Postgres(b) => b.join(&lease, ttl).await.map(|()| lease),
            }
        })
        .await
    }

    /// Extends the lease; [`RegistryError::LeaseLost`] when this incarnation no longer owns
    /// an unexpired row.
    pub async fn heartbeat(&self, lease: &Lease) -> Result<(), RegistryError> {
        let ttl = self.ttl;
        let owned = self
            .bounded(async {
                match &self.backend {
                    Backend::Sqlite(b) => {
                        let lease = lease.clone();
                        b.run(move |c| sqlite::heartbeat(c, &lease, ttl)).await
                    }
                    Backend::Postgres(b) => b.heartbeat(lease, ttl).await,
                }
            })
            .await?;
        lost_unless(owned, lease)
    }

    /// Records (or replaces) one live connection of the node.
    pub async fn publish(
        &self,
        lease: &Lease,
        connection: &LiveConnection,
    ) -> Result<(), RegistryError> {
        let owned = self
            .bounded(async {
                match &self.backend {
                    Backend::Sqlite(b) => {
                        let (lease, connection) = (lease.clone(), connection.clone());
                        b.run(move |c| {
                            sqlite::publish(c, &lease, std::slice::from_ref(&connection), false)
                        })
                        .await
                    }
                    Backend::Postgres(b) => {
                        b.publish(lease, std::slice::from_ref(connection), false)
                            .await
                    }
                }
            })
            .await?;
        lost_unless(owned, lease)
    }

    /// Makes `live` the whole set of the node's connections, in one transaction (after a
    /// join, or when records could not be written).
    pub async fn replace(
        &self,
        lease: &Lease,
        live: &[LiveConnection],
    ) -> Result<(), RegistryError> {
        let owned = self
            .bounded(async {
                match &self.backend {
                    Backend::Sqlite(b) => {
                        let (lease, live) = (lease.clone(), live.to_vec());
                        b.run(move |c| sqlite::publish(c, &lease, &live, true))
                            .await
                    }
                    Backend::Postgres(b) => b.publish(lease, live, true).await,
                }
            })
            .await?;
        lost_unless(owned, lease)
    }

    /// Removes a connection that closed; `false` if the node had no such row.
    pub async fn withdraw(
        &self,
        lease: &Lease,
        connection_id: Uuid,
    ) -> Result<bool, RegistryError> {
        self.bounded(async {
            match &self.backend {
                Backend::Sqlite(b) => {
                    let node = lease.node_name.clone();
                    b.run(move |c| sqlite::withdraw(c, &node, connection_id))
                        .await
                }
                Backend::Postgres(b) => b.withdraw(&lease.node_name, connection_id).await,
            }
        })
        .await
    }

    /// Leaves the cluster (a graceful stop): the node's row and its connections go at once
    /// instead of at the lease's end. Only this incarnation's row is removed.
    pub async fn leave(&self, lease: &Lease) -> Result<(), RegistryError> {
        self.bounded(async {
            match &self.backend {
                Backend::Sqlite(b) => {
                    let lease = lease.clone();
                    b.run(move |c| sqlite::leave(c, &lease)).await
                }
                Backend::Postgres(b) => b.leave(lease).await,
            }
        })
        .await
    }

    /// The janitor: deletes nodes whose lease expired by the store's clock, with their
    /// connections. Returns how many nodes went. Idempotent; every node runs it.
    pub async fn expire(&self) -> Result<usize, RegistryError> {
        self.bounded(async {
            match &self.backend {
                Backend::Sqlite(b) => b.run(sqlite::expire).await,
                Backend::Postgres(b) => b.expire().await,
            }
        })
        .await
    }

    /// Every live connection of the cluster (nodes with an unexpired lease), oldest first.
    pub async fn snapshot(&self) -> Result<Vec<ClusterConnection>, RegistryError> {
        self.read(None).await
    }

    /// The live connections of one tunnel across the cluster, oldest first.
    pub async fn tunnel_connections(
        &self,
        tunnel_id: Uuid,
    ) -> Result<Vec<ClusterConnection>, RegistryError> {
        self.read(Some(tunnel_id)).await
    }

    async fn read(&self, tunnel: Option<Uuid>) -> Result<Vec<ClusterConnection>, RegistryError> {
        self.bounded(async {
            match &self.backend {
                Backend::Sqlite(b) => b.read_only(move |c| sqlite::connections(c, tunnel)).await,
                Backend::Postgres(b) => b.connections(tunnel).await,
            }
        })
        .await
    }

    /// A counter that moves when the registry may have changed (a connection or node came or
    /// went, the change feed reconnected, or every [`SAFETY_RELOAD`]). Followers reload with
    /// [`ClusterRegistry::snapshot`] when it moves; changes come in bursts, so debounce.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        let limit = self.call_timeout();
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(RegistryError::Unavailable(format!(
                "no answer within {limit:?}"
            )))
        })
    }
}

fn lost_unless(owned: bool, lease: &Lease) -> Result<(), RegistryError> {
    if owned {
        Ok(())
    } else {
        Err(RegistryError::LeaseLost {
            node: lease.node_name.clone(),
        })
    }
}

/// A stored id that must be a UUID.
fn parse_uuid(what: &str, text: &str) -> Result<Uuid, RegistryError> {
    Uuid::parse_str(text).map_err(|_| RegistryError::Corrupt {
        what: what.to_owned(),
        detail: format!("{text:?} is not a UUID"),
    })
}

/// A stored relay address: `None` when absent; unparsable ones are corrupt.
fn parse_relay_addr(node: &str, text: Option<String>) -> Result<Option<SocketAddr>, RegistryError> {
    text.filter(|t| !t.is_empty())
        .map(|t| {
            t.parse().map_err(|_| RegistryError::Corrupt {
                what: format!("relay address of node {node:?}"),
                detail: format!("{t:?} is not an IP:PORT"),
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests;
