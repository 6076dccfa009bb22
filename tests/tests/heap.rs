//! The live heap stays flat under load: nothing is kept per request for the life of a
//! connection.
//!
//! Requests with a request body and a response body go client → runtime → script
//! (`examples/proxy`) → capnp → binding-worker → iris → mock tunnel → an echo origin, all in
//! this process, on real sockets. (Through the QUIC tunnel, requests ride pooled origin
//! connections; what a new connection costs there is in `docs/performance.md`.) The live heap (counted by `dhat`) is sampled after each phase of [`PHASE`] requests; from
//! the median of the early samples to the median of the late ones it may grow by at most
//! [`MAX_BYTES_PER_REQUEST`] on average. The median of a few samples, because the heap at one
//! instant swings both ways: buffers that happen to be allocated at one sample (a connection's
//! read buffer) are not kept, and pooled ones that happen to be released at one sample come
//! back. Its own
//! test binary, since `dhat` replaces the global allocator (one profiler runs at a time).

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;
use wvpc_iris::{RouteTarget, RouteTls, ServiceRoute};
use wvpc_tests::stack::MockStack;
use wvpc_tests::{guests, trace_init, within};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Requests between two samples of the live heap.
const PHASE: usize = 500;
/// Phases that fill pools, caches and connections before the first sample.
const WARM_UP_PHASES: usize = 3;
/// Samples taken after the warm-up; the first and last [`SAMPLES_KEPT`] are compared.
const SAMPLES: usize = 13;
const SAMPLES_KEPT: usize = 5;
/// Client connections sending at the same time (keep-alive).
const CLIENTS: usize = 4;
/// Request body of each request; the origin echoes it back.
const BODY_BYTES: usize = 4096;
/// What the live heap may grow by per request, on average (capnp streaming kept ~1.4 KB).
const MAX_BYTES_PER_REQUEST: f64 = 100.0;

/// An origin that streams each request body back, recording nothing.
async fn start_echo_origin() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let echo = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(hyper::Response::new(req.into_body()))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), echo)
                    .await;
            });
        }
    });
    addr
}

/// Sends `count` echo requests on `connections` keep-alive connections at once.
async fn run_requests(script: SocketAddr, connections: usize, count: usize) {
    let body = Bytes::from(
        (0..BODY_BYTES)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..connections {
        let body = body.clone();
        let share = count / connections + usize::from(client < count % connections);
        clients.spawn(async move {
            let stream = TcpStream::connect(script).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            for _ in 0..share {
                sender.ready().await.unwrap();
                let request = hyper::Request::post("/echo")
                    .header(hyper::header::HOST, script.to_string())
                    .body(Full::new(body.clone()))
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), 200);
                let echoed = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(echoed, body, "the origin's echo came back intact");
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
}

/// Runs the warm-up and the sampled phases against `script` and checks the growth of the
/// live heap. Call with the stack started: its start (compiling the script) is not counted.
async fn assert_flat_heap(path: &str, script: SocketAddr) {
    let _profiler = dhat::Profiler::builder().testing().build();
    let generous = std::time::Duration::from_secs(600);
    let phase = || async {
        tokio::time::timeout(generous, run_requests(script, CLIENTS, PHASE))
            .await
            .expect("a phase of requests did not finish");
    };
    for _ in 0..WARM_UP_PHASES {
        phase().await;
    }
    // (requests sent since the first sample, live bytes)
    let mut samples = Vec::with_capacity(SAMPLES);
    for sample in 0..SAMPLES {
        if sample > 0 {
            phase().await;
        }
        samples.push((sample * PHASE, dhat::HeapStats::get().curr_bytes));
    }
    let median = |kept: &[(usize, usize)]| {
        let mut kept = kept.to_vec();
        kept.sort_by_key(|(_, bytes)| *bytes);
        kept[kept.len() / 2]
    };
    let (sent_before, before) = median(&samples[..SAMPLES_KEPT]);
    let (sent_after, after) = median(&samples[SAMPLES - SAMPLES_KEPT..]);
    let per_request = (after as f64 - before as f64) / (sent_after - sent_before) as f64;
    eprintln!(
        "{path}: live heap every {PHASE} requests: {:?} bytes; {per_request:.1} bytes/request",
        samples.iter().map(|(_, bytes)| bytes).collect::<Vec<_>>()
    );
    assert!(
        per_request < MAX_BYTES_PER_REQUEST,
        "{path}: the live heap grew by {per_request:.0} bytes per request (bound \
         {MAX_BYTES_PER_REQUEST}): something is kept per request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_the_mock_tunnel_keep_no_heap() {
    trace_init();
    let origin = start_echo_origin().await;
    let service_id = Uuid::new_v4();
    let stack = within(
        "starting the stack",
        MockStack::start(guests::PROXY, &[("API", service_id)]),
    )
    .await;
    stack.store.put(ServiceRoute {
        service_id,
        tunnel_id: Uuid::new_v4(),
        target: RouteTarget::Ips {
            ipv4: Some(Ipv4Addr::LOCALHOST),
            ipv6: None,
        },
        http_port: Some(origin.port()),
        https_port: None,
        tcp_port: None,
        tls: RouteTls::default(),
    });
    assert_flat_heap("mock tunnel", stack.script_addr).await;
}
