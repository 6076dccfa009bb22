//! runtime (a capnp test client) → binding-worker → iris → mock tunnel pool (dials loopback)
//! → a local hyper origin that records what it received.
//!
//! [`failover`]: several iris nodes; [`admission`]: the platform handshake and draining;
//! [`networks`]: `vpc_networks` bindings and `connect()` sockets.

mod admission;
mod failover;
mod networks;

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{RpcSystem, twoparty};
use futures::StreamExt as _;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, RootCertStore, pki_types::PrivateKeyDer};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
use uuid::Uuid;
use wvpc_binding_worker::{BindingWorker, BindingWorkerConfig, BindingWorkerHandle};
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_iris::mock::{MemoryStore, MockTunnel};
use wvpc_iris::{RouteTarget, RouteTls, Router, RouterConfig, ServiceRoute};
use wvpc_schemas::PlatformSecret;
use wvpc_schemas::binding_auth::{HANDSHAKE_TIMEOUT, HandshakeError, handshake_as_runtime};
use wvpc_schemas::binding_capnp::{byte_stream, response_receiver, vpc_binding};
use wvpc_schemas::{StreamWriter, read_wire_error};

// ---------------------------------------------------------------------------------------------
// The origin: records Host, path and connections; `/echo` streams the request body back.

#[derive(Default)]
struct OriginLog {
    connections: AtomicUsize,
    requests: Mutex<Vec<(String, String, http::HeaderMap)>>,
    /// SNI of each TLS connection.
    server_names: Mutex<Vec<String>>,
    /// Set when the body of `/endless` is dropped (its connection was closed).
    endless_dropped: Arc<std::sync::atomic::AtomicBool>,
    /// `/gated` sends the rest of its body once this is notified.
    gate: Arc<tokio::sync::Notify>,
}

/// Sets its flag when dropped.
struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn start_origin(tls: Option<TlsAcceptor>) -> (SocketAddr, Arc<OriginLog>) {
    start_origin_on(Ipv4Addr::LOCALHOST.into(), tls).await
}

async fn start_origin_on(
    ip: std::net::IpAddr,
    tls: Option<TlsAcceptor>,
) -> (SocketAddr, Arc<OriginLog>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(OriginLog::default());
    let accept_log = Arc::clone(&log);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            accept_log.connections.fetch_add(1, Ordering::SeqCst);
            let log = Arc::clone(&accept_log);
            let tls = tls.clone();
            tokio::spawn(async move {
                let service_log = Arc::clone(&log);
                let service = service_fn(move |req: Request<Incoming>| {
                    let log = Arc::clone(&service_log);
                    async move { Ok::<_, Infallible>(origin_handle(&log, req).await) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    }
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                        log.server_names.lock().unwrap().push(sni);
                        let _ = http.serve_connection(TokioIo::new(tls), service).await;
                    }
                }
            });
        }
    });
    (addr, log)
}

async fn origin_handle(
    log: &OriginLog,
    mut req: Request<Incoming>,
) -> Response<BoxBody<Bytes, hyper::Error>> {
    let host = req
        .headers()
        .get("host")
        .map(|h| h.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    log.requests
        .lock()
        .unwrap()
        .push((host, path.clone(), req.headers().clone()));
    if path == "/echo" {
        return Response::new(req.into_body().boxed());
    }
    if path == "/ws"
        && req
            .headers()
            .get("upgrade")
            .is_some_and(|v| v == "websocket")
    {
        // Switches protocols, then echoes every byte and says "bye" at the client's EOF.
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 4096];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = io.write_all(b"bye").await;
            let _ = io.shutdown().await;
        });
        return Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
            .unwrap();
    }
    if path == "/endless" {
        // 64 KiB pieces for as long as someone reads them.
        let flag = DropFlag(Arc::clone(&log.endless_dropped));
        let pieces = futures::stream::repeat_with(move || {
            let _alive = &flag;
            Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from(vec![b'x'; 64 << 10])))
        });
        return Response::new(BodyExt::boxed(http_body_util::StreamBody::new(pieces)));
    }
    if path == "/gated" {
        // `first-`, then `rest` once the test opens the gate.
        let gate = Arc::clone(&log.gate);
        let first = futures::stream::once(async {
            Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from_static(b"first-")))
        });
        let rest = futures::stream::once(async move {
            gate.notified().await;
            Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from_static(b"rest")))
        });
        return Response::new(BodyExt::boxed(http_body_util::StreamBody::new(
            first.chain(rest),
        )));
    }
    if path == "/stall-body" {
        // Some body, then nothing more, ever.
        let first = futures::stream::once(async {
            Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from_static(b"partial")))
        });
        let body = http_body_util::StreamBody::new(first.chain(futures::stream::pending()));
        return Response::new(BodyExt::boxed(body));
    }
    if path == "/count" {
        // Answers only after the whole body arrived.
        let text = match req.into_body().collect().await {
            Ok(body) => body.to_bytes().len().to_string(),
            Err(_) => "broken".to_owned(),
        };
        return Response::new(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed());
    }
    Response::builder()
        .header("x-origin", "yes")
        .body(
            Full::new(Bytes::from_static(b"hello from the origin"))
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap()
}

