//! The real path: `Stack` (what `wvpc dev` runs) + our connector over QUIC + a DNS server +
//! an origin on 127.0.0.2.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use bytes::Bytes;
use hickory_proto::rr::RecordType;
use wvpc_connector::{Connector, ConnectorConfig};
use wvpc_iris::{DnsConfig, DnsResolver, FlowContext, TunnelPool};
use wvpc_tests::dns::DnsMode;
use wvpc_tests::origin::{is_pattern, pattern};
use wvpc_tests::real::{ORIGIN_IP, ORIGIN_NAME, RealWorld, WorldOptions};
use wvpc_tests::{client, trace_init, within};
use wvpc_tunnel::DatagramVersion;

async fn world() -> RealWorld {
    trace_init();
    within("starting the real path", RealWorld::start())
        .await
        .expect("starting the real path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_reaches_the_private_origin_through_the_quic_tunnel() {
    let mut w = world().await;
    let addr = w.stack.script_addr;

    let reply = within("GET /hello", client::get(addr, "/hello?x=1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "hello from origin: /hello?x=1");
    let seen = w.origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].host.as_deref(),
        Some(ORIGIN_NAME),
        "Host is the URL host, without a port"
    );
    assert_eq!(seen[0].path, "/hello?x=1");
    assert_eq!(seen[0].method, "GET");

    // Repeated requests: DNS answers come from iris's cache (TTL 60 s), asked once each.
    for i in 0..5 {
        let reply = within("repeated GET", client::get(addr, &format!("/again/{i}"))).await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(w.dns.table.query_count(ORIGIN_NAME, RecordType::A), 1);
    assert_eq!(w.dns.table.query_count(ORIGIN_NAME, RecordType::AAAA), 1);

    // Several MiB stream back intact.
    const BIG: usize = 6 * 1024 * 1024 + 13;
    let reply = within("GET /big", client::get(addr, &format!("/big/{BIG}"))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), BIG);
    assert!(is_pattern(&reply.body), "the body arrived corrupted");

    // And a large request body streams to the origin and back.
    let upload: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(pattern).collect();
    let reply = within(
        "POST /echo",
        client::send(addr, "POST", "/echo", Bytes::from(upload.clone())),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), upload.len());
    assert!(reply.body == upload, "the echoed body differs");
    assert_eq!(w.origin.seen().last().unwrap().body_len, upload.len());

    // The origin goes away: the script sees connection_refused from the connector's dial.
    w.origin.stop().await;
    let reply = within("GET after the origin stopped", client::get(addr, "/hello")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "ProxyError: connection_refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_connector_the_script_sees_destination_unavailable() {
    let mut w = world().await;
    let tunnel_ids = w.stack.registry().tunnels();
    assert_eq!(tunnel_ids.len(), 1);
    w.stop_connector();
    within(
        "connector gone",
        w.stack.registry().wait_for_no_connection(tunnel_ids[0]),
    )
    .await;
    let reply = within(
        "GET without connector",
        client::get(w.stack.script_addr, "/hello"),
    )
    .await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "ProxyError: destination_unavailable");
    assert!(w.origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_with_a_clear_error() {
    let w = world().await;
    let mut wrong = wvpc_tunnel::Credentials::mint("not-the-account", uuid::Uuid::new_v4());
    wrong.tunnel_id = w.stack.registry().tunnels()[0];
    let config = ConnectorConfig::new(
        wrong,
        vec![w.stack.edge_addr],
        w.stack.edge_identity.ca_pem().as_bytes().to_vec(),
    );
    let err = within(
        "refused registration",
        Connector::run(config, std::future::pending()),
    )
    .await
    .expect_err("the edge must refuse credentials of another account");
    let text = err.to_string();
    assert!(
        text.contains("refused tunnel") && text.contains("check --token"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_speaking_datagram_v2_resolves_and_serves_through_the_edge() {
    trace_init();
    let w = within(
        "starting the real path with a datagram-v2 connector",
        RealWorld::start_with(WorldOptions {
            datagram_version: DatagramVersion::V2,
            ..WorldOptions::default()
        }),
    )
    .await
    .expect("starting the real path");
    let tunnel = w.stack.registry().tunnels()[0];
    let conns = w.stack.registry().connections(tunnel);
    assert_eq!(conns[0].datagram_version, DatagramVersion::V2);
    assert!(
        !conns[0]
            .features
            .iter()
            .any(|f| f.starts_with("support_datagram_v3")),
        "{:?}",
        conns[0].features
    );

    // DNS for the service's hostname went through registerUdpSession and v2 datagrams.
    let reply = within("GET over v2", client::get(w.stack.script_addr, "/v2")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "hello from origin: /v2");
    assert_eq!(w.dns.table.query_count(ORIGIN_NAME, RecordType::A), 1);
    assert_eq!(w.dns.table.query_count(ORIGIN_NAME, RecordType::AAAA), 1);
    assert_eq!(w.origin.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_dns_answer_is_asked_again_over_tcp_through_the_tunnel() {
    let w = world().await;
    // A name with more records than fit in one UDP answer; the server truncates every UDP
    // answer (TC, no records) and answers in full over TCP only.
    let mut expected: Vec<IpAddr> = vec![ORIGIN_IP.parse().unwrap()];
    for i in 3..=60 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, i));
        w.dns.table.insert(ORIGIN_NAME, ip);
        expected.push(ip);
    }
    for i in 1..=20 {
        let ip = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i));
        w.dns.table.insert(ORIGIN_NAME, ip);
        expected.push(ip);
    }
    w.dns.table.set_mode(DnsMode::TruncateUdp);

    let reply = within(
        "GET with a truncated DNS answer",
        client::get(w.stack.script_addr, "/tc"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "hello from origin: /tc");
    assert_eq!(w.dns.table.tcp_query_count(ORIGIN_NAME, RecordType::A), 1);
    assert_eq!(
        w.dns.table.tcp_query_count(ORIGIN_NAME, RecordType::AAAA),
        1
    );

    // Every record comes back, IPv4 first, resolved as iris resolves: UDP through the tunnel,
    // then TCP through the tunnel.
    let pool: Arc<dyn TunnelPool> = w.stack.registry().clone();
    let resolver = DnsResolver::new(pool, DnsConfig::default());
    let addrs = within(
        "resolving through the tunnel",
        resolver.resolve(
            w.tunnel_id,
            &[w.dns.addr],
            ORIGIN_NAME,
            &FlowContext::default(),
        ),
    )
    .await
    .expect("the name resolves over TCP");
    assert_eq!(&addrs[..], &expected[..]);
    assert_eq!(w.dns.table.tcp_query_count(ORIGIN_NAME, RecordType::A), 2);
}
