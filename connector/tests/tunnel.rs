//! The QUIC tunnel end to end: iris's edge and our connector over real QUIC on loopback, with
//! certificates generated per test. Covers registration (accepted and refused), TCP and UDP
//! flows, the virtual DNS resolver, and malformed input on both ends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use capnp::capability::FromClientHook as _;
use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty};
use futures::io::{BufReader, BufWriter};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::compat::{TokioAsyncReadCompatExt as _, TokioAsyncWriteCompatExt as _};
use uuid::Uuid;
use wvpc_connector::{Connector, ConnectorConfig, ConnectorError, Readiness};
use wvpc_errors::ErrorCode;
use wvpc_iris::edge::{AdmissionLimits, CredentialsAuthority, Edge, TunnelRegistry};
use wvpc_iris::{FlowContext, TunnelPool};
use wvpc_schemas::tunnel_rpc_capnp::{
    cloudflared_server, configuration_manager, connection_response, registration_server,
    session_manager,
};
use wvpc_tunnel::preamble::{DATA_STREAM_PREAMBLE, RPC_STREAM_SIGNATURE};
use wvpc_tunnel::quic::CloseCode;
use wvpc_tunnel::{
    ConnectRequest, ConnectResponse, Credentials, DatagramVersion, EdgeIdentity, Metadata,
    QUIC_SERVER_NAME, StreamType, VIRTUAL_DNS_RESOLVER, connector_client_config,
};

// ---------------------------------------------------------------------------------------------
// Harness

/// Log lines of the whole test binary, to check that refusals are logged with their reason.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        struct Sink;
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                logs().lock().unwrap().extend_from_slice(buf);
                std::io::stderr().write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .with_ansi(false)
            .with_writer(|| Sink)
            .try_init();
        Mutex::new(Vec::new())
    })
}

fn logged(needle: &str) -> bool {
    String::from_utf8_lossy(&logs().lock().unwrap())
        .lines()
        .any(|l| l.contains(needle))
}

struct TestEdge {
    edge: Arc<Edge>,
    identity: EdgeIdentity,
    authority: Arc<CredentialsAuthority>,
    credentials: Credentials,
}

impl TestEdge {
    async fn start() -> Self {
        Self::start_with(Arc::new(TunnelRegistry::default())).await
    }

    /// An edge whose registry is built by the caller (e.g. a short UDP idle time).
    async fn start_with(registry: Arc<TunnelRegistry>) -> Self {
        logs();
        let identity = EdgeIdentity::generate().unwrap();
        let authority = Arc::new(CredentialsAuthority::new());
        let credentials = Credentials::mint("acct-1", Uuid::new_v4());
        authority.insert(credentials.clone());
        let edge = Arc::new(
            Edge::bind_with_registry(
                "127.0.0.1:0".parse().unwrap(),
                &identity,
                authority.clone(),
                "test-node".into(),
                registry,
            )
            .unwrap(),
        );
        tokio::spawn({
            let edge = edge.clone();
            async move { edge.serve().await }
        });
        Self {
            edge,
            identity,
            authority,
            credentials,
        }
    }

    fn registry(&self) -> Arc<TunnelRegistry> {
        self.edge.registry()
    }

    fn tunnel(&self) -> Uuid {
        self.credentials.tunnel_id
    }

    fn config(&self, credentials: Credentials) -> ConnectorConfig {
        ConnectorConfig::new(
            credentials,
            vec![self.edge.local_addr()],
            self.identity.ca_pem().as_bytes().to_vec(),
        )
    }
}

struct RunningConnector {
    readiness: Readiness,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ConnectorError>>,
}

impl RunningConnector {
    fn start(config: ConnectorConfig) -> Self {
        let connector = Connector::new(config).unwrap();
        let readiness = connector.readiness();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            connector
                .serve(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Self {
            readiness,
            stop: Some(stop),
            task,
        }
    }

    async fn registered(mut self, count: usize) -> Self {
        assert!(
            self.readiness.wait_registered(count).await,
            "connector stopped before registering"
        );
        self
    }

    async fn stop(mut self) -> Result<(), ConnectorError> {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap()
    }
}

async fn edge_with_connector() -> (TestEdge, RunningConnector) {
    let edge = TestEdge::start().await;
    let connector = RunningConnector::start(edge.config(edge.credentials.clone()))
        .registered(1)
        .await;
    edge.registry().wait_for_connection(edge.tunnel()).await;
    (edge, connector)
}

async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            sock.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = sock.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// A DNS server answering every A query with 10.0.0.7, on UDP and TCP at the same port.
async fn fake_dns() -> SocketAddr {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(&dns_answer(&buf[..n]), from).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let len = sock.read_u16().await.unwrap();
                let mut query = vec![0u8; usize::from(len)];
                sock.read_exact(&mut query).await.unwrap();
                let answer = dns_answer(&query);
                sock.write_u16(u16::try_from(answer.len()).unwrap())
                    .await
                    .unwrap();
                sock.write_all(&answer).await.unwrap();
            });
        }
    });
    addr
}