/// A private CA and an origin certificate for `secure.internal`, as a private network has.
fn test_pki() -> (RootCertStore, TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_params = CertificateParams::new(vec!["secure.internal".to_owned()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_cert.der().clone()],
            PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    (roots, TlsAcceptor::from(Arc::new(config)))
}

/// An origin that accepts, reads a little, and hangs up without answering.
async fn start_hangup_origin() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream.shutdown().await;
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// iris with an in-memory store and a mock tunnel pool.

const API: Uuid = Uuid::from_u128(0xa1);
const HTTPS_ONLY: Uuid = Uuid::from_u128(0xa2);
const REFUSING: Uuid = Uuid::from_u128(0xa3);
const HANGUP: Uuid = Uuid::from_u128(0xa4);
const SECURE: Uuid = Uuid::from_u128(0xa5);

fn service(id: Uuid, port: u16, http: bool) -> (Uuid, ServiceRoute) {
    let route = ServiceRoute {
        service_id: id,
        tunnel_id: Uuid::from_u128(0x77),
        target: RouteTarget::Ips {
            ipv4: Some(Ipv4Addr::LOCALHOST),
            ipv6: None,
        },
        http_port: http.then_some(port),
        https_port: Some(port),
        tcp_port: None,
        tls: RouteTls::default(),
    };
    (id, route)
}

struct Stack {
    worker: BindingWorkerHandle,
    origin: Arc<OriginLog>,
    tls_origin: Arc<OriginLog>,
}

/// Which roots the worker trusts for https origins.
enum Trust {
    TestCa,
    System,
}

async fn start_stack() -> Stack {
    start_stack_trusting(Trust::TestCa).await
}

async fn start_stack_trusting(trust: Trust) -> Stack {
    start_stack_with(trust, 0).await
}

/// The stack, with the binding-worker's HTTP work on `proxy_threads` threads of its own (0:
/// on its RPC thread).
async fn start_stack_with(trust: Trust, proxy_threads: usize) -> Stack {
    let (roots, acceptor) = test_pki();
    let (origin_addr, origin) = start_origin(None).await;
    let (tls_addr, tls_origin) = start_origin(Some(acceptor)).await;
    let hangup = start_hangup_origin().await;
    let closed_port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store: MemoryStore = [
        service(API, origin_addr.port(), true),
        service(HTTPS_ONLY, origin_addr.port(), false),
        service(REFUSING, closed_port, true),
        service(HANGUP, hangup.port(), true),
        service(SECURE, tls_addr.port(), false),
    ]
    .into_iter()
    .map(|(_, route)| route)
    .collect();
    let router = Router::new(
        Arc::new(store),
        Arc::new(MockTunnel::default()),
        RouterConfig::default(),
    );
    let iris = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let iris_addr = iris.local_addr().unwrap();
    tokio::spawn(async move { router.serve(iris).await });

    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mut config = BindingWorkerConfig::new(iris_addr);
    config.proxy_threads = proxy_threads;
    if let Trust::TestCa = trust {
        config.tls_roots = Some(Arc::new(roots));
    }
    let worker = BindingWorker::start(listener, config).unwrap();
    Stack {
        worker,
        origin,
        tls_origin,
    }
}

// ---------------------------------------------------------------------------------------------
// A small capnp client for VpcBinding, as the runtime would call it.

struct Fetched {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// The body came inside `deliver`, not as a stream.
    inline: bool,
    /// The binding-worker answered the fetch with `takesInlineRequestBody`.
    takes_inline_request_body: bool,
}

impl Fetched {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

type Head = Result<(u16, Vec<(String, Vec<u8>)>), ProxyError>;

struct Receiver {
    head: RefCell<Option<oneshot::Sender<Head>>>,
    body: Rc<BodyCollector>,
}

impl response_receiver::Server for Receiver {
    async fn deliver(
        self: capnp::capability::Rc<Self>,
        params: response_receiver::DeliverParams,
        mut results: response_receiver::DeliverResults,
    ) -> Result<(), capnp::Error> {
        use wvpc_schemas::binding_capnp::fetch_result::Which;
        let head = match params.get()?.get_result()?.which()? {
            Which::Response(r) => {
                let r = r?;
                let headers = r
                    .get_headers()?
                    .iter()
                    .map(|h| Ok((h.get_name()?.to_string()?, h.get_value()?.to_vec())))
                    .collect::<Result<Vec<_>, capnp::Error>>()?;
                Ok((r.get_status(), headers))
            }
            Which::Error(e) => Err(read_wire_error(e?)),
            Which::Unspecified(()) => panic!("result left unspecified"),
        };
        let params = params.get()?;
        if params.get_body_complete() {
            // The whole body, inside deliver: no stream, so none is returned.
            self.body.inline.set(true);
            self.body
                .bytes
                .borrow_mut()
                .extend_from_slice(params.get_inline_body()?);
            if let Some(tx) = self.body.done.borrow_mut().take() {
                let _ = tx.send(Ok(()));
            }
        } else {
            results
                .get()
                .set_body(capnp_rpc::new_client_from_rc(Rc::clone(&self.body)));
        }
        if let Some(tx) = self.head.borrow_mut().take() {
            let _ = tx.send(head);
        }
        Ok(())
    }
}

#[derive(Default)]
struct BodyCollector {
    bytes: RefCell<Vec<u8>>,
    done: RefCell<Option<oneshot::Sender<Result<(), ProxyError>>>>,
    /// A runtime whose script stopped reading: writes never complete.
    stalled: std::cell::Cell<bool>,
    /// The body came inside `deliver`.
    inline: std::cell::Cell<bool>,
}

impl byte_stream::Server for BodyCollector {
    async fn write(
        self: capnp::capability::Rc<Self>,
        params: byte_stream::WriteParams,
        _: byte_stream::WriteResults,
    ) -> Result<(), capnp::Error> {
        if self.stalled.get() {
            std::future::pending::<()>().await;
        }
        self.bytes
            .borrow_mut()
            .extend_from_slice(params.get()?.get_bytes()?);
        Ok(())
    }

    async fn end(
        self: capnp::capability::Rc<Self>,
        _: byte_stream::EndParams,
        _: byte_stream::EndResults,
    ) -> Result<(), capnp::Error> {
        if let Some(tx) = self.done.borrow_mut().take() {
            let _ = tx.send(Ok(()));
        }
        Ok(())
    }

    async fn abort(
        self: capnp::capability::Rc<Self>,
        params: byte_stream::AbortParams,
        _: byte_stream::AbortResults,
    ) -> Result<(), capnp::Error> {
        let err = read_wire_error(params.get()?.get_error()?);
        if let Some(tx) = self.done.borrow_mut().take() {
            let _ = tx.send(Err(err));
        }
        Ok(())
    }
}

/// What a test binding points at.
enum Binding {
    Service(Uuid),
    Tunnel(Uuid),
    Network(String),
}

impl Binding {
    fn set(&self, ctx: &mut wvpc_schemas::binding_capnp::binding_context::Builder<'_>) {
        match self {
            Self::Service(id) => ctx.set_service_id(id.to_string()),
            Self::Tunnel(id) => ctx.set_tunnel_id(id.to_string()),
            Self::Network(id) => ctx.set_network_id(id),
        }
    }
}

struct TestRuntime {
    binding: vpc_binding::Client,
    /// Says `takesInlineBody` in its fetches (a runtime from before it does not).
    takes_inline_body: bool,
    /// Sends the request body inside the fetch call (`requestBodyComplete`) instead of
    /// streaming it.
    inline_request_body: bool,
}

impl TestRuntime {
    /// Connects like a runtime. Must run inside a `LocalSet`.
    async fn connect(addr: SocketAddr) -> Self {
        Self::connect_with(addr, None).await.unwrap()
    }

    /// Connects like a runtime holding `secret` (none: no handshake).
    async fn connect_with(
        addr: SocketAddr,
        secret: Option<&PlatformSecret>,
    ) -> Result<Self, HandshakeError> {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        if let Some(secret) = secret {
            handshake_as_runtime(&mut stream, secret, HANDSHAKE_TIMEOUT).await?;
        }
        let (r, w) = stream.into_split();
        let network = twoparty::VatNetwork::new(
            r.compat(),
            w.compat_write(),
            Side::Client,
            Default::default(),
        );
        let mut rpc = RpcSystem::new(Box::new(network), None);
        let binding: vpc_binding::Client = rpc.bootstrap(Side::Server);
        tokio::task::spawn_local(rpc);
        Ok(Self {
            binding,
            takes_inline_body: false,
            inline_request_body: false,
        })
    }

    async fn fetch(
        &self,
        service: Uuid,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Fetched, ProxyError> {
        self.fetch_via(&Binding::Service(service), method, url, headers, body)
            .await
    }

    /// A fetch through any kind of binding.
    async fn fetch_via(
        &self,
        binding: &Binding,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Fetched, ProxyError> {
        let (head_tx, head_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let collector = Rc::new(BodyCollector {
            done: RefCell::new(Some(done_tx)),
            ..BodyCollector::default()
        });
        let receiver = Receiver {
            head: RefCell::new(Some(head_tx)),
            body: Rc::clone(&collector),
        };

        let mut call = self.binding.fetch_request();
        {
            let mut p = call.get();
            let mut ctx = p.reborrow().init_context();
            binding.set(&mut ctx);
            ctx.set_script("test-script");
            ctx.set_account("acct-1");
            ctx.set_request_id("req-e2e");
            ctx.set_binding("API");
            let mut head = p.reborrow().init_head();
            head.set_method(method);
            head.set_url(url);
            let mut list = head.init_headers(headers.len() as u32);
            for (i, (n, v)) in headers.iter().enumerate() {
                let mut h = list.reborrow().get(i as u32);
                h.set_name(*n);
                h.set_value(v.as_bytes());
            }
            p.set_response(capnp_rpc::new_client(receiver));
            p.set_takes_inline_body(self.takes_inline_body);
            if self.inline_request_body {
                p.set_request_body_complete(true);
                p.set_inline_request_body(body);
            }
        }
        let sent = call.send();
        let sink = sent.pipeline.get_request_body();
        // Stream the request body in chunks, within the flow-control window, while the
        // response may already be coming back.
        let write_body = async {
            if self.inline_request_body {
                return;
            }
            let mut sink = StreamWriter::new(sink);
            for chunk in body.chunks(32 << 10) {
                if sink.write(chunk).await.is_err() {
                    return;
                }
            }
            let _ = sink.end().await;
        };
        let read_response = async {
            let (status, headers) = head_rx.await.expect("deliver was called")?;
            done_rx.await.expect("the body ended or aborted")?;
            let body = collector.bytes.borrow().clone();
            Ok(Fetched {
                status,
                headers,
                body,
                inline: collector.inline.get(),
                takes_inline_request_body: false,
            })
        };
        let ((), fetched) = futures::join!(write_body, read_response);
        let returned = sent.promise.await.expect("fetch call returned");
        let takes = returned.get().unwrap().get_takes_inline_request_body();
        fetched.map(|f| Fetched {
            takes_inline_request_body: takes,
            ..f
        })
    }
}

async fn with_runtime<F, Fut>(stack: &Stack, test: F)
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

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_the_url_host_without_port_and_path_query_are_forwarded() {
    let stack = start_stack().await;
    with_runtime(&stack, |rt| async move {
        let res = rt
            .fetch(
                API,
                "GET",
                "http://API.Internal:9999/v1/items?q=1&r=two#ignored",
                &[
                    ("x-kept", "yes"),
                    ("connection", "x-hop"),
                    ("x-hop", "1"),
                    ("host", "evil"),
                ],
                b"",
            )
            .await
            .unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.body, b"hello from the origin");
        assert_eq!(res.header("x-origin"), Some(&b"yes"[..]));
    })
    .await;
    let requests = stack.origin.requests.lock().unwrap();
    let (host, path, headers) = &requests[0];
    assert_eq!(host, "api.internal");
    assert_eq!(path, "/v1/items?q=1&r=two");
    assert_eq!(headers["x-kept"], "yes");
    assert!(
        headers.get("x-hop").is_none(),
        "headers named by Connection are hop-by-hop"
    );
    assert!(
        headers.get("transfer-encoding").is_none(),
        "an empty GET is not sent chunked"
    );
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_whole_body_comes_inside_deliver_for_a_runtime_that_takes_it() {
    let stack = start_stack().await;
    with_runtime(&stack, |mut rt| async move {
        // A runtime from before inline bodies (it does not say it takes one) always gets a
        // stream; one that says so gets a small complete body inside deliver.
        for takes_inline_body in [false, true] {
            rt.takes_inline_body = takes_inline_body;
            let res = rt
                .fetch(API, "GET", "http://api.internal/hello", &[], b"")
                .await
                .unwrap();
            assert_eq!(
                (res.status, &res.body[..]),
                (200, &b"hello from the origin"[..])
            );
            assert_eq!(
                res.inline, takes_inline_body,
                "takesInlineBody {takes_inline_body}"
            );
        }

        // Larger than an inline body: streamed, whole and in order.
        assert!(!echo_streamed_body(&rt).await.inline);
    })
    .await;
    stack.worker.shutdown();
}

/// Sends a 256 KiB body (more than fits inside a call) to the echoing origin and checks that
/// it comes back whole and in order.
async fn echo_streamed_body(rt: &TestRuntime) -> Fetched {
    let body: Vec<u8> = (0..256 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let res = rt
        .fetch(API, "POST", "http://api.internal/echo", &[], &body)
        .await
        .unwrap();
    assert_eq!(res.status, 200);
    assert!(res.body == body, "the echoed body differs");
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_request_body_inside_fetch_reaches_the_origin_like_a_streamed_one() {
    let stack = start_stack().await;
    with_runtime(&stack, |mut rt| async move {
        for inline in [false, true] {
            rt.inline_request_body = inline;
            let res = rt
                .fetch(API, "POST", "http://api.internal/echo", &[], b"small body")
                .await
                .unwrap();
            assert_eq!(
                (res.status, &res.body[..]),
                (200, &b"small body"[..]),
                "inline request body {inline}"
            );
            assert!(
                res.takes_inline_request_body,
                "the binding-worker says it takes a request body inside the call"
            );
            // An empty one (a GET's) is sent as no body at all, not as an empty chunked one.
            let res = rt
                .fetch(API, "GET", "http://api.internal/empty", &[], b"")
                .await
                .unwrap();
            assert_eq!(res.status, 200, "inline request body {inline}");
        }
    })
    .await;
    let requests = stack.origin.requests.lock().unwrap();
    let empties: Vec<_> = requests
        .iter()
        .filter(|(_, path, _)| path == "/empty")
        .collect();
    assert_eq!(empties.len(), 2);
    for (_, _, headers) in empties {
        assert!(
            headers.get("transfer-encoding").is_none() && headers.get("content-length").is_none(),
            "an empty GET carries no body framing: {headers:?}"
        );
    }
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_work_on_threads_of_its_own_serves_like_the_rpc_thread() {
    let stack = start_stack_with(Trust::TestCa, 2).await;
    with_runtime(&stack, |rt| async move {
        echo_streamed_body(&rt).await;
        let res = rt
            .fetch(API, "GET", "http://api.internal/hello", &[], b"")
            .await
            .unwrap();
        assert_eq!(
            (res.status, &res.body[..]),
            (200, &b"hello from the origin"[..])
        );
    })
    .await;
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_mib_body_streams_both_ways_intact() {
    let stack = start_stack().await;
    let body: Vec<u8> = (0..(6 << 20) + 12_345)
        .map(|i: u32| (i * 31 % 251) as u8)
        .collect();
    let expected = body.clone();
    with_runtime(&stack, |rt| async move {
        let res = rt
            .fetch(
                API,
                "POST",
                "http://api.internal/echo",
                &[("content-type", "application/octet-stream")],
                &body,
            )
            .await
            .unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.body.len(), expected.len());
        assert!(res.body == expected, "echoed body differs");

        let res = rt
            .fetch(
                API,
                "PUT",
                "http://api.internal/count",
                &[("content-length", &body.len().to_string())],
                &body,
            )
            .await
            .unwrap();
        assert_eq!(
            res.body,
            expected.len().to_string().as_bytes(),
            "the origin got the whole body"
        );
    })
    .await;
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_origin_connection() {
    let stack = start_stack().await;
    with_runtime(&stack, |rt| async move {
        for i in 0..5 {
            let res = rt
                .fetch(API, "GET", &format!("http://api.internal/n/{i}"), &[], b"")
                .await
                .unwrap();
            assert_eq!(res.status, 200);
            let res = rt
                .fetch(API, "POST", "http://api.internal/echo", &[], b"small body")
                .await
                .unwrap();
            assert_eq!(res.body, b"small body");
        }
    })
    .await;
    assert_eq!(stack.origin.requests.lock().unwrap().len(), 10);
    assert_eq!(stack.origin.connections.load(Ordering::SeqCst), 1);
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_hosts_do_not_share_a_connection() {
    let stack = start_stack().await;
    with_runtime(&stack, |rt| async move {
        rt.fetch(API, "GET", "http://a.internal/", &[], b"")
            .await
            .unwrap();
        rt.fetch(API, "GET", "http://b.internal/", &[], b"")
            .await
            .unwrap();
        rt.fetch(API, "GET", "http://a.internal/", &[], b"")
            .await
            .unwrap();
    })
    .await;
    assert_eq!(stack.origin.connections.load(Ordering::SeqCst), 2);
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_arrive_as_codes() {
    let stack = start_stack().await;
    with_runtime(&stack, |rt| async move {
        let code = |r: Result<Fetched, ProxyError>| r.err().map(|e| e.code);

        let unknown = Uuid::from_u128(0xdead);
        assert_eq!(
            code(
                rt.fetch(unknown, "GET", "http://api.internal/", &[], b"")
                    .await
            ),
            Some(ErrorCode::DestinationNotFound)
        );
        let denied = rt
            .fetch(HTTPS_ONLY, "GET", "http://api.internal/", &[], b"")
            .await
            .err()
            .unwrap();
        assert_eq!(denied.code, ErrorCode::HttpRequestDenied);
        assert!(denied.details.unwrap().contains("http"));
        assert_eq!(
            code(
                rt.fetch(REFUSING, "GET", "http://api.internal/", &[], b"")
                    .await
            ),
            Some(ErrorCode::ConnectionRefused)
        );
        assert_eq!(
            code(
                rt.fetch(HANGUP, "GET", "http://api.internal/", &[], b"")
                    .await
            ),
            Some(ErrorCode::ConnectionTerminated)
        );
        let relative = rt
            .fetch(API, "GET", "/v1/items", &[], b"")
            .await
            .err()
            .unwrap();
        assert_eq!(relative.code, ErrorCode::HttpRequestError);
        assert!(relative.details.unwrap().contains("absolute"));
        // https to an origin that speaks plaintext HTTP on that port.
        assert_eq!(
            code(
                rt.fetch(API, "GET", "https://api.internal/", &[], b"")
                    .await
            ),
            Some(ErrorCode::TlsProtocolError)
        );
        // The worker keeps serving after failures.
        assert_eq!(
            rt.fetch(API, "GET", "http://api.internal/", &[], b"")
                .await
                .unwrap()
                .status,
            200
        );
    })
    .await;
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_with_more_headers_than_a_header_map_holds_is_a_request_error_not_a_panic() {
    let stack = start_stack().await;
    with_runtime(&stack, |rt| async move {
        // `HeaderMap::with_capacity` panics above about 24 576 entries.
        let many = vec![("x-many", "1"); 30_000];
        let err = rt
            .fetch(API, "GET", "http://api.internal/", &many, b"")
            .await
            .err()
            .expect("refused");
        assert_eq!(err.code, ErrorCode::HttpRequestError);
        let details = err.details.unwrap();
        assert!(
            details.contains("30000 headers") && details.contains("4096"),
            "{details}"
        );
        // The same connection keeps serving.
        assert_eq!(
            rt.fetch(API, "GET", "http://api.internal/", &[], b"")
                .await
                .unwrap()
                .status,
            200
        );
    })
    .await;
    // Only the second request reached the origin.
    assert_eq!(stack.origin.requests.lock().unwrap().len(), 1);
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_request_body_never_reaches_the_origin_as_complete() {
    let stack = start_stack().await;
    with_runtime(&stack, |rt| async move {
        let (head_tx, head_rx) = oneshot::channel();
        let collector = Rc::new(BodyCollector::default());
        let receiver = Receiver {
            head: RefCell::new(Some(head_tx)),
            body: collector,
        };
        let mut call = rt.binding.fetch_request();
        {
            let mut p = call.get();
            p.reborrow().init_context().set_service_id(API.to_string());
            let mut head = p.reborrow().init_head();
            head.set_method("POST");
            head.set_url("http://api.internal/count");
            let mut headers = head.init_headers(1);
            headers.reborrow().get(0).set_name("content-length");
            headers.reborrow().get(0).set_value(b"100");
            p.set_response(capnp_rpc::new_client(receiver));
            p.set_takes_inline_body(rt.takes_inline_body);
        }
        let sent = call.send();
        let mut sink = StreamWriter::new(sent.pipeline.get_request_body());
        sink.write(b"only part").await.unwrap();
        sink.abort(&ProxyError::new(ErrorCode::ConnectionReadTimeout))
            .await
            .unwrap();
        // The origin answers only after a complete body, so the script's abort code is what
        // comes back.
        let err = head_rx
            .await
            .unwrap()
            .expect_err("an error, not a response");
        assert_eq!(err.code, ErrorCode::ConnectionReadTimeout);
    })
    .await;
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_origins_get_sni_and_host_from_the_url_and_are_verified() {
    let stack = start_stack().await;
    with_runtime(&stack, |rt| async move {
        for _ in 0..3 {
            let res = rt
                .fetch(
                    SECURE,
                    "GET",
                    "https://Secure.Internal:8443/tls?x=1",
                    &[],
                    b"",
                )
                .await
                .unwrap();
            assert_eq!(
                (res.status, res.body.as_slice()),
                (200, &b"hello from the origin"[..])
            );
        }
        let res = rt
            .fetch(
                SECURE,
                "POST",
                "https://secure.internal/echo",
                &[],
                &[7u8; 300_000],
            )
            .await
            .unwrap();
        assert_eq!(res.body.len(), 300_000);

        let wrong_name = rt
            .fetch(SECURE, "GET", "https://other.internal/", &[], b"")
            .await
            .err()
            .unwrap();
        assert_eq!(wrong_name.code, ErrorCode::TlsCertificateError);
    })
    .await;
    let names = stack.tls_origin.server_names.lock().unwrap().clone();
    // The refused handshake never completes at the origin, so only one TLS connection shows,
    // reused by all four requests.
    assert_eq!(names, ["secure.internal"]);
    let requests = stack.tls_origin.requests.lock().unwrap();
    assert_eq!(requests[0].0, "secure.internal");
    assert_eq!(requests[0].1, "/tls?x=1");
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_certificate_from_an_untrusted_ca_is_refused() {
    let stack = start_stack_trusting(Trust::System).await;
    with_runtime(&stack, |rt| async move {
        let err = rt
            .fetch(SECURE, "GET", "https://secure.internal/", &[], b"")
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, ErrorCode::TlsCertificateError);
    })
    .await;
    stack.worker.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Origin TLS per service: each verification mode, with and without the service's private CA.

/// A TLS acceptor serving `cert` (DER) with `key`.
fn acceptor(cert: rustls::pki_types::CertificateDer<'static>, key: &rcgen::KeyPair) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// A private CA (its PEM) and an origin certificate it signed for `name`.
fn private_ca_origin(name: &str) -> (String, TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    (ca_pem, acceptor(leaf.der().clone(), &leaf_key))
}

/// A self-signed origin certificate for `name` (its PEM).
fn self_signed_origin(name: &str) -> (String, TlsAcceptor) {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let pem = certified.cert.pem();
    (
        pem,
        acceptor(certified.cert.der().clone(), &certified.signing_key),
    )
}

/// iris over `store` and a binding-worker trusting only the system roots (which know none of
/// the test CAs), so that whatever passes verification passed through the service's settings.
async fn start_worker_with(
    store: MemoryStore,
    tune: impl FnOnce(&mut BindingWorkerConfig),
) -> BindingWorkerHandle {
    let router = Router::new(
        Arc::new(store),
        Arc::new(MockTunnel::default()),
        RouterConfig::default(),
    );
    let iris = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let iris_addr = iris.local_addr().unwrap();
    tokio::spawn(async move { router.serve(iris).await });
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mut config = BindingWorkerConfig::new(iris_addr);
    tune(&mut config);
    BindingWorker::start(listener, config).unwrap()
}

async fn with_runtime_at<F, Fut>(addr: SocketAddr, test: F)
where
    F: FnOnce(TestRuntime) -> Fut,
    Fut: Future<Output = ()>,
{
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move { test(TestRuntime::connect(addr).await).await })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_verification_mode_checks_what_it_promises() {
    use wvpc_iris::CertVerificationMode::{Disabled, VerifyCa, VerifyFull};
    let (ca_pem, ca_acceptor) = private_ca_origin("secure.internal");
    let (self_pem, self_acceptor) = self_signed_origin("self.internal");
    let (ca_origin, _) = start_origin(Some(ca_acceptor)).await;
    let (self_origin, _) = start_origin(Some(self_acceptor)).await;
    let (plain_origin, _) = start_origin(None).await;

    // (origin, mode, private CA, URL host, expected code or success)
    let rows = [
        (
            ca_origin,
            VerifyFull,
            None,
            "secure.internal",
            Some(ErrorCode::TlsCertificateError),
        ),
        (
            ca_origin,
            VerifyFull,
            Some(&ca_pem),
            "secure.internal",
            None,
        ),
        (
            ca_origin,
            VerifyFull,
            Some(&ca_pem),
            "other.internal",
            Some(ErrorCode::TlsCertificateError),
        ),
        (
            ca_origin,
            VerifyFull,
            Some(&self_pem),
            "secure.internal",
            Some(ErrorCode::TlsCertificateError),
        ),
        (ca_origin, VerifyCa, Some(&ca_pem), "other.internal", None),
        (
            ca_origin,
            VerifyCa,
            None,
            "secure.internal",
            Some(ErrorCode::TlsCertificateError),
        ),
        (ca_origin, Disabled, None, "anything.internal", None),
        (
            self_origin,
            VerifyFull,
            Some(&self_pem),
            "self.internal",
            None,
        ),
        (
            self_origin,
            VerifyFull,
            Some(&self_pem),
            "other.internal",
            Some(ErrorCode::TlsCertificateError),
        ),
        (
            self_origin,
            VerifyCa,
            Some(&self_pem),
            "other.internal",
            None,
        ),
        (
            self_origin,
            VerifyCa,
            None,
            "self.internal",
            Some(ErrorCode::TlsCertificateError),
        ),
        (self_origin, Disabled, None, "self.internal", None),
        // Plain HTTP where TLS was expected: no verification mode makes that work.
        (
            plain_origin,
            Disabled,
            None,
            "api.internal",
            Some(ErrorCode::TlsProtocolError),
        ),
    ];
    let store = MemoryStore::default();
    let ids: Vec<Uuid> = rows
        .iter()
        .enumerate()
        .map(|(i, (origin, mode, ca, _, _))| {
            let (id, mut route) =
                service(Uuid::from_u128(0x7150 + i as u128), origin.port(), false);
            route.tls = RouteTls {
                cert_verification_mode: *mode,
                ca_certificate: ca.map(|pem| pem.to_string()),
            };
            store.put(route);
            id
        })
        .collect();
    let worker = start_worker_with(store, |_| {}).await;
    with_runtime_at(worker.local_addr(), |rt| async move {
        for (i, (_, mode, ca, host, expected)) in rows.iter().enumerate() {
            let url = format!("https://{host}/tls");
            let got = rt.fetch(ids[i], "GET", &url, &[], b"").await;
            let what = format!(
                "row {i}: {mode} with{} CA, {url}",
                if ca.is_some() { "" } else { "out" }
            );
            match expected {
                None => {
                    let res = got.unwrap_or_else(|e| panic!("{what}: expected success, got {e}"));
                    assert_eq!(
                        (res.status, res.body.as_slice()),
                        (200, &b"hello from the origin"[..]),
                        "{what}"
                    );
                }
                Some(code) => {
                    let err = got
                        .err()
                        .unwrap_or_else(|| panic!("{what}: expected {code}, got a response"));
                    assert_eq!(err.code, *code, "{what}: {err}");
                }
            }
        }
    })
    .await;
    worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_stalls_mid_body_is_connection_read_timeout() {
    let (origin, _) = start_origin(None).await;
    let (id, route) = service(API, origin.port(), true);
    let store = MemoryStore::default();
    store.put(route);
    let worker = start_worker_with(store, |config| {
        config.read_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    with_runtime_at(worker.local_addr(), |rt| async move {
        let err = rt
            .fetch(id, "GET", "http://api.internal/stall-body", &[], b"")
            .await
            .err()
            .expect("the body must fail, not hang or complete");
        assert_eq!(err.code, ErrorCode::ConnectionReadTimeout, "{err}");
        // The stalled connection was not pooled: the next request gets a fresh one and works.
        let res = rt
            .fetch(id, "GET", "http://api.internal/", &[], b"")
            .await
            .unwrap();
        assert_eq!(res.status, 200);
    })
    .await;
    worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_an_idle_connection_gives_way_a_busy_one_does_not() {
    let (origin, log) = start_origin(None).await;
    let (id, route) = service(API, origin.port(), true);
    let store = MemoryStore::default();
    store.put(route);
    let worker = start_worker_with(store, |config| config.max_connections_per_service = 1).await;
    let seen = Arc::clone(&log);
    with_runtime_at(worker.local_addr(), |rt| async move {
        // a.internal's connection stays pooled; b.internal cannot share it (another Host),
        // so it replaces it.
        for host in ["a.internal", "b.internal", "a.internal"] {
            let res = rt
                .fetch(id, "GET", &format!("http://{host}/"), &[], b"")
                .await
                .unwrap_or_else(|e| panic!("{host}: {e}"));
            assert_eq!(res.status, 200);
        }
        // A response that is still streaming holds its connection: a second one is refused.
        let rt = Rc::new(rt);
        let stalled = tokio::task::spawn_local({
            let rt = Rc::clone(&rt);
            async move {
                rt.fetch(id, "GET", "http://a.internal/stall-body", &[], b"")
                    .await
            }
        });
        // Until the origin has the stalled request (a condition poll, bounded by the test).
        while seen.requests.lock().unwrap().len() < 4 {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let err = rt
            .fetch(id, "GET", "http://b.internal/", &[], b"")
            .await
            .err()
            .expect("over the cap");
        assert_eq!(err.code, ErrorCode::ConnectionLimitReached, "{err}");
        stalled.abort();
    })
    .await;
    // a, then b in a's place, then a in b's place; the stalled request reused that last one.
    assert_eq!(log.connections.load(Ordering::SeqCst), 3);
    worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_passes_through_and_bytes_flow_both_ways() {
    let stack = start_stack().await;
    with_runtime(&stack, |rt| async move {
        let res = rt
            .fetch(
                API,
                "GET",
                "http://api.internal/ws",
                &[
                    ("connection", "Upgrade"),
                    ("upgrade", "websocket"),
                    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                    ("sec-websocket-version", "13"),
                ],
                b"frames from the script",
            )
            .await
            .unwrap();
        assert_eq!(res.status, 101);
        assert_eq!(res.header("upgrade"), Some(&b"websocket"[..]));
        assert_eq!(res.header("connection"), Some(&b"upgrade"[..]));
        assert_eq!(
            res.header("sec-websocket-accept"),
            Some(&b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="[..])
        );
        // The request body went up the upgraded connection, the origin's bytes came back as
        // the response body, and the script's end() reached the origin as EOF.
        assert_eq!(res.body, b"frames from the scriptbye");
        // An upgraded connection is never pooled: the next request opens a fresh one.
        let next = rt
            .fetch(API, "GET", "http://api.internal/after", &[], b"")
            .await
            .unwrap();
        assert_eq!(next.status, 200);
    })
    .await;
    let requests = stack.origin.requests.lock().unwrap();
    let (_, path, headers) = &requests[0];
    assert_eq!(path, "/ws");
    assert_eq!(headers["upgrade"], "websocket");
    assert_eq!(headers["connection"], "upgrade");
    assert_eq!(headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(stack.origin.connections.load(Ordering::SeqCst), 2);
    drop(requests);
    stack.worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_stops_reading_frees_the_origin_after_the_write_timeout() {
    let (origin, log) = start_origin(None).await;
    let (id, route) = service(API, origin.port(), true);
    let store = MemoryStore::default();
    store.put(route);
    let worker = start_worker_with(store, |config| {
        config.write_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let dropped = Arc::clone(&log.endless_dropped);
    with_runtime_at(worker.local_addr(), |rt| async move {
        let (head_tx, head_rx) = oneshot::channel();
        let collector = Rc::new(BodyCollector::default());
        collector.stalled.set(true);
        let receiver = Receiver {
            head: RefCell::new(Some(head_tx)),
            body: collector,
        };
        let mut call = rt.binding.fetch_request();
        {
            let mut p = call.get();
            p.reborrow().init_context().set_service_id(id.to_string());
            let mut head = p.reborrow().init_head();
            head.set_method("GET");
            head.set_url("http://api.internal/endless");
            p.set_response(capnp_rpc::new_client(receiver));
            p.set_takes_inline_body(rt.takes_inline_body);
        }
        let sent = call.send();
        let sink = sent.pipeline.get_request_body();
        sink.end_request().send().promise.await.unwrap();
        let (status, _) = head_rx.await.unwrap().expect("a response head");
        assert_eq!(status, 200);
        // The binding-worker gives up on the stalled runtime and closes the origin
        // connection, which drops the endless body (a condition poll, bounded by the test).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !dropped.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the origin connection is still open"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    worker.shutdown();
}
