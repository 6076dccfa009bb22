//! Several binding-workers: fetches spread over them, fail over when one stops, fail with
//! `destination_unavailable` when none is up and recover by themselves; and the platform
//! handshake in front of each connection.

use std::time::{Duration, Instant};

use wvpc_runtime::PlatformSecret;

use crate::fake_binding_worker::FakeBindingWorker;
use crate::{Client, guests, serve_through};

#[tokio::test(flavor = "multi_thread")]
async fn fetches_spread_over_binding_workers_and_fail_over_when_one_stops() {
    let a = FakeBindingWorker::start();
    let b = FakeBindingWorker::start();
    let served = serve_through(&guests::guests().proxy, vec![a.addr, b.addr], None).await;
    let mut client = Client::connect(served.addr).await;
    for i in 0..4 {
        let answer = client.get(&format!("/both/{i}")).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    // Round-robin: each got a connection, and kept it.
    assert_eq!((a.connections(), b.connections()), (1, 1));

    a.stop();
    for i in 0..6 {
        let answer = client.get(&format!("/b-only/{i}")).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert!(answer.text().contains(&format!("path=/b-only/{i}\n")));
    }
    assert_eq!(b.connections(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_every_binding_worker_down_fetches_are_destination_unavailable_until_one_returns() {
    let a = FakeBindingWorker::start();
    let b = FakeBindingWorker::start();
    let served = serve_through(&guests::guests().proxy, vec![a.addr, b.addr], None).await;
    let mut client = Client::connect(served.addr).await;
    assert_eq!(client.get("/before").await.status, 200);

    let (a_addr, _) = (a.stop(), b.stop());
    for _ in 0..3 {
        let answer = client.get("/down").await;
        assert_eq!(
            (answer.status, answer.text()),
            (502, "ProxyError: destination_unavailable")
        );
    }
    // a comes back on its port: the runtime finds it by itself once its backoff is over (a
    // condition poll, bounded by the test).
    let a = FakeBindingWorker::start_on(a_addr, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client.get("/again").await;
        if answer.status == 200 {
            assert!(answer.text().contains("path=/again\n"), "{}", answer.text());
            break;
        }
        assert_eq!(answer.text(), "ProxyError: destination_unavailable");
        assert!(Instant::now() < deadline, "the runtime never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.connections(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn binding_workers_are_used_only_after_the_platform_handshake() {
    let secret = PlatformSecret::generate().expect("secret");
    let fake = FakeBindingWorker::start_on("127.0.0.1:0".parse().unwrap(), Some(secret.clone()));

    let trusted = serve_through(&guests::guests().proxy, vec![fake.addr], Some(secret)).await;
    let answer = Client::connect(trusted.addr).await.get("/in").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    // Another secret: the handshake fails, so the binding-worker counts as unreachable.
    let other = PlatformSecret::generate().expect("secret");
    let stranger = serve_through(&guests::guests().proxy, vec![fake.addr], Some(other)).await;
    let answer = Client::connect(stranger.addr).await.get("/out").await;
    assert_eq!(
        (answer.status, answer.text()),
        (502, "ProxyError: destination_unavailable")
    );
    assert_eq!(fake.connections(), 2);
}
