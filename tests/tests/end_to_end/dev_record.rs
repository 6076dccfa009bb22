//! `wvpc dev --record` and its replay: the script's binding exchanges on the real path (the
//! stack `wvpc dev` runs, the QUIC edge, our connector, an origin on loopback) are written by
//! `wvpc_platform::mock_record::MockRecorder` into a mock file; that file, read as
//! `wvpc dev --mock` reads it, then gives the script the same answers with no connector,
//! tunnel or origin.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use uuid::Uuid;
use wvpc_directory::{HostInput, ServiceInput};
use wvpc_iris::dev_mock::MockNetwork;
use wvpc_platform::mock_file;
use wvpc_platform::mock_record::{INLINE_BODY_LIMIT, MockRecorder};
use wvpc_platform::mock_stack::{MockStack, MockStackConfig};
use wvpc_runtime::{ScriptConfig, VpcServiceBinding};
use wvpc_tests::client::{self, Reply};
use wvpc_tests::real::{RealWorld, WorldOptions};
use wvpc_tests::{TempDir, guests, trace_init, within};

/// Size of the origin's large binary body: over the inline limit, so it goes to a body file.
const BIG: usize = 200 * 1024;

fn big_body() -> Bytes {
    (0..BIG).map(|i| (i % 251) as u8).collect()
}

