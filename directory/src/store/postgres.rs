//! The PostgreSQL backend: a pool of connections driven by a small runtime of its own.
//!
//! The directory's API is synchronous and is called from plain threads, `spawn_blocking`
//! and now and then an async task. The store therefore owns a one-thread tokio runtime on a
//! thread of its own: pool checkouts (which connect, and need a reactor and timers) are
//! spawned there and awaited with `futures::executor::block_on`, which, unlike
//! `Handle::block_on`, works from any thread, async or not. The queries themselves only talk
//! to a connection task over channels, so they are polled on the calling thread.
//!
//! Every write takes the `meta` revision row lock first (`UPDATE … RETURNING`), so writers
//! serialize as they do under SQLite's `BEGIN IMMEDIATE` and a limit or uniqueness check
//! sees every earlier commit; `pg_notify('wvpc_directory', revision)` in the same
//! transaction tells the change feed ([`super::changes`]) at commit.
//!
//! An unreachable or failing server is [`DirectoryError::Unavailable`] within
//! [`STORE_WAIT`] (connect, pool wait and `statement_timeout`), never a hang; the pool
//! replaces closed connections, so the same process recovers when the server is back.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use tokio_postgres::IsolationLevel;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::location::PgLocation;
use super::{Row, Tx, Value};
use crate::database::Mode;
use crate::error::DirectoryError;

/// The longest a directory call waits for PostgreSQL: to connect, for a pooled connection,
/// for one statement. Past it the call fails with [`DirectoryError::Unavailable`].
pub const STORE_WAIT: Duration = Duration::from_secs(4);

/// Connections one process keeps to the store.
const POOL_SIZE: usize = 8;

/// The advisory lock that serializes migrations of several processes opening at once.
const MIGRATION_LOCK: i64 = 0x7776_7063_6469_7200; // "wvpcdir\0"

