//! The PostgreSQL backend of the cluster registry: `cluster_nodes` and `cluster_connections`
//! (versioned in `cluster_schema_version`, migrated under an advisory lock so that nodes
//! starting together do not race), leases on the server's `now()`, and a row trigger that
//! announces every added or removed connection (and node) with
//! `pg_notify('wvpc_tunnels', '<tunnel id> <node>')`.
//!
//! [`PgListenConfig::follow`] holds a connection of its own (pooled connections drop
//! notifications) with `LISTEN wvpc_tunnels`, pings it so that a dead peer is noticed, and
//! reconnects with backoff; every (re)connect counts as a change, because notifications sent
//! while it was away are lost.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, watch};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Socket};
use uuid::Uuid;

use super::{
    ClusterConnection, Lease, NOTIFY_CHANNEL, RegistryError, SAFETY_RELOAD, parse_relay_addr,
    parse_uuid,
};
use crate::connections::LiveConnection;

/// The advisory lock key held while migrating (`wvpc` + `clst` in ASCII).
const MIGRATION_LOCK: i64 = 0x7776_7063_636c_7374;

/// How often the listening connection is pinged (a partition shows as a failed ping).
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// Longest pause between reconnection attempts of the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Registry schema migrations; migration `i` brings the version from `i` to `i + 1`.
/// Append only.
const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE cluster_nodes (
        node_name     text PRIMARY KEY,
        incarnation   uuid NOT NULL,
        relay_addr    text,
        started_at    timestamptz NOT NULL DEFAULT now(),
        lease_expires timestamptz NOT NULL
    );

    CREATE TABLE cluster_connections (
        connection_id uuid PRIMARY KEY,
        tunnel_id     uuid NOT NULL,
        client_id     uuid NOT NULL,
        version       text NOT NULL,
        arch          text NOT NULL,
        conn_index    smallint NOT NULL,
        remote_addr   text NOT NULL,
        since         text NOT NULL,
        node_name     text NOT NULL REFERENCES cluster_nodes (node_name) ON DELETE CASCADE
    );

    CREATE INDEX cluster_connections_by_tunnel ON cluster_connections (tunnel_id);
    CREATE INDEX cluster_connections_by_node ON cluster_connections (node_name);

    CREATE FUNCTION cluster_connection_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('wvpc_tunnels', OLD.tunnel_id::text || ' ' || OLD.node_name);
        ELSE
            PERFORM pg_notify('wvpc_tunnels', NEW.tunnel_id::text || ' ' || NEW.node_name);
        END IF;
        RETURN NULL;
    END $$;

    CREATE TRIGGER cluster_connection_changed
        AFTER INSERT OR DELETE ON cluster_connections
        FOR EACH ROW EXECUTE FUNCTION cluster_connection_notify();

    CREATE FUNCTION cluster_node_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('wvpc_tunnels', '- ' || OLD.node_name);
        ELSE
            PERFORM pg_notify('wvpc_tunnels', '- ' || NEW.node_name);
        END IF;
        RETURN NULL;
    END $$;

    CREATE TRIGGER cluster_node_changed
        AFTER INSERT OR DELETE OR UPDATE OF incarnation, relay_addr ON cluster_nodes
        FOR EACH ROW EXECUTE FUNCTION cluster_node_notify();
    "#];

/// The pooled side: every call but the change feed.
pub(super) struct PgRegistry {
    pool: Pool,
}

