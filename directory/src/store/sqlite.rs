//! The SQLite backend: one file shared by every process of a machine.
//!
//! Every process (`wvpc dev`, each CLI command) opens its own connections to
//! `<state>/wvpc.db`. WAL lets readers proceed while one writer commits; `synchronous=FULL`
//! makes every commit durable. Writes run in `BEGIN IMMEDIATE` transactions, so a
//! read-then-write (limit checks, uniqueness) takes the write lock up front and cannot be
//! interleaved with another process.
//!
//! A writer waits at most [`WRITE_LOCK_WAIT`] for another connection's write lock (a backup,
//! a slow migration, a stuck writer), then fails with [`DirectoryError::Busy`]. The store
//! keeps reads and writes on two connections, so a writer waiting for the lock never holds
//! up reads in the same process, and opening a directory that is up to date takes no write
//! lock: reads keep being served while another connection holds the lock.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, TransactionBehavior};

use super::{Row, Tx, Value};
use crate::database::Mode;
use crate::error::DirectoryError;

/// How long a writer waits for another connection's write lock before failing with
/// [`DirectoryError::Busy`] (callers answer "directory busy" well within 5 s).
pub const WRITE_LOCK_WAIT: Duration = Duration::from_secs(4);

/// Schema migrations; migration `i` brings `user_version` from `i` to `i + 1`.
/// Append only: never edit a migration that has shipped.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: meta (account id, revision), tunnels, services.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;

    CREATE TABLE tunnels (
        tunnel_id  TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        name       TEXT NOT NULL,
        secret     BLOB NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (account_id, name)
    ) STRICT;

    CREATE TABLE services (
        service_id   TEXT PRIMARY KEY,
        account_id   TEXT NOT NULL,
        name         TEXT NOT NULL,
        type         TEXT NOT NULL CHECK (type IN ('http', 'tcp')),
        http_port    INTEGER CHECK (http_port BETWEEN 1 AND 65535),
        https_port   INTEGER CHECK (https_port BETWEEN 1 AND 65535),
        tcp_port     INTEGER CHECK (tcp_port BETWEEN 1 AND 65535),
        app_protocol TEXT,
        hostname     TEXT,
        resolver_ips TEXT, -- JSON array of strings, as given
        ipv4         TEXT,
        ipv6         TEXT,
        tunnel_id    TEXT NOT NULL REFERENCES tunnels (tunnel_id),
        cert_verification_mode TEXT,
        created_at   TEXT NOT NULL,
        updated_at   TEXT NOT NULL,
        CHECK ((hostname IS NULL) <> (ipv4 IS NULL AND ipv6 IS NULL))
    ) STRICT;

    CREATE INDEX services_by_account ON services (account_id, created_at);
    CREATE INDEX services_by_tunnel ON services (tunnel_id);
    "#,
    // 2: accounts (the local one is inserted on open) and API tokens, stored as SHA-256.
    r#"
    CREATE TABLE accounts (
        account_id TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        created_at TEXT NOT NULL
    ) STRICT;

    CREATE TABLE api_tokens (
        token_id      TEXT PRIMARY KEY,
        account_id    TEXT NOT NULL REFERENCES accounts (account_id),
        name          TEXT NOT NULL,
        role          TEXT NOT NULL CHECK (role IN ('read', 'bind', 'admin')),
        services      TEXT, -- JSON array of service ids the token may bind; NULL: all
        secret_sha256 BLOB NOT NULL UNIQUE,
        created_at    TEXT NOT NULL
    ) STRICT;
    "#,
    // 3: deployed scripts: the wasm module and its verified bindings.
    r#"
    CREATE TABLE scripts (
        account_id  TEXT NOT NULL REFERENCES accounts (account_id),
        name        TEXT NOT NULL,
        main_module TEXT NOT NULL,
        module      BLOB NOT NULL,
        bindings    TEXT NOT NULL, -- JSON array of {name, service_id}
        etag        TEXT NOT NULL,
        created_on  TEXT NOT NULL,
        modified_on TEXT NOT NULL,
        PRIMARY KEY (account_id, name)
    ) STRICT;
    "#,
    // 4: live tunnel connections as recorded by the iris nodes holding them (`tunnel info`).
    r#"
    CREATE TABLE tunnel_connections (
        connection_id TEXT PRIMARY KEY,
        tunnel_id     TEXT NOT NULL,
        client_id     TEXT NOT NULL,
        version       TEXT NOT NULL,
        arch          TEXT NOT NULL,
        conn_index    INTEGER NOT NULL,
        edge_node     TEXT NOT NULL,
        remote_addr   TEXT NOT NULL,
        since         TEXT NOT NULL
    ) STRICT;

    CREATE INDEX tunnel_connections_by_tunnel ON tunnel_connections (tunnel_id, since);
    "#,
    // 5: a private CA per service (tls_settings.ca_certificate, PEM).
    "ALTER TABLE services ADD COLUMN ca_certificate TEXT;",
    // 6: account subdomains; script versions over content-addressed modules; script routes.
    // The data of the old `scripts` table moves in `migrate_data` (see there).
    r#"
    ALTER TABLE accounts ADD COLUMN subdomain TEXT;

    ALTER TABLE scripts RENAME TO scripts_before_versions;

    CREATE TABLE modules (
        etag   TEXT PRIMARY KEY, -- SHA-256 of module, hex
        module BLOB NOT NULL
    ) STRICT;

    CREATE TABLE scripts (
        account_id     TEXT NOT NULL REFERENCES accounts (account_id),
        name           TEXT NOT NULL,
        active_version TEXT NOT NULL, -- a script_versions.version_id of this script
        workers_dev    INTEGER NOT NULL CHECK (workers_dev IN (0, 1)),
        created_on     TEXT NOT NULL,
        modified_on    TEXT NOT NULL,
        PRIMARY KEY (account_id, name)
    ) STRICT;

    CREATE TABLE script_versions (
        version_id  TEXT PRIMARY KEY,
        account_id  TEXT NOT NULL,
        script      TEXT NOT NULL,
        number      INTEGER NOT NULL CHECK (number > 0),
        etag        TEXT NOT NULL REFERENCES modules (etag),
        main_module TEXT NOT NULL,
        bindings    TEXT NOT NULL, -- JSON array of {type, name, service_id}
        limits      TEXT NOT NULL, -- JSON object of non-negative integers
        author      TEXT,          -- name of the deploying API token; NULL before versions
        created_on  TEXT NOT NULL,
        UNIQUE (account_id, script, number),
        FOREIGN KEY (account_id, script) REFERENCES scripts (account_id, name) ON DELETE CASCADE
    ) STRICT;

    CREATE INDEX script_versions_by_etag ON script_versions (etag);

    CREATE TABLE script_routes (
        pattern       TEXT PRIMARY KEY, -- normalized; one script per pattern, across accounts
        account_id    TEXT NOT NULL,
        script        TEXT NOT NULL,
        position      INTEGER NOT NULL,
        zone_name     TEXT,
        custom_domain INTEGER NOT NULL CHECK (custom_domain IN (0, 1)),
        FOREIGN KEY (account_id, script) REFERENCES scripts (account_id, name) ON DELETE CASCADE
    ) STRICT;

    CREATE INDEX script_routes_by_script ON script_routes (account_id, script, position);
    "#,
    // 7: what migration 6's data step left behind: the old table, and subdomains made unique.
    r#"
    DROP TABLE scripts_before_versions;
    CREATE UNIQUE INDEX accounts_by_subdomain ON accounts (subdomain);
    "#,
    // 8: live runtimes and their control listeners (`wvpc tail`).
    r#"
    CREATE TABLE runtime_nodes (
        node_id      TEXT PRIMARY KEY,
        control_addr TEXT NOT NULL,
        started_at   TEXT NOT NULL,
        seen_at_ms   INTEGER NOT NULL
    ) STRICT;
    "#,
    // 9: live tunnel connections moved to the cluster registry (`cluster_connections`).
    "DROP TABLE tunnel_connections;",
    // 10: virtual networks (each account gets its default in `migrate_data`) and the IP
    // routes inside them; a service may name a virtual network.
    r#"
    CREATE TABLE virtual_networks (
        vnet_id    TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts (account_id),
        name       TEXT NOT NULL,
        comment    TEXT NOT NULL,
        is_default INTEGER NOT NULL CHECK (is_default IN (0, 1)),
        created_at TEXT NOT NULL,
        UNIQUE (account_id, name)
    ) STRICT;
    -- One default per account, in the schema too.
    CREATE UNIQUE INDEX virtual_networks_default ON virtual_networks (account_id)
        WHERE is_default = 1;

    CREATE TABLE network_routes (
        route_id   TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        vnet_id    TEXT NOT NULL REFERENCES virtual_networks (vnet_id),
        network    TEXT NOT NULL, -- CIDR without host bits, as ipnet prints it
        tunnel_id  TEXT NOT NULL REFERENCES tunnels (tunnel_id),
        comment    TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (vnet_id, network)
    ) STRICT;
    CREATE INDEX network_routes_by_account ON network_routes (account_id, created_at);
    CREATE INDEX network_routes_by_tunnel ON network_routes (tunnel_id);

    -- host.network / host.resolver_network.virtual_network_id of a service.
    ALTER TABLE services ADD COLUMN virtual_network_id TEXT;
    "#,
];

