//! Live configuration on the real path: iris follows service changes made by another
//! connection to the directory (as `wvpc service update` in another process would) while
//! steady load runs, with zero failed requests; deleting the service turns new requests into
//! `destination_not_found`.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wvpc_directory::{HostInput, ResolverNetworkInput, ServiceInput};
use wvpc_tests::origin::Origin;
use wvpc_tests::real::{ORIGIN_IP, RealWorld};
use wvpc_tests::{client, trace_init, within};

/// Load that runs until stopped, recording every answer that is not the origin's 200.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(world: &RealWorld, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let tasks = (0..workers)
            .map(|w| {
                let (stop, ok, addr) = (stop.clone(), ok.clone(), world.stack.script_addr);
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let reply = client::get(addr, &format!("/load/{w}/{i}")).await;
                        if reply.status == 200 && reply.text().starts_with("hello from origin") {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures.push(format!("{} {}", reply.status, reply.text()));
                        }
                        i += 1;
                    }
                    failures
                })
            })
            .collect();
        Load { stop, ok, tasks }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for task in self.tasks {
            failures.extend(task.await.unwrap());
        }
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// Waits until `origin` has seen a load request; returns how long that took.
async fn first_load_request(origin: &Origin, since: Instant) -> Duration {
    within("the changed service to receive traffic", async {
        while !origin.seen().iter().any(|s| s.path.starts_with("/load/")) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    since.elapsed()
}

fn hostname_service(name: &str, tunnel: &str, resolver: &str, port: u16) -> ServiceInput {
    let mut input = ServiceInput::http(
        "api",
        HostInput {
            hostname: Some(name.into()),
            resolver_network: Some(ResolverNetworkInput {
                virtual_network_id: None,
                tunnel_id: Some(tunnel.to_owned()),
                resolver_ips: Some(vec![resolver.to_owned()]),
            }),
            ..HostInput::default()
        },
    );
    input.http_port = Some(i64::from(port));
    input
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iris_follows_port_and_hostname_changes_under_load_without_errors() {
    trace_init();
    let world = within("starting the real path", RealWorld::start())
        .await
        .unwrap();
    // Another connection to the same file, as another process would have.
    let writer = world.stack.directory.reopen().unwrap();
    let service = writer.list_services(None).unwrap().remove(0);
    let tunnel = service.tunnel_id().to_string();
    let resolver = world.dns.addr.to_string();

    let second = Origin::start(ORIGIN_IP).await.unwrap();
    let third_ip = "127.0.0.3";
    let third = Origin::start(third_ip).await.unwrap();
    world
        .dns
        .table
        .insert("api2.internal", third_ip.parse::<IpAddr>().unwrap());

    let load = Load::start(&world, 3);
    first_load_request(&world.origin, Instant::now()).await;

    // New port, same hostname.
    let changed = Instant::now();
    writer
        .replace_service(
            service.service_id,
            &hostname_service("api.internal", &tunnel, &resolver, second.addr.port()),
        )
        .unwrap();
    let port_pickup = first_load_request(&second, changed).await;

    // New hostname (resolved through the tunnel to another address) and port.
    let changed = Instant::now();
    writer
        .replace_service(
            service.service_id,
            &hostname_service("api2.internal", &tunnel, &resolver, third.addr.port()),
        )
        .unwrap();
    let hostname_pickup = first_load_request(&third, changed).await;

    let (ok, failures) = load.finish().await;
    eprintln!(
        "live config: {ok} requests without error; port change served after {port_pickup:?}, \
         hostname change after {hostname_pickup:?}"
    );
    assert!(
        failures.is_empty(),
        "failed requests during the changes: {failures:?}"
    );
    assert!(ok > 0);
    assert!(
        third
            .seen()
            .iter()
            .all(|s| s.host.as_deref() == Some("api.internal")),
        "the URL's host is kept as Host"
    );

    // Deleted: new requests fail with destination_not_found; until then, only 200s.
    let deleted = Instant::now();
    writer.delete_service(service.service_id).unwrap();
    let refused = within("requests to the deleted service to be refused", async {
        loop {
            let reply = client::get(world.stack.script_addr, "/after-delete").await;
            match reply.status {
                200 => continue,
                _ => return reply.text(),
            }
        }
    })
    .await;
    eprintln!(
        "live config: delete refused new requests after {:?}",
        deleted.elapsed()
    );
    assert!(refused.contains("destination_not_found"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_in_flight_finishes_after_its_service_is_deleted() {
    use bytes::Buf as _;
    use http_body_util::BodyExt as _;

    trace_init();
    let world = within("starting the real path", RealWorld::start())
        .await
        .unwrap();
    let writer = world.stack.directory.reopen().unwrap();
    let service = writer.list_services(None).unwrap().remove(0);

    // A body far larger than every buffer on the path: while the client does not read, the
    // transfer is stalled mid-way by flow control.
    const SIZE: usize = 64 * 1024 * 1024;
    let stream = tokio::net::TcpStream::connect(world.stack.script_addr)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(format!("/big/{SIZE}"))
        .header(http::header::HOST, "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = within("the response head", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = Vec::with_capacity(SIZE);
    let first = within("the first body bytes", body.frame())
        .await
        .unwrap()
        .unwrap();
    received.extend_from_slice(first.into_data().unwrap().chunk());
    assert!(received.len() < SIZE);

    writer.delete_service(service.service_id).unwrap();
    let refused = within("new requests to be refused", async {
        loop {
            let reply = client::get(world.stack.script_addr, "/new").await;
            if reply.status != 200 {
                return reply.text();
            }
        }
    })
    .await;
    assert!(refused.contains("destination_not_found"), "{refused}");

    // The stalled response still completes, intact.
    within("the rest of the body", async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                received.extend_from_slice(data.chunk());
            }
        }
    })
    .await;
    assert_eq!(received.len(), SIZE);
    assert!(wvpc_tests::origin::is_pattern(&received));
}
