//! `wvpc dev --mock` as a new user runs it: the proxy example with a mock file next to its
//! config, no connector, no directory entries, no DNS server; answered over a plain socket as
//! `curl` would, with one printed line per binding request and the file reloaded on change.

use std::path::Path;

mod support;

use support::{Dir, Running, curl, wvpc};

/// `wvpc dev <args>` run in `project`.
fn dev(state: &Path, project: &Path, args: &[&str]) -> Running {
    let mut command = wvpc(state);
    command.current_dir(project).args(args);
    Running::spawn(command)
}

fn mock_file(body: &str) -> String {
    format!(
        r#"{{ "bindings": {{ "API": {{
            "responses": [ {{ "method": "GET", "path": "/users/1", "status": 200,
                              "headers": {{ "content-type": "application/json" }},
                              "body": {body:?} }} ]
        }} }} }}"#
    )
}

#[test]
fn dev_mock_answers_the_proxy_example_with_a_canned_response_and_reloads_the_file() {
    let state = Dir::new("dev-mock-state");
    let project = Dir::new("dev-mock-project");
    // Bound by service *name*: with --mock nothing resolves it, no directory is needed.
    std::fs::write(
        project.path().join("wrangler.jsonc"),
        format!(
            r#"{{ "name": "proxy", "main": {:?}, "vpc_services": [ {{ "binding": "API", "service": "api" }} ] }}"#,
            wvpc_tests::guests::PROXY
        ),
    )
    .unwrap();
    let mock_path = project.path().join("wvpc.mock.jsonc");
    std::fs::write(&mock_path, mock_file(r#"{"id":1}"#)).unwrap();

    let dev = dev(
        state.path(),
        project.path(),
        &["dev", "--port", "0", "--mock"],
    );
    let ready = dev.line("ready:");
    let addr = ready
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no address in {ready:?}"))
        .to_owned();
    assert!(ready.contains("wvpc.mock.jsonc"), "{ready}");

    let (status, _, body) = curl(&addr, "/users/1");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, r#"{"id":1}"#);
    let logged = dev.line("API GET http://api.internal/users/1");
    assert!(logged.contains("-> 200"), "{logged}");

    let (status, _, body) = curl(&addr, "/users/2");
    assert_eq!(status, "HTTP/1.1 501 Not Implemented");
    assert!(body.contains("API: GET /users/2"), "{body}");
    dev.line("API GET http://api.internal/users/2 -> 501");

    // An edit is picked up.
    std::fs::write(&mock_path, mock_file(r#"{"id":1,"name":"Ada"}"#)).unwrap();
    dev.line("mock reloaded from");
    let (_, _, body) = curl(&addr, "/users/1");
    assert_eq!(body, r#"{"id":1,"name":"Ada"}"#);

    // A bad edit is reported with its field, and the last good mock keeps serving.
    std::fs::write(
        &mock_path,
        r#"{ "bindings": { "API": { "responses": [ { "path": "/users/1", "status": "ok" } ] } } }"#,
    )
    .unwrap();
    let problem = dev.line("bindings.API.responses[0].status");
    assert!(problem.contains("expected a status"), "{problem}");
    dev.line("keeping the last good mock");
    let (_, _, body) = curl(&addr, "/users/1");
    assert_eq!(body, r#"{"id":1,"name":"Ada"}"#);
}

#[test]
fn dev_mock_refuses_a_mock_of_a_binding_the_config_does_not_declare() {
    let state = Dir::new("dev-mock-state");
    let project = Dir::new("dev-mock-project");
    std::fs::write(
        project.path().join("wrangler.jsonc"),
        format!(
            r#"{{ "name": "proxy", "main": {:?}, "vpc_services": [ {{ "binding": "API", "service": "api" }} ] }}"#,
            wvpc_tests::guests::PROXY
        ),
    )
    .unwrap();
    std::fs::write(
        project.path().join("mock.toml"),
        "[bindings.DB]\nupstream = \"127.0.0.1:5432\"\n[bindings.API]\nupstrem = \"x\"\n",
    )
    .unwrap();
    let output = wvpc(state.path())
        .args(["dev", "--port", "0", "--mock", "mock.toml"])
        .current_dir(project.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bindings.API.upstrem: unknown key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bindings.DB: the script's config has no binding \"DB\""),
        "{stderr}"
    );
}