fn dns_answer(query: &[u8]) -> Vec<u8> {
    let q = Message::from_vec(query).unwrap();
    let mut resp = Message::response(q.metadata.id, OpCode::Query);
    resp.add_queries(q.queries.iter().cloned());
    resp.add_answer(Record::from_rdata(
        q.queries[0].name().clone(),
        60,
        RData::A(A(std::net::Ipv4Addr::new(10, 0, 0, 7))),
    ));
    resp.to_vec().unwrap()
}

fn dns_query(name: &str) -> Vec<u8> {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    msg.to_vec().unwrap()
}

fn answered_ip(response: &[u8]) -> std::net::IpAddr {
    let m = Message::from_vec(response).unwrap();
    assert_eq!(m.metadata.message_type, MessageType::Response);
    match &m.answers[0].data {
        RData::A(a) => std::net::IpAddr::V4(a.0),
        other => panic!("unexpected answer {other:?}"),
    }
}

/// A raw QUIC connection to the edge, as a connector would open it.
async fn raw_connection(edge: &TestEdge) -> quinn::Connection {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(
        connector_client_config(edge.identity.ca_pem().as_bytes()).unwrap(),
    );
    endpoint
        .connect(edge.edge.local_addr(), QUIC_SERVER_NAME)
        .unwrap()
        .await
        .unwrap()
}