/// Schema migrations; migration `i` brings `schema_version` from `i` to `i + 1`. The
/// PostgreSQL history starts at the schema SQLite reached in its migration 8 (same tables
/// and columns; `bytea` for blobs, `bigint` for integers, timestamps as the same text).
/// Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE meta (
        key   text PRIMARY KEY,
        value text NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('revision', '0');

    CREATE TABLE accounts (
        account_id text PRIMARY KEY,
        name       text NOT NULL,
        created_at text NOT NULL,
        subdomain  text
    );
    CREATE UNIQUE INDEX accounts_by_subdomain ON accounts (subdomain);

    CREATE TABLE tunnels (
        tunnel_id  text PRIMARY KEY,
        account_id text NOT NULL,
        name       text NOT NULL,
        secret     bytea NOT NULL,
        created_at text NOT NULL,
        UNIQUE (account_id, name)
    );

    CREATE TABLE services (
        service_id   text PRIMARY KEY,
        account_id   text NOT NULL,
        name         text NOT NULL,
        type         text NOT NULL CHECK (type IN ('http', 'tcp')),
        http_port    bigint CHECK (http_port BETWEEN 1 AND 65535),
        https_port   bigint CHECK (https_port BETWEEN 1 AND 65535),
        tcp_port     bigint CHECK (tcp_port BETWEEN 1 AND 65535),
        app_protocol text,
        hostname     text,
        resolver_ips text, -- JSON array of strings, as given
        ipv4         text,
        ipv6         text,
        tunnel_id    text NOT NULL REFERENCES tunnels (tunnel_id),
        cert_verification_mode text,
        created_at   text NOT NULL,
        updated_at   text NOT NULL,
        ca_certificate text,
        CHECK ((hostname IS NULL) <> (ipv4 IS NULL AND ipv6 IS NULL))
    );
    CREATE INDEX services_by_account ON services (account_id, created_at);
    CREATE INDEX services_by_tunnel ON services (tunnel_id);

    CREATE TABLE api_tokens (
        token_id      text PRIMARY KEY,
        account_id    text NOT NULL REFERENCES accounts (account_id),
        name          text NOT NULL,
        role          text NOT NULL CHECK (role IN ('read', 'bind', 'admin')),
        services      text, -- JSON array of service ids the token may bind; NULL: all
        secret_sha256 bytea NOT NULL UNIQUE,
        created_at    text NOT NULL
    );

    CREATE TABLE tunnel_connections (
        connection_id text PRIMARY KEY,
        tunnel_id     text NOT NULL,
        client_id     text NOT NULL,
        version       text NOT NULL,
        arch          text NOT NULL,
        conn_index    bigint NOT NULL,
        edge_node     text NOT NULL,
        remote_addr   text NOT NULL,
        since         text NOT NULL
    );
    CREATE INDEX tunnel_connections_by_tunnel ON tunnel_connections (tunnel_id, since);

    CREATE TABLE modules (
        etag   text PRIMARY KEY, -- SHA-256 of module, hex
        module bytea NOT NULL
    );

    CREATE TABLE scripts (
        account_id     text NOT NULL REFERENCES accounts (account_id),
        name           text NOT NULL,
        active_version text NOT NULL, -- a script_versions.version_id of this script
        workers_dev    bigint NOT NULL CHECK (workers_dev IN (0, 1)),
        created_on     text NOT NULL,
        modified_on    text NOT NULL,
        PRIMARY KEY (account_id, name)
    );

    CREATE TABLE script_versions (
        version_id  text PRIMARY KEY,
        account_id  text NOT NULL,
        script      text NOT NULL,
        number      bigint NOT NULL CHECK (number > 0),
        etag        text NOT NULL REFERENCES modules (etag),
        main_module text NOT NULL,
        bindings    text NOT NULL, -- JSON array of {type, name, service_id}
        limits      text NOT NULL, -- JSON object of non-negative integers
        author      text,          -- name of the deploying API token
        created_on  text NOT NULL,
        UNIQUE (account_id, script, number),
        FOREIGN KEY (account_id, script) REFERENCES scripts (account_id, name) ON DELETE CASCADE
    );
    CREATE INDEX script_versions_by_etag ON script_versions (etag);

    CREATE TABLE script_routes (
        pattern       text PRIMARY KEY, -- normalized; one script per pattern, across accounts
        account_id    text NOT NULL,
        script        text NOT NULL,
        position      bigint NOT NULL,
        zone_name     text,
        custom_domain bigint NOT NULL CHECK (custom_domain IN (0, 1)),
        FOREIGN KEY (account_id, script) REFERENCES scripts (account_id, name) ON DELETE CASCADE
    );
    CREATE INDEX script_routes_by_script ON script_routes (account_id, script, position);

    CREATE TABLE runtime_nodes (
        node_id      text PRIMARY KEY,
        control_addr text NOT NULL,
        started_at   text NOT NULL,
        seen_at_ms   bigint NOT NULL
    );
    "#,
    // 2: live tunnel connections moved to the cluster registry (`cluster_connections`).
    "DROP TABLE tunnel_connections;",
    // 3 (SQLite 10): virtual networks (each account gets its default in `migrate_data`) and
    // the IP routes inside them; a service may name a virtual network.
    r#"
    CREATE TABLE virtual_networks (
        vnet_id    text PRIMARY KEY,
        account_id text NOT NULL REFERENCES accounts (account_id),
        name       text NOT NULL,
        comment    text NOT NULL,
        is_default bigint NOT NULL CHECK (is_default IN (0, 1)),
        created_at text NOT NULL,
        UNIQUE (account_id, name)
    );
    -- One default per account, in the schema too.
    CREATE UNIQUE INDEX virtual_networks_default ON virtual_networks (account_id)
        WHERE is_default = 1;

    CREATE TABLE network_routes (
        route_id   text PRIMARY KEY,
        account_id text NOT NULL,
        vnet_id    text NOT NULL REFERENCES virtual_networks (vnet_id),
        network    text NOT NULL, -- CIDR without host bits, as ipnet prints it
        tunnel_id  text NOT NULL REFERENCES tunnels (tunnel_id),
        comment    text NOT NULL,
        created_at text NOT NULL,
        UNIQUE (vnet_id, network)
    );
    CREATE INDEX network_routes_by_account ON network_routes (account_id, created_at);
    CREATE INDEX network_routes_by_tunnel ON network_routes (tunnel_id);

    -- host.network / host.resolver_network.virtual_network_id of a service.
    ALTER TABLE services ADD COLUMN virtual_network_id text;
    "#,
];

/// Data moves that SQL alone cannot express, run right after the schema migration that
/// brought the database to `version`, in the same transaction.
fn migrate_data(tx: &Tx<'_>, version: usize) -> Result<(), DirectoryError> {
    if version == 3 {
        crate::teamnet::backfill_default_networks(tx)?;
    }
    Ok(())
}

