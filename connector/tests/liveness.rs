//! A dead connector noticed in about a second, and a connector's graceful shutdown, over real
//! QUIC on loopback: iris's edge, our connectors, real TCP origins.
//!
//! A connector "killed" is one behind [`SilentRelay`] (a fault, named so): a UDP relay that
//! stops forwarding, so the connector goes silent without a close frame, as with `kill -9`
//! or a partition.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;
use wvpc_connector::{Connector, ConnectorConfig, ConnectorError};
use wvpc_errors::ErrorCode;
use wvpc_iris::edge::{CredentialsAuthority, Edge, TunnelRegistry};
use wvpc_iris::{BoxIo, FlowContext, TunnelPool};
use wvpc_tunnel::{Credentials, EdgeIdentity};

/// Bounds every wait: only a hang trips it (no timing is asserted).
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

struct TestEdge {
    edge: Arc<Edge>,
    identity: EdgeIdentity,
    credentials: Credentials,
}

impl TestEdge {
    async fn start() -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let identity = EdgeIdentity::generate().unwrap();
        let authority = Arc::new(CredentialsAuthority::new());
        let credentials = Credentials::mint("acct-1", Uuid::new_v4());
        authority.insert(credentials.clone());
        let edge = Arc::new(
            Edge::bind(
                "127.0.0.1:0".parse().unwrap(),
                &identity,
                authority,
                "test-node".into(),
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
            credentials,
        }
    }

    fn registry(&self) -> Arc<TunnelRegistry> {
        self.edge.registry()
    }

    fn tunnel(&self) -> Uuid {
        self.credentials.tunnel_id
    }

    /// A connector configuration dialing `via` (the edge, or a relay in front of it).
    fn config(&self, via: SocketAddr) -> ConnectorConfig {
        ConnectorConfig::new(
            self.credentials.clone(),
            vec![via],
            self.identity.ca_pem().as_bytes().to_vec(),
        )
    }

    async fn open(&self, dest: SocketAddr) -> Result<BoxIo, wvpc_errors::ProxyError> {
        self.registry()
            .open_tcp(self.tunnel(), dest, &FlowContext::default())
            .await
    }
}

struct RunningConnector {
    client_id: Uuid,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ConnectorError>>,
}

impl RunningConnector {
    async fn start(config: ConnectorConfig) -> Self {
        let want = config.ha_connections;
        let connector = Connector::new(config).unwrap();
        let mut readiness = connector.readiness();
        let client_id = connector.client_id();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            connector
                .serve(async move {
                    let _ = stopped.await;
                })
                .await
        });
        assert!(
            within("the connector registers", readiness.wait_registered(want)).await,
            "the connector stopped before registering"
        );
        Self {
            client_id,
            stop: Some(stop),
            task,
        }
    }

    /// What SIGTERM does: the returned task resolves when the connector has stopped.
    fn shutdown(mut self) -> JoinHandle<Result<(), ConnectorError>> {
        let _ = self.stop.take().unwrap().send(());
        tokio::spawn(async move { (&mut self.task).await.unwrap() })
    }
}

impl Drop for RunningConnector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Fault: a UDP relay in front of the edge that, once [`SilentRelay::cut`], drops every
/// datagram both ways, so the connector behind it goes silent without a close frame.
struct SilentRelay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl SilentRelay {
    async fn start(edge: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let cut = cut.clone();
            async move {
                let mut upstream: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, peer)) = front.recv_from(&mut buf).await {
                    if cut.load(Ordering::SeqCst) {
                        continue;
                    }
                    let socket = match upstream.get(&peer) {
                        Some(socket) => socket.clone(),
                        None => {
                            let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                            socket.connect(edge).await.unwrap();
                            upstream.insert(peer, socket.clone());
                            let (back, front, cut) = (socket.clone(), front.clone(), cut.clone());
                            tokio::spawn(async move {
                                let mut buf = vec![0u8; 65_536];
                                while let Ok(n) = back.recv(&mut buf).await {
                                    if !cut.load(Ordering::SeqCst) {
                                        let _ = front.send_to(&buf[..n], peer).await;
                                    }
                                }
                            });
                            socket
                        }
                    };
                    let _ = socket.send(&buf[..n]).await;
                }
            }
        });
        Self { addr, cut, task }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

impl Drop for SilentRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An origin speaking lines over kept-open connections (like keep-alive): `wait <ms>` is
/// answered `done` after that long, `hold` is answered `done` once [`LineOrigin::release`] is
/// called, anything else is echoed at once.
struct LineOrigin {
    addr: SocketAddr,
    held: Arc<tokio::sync::Notify>,
    release: tokio::sync::watch::Sender<bool>,
}

