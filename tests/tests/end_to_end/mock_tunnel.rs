//! The path through `MockTunnel`: every error code a script can see, each from its cause.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::rr::RecordType;
use uuid::Uuid;
use wvpc_iris::{RouteTarget, RouteTls, ServiceRoute};
use wvpc_tests::dns::DnsMode;
use wvpc_tests::mock_tunnel::MockFault;
use wvpc_tests::origin::{Origin, is_pattern};
use wvpc_tests::stack::MockStack;
use wvpc_tests::{client, guests, trace_init, within};

fn hostname_route(service_id: Uuid, origin: SocketAddr) -> ServiceRoute {
    ServiceRoute {
        service_id,
        tunnel_id: Uuid::new_v4(),
        target: RouteTarget::Hostname {
            name: "api.internal".into(),
            resolvers: vec![],
        },
        http_port: Some(origin.port()),
        https_port: None,
        tcp_port: None,
        tls: RouteTls::default(),
    }
}

async fn setup() -> (MockStack, Origin, Uuid) {
    trace_init();
    let origin = Origin::start("127.0.0.1").await.unwrap();
    let service_id = Uuid::new_v4();
    let stack = MockStack::start(guests::PROXY, &[("API", service_id)]).await;
    stack
        .dns
        .insert("api.internal", IpAddr::from([127, 0, 0, 1]));
    stack.store.put(hostname_route(service_id, origin.addr));
    (stack, origin, service_id)
}

async fn proxy_error(stack: &MockStack) -> String {
    let reply = within("GET", client::get(stack.script_addr, "/x")).await;
    assert_eq!(
        reply.status,
        502,
        "expected the script's error answer, got {}",
        reply.text()
    );
    reply.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_stream_through_the_mock_tunnel_and_reuse_connections() {
    let (stack, origin, _) = setup().await;
    let reply = within("GET /hello", client::get(stack.script_addr, "/hello")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello from origin: /hello");
    assert_eq!(origin.seen()[0].host.as_deref(), Some("api.internal"));

    for i in 0..10 {
        let reply = within("GET", client::get(stack.script_addr, &format!("/n/{i}"))).await;
        assert_eq!(reply.status, 200);
    }
    // One DNS resolution (A and AAAA once each) and one origin connection for 11 requests.
    assert_eq!(stack.dns.query_count("api.internal", RecordType::A), 1);
    assert_eq!(stack.dns.query_count("api.internal", RecordType::AAAA), 1);
    assert_eq!(
        origin.connections(),
        1,
        "the origin connection must be reused"
    );
    assert_eq!(
        stack.tunnel.dialed().len(),
        1,
        "one tunnel stream carries every request"
    );

    let reply = within("GET /big", client::get(stack.script_addr, "/big/4194304")).await;
    assert_eq!(reply.body.len(), 4 * 1024 * 1024);
    assert!(is_pattern(&reply.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_origin_is_connection_refused() {
    let (stack, mut origin, _) = setup().await;
    assert_eq!(
        within("warm", client::get(stack.script_addr, "/"))
            .await
            .status,
        200
    );
    origin.stop().await;
    assert_eq!(proxy_error(&stack).await, "ProxyError: connection_refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_live_connector_is_destination_unavailable() {
    let (stack, origin, _) = setup().await;
    stack.tunnel.set_fault(Some(MockFault::NoConnector));
    assert_eq!(
        proxy_error(&stack).await,
        "ProxyError: destination_unavailable"
    );
    assert!(origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connector_flow_limit_is_rate_limited() {
    let (stack, _origin, service_id) = setup().await;
    // An IP service skips DNS, so the limit hits the TCP flow itself.
    let mut route = stack_route(&stack, service_id);
    route.target = RouteTarget::Ips {
        ipv4: Some([127, 0, 0, 1].into()),
        ipv6: None,
    };
    stack.store.put(route);
    stack.tunnel.set_fault(Some(MockFault::FlowLimit));
    assert_eq!(proxy_error(&stack).await, "ProxyError: rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_and_failing_resolvers_are_dns_errors() {
    let (stack, _origin, service_id) = setup().await;
    let mut route = stack_route(&stack, service_id);
    route.target = RouteTarget::Hostname {
        name: "missing.internal".into(),
        resolvers: vec![],
    };
    stack.store.put(route.clone());
    assert_eq!(proxy_error(&stack).await, "ProxyError: dns_error");

    route.target = RouteTarget::Hostname {
        name: "other.internal".into(),
        resolvers: vec![],
    };
    stack.store.put(route);
    stack.dns.set_mode(DnsMode::ServFail);
    assert_eq!(proxy_error(&stack).await, "ProxyError: dns_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_service_is_destination_not_found() {
    let (stack, _origin, service_id) = setup().await;
    stack.store.delete(service_id);
    assert_eq!(
        proxy_error(&stack).await,
        "ProxyError: destination_not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheme_without_a_port_is_http_request_denied() {
    let (stack, _origin, service_id) = setup().await;
    let mut route = stack_route(&stack, service_id);
    route.http_port = None;
    route.https_port = Some(443);
    stack.store.put(route);
    assert_eq!(proxy_error(&stack).await, "ProxyError: http_request_denied");
}

fn stack_route(stack: &MockStack, service_id: Uuid) -> ServiceRoute {
    use wvpc_iris::ServiceStore as _;
    stack
        .store
        .route(service_id)
        .unwrap()
        .expect("the service exists")
}