/// A connection pool to one PostgreSQL database and the runtime that drives it.
pub struct PgStore {
    pool: Pool,
    handle: tokio::runtime::Handle,
    /// Dropping it ends the runtime's thread (which then drops the runtime itself, so no
    /// runtime is ever dropped inside an async context).
    _stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    location: PgLocation,
    /// The location's configuration with the store's timeouts.
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    pub(crate) feed: OnceLock<tokio::sync::watch::Receiver<super::changes::Feed>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("store", &self.location.label)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `location` and brings its schema up to date (under an advisory lock, so
    /// several processes may open a new database at once).
    pub fn connect(location: &PgLocation) -> Result<Arc<Self>, DirectoryError> {
        let unavailable = |reason: String| DirectoryError::Unavailable {
            store: location.label.clone(),
            reason,
        };
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
            location.tls_config().map_err(&unavailable)?,
        );
        let (handle, stop) = start_runtime(&location.label).map_err(&unavailable)?;
        let mut config = location.config.clone();
        config.connect_timeout(STORE_WAIT);
        // A connection behind a link that went silent (the change feed's LISTEN connection
        // above all, which sends nothing) is declared dead within about 16 s, not the
        // kernel's default of 11 minutes; the feed then reconnects and reloads.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(2));
        config.keepalives_retries(3);
        let timeout_ms = STORE_WAIT.as_millis();
        let options = match config.get_options() {
            Some(given) => format!("{given} -c statement_timeout={timeout_ms}"),
            None => format!("-c statement_timeout={timeout_ms}"),
        };
        config.options(&options);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // The pool's timers run on the store's runtime, so it is built there.
        let pool = {
            let _entered = handle.enter();
            Pool::builder(manager)
                .max_size(POOL_SIZE)
                .wait_timeout(Some(STORE_WAIT))
                .create_timeout(Some(STORE_WAIT))
                .recycle_timeout(Some(STORE_WAIT))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| unavailable(e.to_string()))?
        };
        let store = Arc::new(Self {
            pool,
            handle,
            _stop: Mutex::new(Some(stop)),
            location: location.clone(),
            config,
            tls,
            feed: OnceLock::new(),
        });
        store.migrate()?;
        Ok(store)
    }

    /// The connection pool, for other parts of the cluster that keep state in the same
    /// database (use it on [`PgStore::runtime`]).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The runtime the pool's connections are driven by.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// The location this store was opened from.
    pub fn location(&self) -> &PgLocation {
        &self.location
    }

    pub(crate) fn connect_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    pub(crate) fn tls(&self) -> &tokio_postgres_rustls::MakeRustlsConnect {
        &self.tls
    }

    /// `postgres host:port/database`.
    pub fn label(&self) -> &str {
        &self.location.label
    }

    pub(crate) fn unavailable(&self, reason: impl Into<String>) -> DirectoryError {
        DirectoryError::Unavailable {
            store: self.location.label.clone(),
            reason: reason.into(),
        }
    }

    /// Maps a client error: the server being away or too slow is `Unavailable`, a refused
    /// statement is a database error.
    pub(crate) fn error(&self, err: tokio_postgres::Error) -> DirectoryError {
        use tokio_postgres::error::SqlState;
        match err.code() {
            None => self.unavailable(reason(&err)),
            Some(code)
                if [
                    SqlState::QUERY_CANCELED,
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                    SqlState::LOCK_NOT_AVAILABLE,
                ]
                .contains(code) =>
            {
                self.unavailable(reason(&err))
            }
            Some(_) => DirectoryError::Postgres(err),
        }
    }

    /// A pooled connection, within [`STORE_WAIT`].
    fn client(&self) -> Result<deadpool_postgres::Client, DirectoryError> {
        let pool = self.pool.clone();
        match self.spawn(async move { pool.get().await }) {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(PoolError::Backend(err))) => Err(self.error(err)),
            Ok(Err(PoolError::Timeout(_))) => {
                Err(self.unavailable(format!("no connection within {}s", STORE_WAIT.as_secs())))
            }
            Ok(Err(err)) => Err(self.unavailable(err.to_string())),
            Err(err) => Err(err),
        }
    }

    /// Runs `fut` on the store's runtime and waits for it from any thread.
    pub(crate) fn spawn<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, DirectoryError> {
        futures::executor::block_on(self.handle.spawn(fut))
            .map_err(|e| self.unavailable(format!("store runtime stopped: {e}")))
    }

    /// A future that resolves after [`STORE_WAIT`], for one transaction's deadline.
    fn deadline(&self) -> Shared<BoxFuture<'static, ()>> {
        self.handle
            .spawn(async { tokio::time::sleep(STORE_WAIT).await })
            .map(|_| ())
            .boxed()
            .shared()
    }

    /// Runs `f` in one transaction of the kind `mode` says.
    pub(crate) fn run<T>(
        &self,
        mode: Mode,
        f: impl FnOnce(&Tx<'_>) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        let mut client = self.client()?;
        let deadline = self.deadline();
        let pg: &mut tokio_postgres::Client = &mut client;
        let builder = pg.build_transaction();
        let builder = match mode {
            Mode::Read => builder.read_only(true),
            Mode::Snapshot => builder
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true),
            Mode::Write | Mode::WriteLive => builder,
        };
        let tx = wait(self, &deadline, builder.start())?;
        let ptx = PgTx {
            store: self,
            tx: &tx,
            deadline: deadline.clone(),
        };
        let revision = if mode == Mode::Write {
            // The row lock first: writers queue here, as under BEGIN IMMEDIATE.
            Some(ptx.query_one_text(
                "UPDATE meta SET value = (CAST(value AS bigint) + 1)::text
                 WHERE key = 'revision' RETURNING value",
            )?)
        } else {
            None
        };
        let wrapped = Tx::Postgres(ptx);
        let value = f(&wrapped)?;
        if let Some(revision) = revision {
            wrapped.execute(
                "SELECT pg_notify('wvpc_directory', ?1)",
                super::params![revision],
            )?;
        }
        drop(wrapped);
        wait(self, &deadline, tx.commit())?;
        Ok(value)
    }

    fn migrate(&self) -> Result<(), DirectoryError> {
        let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        self.run(Mode::WriteLive, |tx| {
            tx.execute(
                "SELECT pg_advisory_xact_lock(?1)",
                super::params![MIGRATION_LOCK],
            )?;
            tx.batch("CREATE TABLE IF NOT EXISTS schema_version (version bigint NOT NULL)")?;
            let found: i64 = tx
                .query_opt(
                    "SELECT version FROM schema_version",
                    super::params![],
                    |r| r.get(0),
                )?
                .unwrap_or(0);
            if found > supported {
                return Err(DirectoryError::SchemaTooNew { found, supported });
            }
            for (version, migration) in MIGRATIONS
                .iter()
                .enumerate()
                .skip(usize::try_from(found).unwrap_or(0))
            {
                tx.batch(migration)?;
                migrate_data(tx, version + 1)?;
                tracing::debug!(version = version + 1, "directory schema migrated");
            }
            if found < supported {
                tx.execute("DELETE FROM schema_version", super::params![])?;
                tx.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    super::params![supported],
                )?;
            }
            Ok(())
        })
    }
}