impl LineOrigin {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(tokio::sync::Notify::new());
        let (release, released) = tokio::sync::watch::channel(false);
        tokio::spawn({
            let held = held.clone();
            async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let (held, mut released) = (held.clone(), released.clone());
                    tokio::spawn(async move {
                        let (read, mut write) = socket.into_split();
                        let mut lines = BufReader::new(read).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            let answer = if line == "hold" {
                                held.notify_one();
                                let _ = released.wait_for(|r| *r).await;
                                "done".to_owned()
                            } else if let Some(ms) = line.strip_prefix("wait ") {
                                let ms = ms.parse().unwrap_or(0);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                "done".to_owned()
                            } else {
                                line
                            };
                            let answer = format!("{answer}\n");
                            if write.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self {
            addr,
            held,
            release,
        }
    }

    /// Resolves once a `hold` request has reached the origin.
    async fn holding(&self) {
        self.held.notified().await;
    }

    /// Answers every held request.
    fn release(&self) {
        self.release.send_replace(true);
    }
}

/// Sends one line and reads the answer line.
async fn exchange(io: &mut BoxIo, line: &str) -> std::io::Result<String> {
    io.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if io.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8(answer).unwrap());
        }
        answer.push(byte[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connector_is_dropped_in_about_a_second_and_new_flows_go_to_the_live_one() {
    let edge = TestEdge::start().await;
    let registry = edge.registry();
    let relay = SilentRelay::start(edge.edge.local_addr()).await;
    let _doomed = RunningConnector::start(edge.config(relay.addr)).await;
    let origin = LineOrigin::start().await;
    // A flow on the doomed connector (the only one so far).
    let mut waiting = edge.open(origin.addr).await.unwrap();
    assert_eq!(
        within("a first exchange", exchange(&mut waiting, "hi"))
            .await
            .unwrap(),
        "hi"
    );
    let survivor = RunningConnector::start(edge.config(edge.edge.local_addr())).await;
    within(
        "both replicas registered",
        registry.wait_for_connections(edge.tunnel(), 2),
    )
    .await;

    // A request waits for a slow answer on the doomed connector, which then goes silent.
    waiting.write_all(b"hold\n").await.unwrap();
    within("the request reached the origin", origin.holding()).await;
    let cut = Instant::now();
    relay.cut();
    let mut rest = Vec::new();
    let ended = within("the waiting flow fails", waiting.read_to_end(&mut rest)).await;
    let detected = cut.elapsed();
    assert!(
        ended.is_err(),
        "the flow ends with an error, not an answer: {rest:?}"
    );
    eprintln!(
        "dead connector detected {detected:.2?} after it went silent \
         (QUIC idle timeout alone: 5 s)"
    );
    assert_eq!(registry.metrics().connections_unresponsive.get(), 1);
    let left = registry.connections(edge.tunnel());
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0].client_id, survivor.client_id);
    let mut fresh = within("a new flow", edge.open(origin.addr)).await.unwrap();
    assert_eq!(
        within("exchange", exchange(&mut fresh, "again"))
            .await
            .unwrap(),
        "again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_origin_on_a_live_connection_is_not_mistaken_for_a_dead_connector() {
    let edge = TestEdge::start().await;
    let _connector = RunningConnector::start(edge.config(edge.edge.local_addr())).await;
    within(
        "registered",
        edge.registry().wait_for_connection(edge.tunnel()),
    )
    .await;
    let origin = LineOrigin::start().await;
    let mut io = edge.open(origin.addr).await.unwrap();
    // Six seconds without a byte on the flow: six times the silence limit, and longer than
    // QUIC's idle timeout; keep-alives keep the connection alive.
    let answer = within("the slow answer", exchange(&mut io, "wait 6000")).await;
    assert_eq!(answer.unwrap(), "done");
    assert_eq!(edge.registry().metrics().connections_unresponsive.get(), 0);
    assert_eq!(edge.registry().connections(edge.tunnel()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opening_on_a_dead_connector_are_retried_and_a_full_outage_fails_fast() {
    let edge = TestEdge::start().await;
    let relay_a = SilentRelay::start(edge.edge.local_addr()).await;
    let relay_b = SilentRelay::start(edge.edge.local_addr()).await;
    let _a = RunningConnector::start(edge.config(relay_a.addr)).await;
    let _b = RunningConnector::start(edge.config(relay_b.addr)).await;
    let registry = edge.registry();
    within(
        "both registered",
        registry.wait_for_connections(edge.tunnel(), 2),
    )
    .await;
    let origin = LineOrigin::start().await.addr;

    // A dies while idle: the next flows that pick it are retried on B.
    relay_a.cut();
    for i in 0..4 {
        let mut io = within("a flow while A is dead", edge.open(origin))
            .await
            .unwrap_or_else(|err| panic!("flow {i} failed: {err}"));
        let line = format!("flow {i}");
        assert_eq!(
            within("exchange", exchange(&mut io, &line)).await.unwrap(),
            line
        );
    }
    assert!(
        registry.metrics().stream_retries.get() >= 1,
        "a flow picked A first"
    );
    assert_eq!(registry.connections(edge.tunnel()).len(), 1);

    // B dies too: a flow fails with the no-connection code instead of hanging.
    relay_b.cut();
    let cut = Instant::now();
    let err = within("a flow during the outage", edge.open(origin))
        .await
        .err()
        .expect("no connector is alive");
    eprintln!(
        "full outage: the first flow failed {:.2?} after the cut",
        cut.elapsed()
    );
    assert_eq!(err.code, ErrorCode::DestinationUnavailable, "{err}");
    let err = within("the next flow", edge.open(origin))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code, ErrorCode::DestinationUnavailable, "{err}");
    assert!(err.to_string().contains("no connector"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_closes_idle_flows_at_once_and_returns_within_a_huge_grace_period() {
    let edge = TestEdge::start().await;
    let mut config = edge.config(edge.edge.local_addr());
    config.grace_period = Duration::from_secs(3600);
    config.ha_connections = 2;
    let connector = RunningConnector::start(config).await;
    let origin = LineOrigin::start().await;
    // Pooled keep-alive connections: each answered, then left open.
    let mut pooled = Vec::new();
    for i in 0..3 {
        let mut io = edge.open(origin.addr).await.unwrap();
        let line = format!("request {i}");
        assert_eq!(
            within("exchange", exchange(&mut io, &line)).await.unwrap(),
            line
        );
        pooled.push(io);
    }

    // Returns long before the hour of grace: nothing was in flight.
    within("the connector stops", connector.shutdown())
        .await
        .unwrap()
        .unwrap();
    for mut io in pooled {
        let mut rest = Vec::new();
        let _ = within("the pooled flow is closed", io.read_to_end(&mut rest)).await;
        assert!(rest.is_empty());
    }
    assert!(edge.registry().connections(edge.tunnel()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_waits_for_a_request_in_flight_then_returns() {
    let edge = TestEdge::start().await;
    let registry = edge.registry();
    let mut config = edge.config(edge.edge.local_addr());
    config.grace_period = Duration::from_secs(3600);
    let connector = RunningConnector::start(config).await;
    let client_id = connector.client_id;
    let origin = LineOrigin::start().await;
    let mut idle = edge.open(origin.addr).await.unwrap();
    assert_eq!(
        within("exchange", exchange(&mut idle, "x")).await.unwrap(),
        "x"
    );
    let mut in_flight = edge.open(origin.addr).await.unwrap();
    in_flight.write_all(b"hold\n").await.unwrap();
    within("the request reached the origin", origin.holding()).await;

    let stopped = connector.shutdown();
    within(
        "the connector unregisters",
        registry.wait_for(edge.tunnel(), |conns| {
            conns.iter().all(|c| c.client_id == client_id && c.draining)
        }),
    )
    .await;
    let mut rest = Vec::new();
    let _ = within("the idle flow is closed", idle.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    assert!(
        !stopped.is_finished(),
        "the connector must wait for the request in flight"
    );

    origin.release();
    let mut answer = [0u8; 5];
    within("the answer", in_flight.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(&answer, b"done\n", "the request in flight completed");
    within("the connector stops", stopped)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_drain_closes_idle_flows_at_once_and_waits_for_a_request_in_flight() {
    let edge = TestEdge::start().await;
    let _connector = RunningConnector::start(edge.config(edge.edge.local_addr())).await;
    let origin = LineOrigin::start().await;
    let mut idle = edge.open(origin.addr).await.unwrap();
    assert_eq!(
        within("exchange", exchange(&mut idle, "x")).await.unwrap(),
        "x"
    );
    let mut in_flight = edge.open(origin.addr).await.unwrap();
    in_flight.write_all(b"hold\n").await.unwrap();
    within("the request reached the origin", origin.holding()).await;

    let drain = tokio::spawn({
        let edge = edge.edge.clone();
        async move { edge.drain(Duration::from_secs(3600)).await }
    });
    let mut rest = Vec::new();
    let _ = within("the idle flow is closed", idle.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    drop(idle);
    assert!(
        !drain.is_finished(),
        "the drain waits for the request in flight"
    );

    origin.release();
    let mut answer = [0u8; 5];
    within("the answer", in_flight.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(&answer, b"done\n");
    // Answered, it turns idle, and the drain closes it too (as iris's pipe reads on).
    let _ = within(
        "the answered flow is closed",
        in_flight.read_to_end(&mut rest),
    )
    .await;
    drop(in_flight);
    assert!(
        within("the drain ends", drain).await.unwrap(),
        "every stream finished within the grace period"
    );
}
