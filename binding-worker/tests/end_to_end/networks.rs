//! `vpc_networks` bindings (the URL's host and port are the destination) and `connect()`
//! sockets, through iris with networks in its in-memory store and the mock tunnel, to real
//! loopback servers.

use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;
use wvpc_binding_worker::{BindingWorker, BindingWorkerConfig, BindingWorkerHandle};
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_iris::ServiceRoute;
use wvpc_iris::mock::{MemoryStore, MockTunnel};
use wvpc_iris::routes::{NetworkRoute, NetworkRouteTable};
use wvpc_iris::{NetworkReach, NetworkTarget, RouteTarget, RouteTls, Router, RouterConfig};
use wvpc_schemas::binding_capnp::{byte_stream, socket_receiver};
use wvpc_schemas::{StreamWriter, read_wire_error};

use super::{Binding, OriginLog, TestRuntime, start_origin, start_origin_on};

const ACCOUNT: &str = "acct-1";
const TUNNEL: Uuid = Uuid::from_u128(0x7a);
const VNET: Uuid = Uuid::from_u128(0x7b);
const TCP_SERVICE: Uuid = Uuid::from_u128(0xc1);
const HTTP_SERVICE: Uuid = Uuid::from_u128(0xc2);
/// How long a test waits for something that must happen (a hang guard, not a timing).
const PATIENCE: Duration = Duration::from_secs(30);

/// A DNS answerer that knows `name` → 127.0.0.1 (A only) and nothing else.
fn dns_answering(name: &'static str) -> MockTunnel {
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
                    RData::A(A(Ipv4Addr::LOCALHOST)),
                ));
            }
        } else {
            resp.metadata.response_code = ResponseCode::NXDomain;
        }
        resp.to_vec().ok()
    }))
}

/// An echo server: every byte back, FIN after the client's FIN.
async fn echo_server() -> u16 {
    echo_server_on(Ipv4Addr::LOCALHOST.into()).await
}

async fn echo_server_on(ip: std::net::IpAddr) -> u16 {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

/// A server that greets, half-closes at once, then reads until the client's FIN and reports
/// what it read.
async fn greeting_server() -> (u16, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                s.write_all(b"greetings").await.unwrap();
                s.shutdown().await.unwrap();
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                let _ = tx.send(got);
            });
        }
    });
    (port, rx)
}

/// A server that reads a little, sends part of an answer and resets the connection.
async fn resetting_server() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
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
    port
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct NetStack {
    worker: BindingWorkerHandle,
    pool: MockTunnel,
}

/// iris knows, in `acct-1`: tunnel TUNNEL (by id) and virtual network VNET
/// (`127.0.0.0/8` → TUNNEL); a tcp service on `tcp_port` and an http service without one.
async fn start_net_stack(tcp_port: u16) -> NetStack {
    start_net_stack_with(tcp_port, |_| {}).await
}