/// Starts the store's runtime thread; the sender stops it.
fn start_runtime(
    label: &str,
) -> Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the store's runtime: {e}"))?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("wvpc-directory-pg".into())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })
        .map_err(|e| format!("starting the store's thread for {label}: {e}"))?;
    Ok((handle, stop))
}

/// The innermost cause of a client error ("connection refused", "connection closed").
fn reason(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return db.message().to_owned();
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text = inner.to_string();
        source = inner.source();
    }
    text
}

/// Polls `fut` on this thread until it resolves or the transaction's deadline passes.
fn wait<T>(
    store: &PgStore,
    deadline: &Shared<BoxFuture<'static, ()>>,
    fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DirectoryError> {
    let fut = std::pin::pin!(fut);
    match futures::executor::block_on(futures::future::select(fut, deadline.clone())) {
        futures::future::Either::Left((result, _)) => result.map_err(|e| store.error(e)),
        futures::future::Either::Right(_) => {
            Err(store.unavailable(format!("no answer within {}s", STORE_WAIT.as_secs())))
        }
    }
}

/// One open PostgreSQL transaction.
pub(crate) struct PgTx<'a> {
    store: &'a PgStore,
    tx: &'a tokio_postgres::Transaction<'a>,
    deadline: Shared<BoxFuture<'static, ()>>,
}

impl PgTx<'_> {
    pub(crate) fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DirectoryError> {
        let sql = placeholders(sql);
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let rows = wait(self.store, &self.deadline, self.tx.query(&sql, &refs))?;
        rows.iter().map(row).collect()
    }

    pub(crate) fn execute(&self, sql: &str, params: &[Value]) -> Result<usize, DirectoryError> {
        let sql = placeholders(sql);
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        if sql.trim_start().to_ascii_uppercase().starts_with("SELECT") {
            // `execute` of a SELECT counts its rows; only its effect matters here.
            wait(self.store, &self.deadline, self.tx.query(&sql, &refs))?;
            return Ok(0);
        }
        let changed = wait(self.store, &self.deadline, self.tx.execute(&sql, &refs))?;
        Ok(usize::try_from(changed).unwrap_or(usize::MAX))
    }

    pub(crate) fn batch(&self, sql: &str) -> Result<(), DirectoryError> {
        wait(self.store, &self.deadline, self.tx.batch_execute(sql))
    }

    fn query_one_text(&self, sql: &str) -> Result<String, DirectoryError> {
        let rows = wait(self.store, &self.deadline, self.tx.query(sql, &[]))?;
        let row = rows.first().ok_or_else(|| DirectoryError::Corrupt {
            what: "revision counter".into(),
            detail: "the meta row 'revision' is missing".into(),
        })?;
        row.try_get(0).map_err(|e| self.store.error(e))
    }
}

