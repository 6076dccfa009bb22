//! Many scripts of many accounts in one `ScriptHost` (`wvpc runtime`): routing by host and
//! route, 404s that name the host, redeploys under requests in flight, versions that cannot
//! load, isolation of bindings, failures and output between scripts.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::broadcast;
use wvpc_runtime::{
    ComponentError, DEFAULT_WORKERS_DOMAIN, Deployment, DeploymentError, ModuleFetchError,
    ModuleSource, PrefixedOutput, RequestOutcome, RuntimeOptions, ScriptHost, ScriptKey,
    ScriptStream, TailEvent, TailEventKind, TailHub,
};

use crate::fake_binding_worker::FakeBindingWorker;
use crate::{Client, GUARD, guests};

/// Two accounts: (id, subdomain).
const ALPHA: (&str, &str) = ("acct-a", "alpha");
const BETA: (&str, &str) = ("acct-b", "beta");
const SERVICE_A: &str = "0199d9b2-6a5c-7a3e-9d3c-3f1d2b4c5a01";
const SERVICE_B: &str = "0199d9b2-6a5c-7a3e-9d3c-3f1d2b4c5a02";

/// A `ScriptHost` serving on 127.0.0.1:0, its output going to a `TailHub`.
struct Host {
    host: Arc<ScriptHost>,
    tail: Arc<TailHub>,
    addr: SocketAddr,
}