fn secs(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

impl PgRegistry {
    /// Checks the connection and migrates the registry's tables.
    pub(super) async fn open(pool: Pool) -> Result<Self, RegistryError> {
        let mut client = pool.get().await?;
        let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        let tx = client.transaction().await?;
        // Held until commit: nodes starting together migrate one at a time.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS cluster_schema_version (version bigint NOT NULL)",
        )
        .await?;
        let found: i64 = tx
            .query_opt("SELECT version FROM cluster_schema_version", &[])
            .await?
            .map_or(0, |row| row.get(0));
        if found > supported {
            return Err(RegistryError::SchemaTooNew { found, supported });
        }
        for migration in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(0)) {
            tx.batch_execute(migration).await?;
        }
        if found < supported {
            tx.execute("DELETE FROM cluster_schema_version", &[])
                .await?;
            tx.execute(
                "INSERT INTO cluster_schema_version (version) VALUES ($1)",
                &[&supported],
            )
            .await?;
            tracing::debug!(
                version = supported,
                "cluster registry schema migrated (PostgreSQL)"
            );
        }
        tx.commit().await?;
        drop(client);
        Ok(Self { pool })
    }

    pub(super) async fn join(&self, lease: &Lease, ttl: Duration) -> Result<(), RegistryError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO cluster_nodes (node_name, incarnation, relay_addr, started_at, lease_expires)
             VALUES ($1, $2::text::uuid, $3, now(), now() + make_interval(secs => $4))
             ON CONFLICT (node_name) DO UPDATE SET incarnation = EXCLUDED.incarnation,
                 relay_addr = EXCLUDED.relay_addr, started_at = EXCLUDED.started_at,
                 lease_expires = EXCLUDED.lease_expires",
            &[
                &lease.node_name,
                &lease.incarnation.to_string(),
                &lease.relay_addr.map(|a| a.to_string()),
                &secs(ttl),
            ],
        )
        .await?;
        // What a previous run of the node left: those connections died with it.
        tx.execute(
            "DELETE FROM cluster_connections WHERE node_name = $1",
            &[&lease.node_name],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn heartbeat(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<bool, RegistryError> {
        let client = self.pool.get().await?;
        let updated = client
            .execute(
                "UPDATE cluster_nodes SET lease_expires = now() + make_interval(secs => $3)
                 WHERE node_name = $1 AND incarnation = $2::text::uuid AND lease_expires > now()",
                &[&lease.node_name, &lease.incarnation.to_string(), &secs(ttl)],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Inserts `live` for the node (after deleting its other rows when `replace`); `false`
    /// when the lease is not the node's any more (nothing written).
    pub(super) async fn publish(
        &self,
        lease: &Lease,
        live: &[LiveConnection],
        replace: bool,
    ) -> Result<bool, RegistryError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Locks the node row: a janitor's delete waits for this transaction, or went first.
        let owned = tx
            .query_opt(
                "SELECT 1 FROM cluster_nodes WHERE node_name = $1 AND incarnation = $2::text::uuid
                 FOR UPDATE",
                &[&lease.node_name, &lease.incarnation.to_string()],
            )
            .await?
            .is_some();
        if !owned {
            return Ok(false);
        }
        if replace {
            tx.execute(
                "DELETE FROM cluster_connections WHERE node_name = $1",
                &[&lease.node_name],
            )
            .await?;
        }
        if !live.is_empty() {
            let insert = tx
                .prepare(
                    "INSERT INTO cluster_connections
                         (connection_id, tunnel_id, client_id, version, arch, conn_index,
                          remote_addr, since, node_name)
                     VALUES ($1::text::uuid, $2::text::uuid, $3::text::uuid, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (connection_id) DO UPDATE SET tunnel_id = EXCLUDED.tunnel_id,
                         client_id = EXCLUDED.client_id, version = EXCLUDED.version,
                         arch = EXCLUDED.arch, conn_index = EXCLUDED.conn_index,
                         remote_addr = EXCLUDED.remote_addr, since = EXCLUDED.since,
                         node_name = EXCLUDED.node_name",
                )
                .await?;
            for c in live {
                tx.execute(
                    &insert,
                    &[
                        &c.connection_id.to_string(),
                        &c.tunnel_id.to_string(),
                        &c.client_id.to_string(),
                        &c.version,
                        &c.arch,
                        &i16::from(c.conn_index),
                        &c.remote_addr,
                        &c.since,
                        &lease.node_name,
                    ],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn withdraw(
        &self,
        node: &str,
        connection_id: Uuid,
    ) -> Result<bool, RegistryError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "DELETE FROM cluster_connections WHERE connection_id = $1::text::uuid AND node_name = $2",
                &[&connection_id.to_string(), &node],
            )
            .await?
            > 0)
    }

    pub(super) async fn leave(&self, lease: &Lease) -> Result<(), RegistryError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "DELETE FROM cluster_nodes WHERE node_name = $1 AND incarnation = $2::text::uuid",
                &[&lease.node_name, &lease.incarnation.to_string()],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn expire(&self) -> Result<usize, RegistryError> {
        let client = self.pool.get().await?;
        let deleted = client
            .execute("DELETE FROM cluster_nodes WHERE lease_expires < now()", &[])
            .await?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    pub(super) async fn connections(
        &self,
        tunnel: Option<Uuid>,
    ) -> Result<Vec<ClusterConnection>, RegistryError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT c.connection_id::text, c.tunnel_id::text, c.client_id::text, c.version,
                        c.arch, c.conn_index, c.node_name, c.remote_addr, c.since, n.relay_addr
                 FROM cluster_connections c JOIN cluster_nodes n ON n.node_name = c.node_name
                 WHERE n.lease_expires > now()
                   AND ($1::text IS NULL OR c.tunnel_id = $1::text::uuid)
                 ORDER BY c.since, c.conn_index, c.connection_id",
                &[&tunnel.map(|t| t.to_string())],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let node: String = row.try_get(6)?;
                let index: i16 = row.try_get(5)?;
                Ok(ClusterConnection {
                    relay_addr: parse_relay_addr(&node, row.try_get(9)?)?,
                    connection: LiveConnection {
                        connection_id: parse_uuid(
                            "cluster_connections.connection_id",
                            row.try_get(0)?,
                        )?,
                        tunnel_id: parse_uuid("cluster_connections.tunnel_id", row.try_get(1)?)?,
                        client_id: parse_uuid("cluster_connections.client_id", row.try_get(2)?)?,
                        version: row.try_get(3)?,
                        arch: row.try_get(4)?,
                        conn_index: u8::try_from(index).unwrap_or(u8::MAX),
                        edge_node: node,
                        remote_addr: row.try_get(7)?,
                        since: row.try_get(8)?,
                    },
                })
            })
            .collect()
    }
}

type Connector = Arc<
    dyn Fn() -> std::pin::Pin<
            Box<dyn Future<Output = Result<Listening, tokio_postgres::Error>> + Send>,
        > + Send
        + Sync,
>;

/// A connected listener: the client (for `LISTEN` and pings) and the notifications its
/// connection task forwards (the channel closes when the connection ends).
struct Listening {
    client: tokio_postgres::Client,
    notifications: mpsc::UnboundedReceiver<()>,
}

/// How the change feed opens its own connection to the store (TLS included).
#[derive(Clone)]
pub struct PgListenConfig {
    connect: Connector,
}

impl std::fmt::Debug for PgListenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgListenConfig").finish_non_exhaustive()
    }
}

