//! A 1 GiB response streams through the whole real path — origin → connector → QUIC tunnel →
//! iris → binding-worker → capnp → runtime → script (`examples/proxy`) → client — with
//! bounded memory.
//!
//! Its own test binary, so that the peak resident set it measures belongs to this one
//! transfer (every component runs in this process). The origin serves slices of one shared
//! tape and the client checks each chunk as it arrives, so neither end holds the body.
//!
//! The script copies the body chunk by chunk; its CPU limit counts only the time its own code
//! runs, not the waits for the next chunk, so a long transfer is not cut by it.

use std::time::Instant;

use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use wvpc_tests::origin::{is_pattern_at, pattern_tape};
use wvpc_tests::real::RealWorld;
use wvpc_tests::{trace_init, within};

const SIZE: usize = 1 << 30;
/// Generous: every hop's buffers and flow-control windows together are a few MiB.
const MAX_GROWTH: u64 = 256 << 20;

/// `VmHWM` or `VmRSS` of this process, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} missing from /proc/self/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number of kB");
    kib * 1024
}

/// Resets `VmHWM` to the current resident set (Linux `clear_refs` value 5).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_512_mib_response_streams_through_with_bounded_memory() {
    trace_init();
    let world = within("starting the real path", RealWorld::start())
        .await
        .expect("starting the real path");
    let addr = world.stack.script_addr;

    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = |path: String| {
        hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };

    // Warm every hop (instance pool, connections, DNS cache) before the baseline.
    let warm = within("warm-up", sender.send_request(get("/big/1048576".into())))
        .await
        .unwrap();
    let warm_body = warm.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(warm_body.len(), 1 << 20);
    sender.ready().await.unwrap();

    let baseline = status_bytes("VmRSS:");
    reset_peak();
    let started = Instant::now();
    let response = within(
        "the response head",
        sender.send_request(get(format!("/big/{SIZE}"))),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let tape = pattern_tape();
    let mut body = response.into_body();
    let mut received = 0usize;
    let mut intact = true;
    // A hang guard only (the transfer takes seconds); the figure is printed, not asserted.
    tokio::time::timeout(std::time::Duration::from_secs(300), async {
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("the body streams without error");
            if let Ok(data) = frame.into_data() {
                intact &= is_pattern_at(&tape, received, &data);
                received += data.len();
            }
        }
    })
    .await
    .expect("the body did not finish within 300 s");
    let elapsed = started.elapsed();
    let peak = status_bytes("VmHWM:");
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "{} MiB through the real path: {:.1} s ({:.0} MiB/s); RSS baseline {} MiB, peak {} MiB, \
         growth {} MiB",
        SIZE >> 20,
        elapsed.as_secs_f64(),
        (SIZE as f64 / (1 << 20) as f64) / elapsed.as_secs_f64(),
        baseline >> 20,
        peak >> 20,
        growth >> 20,
    );
    assert_eq!(received, SIZE, "every byte arrived");
    assert!(intact, "the body arrived corrupted");
    assert!(
        growth < MAX_GROWTH,
        "memory grew by {} MiB while streaming {} MiB (bound {} MiB)",
        growth >> 20,
        SIZE >> 20,
        MAX_GROWTH >> 20
    );
}
