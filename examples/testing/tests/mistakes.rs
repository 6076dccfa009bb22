//! What a test author sees for a mistake in the test setup: a typed error that says which
//! file, binding or field is wrong.

use std::path::PathBuf;

use wvpc_testing::{Fault, FaultRule, Mock, Script, TestingError};

fn script() -> Script {
    Script::from_config(concat!(env!("CARGO_MANIFEST_DIR"), "/wrangler.jsonc"))
        .component(env!("WVPC_EXAMPLE_SCRIPT"))
}

async fn start_error(script: Script) -> TestingError {
    match script.start().await {
        Ok(_) => panic!("the script started despite the mistake"),
        Err(err) => err,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mock_for_an_undeclared_binding_is_refused_by_name() {
    let err = start_error(script().mock("PAYMENTS", Mock::new())).await;
    let message = err.to_string();
    assert!(
        matches!(err, TestingError::UnknownBinding { .. })
            && message.contains("\"PAYMENTS\"")
            && message.contains("vpc_services: API"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_before_any_response_is_refused() {
    let mock = Mock::new()
        .header("content-type", "text/plain")
        .get("/", 200, "x");
    let err = start_error(script().mock("API", mock)).await;
    let message = err.to_string();
    assert!(
        matches!(err, TestingError::Mock { .. }) && message.contains("\"content-type\""),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_config_is_named() {
    let err = start_error(Script::from_config("no/such/wrangler.jsonc")).await;
    assert!(
        matches!(err, TestingError::Config(_))
            && err.to_string().contains("no/such/wrangler.jsonc"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_mock_file_names_every_problem() {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bad-mock-{}.jsonc", std::process::id()));
    std::fs::write(
        &path,
        r#"{ "bindings": { "API": { "respones": [], "faults": [{ "code": "tea_time" }] } } }"#,
    )
    .unwrap();
    let err = start_error(script().mock_file(&path)).await;
    let message = err.to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(
        matches!(err, TestingError::MockFile(_))
            && message.contains("bindings.API.respones")
            && message.contains("bindings.API.faults[0].code"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_for_an_undeclared_binding_is_an_error() {
    let t = script().start().await.expect("starting the script");
    let err = t
        .try_set_faults("APi", vec![FaultRule::new(Fault::DnsError)])
        .expect_err("APi is not a binding of the script");
    assert!(
        matches!(err, TestingError::UnknownBinding { ref binding, .. } if binding == "APi"),
        "{err}"
    );
}
