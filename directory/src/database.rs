//! The directory's handle: which store it is on, the account it acts for, the account id,
//! and the change counter. The SQL of each part of the directory lives in its module and runs
//! through [`crate::store::Tx`] on either backend.

use std::path::Path;
use std::sync::Arc;

use crate::error::DirectoryError;
use crate::store::location::DirectoryLocation;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Changes, Tx, params};

/// File name of the database inside the state directory.
pub const DB_FILE_NAME: &str = "wvpc.db";

pub use crate::store::sqlite::WRITE_LOCK_WAIT;

/// What a transaction may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Reads, each query seeing the latest commit.
    Read,
    /// Reads that all see one commit.
    Snapshot,
    /// A change: writers serialize, the revision is bumped and announced.
    Write,
    /// A change to live state (runtimes, tunnel connections) that no cache depends on: no
    /// revision bump.
    WriteLive,
}

/// The store behind a directory.
#[derive(Debug, Clone)]
enum Backend {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
}

/// The control plane: its accounts, their tunnels, services, tokens and scripts, in a SQLite
/// file (one machine) or a PostgreSQL database (a cluster). A `Directory` acts for one account
/// (the local one when opened; [`Directory::for_account`] gives a view of another sharing the
/// connections).
///
/// Cheap to share (`Send + Sync`); every call runs one short SQL transaction. Calls block:
/// from async code, run them in `spawn_blocking` (a call from an async task works, but holds
/// up its worker thread meanwhile).
#[derive(Debug)]
pub struct Directory {
    backend: Backend,
    account_id: String,
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

    /// Opens the directory `spec` names (the `--directory` value: `postgres://…`,
    /// `sqlite:<file>`), or `<state_dir>/wvpc.db` without one.
    pub fn open_spec(spec: Option<&str>, state_dir: &Path) -> Result<Self, DirectoryError> {
        match DirectoryLocation::resolve(spec, state_dir)? {
            DirectoryLocation::Sqlite(path) if path == state_dir.join(DB_FILE_NAME) => {
                Self::open(state_dir)
            }
            location => Self::open_location(&location),
        }
    }

