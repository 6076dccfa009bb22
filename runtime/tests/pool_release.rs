//! The instance pool keeps, in each slot a burst used, the memory its instance wrote; once
//! traffic is quiet the runtime gives it back by moving the script to a fresh engine, and
//! keeps serving. Idle instances kept for reuse do not hold the old engine.
//!
//! Its own test binary: the engine, and so the pool, is shared by every runtime of a process.

#[expect(
    dead_code,
    reason = "shared with the dev_server tests; this one runs only `checks`"
)]
#[path = "dev_server/guests.rs"]
mod guests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use wvpc_runtime::{PoolRelease, Runtime, RuntimeOptions, ScriptConfig};

/// Guard against a hung test; never an assertion about speed.
const GUARD: Duration = Duration::from_secs(120);

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_burst_the_instance_pool_is_given_back_once_traffic_is_quiet() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("wrangler.jsonc");
    let main = guests::guests().checks.display().to_string();
    // `/alloc` writes memory until its 4 MiB limit stops it.
    let config =
        format!(r#"{{ "name": "pool", "main": {main:?}, "limits": {{ "memory_mb": 4 }} }}"#);
    std::fs::write(&config_path, config).expect("write config");
    let config = ScriptConfig::load(&config_path).expect("valid config");
    let options = RuntimeOptions {
        // Never dialled: no request of this test fetches through a binding.
        binding_workers: vec!["127.0.0.1:9".parse().unwrap()],
        binding_secret: None,
        account: "acct-1".into(),
        exchange_tap: None,
        metrics: None,
    };
    let runtime = Arc::new(Runtime::new(&config, options).expect("runtime"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(runtime.clone().serve(listener));

    let burst = futures::future::join_all((0..8).map(|_| get(addr, "/alloc")));
    for (status, body) in tokio::time::timeout(GUARD, burst)
        .await
        .expect("the burst ended")
    {
        assert_eq!(status, 503, "{body}");
    }
    // An instance kept for the script's next request, on the engine about to be retired.
    assert_eq!(get(addr, "/counter").await, (200, "count=1".to_owned()));
    tokio::time::timeout(GUARD, async {
        while runtime.idle_instances() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the instance was kept");
    let kept = runtime.pool_stats().expect("a pooled engine");
    // Each slot keeps up to 1 MiB of what its instance wrote.
    assert!(kept.idle_resident_bytes >= 1 << 20, "{kept:?}");
    assert_eq!(kept.releases, 0);

    let mut releases = runtime.pool_releases();
    runtime.set_pool_release(PoolRelease {
        min_idle_resident_bytes: 1 << 20,
        quiet_period: Duration::from_millis(100),
    });
    tokio::time::timeout(GUARD, releases.wait_for(|count| *count >= 1))
        .await
        .expect("the pool was given back")
        .expect("the runtime is alive");

    let fresh = runtime.pool_stats().expect("a pooled engine");
    assert_eq!(fresh.idle_resident_bytes, 0, "{fresh:?}");
    assert_eq!(fresh.idle_slots, 0, "{fresh:?}");
    assert_eq!(fresh.releases, 1);
    // No request was running on the old pool, and its idle instance went with the old
    // version of the script: the pool is freed already.
    assert_eq!(fresh.retired_pools, 0, "{fresh:?}");
    assert_eq!(runtime.idle_instances(), 0);
    assert_eq!(get(addr, "/counter").await, (200, "count=1".to_owned()));
    // The script serves on, from the fresh engine.
    assert_eq!(get(addr, "/print").await, (200, "printed".to_owned()));
    assert_eq!(runtime.pool_stats().unwrap().releases, 1);
}