/// An origin with headers a mock file must carry: a repeated `set-cookie`, a content type,
/// a custom header; answers that depend on the query; a binary body; a changing answer.
async fn origin() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("binding the origin");
    let addr = listener.local_addr().unwrap();
    let counter = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<_>| {
                    let counter = counter.clone();
                    async move { Ok::<_, Infallible>(answer(&request, &counter)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn answer<B>(request: &Request<B>, counter: &AtomicUsize) -> Response<Full<Bytes>> {
    let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let builder = Response::builder();
    let (builder, body) = match path {
        "/users/1" => (
            builder
                .header("content-type", "application/json")
                .header("set-cookie", "session=abc; Path=/")
                .header("set-cookie", "theme=dark")
                .header("x-origin", "private"),
            Bytes::from_static(br#"{"id":1,"name":"Ada"}"#),
        ),
        "/search?q=a" | "/search?q=b" => (
            builder.header("content-type", "text/plain"),
            Bytes::from(format!("results for {}", &path[10..])),
        ),
        "/big" => (
            builder.header("content-type", "application/octet-stream"),
            big_body(),
        ),
        "/count" => {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            (builder, Bytes::from(format!("count {n}")))
        }
        _ => (
            builder.status(404).header("content-type", "text/plain"),
            Bytes::from(format!("no route {path}")),
        ),
    };
    builder.body(Full::new(body)).unwrap()
}

/// Points the world's service (bound as `API`) at `127.0.0.1:port` and waits until iris
/// routes by it.
async fn point_service_at(world: &RealWorld, port: u16) {
    let mut service = ServiceInput::http(
        "api",
        HostInput::ips(Some(Ipv4Addr::LOCALHOST), None, world.tunnel_id),
    );
    service.http_port = Some(i64::from(port));
    world
        .stack
        .directory
        .replace_service(world.service_id, &service)
        .expect("changing the service");
    within(
        "iris routes the changed service",
        world.stack.routes_current(),
    )
    .await
    .expect("reading the directory");
}

/// What a client of the script notices: status, headers (less the per-answer `date` and
/// request id) and body.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

fn seen(reply: Reply) -> Seen {
    let mut headers: Vec<(String, String)> = reply
        .headers
        .iter()
        .filter(|(name, _)| {
            name.as_str() != "date" && name.as_str() != wvpc_runtime::REQUEST_ID_HEADER
        })
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    Seen {
        status: reply.status,
        headers,
        body: reply.body,
    }
}

fn script() -> ScriptConfig {
    ScriptConfig {
        name: "proxy".into(),
        main: PathBuf::from(guests::PROXY),
        vpc_services: vec![VpcServiceBinding {
            binding: "API".into(),
            service_id: Uuid::nil(),
        }],
        vpc_networks: Vec::new(),
        limits: Default::default(),
    }
}

async fn replay_stack(file: &Path) -> MockStack {
    let spec = mock_file::load(file, &script()).expect("the recorded file is a valid mock file");
    let mock = MockNetwork::new(["API".to_owned()], spec).expect("a mock network");
    within(
        "starting the mock stack",
        MockStack::start(MockStackConfig {
            script: script(),
            mock,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            server: Default::default(),
        }),
    )
    .await
    .expect("starting the mock stack")
}

const PATHS: [&str; 6] = [
    "/users/1",
    "/search?q=a",
    "/search?q=b",
    "/big",
    "/missing",
    "/count",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_exchanges_replay_offline_as_the_script_saw_them() {
    trace_init();
    let dir = TempDir::new("record");
    let file = dir.path().join("wvpc.mock.jsonc");
    let config = dir.path().join("wrangler.jsonc");
    let (recorder, mut events) = MockRecorder::start(&file, &config).expect("starting to record");
    mock_file::load(&file, &script()).expect("the file is valid before any exchange");

    // Record: every path through the real tunnel, `/count` twice (the latest is kept), and
    // then a request while the origin's port is closed.
    let mut world = within(
        "starting the real path",
        RealWorld::start_with(WorldOptions {
            script: guests::PROXY,
            exchange_tap: Some(Arc::new(recorder.clone())),
            ..WorldOptions::default()
        }),
    )
    .await
    .expect("starting the real path");
    point_service_at(&world, origin().await.port()).await;
    let mut real = Vec::new();
    for path in PATHS.iter().chain(&["/count"]) {
        let reply = within(path, client::get(world.stack.script_addr, path)).await;
        real.push((*path, seen(reply)));
    }
    let closed = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    point_service_at(&world, closed_port).await;
    let down = seen(within("/down", client::get(world.stack.script_addr, "/down")).await);
    assert_eq!(down.status, 502, "{down:?}");
    assert_eq!(down.body, "ProxyError: connection_refused");

    let exchanges = PATHS.len() as u64 + 2;
    within(
        "the recorder writes every exchange",
        recorder.wait_handled(exchanges),
    )
    .await;
    world.stop_connector();
    drop(world);

    // What `wvpc dev --record` prints, one line per exchange.
    let mut lines = Vec::new();
    while let Ok(event) = events.try_recv() {
        lines.push(event.to_string());
    }
    assert_eq!(lines.len() as u64, exchanges, "{lines:#?}");
    assert!(
        lines.contains(&"recorded API GET /down -> fault connection_refused".to_owned()),
        "{lines:#?}"
    );

    // The file: a header comment, a repeated header as an array, the large body in a file.
    let text = std::fs::read_to_string(&file).unwrap();
    eprintln!("{text}");
    assert!(
        text.starts_with("// Recorded by `wvpc dev --record`"),
        "{text}"
    );
    assert!(text.contains(&config.display().to_string()), "{text}");
    assert!(
        text.contains(r#""set-cookie": ["session=abc; Path=/", "theme=dark"]"#),
        "{text}"
    );
    assert!(!text.contains("\"date\""), "{text}");
    assert_eq!(text.matches("\"path\": \"/count\"").count(), 1, "{text}");
    let body_file = dir.path().join("wvpc.mock.bodies");
    let files: Vec<_> = std::fs::read_dir(&body_file)
        .expect("a folder of body files")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read(&files[0]).unwrap(), big_body());
    const { assert!(BIG > INLINE_BODY_LIMIT) };

    // Replay with no connector, tunnel or origin: the script sees the same answers.
    let replay = replay_stack(&file).await;
    let mut last_count = None;
    for (path, recorded) in &real {
        let replayed = seen(within(path, client::get(replay.script_addr, path)).await);
        if *path == "/count" {
            last_count = Some(recorded);
            continue;
        }
        assert_eq!(&replayed, recorded, "{path}: replay vs recording");
    }
    let count = seen(within("/count", client::get(replay.script_addr, "/count")).await);
    assert_eq!(Some(&count), last_count, "/count: the latest recording");
    assert_eq!(count.body, "count 2");
    let replayed_down = seen(within("/down", client::get(replay.script_addr, "/down")).await);
    assert_eq!(replayed_down, down, "/down: replay vs recording");
    // A request nothing recorded: the mock's 501 naming it.
    let other = within("/other", client::get(replay.script_addr, "/other")).await;
    assert_eq!(other.status, 501, "{}", other.text());
    assert!(other.text().contains("API: GET /other"), "{}", other.text());
}
