//! CONNECTs of `vpc_networks` bindings (`wvpc-network`) and `tcp` CONNECTs of services,
//! against an in-memory store and the mock tunnel (which dials loopback and records the
//! tunnel of each dial).

use std::net::Ipv4Addr;
use std::sync::Arc;

use hickory_proto::op::{Message, OpCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use http_body_util::BodyExt;
use hyper::client::conn::http2;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use wvpc_directory::network_routes::{NetworkRoute, NetworkRouteTable};

use super::*;
use crate::mock::{MemoryStore, MockTunnel};

const ACCOUNT: &str = "acct-1";
const VNET_A: Uuid = Uuid::from_u128(0xa);
const VNET_B: Uuid = Uuid::from_u128(0xb);
const T1: Uuid = Uuid::from_u128(0x71);
const T2: Uuid = Uuid::from_u128(0x72);
const T3: Uuid = Uuid::from_u128(0x73);
const TCP_SERVICE: Uuid = Uuid::from_u128(0x5);
const HTTP_WITH_TCP: Uuid = Uuid::from_u128(0x6);
const HTTP_ONLY: Uuid = Uuid::from_u128(0x7);

/// An echo server on `ip`: echoes every byte, and half-closes after the client's FIN.
async fn echo_on(ip: Ipv4Addr) -> u16 {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

/// A DNS answerer (through the mock tunnel) that knows `name` → `ip` (A only).
fn answering(name: &'static str, ip: Ipv4Addr) -> MockTunnel {
    MockTunnel::new(Arc::new(move |query: &[u8]| {
        let q = Message::from_vec(query).ok()?;
        let question = q.queries.first()?.clone();
        let mut resp = Message::response(q.metadata.id, OpCode::Query);
        resp.add_query(question.clone());
        if question.name().to_ascii().trim_end_matches('.') == name {
            if question.query_type() == RecordType::A {
                resp.add_answer(Record::from_rdata(
                    question.name().clone(),
                    60,
                    RData::A(A(ip)),
                ));
            }
        } else {
            resp.metadata.response_code = hickory_proto::op::ResponseCode::NXDomain;
        }
        resp.to_vec().ok()
    }))
}

fn route(vnet: Uuid, network: &str, tunnel: Uuid) -> NetworkRoute {
    NetworkRoute {
        vnet,
        network: network.parse().unwrap(),
        tunnel,
    }
}

struct Net {
    sender: http2::SendRequest<Empty<Bytes>>,
    pool: MockTunnel,
    router: Router,
}

/// A router whose store has: in `acct-1`, vnet A (`127.0.0.0/8` → T1, `127.0.0.2/32` → T2),
/// vnet B (`127.0.0.0/8` → T2), tunnel T3 by id; and three services for `tcp` CONNECTs.
async fn start(pool: MockTunnel, echo_port: u16) -> Net {
    let table = Arc::new(NetworkRouteTable::new([
        route(VNET_A, "127.0.0.0/8", T1),
        route(VNET_A, "127.0.0.2/32", T2),
        route(VNET_B, "127.0.0.0/8", T2),
    ]));
    let store = MemoryStore::default();
    for vnet in [VNET_A, VNET_B] {
        store.put_network(
            ACCOUNT,
            NetworkTarget::VirtualNetwork(vnet),
            NetworkReach::VirtualNetwork {
                vnet,
                routes: Arc::clone(&table),
            },
        );
    }
    store.put_network(ACCOUNT, NetworkTarget::Tunnel(T3), NetworkReach::Tunnel(T3));
    let loopback = RouteTarget::Ips {
        ipv4: Some(Ipv4Addr::LOCALHOST),
        ipv6: None,
    };
    for (id, http, tcp) in [
        (TCP_SERVICE, None, Some(echo_port)),
        (HTTP_WITH_TCP, Some(echo_port), Some(echo_port)),
        (HTTP_ONLY, Some(echo_port), None),
    ] {
        store.put(ServiceRoute {
            service_id: id,
            tunnel_id: T1,
            target: loopback.clone(),
            http_port: http,
            https_port: None,
            tcp_port: tcp,
            tls: RouteTls::default(),
        });
    }
    let router = Router::new(
        Arc::new(store),
        Arc::new(pool.clone()),
        RouterConfig::default(),
    );
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = router.clone();
    tokio::spawn(async move { serving.serve(listener).await });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    Net {
        sender,
        pool,
        router,
    }
}

fn network_connect(
    network: &str,
    authority: &str,
    account: Option<&str>,
    scheme: &str,
) -> Request<Empty<Bytes>> {
    let mut builder = Request::builder()
        .method(Method::CONNECT)
        .uri(authority)
        .header(NETWORK_HEADER, network)
        .header(SCHEME_HEADER, scheme)
        .header(REQUEST_ID_HEADER, "req-net");
    if let Some(account) = account {
        builder = builder.header(ACCOUNT_HEADER, account);
    }
    builder.body(Empty::new()).unwrap()
}

fn tcp_connect(service: Uuid) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(format!("{service}:80"))
        .header(SERVICE_ID_HEADER, service.to_string())
        .header(SCHEME_HEADER, "tcp")
        .header(ACCOUNT_HEADER, ACCOUNT)
        .body(Empty::new())
        .unwrap()
}

/// Sends `req`, expects `200`, and checks that bytes go there and back (in socket frames
/// for a `tcp` CONNECT).
async fn echoes(sender: &mut http2::SendRequest<Empty<Bytes>>, req: Request<Empty<Bytes>>) {
    let framed = req.headers()[SCHEME_HEADER] == "tcp";
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{:?}", res.headers());
    let io = TokioIo::new(hyper::upgrade::on(res).await.unwrap());
    let echoed = if framed {
        round_trip(SocketFrames::new(io)).await
    } else {
        round_trip(io).await
    };
    assert_eq!(echoed, b"through the network");
}

async fn round_trip<T: AsyncRead + AsyncWrite + Unpin>(mut io: T) -> Vec<u8> {
    io.write_all(b"through the network").await.unwrap();
    io.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    io.read_to_end(&mut echoed).await.unwrap();
    echoed
}

async fn refused(
    sender: &mut http2::SendRequest<Empty<Bytes>>,
    req: Request<Empty<Bytes>>,
) -> ProxyError {
    let res = sender.send_request(req).await.unwrap();
    assert_ne!(res.status(), StatusCode::OK);
    let header = res.headers()[PROXY_STATUS_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        res.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    ProxyError::from_proxy_status(&header).unwrap()
}

#[tokio::test]
async fn an_ip_in_a_virtual_network_goes_to_the_tunnel_of_its_longest_route() {
    let wide = echo_on(Ipv4Addr::LOCALHOST).await;
    let narrow_ip = Ipv4Addr::new(127, 0, 0, 2);
    let narrow = echo_on(narrow_ip).await;
    let mut net = start(MockTunnel::default(), wide).await;
    let vnet_a = format!("cf1:vnet:{VNET_A}");
    echoes(
        &mut net.sender,
        network_connect(
            &vnet_a,
            &format!("127.0.0.2:{narrow}"),
            Some(ACCOUNT),
            "tcp",
        ),
    )
    .await;
    echoes(
        &mut net.sender,
        network_connect(&vnet_a, &format!("127.0.0.1:{wide}"), Some(ACCOUNT), "http"),
    )
    .await;
    assert_eq!(
        net.pool.dialed_via(),
        vec![
            (T2, SocketAddr::from((narrow_ip, narrow))),
            (T1, SocketAddr::from((Ipv4Addr::LOCALHOST, wide))),
        ],
        "the /32 wins over the /8 it is inside of"
    );
}

#[tokio::test]
async fn the_same_ip_in_two_virtual_networks_goes_through_two_tunnels() {
    let port = echo_on(Ipv4Addr::LOCALHOST).await;
    let mut net = start(MockTunnel::default(), port).await;
    let dest = format!("127.0.0.1:{port}");
    for vnet in [VNET_A, VNET_B] {
        echoes(
            &mut net.sender,
            network_connect(&format!("cf1:vnet:{vnet}"), &dest, Some(ACCOUNT), "tcp"),
        )
        .await;
    }
    let tunnels: Vec<Uuid> = net.pool.dialed_via().iter().map(|(t, _)| *t).collect();
    assert_eq!(tunnels, vec![T1, T2]);
}

#[tokio::test]
async fn an_ip_no_route_covers_is_unroutable_and_names_the_ip_and_network() {
    let port = echo_on(Ipv4Addr::LOCALHOST).await;
    let mut net = start(MockTunnel::default(), port).await;
    let vnet_a = format!("cf1:vnet:{VNET_A}");
    let err = refused(
        &mut net.sender,
        network_connect(&vnet_a, "10.9.8.7:5432", Some(ACCOUNT), "tcp"),
    )
    .await;
    assert_eq!(err.code, ErrorCode::DestinationIpUnroutable);
    let details = err.details.unwrap();
    assert!(details.contains("10.9.8.7"), "{details}");
    assert!(details.contains(&VNET_A.to_string()), "{details}");
    assert!(net.pool.dialed_via().is_empty(), "nothing was dialled");
}

#[tokio::test]
async fn a_network_of_another_account_or_none_at_all_is_not_found() {
    let port = echo_on(Ipv4Addr::LOCALHOST).await;
    let mut net = start(MockTunnel::default(), port).await;
    let dest = format!("127.0.0.1:{port}");
    let vnet_a = format!("cf1:vnet:{VNET_A}");

    let err = refused(
        &mut net.sender,
        network_connect(&vnet_a, &dest, Some("acct-2"), "tcp"),
    )
    .await;
    assert_eq!(err.code, ErrorCode::DestinationNotFound);
    let details = err.details.unwrap();
    assert!(
        details.contains("acct-2") && details.contains(&VNET_A.to_string()),
        "{details}"
    );

    let unknown = Uuid::from_u128(0xdead);
    let err = refused(
        &mut net.sender,
        network_connect(&format!("tunnel:{unknown}"), &dest, Some(ACCOUNT), "tcp"),
    )
    .await;
    assert_eq!(err.code, ErrorCode::DestinationNotFound);
    assert!(err.details.unwrap().contains(&format!("tunnel {unknown}")));

    // Malformed CONNECTs are the client's error, each saying what is missing.
    for (req, says) in [
        (network_connect(&vnet_a, &dest, None, "tcp"), ACCOUNT_HEADER),
        (
            network_connect("cf1:vnet:nope", &dest, Some(ACCOUNT), "tcp"),
            "virtual network id",
        ),
        (
            network_connect(&vnet_a, "127.0.0.1:0", Some(ACCOUNT), "tcp"),
            "port",
        ),
    ] {
        let err = refused(&mut net.sender, req).await;
        assert_eq!(err.code, ErrorCode::HttpRequestError);
        let details = err.details.unwrap();
        assert!(details.contains(says), "{details}");
    }
    assert!(net.pool.dialed_via().is_empty());
}

#[tokio::test]
async fn a_hostname_is_resolved_through_the_tunnel_and_dialled_through_it() {
    let port = echo_on(Ipv4Addr::LOCALHOST).await;
    let pool = answering("db.internal", Ipv4Addr::LOCALHOST);
    let mut net = start(pool, port).await;
    echoes(
        &mut net.sender,
        network_connect(
            &format!("tunnel:{T3}"),
            &format!("DB.internal:{port}"),
            Some(ACCOUNT),
            "tcp",
        ),
    )
    .await;
    assert_eq!(net.pool.udp_flow_tunnels(), vec![T3], "DNS went through T3");
    assert_eq!(
        net.pool.dialed_via(),
        vec![(T3, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))]
    );

    // In a virtual network: resolved through one of its tunnels, the answer routed by the
    // network's routes (127.0.0.1 → T1 in vnet A).
    echoes(
        &mut net.sender,
        network_connect(
            &format!("cf1:vnet:{VNET_A}"),
            &format!("db.internal:{port}"),
            Some(ACCOUNT),
            "tcp",
        ),
    )
    .await;
    assert_eq!(
        net.pool.dialed_via()[1],
        (T1, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    );

    let err = refused(
        &mut net.sender,
        network_connect(
            &format!("tunnel:{T3}"),
            &format!("nowhere.internal:{port}"),
            Some(ACCOUNT),
            "tcp",
        ),
    )
    .await;
    assert_eq!(err.code, ErrorCode::DnsError);
    assert_eq!(err.rcode.as_deref(), Some("NXDOMAIN"));
}

#[tokio::test]
async fn an_https_network_connect_asks_for_full_verification_and_counts_its_pipe() {
    let port = echo_on(Ipv4Addr::LOCALHOST).await;
    let mut net = start(MockTunnel::default(), port).await;
    let network = NetworkTarget::Tunnel(T3);
    let res = net
        .sender
        .send_request(network_connect(
            &network.to_string(),
            &format!("127.0.0.1:{port}"),
            Some(ACCOUNT),
            "https",
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[TLS_VERIFICATION_HEADER], "verify_full");
    let mut io = TokioIo::new(hyper::upgrade::on(res).await.unwrap());
    io.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    io.read_exact(&mut one).await.unwrap();
    assert_eq!(
        net.router
            .inner
            .pipes
            .open(crate::pipes::PipeKey::Network(network)),
        1,
        "the open pipe is counted under its network"
    );
}

#[tokio::test]
async fn a_tcp_connect_to_a_service_dials_its_tcp_port_or_says_it_has_none() {
    let port = echo_on(Ipv4Addr::LOCALHOST).await;
    let mut net = start(MockTunnel::default(), port).await;
    echoes(&mut net.sender, tcp_connect(TCP_SERVICE)).await;
    echoes(&mut net.sender, tcp_connect(HTTP_WITH_TCP)).await;
    let err = refused(&mut net.sender, tcp_connect(HTTP_ONLY)).await;
    assert_eq!(err.code, ErrorCode::HttpRequestDenied);
    let details = err.details.unwrap();
    assert!(
        details.contains("no tcp_port") && details.contains("give the service a tcp_port"),
        "{details}"
    );
}

/// An origin that accepts, reads what it was sent, and resets the connection.
async fn resetting_origin() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 16];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"half an answ").await;
            // SO_LINGER 0: close sends RST.
            let _ = s.set_zero_linger();
            drop(s);
        }
    });
    port
}

#[tokio::test]
async fn an_origin_reset_reaches_the_client_as_a_reset_not_an_end() {
    let port = resetting_origin().await;
    let mut net = start(MockTunnel::default(), port).await;
    let res = net
        .sender
        .send_request(network_connect(
            &format!("tunnel:{T3}"),
            &format!("127.0.0.1:{port}"),
            Some(ACCOUNT),
            "tcp",
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut io = SocketFrames::new(TokioIo::new(hyper::upgrade::on(res).await.unwrap()));
    io.write_all(b"query").await.unwrap();
    io.flush().await.unwrap();
    let mut got = Vec::new();
    let err = io.read_to_end(&mut got).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[test]
fn destinations_print_ipv6_in_brackets() {
    assert_eq!(destination_text("fd00::5", 80), "[fd00::5]:80");
    assert_eq!(destination_text("db.internal", 5432), "db.internal:5432");
}