    /// Opens the directory at `location`, migrating its schema.
    pub fn open_location(location: &DirectoryLocation) -> Result<Self, DirectoryError> {
        match location {
            DirectoryLocation::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|source| DirectoryError::StateDir {
                        path: parent.to_owned(),
                        source,
                    })?;
                }
                Self::open_file(path)
            }
            DirectoryLocation::Postgres(pg) => Self::on(Backend::Postgres(PgStore::connect(pg)?)),
        }
    }

    /// Opens (creating if needed) the SQLite database at `path`, migrating its schema.
    pub fn open_file(path: &Path) -> Result<Self, DirectoryError> {
        Self::on(Backend::Sqlite(SqliteStore::open(path)?))
    }

    fn on(backend: Backend) -> Result<Self, DirectoryError> {
        let mut dir = Self {
            backend,
            account_id: String::new(),
            service_limit: crate::services::SERVICE_LIMIT,
        };
        dir.account_id = dir.ensure_account_id()?;
        tracing::debug!(
            store = dir.location(),
            account_id = dir.account_id,
            "directory opened"
        );
        Ok(dir)
    }

    /// Another handle on the same store with connections of its own (as another process
    /// would have), acting for the local account.
    pub fn reopen(&self) -> Result<Self, DirectoryError> {
        match &self.backend {
            Backend::Sqlite(store) => Self::open_file(store.path()),
            Backend::Postgres(store) => {
                Self::on(Backend::Postgres(PgStore::connect(store.location())?))
            }
        }
        .map(|d| d.with_service_limit(self.service_limit))
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
        let exists = self.read(|tx| {
            Ok(tx
                .query_opt(
                    "SELECT 1 FROM accounts WHERE account_id = ?1",
                    params![account_id],
                    |_| Ok(()),
                )?
                .is_some())
        })?;
        Ok(exists.then(|| self.view(account_id)))
    }

    fn view(&self, account_id: &str) -> Directory {
        Directory {
            backend: self.backend.clone(),
            account_id: account_id.to_owned(),
            service_limit: self.service_limit,
        }
    }

    /// The local account id (32 hex characters), generated once per store.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The SQLite database file; an empty path on PostgreSQL ([`Directory::location`] names
    /// either store).
    pub fn path(&self) -> &Path {
        self.sqlite_path().unwrap_or(Path::new(""))
    }

    /// The SQLite database file; `None` on PostgreSQL.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sqlite(store) => Some(store.path()),
            Backend::Postgres(_) => None,
        }
    }

    /// Where the directory is stored, for logs and messages (`sqlite <file>`,
    /// `postgres host:port/database`; never a password).
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Sqlite(store) => format!("sqlite {}", store.path().display()),
            Backend::Postgres(store) => store.label().to_owned(),
        }
    }

    /// The PostgreSQL store (its connection pool and the runtime driving it), for other
    /// parts of a cluster that keep their state in the same database; `None` on SQLite.
    pub fn postgres(&self) -> Option<&Arc<PgStore>> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(store) => Some(store),
        }
    }

    /// A counter that grows with every committed change (tunnels, services, tokens, accounts,
    /// scripts), by any process. Caches compare it to know when to reload.
    pub fn revision(&self) -> Result<u64, DirectoryError> {
        self.read(read_revision)
    }

    /// Tells when the directory may have changed ([`Changes::changed`]): a notification on
    /// PostgreSQL, a poll of [`crate::SQLITE_POLL`] on SQLite. Needs a tokio runtime to wait.
    pub fn changes(&self) -> Changes {
        match &self.backend {
            Backend::Sqlite(_) => Changes::polling(),
            Backend::Postgres(store) => Changes::notified(store),
        }
    }

    /// The store's own consistency checks (SQLite: `integrity_check`, `foreign_key_check`;
    /// PostgreSQL enforces its constraints on every write); `Err` lists what they found.
    pub fn check_integrity(&self) -> Result<(), DirectoryError> {
        match &self.backend {
            Backend::Sqlite(store) => store.check_integrity(),
            Backend::Postgres(_) => Ok(()),
        }
    }

    fn run<T>(
        &self,
        mode: Mode,
        f: impl FnOnce(&Tx<'_>) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        match &self.backend {
            Backend::Sqlite(store) => store.run(mode, f),
            Backend::Postgres(store) => store.run(mode, f),
        }
    }

    /// Runs `f` on the store (reads).
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        self.run(Mode::Read, f)
    }

    /// Runs `f` in one read transaction: every query in it sees the same committed state.
    pub(crate) fn read_consistent<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        self.run(Mode::Snapshot, f)
    }

    /// Runs `f` in a write transaction (writers serialize), bumps the revision and commits;
    /// rolls back when `f` fails.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        self.run(Mode::Write, f)
    }

    /// Runs `f` in a write transaction without bumping the revision: for live state
    /// (tunnel connections) that no cache depends on.
    pub(crate) fn write_live<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        self.run(Mode::WriteLive, f)
    }

    /// Raw access to the SQLite writing connection, for tests in this crate.
    #[cfg(test)]
    pub(crate) fn with_conn<T>(&self, f: impl FnOnce(&mut rusqlite::Connection) -> T) -> T {
        match &self.backend {
            Backend::Sqlite(store) => store.with_conn(f),
            Backend::Postgres(_) => panic!("with_conn is for SQLite directories"),
        }
    }

    fn ensure_account_id(&self) -> Result<String, DirectoryError> {
        if let Some(id) = self.read(existing_account_id)? {
            return Ok(id);
        }
        let id = self.write_live(|tx| {
            let mut bytes = [0u8; 16];
            rand::fill(&mut bytes);
            let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            // Two processes opening a new store at once agree on the first one written.
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('account_id', ?1) ON CONFLICT DO NOTHING",
                params![fresh],
            )?;
            let id: String = tx.query_one(
                "SELECT value FROM meta WHERE key = 'account_id'",
                params![],
                |row| row.get(0),
            )?;
            let exists = tx
                .query_opt(
                    "SELECT 1 FROM accounts WHERE account_id = ?1",
                    params![id],
                    |_| Ok(()),
                )?
                .is_some();
            if !exists {
                let subdomain = crate::subdomain::derive_unique(tx, "local", &id)?;
                tx.execute(
                    "INSERT INTO accounts (account_id, name, created_at, subdomain)
                     VALUES (?1, 'local', ?2, ?3)",
                    params![id, now_rfc3339(), subdomain],
                )?;
                crate::teamnet::create_default_network(tx, &id)?;
            }
            Ok(id)
        })?;
        check_account_id(id)
    }
}

/// The change counter as seen by `tx`.
pub(crate) fn read_revision(tx: &Tx<'_>) -> Result<u64, DirectoryError> {
    let value: Option<String> = tx.query_opt(
        "SELECT value FROM meta WHERE key = 'revision'",
        params![],
        |row| row.get(0),
    )?;
    match value {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| DirectoryError::Corrupt {
            what: "revision counter".into(),
            detail: format!("{v:?} is not a number"),
        }),
    }
}

