//! `wvpc dev` on a JavaScript script, as a new user runs it: `main: "src/index.js"` is built
//! and served; an edit is rebuilt and served; a syntax error is reported with its file and
//! line while the previous build serves on. (Needs Node.js and npm; says `SKIPPED (node)`
//! without them.)

use std::path::Path;

mod support;

use support::{Dir, Running, curl, wvpc};

fn run(state: &Path, args: &[&str]) -> String {
    let output = wvpc(state).args(args).output().expect("run wvpc");
    assert!(
        output.status.success(),
        "wvpc {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn script(version: &str) -> String {
    format!(
        "export default {{\n  async fetch(request, env) {{\n    \
         let through;\n    \
         try {{ await env.API.fetch('http://api.internal/'); through = 'ok'; }}\n    \
         catch (error) {{ through = error.message; }}\n    \
         return new Response(`{version}: ${{through}}`);\n  }},\n}};\n"
    )
}

/// The address in `wvpc dev`'s ready line.
fn served_at(line: &str) -> String {
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned()
}

/// GETs `/` until the body starts with `prefix` (a rebuild lands within a poll or two).
fn body_becomes(addr: &str, prefix: &str) -> String {
    for _ in 0..600 {
        let (_, _, body) = curl(addr, "/");
        if body.starts_with(prefix) {
            return body;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the script never answered {prefix:?}");
}

#[test]
fn wvpc_dev_builds_a_javascript_main_and_rebuilds_on_an_edit() {
    if !wvpc_tests::guests::javascript_builds() {
        return;
    }
    let state = Dir::new("dev-js-state");
    let project = Dir::new("dev-js-project");
    let created = run(state.path(), &["tunnel", "create", "office", "--json"]);
    let tunnel: serde_json::Value = serde_json::from_str(&created).unwrap();
    let tunnel = tunnel["id"].as_str().unwrap().to_owned();
    run(
        state.path(),
        &[
            "service",
            "create",
            "api",
            "--type",
            "http",
            "--tunnel-id",
            &tunnel,
            "--hostname",
            "api.internal",
        ],
    );
    std::fs::create_dir_all(project.path().join("src")).unwrap();
    std::fs::write(project.path().join("src/index.js"), script("v1")).unwrap();
    std::fs::write(
        project.path().join("wrangler.jsonc"),
        r#"{ "name": "hello-js", "main": "src/index.js",
             "vpc_services": [{ "binding": "API", "service": "api" }] }"#,
    )
    .unwrap();

    let mut command = wvpc(state.path());
    command.current_dir(project.path()).args([
        "dev",
        "--port",
        "0",
        "--edge-listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
    ]);
    let dev = Running::spawn(command);
    dev.line("built src/index.js");
    let addr = served_at(&dev.line("ready: serving script"));
    // Through the binding: no connector runs, so the tunnel is unavailable — with its code.
    let body = body_becomes(&addr, "v1");
    assert_eq!(body, "v1: ProxyError: destination_unavailable");

    std::fs::write(project.path().join("src/index.js"), script("v2")).unwrap();
    dev.line("src/index.js changed: rebuilding");
    dev.line("rebuilt: serving the new build");
    body_becomes(&addr, "v2: ");

    // A syntax error: reported with file and line; v2 serves on.
    std::fs::write(
        project.path().join("src/index.js"),
        "export default {\n  fetch( {\n};\n",
    )
    .unwrap();
    dev.line("build failed; still serving the previous build");
    let error = dev.line("src/index.js:3:");
    assert!(error.contains("error:"), "{error}");
    let (_, _, body) = curl(&addr, "/");
    assert!(body.starts_with("v2: "), "{body}");
}

#[test]
fn without_node_wvpc_dev_says_what_a_javascript_main_needs() {
    let state = Dir::new("dev-js-nonode-state");
    let project = Dir::new("dev-js-nonode-project");
    std::fs::create_dir_all(project.path().join("src")).unwrap();
    std::fs::write(project.path().join("src/index.js"), script("v1")).unwrap();
    std::fs::write(
        project.path().join("wrangler.jsonc"),
        r#"{ "name": "hello-js", "main": "src/index.js" }"#,
    )
    .unwrap();
    let output = wvpc(state.path())
        .current_dir(project.path())
        .env("WVPC_NODE", project.path().join("no-such-node"))
        .args([
            "dev",
            "--port",
            "0",
            "--edge-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run wvpc");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("main: \"src/index.js\" needs Node.js ≥ 20 to build JavaScript scripts"),
        "{stderr}"
    );
}

#[test]
fn wvpc_dev_mock_serves_a_javascript_script_against_the_mock_and_rebuilds_on_an_edit() {
    if !wvpc_tests::guests::javascript_builds() {
        return;
    }
    let state = Dir::new("dev-js-mock-state");
    let project = Dir::new("dev-js-mock-project");
    std::fs::create_dir_all(project.path().join("src")).unwrap();
    let script = |version: &str| {
        format!(
            "export default {{\n  async fetch(request, env) {{\n    \
             const answer = await env.API.fetch('http://api.internal/users/1');\n    \
             return new Response(`{version}: ${{answer.status}} ${{await answer.text()}}`);\n  \
             }},\n}};\n"
        )
    };
    std::fs::write(project.path().join("src/index.js"), script("v1")).unwrap();
    std::fs::write(
        project.path().join("wrangler.jsonc"),
        r#"{ "name": "mocked-js", "main": "src/index.js",
             "vpc_services": [{ "binding": "API", "service": "api" }] }"#,
    )
    .unwrap();
    std::fs::write(
        project.path().join("wvpc.mock.jsonc"),
        r#"{ "bindings": { "API": { "responses": [
             { "method": "GET", "path": "/users/1", "status": 200, "body": "{\"id\":1}" } ] } } }"#,
    )
    .unwrap();

    let mut command = wvpc(state.path());
    command
        .current_dir(project.path())
        .args(["dev", "--port", "0", "--mock"]);
    let dev = Running::spawn(command);
    dev.line("built src/index.js");
    let addr = served_at(&dev.line("ready: serving script"));
    assert_eq!(body_becomes(&addr, "v1"), r#"v1: 200 {"id":1}"#);

    std::fs::write(project.path().join("src/index.js"), script("v2")).unwrap();
    dev.line("src/index.js changed: rebuilding");
    dev.line("rebuilt: serving the new build");
    assert_eq!(body_becomes(&addr, "v2"), r#"v2: 200 {"id":1}"#);
}
