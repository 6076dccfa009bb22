//! The SQLite file: connection settings that let several processes share it, schema
//! migrations, the account id, and the change counter.
//!
//! Every process (`wvpc dev`, each CLI command) opens its own connections to
//! `<state>/wvpc.db`. WAL lets readers proceed while one writer commits; `synchronous=FULL`
//! makes every commit durable. Writes run in `BEGIN IMMEDIATE` transactions, so a
//! read-then-write (limit checks, uniqueness) takes the write lock up front and cannot be
//! interleaved with another process.
//!
//! A writer waits at most [`WRITE_LOCK_WAIT`] for another connection's write lock (a backup,
//! a slow migration, a stuck writer), then fails with [`DirectoryError::Busy`]. A
//! [`Directory`] keeps reads and writes on two connections, so a writer waiting for the lock
//! never holds up reads in the same process, and opening a directory that is up to date takes
//! no write lock: reads keep being served while another connection holds the lock.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::error::DirectoryError;

/// File name of the database inside the state directory.
pub const DB_FILE_NAME: &str = "wvpc.db";

/// How long a writer waits for another connection's write lock before failing with
/// [`DirectoryError::Busy`] (callers answer "directory busy" well within 5 s).
pub const WRITE_LOCK_WAIT: Duration = Duration::from_secs(4);

/// Schema migrations; migration `i` brings `user_version` from `i` to `i + 1`.
/// Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
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
];

/// The local control plane of one state directory: its accounts, their tunnels, services,
/// tokens and scripts. A `Directory` acts for one account (the local one when opened;
/// [`Directory::for_account`] gives a view of another sharing the connection).
///
/// Cheap to share (`Send + Sync`); every call runs one short SQL transaction.
#[derive(Debug)]
pub struct Directory {
    /// Reads (`query_only`): never waits behind a writer of this process.
    reader: Arc<Mutex<Connection>>,
    /// Write transactions.
    writer: Arc<Mutex<Connection>>,
    account_id: String,
    path: PathBuf,
    service_limit: usize,
}

impl Directory {
    /// Opens (creating if needed) `<state_dir>/wvpc.db`, creating `state_dir` too.
    pub fn open(state_dir: &Path) -> Result<Self, DirectoryError> {
        std::fs::create_dir_all(state_dir).map_err(|source| DirectoryError::StateDir {
            path: state_dir.to_owned(),
            source,
        })?;
        Self::open_file(&state_dir.join(DB_FILE_NAME))
    }

    /// Opens (creating if needed) the database at `path`, migrating its schema.
    pub fn open_file(path: &Path) -> Result<Self, DirectoryError> {
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
        migrate(&mut writer)?;
        let account_id = ensure_account_id(&mut writer)?;
        let reader = connect(path).map_err(open_err)?;
        // A read path that writes by mistake fails loudly instead of taking the write lock.
        reader
            .pragma_update(None, "query_only", "ON")
            .map_err(open_err)?;
        tracing::debug!(path = %path.display(), account_id, "directory opened");
        Ok(Self {
            reader: Arc::new(Mutex::new(reader)),
            writer: Arc::new(Mutex::new(writer)),
            account_id,
            path: path.to_owned(),
            service_limit: crate::services::SERVICE_LIMIT,
        })
    }

    /// The same directory with another per-account service limit (default
    /// [`crate::SERVICE_LIMIT`]); views made by [`Directory::for_account`] inherit it.
    #[must_use]
    pub fn with_service_limit(mut self, limit: usize) -> Self {
        self.service_limit = limit;
        self
    }

    /// Most services one account may have.
    pub fn service_limit(&self) -> usize {
        self.service_limit
    }