impl PgListenConfig {
    /// Connects with `config` through `tls` (e.g. `tokio_postgres::NoTls`, or a
    /// `tokio_postgres_rustls::MakeRustlsConnect`).
    pub fn new<T>(config: tokio_postgres::Config, tls: T) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let mut config = config;
        // A silent peer is noticed by the pings too; keepalives cover a half-open socket.
        config.keepalives(true);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let connect: Connector = Arc::new(move || {
            let (config, tls) = (config.clone(), tls.clone());
            Box::pin(async move {
                let (client, mut connection) = config.connect(tls).await?;
                let (tx, notifications) = mpsc::unbounded_channel();
                tokio::spawn(async move {
                    loop {
                        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(AsyncMessage::Notification(_))) => {
                                if tx.send(()).is_err() {
                                    return;
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(err)) => {
                                tracing::debug!(error = %err, "cluster registry listener connection ended");
                                return;
                            }
                            None => return,
                        }
                    }
                });
                Ok(Listening {
                    client,
                    notifications,
                })
            })
        });
        Self { connect }
    }

    /// Listens until `changes` has no receiver left, moving it on every notification, on
    /// every (re)connect and every [`SAFETY_RELOAD`].
    pub(super) async fn follow(self, changes: watch::Sender<u64>) {
        let mut backoff = Duration::from_millis(100);
        let mut reachable = true;
        loop {
            match self.listen(&changes, &mut reachable, &mut backoff).await {
                Ok(()) => return,
                Err(err) => {
                    if reachable {
                        tracing::warn!(error = %err, "cluster registry change feed lost its connection; reconnecting (peers are followed by periodic reloads meanwhile)");
                        reachable = false;
                    }
                }
            }
            if changes.is_closed() {
                return;
            }
            // Reloads go on while the listener is away (they fail or succeed on their own).
            changes.send_modify(|n| *n += 1);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life; `Ok` when nobody follows any more.
    async fn listen(
        &self,
        changes: &watch::Sender<u64>,
        reachable: &mut bool,
        backoff: &mut Duration,
    ) -> Result<(), RegistryError> {
        let mut listening = (self.connect)().await?;
        listening
            .client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await?;
        *backoff = Duration::from_millis(100);
        if !*reachable {
            tracing::info!("cluster registry change feed connected again");
            *reachable = true;
        }
        // Whatever happened while not listening.
        changes.send_modify(|n| *n += 1);
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.reset();
        let mut safety = tokio::time::interval(SAFETY_RELOAD);
        safety.reset();
        loop {
            tokio::select! {
                got = listening.notifications.recv() => match got {
                    Some(()) => changes.send_modify(|n| *n += 1),
                    None => return Err(RegistryError::Unavailable("the listening connection closed".into())),
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(PING_INTERVAL, listening.client.simple_query("")).await;
                    match pong {
                        Ok(Ok(_)) => {}
                        Ok(Err(err)) => return Err(err.into()),
                        Err(_) => return Err(RegistryError::Unavailable(format!("no answer to a ping within {PING_INTERVAL:?}"))),
                    }
                }
                _ = safety.tick() => changes.send_modify(|n| *n += 1),
                () = changes.closed() => return Ok(()),
            }
        }
    }
}