/// The two connections to one database file.
#[derive(Debug)]
pub(crate) struct SqliteStore {
    /// Reads (`query_only`): never waits behind a writer of this process.
    reader: Mutex<Connection>,
    /// Write transactions.
    writer: Mutex<Connection>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, migrating its schema.
    pub(crate) fn open(path: &Path) -> Result<Arc<Self>, DirectoryError> {
        let open_err = |source| DirectoryError::Open {
            path: path.to_owned(),
            source,
        };
        let mut writer = connect(path).map_err(open_err)?;
        let mode: String = writer
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            // e.g. a filesystem without shared memory; still correct, only less concurrent.
            tracing::warn!(path = %path.display(), mode, "directory database is not in WAL mode");
        }
        migrate_to(&mut writer, MIGRATIONS.len())?;
        let reader = connect(path).map_err(open_err)?;
        // A read path that writes by mistake fails loudly instead of taking the write lock.
        reader
            .pragma_update(None, "query_only", "ON")
            .map_err(open_err)?;
        Ok(Arc::new(Self {
            reader: Mutex::new(reader),
            writer: Mutex::new(writer),
            path: path.to_owned(),
        }))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` as `mode` says: on the reader (plain or in one deferred transaction), or in
    /// an IMMEDIATE transaction on the writer, bumping the revision for [`Mode::Write`].
    pub(crate) fn run<T>(
        &self,
        mode: Mode,
        f: impl FnOnce(&Tx<'_>) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        match mode {
            Mode::Read => f(&Tx::Sqlite(&lock(&self.reader))),
            Mode::Snapshot => {
                let mut conn = lock(&self.reader);
                let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
                let value = f(&Tx::Sqlite(&tx))?;
                tx.commit()?;
                Ok(value)
            }
            Mode::Write | Mode::WriteLive => {
                let mut conn = lock(&self.writer);
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let value = f(&Tx::Sqlite(&tx))?;
                if mode == Mode::Write {
                    tx.execute(
                        "INSERT INTO meta (key, value) VALUES ('revision', '1')
                         ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
                        [],
                    )?;
                }
                tx.commit()?;
                Ok(value)
            }
        }
    }

    /// SQLite's own consistency checks (`integrity_check`, `foreign_key_check`).
    pub(crate) fn check_integrity(&self) -> Result<(), DirectoryError> {
        let conn = lock(&self.reader);
        let integrity: Vec<String> = conn
            .prepare("PRAGMA integrity_check")?
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let foreign: i64 =
            conn.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |row| {
                row.get(0)
            })?;
        if integrity == ["ok"] && foreign == 0 {
            return Ok(());
        }
        Err(DirectoryError::Corrupt {
            what: "database".into(),
            detail: format!(
                "integrity_check: {}; {foreign} foreign key violation(s)",
                integrity.join("; ")
            ),
        })
    }

    /// Raw access to the writing connection, for tests in this crate.
    #[cfg(test)]
    pub(crate) fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        f(&mut lock(&self.writer))
    }
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock leaves no half-done transaction (rusqlite rolls back on
    // drop), so the connection is still usable.
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A connection with the settings every one of ours has (the journal mode is the file's).
fn connect(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(WRITE_LOCK_WAIT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Applies the migrations up to schema version `target`, in one transaction. A file already
/// at `target` is only read (no write lock).
pub(crate) fn migrate_to(conn: &mut Connection, target: usize) -> Result<(), DirectoryError> {
    let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let current: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if current > supported {
        return Err(DirectoryError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    if usize::try_from(current).is_ok_and(|v| v >= target) {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > supported {
        return Err(DirectoryError::SchemaTooNew { found, supported });
    }
    for (version, migration) in MIGRATIONS
        .iter()
        .enumerate()
        .take(target)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.execute_batch(migration)?;
        migrate_data(&Tx::Sqlite(&tx), version + 1)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(version + 1).unwrap_or(i64::MAX),
        )?;
        tracing::debug!(version = version + 1, "directory schema migrated");
    }
    tx.commit()?;
    Ok(())
}

/// Data moves that SQL alone cannot express, run right after the schema migration that
/// brought the file to `version`, in the same transaction.
fn migrate_data(tx: &Tx<'_>, version: usize) -> Result<(), DirectoryError> {
    if version == 6 {
        crate::subdomain::backfill(tx)?;
        crate::scripts::migrate_to_versions(tx)?;
    }
    if version == 10 {
        crate::teamnet::backfill_default_networks(tx)?;
    }
    Ok(())
}

/// Runs one statement; the number of rows it changed.
pub(crate) fn execute(
    conn: &Connection,
    sql: &str,
    params: &[Value],
) -> Result<usize, DirectoryError> {
    let mut stmt = conn.prepare_cached(sql)?;
    Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))?)
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Value::Bytes(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
        })
    }
}

/// Every row of `sql`.
pub(crate) fn query(
    conn: &Connection,
    sql: &str,
    params: &[Value],
) -> Result<Vec<Row>, DirectoryError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let columns = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(columns);
        for i in 0..columns {
            values.push(match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Real(v) => Value::Text(v.to_string()),
                ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
                ValueRef::Blob(v) => Value::Bytes(v.to_vec()),
            });
        }
        out.push(Row::new(values));
    }
    Ok(out)
}
