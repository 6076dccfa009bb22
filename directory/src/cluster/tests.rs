//! The registry's behaviour, run on both backends: SQLite always, PostgreSQL on the test
//! harness's throwaway server (skipped with the harness's message where it is missing).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use super::*;

/// A store several "nodes" (registry handles) share.
enum Store {
    Sqlite(PathBuf),
    Postgres(String),
}

use std::path::PathBuf;

impl Store {
    fn sqlite() -> Store {
        Store::Sqlite(std::env::temp_dir().join(format!("wvpc-cluster-test-{}", Uuid::new_v4())))
    }

    /// `None` (skipped, the harness said why) without PostgreSQL.
    fn postgres() -> Option<Store> {
        let server = wvpc_pg_harness::PgServer::shared()?;
        Some(Store::Postgres(server.create_database()))
    }

    fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "SQLite",
            Store::Postgres(_) => "PostgreSQL",
        }
    }

    async fn open(&self, ttl: Duration) -> ClusterRegistry {
        match self {
            Store::Sqlite(dir) => ClusterRegistry::sqlite(dir, ttl).await.unwrap(),
            Store::Postgres(url) => ClusterRegistry::postgres_url(url, ttl).await.unwrap(),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Store::Sqlite(dir) = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn live(tunnel: Uuid, index: u8) -> LiveConnection {
    LiveConnection {
        connection_id: Uuid::new_v4(),
        tunnel_id: tunnel,
        client_id: Uuid::new_v4(),
        version: "wvpc-connector/0.1.0".into(),
        arch: "linux_amd64".into(),
        conn_index: index,
        edge_node: String::new(),
        remote_addr: "127.0.0.1:40000".into(),
        since: LiveConnection::since_time(SystemTime::now()),
    }
}

fn ids(rows: &[ClusterConnection]) -> BTreeSet<Uuid> {
    rows.iter().map(|c| c.connection.connection_id).collect()
}

/// Polls `check` until it holds; the deadline is only a hang guard.
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publishes_and_reads_across_nodes(store: &Store) {
    let a = store.open(DEFAULT_LEASE_TTL).await;
    let b = store.open(DEFAULT_LEASE_TTL).await;
    let relay_a: SocketAddr = "127.0.0.2:7000".parse().unwrap();
    let lease_a = a.join("iris-a", Some(relay_a)).await.unwrap();
    let lease_b = b.join("iris-b", None).await.unwrap();
    let tunnel = Uuid::new_v4();
    let (a0, b0, b1) = (live(tunnel, 0), live(tunnel, 1), live(Uuid::new_v4(), 0));
    a.publish(&lease_a, &a0).await.unwrap();
    b.publish(&lease_b, &b0).await.unwrap();
    b.publish(&lease_b, &b1).await.unwrap();
    a.heartbeat(&lease_a).await.unwrap();

    // Either node reads the whole cluster, each row naming its holder.
    let rows = b.tunnel_connections(tunnel).await.unwrap();
    assert_eq!(
        ids(&rows),
        BTreeSet::from([a0.connection_id, b0.connection_id])
    );
    for row in &rows {
        if row.connection.connection_id == a0.connection_id {
            assert_eq!(row.connection.edge_node, "iris-a");
            assert_eq!(row.relay_addr, Some(relay_a));
        } else {
            assert_eq!(row.connection.edge_node, "iris-b");
            assert_eq!(row.relay_addr, None);
        }
    }
    assert_eq!(a.snapshot().await.unwrap().len(), 3);

    assert!(b.withdraw(&lease_b, b0.connection_id).await.unwrap());
    assert!(!b.withdraw(&lease_b, b0.connection_id).await.unwrap());
    // A node withdraws only its own rows.
    assert!(!b.withdraw(&lease_b, a0.connection_id).await.unwrap());
    assert_eq!(
        ids(&a.tunnel_connections(tunnel).await.unwrap()),
        BTreeSet::from([a0.connection_id])
    );

    // A restart of iris-a (new incarnation) forgets what the previous run held.
    let again = a.join("iris-a", Some(relay_a)).await.unwrap();
    assert_ne!(again.incarnation, lease_a.incarnation);
    assert!(a.tunnel_connections(tunnel).await.unwrap().is_empty());
    assert!(matches!(
        a.heartbeat(&lease_a).await,
        Err(RegistryError::LeaseLost { .. })
    ));

    // Leaving removes the node's rows at once.
    b.leave(&lease_b).await.unwrap();
    assert!(a.snapshot().await.unwrap().is_empty());
}

async fn an_abandoned_node_is_forgotten_within_its_ttl(store: &Store) {
    let ttl = Duration::from_secs(2);
    let survivor = store.open(ttl).await;
    let lease = survivor.join("iris-a", None).await.unwrap();
    let tunnel = Uuid::new_v4();
    let kept = live(tunnel, 0);
    survivor.publish(&lease, &kept).await.unwrap();
    {
        // Like `kill -9`: joins, publishes, and is gone without a word.
        let doomed = store.open(ttl).await;
        let lease = doomed.join("iris-b", None).await.unwrap();
        doomed.publish(&lease, &live(tunnel, 1)).await.unwrap();
        assert_eq!(survivor.tunnel_connections(tunnel).await.unwrap().len(), 2);
    }
    // Readers stop trusting the rows when the lease ends by the store's clock, whether or not
    // a janitor ran; the survivor keeps its own lease by beating.
    let (alive, own) = (&survivor, &lease);
    let kept_id = kept.connection_id;
    eventually("the abandoned node's rows to vanish", || async move {
        alive.heartbeat(own).await.unwrap();
        ids(&alive.tunnel_connections(tunnel).await.unwrap()) == BTreeSet::from([kept_id])
    })
    .await;
    // The survivor's janitor deletes the dead node (its row is expired by now).
    let deleted = std::sync::atomic::AtomicUsize::new(0);
    let counted = &deleted;
    eventually("the janitor to delete the dead node", || async move {
        alive.heartbeat(own).await.unwrap();
        let gone = alive.expire().await.unwrap();
        counted.fetch_add(gone, std::sync::atomic::Ordering::Relaxed) + gone > 0
    })
    .await;
    assert_eq!(deleted.into_inner(), 1, "only the dead node");
    assert_eq!(survivor.expire().await.unwrap(), 0, "idempotent");
    survivor.heartbeat(&lease).await.unwrap();
    assert_eq!(
        ids(&survivor.snapshot().await.unwrap()),
        BTreeSet::from([kept.connection_id])
    );
}

async fn a_node_whose_lease_was_removed_notices_and_publishes_again(store: &Store) {
    let registry = store.open(DEFAULT_LEASE_TTL).await;
    let other = store.open(DEFAULT_LEASE_TTL).await;
    let lease = registry.join("iris-a", None).await.unwrap();
    let tunnel = Uuid::new_v4();
    let held = [live(tunnel, 0), live(tunnel, 1)];
    registry.replace(&lease, &held).await.unwrap();
    // As a partition would leave it: another node's janitor removed this node.
    remove_node(store, "iris-a").await;
    assert!(other.tunnel_connections(tunnel).await.unwrap().is_empty());

    let lost = registry.heartbeat(&lease).await.unwrap_err();
    assert!(
        matches!(lost, RegistryError::LeaseLost { ref node } if node == "iris-a"),
        "{lost}"
    );
    assert!(
        lost.to_string().contains("lost its cluster lease"),
        "{lost}"
    );
    assert!(matches!(
        registry.publish(&lease, &live(tunnel, 2)).await,
        Err(RegistryError::LeaseLost { .. })
    ));
    assert!(
        other.snapshot().await.unwrap().is_empty(),
        "a lost lease writes nothing"
    );

    let lease = registry.join("iris-a", None).await.unwrap();
    registry.replace(&lease, &held).await.unwrap();
    assert_eq!(
        ids(&other.tunnel_connections(tunnel).await.unwrap()),
        ids_of(&held)
    );
    registry.heartbeat(&lease).await.unwrap();
}

fn ids_of(rows: &[LiveConnection]) -> BTreeSet<Uuid> {
    rows.iter().map(|c| c.connection_id).collect()
}

/// Deletes a node row behind the registry's back.
async fn remove_node(store: &Store, node: &str) {
    match store {
        Store::Sqlite(dir) => {
            let conn = rusqlite::Connection::open(dir.join(crate::DB_FILE_NAME)).unwrap();
            conn.pragma_update(None, "foreign_keys", "ON").unwrap();
            conn.execute("DELETE FROM cluster_nodes WHERE node_name = ?1", [node])
                .unwrap();
        }
        Store::Postgres(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let driver = tokio::spawn(connection);
            client
                .execute("DELETE FROM cluster_nodes WHERE node_name = $1", &[&node])
                .await
                .unwrap();
            drop(client);
            let _ = driver.await;
        }
    }
}

async fn changes_are_announced_to_other_nodes(store: &Store) {
    let a = store.open(DEFAULT_LEASE_TTL).await;
    let b = store.open(DEFAULT_LEASE_TTL).await;
    let mut changes = b.changes();
    let lease = a.join("iris-a", None).await.unwrap();
    let tunnel = Uuid::new_v4();
    let mut figures = Vec::new();
    for index in 0..5u8 {
        changes.borrow_and_update();
        let c = live(tunnel, index);
        let started = tokio::time::Instant::now();
        a.publish(&lease, &c).await.unwrap();
        // A change reaches b's feed, and b's reload then shows the connection.
        loop {
            tokio::time::timeout(Duration::from_secs(60), changes.changed())
                .await
                .expect("a change is announced")
                .unwrap();
            if b.snapshot()
                .await
                .unwrap()
                .iter()
                .any(|r| r.connection.connection_id == c.connection_id)
            {
                break;
            }
        }
        figures.push(started.elapsed());
    }
    figures.sort();
    println!(
        "{}: publish → other node's change feed + reload: median {:?}, max {:?}",
        store.kind(),
        figures[figures.len() / 2],
        figures[figures.len() - 1]
    );
}

async fn a_schema_from_a_newer_build_is_refused(store: &Store) {
    drop(store.open(DEFAULT_LEASE_TTL).await);
    match store {
        Store::Sqlite(dir) => {
            let conn = rusqlite::Connection::open(dir.join(crate::DB_FILE_NAME)).unwrap();
            conn.execute("UPDATE cluster_schema_version SET version = 99", [])
                .unwrap();
            let err = ClusterRegistry::sqlite(dir, DEFAULT_LEASE_TTL)
                .await
                .unwrap_err();
            assert!(
                matches!(err, RegistryError::SchemaTooNew { found: 99, .. }),
                "{err}"
            );
        }
        Store::Postgres(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let driver = tokio::spawn(connection);
            client
                .execute("UPDATE cluster_schema_version SET version = 99", &[])
                .await
                .unwrap();
            drop(client);
            let _ = driver.await;
            let err = ClusterRegistry::postgres_url(url, DEFAULT_LEASE_TTL)
                .await
                .unwrap_err();
            assert!(
                matches!(err, RegistryError::SchemaTooNew { found: 99, .. }),
                "{err}"
            );
        }
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Store::sqlite()).await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(store) = super::Store::postgres() else { return };
                    super::$name(&store).await;
                }
            )*
        }
    };
}

on_both_backends!(
    publishes_and_reads_across_nodes,
    an_abandoned_node_is_forgotten_within_its_ttl,
    a_node_whose_lease_was_removed_notices_and_publishes_again,
    changes_are_announced_to_other_nodes,
    a_schema_from_a_newer_build_is_refused,
);

#[tokio::test]
async fn lease_ttls_out_of_range_are_refused() {
    let store = Store::sqlite();
    let Store::Sqlite(dir) = &store else {
        unreachable!()
    };
    let err = ClusterRegistry::sqlite(dir, Duration::from_millis(10))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("shorter than the minimum"),
        "{err}"
    );
    let registry = ClusterRegistry::sqlite(dir, DEFAULT_LEASE_TTL)
        .await
        .unwrap();
    assert_eq!(registry.heartbeat_interval(), DEFAULT_LEASE_TTL / 3);
    let err = registry.join("", None).await.unwrap_err();
    assert!(err.to_string().contains("invalid node name"), "{err}");
}
