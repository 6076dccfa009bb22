//! Several iris nodes: stand-in nodes speak real HTTP/2 on real sockets, and can be killed
//! (listener and every connection closed, as when the process dies) and started again. The
//! test of names runs in its own user, network and mount namespaces, where `/etc/hosts` is a
//! file it writes, so a name resolves (through the system resolver) to loopback nodes it
//! chooses.

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
    /// Accepts connections, then reads nothing and answers nothing (a frozen process).
    Silent,
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
    if let Behaviour::Silent = behaviour {
        // Held open, never read: the client's frames (and PINGs) get no answer.
        let _ = killed.changed().await;
        drop(stream);
        return;
    }
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
                Behaviour::CloseBeforeHead | Behaviour::RefuseStream | Behaviour::Silent => {
                    unreachable!()
                }
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

/// Polls `condition` until it holds; panics with `what` after 30 s (a hang guard).
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_be_dialled_is_skipped_and_redialled_in_the_background() {
    let (origin, _) = start_origin(None).await;
    let a = FakeIris::start(Behaviour::Proxy(origin)).await;
    let b = FakeIris::start(Behaviour::Proxy(origin)).await;
    let worker = worker(&[a.addr, b.addr], |_| {});
    let a_addr = a.addr;
    let b_connects = Arc::clone(&b.connects);
    let handle = &worker;
    with_runtime_at(worker.local_addr(), |rt| async move {
        let worker = handle;
        for n in 0..2 {
            ok(rt.fetch(SERVICE, "GET", &url(n), &[], b"").await, "both up");
        }
        a.kill();
        // The first CONNECT that picks a finds its connection gone, cannot dial it and goes
        // to b; a is marked down and no later CONNECT tries it.
        for n in 2..12 {
            ok(
                rt.fetch(SERVICE, "GET", &url(n), &[], b"").await,
                "a killed",
            );
        }
        assert_eq!(b_connects.load(Ordering::SeqCst), 11);
        assert_eq!(worker.iris_nodes(), vec![(a_addr, false), (b.addr, true)]);
        // a comes back: the worker re-dials it by itself, with no fetch needed.
        let a = FakeIris::start_on(a_addr, Behaviour::Proxy(origin)).await;
        until("a is seen up again", || {
            worker.iris_nodes() == vec![(a_addr, true), (b.addr, true)]
        })
        .await;
        assert_eq!(a.connects(), 0);
        for n in 12..16 {
            ok(rt.fetch(SERVICE, "GET", &url(n), &[], b"").await, "a back");
        }
        assert_eq!((a.connects(), b.connects()), (2, 13));
    })
    .await;
    worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_tunnel_sends_the_connect_to_the_next_one() {
    let (origin, log) = start_origin(None).await;
    let unavailable =
        || ProxyError::new(ErrorCode::DestinationUnavailable).with_details("no connector here");
    let without = FakeIris::start(Behaviour::Refuse(unavailable())).await;
    let with = FakeIris::start(Behaviour::Proxy(origin)).await;
    let spread = worker(&[without.addr, with.addr], |_| {});
    with_runtime_at(spread.local_addr(), |rt| async move {
        for n in 0..4 {
            ok(rt.fetch(SERVICE, "GET", &url(n), &[], b"").await, "retried");
        }
        // Round-robin: every other CONNECT went to the node without the tunnel first.
        assert_eq!((without.connects(), with.connects()), (2, 4));
    })
    .await;
    spread.shutdown();
    assert_eq!(log.requests.lock().unwrap().len(), 4);

    // No node has it: iris's own answer comes back.
    let a = FakeIris::start(Behaviour::Refuse(unavailable())).await;
    let b = FakeIris::start(Behaviour::Refuse(unavailable())).await;
    let neither = worker(&[a.addr, b.addr], |_| {});
    with_runtime_at(neither.local_addr(), |rt| async move {
        let err = rt
            .fetch(SERVICE, "GET", &url(0), &[], b"")
            .await
            .err()
            .expect("no node has the tunnel");
        assert_eq!(err.code, ErrorCode::DestinationUnavailable, "{err}");
        assert!(
            err.details
                .as_deref()
                .unwrap_or("")
                .contains("no connector here"),
            "{err}"
        );
        assert_eq!((a.connects(), b.connects()), (1, 1));
    })
    .await;
    neither.shutdown();
}

/// Where the re-run of the name test finds its hosts file (set only inside the namespace).
const HOSTS_ENV: &str = "WVPC_TEST_HOSTS_FILE";
const CLUSTER_NAME: &str = "iris-cluster.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_several_addresses_is_several_nodes_and_followed_when_it_changes() {
    const NAME: &str = "failover::a_name_resolving_to_several_addresses_is_several_nodes_and_followed_when_it_changes";
    let Some(hosts) = std::env::var_os(HOSTS_ENV) else {
        // The name comes from /etc/hosts, which only a private mount namespace may replace:
        // the test runs again inside one (user + network + mount namespaces, loopback only).
        run_with_own_hosts_file(NAME).await;
        return;
    };
    let hosts = std::path::PathBuf::from(hosts);
    let write_hosts = |ips: &[&str]| {
        let text: String = ips
            .iter()
            .map(|ip| format!("{ip} {CLUSTER_NAME}\n"))
            .collect();
        // Written in place: the bind mount follows the file, not its name.
        std::fs::write(&hosts, text).unwrap();
    };
    write_hosts(&["127.0.0.2", "127.0.0.3"]);
    let (origin, _) = start_origin(None).await;
    let node2 = FakeIris::start_on(
        (Ipv4Addr::new(127, 0, 0, 2), 0).into(),
        Behaviour::Proxy(origin),
    )
    .await;
    let port = node2.addr.port();
    let on = |last: u8| SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), port));
    let node3 = FakeIris::start_on(on(3), Behaviour::Proxy(origin)).await;
    let node4 = FakeIris::start_on(on(4), Behaviour::Proxy(origin)).await;

    // A name that resolves to nothing stops the worker at start, naming it.
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let err = BindingWorker::start(
        listener,
        BindingWorkerConfig::with_iris(vec![format!("not-{CLUSTER_NAME}:{port}").parse().unwrap()]),
    )
    .expect_err("an unknown name");
    assert!(
        err.to_string().contains(&format!(
            "iris address not-{CLUSTER_NAME}:{port} does not resolve"
        )),
        "{err}"
    );

    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mut config =
        BindingWorkerConfig::with_iris(vec![format!("{CLUSTER_NAME}:{port}").parse().unwrap()]);
    config.iris_resolve_interval = Duration::from_millis(100);
    let worker = BindingWorker::start(listener, config).unwrap();
    assert_eq!(
        worker.iris_nodes(),
        vec![(on(2), true), (on(3), true)],
        "each address of the name is a node"
    );
    let handle = &worker;
    with_runtime_at(worker.local_addr(), |rt| async move {
        let worker = handle;
        for n in 0..4 {
            ok(
                rt.fetch(SERVICE, "GET", &url(n), &[], b"").await,
                "two nodes",
            );
        }
        assert_eq!((node2.connects(), node3.connects()), (2, 2));

        // The name now names .3 and .4: the worker follows it.
        write_hosts(&["127.0.0.3", "127.0.0.4"]);
        until("the new addresses are the nodes", || {
            worker.iris_nodes() == vec![(on(3), true), (on(4), true)]
        })
        .await;
        for n in 4..8 {
            ok(rt.fetch(SERVICE, "GET", &url(n), &[], b"").await, "renamed");
        }
        assert_eq!(
            (node2.connects(), node3.connects(), node4.connects()),
            (2, 4, 2)
        );

        // Between two periodic lookups, a node that cannot be dialled has the name looked up
        // again: a worker that looks only once an hour still follows .3 → .2.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut config =
            BindingWorkerConfig::with_iris(vec![format!("{CLUSTER_NAME}:{port}").parse().unwrap()]);
        config.iris_resolve_interval = Duration::from_secs(3600);
        let hourly = BindingWorker::start(listener, config).unwrap();
        assert_eq!(hourly.iris_nodes(), vec![(on(3), true), (on(4), true)]);
        let hourly_rt = super::TestRuntime::connect(hourly.local_addr()).await;
        write_hosts(&["127.0.0.2", "127.0.0.4"]);
        node3.kill();
        for n in 8..10 {
            ok(
                hourly_rt.fetch(SERVICE, "GET", &url(n), &[], b"").await,
                ".3 killed",
            );
        }
        until("the name looked up again after the failed dial", || {
            hourly.iris_nodes() == vec![(on(2), true), (on(4), true)]
        })
        .await;
        drop(hourly_rt);
        hourly.shutdown();
    })
    .await;
    worker.shutdown();
}

