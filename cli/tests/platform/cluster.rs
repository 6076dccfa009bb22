//! The cluster as processes, and how it fails: a throwaway PostgreSQL holds the directory and
//! the cluster registry; iris nodes `iris-a`, `iris-b`, `iris-c` run on 127.0.0.2, .3 and .4,
//! each with a relay listener; the binding-worker knows only `iris-a`, so every request enters
//! there and is relayed to a node holding the tunnel when `iris-a` holds none.
//!
//! A partition between a node and PostgreSQL is a [`TcpPartition`] in front of PostgreSQL on
//! that node's path only: nothing moves and nothing is closed, as behind a link that drops
//! silently. The figures of each failure are printed; no assertion is about time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wvpc_pg_harness::PgServer;
use wvpc_tests::client::{connect_via_iris, connect_via_relay, get_via_iris};
use wvpc_tests::fault::TcpPartition;
use wvpc_tests::netns::Netns;
use wvpc_tests::{TempDir, within};

use super::{
    Directory, Platform, PrivateNetwork, Proc, Role, connector_process_to, finish_load, free_port,
    iris_sample, load, tunnel_and_service, within_a_minute,
};

/// Active tunnel connections on a node.
const ACTIVE: &str = "wvpc_iris_tunnel_connections{state=\"active\"}";
/// CONNECT streams a node served (relayed ones included).
const STREAMS: &str = "wvpc_iris_streams_total";

/// A process of a cluster: its loopback (or namespace) address, the `--directory` it is
/// given (PostgreSQL itself, or a faulty path to it), and the namespace it runs in.
struct Member {
    ip: String,
    directory: String,
    netns: Option<String>,
}

impl Member {
    fn new(ip: &str, directory: &str) -> Self {
        Self {
            ip: ip.to_owned(),
            directory: directory.to_owned(),
            netns: None,
        }
    }

    /// Runs inside `netns`, listening on its address.
    fn inside(netns: &Netns, directory: &str) -> Self {
        Self {
            ip: netns.ip().to_string(),
            directory: directory.to_owned(),
            netns: Some(netns.name().to_owned()),
        }
    }

    fn any_port(&self) -> String {
        format!("{}:0", self.ip)
    }

    /// A port for the metrics listener, known before it starts.
    fn metrics_port(&self) -> String {
        match self.netns {
            // A fresh namespace has every port free.
            Some(_) => format!("{}:9090", self.ip),
            None => free_port(false).to_string(),
        }
    }
}

/// The iris nodes' names, in order.
const NODE_NAMES: [&str; 3] = ["iris-a", "iris-b", "iris-c"];

impl Platform {
    /// The directory API (`api`), iris nodes `iris-a`, `iris-b`… (`nodes`, lease
    /// `lease_ttl`), a binding-worker that knows only `iris-a`, and a runtime on `directory`.
    async fn start_cluster(
        directory: &str,
        api: &Member,
        nodes: &[Member],
        lease_ttl: &str,
    ) -> Platform {
        wvpc_tests::trace_init();
        let state = TempDir::new("cluster");
        let token = Directory::open_spec(Some(directory), state.path())
            .unwrap()
            .create_token("deployer", Role::Admin, None)
            .unwrap()
            .1;
        let directory_api = Proc::start_in(
            api.netns.as_deref(),
            state.path(),
            "directory",
            vec![
                "directory".into(),
                "--directory".into(),
                api.directory.clone(),
                "--listen".into(),
                api.any_port(),
            ],
        )
        .await;
        let mut started = Vec::new();
        for (node, name) in nodes.iter().zip(NODE_NAMES) {
            started.push(
                Proc::start_in(
                    node.netns.as_deref(),
                    state.path(),
                    "iris",
                    vec![
                        "iris".into(),
                        "--directory".into(),
                        node.directory.clone(),
                        "--node-name".into(),
                        name.into(),
                        "--listen".into(),
                        node.any_port(),
                        "--edge-listen".into(),
                        node.any_port(),
                        "--relay-listen".into(),
                        node.any_port(),
                        "--metrics".into(),
                        node.metrics_port(),
                        "--lease-ttl".into(),
                        lease_ttl.into(),
                        "--grace-period".into(),
                        "1s".into(),
                    ],
                )
                .await,
            );
        }
        let mut started = started.into_iter();
        let iris = started.next().expect("at least one node");
        let more_iris: Vec<Proc> = started.collect();
        let binding_worker = Proc::start(
            state.path(),
            "binding-worker",
            vec![
                "binding-worker".into(),
                "--directory".into(),
                directory.into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--iris".into(),
                iris.addr(0).to_string(),
            ],
        )
        .await;
        let runtime = Proc::start(
            state.path(),
            "runtime",
            vec![
                "runtime".into(),
                "--directory".into(),
                directory.into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--binding-worker".into(),
                binding_worker.addr(0).to_string(),
            ],
        )
        .await;
        Platform {
            state,
            directory: directory_api,
            iris,
            more_iris,
            binding_worker,
            runtime,
            token,
            directory_url: Some(directory.to_owned()),
        }
    }