async fn start(binding_worker: SocketAddr) -> Host {
    let tail = Arc::new(TailHub::new(Arc::new(PrefixedOutput)));
    let options = RuntimeOptions {
        binding_workers: vec![binding_worker],
        binding_secret: None,
        account: String::new(),
        exchange_tap: None,
        metrics: None,
    };
    let host = Arc::new(
        ScriptHost::new(&options, DEFAULT_WORKERS_DOMAIN, tail.clone()).expect("script host"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(host.clone().serve(listener));
    Host { host, tail, addr }
}

/// A deployment of `module` with default hosts on, no bindings, limits or routes.
fn deployment(account: (&str, &str), script: &str, version: &str, module: &Path) -> Deployment {
    Deployment {
        account_id: account.0.into(),
        subdomain: account.1.into(),
        script: script.into(),
        version: version.into(),
        etag: module.display().to_string(),
        module: ModuleSource::File(module.into()),
        bindings: Default::default(),
        networks: Default::default(),
        limits: Default::default(),
        routes: Vec::new(),
        workers_dev: true,
    }
}

/// `deployment` with binding `API` → `service`.
fn bound(mut deployment: Deployment, service: &str) -> Deployment {
    deployment
        .bindings
        .insert("API".into(), service.parse().expect("uuid"));
    deployment
}

/// What the fake binding-worker saw of the fetch that `answer` echoes.
fn context(service: &str, script: &str, account: &str) -> String {
    format!("service={service} binding=API script={script} account={account} ")
}

/// The next event of `events`, with a guard against a hung test.
async fn next_event(events: &mut broadcast::Receiver<TailEvent>) -> TailEvent {
    tokio::time::timeout(GUARD, events.recv())
        .await
        .expect("an event within the guard")
        .expect("no event lost")
}

/// The next `n` events of `events`.
async fn events(events: &mut broadcast::Receiver<TailEvent>, n: usize) -> Vec<TailEvent> {
    let mut got = Vec::new();
    while got.len() < n {
        got.push(next_event(events).await);
    }
    got
}

/// The next `n` request events of `events` (output lines skipped).
async fn requests(events: &mut broadcast::Receiver<TailEvent>, n: usize) -> Vec<TailEvent> {
    let mut got = Vec::new();
    while got.len() < n {
        let event = next_event(events).await;
        if matches!(event.kind, TailEventKind::Request { .. }) {
            got.push(event);
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn scripts_of_two_accounts_answer_at_their_default_hosts_and_routes() {
    let fake = FakeBindingWorker::start();
    let host = start(fake.addr).await;
    let g = guests::guests();
    let mut checks = bound(deployment(BETA, "checks", "v1", &g.checks), SERVICE_B);
    checks.routes = vec!["api.example.com/*".into()];
    let report = host
        .host
        .apply(vec![
            bound(deployment(ALPHA, "proxy", "v1", &g.proxy), SERVICE_A),
            checks,
            // Same account as `proxy`, no binding of its own.
            deployment(ALPHA, "lonely", "v1", &g.checks),
        ])
        .await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.deployed.len(), 3);

    let mut client = Client::connect(host.addr).await;
    for (at, path) in [
        ("proxy.alpha.workers.localhost", "/x?y=1"),
        // A unique name also answers below the workers domain; the port is ignored.
        ("proxy.workers.localhost:8787", "/x?y=1"),
        ("Proxy.Alpha.Workers.Localhost", "/x?y=1"),
    ] {
        let answer = client.get_at(at, path).await;
        assert_eq!(answer.status, 200, "{at}: {:?}", answer.body);
        assert!(
            answer
                .text()
                .contains(&context(SERVICE_A, "proxy", "acct-a")),
            "{at}: {}",
            answer.text()
        );
        assert_eq!(answer.headers["x-fake-path"], "/x?y=1");
    }
    for at in ["checks.beta.workers.localhost", "api.example.com"] {
        let answer = client.get_at(at, "/buffered/z").await;
        assert_eq!(answer.status, 200, "{at}: {:?}", answer.body);
        assert!(
            answer
                .text()
                .contains(&context(SERVICE_B, "checks", "acct-b")),
            "{at}: {}",
            answer.text()
        );
    }
    // An absolute-form target is routed by its authority.
    let answer = client
        .send(
            "GET",
            "http://api.example.com/buffered/abs",
            &[("host", "elsewhere.test")],
            "",
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert!(answer.text().contains("path=/abs\n"), "{}", answer.text());

    // A script of the same account cannot use `proxy`'s binding: it has none.
    let lonely = client
        .get_at("lonely.alpha.workers.localhost", "/buffered/x")
        .await;
    assert_eq!(
        (lonely.status, lonely.text()),
        (502, "ProxyError: proxy_configuration_error")
    );

    for at in [
        "nowhere.workers.localhost",
        // Another account's subdomain.
        "checks.alpha.workers.localhost",
        "example.com",
    ] {
        let answer = client.get_at(at, "/").await;
        assert_eq!(answer.status, 404, "{at}");
        assert_eq!(
            answer.text(),
            format!(
                "no script is served at host {at:?} (a script answers at <script>.<account \
                 subdomain>.workers.localhost when its workers_dev is on, and at the hosts and \
                 paths of its routes)\n"
            )
        );
        assert!(!answer.request_id().is_empty());
    }
    assert_eq!(
        host.host.route("api.example.com", "/anything"),
        Some(ScriptKey::new("acct-b", "checks"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_or_disabled_script_answers_like_an_unknown_host() {
    let fake = FakeBindingWorker::start();
    let host = start(fake.addr).await;
    let g = guests::guests();
    let mut routed = bound(deployment(BETA, "routed", "v1", &g.proxy), SERVICE_B);
    routed.routes = vec!["shop.example.com/*".into()];
    host.host
        .apply(vec![
            bound(deployment(ALPHA, "gone", "v1", &g.proxy), SERVICE_A),
            bound(deployment(ALPHA, "hidden", "v1", &g.proxy), SERVICE_A),
            routed.clone(),
        ])
        .await;
    let mut client = Client::connect(host.addr).await;
    for at in [
        "gone.alpha.workers.localhost",
        "hidden.alpha.workers.localhost",
        "routed.beta.workers.localhost",
        "shop.example.com",
    ] {
        assert_eq!(client.get_at(at, "/").await.status, 200, "{at}");
    }

    // `gone` is deleted; `hidden` and `routed` turn workers_dev off; `routed` keeps its route.
    let mut hidden = bound(deployment(ALPHA, "hidden", "v1", &g.proxy), SERVICE_A);
    hidden.workers_dev = false;
    routed.workers_dev = false;
    let report = host.host.apply(vec![hidden, routed]).await;
    assert_eq!(report.removed, [ScriptKey::new("acct-a", "gone")]);
    assert!(
        report.deployed.is_empty(),
        "same versions: nothing reloaded"
    );
    for at in [
        "gone.alpha.workers.localhost",
        "gone.workers.localhost",
        "hidden.alpha.workers.localhost",
        "routed.beta.workers.localhost",
    ] {
        let answer = client.get_at(at, "/").await;
        assert_eq!(answer.status, 404, "{at}");
        assert!(
            answer
                .text()
                .starts_with(&format!("no script is served at host {at:?} (")),
            "{}",
            answer.text()
        );
    }
    assert_eq!(client.get_at("shop.example.com", "/").await.status, 200);
    let served: Vec<String> = host
        .host
        .served()
        .iter()
        .map(|s| s.key.to_string())
        .collect();
    assert_eq!(served, ["acct-a/hidden", "acct-b/routed"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redeploy_leaves_requests_in_flight_on_their_version() {
    let fake = FakeBindingWorker::start();
    let host = start(fake.addr).await;
    let g = guests::guests();
    let at = "app.alpha.workers.localhost";
    let report = host
        .host
        .apply(vec![bound(
            deployment(ALPHA, "app", "v1", &g.checks),
            SERVICE_A,
        )])
        .await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let mut tail = host.tail.subscribe("acct-a", "app");

    // v1 (runtime-checks) holds a fetch...
    let addr = host.addr;
    let in_flight = tokio::spawn(async move {
        Client::connect(addr)
            .await
            .get_at(at, "/buffered/hold")
            .await
    });
    tokio::time::timeout(GUARD, fake.held())
        .await
        .expect("the fetch reached the binding-worker");

    // ...while v2 (the proxy, another service) is deployed and serves new requests.
    let report = host
        .host
        .apply(vec![bound(
            deployment(ALPHA, "app", "v2", &g.proxy),
            SERVICE_B,
        )])
        .await;
    assert_eq!(
        report.deployed,
        [(ScriptKey::new("acct-a", "app"), "v2".to_owned())]
    );
    let mut client = Client::connect(host.addr).await;
    let new = client.get_at(at, "/after").await;
    assert_eq!(new.status, 200, "{:?}", new.body);
    assert_eq!(new.headers["x-fake-path"], "/after", "served by the proxy");
    assert!(new.text().contains(&context(SERVICE_B, "app", "acct-a")));

    // The held request finishes on v1: runtime-checks' answer, v1's binding.
    fake.release();
    let old = in_flight.await.expect("request task");
    assert_eq!(old.status, 200, "{:?}", old.body);
    assert!(
        !old.headers.contains_key("x-fake-path"),
        "answered by runtime-checks, not the proxy"
    );
    assert!(old.text().contains("path=/hold\n"), "{}", old.text());
    assert!(old.text().contains(&context(SERVICE_A, "app", "acct-a")));

    // Tail saw both requests, each with its version.
    let seen = requests(&mut tail, 2).await;
    let versions: Vec<(&str, &str)> = seen
        .iter()
        .map(|e| (e.request_id.as_str(), e.version.as_str()))
        .collect();
    assert_eq!(
        versions,
        [(new.request_id(), "v2"), (old.request_id(), "v1")]
    );
    assert_eq!(host.host.served()[0].version, "v2");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_that_cannot_load_leaves_the_previous_one_serving() {
    let fake = FakeBindingWorker::start();
    let host = start(fake.addr).await;
    let g = guests::guests();
    let at = "app.alpha.workers.localhost";
    let good = bound(deployment(ALPHA, "app", "v1", &g.proxy), SERVICE_A);
    host.host.apply(vec![good.clone()]).await;
    let mut client = Client::connect(host.addr).await;

    let mut broken = good.clone();
    broken.version = "v2".into();
    broken.etag = "not-wasm".into();
    broken.module = ModuleSource::Bytes(Bytes::from_static(b"not wasm"));
    let mut bad_limits = good.clone();
    bad_limits.version = "v3".into();
    bad_limits.limits = serde_json::json!({ "cpu_ms": 0, "cpus": 1 })
        .as_object()
        .cloned()
        .unwrap();
    let mut bad_route = good.clone();
    bad_route.version = "v4".into();
    bad_route.routes = vec!["api.*.example.com/*".into()];
    let mut core_module = good.clone();
    core_module.version = "v5".into();
    core_module.etag = "core".into();
    core_module.module = ModuleSource::Bytes(Bytes::from_static(b"\0asm\x01\0\0\0"));

    for (bad, expected) in [
        (
            broken,
            "the module is not a valid WebAssembly component: it does not start with the \
             WebAssembly magic bytes",
        ),
        (
            bad_limits,
            "invalid limits:\n  - limits.cpu_ms: expected an integer from 1 to 300000, found \
             0\n  - limits.cpus: unknown limit (allowed keys: cpu_ms, memory_mb, wall_time_ms, \
             subrequests, connections, queued_connections, url_bytes, header_bytes, \
             isolation)",
        ),
        (
            bad_route,
            "route \"api.*.example.com/*\" has a `*` inside the host; a `*` may only start it \
             (e.g. *.example.com/*)",
        ),
        (
            core_module,
            "the module is a core WebAssembly module, not a component (build the script with \
             `cargo build --target wasm32-wasip2`)",
        ),
    ] {
        let version = bad.version.clone();
        // Twice: a refused deployment is reported every time it is applied.
        for _ in 0..2 {
            let report = host.host.apply(vec![bad.clone()]).await;
            assert_eq!(report.failed.len(), 1, "{version}");
            let failed = &report.failed[0];
            assert_eq!(failed.version, version);
            assert_eq!(failed.error.to_string(), expected);
            assert_eq!(failed.still_serving.as_deref(), Some("v1"));
            assert!(report.deployed.is_empty() && report.removed.is_empty());

            let answer = client.get_at(at, "/still").await;
            assert_eq!(answer.status, 200, "{version}: {:?}", answer.body);
            assert_eq!(answer.headers["x-fake-path"], "/still");
            assert_eq!(host.host.served()[0].version, "v1");
        }
    }

    // A new script whose module cannot load is not served at all; the others are.
    let mut fresh = deployment(BETA, "fresh", "v1", &g.proxy);
    fresh.etag = "garbage".into();
    fresh.module = ModuleSource::Bytes(Bytes::from_static(b"\0asm\x0d\0\x01\0garbage"));
    let report = host.host.apply(vec![good.clone(), fresh]).await;
    assert_eq!(report.failed.len(), 1);
    assert!(
        matches!(
            report.failed[0].error,
            DeploymentError::Component(ComponentError::Invalid(_))
        ),
        "{:?}",
        report.failed[0].error
    );
    assert_eq!(report.failed[0].still_serving, None);
    assert_eq!(
        client
            .get_at("fresh.beta.workers.localhost", "/")
            .await
            .status,
        404
    );
    assert_eq!(client.get_at(at, "/").await.status, 200);

    // Module bytes that cannot be fetched fail the deployment; once an etag is compiled, a
    // deployment with it does not fetch the bytes at all.
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    let unreachable = ModuleSource::Fetch(Arc::new(
        move || -> BoxFuture<'static, Result<Bytes, ModuleFetchError>> {
            counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err("the directory is unreachable".into()) })
        },
    ));
    let mut same_module = bound(deployment(BETA, "twin", "v1", &g.proxy), SERVICE_B);
    same_module.module = unreachable.clone();
    let mut new_module = deployment(BETA, "other", "v1", &g.proxy);
    new_module.etag = "never-seen".into();
    new_module.module = unreachable;
    let report = host.host.apply(vec![good, same_module, new_module]).await;
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert_eq!(report.deployed.len(), 1, "{:?}", report.deployed);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(
        report.failed[0].error.to_string(),
        "cannot get the module: the directory is unreachable"
    );
    assert_eq!(
        client
            .get_at("twin.beta.workers.localhost", "/")
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_script_runs_under_its_own_limits() {
    let fake = FakeBindingWorker::start();
    let host = start(fake.addr).await;
    let g = guests::guests();
    let mut strict = bound(deployment(ALPHA, "strict", "v1", &g.checks), SERVICE_A);
    strict.limits = serde_json::json!({ "url_bytes": 64 })
        .as_object()
        .cloned()
        .unwrap();
    let report = host
        .host
        .apply(vec![
            strict,
            bound(deployment(ALPHA, "relaxed", "v1", &g.checks), SERVICE_B),
        ])
        .await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let path = format!("/buffered/{}", "a".repeat(100));
    let mut client = Client::connect(host.addr).await;
    let refused = client.get_at("strict.alpha.workers.localhost", &path).await;
    assert_eq!(refused.status, 414);
    assert_eq!(
        refused.text(),
        "the URL is 110 bytes, more than this script accepts (limits.url_bytes = 64)\n"
    );
    let fine = client
        .get_at("relaxed.alpha.workers.localhost", &path)
        .await;
    assert_eq!(fine.status, 200, "{:?}", fine.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_serves_only_its_own_script_and_version() {
    let fake = FakeBindingWorker::start();
    let host = start(fake.addr).await;
    let g = guests::guests();
    // Two scripts of the same module (same etag, so even the same compiled component).
    let version = |script: &str, version: &str| deployment(ALPHA, script, version, &g.checks);
    let report = host
        .host
        .apply(vec![version("a", "v1"), version("b", "v1")])
        .await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let mut client = Client::connect(host.addr).await;
    let mut count = async |script: &str| {
        let answer = client
            .get_at(&format!("{script}.alpha.workers.localhost"), "/counter")
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        answer.text().to_owned()
    };
    let idle = || host.host.idle_instances();
    assert_eq!(count("a").await, "count=1");
    crate::reuse::until_idle(idle, 1).await;
    // A's idle instance is there, but B gets its own.
    assert_eq!(count("b").await, "count=1");
    crate::reuse::until_idle(idle, 2).await;
    assert_eq!(count("a").await, "count=2");
    crate::reuse::until_idle(idle, 2).await;
    assert_eq!(count("b").await, "count=2");
    crate::reuse::until_idle(idle, 2).await;

    // A new version of A starts afresh; B keeps its instance.
    let report = host
        .host
        .apply(vec![version("a", "v2"), version("b", "v1")])
        .await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(count("a").await, "count=1");
    assert_eq!(count("b").await, "count=3");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trapping_script_fails_only_its_own_request() {
    let fake = FakeBindingWorker::start();
    let host = start(fake.addr).await;
    let g = guests::guests();
    host.host
        .apply(vec![
            bound(deployment(ALPHA, "checks", "v1", &g.checks), SERVICE_A),
            bound(deployment(BETA, "proxy", "v1", &g.proxy), SERVICE_B),
        ])
        .await;
    let mut tail = host.tail.subscribe("acct-a", "checks");
    let mut trapping = Client::connect(host.addr).await;
    let mut other = Client::connect(host.addr).await;
    let (trapped, fine) = tokio::join!(
        trapping.get_at("checks.alpha.workers.localhost", "/trap"),
        other.get_at("proxy.beta.workers.localhost", "/during"),
    );
    assert_eq!(trapped.status, 500);
    assert_eq!(fine.status, 200, "{:?}", fine.body);

    let after = trapping
        .get_at("checks.alpha.workers.localhost", "/buffered/fine")
        .await;
    assert_eq!(after.status, 200, "{:?}", after.body);
    assert!(after.text().contains("path=/fine\n"), "{}", after.text());

    // The panic message goes to the script's stderr; the request is reported as an
    // exception, and the next one as ok.
    let outcomes: Vec<_> = requests(&mut tail, 2)
        .await
        .into_iter()
        .map(|e| match e.kind {
            TailEventKind::Request {
                status, outcome, ..
            } => (e.request_id, status, outcome),
            TailEventKind::Output { .. } => unreachable!("requests only"),
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (
                trapped.request_id().to_owned(),
                500,
                RequestOutcome::Exception
            ),
            (after.request_id().to_owned(), 200, RequestOutcome::Ok)
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_subscribers_get_their_scripts_output_only() {
    let fake = FakeBindingWorker::start();
    let host = start(fake.addr).await;
    let g = guests::guests();
    // The same name in two accounts: two scripts.
    host.host
        .apply(vec![
            deployment(ALPHA, "printer", "v1", &g.checks),
            deployment(BETA, "printer", "v7", &g.checks),
        ])
        .await;
    let mut alpha = host.tail.subscribe("acct-a", "printer");
    let mut beta = host.tail.subscribe("acct-b", "printer");
    assert_eq!(host.tail.subscribers("acct-a", "printer"), 1);

    let mut client = Client::connect(host.addr).await;
    // Beta prints first: were its lines misrouted, alpha would see them before its own.
    let beta_answer = client
        .get_at("printer.beta.workers.localhost", "/print")
        .await;
    let alpha_answer = client
        .get_at("printer.alpha.workers.localhost", "/print")
        .await;
    assert_eq!((alpha_answer.status, beta_answer.status), (200, 200));

    for (events_of, account, version, answer, host_name) in [
        (&mut alpha, "acct-a", "v1", &alpha_answer, "printer.alpha"),
        (&mut beta, "acct-b", "v7", &beta_answer, "printer.beta"),
    ] {
        // Three lines and the request; the last line (no newline) is flushed when the
        // request's instance is dropped, so it may come after the request event.
        let seen = events(events_of, 4).await;
        for event in &seen {
            assert_eq!(
                (
                    event.account_id.as_str(),
                    event.script.as_str(),
                    event.version.as_str(),
                    event.request_id.as_str()
                ),
                (account, "printer", version, answer.request_id())
            );
        }
        let lines: Vec<(ScriptStream, &str)> = seen
            .iter()
            .filter_map(|e| match &e.kind {
                TailEventKind::Output { stream, text } => Some((*stream, text.as_str())),
                TailEventKind::Request { .. } => None,
            })
            .collect();
        assert_eq!(
            lines,
            [
                (ScriptStream::Stdout, "hello from stdout"),
                (ScriptStream::Stderr, "oops on stderr"),
                (ScriptStream::Stdout, "no newline at the end"),
            ]
        );
        let request = seen
            .iter()
            .find_map(|e| match &e.kind {
                TailEventKind::Request { .. } => Some(e.kind.clone()),
                TailEventKind::Output { .. } => None,
            })
            .expect("a request event");
        assert_eq!(
            request,
            TailEventKind::Request {
                method: "GET".into(),
                url: format!("http://{host_name}.workers.localhost/print"),
                status: 200,
                outcome: RequestOutcome::Ok,
            }
        );
        assert!(events_of.try_recv().is_err(), "nothing else");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deployed_network_bindings_are_their_own_scripts_only() {
    let fake = FakeBindingWorker::start();
    let host = start(fake.addr).await;
    let g = guests::guests();
    let tunnel = uuid::Uuid::from_u128(0x0199_d9b2_0000_7000_8000_0000_0000_00aa);
    let mut db = deployment(ALPHA, "db", "v1", &g.sockets);
    db.networks
        .insert("NET".into(), wvpc_schemas::NetworkTarget::Tunnel(tunnel));
    // Same account, no binding of its own.
    let other = deployment(ALPHA, "other", "v1", &g.sockets);
    let report = host.host.apply(vec![db, other]).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);

    let mut client = Client::connect(host.addr).await;
    let answer = client
        .get_at(
            "db.alpha.workers.localhost",
            "/fetch?binding=NET&url=http%3A%2F%2F10.1.2.3%2Fstatus",
        )
        .await;
    let text = answer.text();
    assert!(text.starts_with("200\n"), "{text}");
    assert!(text.contains("url=http://10.1.2.3/status\n"), "{text}");
    assert!(
        text.contains(&format!(
            "service= binding=NET script=db account={}",
            ALPHA.0
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("\nnetwork tunnel={tunnel} network=\n")),
        "{text}"
    );
    let answer = client
        .send(
            "POST",
            "/echo?binding=NET&addr=10.1.2.3:6379",
            &[("host", "db.alpha.workers.localhost")],
            "x",
        )
        .await;
    assert!(
        answer.text().starts_with(&format!(
            "x\nconnected address=10.1.2.3:6379 service= tunnel={tunnel}"
        )),
        "{}",
        answer.text()
    );

    // Another script of the same account cannot use `db`'s binding, to fetch or to connect.
    for path in [
        "/fetch?binding=NET&url=http%3A%2F%2F10.1.2.3%2Fstatus",
        "/echo?binding=NET&addr=10.1.2.3:6379",
    ] {
        let answer = client.get_at("other.alpha.workers.localhost", path).await;
        assert_eq!(
            (answer.status, answer.text()),
            (502, "ProxyError: proxy_configuration_error"),
            "{path}"
        );
    }
}