fn close_code(err: quinn::ConnectionError) -> Option<CloseCode> {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            CloseCode::from_varint(close.error_code)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Registration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_registers_and_leaves_the_registry_when_it_stops() {
    let edge = TestEdge::start().await;
    let mut config = edge.config(edge.credentials.clone());
    config.ha_connections = 2;
    let connector = RunningConnector::start(config).registered(2).await;
    let registry = edge.registry();
    registry.wait_for_connections(edge.tunnel(), 2).await;

    let mut conns = registry.connections(edge.tunnel());
    conns.sort_by_key(|c| c.conn_index);
    assert_eq!(
        conns.iter().map(|c| c.conn_index).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert_eq!(conns[0].client_id, conns[1].client_id);
    for c in &conns {
        assert_eq!(c.datagram_version, DatagramVersion::V3);
        assert!(c.features.iter().any(|f| f == "support_datagram_v3_2"));
        assert!(c.version.starts_with("wvpc-connector/"));
        assert!(!c.draining);
    }
    assert!(logged(&format!("tunnel={} ", edge.tunnel())) || logged(&edge.tunnel().to_string()));

    connector.stop().await.unwrap();
    registry.wait_for_no_connection(edge.tunnel()).await;
    let err = registry
        .open_tcp(
            edge.tunnel(),
            "127.0.0.1:9".parse().unwrap(),
            &FlowContext::default(),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.code, ErrorCode::DestinationUnavailable);
}

#[tokio::test]
async fn wrong_secret_is_refused_with_a_clear_error() {
    let edge = TestEdge::start().await;
    let mut bad = edge.credentials.clone();
    bad.tunnel_secret = b"not the secret".to_vec();
    let err = Connector::run(edge.config(bad), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Unauthorized { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("wrong secret"), "{text}");
    assert!(text.contains("token or credentials are wrong"), "{text}");
    assert!(logged(&format!(
        "wrong secret for tunnel {}",
        edge.tunnel()
    )));
    assert!(edge.registry().connections(edge.tunnel()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_registrations_leaves_the_good_tunnel_served() {
    let (edge, connector) = edge_with_connector().await;
    let echo = tcp_echo().await;
    let registry = edge.registry();
    const FLOOD: usize = 32;
    let flood: Vec<_> = (0..FLOOD)
        .map(|i| {
            let mut bad = if i % 2 == 0 {
                Credentials::mint("acct-1", Uuid::new_v4())
            } else {
                edge.credentials.clone()
            };
            bad.tunnel_secret = format!("wrong {i}").into_bytes();
            tokio::spawn(Connector::run(edge.config(bad), std::future::pending()))
        })
        .collect();
    // While the flood is refused, the registered tunnel keeps proxying.
    for round in 0..4u8 {
        let mut stream = registry
            .open_tcp(edge.tunnel(), echo, &FlowContext::default())
            .await
            .unwrap();
        stream.write_all(&[round; 32]).await.unwrap();
        let mut back = [0u8; 32];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, [round; 32]);
    }
    for attempt in flood {
        let err = attempt.await.unwrap().unwrap_err();
        assert!(matches!(err, ConnectorError::Unauthorized { .. }), "{err}");
    }
    assert!(logged("reason=unknown tunnel"));
    assert!(logged(&format!(
        "reason=wrong secret for tunnel {}",
        edge.tunnel()
    )));
    assert_eq!(registry.connections(edge.tunnel()).len(), 1);
    connector.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_tunnel_is_refused_with_a_clear_error() {
    let edge = TestEdge::start().await;
    let stranger = Credentials::mint("acct-1", Uuid::new_v4());
    let err = Connector::run(edge.config(stranger.clone()), std::future::pending())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("unknown tunnel {}", stranger.tunnel_id)),
        "{text}"
    );
    assert!(logged(&format!("unknown tunnel {}", stranger.tunnel_id)));

    // The same edge still accepts the right credentials.
    edge.authority.insert(stranger.clone());
    let connector = RunningConnector::start(edge.config(stranger))
        .registered(1)
        .await;
    connector.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// TCP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_stream_reaches_an_echo_server_with_half_close() {
    let (edge, connector) = edge_with_connector().await;
    let echo = tcp_echo().await;
    let registry = edge.registry();
    let ctx = FlowContext {
        request_id: "req-1".into(),
    };

    // Several streams share the one QUIC connection.
    for round in 0..3 {
        let mut stream = registry.open_tcp(edge.tunnel(), echo, &ctx).await.unwrap();
        let payload = vec![round as u8; 200_000];
        stream.write_all(&payload).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, payload);
    }
    assert_eq!(registry.connections(edge.tunnel()).len(), 1);
    connector.stop().await.unwrap();
}

#[tokio::test]
async fn refused_origin_comes_back_as_connection_refused() {
    let (edge, connector) = edge_with_connector().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = edge
        .registry()
        .open_tcp(edge.tunnel(), closed, &FlowContext::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.code, ErrorCode::ConnectionRefused);
    assert!(err.details.unwrap().contains(&closed.to_string()));
    connector.stop().await.unwrap();
}

#[tokio::test]
async fn tcp_to_the_virtual_resolver_reaches_the_configured_resolver() {
    let edge = TestEdge::start().await;
    let dns = fake_dns().await;
    let mut config = edge.config(edge.credentials.clone());
    config.dns_resolvers = vec![dns];
    let connector = RunningConnector::start(config).registered(1).await;
    edge.registry().wait_for_connection(edge.tunnel()).await;

    let mut stream = edge
        .registry()
        .open_tcp(edge.tunnel(), VIRTUAL_DNS_RESOLVER, &FlowContext::default())
        .await
        .unwrap();
    let query = dns_query("db.internal.");
    stream
        .write_u16(u16::try_from(query.len()).unwrap())
        .await
        .unwrap();
    stream.write_all(&query).await.unwrap();
    let len = stream.read_u16().await.unwrap();
    let mut answer = vec![0u8; usize::from(len)];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(
        answered_ip(&answer),
        "10.0.0.7".parse::<std::net::IpAddr>().unwrap()
    );
    // An open flow would hold the connector's graceful shutdown for its grace period.
    drop(stream);
    connector.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// UDP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flow_reaches_an_echo_server() {
    let (edge, connector) = edge_with_connector().await;
    let echo = udp_echo().await;
    let flow = edge
        .registry()
        .open_udp(edge.tunnel(), echo, &FlowContext::default())
        .await
        .unwrap();
    for i in 0..5u8 {
        let payload = Bytes::from(vec![i; 100 + usize::from(i)]);
        flow.send(payload.clone()).await.unwrap();
        assert_eq!(flow.recv().await.unwrap(), payload);
    }
    drop(flow);
    connector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_dns_to_the_virtual_resolver_reaches_the_configured_resolver() {
    let edge = TestEdge::start().await;
    let dns = fake_dns().await;
    let mut config = edge.config(edge.credentials.clone());
    config.dns_resolvers = vec![dns];
    let connector = RunningConnector::start(config).registered(1).await;
    edge.registry().wait_for_connection(edge.tunnel()).await;

    let flow = edge
        .registry()
        .open_udp(edge.tunnel(), VIRTUAL_DNS_RESOLVER, &FlowContext::default())
        .await
        .unwrap();
    flow.send(Bytes::from(dns_query("api.internal.")))
        .await
        .unwrap();
    let answer = flow.recv().await.unwrap();
    assert_eq!(
        answered_ip(&answer),
        "10.0.0.7".parse::<std::net::IpAddr>().unwrap()
    );
    connector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_over_datagram_v2_is_set_up_by_rpc_and_unregistered_when_dropped() {
    let edge = TestEdge::start().await;
    let mut config = edge.config(edge.credentials.clone());
    config.datagram_version = DatagramVersion::V2;
    config.max_active_flows = 1;
    let connector = RunningConnector::start(config).registered(1).await;
    edge.registry().wait_for_connection(edge.tunnel()).await;
    let conns = edge.registry().connections(edge.tunnel());
    assert_eq!(conns[0].datagram_version, DatagramVersion::V2);

    let registry = edge.registry();
    let echo = udp_echo().await;
    let ctx = FlowContext::default();
    let open = || registry.open_udp(edge.tunnel(), echo, &ctx);
    let flow = open().await.unwrap();
    for i in 0..3u8 {
        let payload = Bytes::from(vec![i; 200]);
        flow.send(payload.clone()).await.unwrap();
        assert_eq!(flow.recv().await.unwrap(), payload);
    }
    // The flow limit answers registerUdpSession with cloudflared's text: rate_limited.
    let err = open().await.err().unwrap();
    assert_eq!(err.code, ErrorCode::RateLimited, "{err:?}");
    // Dropping the flow unregisters the session on the connector, which frees its slot.
    drop(flow);
    let reopened = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match open().await {
                Ok(flow) => return flow,
                Err(e) if e.code == ErrorCode::RateLimited => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("unexpected failure: {e:?}"),
            }
        }
    })
    .await
    .expect("the dropped session was never unregistered on the connector");
    reopened.send(Bytes::from_static(b"again")).await.unwrap();
    assert_eq!(reopened.recv().await.unwrap(), Bytes::from_static(b"again"));
    drop(reopened);
    connector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_datagram_v2_session_is_unregistered_by_the_edge() {
    let idle = std::time::Duration::from_millis(300);
    let edge = TestEdge::start_with(Arc::new(TunnelRegistry::new(idle))).await;
    let mut config = edge.config(edge.credentials.clone());
    config.datagram_version = DatagramVersion::V2;
    config.max_active_flows = 1;
    let connector = RunningConnector::start(config).registered(1).await;
    edge.registry().wait_for_connection(edge.tunnel()).await;

    let registry = edge.registry();
    let echo = udp_echo().await;
    let ctx = FlowContext::default();
    let flow = registry.open_udp(edge.tunnel(), echo, &ctx).await.unwrap();
    flow.send(Bytes::from_static(b"ping")).await.unwrap();
    assert_eq!(flow.recv().await.unwrap(), Bytes::from_static(b"ping"));
    // Nothing more is sent: after the idle time the edge ends the session, and the flow
    // says so instead of waiting forever.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), flow.recv())
        .await
        .expect("the idle session was never ended");
    assert_eq!(ended.unwrap_err().code, ErrorCode::ConnectionTerminated);
    drop(flow);
    // And the connector let go of it: its only flow slot is free again.
    let reopened = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match registry.open_udp(edge.tunnel(), echo, &ctx).await {
                Ok(flow) => return flow,
                Err(e) if e.code == ErrorCode::RateLimited => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("unexpected failure: {e:?}"),
            }
        }
    })
    .await
    .expect("the idle session still holds the connector's flow slot");
    drop(reopened);
    connector.stop().await.unwrap();
}