    /// The nodes `wvpc tunnel info` lists for `tunnel`'s connections, one entry per
    /// connection, sorted.
    async fn holders_listed(&self, tunnel: &str) -> Vec<String> {
        let info = self
            .wvpc_local(&["tunnel", "info", tunnel, "--json"])
            .await
            .expect("wvpc tunnel info");
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        let mut nodes: Vec<String> = info["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["edge_node"].as_str().unwrap().to_owned())
            .collect();
        nodes.sort();
        nodes
    }

    /// Polls (bounded) until `wvpc tunnel info` lists exactly `nodes` for `tunnel`.
    async fn until_holders(&self, tunnel: &str, nodes: &[&str]) {
        within_a_minute(&format!("tunnel info listing {nodes:?}"), async {
            loop {
                if self.holders_listed(tunnel).await == nodes {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
}

/// The edge (QUIC) address of a node.
fn edge_of(node: &Proc) -> SocketAddr {
    node.addr(1)
}

impl Platform {
    /// Deploys the proxy example bound to `service` and waits until it answers through the
    /// whole path (asserting the origin's answer); returns its host.
    async fn deploy_proxy(&self, service: uuid::Uuid) -> &'static str {
        self.deploy(&self.token, "proxy", wvpc_tests::guests::PROXY, service, "")
            .await
            .unwrap();
        let host = "proxy.local.workers.localhost";
        let reply = self.until(host, "/up", 200, "").await;
        assert_eq!(reply.text(), "hello from origin: /up");
        host
    }
}

/// Polls (bounded) until a CONNECT to `node` for `service` gets `path` from the origin.
async fn until_routed(node: &Proc, service: uuid::Uuid, path: &str) -> wvpc_tests::client::Reply {
    within_a_minute(&format!("a node routing service {service}"), async {
        loop {
            let reply = get_via_iris(node.addr(0), service, path).await;
            if reply.status == 200 {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// The relay listener of a node, from the line after its ready line.
async fn relay_of(node: &Proc) -> SocketAddr {
    within("the relay listener's line", async {
        loop {
            let line = node
                .stdout
                .lock()
                .unwrap()
                .iter()
                .find(|line| line.trim_start().starts_with("relay listener on"))
                .cloned();
            if let Some(line) = line {
                return super::addrs_in(&line)[0];
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Waits (bounded) until `node` has `count` active tunnel connections.
async fn until_active(node: &Proc, count: f64) {
    within(&format!("{count} tunnel connections on a node"), async {
        while iris_sample(node, ACTIVE).await != count {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// New CONNECTs to `iris` for `service`, one at a time, until `stop`: (ok, failed).
fn fresh_connects(
    iris: SocketAddr,
    service: uuid::Uuid,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    let stop = stop.clone();
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        while !stop.load(Ordering::SeqCst) {
            let reply = get_via_iris(iris, service, "/fresh").await;
            if reply.status == 200 {
                ok += 1;
            } else {
                eprintln!(
                    "a fresh CONNECT failed: {} {:?}",
                    reply.status,
                    reply.headers.get("proxy-status")
                );
                failed += 1;
            }
        }
        (ok, failed)
    })
}

/// Waits (bounded) until `counter` reaches `n`.
async fn until_count(what: &str, counter: &std::sync::atomic::AtomicUsize, n: usize) {
    within_a_minute(what, async {
        while counter.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_s_requests_go_on_through_the_other_holder_and_forged_relays_are_refused() {
    let Some(pg) = PgServer::shared() else {
        return;
    };
    let url = pg.create_database();
    let net = PrivateNetwork::start(&[("a.internal", "127.0.0.9")]).await;
    let nodes = [
        Member::new("127.0.0.2", &url),
        Member::new("127.0.0.3", &url),
        Member::new("127.0.0.4", &url),
    ];
    let api = Member::new("127.0.0.1", &url);
    let mut platform = Platform::start_cluster(&url, &api, &nodes, "2s").await;
    let (office, service) =
        tunnel_and_service(&platform.directory(), "office", "a", "a.internal", &net);
    // Two connections on b and two on c (connection i dials edge i mod 2); none on a.
    let edges = [
        edge_of(&platform.more_iris[0]),
        edge_of(&platform.more_iris[1]),
    ];
    let _connector =
        connector_process_to(&platform, &office, &edges, &["--ha-connections", "4"]).await;
    until_active(&platform.more_iris[0], 2.0).await;
    until_active(&platform.more_iris[1], 2.0).await;
    platform
        .until_holders("office", &["iris-b", "iris-b", "iris-c", "iris-c"])
        .await;
    let host = platform.deploy_proxy(service).await;

    // A hand-built loop: a relayed CONNECT that says it comes from the node it reaches.
    let relay_a = relay_of(&platform.iris).await;
    let ca = wvpc_iris::relay::RelayCa::load_or_create(&platform.state().join("relay")).unwrap();
    let as_a = ca.issue("iris-a").unwrap().client_config().unwrap();
    let reply = connect_via_relay(
        relay_a,
        "iris-a",
        as_a,
        service,
        &[("wvpc-relayed-by", "iris-a")],
    )
    .await;
    let proxy_status = reply
        .headers
        .get("proxy-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    eprintln!("a relay loop: {} {proxy_status}", reply.status);
    assert_eq!(reply.status, 508, "{proxy_status}");
    assert!(
        proxy_status.contains("proxy_loop_detected"),
        "{proxy_status}"
    );
    // The relay header on the public CONNECT listener: refused, nothing relayed.
    let reply = connect_via_iris(
        platform.iris.addr(0),
        service,
        &[("wvpc-relayed-by", "iris-b")],
    )
    .await;
    eprintln!(
        "a forged relay header on the public listener: {} {:?}",
        reply.status,
        reply.headers.get("proxy-status")
    );
    assert_eq!(reply.status, 400);

    // Load through a, relayed to b or c.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, handles) = load(&platform, host, "/slow/50", 8, &stop);
    until_count("load through the relay", &ok, 40).await;
    let streams_b = iris_sample(&platform.more_iris[0], STREAMS).await;
    let streams_c = iris_sample(&platform.more_iris[1], STREAMS).await;
    eprintln!("streams before the kill: iris-b {streams_b}, iris-c {streams_c}");

    // kill -9 of b: its relayed streams break; the next CONNECTs find it refusing and go to c.
    platform.more_iris[0].kill().await;
    let killed = Instant::now();
    let (at_kill, failed_before) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    until_count("load after the kill", &ok, at_kill + 80).await;
    eprintln!(
        "iris-b killed under load: {} ok and {} failed in the {:.2?} after",
        ok.load(Ordering::SeqCst) - at_kill,
        failed.load(Ordering::SeqCst) - failed_before,
        killed.elapsed()
    );
    let streams_c_after = iris_sample(&platform.more_iris[1], STREAMS).await;
    assert!(
        streams_c_after > streams_c,
        "iris-c serves the requests b served ({streams_c} → {streams_c_after})"
    );
    // b's lease runs out: the registry forgets its connections.
    platform
        .until_holders("office", &["iris-c", "iris-c"])
        .await;
    eprintln!("iris-b forgotten {:.2?} after the kill", killed.elapsed());
    let now = ok.load(Ordering::SeqCst);
    let failed_now = failed.load(Ordering::SeqCst);
    until_count("load once b is forgotten", &ok, now + 40).await;

    // None may hang: every request of the load ends.
    assert_eq!(
        finish_load(&stop, handles, &ok, &failed).await,
        failed_now,
        "once b is forgotten, no request fails"
    );
}

/// How a test cuts node a (and the directory API beside it) off from PostgreSQL.
enum Partition {
    /// A [`TcpPartition`] forwarder on their path to PostgreSQL.
    Forwarder(TcpPartition),
    /// They run in a network namespace whose store link is taken down.
    Link(Netns),
}

impl Partition {
    fn cut(&self) {
        match self {
            Partition::Forwarder(forwarder) => forwarder.partition(),
            Partition::Link(netns) => netns.cut_store_link(),
        }
    }

    fn heal(&self) {
        match self {
            Partition::Forwarder(forwarder) => forwarder.heal(),
            Partition::Link(netns) => netns.heal_store_link(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_postgres_keeps_routing_and_rejoins_and_republishes_when_it_returns() {
    let Some(pg) = PgServer::shared() else {
        return;
    };
    let url = pg.create_database();
    let server: SocketAddr = format!("{}:{}", pg.host(), pg.port()).parse().unwrap();
    // Node a and the directory API reach PostgreSQL through the forwarder that will be cut.
    let forwarder = TcpPartition::start(server).await.unwrap();
    let behind = url.replace(&server.to_string(), &forwarder.addr.to_string());
    let api = Member::new("127.0.0.1", &behind);
    let nodes = [
        Member::new("127.0.0.2", &behind),
        Member::new("127.0.0.3", &url),
    ];
    let platform = Platform::start_cluster(&url, &api, &nodes, "1s").await;
    let store = store_named(&behind);
    cut_off_from_postgres(platform, Partition::Forwarder(forwarder), &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_in_a_namespace_whose_link_to_postgres_goes_down_keeps_routing_and_rejoins() {
    let netns = match Netns::create() {
        Ok(netns) => netns,
        Err(why) => {
            eprintln!("SKIPPED (namespaces): {why}");
            return;
        }
    };
    // PostgreSQL listens on the test's end of the store link only: node a reaches it through
    // that link, everything in the test's namespace reaches it locally.
    let pg = match PgServer::start_on(netns.host_store_ip()) {
        Ok(pg) => pg,
        Err(why) => {
            eprintln!("SKIPPED (PostgreSQL): {why}");
            return;
        }
    };
    let url = pg.create_database();
    let api = Member::inside(&netns, &url);
    let nodes = [Member::inside(&netns, &url), Member::new("127.0.0.3", &url)];
    let platform = Platform::start_cluster(&url, &api, &nodes, "1s").await;
    let store = store_named(&url);
    cut_off_from_postgres(platform, Partition::Link(netns), &store).await;
}

/// How the directory names the store at `url` in its errors (`postgres host:port/db`).
fn store_named(url: &str) -> String {
    let rest = url.split('@').nth(1).expect("user@host in the URL");
    format!("postgres {rest}")
}

/// Node a holds the tunnel and the binding-worker sends every request to a; `link` cuts a
/// and the directory API off from PostgreSQL (`store`, as errors name it), then heals.
async fn cut_off_from_postgres(platform: Platform, link: Partition, store: &str) {
    let net =
        PrivateNetwork::start(&[("a.internal", "127.0.0.9"), ("b.internal", "127.0.0.10")]).await;
    let (office, service) =
        tunnel_and_service(&platform.directory(), "office", "a", "a.internal", &net);
    let _connector = connector_process_to(
        &platform,
        &office,
        &[edge_of(&platform.iris)],
        &["--ha-connections", "2"],
    )
    .await;
    until_active(&platform.iris, 2.0).await;
    platform
        .until_holders("office", &["iris-a", "iris-a"])
        .await;
    let host = platform.deploy_proxy(service).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, handles) = load(&platform, host, "/slow/20", 4, &stop);
    until_count("load before the cut", &ok, 20).await;

    link.cut();
    let cut = Instant::now();
    // A write through the API, which is behind the same link: a clear 503 naming the store.
    let refused = platform
        .wvpc(
            &platform.token,
            &["tunnel", "create", "written-during-the-cut"],
        )
        .await
        .expect_err("a write while the store is unreachable fails");
    eprintln!(
        "a write during the cut, after {:.2?}: {}",
        cut.elapsed(),
        refused.trim()
    );
    assert!(refused.contains("503"), "{refused}");
    assert!(refused.contains("directory unavailable"), "{refused}");
    assert!(
        refused.contains(store),
        "names the store ({store}): {refused}"
    );
    // Nobody heartbeats a's lease: the registry forgets its connections (read by the test
    // straight from PostgreSQL), while a itself keeps routing with the table it has.
    platform.until_holders("office", &[]).await;
    eprintln!("iris-a's lease expired {:.2?} into the cut", cut.elapsed());
    let during = ok.load(Ordering::SeqCst);
    until_count("load during the cut", &ok, during + 40).await;
    eprintln!(
        "during the cut: {} ok, {} failed",
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst)
    );

    link.heal();
    let healed = Instant::now();
    // a finds its lease lost, joins again and publishes its connections again.
    platform
        .until_holders("office", &["iris-a", "iris-a"])
        .await;
    eprintln!(
        "iris-a rejoined and republished {:.2?} after the link healed",
        healed.elapsed()
    );
    let lost = iris_sample(&platform.iris, "wvpc_iris_registry_lease_lost_total").await;
    assert!(lost >= 1.0, "iris-a counted its lost lease ({lost})");
    // Its change feed resumes: a service created now is routed by a.
    let directory = platform.directory();
    let (credentials, second) = tunnel_and_service(&directory, "lab", "b", "b.internal", &net);
    let _lab_connector = connector_process_to(
        &platform,
        &credentials,
        &[edge_of(&platform.iris)],
        &["--ha-connections", "1"],
    )
    .await;
    let reply = until_routed(&platform.iris, second, "/after").await;
    assert_eq!(reply.text(), "hello from origin: /after");
    // The write refused during the cut changed nothing.
    assert!(
        directory
            .find_tunnel("written-during-the-cut")
            .unwrap()
            .is_none()
    );

    assert_eq!(
        finish_load(&stop, handles, &ok, &failed).await,
        0,
        "a node cut off from the store keeps routing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_longer_than_the_leases_leaves_the_data_plane_serving_and_the_feed_resumes() {
    // A server of its own: this test stops it.
    let pg = match PgServer::start() {
        Ok(pg) => pg,
        Err(why) => {
            eprintln!("SKIPPED (PostgreSQL): {why}");
            return;
        }
    };
    let url = pg.create_database();
    let net =
        PrivateNetwork::start(&[("a.internal", "127.0.0.9"), ("b.internal", "127.0.0.10")]).await;
    let nodes = [
        Member::new("127.0.0.2", &url),
        Member::new("127.0.0.3", &url),
    ];
    const LEASE_TTL: Duration = Duration::from_secs(1);
    let api = Member::new("127.0.0.1", &url);
    let platform = Platform::start_cluster(&url, &api, &nodes, "1s").await;
    let (office, service) =
        tunnel_and_service(&platform.directory(), "office", "a", "a.internal", &net);
    // The tunnel on b only: every request is relayed a → b.
    let _connector = connector_process_to(
        &platform,
        &office,
        &[edge_of(&platform.more_iris[0])],
        &["--ha-connections", "2"],
    )
    .await;
    until_active(&platform.more_iris[0], 2.0).await;
    platform
        .until_holders("office", &["iris-b", "iris-b"])
        .await;
    let host = platform.deploy_proxy(service).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, handles) = load(&platform, host, "/slow/20", 4, &stop);
    until_count("load before the restart", &ok, 20).await;
    // Besides the pooled pipes of the load, a new CONNECT at a time straight to a, each one
    // looked up in a's map of holders.
    let fresh = fresh_connects(platform.iris.addr(0), service, &stop);

    pg.kill();
    let down = Instant::now();
    let at_kill = ok.load(Ordering::SeqCst);
    until_count("load while PostgreSQL is down", &ok, at_kill + 40).await;
    let refused = platform
        .wvpc(&platform.token, &["tunnel", "create", "written-while-down"])
        .await
        .expect_err("a write while PostgreSQL is down fails");
    eprintln!("a write while PostgreSQL is down: {}", refused.trim());
    assert!(refused.contains("503"), "{refused}");
    // An outage longer than the leases: when PostgreSQL returns, every lease has expired by
    // its clock, and each node must join again before the others see its connections.
    tokio::time::sleep(LEASE_TTL * 2).await;
    pg.restart();
    eprintln!(
        "PostgreSQL was down {:.2?}: {} requests served meanwhile",
        down.elapsed(),
        ok.load(Ordering::SeqCst) - at_kill
    );

    // The feed resumes on a: a service created after the restart is routed by a (relayed to
    // b, where its tunnel's connector registers).
    let directory = within_a_minute("the directory reachable again", async {
        loop {
            if let Ok(directory) = Directory::open_spec(Some(&url), platform.state()) {
                return directory;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let (credentials, second) = tunnel_and_service(&directory, "lab", "b", "b.internal", &net);
    let _lab_connector = connector_process_to(
        &platform,
        &credentials,
        &[edge_of(&platform.more_iris[0])],
        &["--ha-connections", "1"],
    )
    .await;
    let restarted = Instant::now();
    let reply = until_routed(&platform.iris, second, "/after").await;
    assert_eq!(reply.text(), "hello from origin: /after");
    eprintln!(
        "a service created after the restart was routed through a {:.2?} later",
        restarted.elapsed()
    );
    platform
        .until_holders("office", &["iris-b", "iris-b"])
        .await;

    let failed = finish_load(&stop, handles, &ok, &failed).await;
    let (fresh_ok, fresh_failed) = within("the fresh CONNECTs stop", fresh).await.unwrap();
    eprintln!("fresh CONNECTs to a: {fresh_ok} ok, {fresh_failed} failed");
    assert_eq!(failed, 0, "the data plane does not need PostgreSQL");
    assert_eq!(fresh_failed, 0, "a relays while the leases are renewed");
}
