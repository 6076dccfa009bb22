//! The real path: `Stack` (what `wvpc dev` runs) + our connector over QUIC + a DNS server +
//! an origin on 127.0.0.2.

use std::net::IpAddr;
use std::path::PathBuf;

use bytes::Bytes;
use hickory_proto::rr::RecordType;
use tokio::sync::oneshot;
use wvpc_cli::stack::{Stack, StackConfig};
use wvpc_connector::{Connector, ConnectorConfig};
use wvpc_directory::{Directory, HostInput, ResolverNetworkInput, ServiceInput};
use wvpc_runtime::{ScriptConfig, VpcServiceBinding};
use wvpc_tests::dns::{DnsServer, DnsTable};
use wvpc_tests::origin::{Origin, is_pattern};
use wvpc_tests::{TempDir, client, guests, trace_init, within};

const ORIGIN_IP: &str = "127.0.0.2";

struct World {
    stack: Stack,
    origin: Origin,
    dns: DnsServer,
    stop_connector: Option<oneshot::Sender<()>>,
    _state: TempDir,
}

/// Origin + DNS + directory entries + `Stack` + a registered connector.
async fn world() -> World {
    trace_init();
    let state = TempDir::new("e2e");
    let origin = Origin::start(ORIGIN_IP).await.unwrap();
    let origin_ip: IpAddr = ORIGIN_IP.parse().unwrap();
    let dns = DnsServer::start(DnsTable::new().with("api.internal", origin_ip)).await.unwrap();

    let directory = Directory::open(state.path()).unwrap();
    let (tunnel, credentials) = directory.create_tunnel("office").unwrap();
    let mut input = ServiceInput::http(
        "api",
        HostInput {
            hostname: Some("api.internal".into()),
            resolver_network: Some(ResolverNetworkInput {
                tunnel_id: Some(tunnel.id.to_string()),
                resolver_ips: Some(vec![dns.addr.to_string()]),
            }),
            ..HostInput::default()
        },
    );
    input.http_port = Some(i64::from(origin.addr.port()));
    let service = directory.create_service(&input).unwrap();
    drop(directory);

    let stack = Stack::start(StackConfig {
        state: state.path().to_owned(),
        script: ScriptConfig {
            name: "proxy".into(),
            main: PathBuf::from(guests::PROXY),
            vpc_services: vec![VpcServiceBinding { binding: "API".into(), service_id: service.service_id }],
        },
        listen: "127.0.0.1:0".parse().unwrap(),
        edge_listen: "127.0.0.1:0".parse().unwrap(),
    })
    .await
    .expect("starting the dev stack");

    let config = ConnectorConfig::new(
        credentials,
        vec![stack.edge_addr],
        stack.edge_identity.ca_pem().as_bytes().to_vec(),
    );
    let connector = Connector::new(config).unwrap();
    let mut readiness = connector.readiness();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = connector
            .serve(async {
                let _ = stopped.await;
            })
            .await;
    });
    assert!(within("connector registration", readiness.wait_registered(1)).await);
    World { stack, origin, dns, stop_connector: Some(stop), _state: state }
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
    assert_eq!(seen[0].host.as_deref(), Some("api.internal"), "Host is the URL host, without a port");
    assert_eq!(seen[0].path, "/hello?x=1");
    assert_eq!(seen[0].method, "GET");

    // Repeated requests: DNS answers come from iris's cache (TTL 60 s), asked once each.
    for i in 0..5 {
        let reply = within("repeated GET", client::get(addr, &format!("/again/{i}"))).await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(w.dns.table.query_count("api.internal", RecordType::A), 1);
    assert_eq!(w.dns.table.query_count("api.internal", RecordType::AAAA), 1);

    // Several MiB stream back intact.
    const BIG: usize = 6 * 1024 * 1024 + 13;
    let reply = within("GET /big", client::get(addr, &format!("/big/{BIG}"))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), BIG);
    assert!(is_pattern(&reply.body), "the body arrived corrupted");

    // And a large request body streams to the origin and back.
    let upload: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(wvpc_tests::origin::pattern).collect();
    let reply = within("POST /echo", client::send(addr, "POST", "/echo", Bytes::from(upload.clone()))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), upload.len());
    assert!(reply.body == upload, "the echoed body differs");
    assert_eq!(w.origin.seen().last().unwrap().body_len, upload.len());

    // The origin goes away: the script sees connection_refused from the connector's dial.
    w.origin.stop().await;
    let reply = within("GET after the origin stopped", client::get(addr, "/hello")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "ProxyError: connection_refused");
    w.stop_connector.take().map(|s| s.send(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_connector_the_script_sees_destination_unavailable() {
    let mut w = world().await;
    let tunnel_ids = w.stack.registry().tunnels();
    assert_eq!(tunnel_ids.len(), 1);
    let _ = w.stop_connector.take().unwrap().send(());
    within("connector gone", w.stack.registry().wait_for_no_connection(tunnel_ids[0])).await;
    let reply = within("GET without connector", client::get(w.stack.script_addr, "/hello")).await;
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
    let err = within("refused registration", Connector::run(config, std::future::pending()))
        .await
        .expect_err("the edge must refuse credentials of another account");
    let text = err.to_string();
    assert!(text.contains("refused tunnel") && text.contains("check --token"), "{text}");
}