/// The account id and its account row, when both are there already (read only).
fn existing_account_id(tx: &Tx<'_>) -> Result<Option<String>, DirectoryError> {
    let id: Option<String> = tx.query_opt(
        "SELECT value FROM meta WHERE key = 'account_id'
           AND EXISTS (SELECT 1 FROM accounts WHERE account_id = meta.value)",
        params![],
        |row| row.get(0),
    )?;
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
    use crate::store::sqlite::{MIGRATIONS, migrate_to};
    use rusqlite::Connection;
    use std::path::PathBuf;

    /// A fresh store: SQLite in a unique temp dir (removed on drop), or a fresh PostgreSQL
    /// database on the shared test server.
    pub(crate) struct TempState {
        pub(crate) dir: PathBuf,
        pub(crate) url: Option<String>,
    }

    impl TempState {
        pub(crate) fn new() -> Self {
            let dir =
                std::env::temp_dir().join(format!("wvpc-directory-test-{}", uuid::Uuid::new_v4()));
            Self { dir, url: None }
        }

        /// `None` (the harness says why) where PostgreSQL is not installed.
        pub(crate) fn postgres() -> Option<Self> {
            let server = wvpc_pg_harness::PgServer::shared()?;
            let mut state = Self::new();
            state.url = Some(server.create_database());
            Some(state)
        }

        /// A new handle on the store (its own connections, as another process has).
        pub(crate) fn open(&self) -> Directory {
            Directory::open_spec(self.url.as_deref(), &self.dir).expect("open directory")
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

    /// The local account of [`BEFORE_THE_REGISTRY`].
    pub(crate) const OLD_ACCOUNT: &str = "0123456789abcdef0123456789abcdef";

    /// Rows of a store from before live tunnel connections moved to the cluster registry (SQLite
    /// schema 8, PostgreSQL schema 1): the local account, a revision, and a connection in the
    /// old `tunnel_connections` table.
    pub(crate) const BEFORE_THE_REGISTRY: &str = "
        INSERT INTO meta (key, value) VALUES ('account_id', '0123456789abcdef0123456789abcdef'),
                                             ('revision', '7')
          ON CONFLICT (key) DO UPDATE SET value = excluded.value;
        INSERT INTO accounts (account_id, name, created_at, subdomain) VALUES
          ('0123456789abcdef0123456789abcdef', 'local', '2024-01-01T00:00:00.000000Z', 'local');
        INSERT INTO tunnel_connections (connection_id, tunnel_id, client_id, version, arch,
                                        conn_index, edge_node, remote_addr, since)
          VALUES ('c0ffee00-0000-4000-8000-000000000001', 'c0ffee00-0000-4000-8000-000000000002',
                  'c0ffee00-0000-4000-8000-000000000003', 'wvpc-connector/0.1.0', 'linux_amd64',
                  0, 'iris-a', '127.0.0.1:40000', '2024-01-01T00:00:00.000000Z');";

    /// What a store opened from [`BEFORE_THE_REGISTRY`] must show: its account and revision
    /// kept, and writes working.
    pub(crate) fn assert_opened_from_before_the_registry(dir: &Directory) {
        assert_eq!(dir.account_id(), OLD_ACCOUNT);
        assert_eq!(dir.revision().unwrap(), 7);
        dir.create_tunnel("office").unwrap();
        assert_eq!(dir.list_tunnels().unwrap().len(), 1);
    }

    #[test]
    fn a_database_from_before_the_cluster_registry_drops_the_old_connections_table() {
        let state = TempState::new();
        std::fs::create_dir_all(&state.dir).unwrap();
        {
            let mut conn = Connection::open(state.dir.join(DB_FILE_NAME)).unwrap();
            migrate_to(&mut conn, 8).unwrap();
            conn.execute_batch(BEFORE_THE_REGISTRY).unwrap();
        }
        let dir = Directory::open(&state.dir).unwrap();
        assert_opened_from_before_the_registry(&dir);
        dir.with_conn(|c| {
            let tables: i64 = c
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name LIKE 'tunnel_connections%'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(tables, 0, "the table and its index are gone");
            let version: i64 = c
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(version, i64::try_from(MIGRATIONS.len()).unwrap());
        });
        dir.check_integrity().unwrap();
    }

    #[test]
    fn a_database_from_before_virtual_networks_gives_each_account_its_default() {
        let state = TempState::new();
        std::fs::create_dir_all(&state.dir).unwrap();
        {
            let mut conn = Connection::open(state.dir.join(DB_FILE_NAME)).unwrap();
            migrate_to(&mut conn, 9).unwrap();
            conn.execute_batch(
                BEFORE_THE_REGISTRY
                    .split("INSERT INTO tunnel_connections")
                    .next()
                    .unwrap(),
            )
            .unwrap();
            conn.execute_batch(
                "INSERT INTO accounts (account_id, name, created_at, subdomain) VALUES
                   ('bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 'b', '2025-01-01T00:00:00.000000Z', 'b');",
            )
            .unwrap();
        }
        let dir = Directory::open(&state.dir).unwrap();
        for account in [OLD_ACCOUNT, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"] {
            let networks = dir
                .for_account(account)
                .unwrap()
                .unwrap()
                .list_virtual_networks()
                .unwrap();
            assert_eq!(networks.len(), 1, "{account}");
            assert_eq!(networks[0].name, "default");
            assert!(networks[0].is_default_network);
        }
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
