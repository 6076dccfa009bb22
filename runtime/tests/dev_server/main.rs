//! The runtime end to end: real guest components, `Runtime::serve` and `ScriptHost::serve` on
//! 127.0.0.1:0, a real HTTP/1.1 client, and a fake binding-worker speaking real capnp-rpc.

mod failover;
mod fake_binding_worker;
mod fetch_semantics;
mod guests;
mod limits;
mod reuse;
mod script_host;
mod sockets;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use wvpc_runtime::{
    PrefixedOutput, REQUEST_ID_HEADER, Runtime, RuntimeError, RuntimeOptions, ScriptConfig,
    ScriptOutput,
};

use fake_binding_worker::FakeBindingWorker;

const SERVICE: &str = "0199d9b2-6a5c-7a3e-9d3c-3f1d2b4c5a6e";
/// Guard against a hung test; never an assertion about speed.
const GUARD: Duration = Duration::from_secs(120);

/// A runtime serving `main` on 127.0.0.1:0, with binding `API` → [`SERVICE`].
struct Served {
    addr: SocketAddr,
    runtime: Arc<Runtime>,
    _config_dir: tempfile::TempDir,
}

async fn serve(main: &Path, binding_worker: SocketAddr) -> Served {
    serve_with(main, binding_worker, "{}", Arc::new(PrefixedOutput)).await
}

/// [`serve`] with a `limits` section (JSON) and a sink for the script's output.
async fn serve_with(
    main: &Path,
    binding_worker: SocketAddr,
    limits: &str,
    output: Arc<dyn ScriptOutput>,
) -> Served {
    let options = RuntimeOptions {
        binding_workers: vec![binding_worker],
        binding_secret: None,
        account: "acct-1".into(),
        exchange_tap: None,
        metrics: None,
    };
    serve_configured(main, limits, output, options).await
}

/// [`serve`] with these binding-workers and secret.
async fn serve_through(
    main: &Path,
    binding_workers: Vec<SocketAddr>,
    binding_secret: Option<wvpc_runtime::PlatformSecret>,
) -> Served {
    let options = RuntimeOptions {
        binding_workers,
        binding_secret,
        account: "acct-1".into(),
        exchange_tap: None,
        metrics: None,
    };
    serve_configured(main, "{}", Arc::new(PrefixedOutput), options).await
}

async fn serve_configured(
    main: &Path,
    limits: &str,
    output: Arc<dyn ScriptOutput>,
    options: RuntimeOptions,
) -> Served {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("wrangler.jsonc");
    let config = format!(
        r#"{{ "name": "proxy-test", "main": {main:?}, "limits": {limits},
              "vpc_services": [{{ "binding": "API", "service_id": "{SERVICE}" }}] }}"#,
        main = main.display().to_string()
    );
    std::fs::write(&config_path, config).expect("write config");
    let config = ScriptConfig::load(&config_path).expect("valid config");
    let runtime = Arc::new(Runtime::with_output(&config, options, output).expect("runtime"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(runtime.clone().serve(listener));
    Served {
        addr,
        runtime,
        _config_dir: dir,
    }
}

/// One HTTP/1.1 connection (requests on it reuse it: keep-alive).
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    /// The body, or why reading it failed.
    body: Result<String, String>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        Self { sender }
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut request = http::Request::builder().method(method).uri(path);
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            request = request.header("host", "localhost");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        let exchange = async {
            self.sender.ready().await.expect("connection ready");
            let response = self
                .sender
                .send_request(request)
                .await
                .expect("response head");
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .map_err(|e| e.to_string());
            Answer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            }
        };
        tokio::time::timeout(GUARD, exchange)
            .await
            .expect("request finished")
    }

    async fn get(&mut self, path: &str) -> Answer {
        self.send("GET", path, &[], "").await
    }

    /// A GET with `Host: <host>`.
    async fn get_at(&mut self, host: &str, path: &str) -> Answer {
        self.send("GET", path, &[("host", host)], "").await
    }

    /// A GET whose response is expected to break: `Ok(status)` when the head arrived and the
    /// body then broke, `Err` when the connection closed before a complete head.
    async fn get_cut(&mut self, path: &str) -> Result<u16, String> {
        let request = http::Request::get(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let exchange = async {
            self.sender.ready().await.expect("connection ready");
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            match response.into_body().collect().await {
                Ok(body) => panic!("body should be cut short, got {:?}", body.to_bytes()),
                Err(_) => Ok(status),
            }
        };
        tokio::time::timeout(GUARD, exchange)
            .await
            .expect("request finished")
    }
}

