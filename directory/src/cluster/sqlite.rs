//! The SQLite backend of the cluster registry: tables of its own (`cluster_nodes`,
//! `cluster_connections`, `cluster_changes`, versioned in `cluster_schema_version`) in the
//! state directory's `wvpc.db`, so that the processes of one machine sharing `--state` see
//! each other. Lease times are SQLite's `unixepoch('subsec')`, the one clock every process
//! shares; triggers bump a change counter that [`SqliteRegistry::follow`] polls.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::watch;
use uuid::Uuid;

use super::{ClusterConnection, Lease, RegistryError, SAFETY_RELOAD, parse_relay_addr, parse_uuid};
use crate::connections::LiveConnection;

/// How often the change counter is polled.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long a writer waits for the file's write lock (the directory's writers share it).
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Registry schema migrations; migration `i` brings the version from `i` to `i + 1`.
/// Append only.
const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE cluster_nodes (
        node_name     TEXT PRIMARY KEY,
        incarnation   TEXT NOT NULL,
        relay_addr    TEXT,
        started_at    REAL NOT NULL,   -- unixepoch('subsec') of SQLite
        lease_expires REAL NOT NULL
    ) STRICT;

    CREATE TABLE cluster_connections (
        connection_id TEXT PRIMARY KEY,
        tunnel_id     TEXT NOT NULL,
        client_id     TEXT NOT NULL,
        version       TEXT NOT NULL,
        arch          TEXT NOT NULL,
        conn_index    INTEGER NOT NULL,
        remote_addr   TEXT NOT NULL,
        since         TEXT NOT NULL,
        node_name     TEXT NOT NULL REFERENCES cluster_nodes (node_name) ON DELETE CASCADE
    ) STRICT;

    CREATE INDEX cluster_connections_by_tunnel ON cluster_connections (tunnel_id);
    CREATE INDEX cluster_connections_by_node ON cluster_connections (node_name);

    CREATE TABLE cluster_changes (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        counter INTEGER NOT NULL
    ) STRICT;
    INSERT INTO cluster_changes (id, counter) VALUES (1, 0);

    CREATE TRIGGER cluster_connection_added AFTER INSERT ON cluster_connections
    BEGIN UPDATE cluster_changes SET counter = counter + 1; END;
    CREATE TRIGGER cluster_connection_removed AFTER DELETE ON cluster_connections
    BEGIN UPDATE cluster_changes SET counter = counter + 1; END;
    CREATE TRIGGER cluster_node_added AFTER INSERT ON cluster_nodes
    BEGIN UPDATE cluster_changes SET counter = counter + 1; END;
    CREATE TRIGGER cluster_node_replaced AFTER UPDATE OF incarnation, relay_addr ON cluster_nodes
    BEGIN UPDATE cluster_changes SET counter = counter + 1; END;
    CREATE TRIGGER cluster_node_removed AFTER DELETE ON cluster_nodes
    BEGIN UPDATE cluster_changes SET counter = counter + 1; END;
    "#];

/// Two connections to the file: writes, and reads (which never wait behind a writer of this
/// process). Calls run on blocking threads.
#[derive(Clone)]
pub(super) struct SqliteRegistry {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
}