    /// A view acting for `account_id`, sharing this connection; `None` when no such account
    /// exists.
    pub fn for_account(&self, account_id: &str) -> Result<Option<Directory>, DirectoryError> {
        if account_id == self.account_id {
            return Ok(Some(self.view(account_id)));
        }
        let exists = self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT 1 FROM accounts WHERE account_id = ?1",
                    [account_id],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
        })?;
        Ok(exists.then(|| self.view(account_id)))
    }

    fn view(&self, account_id: &str) -> Directory {
        Directory {
            reader: self.reader.clone(),
            writer: self.writer.clone(),
            account_id: account_id.to_owned(),
            path: self.path.clone(),
            service_limit: self.service_limit,
        }
    }

    /// The local account id (32 hex characters), generated once per state directory.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A counter that grows with every committed change (tunnels, services, tokens, accounts,
    /// scripts), by any process. Caches compare it to know when to reload.
    pub fn revision(&self) -> Result<u64, DirectoryError> {
        read_revision(&self.reading())
    }

    /// SQLite's own consistency checks (`integrity_check`, `foreign_key_check`); `Err` lists
    /// what they found.
    pub fn check_integrity(&self) -> Result<(), DirectoryError> {
        let conn = self.reading();
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

    /// Runs `f` on the connection (reads).
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        f(&self.reading())
    }

    /// Runs `f` in one read transaction: every query in it sees the same committed state.
    pub(crate) fn read_consistent<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        let mut conn = self.reading();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Runs `f` in an IMMEDIATE transaction, bumps the revision and commits; rolls back when
    /// `f` fails.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        let mut conn = self.writing();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('revision', '1')
             ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            [],
        )?;
        tx.commit()?;
        Ok(value)
    }

    /// Runs `f` in an IMMEDIATE transaction without bumping the revision: for live state
    /// (tunnel connections) that no cache depends on.
    pub(crate) fn write_live<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        let mut conn = self.writing();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    fn reading(&self) -> MutexGuard<'_, Connection> {
        lock(&self.reader)
    }

    fn writing(&self) -> MutexGuard<'_, Connection> {
        lock(&self.writer)
    }

    /// Raw access to the writing connection, for tests in this crate.
    #[cfg(test)]
    pub(crate) fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        f(&mut self.writing())
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

/// The change counter as seen by `conn`.
pub(crate) fn read_revision(conn: &Connection) -> Result<u64, DirectoryError> {
    let value: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |row| {
            row.get(0)
        })
        .optional()?;
    match value {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| DirectoryError::Corrupt {
            what: "revision counter".into(),
            detail: format!("{v:?} is not a number"),
        }),
    }
}

fn migrate(conn: &mut Connection) -> Result<(), DirectoryError> {
    migrate_to(conn, MIGRATIONS.len())
}

/// Applies the migrations up to schema version `target`, in one transaction. A file already
/// at `target` is only read (no write lock).
fn migrate_to(conn: &mut Connection, target: usize) -> Result<(), DirectoryError> {
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
        migrate_data(&tx, version + 1)?;
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
fn migrate_data(tx: &Transaction<'_>, version: usize) -> Result<(), DirectoryError> {
    if version == 6 {
        crate::subdomain::backfill(tx)?;
        crate::scripts::migrate_to_versions(tx)?;
    }
    Ok(())
}

fn ensure_account_id(conn: &mut Connection) -> Result<String, DirectoryError> {
    if let Some(id) = existing_account_id(conn)? {
        return Ok(id);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Two processes opening a new state directory at once agree on the first one written.
    tx.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('account_id', ?1)",
        [&fresh],
    )?;
    let id: String = tx.query_row(
        "SELECT value FROM meta WHERE key = 'account_id'",
        [],
        |row| row.get(0),
    )?;
    let exists = tx
        .query_row(
            "SELECT 1 FROM accounts WHERE account_id = ?1",
            [&id],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        let subdomain = crate::subdomain::derive_unique(&tx, "local", &id)?;
        tx.execute(
            "INSERT INTO accounts (account_id, name, created_at, subdomain)
             VALUES (?1, 'local', ?2, ?3)",
            [&id, &now_rfc3339(), &subdomain],
        )?;
    }
    tx.commit()?;
    check_account_id(id)
}

/// The account id and its account row, when both are there already (read only).
fn existing_account_id(conn: &Connection) -> Result<Option<String>, DirectoryError> {
    let id: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'account_id'
               AND EXISTS (SELECT 1 FROM accounts WHERE account_id = meta.value)",
            [],
            |row| row.get(0),
        )
        .optional()?;
    id.map(check_account_id).transpose()
}