#[tokio::test]
async fn udp_flow_ends_when_its_connection_closes() {
    let (edge, connector) = edge_with_connector().await;
    let echo = udp_echo().await;
    let flow = edge
        .registry()
        .open_udp(edge.tunnel(), echo, &FlowContext::default())
        .await
        .unwrap();
    connector.stop().await.unwrap();
    assert_eq!(
        flow.recv().await.unwrap_err().code,
        ErrorCode::ConnectionTerminated
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed input

#[tokio::test]
async fn streams_a_registered_connector_opens_are_reset_unless_they_are_rpc() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let edge = TestEdge::start().await;
            let stock_v2 = ["serialized_headers", "support_datagram_v2"];
            let conn = raw_register(&edge, Uuid::new_v4(), 0, &stock_v2).await;
            conn.outcome.clone().unwrap();

            // Garbage, and a data stream (which only the edge may open): each is reset.
            for first_bytes in [&b"GET / HTTP/1.1\r\n\r\n"[..], &DATA_STREAM_PREAMBLE[..]] {
                let (mut send, mut recv) = conn.quic.open_bi().await.unwrap();
                send.write_all(first_bytes).await.unwrap();
                let mut buf = [0u8; 1];
                assert!(
                    recv.read(&mut buf).await.is_err(),
                    "the edge must reset the stream"
                );
            }
            assert!(logged(
                "connector opened a stream that is not tunnel RPC; reset"
            ));
            assert!(logged(
                "connector opened a data stream, which only the edge may open"
            ));

            // An RPC stream reaches the edge's SessionManager: unregistering an unknown
            // session is answered (and logged), not fatal.
            let (mut send, recv) = conn.quic.open_bi().await.unwrap();
            send.write_all(&RPC_STREAM_SIGNATURE).await.unwrap();
            let network = twoparty::VatNetwork::new(
                BufReader::new(recv.compat()),
                BufWriter::new(send.compat_write()),
                Side::Client,
                Default::default(),
            );
            let mut rpc = RpcSystem::new(Box::new(network), None);
            let manager: session_manager::Client = rpc.bootstrap(Side::Server);
            tokio::task::spawn_local(rpc);
            let mut call = manager.unregister_udp_session_request();
            call.get().set_session_id(&[3; 16]);
            call.get().set_message("idle");
            call.send().promise.await.unwrap();

            // The connection is still registered and usable.
            assert_eq!(edge.registry().connections(edge.tunnel()).len(), 1);
            assert!(conn.quic.close_reason().is_none());
        })
        .await;
}