fn connect(path: &Path) -> Result<Connection, RegistryError> {
    let conn = Connection::open(path)
        .map_err(|err| RegistryError::Unavailable(format!("opening {}: {err}", path.display())))?;
    conn.busy_timeout(LOCK_WAIT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // The rows are live state, rebuilt by every node after a crash: no fsync per change.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

impl SqliteRegistry {
    /// Opens the file (WAL, as the directory sets it) and migrates the registry's tables.
    pub(super) fn open(path: &Path) -> Result<Self, RegistryError> {
        let mut writer = connect(path)?;
        let _mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        migrate(&mut writer)?;
        let reader = connect(path)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Runs `f` on the writing connection, on a blocking thread.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let conn = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            f(&mut conn.lock().unwrap_or_else(PoisonError::into_inner))
        })
        .await
        .map_err(|err| RegistryError::Unavailable(format!("SQLite call failed: {err}")))?
    }

    /// Runs `f` on the reading connection, on a blocking thread.
    pub(super) async fn read_only<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let conn = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&conn.lock().unwrap_or_else(PoisonError::into_inner)))
            .await
            .map_err(|err| RegistryError::Unavailable(format!("SQLite call failed: {err}")))?
    }

    /// Polls the change counter every [`POLL_INTERVAL`] and moves `changes` when it moved
    /// (and every [`SAFETY_RELOAD`]: a lease may expire with no write at all).
    pub(super) async fn follow(self, changes: watch::Sender<u64>) {
        let mut seen: Option<i64> = None;
        let mut last_bump = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let counter = self
                .read_only(|c| {
                    Ok(
                        c.query_row("SELECT counter FROM cluster_changes", [], |row| {
                            row.get::<_, i64>(0)
                        })?,
                    )
                })
                .await;
            let moved = match counter {
                Ok(counter) => seen.replace(counter) != Some(counter),
                Err(err) => {
                    tracing::debug!(error = %err, "cannot read the cluster registry's change counter");
                    false
                }
            };
            if moved || last_bump.elapsed() >= SAFETY_RELOAD {
                last_bump = tokio::time::Instant::now();
                changes.send_modify(|n| *n += 1);
            }
            if changes.is_closed() {
                return;
            }
        }
    }
}

fn migrate(conn: &mut Connection) -> Result<(), RegistryError> {
    let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    // Up to date: only read (no write lock, so opening never waits behind a writer).
    let current: Option<i64> = conn
        .query_row("SELECT version FROM cluster_schema_version", [], |row| {
            row.get(0)
        })
        .optional()
        .unwrap_or(None);
    if current == Some(supported) {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS cluster_schema_version (version INTEGER NOT NULL) STRICT",
    )?;
    let found: i64 = tx
        .query_row("SELECT version FROM cluster_schema_version", [], |row| {
            row.get(0)
        })
        .optional()?
        .unwrap_or(0);
    if found > supported {
        return Err(RegistryError::SchemaTooNew { found, supported });
    }
    for migration in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(0)) {
        tx.execute_batch(migration)?;
    }
    if found < supported {
        tx.execute("DELETE FROM cluster_schema_version", [])?;
        tx.execute(
            "INSERT INTO cluster_schema_version (version) VALUES (?1)",
            [supported],
        )?;
        tracing::debug!(
            version = supported,
            "cluster registry schema migrated (SQLite)"
        );
    }
    tx.commit()?;
    Ok(())
}

fn ttl_secs(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

pub(super) fn join(
    conn: &mut Connection,
    lease: &Lease,
    ttl: Duration,
) -> Result<Lease, RegistryError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO cluster_nodes (node_name, incarnation, relay_addr, started_at, lease_expires)
         VALUES (?1, ?2, ?3, unixepoch('subsec'), unixepoch('subsec') + ?4)
         ON CONFLICT (node_name) DO UPDATE SET incarnation = ?2, relay_addr = ?3,
             started_at = unixepoch('subsec'), lease_expires = unixepoch('subsec') + ?4",
        params![
            lease.node_name,
            lease.incarnation.to_string(),
            lease.relay_addr.map(|a| a.to_string()),
            ttl_secs(ttl)
        ],
    )?;
    // What a previous run of the node left: those connections died with it.
    tx.execute(
        "DELETE FROM cluster_connections WHERE node_name = ?1",
        [&lease.node_name],
    )?;
    tx.commit()?;
    Ok(lease.clone())
}

pub(super) fn heartbeat(
    conn: &mut Connection,
    lease: &Lease,
    ttl: Duration,
) -> Result<bool, RegistryError> {
    Ok(conn.execute(
        "UPDATE cluster_nodes SET lease_expires = unixepoch('subsec') + ?3
         WHERE node_name = ?1 AND incarnation = ?2 AND lease_expires > unixepoch('subsec')",
        params![
            lease.node_name,
            lease.incarnation.to_string(),
            ttl_secs(ttl)
        ],
    )? == 1)
}

