//! Relays between routers in one process, each on its own loopback address, over real
//! sockets, real TLS and real HTTP/2; tunnels are mock tunnels (dialling loopback directly),
//! and a node "holds" the tunnel when its mock tunnel has a connector.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;
use wvpc_errors::{ErrorCode, ProxyError};

use super::*;
use crate::connect::{
    PROXY_STATUS_HEADER, REQUEST_ID_HEADER, SCHEME_HEADER, SERVICE_ID_HEADER,
    TLS_VERIFICATION_HEADER,
};
use crate::mock::{MemoryStore, MockFault, MockTunnel};
use crate::peers::RelayPeer;
use crate::routes::{CertVerificationMode, RouteTarget, RouteTls, ServiceRoute};
use crate::{Router, RouterConfig};

const TUNNEL: Uuid = Uuid::from_u128(0x7e57);
const ECHO: Uuid = Uuid::from_u128(1);
const REFUSING: Uuid = Uuid::from_u128(2);
/// Bound on every wait: a hang fails the test instead of blocking it.
const PATIENCE: Duration = Duration::from_secs(30);

/// An echo origin counting its connections.
struct Origin {
    port: u16,
    connections: Arc<AtomicUsize>,
}

async fn origin() -> Origin {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Origin { port, connections }
}

/// The services every node knows; `tls` is the https policy of this node's copy.
fn store(origin: &Origin, tls: RouteTls) -> MemoryStore {
    let closed_port = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let route = |service_id, port| ServiceRoute {
        service_id,
        tunnel_id: TUNNEL,
        target: RouteTarget::Ips {
            ipv4: Some(Ipv4Addr::LOCALHOST),
            ipv6: None,
        },
        http_port: Some(port),
        https_port: Some(port),
        tcp_port: None,
        tls: tls.clone(),
    };
    [route(ECHO, origin.port), route(REFUSING, closed_port)]
        .into_iter()
        .collect()
}

/// One iris node: a router with a public and a relay listener.
struct Node {
    name: String,
    public: SocketAddr,
    relay: SocketAddr,
    peers: Arc<PeerMap>,
    pool: MockTunnel,
    metrics: Arc<IrisMetrics>,
}

impl Node {
    async fn start(name: &str, ip: [u8; 4], ca: &RelayCa, store: MemoryStore, holds: bool) -> Self {
        let identity = ca.issue(name).unwrap();
        let pool = MockTunnel::default();
        if !holds {
            pool.set_fault(Some(MockFault::NoConnector));
        }
        let metrics = Arc::new(IrisMetrics::default());
        let peers = Arc::new(PeerMap::new());
        let relay = Relay::new(
            &identity,
            peers.clone(),
            RelayConfig::new(name),
            Some(metrics.clone()),
        )
        .unwrap();
        let config = RouterConfig {
            node_name: name.to_owned(),
            metrics: Some(metrics.clone()),
            relay: Some(Arc::new(relay)),
            ..RouterConfig::default()
        };
        let router = Router::new(Arc::new(store), Arc::new(pool.clone()), config);
        let ip = Ipv4Addr::from(ip);
        let public = TcpListener::bind((ip, 0)).await.unwrap();
        let relay_listener = TcpListener::bind((ip, 0)).await.unwrap();
        let (public_addr, relay_addr) = (
            public.local_addr().unwrap(),
            relay_listener.local_addr().unwrap(),
        );
        let serving = router.clone();
        tokio::spawn(async move { serving.serve(public).await });
        let tls = identity.server_config().unwrap();
        tokio::spawn(async move { router.serve_relay(relay_listener, tls).await });
        Self {
            name: name.to_owned(),
            public: public_addr,
            relay: relay_addr,
            peers,
            pool,
            metrics,
        }
    }

    fn as_holder(&self, connections: usize) -> RelayPeer {
        RelayPeer {
            node: self.name.clone(),
            addr: self.relay,
            connections,
        }
    }