/// `?N` placeholders as PostgreSQL's `$N` (outside quoted text).
pub(crate) fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

fn row(pg: &tokio_postgres::Row) -> Result<Row, DirectoryError> {
    let mut values = Vec::with_capacity(pg.len());
    for (i, column) in pg.columns().iter().enumerate() {
        let corrupt = |e: tokio_postgres::Error| DirectoryError::Corrupt {
            what: format!("column {}", column.name()),
            detail: e.to_string(),
        };
        let value = match *column.type_() {
            Type::INT8 => pg
                .try_get::<_, Option<i64>>(i)
                .map_err(corrupt)?
                .map(Value::Int),
            Type::INT4 => pg
                .try_get::<_, Option<i32>>(i)
                .map_err(corrupt)?
                .map(|v| Value::Int(v.into())),
            Type::INT2 => pg
                .try_get::<_, Option<i16>>(i)
                .map_err(corrupt)?
                .map(|v| Value::Int(v.into())),
            Type::BOOL => pg
                .try_get::<_, Option<bool>>(i)
                .map_err(corrupt)?
                .map(|v| Value::Int(v.into())),
            Type::BYTEA => pg
                .try_get::<_, Option<Vec<u8>>>(i)
                .map_err(corrupt)?
                .map(Value::Bytes),
            Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR | Type::UNKNOWN => pg
                .try_get::<_, Option<String>>(i)
                .map_err(corrupt)?
                .map(Value::Text),
            // pg_notify and other void results.
            Type::VOID => None,
            ref other => {
                return Err(DirectoryError::Corrupt {
                    what: format!("column {}", column.name()),
                    detail: format!("unexpected type {other}"),
                });
            }
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row::new(values))
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR | Type::UNKNOWN => v.to_string().to_sql(ty, out),
                ref other => Err(format!("an integer cannot be a {other} parameter").into()),
            },
            Value::Text(v) => match *ty {
                Type::INT8 | Type::INT4 | Type::INT2 | Type::BYTEA | Type::BOOL => {
                    Err(format!("text cannot be a {ty} parameter").into())
                }
                _ => v.as_str().to_sql(ty, out),
            },
            Value::Bytes(v) => v.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;
    use crate::database::tests::{BEFORE_THE_REGISTRY, assert_opened_from_before_the_registry};

    #[test]
    fn a_database_from_before_the_cluster_registry_drops_the_old_connections_table() {
        let Some(server) = wvpc_pg_harness::PgServer::shared() else {
            return;
        };
        let url = server.create_database();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sql = |statements: String| {
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let driver = tokio::spawn(connection);
                let rows = client.simple_query(&statements).await.unwrap();
                drop(client);
                let _ = driver.await;
                rows.into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(row) => {
                            Some(row.get(0).unwrap_or_default().to_owned())
                        }
                        _ => None,
                    })
                    .collect::<Vec<String>>()
            })
        };
        // The database as schema version 1 left it.
        sql(format!(
            "{} CREATE TABLE schema_version (version bigint NOT NULL);
             INSERT INTO schema_version (version) VALUES (1); {BEFORE_THE_REGISTRY}",
            MIGRATIONS[0]
        ));
        let state = std::env::temp_dir().join(format!("wvpc-pg-upgrade-{}", uuid::Uuid::new_v4()));
        let dir = crate::Directory::open_spec(Some(&url), &state).unwrap();
        assert_opened_from_before_the_registry(&dir);
        drop(dir);
        assert_eq!(
            sql("SELECT to_regclass('tunnel_connections') IS NULL;
                 SELECT version::text FROM schema_version;
                 SELECT name FROM virtual_networks WHERE is_default = 1"
                .into()),
            ["t", &MIGRATIONS.len().to_string(), "default"],
            "the table is gone, the schema is current, and the account has its default network"
        );
        let _ = std::fs::remove_dir_all(&state);
    }

    #[test]
    fn placeholders_are_rewritten_outside_quotes() {
        assert_eq!(
            super::placeholders("SELECT '?1', x FROM t WHERE a = ?1 AND b = ?12"),
            "SELECT '?1', x FROM t WHERE a = $1 AND b = $12"
        );
    }
}
