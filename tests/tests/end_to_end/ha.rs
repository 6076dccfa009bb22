//! A tunnel that survives failures, on the real path: replicas, failover under load, graceful
//! shutdown of a replica, an iris restart, the connector's limits, metrics and
//! `wvpc tunnel info`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use clap::Parser as _;
use wvpc_connector::AllowRule;
use wvpc_iris::{FlowContext, TunnelPool};
use wvpc_platform::stack::{IrisNode, IrisOptions};
use wvpc_tests::client;
use wvpc_tests::fault::UdpRelay;
use wvpc_tests::origin::Origin;
use wvpc_tests::real::{ORIGIN_IP, RealWorld, RunningConnector, WorldOptions};
use wvpc_tests::{trace_init, within};

async fn world(options: WorldOptions) -> RealWorld {
    trace_init();
    within("starting the real path", RealWorld::start_with(options))
        .await
        .expect("starting the real path")
}

fn no_connector() -> WorldOptions {
    WorldOptions {
        connector: false,
        ..WorldOptions::default()
    }
}

async fn replica(config: wvpc_connector::ConnectorConfig) -> RunningConnector {
    within("a replica registers", RunningConnector::start(config))
        .await
        .expect("starting a connector")
}

/// Generous bound for the load phase: only a hang trips it.
async fn within_long<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The value of a sample line `name value` (name with its labels) in Prometheus text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_replicas_under_load_loses_no_request() {
    let w = world(no_connector()).await;
    let relay = UdpRelay::start(w.stack.edge_addr).await.unwrap();
    let mut doomed = w.connector_config(relay.addr);
    doomed.ha_connections = 2;
    let doomed = replica(doomed).await;
    let mut survivor = w.connector_config(w.stack.edge_addr);
    survivor.ha_connections = 2;
    let survivor = replica(survivor).await;
    let registry = w.stack.registry().clone();
    within(
        "4 connections",
        registry.wait_for_connections(w.tunnel_id, 4),
    )
    .await;
    let addr = w.stack.script_addr;
    // DNS for the service is cached from here on.
    assert_eq!(
        within("warm-up", client::get(addr, "/warm")).await.status,
        200
    );

    const REQUESTS: usize = 60;
    let started = Instant::now();
    let mut load = Vec::new();
    let mut cut_after = None;
    for i in 0..REQUESTS {
        if i == REQUESTS / 3 {
            // The doomed replica goes silent, as with kill -9: no close frame.
            relay.cut();
            cut_after = Some(started.elapsed());
        }
        load.push(tokio::spawn(async move {
            let path = format!("/slow/150?i={i}");
            let sent = Instant::now();
            let reply = client::get(addr, &path).await;
            (path, reply.status, reply.text(), sent.elapsed())
        }));
        // The load's pacing: a request every 10 ms, about 15 in flight.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let results = within_long("the load completes", futures::future::join_all(load)).await;
    let elapsed = started.elapsed();
    let (mut ok, mut slowest, mut failed) = (0, Duration::ZERO, Vec::new());
    for result in results {
        let (path, status, text, took) = result.expect("a request task panicked");
        if status == 200 && text == format!("hello from origin: {path}") {
            ok += 1;
            slowest = slowest.max(took);
        } else {
            failed.push(format!("{path}: {status} {text}"));
        }
    }
    let metrics = registry.metrics();
    eprintln!(
        "failover: {REQUESTS} requests in {elapsed:.2?} (replica cut at {:.2?}): {ok} ok, \
         {} failed; slowest answer {slowest:.2?} (a request in flight on the dead replica \
         waits for its death to be noticed, then is sent again); {} connection(s) found \
         unresponsive, {} stream opening(s) retried on a live connection",
        cut_after.unwrap(),
        failed.len(),
        metrics.connections_unresponsive.get(),
        metrics.stream_retries.get()
    );
    assert!(failed.is_empty(), "requests failed: {failed:#?}");
    assert!(
        metrics.connections_unresponsive.get() >= 1,
        "the dead replica was noticed by its silence"
    );
    // The silent replica is out of the registry; the survivor serves alone.
    within(
        "the dead replica leaves the registry",
        registry.wait_for(w.tunnel_id, |c| {
            c.len() == 2 && c.iter().all(|c| c.client_id == survivor.client_id)
        }),
    )
    .await;
    let reply = within("after failover", client::get(addr, "/after")).await;
    assert_eq!(reply.status, 200);
    drop(doomed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_replica_dies_a_request_fails_with_destination_unavailable_instead_of_hanging() {
    let w = world(no_connector()).await;
    let (relay_a, relay_b) = (
        UdpRelay::start(w.stack.edge_addr).await.unwrap(),
        UdpRelay::start(w.stack.edge_addr).await.unwrap(),
    );
    let _a = replica(w.connector_config(relay_a.addr)).await;
    let _b = replica(w.connector_config(relay_b.addr)).await;
    let registry = w.stack.registry().clone();
    within(
        "2 connections",
        registry.wait_for_connections(w.tunnel_id, 2),
    )
    .await;
    let addr = w.stack.script_addr;
    // DNS cached, and an origin connection pooled on one of the replicas.
    assert_eq!(
        within("warm-up", client::get(addr, "/warm")).await.status,
        200
    );

    relay_a.cut();
    relay_b.cut();
    let cut = Instant::now();
    let reply = within("a request during the outage", client::get(addr, "/outage")).await;
    eprintln!(
        "full outage: the first request was answered {:.2?} after every replica went silent",
        cut.elapsed()
    );
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.text(), "ProxyError: destination_unavailable");
    assert!(!w.origin.seen().iter().any(|s| s.path == "/outage"));
    assert!(registry.connections(w.tunnel_id).is_empty());
    let reply = within("the next request", client::get(addr, "/outage-2")).await;
    assert_eq!(reply.text(), "ProxyError: destination_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_shutting_down_finishes_its_request_while_new_ones_go_to_the_other() {
    let w = world(no_connector()).await;
    let addr = w.stack.script_addr;
    let mut config = w.connector_config(w.stack.edge_addr);
    config.ha_connections = 2;
    config.grace_period = Duration::from_secs(20);
    let leaving = replica(config.clone()).await;
    assert_eq!(
        within("warm-up", client::get(addr, "/warm")).await.status,
        200
    );

    // A long request in flight on the leaving replica (the only one so far).
    let long = tokio::spawn(async move { client::get(addr, "/slow/1500?long").await });
    within(
        "the long request reaches the origin",
        w.origin.wait_seen("/slow/1500?long"),
    )
    .await;
    let staying = replica(config).await;
    let registry = w.stack.registry().clone();
    within(
        "4 connections",
        registry.wait_for_connections(w.tunnel_id, 4),
    )
    .await;

    let leaving_id = leaving.client_id;
    let leaving_metrics = leaving.metrics.clone();
    let shutdown = tokio::spawn(leaving.shutdown());
    within(
        "the leaving replica unregisters",
        registry.wait_for(w.tunnel_id, |conns| {
            conns
                .iter()
                .filter(|c| c.client_id == leaving_id)
                .all(|c| c.draining)
        }),
    )
    .await;
    let streams_before = leaving_metrics.streams.get();
    for i in 0..6 {
        let reply = within(
            "a request while draining",
            client::get(addr, &format!("/new/{i}")),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(
        leaving_metrics.streams.get(),
        streams_before,
        "no new stream may go to an unregistered connection"
    );
    assert!(
        staying.metrics.streams.get() >= 1,
        "new streams went to the other replica"
    );

    let reply = within("the long request", long).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "hello from origin: /slow/1500?long");
    within("the replica stops", shutdown)
        .await
        .unwrap()
        .unwrap();
    within(
        "only the staying replica is left",
        registry.wait_for(w.tunnel_id, |c| {
            c.len() == 2 && c.iter().all(|c| c.client_id == staying.client_id)
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_are_back_soon_after_iris_restarts_and_tunnel_info_lists_them() {
    let w = world(no_connector()).await;
    let options = IrisOptions {
        node_name: "iris-restart".into(),
        ..IrisOptions::default()
    };
    let iris = IrisNode::start(
        w.stack.directory.clone(),
        w.state(),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        &options,
    )
    .await
    .unwrap();
    let edge_addr = iris.edge_addr;
    let mut config = w.connector_config(edge_addr);
    config.ha_connections = 4;
    let connector = replica(config).await;
    within(
        "4 connections",
        iris.registry().wait_for_connections(w.tunnel_id, 4),
    )
    .await;
    let reply = within(
        "a request through the first iris",
        client::get_via_iris(iris.iris_addr, w.service_id, "/before"),
    )
    .await;
    assert_eq!(reply.status, 200);

    // `wvpc tunnel info` reads what iris recorded (by its writer, soon after).
    let info = tunnel_info_showing(&w, "4 live connection(s) from 1 connector(s)").await;
    assert!(info.contains(&connector.client_id.to_string()), "{info}");
    assert!(
        info.contains("iris-restart") && info.contains("wvpc-connector/"),
        "{info}"
    );
    for index in 0..4 {
        assert!(
            info.lines()
                .any(|l| l.split_whitespace().nth(3) == Some(&index.to_string())),
            "index {index} missing:\n{info}"
        );
    }

    // Restart: the old node drains and closes; a new one binds the same UDP port.
    within("draining", iris.drain(Duration::from_secs(5))).await;
    let stopped = Instant::now();
    let restarted = within("rebinding the edge port", async {
        loop {
            match IrisNode::start(
                w.stack.directory.clone(),
                w.state(),
                "127.0.0.1:0".parse().unwrap(),
                edge_addr,
                &options,
            )
            .await
            {
                Ok(node) => break node,
                // The old endpoint may hold the port for a moment while it finishes closing.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let rebound = stopped.elapsed();
    within_long(
        "connectors reconnect",
        restarted.registry().wait_for_connections(w.tunnel_id, 4),
    )
    .await;
    let reconnected = stopped.elapsed();
    eprintln!(
        "iris restart: edge port rebound after {rebound:.2?}; all 4 connections registered \
         again {reconnected:.2?} after the old node stopped (goal < 2 s)"
    );
    let reply = within(
        "a request through the restarted iris",
        client::get_via_iris(restarted.iris_addr, w.service_id, "/after"),
    )
    .await;
    assert_eq!(reply.status, 200);
    tunnel_info_showing(&w, "4 live connection(s) from 1 connector(s)").await;

    // Connections leave the directory when they close.
    within("the connector stops", connector.shutdown())
        .await
        .unwrap();
    within(
        "connections close",
        restarted.registry().wait_for_no_connection(w.tunnel_id),
    )
    .await;
    tunnel_info_showing(&w, "No live connections").await;
}

/// `wvpc tunnel info` once it shows `text` (iris records connections asynchronously).
async fn tunnel_info_showing(w: &RealWorld, text: &str) -> String {
    within(&format!("tunnel info showing {text:?}"), async {
        loop {
            let info = tunnel_info(w).await;
            if info.contains(text) {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

async fn tunnel_info(w: &RealWorld) -> String {
    let cli = wvpc_cli::Cli::parse_from([
        "wvpc".to_owned(),
        "--state".to_owned(),
        w.state().display().to_string(),
        "tunnel".to_owned(),
        "info".to_owned(),
        w.tunnel_id.to_string(),
    ]);
    let mut out = Vec::new();
    wvpc_cli::run(cli, &mut out)
        .await
        .expect("wvpc tunnel info");
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flow_limit_answers_rate_limited_and_the_allow_list_destination_ip_prohibited() {
    let w = world(no_connector()).await;
    let ip: Ipv4Addr = ORIGIN_IP.parse().unwrap();
    let service = w.create_ip_service("direct", ip, w.origin.addr.port());
    let other = Origin::start("127.0.0.3").await.unwrap();
    let forbidden =
        w.create_ip_service("forbidden", "127.0.0.3".parse().unwrap(), other.addr.port());
    within("iris routes the new services", w.stack.routes_current())
        .await
        .unwrap();
    let iris = w.stack.iris_addr;

    // --max-active-flows 1: one flow in flight holds the only slot, the next is refused with
    // the rate-limit signal, which iris answers as rate_limited.
    let mut limited = w.connector_config(w.stack.edge_addr);
    limited.max_active_flows = 1;
    let limited = replica(limited).await;
    let long =
        tokio::spawn(async move { client::get_via_iris(iris, service, "/slow/1000?held").await });
    within("the held request", w.origin.wait_seen("/slow/1000?held")).await;
    let refused = within(
        "over the limit",
        client::get_via_iris(iris, service, "/over"),
    )
    .await;
    assert_eq!(refused.status, 429);
    let status = refused.headers["proxy-status"].to_str().unwrap();
    assert!(status.contains("error=rate_limited"), "{status}");
    assert_eq!(within("the held request", long).await.unwrap().status, 200);
    assert_eq!(limited.metrics.errors.get("rate_limited"), 1);
    assert!(!w.origin.seen().iter().any(|s| s.path == "/over"));
    within("the limited connector stops", limited.shutdown())
        .await
        .unwrap();

    // --allow 127.0.0.2:<origin port>: that origin is reachable, another address is not.
    let mut config = w.connector_config(w.stack.edge_addr);
    config.allow = vec![AllowRule::Addr(w.origin.addr)];
    config.dns_resolvers = vec![w.dns.addr];
    let connector = replica(config).await;
    let reply = within("allowed", client::get_via_iris(iris, service, "/ok")).await;
    assert_eq!(reply.status, 200);
    let reply = within("prohibited", client::get_via_iris(iris, forbidden, "/no")).await;
    assert_eq!(reply.status, 403);
    let status = reply.headers["proxy-status"].to_str().unwrap();
    assert!(
        status.contains("error=destination_ip_prohibited"),
        "{status}"
    );
    assert!(
        other.seen().is_empty(),
        "the forbidden origin must not be reached"
    );

    // ... and for UDP, except DNS to the virtual resolver.
    let pool = w.stack.registry().clone();
    let ctx = FlowContext::default();
    let err = within(
        "udp prohibited",
        pool.open_udp(w.tunnel_id, w.dns.addr, &ctx),
    )
    .await
    .err()
    .expect("a UDP session outside the allow-list must be refused");
    assert_eq!(err.code, wvpc_errors::ErrorCode::DestinationIpProhibited);
    let dns = within(
        "udp to the virtual resolver",
        pool.open_udp(w.tunnel_id, wvpc_tunnel::VIRTUAL_DNS_RESOLVER, &ctx),
    )
    .await;
    assert!(
        dns.is_ok(),
        "DNS through the virtual resolver stays allowed"
    );
    let errors = connector.metrics.errors.get("destination_ip_prohibited");
    assert_eq!(errors, 2, "one TCP and one UDP refusal counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_metrics_endpoints_count_the_traffic() {
    let w = world(WorldOptions {
        connector: false,
        iris: IrisOptions {
            metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..IrisOptions::default()
        },
        ..WorldOptions::default()
    })
    .await;
    let connector = replica(w.connector_config(w.stack.edge_addr)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connector_metrics = listener.local_addr().unwrap();
    let ops = wvpc_observe::ops::Ops::new("connector", "replica").with(connector.metrics.clone());
    tokio::spawn(wvpc_observe::ops::serve(
        listener,
        std::sync::Arc::new(ops),
        Default::default(),
    ));
    let iris_metrics = w.stack.metrics_addr.expect("iris metrics listener");

    for i in 0..3 {
        let reply = within(
            "traffic",
            client::get(w.stack.script_addr, &format!("/m/{i}")),
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    let missing = w.create_ip_service("refusing", ORIGIN_IP.parse().unwrap(), 9);
    within("iris routes the new service", w.stack.routes_current())
        .await
        .unwrap();
    let reply = within(
        "a refused flow",
        client::get_via_iris(w.stack.iris_addr, missing, "/"),
    )
    .await;
    assert_eq!(reply.status, 502);

    let iris = within("scraping iris", client::scrape(iris_metrics, "/metrics")).await;
    assert_eq!(
        sample(&iris, "wvpc_iris_tunnel_connections{state=\"active\"}"),
        1.0
    );
    assert_eq!(
        sample(&iris, "wvpc_iris_registrations_total{result=\"ok\"}"),
        1.0
    );
    assert!(sample(&iris, "wvpc_iris_streams_total") >= 1.0, "{iris}");
    assert!(
        sample(&iris, "wvpc_iris_udp_sessions_total") >= 1.0,
        "{iris}"
    );
    // The binding-worker reuses its origin connection, so one CONNECT needed a lookup.
    assert!(
        sample(&iris, "wvpc_iris_dns_lookups_total{result=\"ok\"}") >= 1.0,
        "{iris}"
    );
    assert!(
        sample(&iris, "wvpc_iris_bytes_to_tunnel_total") > 0.0,
        "{iris}"
    );
    assert!(
        sample(&iris, "wvpc_iris_bytes_from_tunnel_total") > 0.0,
        "{iris}"
    );
    assert_eq!(
        sample(&iris, "wvpc_iris_errors_total{code=\"connection_refused\"}"),
        1.0
    );
    // `wvpc dev`'s one listener also shows the runtime and the binding-worker (role `dev`).
    let account = w.stack.directory.account_id().to_owned();
    let script = format!("account=\"{account}\",script=\"proxy\"");
    assert_eq!(
        sample(
            &iris,
            &format!("wvpc_runtime_requests_total{{{script},outcome=\"ok\"}}")
        ),
        3.0
    );
    assert!(
        sample(
            &iris,
            &format!("wvpc_runtime_binding_fetch_seconds_count{{{script},binding=\"API\"}}")
        ) >= 3.0
    );
    assert!(
        sample(
            &iris,
            &format!("wvpc_runtime_instantiate_seconds_count{{{script}}}")
        ) >= 1.0
    );
    let service = w.service_id;
    assert_eq!(
        sample(
            &iris,
            &format!(
                "wvpc_binding_worker_calls_total{{service=\"{service}\",call=\"fetch\",outcome=\"success\"}}"
            )
        ),
        3.0
    );
    assert!(
        sample(
            &iris,
            &format!("wvpc_binding_worker_origin_ttfb_seconds_count{{service=\"{service}\"}}")
        ) >= 3.0
    );
    let status = within(
        "iris's status",
        client::scrape(iris_metrics, "/status.json"),
    )
    .await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["node"]["role"], "dev");
    assert_eq!(status["scripts"][0]["id"], "proxy", "{status}");
    assert_eq!(status["scripts"][0]["total_requests"], 3, "{status}");

    let conn = within(
        "scraping the connector",
        client::scrape(connector_metrics, "/metrics"),
    )
    .await;
    assert_eq!(
        sample(&conn, "wvpc_connector_connections{state=\"registered\"}"),
        1.0
    );
    assert_eq!(
        sample(&conn, "wvpc_connector_registrations_total{result=\"ok\"}"),
        1.0
    );
    assert!(
        sample(&conn, "wvpc_connector_streams_total") >= 2.0,
        "{conn}"
    );
    assert!(
        sample(&conn, "wvpc_connector_udp_sessions_total") >= 1.0,
        "{conn}"
    );
    assert!(
        sample(&conn, "wvpc_connector_bytes_to_origin_total") > 0.0,
        "{conn}"
    );
    assert!(
        sample(&conn, "wvpc_connector_bytes_from_origin_total") > 0.0,
        "{conn}"
    );
    assert_eq!(
        sample(
            &conn,
            "wvpc_connector_errors_total{code=\"connection_refused\"}"
        ),
        1.0
    );
    let not_found = within("another path", client::get(iris_metrics, "/other")).await;
    assert_eq!(not_found.status, 404);
}