async fn start_net_stack_with(
    tcp_port: u16,
    tune: impl FnOnce(&mut BindingWorkerConfig),
) -> NetStack {
    let pool = dns_answering("db.internal");
    let store = MemoryStore::default();
    store.put_network(
        ACCOUNT,
        NetworkTarget::Tunnel(TUNNEL),
        NetworkReach::Tunnel(TUNNEL),
    );
    let routes = NetworkRouteTable::new([NetworkRoute {
        vnet: VNET,
        network: "127.0.0.0/8".parse().unwrap(),
        tunnel: TUNNEL,
    }]);
    store.put_network(
        ACCOUNT,
        NetworkTarget::VirtualNetwork(VNET),
        NetworkReach::VirtualNetwork {
            vnet: VNET,
            routes: Arc::new(routes),
        },
    );
    for (id, http_port, tcp) in [
        (TCP_SERVICE, None, Some(tcp_port)),
        (HTTP_SERVICE, Some(tcp_port), None),
    ] {
        store.put(ServiceRoute {
            service_id: id,
            tunnel_id: TUNNEL,
            target: RouteTarget::Ips {
                ipv4: Some(Ipv4Addr::LOCALHOST),
                ipv6: None,
            },
            http_port,
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
    let iris = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let iris_addr = iris.local_addr().unwrap();
    tokio::spawn(async move { router.serve(iris).await });
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mut config = BindingWorkerConfig::new(iris_addr);
    tune(&mut config);
    let worker = BindingWorker::start(listener, config).unwrap();
    NetStack { worker, pool }
}

async fn with_rt<F, Fut>(stack: &NetStack, test: F)
where
    F: FnOnce(TestRuntime) -> Fut,
    Fut: Future<Output = ()>,
{
    let local = tokio::task::LocalSet::new();
    let addr = stack.worker.local_addr();
    local
        .run_until(async move { test(TestRuntime::connect(addr).await).await })
        .await;
}

fn requests(log: &OriginLog) -> Vec<(String, String)> {
    log.requests
        .lock()
        .unwrap()
        .iter()
        .map(|(host, path, _)| (host.clone(), path.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A runtime's side of a socket.

/// What the destination sent, as the runtime's `fromDestination` received it.
#[derive(Default)]
struct SocketInbox {
    bytes: RefCell<Vec<u8>>,
    /// `Some(Ok)` at `end()`, `Some(Err)` at `abort()`.
    ended: RefCell<Option<Result<(), ProxyError>>>,
    changed: Notify,
}

impl byte_stream::Server for SocketInbox {
    async fn write(
        self: capnp::capability::Rc<Self>,
        params: byte_stream::WriteParams,
        _: byte_stream::WriteResults,
    ) -> Result<(), capnp::Error> {
        self.bytes
            .borrow_mut()
            .extend_from_slice(params.get()?.get_bytes()?);
        self.changed.notify_waiters();
        Ok(())
    }

    async fn end(
        self: capnp::capability::Rc<Self>,
        _: byte_stream::EndParams,
        _: byte_stream::EndResults,
    ) -> Result<(), capnp::Error> {
        *self.ended.borrow_mut() = Some(Ok(()));
        self.changed.notify_waiters();
        Ok(())
    }

    async fn abort(
        self: capnp::capability::Rc<Self>,
        params: byte_stream::AbortParams,
        _: byte_stream::AbortResults,
    ) -> Result<(), capnp::Error> {
        *self.ended.borrow_mut() = Some(Err(read_wire_error(params.get()?.get_error()?)));
        self.changed.notify_waiters();
        Ok(())
    }
}

impl SocketInbox {
    /// Waits until `done` holds (bounded by [`PATIENCE`] as a hang guard).
    async fn until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let changed = self.changed.notified();
                if done(self) {
                    return;
                }
                changed.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the socket never got to: {what}"));
    }

    async fn ended(&self) -> Result<(), ProxyError> {
        self.until("its end", |s| s.ended.borrow().is_some()).await;
        self.ended.borrow().clone().unwrap()
    }
}

struct OpenedReceiver {
    result: RefCell<Option<oneshot::Sender<Result<(), ProxyError>>>>,
    inbox: Rc<SocketInbox>,
    calls: Rc<Cell<u32>>,
}

impl socket_receiver::Server for OpenedReceiver {
    async fn opened(
        self: capnp::capability::Rc<Self>,
        params: socket_receiver::OpenedParams,
        mut results: socket_receiver::OpenedResults,
    ) -> Result<(), capnp::Error> {
        use wvpc_schemas::binding_capnp::connect_result::Which;
        self.calls.set(self.calls.get() + 1);
        let result = match params.get()?.get_result()?.which()? {
            Which::Opened(()) => {
                results
                    .get()
                    .set_from_destination(capnp_rpc::new_client_from_rc(Rc::clone(&self.inbox)));
                Ok(())
            }
            Which::Error(e) => Err(read_wire_error(e?)),
            Which::Unspecified(()) => panic!("connect result left unspecified"),
        };
        if let Some(tx) = self.result.borrow_mut().take() {
            let _ = tx.send(result);
        }
        Ok(())
    }
}

struct Socket {
    to: StreamWriter,
    from: Rc<SocketInbox>,
    /// `opened`'s result.
    opened: oneshot::Receiver<Result<(), ProxyError>>,
    opened_calls: Rc<Cell<u32>>,
}

impl TestRuntime {
    fn connect_socket(&self, binding: &Binding, address: &str) -> Socket {
        let (tx, opened) = oneshot::channel();
        let inbox = Rc::new(SocketInbox::default());
        let calls = Rc::new(Cell::new(0));
        let receiver = OpenedReceiver {
            result: RefCell::new(Some(tx)),
            inbox: Rc::clone(&inbox),
            calls: Rc::clone(&calls),
        };
        let mut call = self.binding.connect_request();
        {
            let mut p = call.get();
            let mut ctx = p.reborrow().init_context();
            binding.set(&mut ctx);
            ctx.set_script("test-script");
            ctx.set_account(ACCOUNT);
            ctx.set_request_id("req-socket");
            ctx.set_binding("NET");
            p.set_address(address);
            p.set_receiver(capnp_rpc::new_client(receiver));
        }
        let sent = call.send();
        let to = StreamWriter::new(sent.pipeline.get_to_destination());
        tokio::task::spawn_local(async move {
            let _ = sent.promise.await;
        });
        Socket {
            to,
            from: inbox,
            opened,
            opened_calls: calls,
        }
    }
}

impl Socket {
    async fn opened(&mut self) -> Result<(), ProxyError> {
        tokio::time::timeout(PATIENCE, &mut self.opened)
            .await
            .expect("opened is called")
            .expect("opened is called once")
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_fetch_goes_to_the_urls_host_and_port_by_ip_or_hostname() {
    let (origin_addr, origin) = start_origin(None).await;
    let (other_addr, other) = start_origin(None).await;
    let stack = start_net_stack(closed_port()).await;
    let port = origin_addr.port();
    with_rt(&stack, |rt| async move {
        let by_tunnel = Binding::Tunnel(TUNNEL);
        let res = rt
            .fetch_via(
                &by_tunnel,
                "GET",
                &format!("http://127.0.0.1:{port}/by-ip"),
                &[],
                b"",
            )
            .await
            .unwrap();
        assert_eq!(
            (res.status, &res.body[..]),
            (200, &b"hello from the origin"[..])
        );
        // A hostname, resolved through the tunnel, in a virtual network.
        let by_vnet = Binding::Network(format!("cf1:vnet:{VNET}"));
        let res = rt
            .fetch_via(
                &by_vnet,
                "GET",
                &format!("http://db.internal:{port}/by-name"),
                &[],
                b"",
            )
            .await
            .unwrap();
        assert_eq!(res.status, 200);
        // Another port of the same host is another destination: never a pooled connection
        // of the first one.
        let res = rt
            .fetch_via(
                &by_tunnel,
                "GET",
                &format!("http://127.0.0.1:{}/other", other_addr.port()),
                &[],
                b"",
            )
            .await
            .unwrap();
        assert_eq!(res.status, 200);
        let res = rt
            .fetch_via(
                &by_tunnel,
                "GET",
                &format!("http://127.0.0.1:{port}/again"),
                &[],
                b"",
            )
            .await
            .unwrap();
        assert_eq!(res.status, 200);

        let err = rt
            .fetch_via(&by_vnet, "GET", "http://10.1.2.3:8080/", &[], b"")
            .await
            .err()
            .expect("no route covers 10.1.2.3");
        assert_eq!(err.code, ErrorCode::DestinationIpUnroutable);
        let err = rt
            .fetch_via(
                &Binding::Network("cf1:vnet:not-a-uuid".into()),
                "GET",
                "http://10.1.2.3/",
                &[],
                b"",
            )
            .await
            .err()
            .expect("a bad network id is refused");
        assert_eq!(err.code, ErrorCode::ProxyConfigurationError);
    })
    .await;
    assert_eq!(
        requests(&origin),
        vec![
            (format!("127.0.0.1:{port}"), "/by-ip".to_owned()),
            (format!("db.internal:{port}"), "/by-name".to_owned()),
            (format!("127.0.0.1:{port}"), "/again".to_owned()),
        ],
        "Host carries the URL's host and (non-default) port"
    );
    assert_eq!(requests(&other).len(), 1);
    assert!(
        stack
            .pool
            .dialed()
            .iter()
            .all(|d| d.ip() == Ipv4Addr::LOCALHOST),
        "{:?}",
        stack.pool.dialed()
    );
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_pipes_bytes_both_ways_and_the_scripts_end_is_a_half_close() {
    let echo = echo_server().await;
    let stack = start_net_stack(echo).await;
    with_rt(&stack, |rt| async move {
        for (binding, address) in [
            (Binding::Service(TCP_SERVICE), String::new()),
            (Binding::Tunnel(TUNNEL), format!("127.0.0.1:{echo}")),
            (
                Binding::Network(format!("cf1:vnet:{VNET}")),
                format!("db.internal:{echo}"),
            ),
        ] {
            let mut socket = rt.connect_socket(&binding, &address);
            // Written before the connection is open: waits in the window.
            socket.to.write(b"ping ").await.unwrap();
            socket.opened().await.unwrap();
            socket
                .from
                .until("the first echo", |s| s.bytes.borrow().len() == 5)
                .await;
            let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            socket.to.write(&big).await.unwrap();
            // FIN towards the echo server: it answers everything, then FINs back.
            socket.to.end().await.unwrap();
            assert_eq!(socket.from.ended().await, Ok(()));
            let got = socket.from.bytes.borrow().clone();
            assert_eq!(got.len(), 5 + big.len());
            assert!(
                got[..5] == *b"ping " && got[5..] == big[..],
                "bytes changed on the way"
            );
            assert_eq!(socket.opened_calls.get(), 1);
        }
    })
    .await;
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destinations_fin_leaves_the_scripts_direction_open() {
    let (port, mut read_by_server) = greeting_server().await;
    let stack = start_net_stack(port).await;
    let worker = &stack.worker;
    with_rt(&stack, |rt| async move {
        let mut socket = rt.connect_socket(&Binding::Tunnel(TUNNEL), &format!("127.0.0.1:{port}"));
        socket.opened().await.unwrap();
        assert_eq!(socket.from.ended().await, Ok(()));
        assert_eq!(&socket.from.bytes.borrow()[..], b"greetings");
        assert_eq!(
            worker.fetches_in_flight(),
            1,
            "an open socket is in flight (a drain waits for it)"
        );
        socket.to.write(b"after your FIN").await.unwrap();
        socket.to.end().await.unwrap();
        let got = tokio::time::timeout(PATIENCE, read_by_server.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"after your FIN");
        // Both directions ended: the socket is over and no longer in flight.
        tokio::time::timeout(PATIENCE, async {
            while worker.fetches_in_flight() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("a socket ended both ways is closed");
    })
    .await;
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_reset_reaches_the_script_as_an_abort_with_a_code() {
    let port = resetting_server().await;
    let stack = start_net_stack(port).await;
    with_rt(&stack, |rt| async move {
        let mut socket = rt.connect_socket(&Binding::Tunnel(TUNNEL), &format!("127.0.0.1:{port}"));
        socket.opened().await.unwrap();
        socket.to.write(b"query").await.unwrap();
        let err = socket.from.ended().await.unwrap_err();
        assert_eq!(err.code, ErrorCode::ConnectionTerminated);
        assert!(err.details.is_some());
    })
    .await;
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_as_opened_errors_with_their_codes() {
    let echo = echo_server().await;
    let stack = start_net_stack(echo).await;
    with_rt(&stack, |rt| async move {
        let cases = [
            (
                Binding::Tunnel(TUNNEL),
                format!("127.0.0.1:{}", closed_port()),
                ErrorCode::ConnectionRefused,
                "",
            ),
            (
                Binding::Service(HTTP_SERVICE),
                String::new(),
                ErrorCode::HttpRequestDenied,
                "tcp_port",
            ),
            (
                Binding::Network(format!("cf1:vnet:{VNET}")),
                "10.0.0.1:5432".to_owned(),
                ErrorCode::DestinationIpUnroutable,
                "10.0.0.1",
            ),
            (
                Binding::Tunnel(Uuid::from_u128(0xbad)),
                format!("127.0.0.1:{echo}"),
                ErrorCode::DestinationNotFound,
                ACCOUNT,
            ),
            (
                Binding::Tunnel(TUNNEL),
                "no-port".to_owned(),
                ErrorCode::DestinationNotFound,
                "host:port",
            ),
            (
                Binding::Service(TCP_SERVICE),
                format!("127.0.0.1:{echo}"),
                ErrorCode::HttpRequestError,
                "address must be empty",
            ),
        ];
        for (binding, address, code, says) in cases {
            let mut socket = rt.connect_socket(&binding, &address);
            let err = socket.opened().await.unwrap_err();
            assert_eq!(err.code, code, "{address}: {err:?}");
            let details = err.details.unwrap_or_default();
            assert!(details.contains(says), "{details}");
        }
    })
    .await;
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_from_the_script_closes_the_destinations_connection() {
    let (port, mut read_by_server) = greeting_server().await;
    let stack = start_net_stack(port).await;
    with_rt(&stack, |rt| async move {
        let mut socket = rt.connect_socket(&Binding::Tunnel(TUNNEL), &format!("127.0.0.1:{port}"));
        socket.opened().await.unwrap();
        socket.to.write(b"some").await.unwrap();
        socket.to.flush().await.unwrap();
        socket
            .to
            .abort(&ProxyError::new(ErrorCode::ConnectionTerminated))
            .await
            .unwrap();
        // The server's read ends (its connection is closed) and the socket is over.
        let got = tokio::time::timeout(PATIENCE, read_by_server.recv())
            .await
            .expect("the destination's connection is closed")
            .unwrap();
        assert_eq!(got, b"some");
    })
    .await;
    tokio::time::timeout(PATIENCE, async {
        while stack.worker.fetches_in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the socket is no longer in flight");
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_destinations_go_in_brackets_and_reach_the_origin() {
    let v6 = std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
    let echo = echo_server_on(v6).await;
    let (origin_addr, origin) = start_origin_on(v6, None).await;
    let stack = start_net_stack(closed_port()).await;
    let port = origin_addr.port();
    with_rt(&stack, |rt| async move {
        let res = rt
            .fetch_via(
                &Binding::Tunnel(TUNNEL),
                "GET",
                &format!("http://[::1]:{port}/v6"),
                &[],
                b"",
            )
            .await
            .unwrap();
        assert_eq!(res.status, 200);
        let mut socket = rt.connect_socket(&Binding::Tunnel(TUNNEL), &format!("[::1]:{echo}"));
        socket.opened().await.unwrap();
        socket.to.write(b"six").await.unwrap();
        socket.to.end().await.unwrap();
        assert_eq!(socket.from.ended().await, Ok(()));
        assert_eq!(&socket.from.bytes.borrow()[..], b"six");
    })
    .await;
    assert_eq!(
        requests(&origin),
        vec![(format!("[::1]:{port}"), "/v6".to_owned())]
    );
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_on_which_nothing_moves_is_reset_with_connection_read_timeout() {
    let echo = echo_server().await;
    let stack = start_net_stack_with(echo, |config| {
        config.read_timeout = Duration::from_millis(300);
    })
    .await;
    let worker = &stack.worker;
    with_rt(&stack, |rt| async move {
        let mut socket = rt.connect_socket(&Binding::Service(TCP_SERVICE), "");
        socket.opened().await.unwrap();
        socket.to.write(b"one exchange").await.unwrap();
        socket
            .from
            .until("the echo", |s| s.bytes.borrow().len() == 12)
            .await;
        // Then silence both ways.
        let err = socket.from.ended().await.unwrap_err();
        assert_eq!(err.code, ErrorCode::ConnectionReadTimeout);
        assert!(err.details.unwrap().contains("either way"));
        tokio::time::timeout(PATIENCE, async {
            while worker.fetches_in_flight() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the timed-out socket is no longer in flight");
    })
    .await;
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_waits_for_an_open_socket_to_finish() {
    let echo = echo_server().await;
    let NetStack { worker, .. } = start_net_stack(echo).await;
    let addr = worker.local_addr();
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let rt = TestRuntime::connect(addr).await;
            let mut socket = rt.connect_socket(&Binding::Service(TCP_SERVICE), "");
            socket.opened().await.unwrap();
            let drained = tokio::spawn(worker.drain(PATIENCE));
            // The socket keeps working while the worker drains.
            socket.to.write(b"during the drain").await.unwrap();
            socket
                .from
                .until("the echo", |s| s.bytes.borrow().len() == 16)
                .await;
            assert!(!drained.is_finished(), "the drain waits for the socket");
            socket.to.end().await.unwrap();
            assert_eq!(socket.from.ended().await, Ok(()));
            let finished = tokio::time::timeout(PATIENCE, drained)
                .await
                .unwrap()
                .unwrap();
            assert!(
                finished,
                "every fetch and socket finished within the grace period"
            );
        })
        .await;
}