#[tokio::test]
async fn garbage_and_truncated_control_streams_close_only_that_connection() {
    let edge = TestEdge::start().await;

    // Not Cap'n Proto at all: a segment table announcing 2^32 segments.
    let garbage = raw_connection(&edge).await;
    let (mut send, _recv) = garbage.open_bi().await.unwrap();
    send.write_all(&[0xff; 64]).await.unwrap();
    send.finish().unwrap();
    assert_eq!(
        close_code(garbage.closed().await),
        Some(CloseCode::ProtocolViolation)
    );

    // A plausible message header, then the stream ends.
    let truncated = raw_connection(&edge).await;
    let (mut send, _recv) = truncated.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 0, 8, 0, 0, 0, 1, 2, 3])
        .await
        .unwrap();
    send.finish().unwrap();
    assert_eq!(
        close_code(truncated.closed().await),
        Some(CloseCode::ProtocolViolation)
    );

    // The edge still serves connectors.
    let connector = RunningConnector::start(edge.config(edge.credentials.clone()))
        .registered(1)
        .await;
    connector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_resets_bad_streams_and_keeps_serving() {
    let (edge, connector) = edge_with_connector().await;
    let registry = edge.registry();
    let tunnel = edge.tunnel();

    // Wrong preamble: the connector resets the stream.
    let mut stream = registry.open_stream(tunnel).await.unwrap();
    stream
        .send
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        stream.recv.read(&mut buf).await.is_err(),
        "expected a reset"
    );

    // Truncated ConnectRequest: preamble, half a message, FIN.
    let mut stream = registry.open_stream(tunnel).await.unwrap();
    let full = ConnectRequest::tcp("127.0.0.1:1".parse().unwrap(), "f").encode();
    stream
        .send
        .write_all(&full[..full.len() - 5])
        .await
        .unwrap();
    stream.send.finish().unwrap();
    assert!(!matches!(stream.recv.read(&mut buf).await, Ok(Some(n)) if n > 0));

    // Preamble but garbage instead of a message.
    let mut stream = registry.open_stream(tunnel).await.unwrap();
    let mut bad = DATA_STREAM_PREAMBLE.to_vec();
    bad.extend_from_slice(&[0, 0, 0, 0, 2, 0, 0, 0]);
    bad.extend_from_slice(&[0xff; 16]);
    stream.send.write_all(&bad).await.unwrap();
    assert!(!matches!(stream.recv.read(&mut buf).await, Ok(Some(n)) if n > 0));

    // http streams get a coded refusal, not a reset.
    let mut stream = registry.open_stream(tunnel).await.unwrap();
    let http = ConnectRequest {
        dest: "http://origin/".into(),
        stream_type: StreamType::Http,
        metadata: vec![Metadata::new("HttpMethod", "GET")],
    };
    stream.send.write_all(&http.encode()).await.unwrap();
    let response = ConnectResponse::read(&mut stream.recv).await.unwrap();
    assert_eq!(
        response.failure_code().unwrap().code,
        ErrorCode::HttpRequestError
    );

    // A hostname where a literal ip:port is required.
    let mut stream = registry.open_stream(tunnel).await.unwrap();
    let named = ConnectRequest {
        dest: "db.internal:5432".into(),
        stream_type: StreamType::Tcp,
        metadata: vec![],
    };
    stream.send.write_all(&named.encode()).await.unwrap();
    let response = ConnectResponse::read(&mut stream.recv).await.unwrap();
    assert_eq!(
        response.failure_code().unwrap().code,
        ErrorCode::HttpRequestError
    );
    assert!(response.error.contains("db.internal:5432"));

    // The same connection still proxies.
    let echo = tcp_echo().await;
    let mut ok = registry
        .open_tcp(tunnel, echo, &FlowContext::default())
        .await
        .unwrap();
    ok.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    ok.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"still here");
    assert_eq!(registry.connections(tunnel).len(), 1);
    drop(ok);
    connector.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Raw registrations and the connector's RPC service (capnp on a LocalSet, as cloudflared's
