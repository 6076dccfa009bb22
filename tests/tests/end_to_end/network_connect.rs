//! Network CONNECTs (`wvpc-network`) and `tcp` sockets on the real tunnel: iris's router over
//! an in-memory store that knows the tunnel as a network of the account, the real QUIC edge
//! and our connector: what its `--allow` list refuses is `destination_ip_prohibited`, and an
//! origin's reset reaches the CONNECT client as a reset, not as a clean end.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wvpc_connector::AllowRule;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_iris::mock::MemoryStore;
use wvpc_iris::{NetworkReach, NetworkTarget, Router, RouterConfig};
use wvpc_schemas::socket_frames::SocketFrames;
use wvpc_tests::origin::Origin;
use wvpc_tests::real::{ORIGIN_IP, RealWorld, RunningConnector, WorldOptions};
use wvpc_tests::{trace_init, within};

const ACCOUNT: &str = "acct-net";

/// A server on `ip` that reads a little, answers part of something and resets.
async fn resetting_server(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"partial").await;
            // SO_LINGER 0: closing sends RST.
            let _ = s.set_zero_linger();
            drop(s);
        }
    });
    addr
}

fn connect(network: &NetworkTarget, dest: SocketAddr) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(dest.to_string())
        .header("wvpc-network", network.to_string())
        .header("wvpc-account", ACCOUNT)
        .header("wvpc-scheme", "tcp")
        .header("wvpc-request-id", "req-network-connect")
        .body(Empty::new())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_and_an_origins_reset_reach_a_network_connect() {
    trace_init();
    let w = within(
        "starting the real path",
        RealWorld::start_with(WorldOptions {
            connector: false,
            ..WorldOptions::default()
        }),
    )
    .await
    .expect("starting the real path");
    let resetting = resetting_server(ORIGIN_IP).await;
    let other = Origin::start("127.0.0.3").await.unwrap();

    let mut config = w.connector_config(w.stack.edge_addr);
    config.allow = vec![AllowRule::Addr(w.origin.addr), AllowRule::Addr(resetting)];
    let connector = within("the connector registers", RunningConnector::start(config))
        .await
        .expect("starting a connector");

    // iris's router over the real edge registry, with the tunnel as a network of the account.
    let network = NetworkTarget::Tunnel(w.tunnel_id);
    let store = MemoryStore::default();
    store.put_network(ACCOUNT, network, NetworkReach::Tunnel(w.tunnel_id));
    let router = Router::new(
        Arc::new(store),
        w.stack.registry().clone(),
        RouterConfig::default(),
    );
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { router.serve(listener).await });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);

    // Outside the allow-list: refused by the connector, with its code.
    let res = within(
        "prohibited",
        sender.send_request(connect(&network, other.addr)),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let status = res.headers()["proxy-status"].to_str().unwrap().to_owned();
    let err = ProxyError::from_proxy_status(&status).unwrap();
    assert_eq!(err.code, ErrorCode::DestinationIpProhibited, "{status}");
    assert!(
        other.seen().is_empty(),
        "the forbidden origin is never reached"
    );
    assert_eq!(connector.metrics.errors.get("destination_ip_prohibited"), 1);

    // Allowed, and the origin resets mid-answer: the client reads the bytes before the
    // reset, then a reset, never a clean end.
    let res = within("allowed", sender.send_request(connect(&network, resetting)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let upgraded = within("the upgrade", hyper::upgrade::on(res))
        .await
        .unwrap();
    let mut socket = SocketFrames::new(TokioIo::new(upgraded));
    socket.write_all(b"query").await.unwrap();
    socket.flush().await.unwrap();
    let mut got = Vec::new();
    let err = within("the reset", socket.read_to_end(&mut got))
        .await
        .expect_err("a reset is not a clean end");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    drop(connector);
}