    /// Tells this node who holds the tunnel.
    fn knows(&self, holders: Vec<RelayPeer>) {
        self.peers
            .replace(std::collections::HashMap::from([(TUNNEL, holders)]));
    }

    /// A binding-worker's HTTP/2 connection to the public listener.
    async fn client(&self) -> http2::SendRequest<Empty<Bytes>> {
        let tcp = TcpStream::connect(self.public).await.unwrap();
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }
}

fn connect(service: Uuid, scheme: &str) -> http::request::Builder {
    Request::builder()
        .method(Method::CONNECT)
        .uri(format!("{service}:443"))
        .header(SERVICE_ID_HEADER, service.to_string())
        .header(SCHEME_HEADER, scheme)
        .header(REQUEST_ID_HEADER, "req-relay-test")
}

async fn send(
    sender: &mut http2::SendRequest<Empty<Bytes>>,
    req: http::request::Builder,
) -> http::Response<hyper::body::Incoming> {
    tokio::time::timeout(
        PATIENCE,
        sender.send_request(req.body(Empty::new()).unwrap()),
    )
    .await
    .expect("the CONNECT is answered")
    .unwrap()
}

fn proxy_status(res: &http::Response<hyper::body::Incoming>) -> String {
    res.headers()[PROXY_STATUS_HEADER]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Echoes a line through an answered CONNECT.
async fn echo_through(res: http::Response<hyper::body::Incoming>) {
    let mut io = TokioIo::new(hyper::upgrade::on(res).await.unwrap());
    io.write_all(b"through two nodes").await.unwrap();
    io.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(PATIENCE, io.read_to_end(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, b"through two nodes");
}

/// A relay client of its own (as node `as_node`, certificate from `ca`) to `target`'s relay
/// listener.
async fn peer_client(
    ca: &RelayCa,
    as_node: &str,
    target: &Node,
) -> Result<http2::SendRequest<Empty<Bytes>>, String> {
    peer_client_as(ca.issue(as_node).unwrap(), target).await
}

async fn peer_client_as(
    identity: RelayIdentity,
    target: &Node,
) -> Result<http2::SendRequest<Empty<Bytes>>, String> {
    let connector = tokio_rustls::TlsConnector::from(identity.client_config().unwrap());
    let tcp = TcpStream::connect(target.relay).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(target.name.clone()).unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

#[tokio::test]
async fn a_connect_for_a_tunnel_held_elsewhere_is_served_by_the_holder_with_its_tls_answer() {
    let origin = origin().await;
    let ca = RelayCa::generate().unwrap();
    // The holder's route decides the TLS policy: its copy says verify_ca with a private CA.
    let holder_tls = RouteTls {
        cert_verification_mode: CertVerificationMode::VerifyCa,
        ca_certificate: Some("-----BEGIN CERTIFICATE-----\nholder\n".into()),
    };
    let a = Node::start(
        "iris-a",
        [127, 0, 0, 1],
        &ca,
        store(&origin, RouteTls::default()),
        false,
    )
    .await;
    let b = Node::start(
        "iris-b",
        [127, 0, 0, 2],
        &ca,
        store(&origin, holder_tls),
        true,
    )
    .await;
    a.knows(vec![b.as_holder(2)]);

    let mut client = a.client().await;
    let res = send(&mut client, connect(ECHO, "https")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[TLS_VERIFICATION_HEADER], "verify_ca");
    assert!(res.headers().contains_key(crate::connect::TLS_CA_HEADER));
    echo_through(res).await;
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
    assert_eq!(a.pool.dialed().len(), 0, "A dials nothing itself");
    assert_eq!(b.pool.dialed().len(), 1);
    assert_eq!(a.metrics.relays.get("ok"), 1);

    // A second CONNECT reuses the connection to B (no second dial: B's relay listener
    // sees the same peer connection) and works the same.
    let res = send(&mut client, connect(ECHO, "http")).await;
    assert_eq!(res.status(), StatusCode::OK);
    echo_through(res).await;
    assert_eq!(origin.connections.load(Ordering::SeqCst), 2);
    assert_eq!(a.metrics.relays.get("ok"), 2);
    assert_eq!(a.metrics.relay_peers_down.get(), 0);
}

#[tokio::test]
async fn a_holder_without_a_usable_connection_answers_a_relay_miss_and_the_next_holder_serves() {
    let origin = origin().await;
    let ca = RelayCa::generate().unwrap();
    let tls = RouteTls::default();
    let a = Node::start(
        "iris-a",
        [127, 0, 0, 1],
        &ca,
        store(&origin, tls.clone()),
        false,
    )
    .await;
    // B is listed with more connections (tried first) but lost them: a stale map.
    let b = Node::start(
        "iris-b",
        [127, 0, 0, 2],
        &ca,
        store(&origin, tls.clone()),
        false,
    )
    .await;
    let c = Node::start("iris-c", [127, 0, 0, 3], &ca, store(&origin, tls), true).await;
    // B's own map says A holds the tunnel: B must still never relay a relayed CONNECT.
    b.knows(vec![a.as_holder(1)]);
    a.knows(vec![b.as_holder(5), c.as_holder(1)]);

    let mut client = a.client().await;
    let res = send(&mut client, connect(ECHO, "http")).await;
    assert_eq!(res.status(), StatusCode::OK);
    echo_through(res).await;
    assert_eq!(a.metrics.relays.get("miss"), 1);
    assert_eq!(a.metrics.relays.get("ok"), 1);
    assert_eq!(b.metrics.relays.get("ok") + b.metrics.relays.get("miss"), 0);
    assert_eq!(b.metrics.errors.get("destination_unavailable"), 1);
    assert_eq!(c.pool.dialed().len(), 1);
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);

    // The miss itself, as a peer sees it: 503, the code, and the relay-miss marker.
    let mut as_a = peer_client(&ca, "iris-a", &b).await.unwrap();
    let res = send(
        &mut as_a,
        connect(ECHO, "http").header(RELAYED_BY_HEADER, "iris-a"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()[RELAY_MISS_HEADER], "?1");
    let err = ProxyError::from_proxy_status(&proxy_status(&res)).unwrap();
    assert_eq!(err.code, ErrorCode::DestinationUnavailable);

    // No holder left with a connection: the caller gets 503 naming what was tried.
    a.knows(vec![b.as_holder(5)]);
    let res = send(&mut client, connect(ECHO, "http")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!res.headers().contains_key(RELAY_MISS_HEADER));
    let err = ProxyError::from_proxy_status(&proxy_status(&res)).unwrap();
    assert_eq!(err.code, ErrorCode::DestinationUnavailable);
    assert!(err.details.unwrap().contains("iris-b"));
}

#[tokio::test]
async fn a_dead_holder_is_skipped_for_the_next_and_then_marked_down() {
    let origin = origin().await;
    let ca = RelayCa::generate().unwrap();
    let tls = RouteTls::default();
    let a = Node::start(
        "iris-a",
        [127, 0, 0, 1],
        &ca,
        store(&origin, tls.clone()),
        false,
    )
    .await;
    let c = Node::start("iris-c", [127, 0, 0, 3], &ca, store(&origin, tls), true).await;
    let dead_addr = {
        let l = std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).unwrap();
        l.local_addr().unwrap()
    };
    let dead = RelayPeer {
        node: "iris-b".into(),
        addr: dead_addr,
        connections: 9,
    };
    a.knows(vec![dead.clone(), c.as_holder(1)]);
    let mut client = a.client().await;
    let res = send(&mut client, connect(ECHO, "http")).await;
    assert_eq!(res.status(), StatusCode::OK);
    echo_through(res).await;
    assert_eq!(a.metrics.relays.get("peer_down"), 1);
    assert_eq!(a.metrics.relay_peers_down.get(), 1);

    // Only the dead holder: 503 at once, and it is skipped (marked down), not dialled again.
    a.knows(vec![dead]);
    let res = send(&mut client, connect(ECHO, "http")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let err = ProxyError::from_proxy_status(&proxy_status(&res)).unwrap();
    assert_eq!(err.code, ErrorCode::DestinationUnavailable);
    assert!(err.details.as_deref().unwrap().contains("down"), "{err}");
    assert_eq!(a.metrics.relays.get("peer_down"), 1, "not dialled again");
}

#[tokio::test]
async fn a_holders_failure_is_passed_through_with_its_code_and_this_nodes_member_appended() {
    let origin = origin().await;
    let ca = RelayCa::generate().unwrap();
    let tls = RouteTls::default();
    let a = Node::start(
        "iris-a",
        [127, 0, 0, 1],
        &ca,
        store(&origin, tls.clone()),
        false,
    )
    .await;
    let b = Node::start(
        "iris-b",
        [127, 0, 0, 2],
        &ca,
        store(&origin, tls.clone()),
        true,
    )
    .await;
    let c = Node::start("iris-c", [127, 0, 0, 3], &ca, store(&origin, tls), true).await;
    a.knows(vec![b.as_holder(2), c.as_holder(1)]);
    let mut client = a.client().await;
    let res = send(&mut client, connect(REFUSING, "http")).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let value = proxy_status(&res);
    assert!(
        value.starts_with("iris-b; error=connection_refused"),
        "{value}"
    );
    assert!(value.ends_with(", iris-a; next-hop=\"iris-b\""), "{value}");
    let err = ProxyError::from_proxy_status(&value).unwrap();
    assert_eq!(err.code, ErrorCode::ConnectionRefused);
    // Final: C was never asked.
    assert_eq!(c.pool.dialed().len(), 0);
    assert_eq!(a.metrics.relays.get("refused"), 1);
}

#[tokio::test]
async fn the_relay_header_is_refused_on_the_public_listener_and_required_on_the_relay_listener() {
    let origin = origin().await;
    let ca = RelayCa::generate().unwrap();
    let b = Node::start(
        "iris-b",
        [127, 0, 0, 2],
        &ca,
        store(&origin, RouteTls::default()),
        true,
    )
    .await;

    // A binding-worker cannot claim the CONNECT was relayed (which would skip relaying).
    let mut client = b.client().await;
    let res = send(
        &mut client,
        connect(ECHO, "http").header(RELAYED_BY_HEADER, "iris-a"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let err = ProxyError::from_proxy_status(&proxy_status(&res)).unwrap();
    assert_eq!(err.code, ErrorCode::HttpRequestError);
    assert!(err.details.unwrap().contains(RELAYED_BY_HEADER));

    let mut as_a = peer_client(&ca, "iris-a", &b).await.unwrap();
    // Without the header.
    let res = send(&mut as_a, connect(ECHO, "http")).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // Naming another node than the certificate does.
    let res = send(
        &mut as_a,
        connect(ECHO, "http").header(RELAYED_BY_HEADER, "iris-c"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let err = ProxyError::from_proxy_status(&proxy_status(&res)).unwrap();
    assert_eq!(err.code, ErrorCode::HttpRequestDenied);
    // Naming the receiving node itself: a loop.
    let mut as_b = peer_client(&ca, "iris-b", &b).await.unwrap();
    let res = send(
        &mut as_b,
        connect(ECHO, "http").header(RELAYED_BY_HEADER, "iris-b"),
    )
    .await;
    assert_eq!(res.status().as_u16(), 508);
    let err = ProxyError::from_proxy_status(&proxy_status(&res)).unwrap();
    assert_eq!(err.code, ErrorCode::ProxyLoopDetected);
    // The well-formed relayed CONNECT works.
    let res = send(
        &mut as_a,
        connect(ECHO, "http").header(RELAYED_BY_HEADER, "iris-a"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    echo_through(res).await;
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_peer_with_a_certificate_from_another_ca_is_refused() {
    let origin = origin().await;
    let ca = RelayCa::generate().unwrap();
    let stranger_ca = RelayCa::generate().unwrap();
    let tls = RouteTls::default();
    let b = Node::start(
        "iris-b",
        [127, 0, 0, 2],
        &ca,
        store(&origin, tls.clone()),
        true,
    )
    .await;
    // A node of another cluster, whose map points at B.
    let a = Node::start(
        "iris-a",
        [127, 0, 0, 1],
        &stranger_ca,
        store(&origin, tls),
        false,
    )
    .await;
    a.knows(vec![b.as_holder(1)]);
    let mut client = a.client().await;
    let res = send(&mut client, connect(ECHO, "http")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.metrics.relays.get("peer_down"), 1);
    assert_eq!(b.pool.dialed().len(), 0);

    // A client of the other CA that trusts B's certificate gets no answer from B's relay
    // listener either (with TLS 1.3 the refusal may only show on the first read).
    let stranger = stranger_ca.issue("iris-a").unwrap().trusting(&ca);
    if let Ok(mut sender) = peer_client_as(stranger, &b).await {
        let answer = tokio::time::timeout(
            PATIENCE,
            sender.send_request(
                connect(ECHO, "http")
                    .header(RELAYED_BY_HEADER, "iris-a")
                    .body(Empty::new())
                    .unwrap(),
            ),
        )
        .await
        .expect("B closes the connection");
        assert!(answer.is_err(), "B answered a stranger: {answer:?}");
    }
    assert_eq!(b.pool.dialed().len(), 0);
    assert_eq!(origin.connections.load(Ordering::SeqCst), 0);
}

#[test]
fn proxy_status_appends_this_nodes_member_after_the_holders() {
    assert_eq!(
        append_proxy_status("iris-b; error=dns_timeout", "iris-a", "iris-b"),
        "iris-b; error=dns_timeout, iris-a; next-hop=\"iris-b\""
    );
    assert_eq!(
        append_proxy_status("", "iris-a", "iris-b"),
        "iris-a; next-hop=\"iris-b\""
    );
}

/// A fake holder (certificate from the cluster's CA) that takes each relayed CONNECT and
/// then drops its connection before answering, as a node that crashes would; returns its
/// address and a count of the CONNECTs it took.
async fn crashing_holder(ca: &RelayCa, name: &str, ip: [u8; 4]) -> (SocketAddr, Arc<AtomicUsize>) {
    let acceptor =
        tokio_rustls::TlsAcceptor::from(ca.issue(name).unwrap().server_config().unwrap());
    let listener = TcpListener::bind((Ipv4Addr::from(ip), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let counted = taken.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                if let Some(Ok(_request)) = conn.accept().await {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                // Dropping the connection closes the socket: no answer head.
            });
        }
    });
    (addr, taken)
}

#[tokio::test]
async fn a_holder_whose_stream_breaks_before_its_answer_is_passed_over_for_the_next() {
    let origin = origin().await;
    let ca = RelayCa::generate().unwrap();
    let tls = RouteTls::default();
    let a = Node::start(
        "iris-a",
        [127, 0, 0, 1],
        &ca,
        store(&origin, tls.clone()),
        false,
    )
    .await;
    let c = Node::start("iris-c", [127, 0, 0, 3], &ca, store(&origin, tls), true).await;
    let (crashing, taken) = crashing_holder(&ca, "iris-b", [127, 0, 0, 2]).await;
    a.knows(vec![
        RelayPeer {
            node: "iris-b".into(),
            addr: crashing,
            connections: 9,
        },
        c.as_holder(1),
    ]);
    let mut client = a.client().await;
    let res = send(&mut client, connect(ECHO, "http")).await;
    assert_eq!(res.status(), StatusCode::OK);
    echo_through(res).await;
    assert_eq!(
        taken.load(Ordering::SeqCst),
        1,
        "B took the CONNECT, then broke"
    );
    assert_eq!(a.metrics.relays.get("peer_down"), 1);
    assert_eq!(a.metrics.relays.get("ok"), 1);
    assert_eq!(
        origin.connections.load(Ordering::SeqCst),
        1,
        "served once, by C"
    );
}

#[tokio::test]
async fn a_relayed_stream_that_breaks_after_its_answer_is_not_replayed() {
    let origin = origin().await;
    let ca = RelayCa::generate().unwrap();
    let tls = RouteTls::default();
    let a = Node::start(
        "iris-a",
        [127, 0, 0, 1],
        &ca,
        store(&origin, tls.clone()),
        false,
    )
    .await;
    let c = Node::start("iris-c", [127, 0, 0, 3], &ca, store(&origin, tls), true).await;
    // A fake holder that answers 200, then drops its connection (a node that crashes while
    // the stream runs).
    let acceptor =
        tokio_rustls::TlsAcceptor::from(ca.issue("iris-b").unwrap().server_config().unwrap());
    let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), 0))
        .await
        .unwrap();
    let crashing = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let mut conn = h2::server::handshake(tls).await.unwrap();
        let (request, mut respond) = conn.accept().await.unwrap().unwrap();
        let _stream = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        // Serve until the caller's first bytes arrive through A, then crash.
        let mut body = request.into_body();
        tokio::select! {
            _ = body.data() => {}
            _ = std::future::poll_fn(|cx| conn.poll_closed(cx)) => {}
        }
    });
    a.knows(vec![
        RelayPeer {
            node: "iris-b".into(),
            addr: crashing,
            connections: 9,
        },
        c.as_holder(1),
    ]);
    let mut client = a.client().await;
    let res = send(&mut client, connect(ECHO, "http")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut io = TokioIo::new(hyper::upgrade::on(res).await.unwrap());
    io.write_all(b"lost").await.unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(PATIENCE, io.read_to_end(&mut rest))
        .await
        .expect("the caller's stream ends when the holder's does");
    assert!(ended.is_err() || rest.is_empty(), "{ended:?} {rest:?}");
    assert_eq!(c.pool.dialed().len(), 0, "never replayed on C");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_network_socket_for_a_tunnel_held_elsewhere_is_routed_by_the_holder() {
    use crate::connect::{ACCOUNT_HEADER, NETWORK_HEADER};
    use crate::routes::{NetworkReach, NetworkTarget};
    use wvpc_schemas::socket_frames::SocketFrames;

    let origin = origin().await;
    let ca = RelayCa::generate().unwrap();
    let network = NetworkTarget::Tunnel(TUNNEL);
    let with_network = || {
        let store = store(&origin, RouteTls::default());
        store.put_network("acct-1", network, NetworkReach::Tunnel(TUNNEL));
        store
    };
    let a = Node::start("iris-a", [127, 0, 0, 1], &ca, with_network(), false).await;
    let b = Node::start("iris-b", [127, 0, 0, 2], &ca, with_network(), true).await;
    a.knows(vec![b.as_holder(1)]);

    let mut client = a.client().await;
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("127.0.0.1:{}", origin.port))
        .header(NETWORK_HEADER, network.to_string())
        .header(ACCOUNT_HEADER, "acct-1")
        .header(SCHEME_HEADER, "tcp")
        .header(REQUEST_ID_HEADER, "req-relay-socket");
    let res = send(&mut client, req).await;
    assert_eq!(res.status(), StatusCode::OK, "{}", proxy_status(&res));
    // The holder frames the socket; the relaying node passes its frames through.
    let mut io = SocketFrames::new(TokioIo::new(hyper::upgrade::on(res).await.unwrap()));
    io.write_all(b"a socket through two nodes").await.unwrap();
    io.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(PATIENCE, io.read_to_end(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, b"a socket through two nodes");
    assert_eq!(a.pool.dialed().len(), 0, "A dials nothing itself");
    assert_eq!(
        b.pool.dialed_via(),
        vec![(TUNNEL, SocketAddr::from((Ipv4Addr::LOCALHOST, origin.port)))]
    );
    assert_eq!(a.metrics.relays.get("ok"), 1);
}
