//! Several iris nodes: stand-in nodes speak real HTTP/2 on real sockets, and can be killed
//! (listener and every connection closed, as when the process dies) and started again.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use uuid::Uuid;
use wvpc_binding_worker::{BindingWorker, BindingWorkerConfig, BindingWorkerHandle};
use wvpc_errors::{ErrorCode, ProxyError};

use super::{Fetched, start_origin, with_runtime_at};

/// How a stand-in iris node answers every CONNECT.
#[derive(Clone)]
enum Behaviour {
    /// `200`, then the stream is piped to this origin.
    Proxy(SocketAddr),
    /// A failure status with this error in `Proxy-Status`.
    Refuse(ProxyError),
    /// No answer, ever.
    Hang,
    /// The whole connection closes once the CONNECT arrived, before any answer.
    CloseBeforeHead,
    /// The stream is reset with REFUSED_STREAM.
    RefuseStream,
}

/// A stand-in iris node that counts the CONNECTs it received.
struct FakeIris {
    addr: SocketAddr,
    connects: Arc<AtomicUsize>,
    kill: watch::Sender<bool>,
}

impl FakeIris {
    async fn start(behaviour: Behaviour) -> Self {
        Self::start_on((Ipv4Addr::LOCALHOST, 0).into(), behaviour).await
    }

    /// On `addr` (a node coming back on its old port).
    async fn start_on(addr: SocketAddr, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = Arc::new(AtomicUsize::new(0));
        let (kill, killed) = watch::channel(false);
        let counted = Arc::clone(&connects);
        tokio::spawn(async move {
            let mut until_killed = killed.clone();
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    _ = until_killed.changed() => return,
                };
                stream.set_nodelay(true).unwrap();
                tokio::spawn(serve_connection(
                    stream,
                    behaviour.clone(),
                    Arc::clone(&counted),
                    killed.clone(),
                ));
            }
        });
        Self {
            addr,
            connects,
            kill,
        }
    }

    fn connects(&self) -> usize {
        self.connects.load(Ordering::SeqCst)
    }

    /// Closes the listener, every connection and every piped stream.
    fn kill(self) -> SocketAddr {
        self.kill.send_replace(true);
        self.addr
    }
}

async fn serve_connection(
    stream: TcpStream,
    behaviour: Behaviour,
    connects: Arc<AtomicUsize>,
    mut killed: watch::Receiver<bool>,
) {
    if let Behaviour::CloseBeforeHead | Behaviour::RefuseStream = behaviour {
        // Raw h2: hyper's server cannot refuse a stream or drop a connection mid-request.
        let Ok(mut connection) = h2::server::handshake(stream).await else {
            return;
        };
        while let Some(Ok((_request, mut respond))) = connection.accept().await {
            connects.fetch_add(1, Ordering::SeqCst);
            match behaviour {
                Behaviour::RefuseStream => respond.send_reset(h2::Reason::REFUSED_STREAM),
                _ => return,
            }
        }
        return;
    }
    let piped = killed.clone();
    let service = service_fn(move |mut request: Request<Incoming>| {
        connects.fetch_add(1, Ordering::SeqCst);
        let behaviour = behaviour.clone();
        let mut killed = piped.clone();
        async move {
            match behaviour {
                Behaviour::Proxy(origin) => {
                    let upgrade = hyper::upgrade::on(&mut request);
                    tokio::spawn(async move {
                        let Ok(upgraded) = upgrade.await else { return };
                        let Ok(mut origin) = TcpStream::connect(origin).await else {
                            return;
                        };
                        let mut client = TokioIo::new(upgraded);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut origin) => {}
                            _ = killed.changed() => {}
                        }
                    });
                    Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
                }
                Behaviour::Refuse(err) => Ok(Response::builder()
                    .status(502)
                    .header("proxy-status", err.to_proxy_status("fake-iris"))
                    .body(Empty::new())
                    .unwrap()),
                Behaviour::Hang => std::future::pending().await,
                Behaviour::CloseBeforeHead | Behaviour::RefuseStream => unreachable!(),
            }
        }
    });
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        _ = killed.changed() => {}
    }
}

const SERVICE: Uuid = Uuid::from_u128(0xfa11);

fn worker(
    nodes: &[SocketAddr],
    tune: impl FnOnce(&mut BindingWorkerConfig),
) -> BindingWorkerHandle {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mut config = BindingWorkerConfig::with_iris_nodes(nodes.to_vec());
    tune(&mut config);
    BindingWorker::start(listener, config).unwrap()
}

/// A fresh host per call: origin connections are pooled per host, so each one needs a new
/// CONNECT.
fn url(n: usize) -> String {
    format!("http://host-{n}.internal/")
}

