//! Who gets in and when: the platform handshake on every runtime connection, and draining.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use wvpc_errors::ProxyError;
use wvpc_iris::mock::MemoryStore;
use wvpc_schemas::PlatformSecret;
use wvpc_schemas::binding_auth::HandshakeError;

use super::{
    API, BodyCollector, Head, Receiver, TestRuntime, service, start_origin, start_worker_with,
};

fn api_store(origin: SocketAddr) -> MemoryStore {
    let store = MemoryStore::default();
    store.put(service(API, origin.port(), true).1);
    store
}

/// A fetch whose response is watched as it streams: its head, the end of its body, and the
/// body so far.
struct Streaming {
    head: oneshot::Receiver<Head>,
    done: oneshot::Receiver<Result<(), ProxyError>>,
    body: Rc<BodyCollector>,
}

fn start_fetch(rt: &TestRuntime, url: &str) -> Streaming {
    let (head_tx, head) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    let body = Rc::new(BodyCollector {
        done: RefCell::new(Some(done_tx)),
        ..BodyCollector::default()
    });
    let mut call = rt.binding.fetch_request();
    {
        let mut p = call.get();
        p.reborrow().init_context().set_service_id(API.to_string());
        let mut request = p.reborrow().init_head();
        request.set_method("GET");
        request.set_url(url);
        p.set_response(capnp_rpc::new_client(Receiver {
            head: RefCell::new(Some(head_tx)),
            body: Rc::clone(&body),
        }));
    }
    let sent = call.send();
    let sink = sent.pipeline.get_request_body();
    tokio::task::spawn_local(async move {
        let _ = sink.end_request().send().promise.await;
        let _ = sent.promise.await;
    });
    Streaming { head, done, body }
}

/// One `fetch` call, for whether the binding-worker takes it at all.
async fn bare_call(rt: &TestRuntime) -> Result<(), capnp::Error> {
    let mut call = rt.binding.fetch_request();
    call.get().init_context().set_service_id(API.to_string());
    call.send().promise.await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_runtimes_holding_the_platform_secret_get_in() {
    let (origin, log) = start_origin(None).await;
    let secret = PlatformSecret::generate().unwrap();
    let worker = start_worker_with(api_store(origin), |config| {
        config.secret = Some(secret.clone());
    })
    .await;
    let addr = worker.local_addr();
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let rt = TestRuntime::connect_with(addr, Some(&secret))
                .await
                .unwrap();
            let res = rt
                .fetch(API, "GET", "http://api.internal/", &[], b"")
                .await
                .unwrap();
            assert_eq!(res.status, 200);

            // Another secret: refused in the handshake, before any call.
            let other = PlatformSecret::generate().unwrap();
            let err = TestRuntime::connect_with(addr, Some(&other))
                .await
                .err()
                .expect("a runtime with another secret is refused");
            assert!(
                matches!(err, HandshakeError::RefusedByBindingWorker),
                "{err}"
            );

            // No secret (capnp at once): the connection is closed and the call fails.
            let rt_without = TestRuntime::connect_with(addr, None).await.unwrap();
            let err = bare_call(&rt_without).await.expect_err("refused");
            assert_eq!(err.kind, capnp::ErrorKind::Disconnected, "{err}");

            // Another protocol, and garbage: closed without a word; the worker carries on.
            for garbage in [
                &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
                &[0xff; 3000][..],
                &b"wvpc-bnd"[..],
            ] {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream.write_all(garbage).await.unwrap();
                stream.shutdown().await.unwrap();
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer).await;
                assert!(answer.is_empty(), "{answer:?}");
            }
            let res = rt
                .fetch(API, "GET", "http://api.internal/again", &[], b"")
                .await
                .unwrap();
            assert_eq!(res.status, 200);
        })
        .await;
    // Only the two authenticated fetches reached the origin.
    assert_eq!(log.requests.lock().unwrap().len(), 2);
    worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_with_a_secret_does_not_talk_to_a_worker_without_one() {
    let (origin, log) = start_origin(None).await;
    let worker = start_worker_with(api_store(origin), |_| {}).await;
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let secret = PlatformSecret::generate().unwrap();
            let err = TestRuntime::connect_with(worker.local_addr(), Some(&secret))
                .await
                .err()
                .expect("no proof from the worker");
            // The worker read the hello as capnp and answered in capnp.
            assert!(
                matches!(&err, HandshakeError::NotAPeer(what) if what.contains("capnp")),
                "{err}"
            );
        })
        .await;
    assert!(log.requests.lock().unwrap().is_empty());
    worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_a_streaming_response_finish_and_refuses_what_comes_after() {
    let (origin, log) = start_origin(None).await;
    let worker = start_worker_with(api_store(origin), |_| {}).await;
    let addr = worker.local_addr();
    let gate = Arc::clone(&log.gate);
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let rt = TestRuntime::connect(addr).await;
            let streaming = start_fetch(&rt, "http://api.internal/gated");
            let (status, _) = streaming.head.await.unwrap().unwrap();
            assert_eq!(status, 200);
            assert_eq!(worker.fetches_in_flight(), 1);

            let drained = tokio::spawn(worker.drain(Duration::from_secs(120)));
            // New connections are refused once the listener is closed (a condition poll,
            // bounded by the test).
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                match TcpStream::connect(addr).await {
                    // Reset: it was still queued when the listener closed.
                    Err(err) => {
                        assert!(
                            matches!(
                                err.kind(),
                                std::io::ErrorKind::ConnectionRefused
                                    | std::io::ErrorKind::ConnectionReset
                            ),
                            "{err}"
                        );
                        break;
                    }
                    Ok(_) => {
                        assert!(std::time::Instant::now() < deadline, "still accepting");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            // A new fetch on the open connection is refused as disconnected, which a
            // runtime answers by sending it to another binding-worker.
            let err = bare_call(&rt).await.expect_err("draining");
            assert_eq!(err.kind, capnp::ErrorKind::Disconnected, "{err}");

            // The response in flight holds the drain until its body is complete.
            assert!(!drained.is_finished());
            gate.notify_one();
            streaming.done.await.unwrap().unwrap();
            assert_eq!(streaming.body.bytes.borrow().as_slice(), b"first-rest");
            assert!(drained.await.unwrap(), "every fetch finished");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_what_is_still_running_after_the_grace_period() {
    let (origin, _) = start_origin(None).await;
    let worker = start_worker_with(api_store(origin), |_| {}).await;
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let rt = TestRuntime::connect(worker.local_addr()).await;
            let streaming = start_fetch(&rt, "http://api.internal/stall-body");
            let (status, _) = streaming.head.await.unwrap().unwrap();
            assert_eq!(status, 200);
            assert!(!worker.drain(Duration::from_millis(200)).await);
            // The connection closed under the body: it never completes, and the runtime's
            // end of it is released.
            drop(streaming.body);
            assert!(streaming.done.await.is_err());
        })
        .await;
}
