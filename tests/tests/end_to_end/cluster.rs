//! Several iris nodes over one cluster registry, on the real path: a connector spreads its
//! connections over two nodes, `wvpc tunnel info` lists them with the node holding each, each
//! node's `PeerMap` names the other as the holder of the tunnel, and a node that dies without
//! a word is forgotten once its lease ends. On the SQLite registry of a shared state
//! directory, and on PostgreSQL (skipped where the harness finds none).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;
use wvpc_directory::ClusterRegistry;
use wvpc_iris::peers::RelayPeer;
use wvpc_platform::iris_node::RelayOptions;
use wvpc_platform::stack::{IrisNode, IrisOptions};
use wvpc_tests::real::{RealWorld, RunningConnector, WorldOptions};
use wvpc_tests::{trace_init, within};

/// Short enough for a test, long enough for heartbeats (TTL/3) on a busy machine.
const TTL: Duration = Duration::from_secs(2);

async fn world() -> RealWorld {
    trace_init();
    within(
        "starting the real path",
        RealWorld::start_with(WorldOptions {
            connector: false,
            ..WorldOptions::default()
        }),
    )
    .await
    .expect("starting the real path")
}

async fn node(w: &RealWorld, name: &str, cluster: Option<Arc<ClusterRegistry>>) -> IrisNode {
    let options = IrisOptions {
        node_name: name.into(),
        lease_ttl: TTL,
        relay: Some(RelayOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
        }),
        cluster,
        ..IrisOptions::default()
    };
    IrisNode::start(
        w.stack.directory.clone(),
        w.state(),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        &options,
    )
    .await
    .expect("starting an iris node")
}

/// `(node, connector)` of every live connection of the world's tunnel, as `wvpc tunnel info
/// --json` prints them (SQLite: every process of the state publishes there).
async fn tunnel_info(w: &RealWorld) -> BTreeSet<(String, String)> {
    let cli = wvpc_cli::Cli::parse_from([
        "wvpc".to_owned(),
        "--state".to_owned(),
        w.state().display().to_string(),
        "tunnel".to_owned(),
        "info".to_owned(),
        w.tunnel_id.to_string(),
        "--json".to_owned(),
    ]);
    let mut out = Vec::new();
    wvpc_cli::run(cli, &mut out)
        .await
        .expect("wvpc tunnel info");
    let info: serde_json::Value = serde_json::from_slice(&out).unwrap();
    info["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["edge_node"].as_str().unwrap().to_owned(),
                c["client_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// What the registry lists for the world's tunnel.
async fn registry_rows(registry: &ClusterRegistry, w: &RealWorld) -> BTreeSet<(String, String)> {
    registry
        .tunnel_connections(w.tunnel_id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.connection.edge_node, c.connection.client_id.to_string()))
        .collect()
}

/// Polls `read` until it gives `want` (bounded: only a hang trips it).
async fn shows<F: Future<Output = BTreeSet<(String, String)>>>(
    what: &str,
    want: &BTreeSet<(String, String)>,
    mut read: impl FnMut() -> F,
) {
    within(what, async {
        while read().await != *want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// The scenario on one registry: `cluster` gives each node its registry handle (`None`: the
/// state's SQLite), `list` reads the tunnel's connections as `wvpc tunnel info` would.
async fn two_nodes_share_one_registry<L, F>(
    w: &RealWorld,
    cluster: impl Fn() -> Option<Arc<ClusterRegistry>>,
    list: L,
    store: &str,
) where
    L: Fn() -> F,
    F: Future<Output = BTreeSet<(String, String)>>,
{
    let a = node(w, "iris-a", cluster()).await;
    let b = node(w, "iris-b", cluster()).await;
    let relay_b = b.relay_advertise.expect("b's relay address");

    // One connector, its two connections spread over the nodes (index 0 → a, 1 → b).
    let mut config = w.connector_config(a.edge_addr);
    config.edge = vec![a.edge_addr, b.edge_addr];
    config.ha_connections = 2;
    let connector = within("the connector registers", RunningConnector::start(config))
        .await
        .expect("starting a connector");
    within(
        "a holds one connection",
        a.registry().wait_for_connection(w.tunnel_id),
    )
    .await;
    within(
        "b holds one connection",
        b.registry().wait_for_connection(w.tunnel_id),
    )
    .await;
    let on_b = Instant::now();

    // Each node's peer map names the other (with its relay address), never itself.
    within("a's peer map names b", async {
        while a.peers().holders(w.tunnel_id).is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    println!(
        "{store}: connection registered on b → a's PeerMap names b after {:?}",
        on_b.elapsed()
    );
    assert_eq!(
        a.peers().holders(w.tunnel_id),
        [RelayPeer {
            node: "iris-b".into(),
            addr: relay_b,
            connections: 1
        }]
    );
    within("b's peer map names a", async {
        while b.peers().holders(w.tunnel_id).is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(b.peers().holders(w.tunnel_id)[0].node, "iris-a");

    // `wvpc tunnel info`: both connections, each with the node that holds it.
    let client = connector.client_id.to_string();
    let both = BTreeSet::from([
        ("iris-a".to_owned(), client.clone()),
        ("iris-b".to_owned(), client.clone()),
    ]);
    shows("tunnel info listing both nodes", &both, &list).await;

    // b dies without a word (like `kill -9`: nothing withdrawn, no goodbye). Its rows go once
    // its lease ends, and a's janitor deletes it (which a's peer map hears about).
    drop(b);
    let died = Instant::now();
    let only_a = BTreeSet::from([("iris-a".to_owned(), client.clone())]);
    shows("tunnel info forgetting the dead node", &only_a, &list).await;
    within("a's peer map forgetting b", async {
        while !a.peers().holders(w.tunnel_id).is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    println!(
        "{store}: a node dead → gone from a's PeerMap after {:?} (lease TTL {TTL:?})",
        died.elapsed()
    );
    drop(connector);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_the_state_registry_list_each_others_connections_and_forget_a_dead_one() {
    let w = world().await;
    two_nodes_share_one_registry(&w, || None, || tunnel_info(&w), "SQLite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_postgres_list_each_others_connections_and_forget_a_dead_one() {
    let Some(server) = wvpc_pg_harness::PgServer::shared() else {
        return;
    };
    let url = server.create_database();
    let w = world().await;
    let open = || async { Arc::new(ClusterRegistry::postgres_url(&url, TTL).await.unwrap()) };
    let (a, b, reader) = (open().await, open().await, open().await);
    let handles = std::sync::Mutex::new(vec![b, a]);
    two_nodes_share_one_registry(
        &w,
        || handles.lock().unwrap().pop(),
        || registry_rows(&reader, &w),
        "PostgreSQL",
    )
    .await;
}