/// Runs test `name` of this binary again in new user, network and mount namespaces where
/// `/etc/hosts` is a file the test writes; fails with its output when it fails. Prints
/// `SKIPPED (namespaces): why` and returns where such namespaces cannot be made.
async fn run_with_own_hosts_file(name: &str) {
    let dir = std::env::temp_dir().join(format!("wvpc-hosts-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "").unwrap();
    let exe = std::env::current_exe().expect("the test binary's path");
    let run = |tail: Vec<std::ffi::OsString>| {
        let mut cmd = std::process::Command::new("unshare");
        cmd.args([
            "--user",
            "--map-root-user",
            "--net",
            "--mount",
            "--",
            "sh",
            "-c",
        ])
        .arg(r#"ip link set lo up && mount --bind "$0" /etc/hosts && exec "$@""#)
        .arg(&hosts)
        .args(tail)
        .env(HOSTS_ENV, &hosts);
        cmd
    };
    let probe = tokio::task::spawn_blocking({
        let mut cmd = run(vec!["true".into()]);
        move || cmd.output()
    })
    .await
    .unwrap();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            println!(
                "SKIPPED (namespaces): `unshare --user --map-root-user --net --mount` with a \
                 bind-mounted /etc/hosts failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        Err(err) => {
            println!("SKIPPED (namespaces): cannot run `unshare`: {err}");
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
    }
    let mut cmd = run(vec![
        exe.into_os_string(),
        name.into(),
        "--exact".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("running the test in its namespaces");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the run in namespaces failed ({})",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the run in namespaces did not run {name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_on_a_node_gone_silent_goes_to_the_next_one_once_its_ping_is_unanswered() {
    let (origin, log) = start_origin(None).await;
    let silent = FakeIris::start(Behaviour::Silent).await;
    let healthy = FakeIris::start(Behaviour::Proxy(origin)).await;
    let worker = worker(&[silent.addr, healthy.addr], |_| {});
    with_runtime_at(worker.local_addr(), |rt| async move {
        // The first CONNECT goes to the silent node; its connection's PING (after 10 s
        // without a frame) gets no answer within 5 s, the connection is closed and the
        // CONNECT goes to the other node — before the 30 s CONNECT timeout.
        let started = std::time::Instant::now();
        ok(
            rt.fetch(SERVICE, "GET", &url(0), &[], b"").await,
            "sent on after the silent node's PING",
        );
        eprintln!(
            "answered through the other node after {:.2?}",
            started.elapsed()
        );
        assert_eq!(healthy.connects(), 1);
        drop(silent);
    })
    .await;
    worker.shutdown();
    assert_eq!(log.requests.lock().unwrap().len(), 1);
}