fn check_account_id(id: String) -> Result<String, DirectoryError> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DirectoryError::Corrupt {
            what: "account id".into(),
            detail: format!("{id:?} is not 32 hex characters"),
        });
    }
    Ok(id)
}

/// Now, as stored and shown: RFC 3339 UTC with microseconds, fixed width so that text order is
/// time order.
pub(crate) fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// `t` in the stored timestamp format.
pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh directory in a unique temp dir, removed on drop.
    pub(crate) struct TempState {
        pub(crate) dir: PathBuf,
    }

    impl TempState {
        pub(crate) fn new() -> Self {
            let dir =
                std::env::temp_dir().join(format!("wvpc-directory-test-{}", uuid::Uuid::new_v4()));
            Self { dir }
        }

        pub(crate) fn open(&self) -> Directory {
            Directory::open(&self.dir).expect("open directory")
        }
    }

    impl Drop for TempState {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn a_directory_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Directory>();
    }

    #[test]
    fn opening_creates_the_state_dir_and_keeps_the_account_id() {
        let state = TempState::new();
        let first = state.open();
        assert_eq!(first.account_id().len(), 32);
        assert!(first.account_id().bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(state.dir.join(DB_FILE_NAME).exists());
        let second = state.open();
        assert_eq!(first.account_id(), second.account_id());
        drop(first);
        drop(second);
        assert_eq!(state.open().account_id().len(), 32);
        let other = TempState::new();
        assert_ne!(other.open().account_id(), state.open().account_id());
    }

    #[test]
    fn connection_settings_suit_several_processes() {
        let state = TempState::new();
        let dir = state.open();
        dir.with_conn(|c| {
            let mode: String = c
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = c
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap();
            assert_eq!(sync, 2, "FULL");
            let version: i64 = c
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(version, i64::try_from(MIGRATIONS.len()).unwrap());
        });
    }

    #[test]
    fn under_another_connections_write_lock_reads_go_on_and_writes_fail_as_busy() {
        let state = TempState::new();
        let dir = state.open();
        let (tunnel, _) = dir.create_tunnel("office").unwrap();
        let lock = Connection::open(dir.path()).unwrap();
        lock.execute_batch("BEGIN EXCLUSIVE; DELETE FROM runtime_nodes WHERE 0;")
            .unwrap();

        // Opening an up-to-date directory takes no write lock.
        let other = state.open();
        assert_eq!(other.account_id(), dir.account_id());
        assert_eq!(other.list_tunnels().unwrap().len(), 1);
        assert!(other.revision().unwrap() > 0);
        other.route_snapshot().unwrap();
        let err = other.create_tunnel("blocked").unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(err.to_string().starts_with("directory busy: "), "{err}");
        // A writer waiting for the lock does not hold up reads of its own process.
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| dir.delete_tunnel(tunnel.id));
            assert_eq!(dir.list_tunnels().unwrap().len(), 1);
            assert!(waiting.join().unwrap().unwrap_err().is_unavailable());
        });

        lock.execute_batch("ROLLBACK;").unwrap();
        other.create_tunnel("after").unwrap();
        assert_eq!(dir.list_tunnels().unwrap().len(), 2);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let state = TempState::new();
        state
            .open()
            .with_conn(|c| c.pragma_update(None, "user_version", 99).unwrap());
        let err = Directory::open(&state.dir).unwrap_err();
        assert!(
            matches!(err, DirectoryError::SchemaTooNew { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_database_from_before_versions_and_subdomains_is_migrated() {
        let state = TempState::new();
        std::fs::create_dir_all(&state.dir).unwrap();
        let local = "a".repeat(32);
        let module = b"\0asm\x0d\0\x01\0 an old upload".to_vec();
        let etag: String = {
            use sha2::Digest as _;
            sha2::Sha256::digest(&module)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        {
            // The file as schema version 5 left it.
            let mut conn = Connection::open(state.dir.join(DB_FILE_NAME)).unwrap();
            migrate_to(&mut conn, 5).unwrap();
            conn.execute_batch(&format!(
                "INSERT INTO meta (key, value) VALUES ('account_id', '{local}'),
                                                      ('revision', '7');
                 INSERT INTO accounts (account_id, name, created_at) VALUES
                   ('dddddddddddddddddddddddddddddddd', 'Local', '2020-01-01T00:00:00.000000Z'),
                   ('{local}', 'local', '2021-01-01T00:00:00.000000Z'),
                   ('bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 'Team B', '2022-01-01T00:00:00.000000Z'),
                   ('cccccccccccccccccccccccccccccccc', 'team_b', '2023-01-01T00:00:00.000000Z');"
            ))
            .unwrap();
            for (account, name) in [(local.as_str(), "proxy"), (local.as_str(), "copy")] {
                conn.execute(
                    "INSERT INTO scripts (account_id, name, main_module, module, bindings, etag,
                                          created_on, modified_on)
                     VALUES (?1, ?2, 'worker.wasm', ?3, '[]', ?4,
                             '2024-01-01T00:00:00.000000Z', '2024-02-01T00:00:00.000000Z')",
                    rusqlite::params![account, name, module, etag],
                )
                .unwrap();
            }
        }
        let dir = Directory::open(&state.dir).unwrap();
        assert_eq!(dir.account_id(), local);
        let subdomains: Vec<(String, String)> = dir
            .list_accounts()
            .unwrap()
            .into_iter()
            .map(|a| (a.name, a.subdomain))
            .collect();
        assert_eq!(
            subdomains,
            [
                ("Local".into(), "local-dddddd".into()),
                ("local".into(), "local".into()),
                ("Team B".into(), "team-b".into()),
                ("team_b".into(), "team-b-cccccc".into()),
            ]
        );
        let script = dir.script("proxy").unwrap().unwrap();
        assert_eq!(
            (
                script.version_number,
                script.etag.as_str(),
                script.size,
                script.created_on.as_str(),
                script.modified_on.as_str(),
                script.workers_dev
            ),
            (
                1,
                etag.as_str(),
                module.len(),
                "2024-01-01T00:00:00.000000Z",
                "2024-02-01T00:00:00.000000Z",
                true
            )
        );
        let versions = dir.script_versions("proxy").unwrap();
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].author, None);
        assert_eq!(versions[0].created_on, "2024-02-01T00:00:00.000000Z");
        assert_eq!(dir.script_module("copy").unwrap(), Some(module.clone()));
        assert_eq!(dir.module_by_etag(&etag).unwrap(), Some(module));
        dir.with_conn(|c| {
            let modules: i64 = c
                .query_row("SELECT COUNT(*) FROM modules", [], |r| r.get(0))
                .unwrap();
            assert_eq!(modules, 1, "one row per content");
            let old: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_schema WHERE name = 'scripts_before_versions'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(old, 0);
            // Subdomains are unique from now on, in the schema too.
            let err = c
                .execute(
                    "UPDATE accounts SET subdomain = 'local' WHERE name = 'Team B'",
                    [],
                )
                .unwrap_err();
            assert!(err.to_string().contains("UNIQUE"), "{err}");
        });
        assert_eq!(dir.revision().unwrap(), 7);
        dir.check_integrity().unwrap();
    }

    #[test]
    fn timestamps_are_fixed_width_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), "2026-01-01T00:00:00.000000Z".len(), "{t}");
        assert!(
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).is_ok()
        );
    }
}