impl Answer {
    fn text(&self) -> &str {
        self.body.as_deref().expect("complete body")
    }

    fn request_id(&self) -> &str {
        self.headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .expect("request id")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_passes_request_and_response_through_the_binding() {
    let fake = FakeBindingWorker::start();
    let served = serve(&guests::guests().proxy, fake.addr).await;
    let mut client = Client::connect(served.addr).await;

    let answer = client
        .send(
            "POST",
            "/orders/7?expand=items&limit=2",
            &[("x-test", "42")],
            "hello body",
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        answer.headers["x-fake-path"],
        "/orders/7?expand=items&limit=2"
    );
    assert_eq!(answer.headers["content-type"], "text/plain");
    let request_id = answer.request_id().to_owned();
    let text = answer.text();
    for expected in [
        "method=POST\n",
        "url=http://api.internal/orders/7?expand=items&limit=2\n",
        &format!(
            "service={SERVICE} binding=API script=proxy-test account=acct-1 request_id={request_id}\n"
        ),
        "header x-test=42\n",
        "body=hello body",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // The script's Host never reaches the binding-worker as a header: the URL carries it.
    assert!(!text.contains("header host="), "{text}");

    // Keep-alive: the same client connection, a new instance, a new request id; and the
    // runtime reuses its one binding-worker connection.
    let again = client.get("/second").await;
    assert_eq!(again.status, 200);
    assert!(again.text().contains("path=/second\n"), "{}", again.text());
    assert_ne!(again.request_id(), request_id);
    assert_eq!(fake.connections(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_stream_both_ways() {
    let fake = FakeBindingWorker::start();
    let served = serve(&guests::guests().proxy, fake.addr).await;
    // Bigger than wasi-http's 1 MiB write chunk and the 64 KiB capnp writes.
    let body: String = (0..3 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let answer = Client::connect(served.addr)
        .await
        .send("PUT", "/upload", &[], &body)
        .await;
    assert_eq!(answer.status, 200);
    let echoed = answer
        .text()
        .split_once("body=")
        .map(|(_, b)| b)
        .expect("echoed body");
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "the body changed on the way");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_share_one_binding_worker_connection_per_serving_thread() {
    let fake = FakeBindingWorker::start();
    let served = serve(&guests::guests().proxy, fake.addr).await;
    let requests = (0..16).map(|i| {
        let addr = served.addr;
        tokio::spawn(async move {
            (
                i,
                Client::connect(addr).await.get(&format!("/item/{i}")).await,
            )
        })
    });
    for request in requests {
        let (i, answer) = request.await.expect("request task");
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert!(
            answer.text().contains(&format!("path=/item/{i}\n")),
            "{}",
            answer.text()
        );
    }
    // The runtime serves on one thread per core, each with its own connection.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let connections = fake.connections();
    assert!(
        (1..=threads).contains(&connections),
        "16 requests on 16 connections took {connections} binding-worker connections; at most \
         one per serving thread ({threads}) was expected"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn binding_errors_become_502_with_the_proxy_error_code() {
    let fake = FakeBindingWorker::start();
    let served = serve(&guests::guests().proxy, fake.addr).await;
    let mut client = Client::connect(served.addr).await;

    let refused = client.get("/refused").await;
    assert_eq!(
        (refused.status, refused.text()),
        (502, "ProxyError: connection_refused")
    );
    let nxdomain = client.get("/nxdomain").await;
    assert_eq!(
        (nxdomain.status, nxdomain.text()),
        (502, "ProxyError: dns_error")
    );
    // A head whose header count a peer chose is checked before anything is sized by it.
    let many = client.get("/many-headers").await;
    assert_eq!(
        (many.status, many.text()),
        (502, "ProxyError: http_response_header_section_size")
    );
    let after = client.get("/after").await;
    assert_eq!(after.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_response_body_is_http_response_incomplete() {
    let fake = FakeBindingWorker::start();
    let served = serve(&guests::guests().checks, fake.addr).await;
    let mut client = Client::connect(served.addr).await;
    // The script reads the whole body itself and reports the error code it got.
    let answer = client.get("/buffered/cut").await;
    assert_eq!(
        (answer.status, answer.text()),
        (502, "ProxyError: http_response_incomplete")
    );

    // Streamed through the proxy, the script has already answered 200 when the body breaks:
    // the client sees the response cut short — after the head, or, when the server had not
    // flushed the head yet, as a connection closed before a complete response. Never a
    // complete response.
    let proxied = serve(&guests::guests().proxy, fake.addr).await;
    let mut client = Client::connect(proxied.addr).await;
    match client.get_cut("/cut").await {
        Ok(status) => assert_eq!(status, 200),
        Err(err) => assert!(
            err.contains("connection closed before message completed"),
            "{err}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_outbound_http_is_denied() {
    let fake = FakeBindingWorker::start();
    let served = serve(&guests::guests().checks, fake.addr).await;
    // Somewhere the script would reach if egress were open.
    let open_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    open_port.set_nonblocking(true).expect("nonblocking");
    let port = open_port.local_addr().expect("addr").port();

    let mut client = Client::connect(served.addr).await;
    let answer = client.get(&format!("/outbound?port={port}")).await;
    assert_eq!(
        (answer.status, answer.text()),
        (200, "outbound: ProxyError: http_request_denied")
    );
    // The denial happened before any connection: nothing is waiting to be accepted.
    let pending = open_port.accept();
    assert!(
        matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the script connected out: {pending:?}"
    );
    assert_eq!(
        fake.connections(),
        0,
        "a denied request must not reach the binding-worker"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undeclared_binding_is_a_configuration_error() {
    let fake = FakeBindingWorker::start();
    let served = serve(&guests::guests().checks, fake.addr).await;
    let answer = Client::connect(served.addr).await.get("/undeclared").await;
    assert_eq!(
        (answer.status, answer.text()),
        (502, "ProxyError: proxy_configuration_error")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trapping_request_fails_alone() {
    let fake = FakeBindingWorker::start();
    let served = serve(&guests::guests().checks, fake.addr).await;
    let mut client = Client::connect(served.addr).await;

    let trapped = client.get("/trap").await;
    assert_eq!(trapped.status, 500);
    assert!(
        trapped.text().contains(trapped.request_id()),
        "{}",
        trapped.text()
    );

    // Same server, same connection: the next request runs normally.
    let after = client.get("/buffered/fine").await;
    assert_eq!(after.status, 200, "{:?}", after.body);
    assert!(after.text().contains("path=/fine\n"), "{}", after.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnects_after_the_binding_worker_connection_drops() {
    let fake = FakeBindingWorker::start();
    let served = serve(&guests::guests().proxy, fake.addr).await;
    let mut client = Client::connect(served.addr).await;

    assert_eq!(client.get("/before").await.status, 200);
    let dropped = client.get("/drop").await;
    assert_eq!(
        (dropped.status, dropped.text()),
        (502, "ProxyError: proxy_internal_error")
    );
    let after = client.get("/after").await;
    assert_eq!(after.status, 200, "{:?}", after.body);
    assert_eq!(fake.connections(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_binding_worker_fails_the_fetch_not_the_server() {
    // A port nobody listens on: bind, learn it, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let served = serve(&guests::guests().proxy, closed).await;
    let mut client = Client::connect(served.addr).await;
    for _ in 0..2 {
        let answer = client.get("/x").await;
        assert_eq!(
            (answer.status, answer.text()),
            (502, "ProxyError: destination_unavailable")
        );
    }
}

#[test]
fn main_must_be_a_component() {
    let dir = tempfile::tempdir().expect("temp dir");
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let text = dir.path().join("text.wasm");
    std::fs::write(&text, b"hello").expect("write");
    let options = || RuntimeOptions {
        binding_workers: vec!["127.0.0.1:9".parse().unwrap()],
        binding_secret: None,
        account: "a".into(),
        exchange_tap: None,
        metrics: None,
    };
    let config = |main: &Path| ScriptConfig {
        name: "s".into(),
        main: main.into(),
        vpc_services: vec![],
        vpc_networks: Vec::new(),
        limits: Default::default(),
    };

    let err = Runtime::new(&config(&core), options())
        .err()
        .expect("a core module is refused");
    assert!(matches!(err, RuntimeError::NotAComponent { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "main: {} is a core WebAssembly module, not a component (build the script with \
             `cargo build --target wasm32-wasip2`)",
            core.display()
        )
    );
    let err = Runtime::new(&config(&text), options())
        .err()
        .expect("text is refused");
    assert!(
        matches!(err, RuntimeError::InvalidComponent { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("main: {} is not a valid", text.display())),
        "{err}"
    );
}
