//! Instance reuse (`limits.isolation`): by default an instance serves many requests of its
//! script, one after the other, and the script's globals persist between them; after a trap
//! or a limit, and with `"isolation": "request"` always, a request gets a fresh instance.
//! The guest's `/counter` answers how many requests its instance served.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wvpc_runtime::{PrefixedOutput, Runtime, ScriptLine, ScriptOutput};

use crate::fake_binding_worker::FakeBindingWorker;
use crate::{Client, GUARD, guests, serve_with};

/// The count the guest's `/counter…` answered.
async fn count(client: &mut Client, path: &str) -> u64 {
    let answer = client.get(path).await;
    assert_eq!(answer.status, 200, "{path}: {:?}", answer.body);
    answer
        .text()
        .strip_prefix("count=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{path}: not a count: {:?}", answer.body))
}

/// Waits until the runtime keeps `n` idle instances: the instance of the request that just
/// answered is back once the request has completely ended, a moment after its response.
pub(crate) async fn until_idle(idle: impl Fn() -> usize, n: usize) {
    tokio::time::timeout(GUARD, async {
        while idle() < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {n} idle instances"));
}

fn idle_of(runtime: &Arc<Runtime>) -> impl Fn() -> usize + '_ {
    move || runtime.idle_instances()
}

#[tokio::test(flavor = "multi_thread")]
async fn globals_persist_between_the_requests_of_one_instance() {
    let fake = FakeBindingWorker::start();
    let served = serve_with(
        &guests::guests().checks,
        fake.addr,
        "{}",
        Arc::new(PrefixedOutput),
    )
    .await;
    let mut client = Client::connect(served.addr).await;
    for expected in 1..=3 {
        assert_eq!(count(&mut client, "/counter").await, expected);
        until_idle(idle_of(&served.runtime), 1).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn request_isolation_gives_every_request_a_fresh_instance() {
    let fake = FakeBindingWorker::start();
    let served = serve_with(
        &guests::guests().checks,
        fake.addr,
        r#"{ "isolation": "request" }"#,
        Arc::new(PrefixedOutput),
    )
    .await;
    let mut client = Client::connect(served.addr).await;
    for _ in 0..3 {
        assert_eq!(count(&mut client, "/counter").await, 1);
        assert_eq!(served.runtime.idle_instances(), 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_discards_the_instance() {
    let fake = FakeBindingWorker::start();
    let served = serve_with(
        &guests::guests().checks,
        fake.addr,
        "{}",
        Arc::new(PrefixedOutput),
    )
    .await;
    let mut client = Client::connect(served.addr).await;
    assert_eq!(count(&mut client, "/counter").await, 1);
    until_idle(idle_of(&served.runtime), 1).await;
    assert_eq!(count(&mut client, "/counter").await, 2);
    until_idle(idle_of(&served.runtime), 1).await;
    // The trapping request runs on that instance (the only idle one)…
    assert_eq!(client.get("/trap").await.status, 500);
    assert_eq!(served.runtime.idle_instances(), 0);
    // …and the next request starts from scratch.
    assert_eq!(count(&mut client, "/counter").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cpu_or_memory_limit_or_a_large_memory_discards_the_instance() {
    let fake = FakeBindingWorker::start();
    let served = serve_with(
        &guests::guests().checks,
        fake.addr,
        r#"{ "cpu_ms": 100, "memory_mb": 16 }"#,
        Arc::new(PrefixedOutput),
    )
    .await;
    let mut client = Client::connect(served.addr).await;
    for (limit_path, status) in [("/loop", 503), ("/alloc", 503)] {
        assert_eq!(count(&mut client, "/counter").await, 1);
        until_idle(idle_of(&served.runtime), 1).await;
        assert_eq!(count(&mut client, "/counter").await, 2);
        until_idle(idle_of(&served.runtime), 1).await;
        assert_eq!(client.get(limit_path).await.status, status, "{limit_path}");
        assert_eq!(served.runtime.idle_instances(), 0, "{limit_path}");
    }
    assert_eq!(count(&mut client, "/counter").await, 1);
    until_idle(idle_of(&served.runtime), 1).await;
    // A request that leaves the instance with more than half its memory limit (10 of 16 MiB)
    // is answered, and its instance retires.
    assert_eq!(count(&mut client, "/counter/grow/10").await, 2);
    assert_eq!(count(&mut client, "/counter").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wall_clock_limit_discards_the_instance() {
    let fake = FakeBindingWorker::start();
    let served = serve_with(
        &guests::guests().checks,
        fake.addr,
        r#"{ "wall_time_ms": 3000 }"#,
        Arc::new(PrefixedOutput),
    )
    .await;
    let mut client = Client::connect(served.addr).await;
    assert_eq!(count(&mut client, "/counter").await, 1);
    until_idle(idle_of(&served.runtime), 1).await;
    assert_eq!(client.get("/sleep").await.status, 504);
    assert_eq!(served.runtime.idle_instances(), 0);
    assert_eq!(count(&mut client, "/counter").await, 1);
}

/// The script's output lines: (request id, formatted line).
#[derive(Default)]
struct Lines(Mutex<Vec<(String, String)>>);

impl ScriptOutput for Lines {
    fn line(&self, line: ScriptLine<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((line.request_id.to_owned(), PrefixedOutput::format(&line)));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn output_and_fetches_of_a_reused_instance_carry_each_request_s_id() {
    let fake = FakeBindingWorker::start();
    let lines = Arc::new(Lines::default());
    let served = serve_with(&guests::guests().checks, fake.addr, "{}", lines.clone()).await;
    let idle = idle_of(&served.runtime);
    let mut client = Client::connect(served.addr).await;
    assert_eq!(count(&mut client, "/counter").await, 1);
    until_idle(&idle, 1).await;
    let first = client.get("/print").await;
    until_idle(&idle, 1).await;
    let fetched = client.get("/buffered/reused").await;
    until_idle(&idle, 1).await;
    let second = client.get("/print").await;
    until_idle(&idle, 1).await;
    // One instance served them all.
    assert_eq!(count(&mut client, "/counter").await, 2);

    assert_eq!(fetched.status, 200, "{:?}", fetched.body);
    assert!(
        fetched
            .text()
            .contains(&format!("request_id={}", fetched.request_id())),
        "the fetch carries its own request's id: {}",
        fetched.text()
    );
    let lines = lines.0.lock().unwrap().clone();
    for answer in [&first, &second] {
        let id = answer.request_id();
        let prefix = format!("[proxy-test {}]", &id[..8]);
        let mine: Vec<_> = lines
            .iter()
            .filter(|(line_id, _)| line_id == id)
            .map(|(_, text)| text.clone())
            .collect();
        assert_eq!(
            mine,
            [
                format!("{prefix} hello from stdout"),
                format!("{prefix} oops on stderr"),
                format!("{prefix} no newline at the end"),
            ]
        );
    }
    assert_eq!(
        lines.len(),
        6,
        "no line under another request's id: {lines:?}"
    );
}