// counterpart would speak it).

struct RawRegistration {
    quic: quinn::Connection,
    outcome: Result<Uuid, String>,
}

async fn raw_register(
    edge: &TestEdge,
    client_id: Uuid,
    conn_index: u8,
    features: &[&str],
) -> RawRegistration {
    let quic = raw_connection(edge).await;
    let (send, recv) = quic.open_bi().await.unwrap();
    let network = twoparty::VatNetwork::new(
        BufReader::new(recv.compat()),
        BufWriter::new(send.compat_write()),
        Side::Client,
        Default::default(),
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let server: registration_server::Client = rpc.bootstrap(Side::Server);
    tokio::task::spawn_local(rpc);
    let mut call = server.register_connection_request();
    {
        let mut p = call.get();
        let mut auth = p.reborrow().init_auth();
        auth.set_account_tag(edge.credentials.account_tag.as_str());
        auth.set_tunnel_secret(&edge.credentials.tunnel_secret);
        p.set_tunnel_id(edge.credentials.tunnel_id.as_bytes());
        p.set_conn_index(conn_index);
        let mut client = p.init_options().init_client();
        client.set_client_id(client_id.as_bytes());
        client.set_version("raw-test");
        client.set_arch("linux_amd64");
        let mut list = client.init_features(features.len() as u32);
        for (i, f) in features.iter().enumerate() {
            list.set(i as u32, *f);
        }
    }
    let response = call.send().promise.await.unwrap();
    let result = response.get().unwrap().get_result().unwrap().get_result();
    let outcome = match result.which().unwrap() {
        connection_response::result::ConnectionDetails(d) => {
            let d = d.unwrap();
            assert_eq!(
                d.get_location_name().unwrap().to_str().unwrap(),
                "test-node"
            );
            Ok(Uuid::from_slice(d.get_uuid().unwrap()).unwrap())
        }
        connection_response::result::Error(e) => {
            Err(e.unwrap().get_cause().unwrap().to_string().unwrap())
        }
    };
    RawRegistration { quic, outcome }
}

#[tokio::test]
async fn duplicate_connections_get_edupconn() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let edge = TestEdge::start().await;
            let client = Uuid::new_v4();
            let stock_v2 = [
                "allow_remote_config",
                "serialized_headers",
                "support_datagram_v2",
            ];
            let first = raw_register(&edge, client, 0, &stock_v2).await;
            let connection_id = first.outcome.clone().unwrap();
            let dup = raw_register(&edge, client, 0, &stock_v2).await;
            assert_eq!(dup.outcome, Err("EDUPCONN".to_owned()));

            let conns = edge.registry().connections(edge.tunnel());
            assert_eq!(conns.len(), 1);
            assert_eq!(conns[0].connection_id, connection_id);
            assert_eq!(conns[0].datagram_version, DatagramVersion::V2);

            // Closing the connection removes it at once.
            first.quic.close(0u32.into(), b"");
            edge.registry().wait_for_no_connection(edge.tunnel()).await;
            drop(dup);
        })
        .await;
}