/// Inserts `live` for the node (after deleting its other rows when `replace`); `false` when
/// the lease is not the node's any more (nothing written).
pub(super) fn publish(
    conn: &mut Connection,
    lease: &Lease,
    live: &[LiveConnection],
    replace: bool,
) -> Result<bool, RegistryError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let owned = tx
        .query_row(
            "SELECT 1 FROM cluster_nodes WHERE node_name = ?1 AND incarnation = ?2",
            params![lease.node_name, lease.incarnation.to_string()],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !owned {
        return Ok(false);
    }
    if replace {
        tx.execute(
            "DELETE FROM cluster_connections WHERE node_name = ?1",
            [&lease.node_name],
        )?;
    }
    {
        let mut insert = tx.prepare(
            "INSERT INTO cluster_connections
                 (connection_id, tunnel_id, client_id, version, arch, conn_index, remote_addr,
                  since, node_name)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (connection_id) DO UPDATE SET tunnel_id = ?2, client_id = ?3,
                 version = ?4, arch = ?5, conn_index = ?6, remote_addr = ?7, since = ?8,
                 node_name = ?9",
        )?;
        for c in live {
            insert.execute(params![
                c.connection_id.to_string(),
                c.tunnel_id.to_string(),
                c.client_id.to_string(),
                c.version,
                c.arch,
                i64::from(c.conn_index),
                c.remote_addr,
                c.since,
                lease.node_name,
            ])?;
        }
    }
    tx.commit()?;
    Ok(true)
}

pub(super) fn withdraw(
    conn: &mut Connection,
    node: &str,
    connection_id: Uuid,
) -> Result<bool, RegistryError> {
    Ok(conn.execute(
        "DELETE FROM cluster_connections WHERE connection_id = ?1 AND node_name = ?2",
        params![connection_id.to_string(), node],
    )? > 0)
}

pub(super) fn leave(conn: &mut Connection, lease: &Lease) -> Result<(), RegistryError> {
    conn.execute(
        "DELETE FROM cluster_nodes WHERE node_name = ?1 AND incarnation = ?2",
        params![lease.node_name, lease.incarnation.to_string()],
    )?;
    Ok(())
}

pub(super) fn expire(conn: &mut Connection) -> Result<usize, RegistryError> {
    Ok(conn.execute(
        "DELETE FROM cluster_nodes WHERE lease_expires < unixepoch('subsec')",
        [],
    )?)
}

pub(super) fn connections(
    conn: &Connection,
    tunnel: Option<Uuid>,
) -> Result<Vec<ClusterConnection>, RegistryError> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.connection_id, c.tunnel_id, c.client_id, c.version, c.arch, c.conn_index,
                c.node_name, c.remote_addr, c.since, n.relay_addr
         FROM cluster_connections c JOIN cluster_nodes n ON n.node_name = c.node_name
         WHERE n.lease_expires > unixepoch('subsec') AND (?1 IS NULL OR c.tunnel_id = ?1)
         ORDER BY c.since, c.conn_index, c.connection_id",
    )?;
    let rows = stmt.query_map([tunnel.map(|t| t.to_string())], |row| {
        Ok((
            [
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ],
            row.get::<_, String>(3)?,
            row.get::<_, String>(4)?,
            row.get::<_, i64>(5)?,
            row.get::<_, String>(6)?,
            row.get::<_, String>(7)?,
            row.get::<_, String>(8)?,
            row.get::<_, Option<String>>(9)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let ([connection, tunnel, client], version, arch, index, node, remote_addr, since, relay) =
            row?;
        out.push(ClusterConnection {
            relay_addr: parse_relay_addr(&node, relay)?,
            connection: LiveConnection {
                connection_id: parse_uuid("cluster_connections.connection_id", &connection)?,
                tunnel_id: parse_uuid("cluster_connections.tunnel_id", &tunnel)?,
                client_id: parse_uuid("cluster_connections.client_id", &client)?,
                version,
                arch,
                conn_index: u8::try_from(index).unwrap_or(u8::MAX),
                edge_node: node,
                remote_addr,
                since,
            },
        });
    }
    Ok(out)
}
