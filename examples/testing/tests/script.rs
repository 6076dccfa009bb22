//! The example script's integration tests, written with `wvpc-testing`: the script runs in
//! this process against a mock of its `API` service, and each test asserts what a client of
//! the script sees when the service answers, fails in each way it can, or is slow.

use std::time::Duration;

use wvpc_testing::{Fault, FaultRule, Mock, RunningScript, Script, TestingError};

/// The script built by `build.rs`, run with the config next to this crate.
fn script() -> Script {
    Script::from_config(concat!(env!("CARGO_MANIFEST_DIR"), "/wrangler.jsonc"))
        .component(env!("WVPC_EXAMPLE_SCRIPT"))
}

fn users() -> Mock {
    Mock::new()
        .get("/users/1", 200, r#"{"id":1}"#)
        .header("content-type", "application/json")
        .post("/users", 201, r#"{"id":2}"#)
}

async fn start(mock: Mock) -> RunningScript {
    script()
        .mock("API", mock)
        .start()
        .await
        .expect("starting the script")
}

/// What the script answers to `GET path`: status and body.
async fn get(t: &RunningScript, path: &str) -> (u16, String) {
    let res = t.get(path).await.expect("asking the script");
    let status = res.status();
    (status, res.text().await.expect("reading the body"))
}

/// The example of docs/testing.md, as written there (plus the built component).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_example() -> Result<(), TestingError> {
    // Integration tests run in the package's directory, next to wrangler.jsonc.
    let t = Script::from_config("wrangler.jsonc")
        .component(env!("WVPC_EXAMPLE_SCRIPT"))
        .mock("API", Mock::new().get("/users/1", 200, r#"{"id":1}"#))
        .start()
        .await?;
    let res = t.get("/users/1").await?;
    assert_eq!(res.status(), 200);
    assert_eq!(t.requests("API")[0].header("host"), Some("api.internal"));
    t.set_fault("API", Fault::ConnectionRefused);
    assert_eq!(
        t.get("/users/1").await?.text().await?,
        "ProxyError: connection_refused"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_answer_reaches_the_client() -> Result<(), TestingError> {
    let t = start(users()).await;
    let res = t.get("/users/1").await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(res.text().await?, r#"{"id":1}"#);
    let seen = t.requests("API");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/users/1");
    assert_eq!(seen[0].header("host"), Some("api.internal"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_headers_and_body_are_forwarded() -> Result<(), TestingError> {
    let t = start(users()).await;
    let res = t
        .request(
            "POST",
            "/users?notify=1",
            &[("content-type", "application/json"), ("x-trace", "abc")],
            r#"{"name":"Ada"}"#,
        )
        .await?;
    assert_eq!(res.status(), 201);
    assert_eq!(res.text().await?, r#"{"id":2}"#);
    let seen = &t.requests("API")[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/users?notify=1");
    assert_eq!(seen.header("x-trace"), Some("abc"));
    assert_eq!(&seen.body[..], br#"{"name":"Ada"}"#);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_mock_does_not_answer_is_a_501_naming_it() {
    let t = start(users()).await;
    let (status, body) = get(&t, "/users/2").await;
    assert_eq!(status, 501);
    assert!(
        body.contains("API") && body.contains("GET /users/2"),
        "the 501 names the binding, method and path: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_a_502_and_recovers() {
    let t = start(users()).await;
    t.set_fault("API", Fault::ConnectionRefused);
    assert_eq!(
        get(&t, "/users/1").await,
        (502, "ProxyError: connection_refused".into())
    );
    t.clear_faults("API");
    assert_eq!(get(&t, "/users/1").await, (200, r#"{"id":1}"#.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_error_is_a_502() {
    let t = start(users().fault(Fault::DnsError)).await;
    assert_eq!(
        get(&t, "/users/1").await,
        (502, "ProxyError: dns_error".into())
    );
    assert!(t.requests("API").is_empty(), "nothing reached the service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_timeout_is_a_502_before_the_scripts_own_timeout() {
    // The dial gives up after 100 ms here (10 s on the real path: same code, faster test),
    // well before the script's own 1 s timeout.
    let t = script()
        .mock("API", users().fault(Fault::ConnectionTimeout))
        .dial_timeout(Duration::from_millis(100))
        .start()
        .await
        .expect("starting the script");
    assert_eq!(
        get(&t, "/users/1").await,
        (502, "ProxyError: connection_timeout".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_error_is_a_502() {
    let t = start(users()).await;
    t.set_fault("API", Fault::TlsCertificateError);
    assert_eq!(
        get(&t, "/users/1").await,
        (502, "ProxyError: tls_certificate_error".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_response_is_cut_short_for_the_client_too() {
    let t = start(users()).await;
    t.set_fault("API", Fault::HttpResponseIncomplete);
    // The script streams the service's body, so the broken body breaks its own answer: the
    // client's connection closes before the answer is whole — after the head, or before it
    // when the body broke before the script's server had written anything.
    let answer = match t.get("/users/1").await {
        Ok(res) => res.text().await,
        Err(err) => Err(err),
    };
    assert!(
        matches!(answer, Err(TestingError::Http { .. })),
        "the client must not get a whole-looking answer: {answer:?}"
    );
    assert_eq!(
        t.requests("API").len(),
        1,
        "the request reached the service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_within_the_scripts_timeout_is_passed_on() {
    let t = start(users().latency(Duration::from_millis(100))).await;
    assert_eq!(get(&t, "/users/1").await, (200, r#"{"id":1}"#.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_the_scripts_timeout_is_a_504_from_the_script() {
    let t = start(users()).await;
    t.set_latency("API", Duration::from_secs(5));
    assert_eq!(
        get(&t, "/users/1").await,
        (504, "API timed out after 1000 ms".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_scoped_to_a_path_leaves_the_others_alone() {
    // The mock file of `wvpc dev --mock`: /flaky/* is refused, /users/1 answered.
    let t = script()
        .mock_file(concat!(env!("CARGO_MANIFEST_DIR"), "/wvpc.mock.jsonc"))
        .start()
        .await
        .expect("starting the script");
    assert_eq!(
        get(&t, "/flaky/1").await,
        (502, "ProxyError: connection_refused".into())
    );
    assert_eq!(
        get(&t, "/users/1").await,
        (200, r#"{"id":1,"name":"Ada"}"#.into())
    );
    t.set_faults(
        "API",
        vec![FaultRule::new(Fault::ConnectionRefused).on_path("/users/*")],
    );
    assert_eq!(
        get(&t, "/users/1").await,
        (502, "ProxyError: connection_refused".into())
    );
}