#[tokio::test]
async fn connector_answers_configuration_and_refuses_v2_sessions_over_rpc_streams() {
    let (edge, connector) = edge_with_connector().await;
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let mut stream = edge.registry().open_stream(edge.tunnel()).await.unwrap();
            stream.send.write_all(&RPC_STREAM_SIGNATURE).await.unwrap();
            let network = twoparty::VatNetwork::new(
                BufReader::new(stream.recv.compat()),
                BufWriter::new(stream.send.compat_write()),
                Side::Client,
                Default::default(),
            );
            let mut rpc = RpcSystem::new(Box::new(network), None);
            let server: cloudflared_server::Client = rpc.bootstrap(Side::Server);
            tokio::task::spawn_local(rpc);

            let mut update = server
                .clone()
                .cast_to::<configuration_manager::Client>()
                .update_configuration_request();
            update.get().set_version(7);
            update.get().set_config(br#"{"ingress":[]}"#);
            let answer = update.send().promise.await.unwrap();
            let result = answer.get().unwrap().get_result().unwrap();
            assert_eq!(result.get_latest_applied_version(), 7);
            assert_eq!(result.get_err().unwrap().to_str().unwrap(), "");

            let mut udp = server
                .cast_to::<session_manager::Client>()
                .register_udp_session_request();
            udp.get().set_session_id(&[1; 16]);
            udp.get().set_dst_ip(&[127, 0, 0, 1]);
            udp.get().set_dst_port(53);
            let answer = udp.send().promise.await.unwrap();
            let err = answer
                .get()
                .unwrap()
                .get_result()
                .unwrap()
                .get_err()
                .unwrap()
                .to_string()
                .unwrap();
            assert!(err.contains("datagram v2 is not supported"), "{err}");
        })
        .await;
    connector.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Reconnects and limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_reconnects_after_the_edge_drops_it() {
    let (edge, connector) = edge_with_connector().await;
    let registry = edge.registry();
    let first = registry.connections(edge.tunnel())[0].connection_id;

    assert_eq!(registry.disconnect_tunnel(edge.tunnel()), 1);
    registry.wait_for_connection(edge.tunnel()).await;
    let second = registry.connections(edge.tunnel())[0].connection_id;
    assert_ne!(first, second, "a new registration replaces the dropped one");

    let echo = tcp_echo().await;
    let mut stream = registry
        .open_tcp(edge.tunnel(), echo, &FlowContext::default())
        .await
        .unwrap();
    stream.write_all(b"again").await.unwrap();
    let mut back = [0u8; 5];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"again");
    drop(stream);

    // Revoked credentials: the reconnect is refused and the connector stops with the reason.
    edge.authority.remove(edge.tunnel());
    registry.disconnect_tunnel(edge.tunnel());
    let err = connector.task.await.unwrap().unwrap_err();
    assert!(matches!(err, ConnectorError::Unauthorized { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_tunnel_is_closed_and_its_connector_stops_instead_of_reconnecting() {
    let (edge, connector) = edge_with_connector().await;
    let registry = edge.registry();
    // The authority still knows the credentials (a node that has not refreshed them yet):
    // the edge's own record of the deletion refuses the reconnect anyway.
    assert_eq!(
        registry.remove_tunnel(edge.tunnel(), "tunnel office was deleted"),
        1
    );
    let err = tokio::time::timeout(std::time::Duration::from_secs(30), connector.task)
        .await
        .expect("the connector stops")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("unknown tunnel"), "{err}");
    assert!(registry.connections(edge.tunnel()).is_empty());
    assert_eq!(registry.metrics().registrations.get("unauthorized"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_limit_is_reported_as_rate_limited() {
    let edge = TestEdge::start().await;
    let mut config = edge.config(edge.credentials.clone());
    config.max_active_flows = 1;
    let connector = RunningConnector::start(config).registered(1).await;
    let registry = edge.registry();
    registry.wait_for_connection(edge.tunnel()).await;

    let echo = tcp_echo().await;
    let held = registry
        .open_tcp(edge.tunnel(), echo, &FlowContext::default())
        .await
        .unwrap();
    let tcp_err = registry
        .open_tcp(edge.tunnel(), echo, &FlowContext::default())
        .await
        .err()
        .unwrap();
    assert_eq!(tcp_err.code, ErrorCode::RateLimited);
    let udp_err = registry
        .open_udp(edge.tunnel(), udp_echo().await, &FlowContext::default())
        .await
        .err()
        .unwrap();
    assert_eq!(udp_err.code, ErrorCode::RateLimited);
    drop(held);
    connector.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Bad input while another tunnel is being served

/// One registration attempt on a fresh connection: `Err` when the edge refused the connection
/// before its handshake, else the edge's answer (connection id or refusal cause).
async fn register_attempt(
    edge: &TestEdge,
    credentials: &Credentials,
) -> Result<Result<Uuid, String>, String> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(
        connector_client_config(edge.identity.ca_pem().as_bytes()).unwrap(),
    );
    let quic = endpoint
        .connect(edge.edge.local_addr(), QUIC_SERVER_NAME)
        .unwrap()
        .await
        .map_err(|e| e.to_string())?;
    let (send, recv) = quic.open_bi().await.map_err(|e| e.to_string())?;
    let network = twoparty::VatNetwork::new(
        BufReader::new(recv.compat()),
        BufWriter::new(send.compat_write()),
        Side::Client,
        Default::default(),
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let server: registration_server::Client = rpc.bootstrap(Side::Server);
    tokio::task::spawn_local(rpc);
    let mut call = server.register_connection_request();
    {
        let mut p = call.get();
        let mut auth = p.reborrow().init_auth();
        auth.set_account_tag(credentials.account_tag.as_str());
        auth.set_tunnel_secret(&credentials.tunnel_secret);
        p.set_tunnel_id(credentials.tunnel_id.as_bytes());
        let mut client = p.init_options().init_client();
        client.set_client_id(Uuid::new_v4().as_bytes());
        client.set_version("flood");
        client.set_arch("linux_amd64");
    }
    let response = call.send().promise.await.map_err(|e| e.to_string())?;
    let result = response.get().unwrap().get_result().unwrap().get_result();
    Ok(match result.which().unwrap() {
        connection_response::result::ConnectionDetails(d) => {
            Ok(Uuid::from_slice(d.unwrap().get_uuid().unwrap()).unwrap())
        }
        connection_response::result::Error(e) => {
            Err(e.unwrap().get_cause().unwrap().to_string().unwrap())
        }
    })
}

/// A TCP flow through the healthy tunnel reaches the echo server and comes back.
async fn healthy_tunnel_serves(edge: &TestEdge, echo: SocketAddr) {
    let mut stream = edge
        .registry()
        .open_tcp(edge.tunnel(), echo, &FlowContext::default())
        .await
        .expect("the healthy tunnel must still serve");
    stream.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
}

#[tokio::test]
async fn bad_input_and_a_registration_flood_are_refused_while_another_tunnel_keeps_serving() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let edge = TestEdge::start_with(Arc::new(
                TunnelRegistry::default().with_admission_limits(AdmissionLimits {
                    source_burst: 20.0,
                    source_per_second: 0.1,
                    tunnel_burst: 4.0,
                    tunnel_per_second: 0.1,
                }),
            ))
            .await;
            let healthy = RunningConnector::start(edge.config(edge.credentials.clone()))
                .registered(1)
                .await;
            let echo = tcp_echo().await;
            healthy_tunnel_serves(&edge, echo).await;

            // Garbage where the control stream's capnp should be.
            let garbage = raw_connection(&edge).await;
            let (mut send, _recv) = garbage.open_bi().await.unwrap();
            send.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            send.finish().unwrap();
            assert_eq!(
                close_code(garbage.closed().await),
                Some(CloseCode::ProtocolViolation)
            );
            // A truncated capnp message.
            let truncated = raw_connection(&edge).await;
            let (mut send, _recv) = truncated.open_bi().await.unwrap();
            send.write_all(&[0, 0, 0, 0, 16, 0, 0, 0, 0, 0])
                .await
                .unwrap();
            send.finish().unwrap();
            assert_eq!(
                close_code(truncated.closed().await),
                Some(CloseCode::ProtocolViolation)
            );
            // A wrong secret and an unknown tunnel.
            let mut wrong = edge.credentials.clone();
            wrong.tunnel_secret = b"guess".to_vec();
            let answer = register_attempt(&edge, &wrong).await.unwrap();
            assert!(answer.unwrap_err().starts_with("Unauthorized"));
            let stranger = Credentials::mint("acct-1", Uuid::new_v4());
            let answer = register_attempt(&edge, &stranger).await.unwrap();
            assert!(answer.unwrap_err().contains("unknown tunnel"));
            healthy_tunnel_serves(&edge, echo).await;

            // A flood of registrations guessing another tunnel's secret: after a few attempts
            // the tunnel's registrations are refused unchecked, then the source's connections.
            let victim = Credentials::mint("acct-1", Uuid::new_v4());
            edge.authority.insert(victim.clone());
            let mut guess = victim.clone();
            guess.tunnel_secret = b"guess".to_vec();
            let (mut unauthorized, mut rate_limited, mut refused) = (0, 0, 0);
            for _ in 0..30 {
                match register_attempt(&edge, &guess).await {
                    Ok(Err(cause)) if cause.starts_with("Unauthorized") => unauthorized += 1,
                    Ok(Err(cause)) if cause.starts_with("rate limited") => rate_limited += 1,
                    Ok(other) => panic!("unexpected answer to a guessed secret: {other:?}"),
                    Err(_) => refused += 1,
                }
            }
            assert!(unauthorized <= 4, "{unauthorized} guesses were checked");
            assert!(
                rate_limited > 0 && refused > 0,
                "{rate_limited} rate limited, {refused} refused"
            );
            assert!(logged(
                "too many attempts for this tunnel (registration flood limit)"
            ));
            assert!(logged(
                "too many new connections from this address (registration flood limit)"
            ));
            let counted = edge.registry().metrics();
            assert_eq!(counted.registrations.get("rate_limited"), rate_limited);
            assert_eq!(counted.connections_refused.get(), refused);

            // The healthy tunnel was never disturbed.
            healthy_tunnel_serves(&edge, echo).await;
            assert_eq!(edge.registry().connections(edge.tunnel()).len(), 1);
            healthy.stop().await.unwrap();
        })
        .await;
}