fn ok(fetched: Result<Fetched, ProxyError>, what: &str) {
    let fetched = fetched.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        (fetched.status, fetched.body.as_slice()),
        (200, &b"hello from the origin"[..]),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_spread_over_the_iris_nodes_and_survive_one_being_killed() {
    let (origin, _) = start_origin(None).await;
    let a = FakeIris::start(Behaviour::Proxy(origin)).await;
    let b = FakeIris::start(Behaviour::Proxy(origin)).await;
    let worker = worker(&[a.addr, b.addr], |_| {});
    let b_connects = Arc::clone(&b.connects);
    with_runtime_at(worker.local_addr(), |rt| async move {
        for n in 0..4 {
            ok(rt.fetch(SERVICE, "GET", &url(n), &[], b"").await, "both up");
        }
        // Round-robin: each node got half.
        assert_eq!((a.connects(), b.connects()), (2, 2));
        a.kill();
        for n in 4..10 {
            ok(
                rt.fetch(SERVICE, "GET", &url(n), &[], b"").await,
                "a killed",
            );
        }
        assert_eq!(b_connects.load(Ordering::SeqCst), 8);
    })
    .await;
    worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_iris_node_down_fetches_are_destination_unavailable_until_one_returns() {
    let (origin, _) = start_origin(None).await;
    let a = FakeIris::start(Behaviour::Proxy(origin)).await;
    let b = FakeIris::start(Behaviour::Proxy(origin)).await;
    let worker = worker(&[a.addr, b.addr], |_| {});
    with_runtime_at(worker.local_addr(), |rt| async move {
        ok(rt.fetch(SERVICE, "GET", &url(0), &[], b"").await, "before");
        let (a_addr, b_addr) = (a.kill(), b.kill());
        for n in 1..4 {
            let err = rt
                .fetch(SERVICE, "GET", &url(n), &[], b"")
                .await
                .err()
                .expect("no iris node is up");
            assert_eq!(err.code, ErrorCode::DestinationUnavailable, "{err}");
            let details = err.details.unwrap();
            assert!(
                details.contains(&a_addr.to_string()) && details.contains(&b_addr.to_string()),
                "{details}"
            );
        }
        // b comes back on its port: the worker finds it by itself once its backoff is over
        // (a condition poll, bounded by the test).
        let b = FakeIris::start_on(b_addr, Behaviour::Proxy(origin)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut n = 10;
        loop {
            n += 1;
            match rt.fetch(SERVICE, "GET", &url(n), &[], b"").await {
                Ok(fetched) => {
                    assert_eq!(fetched.status, 200);
                    break;
                }
                Err(err) => {
                    assert_eq!(err.code, ErrorCode::DestinationUnavailable, "{err}");
                    assert!(std::time::Instant::now() < deadline, "never recovered");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        assert!(b.connects() >= 1);
        // And it stays up.
        ok(
            rt.fetch(SERVICE, "GET", &url(1000), &[], b"").await,
            "after",
        );
    })
    .await;
    worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_from_iris_is_final_and_never_sent_to_another_node() {
    let (origin, _) = start_origin(None).await;
    // The first CONNECT goes to the first node.
    let refusing = FakeIris::start(Behaviour::Refuse(
        ProxyError::new(ErrorCode::DestinationNotFound).with_details("no such service"),
    ))
    .await;
    let healthy = FakeIris::start(Behaviour::Proxy(origin)).await;
    let worker = worker(&[refusing.addr, healthy.addr], |_| {});
    with_runtime_at(worker.local_addr(), |rt| async move {
        let err = rt
            .fetch(SERVICE, "GET", &url(0), &[], b"")
            .await
            .err()
            .expect("iris refused");
        assert_eq!(err.code, ErrorCode::DestinationNotFound, "{err}");
        assert_eq!((refusing.connects(), healthy.connects()), (1, 0));
    })
    .await;
    worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_timed_out_is_not_sent_to_another_node() {
    let (origin, _) = start_origin(None).await;
    let hanging = FakeIris::start(Behaviour::Hang).await;
    let healthy = FakeIris::start(Behaviour::Proxy(origin)).await;
    let worker = worker(&[hanging.addr, healthy.addr], |config| {
        config.connect_timeout = Duration::from_millis(300);
    });
    with_runtime_at(worker.local_addr(), |rt| async move {
        let err = rt
            .fetch(SERVICE, "GET", &url(0), &[], b"")
            .await
            .err()
            .expect("iris never answered");
        assert_eq!(err.code, ErrorCode::ConnectionTimeout, "{err}");
        // iris may still have been dialling the origin: sending it elsewhere could connect
        // twice.
        assert_eq!((hanging.connects(), healthy.connects()), (1, 0));
    })
    .await;
    worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_left_unanswered_by_its_node_goes_to_the_next_one() {
    let (origin, log) = start_origin(None).await;
    for behaviour in [Behaviour::CloseBeforeHead, Behaviour::RefuseStream] {
        let failing = FakeIris::start(behaviour).await;
        let healthy = FakeIris::start(Behaviour::Proxy(origin)).await;
        let worker = worker(&[failing.addr, healthy.addr], |_| {});
        with_runtime_at(worker.local_addr(), |rt| async move {
            ok(
                rt.fetch(SERVICE, "GET", &url(0), &[], b"").await,
                "retried elsewhere",
            );
            assert_eq!((failing.connects(), healthy.connects()), (1, 1));
        })
        .await;
        worker.shutdown();
    }
    // The origin saw each request once.
    assert_eq!(log.requests.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_iris_nodes_is_refused_at_start() {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let err = BindingWorker::start(listener, BindingWorkerConfig::with_iris_nodes(vec![]))
        .expect_err("no iris node");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("at least one iris"), "{err}");
}
