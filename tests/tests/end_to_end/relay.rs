//! Relaying between iris nodes on the real path: the script's request enters iris node A,
//! whose binding-worker only knows A, while the connector's QUIC connection terminates on
//! node B; A relays the CONNECT to B over mutual TLS and B resolves and dials through its
//! tunnel.

use std::collections::HashMap;
use std::sync::Arc;

use wvpc_iris::peers::{PeerMap, RelayPeer};
use wvpc_platform::iris_node::RelayOptions;
use wvpc_platform::stack::{IrisNode, IrisOptions};
use wvpc_tests::client;
use wvpc_tests::real::{RealWorld, RunningConnector, WorldOptions};
use wvpc_tests::{trace_init, within};

/// The value of a sample line `name value` (name with its labels) in Prometheus text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_request_entering_a_node_without_the_tunnel_is_served_through_its_holder() {
    trace_init();
    let peers = Arc::new(PeerMap::new());
    let relay_on = |ip: &str| {
        Some(RelayOptions {
            listen: format!("{ip}:0").parse().unwrap(),
            advertise: None,
        })
    };
    let w = within(
        "starting the real path with node A",
        RealWorld::start_with(WorldOptions {
            connector: false,
            iris: IrisOptions {
                node_name: "iris-a".into(),
                metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
                relay: relay_on("127.0.0.1"),
                peers: Some(peers.clone()),
                ..IrisOptions::default()
            },
            ..WorldOptions::default()
        }),
    )
    .await
    .expect("starting the real path");
    // Node B: same directory and state (so the same relay CA), its own addresses.
    let b = IrisNode::start(
        w.stack.directory.clone(),
        w.state(),
        "127.0.0.2:0".parse().unwrap(),
        "127.0.0.2:0".parse().unwrap(),
        &IrisOptions {
            node_name: "iris-b".into(),
            relay: relay_on("127.0.0.2"),
            ..IrisOptions::default()
        },
    )
    .await
    .expect("starting node B");
    let _connector = within(
        "the connector registers with B",
        RunningConnector::start(w.connector_config(b.edge_addr)),
    )
    .await
    .expect("starting a connector");
    within(
        "B holds the tunnel",
        b.registry().wait_for_connections(w.tunnel_id, 1),
    )
    .await;
    assert!(!w.stack.registry().has_usable_connection(w.tunnel_id));

    // A does not know yet who holds the tunnel: the request fails, nothing hangs.
    let reply = within(
        "a request before A knows",
        client::get(w.stack.script_addr, "/x"),
    )
    .await;
    assert_ne!(reply.status, 200, "{}", reply.text());

    peers.replace(HashMap::from([(
        w.tunnel_id,
        vec![RelayPeer {
            node: "iris-b".into(),
            addr: b.relay_advertise.expect("B's relay address"),
            connections: 1,
        }],
    )]));
    for i in 0..3 {
        let reply = within(
            "a relayed request",
            client::get(w.stack.script_addr, &format!("/relayed/{i}")),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.text(), format!("hello from origin: /relayed/{i}"));
    }
    let metrics = within(
        "scraping A",
        client::scrape(w.stack.metrics_addr.expect("A's metrics"), "/metrics"),
    )
    .await;
    assert!(
        sample(&metrics, "wvpc_iris_relays_total{result=\"ok\"}") >= 1.0,
        "{metrics}"
    );
}
