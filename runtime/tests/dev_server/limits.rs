//! Per-request limits (`limits` in the script's config): each stops only its own request, with
//! its own status or error, and the next request to the same script runs normally.

use std::sync::{Arc, Mutex};

use wvpc_runtime::{PrefixedOutput, ScriptLine, ScriptOutput, ScriptStream};

use crate::fake_binding_worker::FakeBindingWorker;
use crate::{Client, guests, serve_with};

/// Asserts that the script still serves a normal request (with a binding fetch) afterwards.
async fn next_request_succeeds(client: &mut Client) {
    let after = client.get("/buffered/fine").await;
    assert_eq!(after.status, 200, "{:?}", after.body);
    assert!(after.text().contains("path=/fine\n"), "{}", after.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_loop_hits_the_cpu_limit_alone() {
    let fake = FakeBindingWorker::start();
    let served = serve_with(
        &guests::guests().checks,
        fake.addr,
        r#"{ "cpu_ms": 100 }"#,
        Arc::new(PrefixedOutput),
    )
    .await;
    let mut client = Client::connect(served.addr).await;
    // Another request in flight meanwhile is not disturbed.
    let mut other = Client::connect(served.addr).await;
    let (looped, fine) = tokio::join!(client.get("/loop"), other.get("/buffered/during"));
    assert_eq!(looped.status, 503, "{:?}", looped.body);
    assert_eq!(
        looped.text(),
        format!(
            "the script exceeded its CPU time limit (limits.cpu_ms = 100; request id {})\n",
            looped.request_id()
        )
    );
    assert_eq!(fine.status, 200, "{:?}", fine.body);
    next_request_succeeds(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unbounded_allocation_hits_the_memory_limit_alone() {
    let fake = FakeBindingWorker::start();
    let served = serve_with(
        &guests::guests().checks,
        fake.addr,
        r#"{ "memory_mb": 16 }"#,
        Arc::new(PrefixedOutput),
    )
    .await;
    let mut client = Client::connect(served.addr).await;
    let hoarded = client.get("/alloc").await;
    assert_eq!(hoarded.status, 503, "{:?}", hoarded.body);
    assert!(
        hoarded
            .text()
            .starts_with("the script exceeded its memory limit (limits.memory_mb = 16;"),
        "{}",
        hoarded.text()
    );
    next_request_succeeds(&mut client).await;
    // Twice: the slot the failed instance used is clean for the next one.
    assert_eq!(client.get("/alloc").await.status, 503);
    next_request_succeeds(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_waiting_too_long_hits_the_wall_clock_limit() {
    let fake = FakeBindingWorker::start();
    let served = serve_with(
        &guests::guests().checks,
        fake.addr,
        r#"{ "wall_time_ms": 3000 }"#,
        Arc::new(PrefixedOutput),
    )
    .await;
    let mut client = Client::connect(served.addr).await;
    let slept = client.get("/sleep").await;
    assert_eq!(slept.status, 504, "{:?}", slept.body);
    assert!(
        slept.text().starts_with(
            "the script exceeded its wall-clock time limit (limits.wall_time_ms = 3000;"
        ),
        "{}",
        slept.text()
    );
    next_request_succeeds(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subrequests_stop_at_the_limit() {
    let fake = FakeBindingWorker::start();
    let served = serve_with(
        &guests::guests().checks,
        fake.addr,
        r#"{ "subrequests": 5 }"#,
        Arc::new(PrefixedOutput),
    )
    .await;
    let mut client = Client::connect(served.addr).await;
    let answer = client.get("/subrequests/7").await;
    assert_eq!(
        answer.text(),
        "ok=5 then ProxyError: subrequest_limit_reached"
    );
    // The count is per request.
    assert_eq!(client.get("/subrequests/5").await.text(), "ok=5");
}

#[tokio::test(flavor = "multi_thread")]
async fn many_fetches_at_once_queue_for_the_six_connections() {
    let fake = FakeBindingWorker::start();
    let served = serve_with(
        &guests::guests().checks,
        fake.addr,
        "{}",
        Arc::new(PrefixedOutput),
    )
    .await;
    let answer = Client::connect(served.addr).await.get("/many/20").await;
    assert_eq!((answer.status, answer.text()), (200, "ok=20"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_connection_queue_is_connection_limit_reached() {
    let fake = FakeBindingWorker::start();
    let served = serve_with(
        &guests::guests().checks,
        fake.addr,
        r#"{ "connections": 1, "queued_connections": 1 }"#,
        Arc::new(PrefixedOutput),
    )
    .await;
    let answer = Client::connect(served.addr).await.get("/queue").await;
    assert_eq!(
        answer.text(),
        "A=200 B=200 C=ProxyError: connection_limit_reached B-ready-while-A-open=false"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn urls_and_headers_over_their_limits_are_refused() {
    let fake = FakeBindingWorker::start();
    let served = serve_with(
        &guests::guests().checks,
        fake.addr,
        r#"{ "url_bytes": 200, "header_bytes": 300 }"#,
        Arc::new(PrefixedOutput),
    )
    .await;
    let mut client = Client::connect(served.addr).await;

    // Incoming: 414 and 431, before the script runs.
    let long = format!("/{}", "x".repeat(300));
    let answer = client.get(&long).await;
    assert_eq!(answer.status, 414);
    assert_eq!(
        answer.text(),
        "the URL is 301 bytes, more than this script accepts (limits.url_bytes = 200)\n"
    );
    let big = "y".repeat(400);
    let answer = client.send("GET", "/print", &[("x-big", &big)], "").await;
    assert_eq!(answer.status, 431);
    assert!(
        answer.text().contains("limits.header_bytes = 300"),
        "{}",
        answer.text()
    );

    // Outgoing through the binding: the fetch fails, nothing reaches the binding-worker.
    for path in ["/long-url/250", "/big-header/350"] {
        let answer = client.get(path).await;
        assert_eq!(
            (answer.status, answer.text()),
            (502, "ProxyError: http_request_error"),
            "{path}"
        );
    }
    assert_eq!(fake.connections(), 0);
    // Just under the limits, both go out.
    assert_eq!(client.get("/long-url/150").await.status, 200);
    assert_eq!(client.get("/big-header/250").await.status, 200);
}

/// Collects the script's output lines.
#[derive(Default)]
struct Collected(Mutex<Vec<(String, ScriptStream, String)>>);

impl ScriptOutput for Collected {
    fn line(&self, line: ScriptLine<'_>) {
        self.0.lock().unwrap().push((
            line.request_id.to_owned(),
            line.stream,
            PrefixedOutput::format(&line),
        ));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn script_output_is_captured_per_request_with_its_id() {
    let fake = FakeBindingWorker::start();
    let output = Arc::new(Collected::default());
    let served = serve_with(&guests::guests().checks, fake.addr, "{}", output.clone()).await;
    let mut client = Client::connect(served.addr).await;
    let first = client.get("/print").await;
    let second = client.get("/print").await;
    assert_eq!(first.text(), "printed");

    // The last line (no newline) is emitted when its request ends, after the response head.
    let lines = tokio::time::timeout(crate::GUARD, async {
        loop {
            let lines = output.0.lock().unwrap().clone();
            if lines.len() >= 6 {
                return lines;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("six lines");
    for answer in [&first, &second] {
        let id = answer.request_id();
        let mine: Vec<_> = lines
            .iter()
            .filter(|(line_id, ..)| line_id == id)
            .map(|(_, stream, text)| (*stream, text.clone()))
            .collect();
        let prefix = format!("[proxy-test {}]", &id[..8]);
        assert_eq!(
            mine,
            vec![
                (ScriptStream::Stdout, format!("{prefix} hello from stdout")),
                (ScriptStream::Stderr, format!("{prefix} oops on stderr")),
                (
                    ScriptStream::Stdout,
                    format!("{prefix} no newline at the end")
                ),
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn more_header_fields_than_the_listener_reads_get_an_explained_431() {
    let fake = FakeBindingWorker::start();
    let served = serve_with(
        &guests::guests().checks,
        fake.addr,
        "{}",
        Arc::new(PrefixedOutput),
    )
    .await;
    let names: Vec<String> = (0..1_001).map(|i| format!("x-field-{i}")).collect();
    let fields: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "1")).collect();

    // 150 fields (over hyper's default of 100) reach the script.
    let mut client = Client::connect(served.addr).await;
    let answer = client.send("GET", "/print", &fields[..150], "").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    // One more than the listener reads: refused before the script, with the limit, what to do
    // and the request id.
    let mut client = Client::connect(served.addr).await;
    let answer = client.send("GET", "/print", &fields, "").await;
    assert_eq!(answer.status, 431, "{:?}", answer.body);
    assert_eq!(
        answer.text(),
        format!(
            "the request has more than 1000 header fields, the most this server reads; send \
             fewer (combine repeated fields into one comma-separated field, or move data into \
             the body) (request id {})\n",
            answer.request_id()
        )
    );
}
