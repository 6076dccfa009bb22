//! `wvpc test` as CI runs it: the proxy example with a mock file and a cases file next to its
//! config, the real runtime, binding-worker and router on loopback, the report on stdout or in
//! a file, and the exit status saying whether every case passed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh project directory with the proxy example's config and a mock, removed on drop.
struct Project(PathBuf);

impl Project {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("wvpc-test-cases-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let project = Self(dir);
        // Bound by service *name*: nothing resolves it under the mock.
        project.write(
            "wrangler.jsonc",
            &format!(
                r#"{{ "name": "proxy", "main": {:?}, "vpc_services": [ {{ "binding": "API", "service": "api" }} ] }}"#,
                wvpc_tests::guests::PROXY
            ),
        );
        project.write(
            "wvpc.mock.jsonc",
            r#"{ "bindings": { "API": {
                 "responses": [
                   { "method": "GET", "path": "/users/1",
                     "headers": { "content-type": "application/json" },
                     "body": { "id": 1, "name": "Ada" } },
                   { "method": "POST", "path": "/users", "status": 201, "body": "{\"id\":2}" } ],
                 "faults": [ { "path": "/flaky/*", "code": "connection_refused" } ]
               } } }"#,
        );
        project
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }

    /// `wvpc test ARGS` in the project directory.
    fn wvpc_test(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_wvpc"))
            .arg("test")
            .args(args)
            .current_dir(&self.0)
            .env_remove("WVPC_STATE")
            .env_remove("RUST_LOG")
            .output()
            .expect("run wvpc")
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const PASSING: &str = r#"
- name: a user is served
  request: GET /users/1
  expect:
    status: 200
    headers: { content-type: application/json, x-debug: null }
    json: { name: Ada, id: 1 }
    requests:
      API: [ { method: GET, path: /users/1, headers: { host: api.internal } } ]
- name: a user is created
  request:
    method: POST
    path: /users?notify=1
    headers: { x-trace: abc }
    body: { name: Bob }
  expect:
    status: 201
    body: '{"id":2}'
    requests:
      API:
        - method: POST
          path: /users?notify=*
          headers: { x-trace: abc, content-type: { contains: json } }
          json: { name: Bob }
- name: the service refuses connections
  request: GET /users/1
  faults: { API: connection_refused }
  expect: { status: 502, body: "ProxyError: connection_refused" }
- name: a DNS failure replaces the mock file's fault for one case
  request: GET /flaky/1
  faults: { API: [ { path: /flaky/*, code: dns_error } ] }
  expect: { status: 502, body: "ProxyError: dns_error" }
- name: the mock file's own fault is back
  request: GET /flaky/1
  expect: { status: 502, body_contains: connection_refused }
- name: the user is served again, the case's fault gone
  request: GET /users/1
  expect: { status: 200, requests: { API: 1 } }
"#;

#[test]
fn a_passing_file_prints_tap_and_exits_zero() {
    let project = Project::new();
    project.write("wvpc.test.yaml", PASSING);
    let output = project.wvpc_test(&[]);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    let expected = "TAP version 14\n\
        1..6\n\
        ok 1 - a user is served\n\
        ok 2 - a user is created\n\
        ok 3 - the service refuses connections\n\
        ok 4 - a DNS failure replaces the mock file's fault for one case\n\
        ok 5 - the mock file's own fault is back\n\
        ok 6 - the user is served again, the case's fault gone\n";
    assert!(stdout.starts_with(expected), "{stdout}");
    assert!(stdout.contains("# 6 passed, 0 failed"), "{stdout}");
    // No state directory is left in the project.
    assert!(!project.path().join(".wvpc").exists());
}

const FAILING: &str = r#"{ "cases": [
  { "name": "home", "request": "GET /users/1", "expect": { "status": 200 } },
  { "name": "the service is down, but the case expects a user",
    "request": "GET /users/1",
    "faults": { "API": "connection_refused" },
    "expect": { "status": 200, "json": { "id": 1 }, "requests": { "API": 1 } } },
  { "name": "a <tagged> & \"quoted\" case", "request": "GET /users/2",
    "expect": { "body_contains": "Ada" } }
] }"#;

#[test]
fn a_failing_file_says_what_differed_in_tap_and_junit_and_exits_nonzero() {
    let project = Project::new();
    project.write("cases.json", FAILING);

    let output = project.wvpc_test(&["cases.json"]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    assert!(
        stdout.starts_with("TAP version 14\n1..3\nok 1 - home\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "not ok 2 - the service is down, but the case expects a user\n  ---\n  \
             message: \"status: expected 200, got 502 (and 2 more)\"\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("      expected: \"200\"\n      actual: \"502\"\n"),
        "{stdout}"
    );
    assert!(stdout.contains("- message: \"body is not JSON"), "{stdout}");
    assert!(
        stdout.contains("- message: \"API received 0 request(s), expected 1: none\""),
        "{stdout}"
    );
    // What the script printed during a failed case is in its diagnostics, not on stdout
    // among the report's lines.
    assert!(
        stdout
            .contains("  output:\n    - \"GET /users/1 -> 502 ProxyError: connection_refused\"\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("[proxy "), "{stdout}");
    // The mock answers what it has no response for with a 501 naming it.
    assert!(
        stdout.contains("not ok 3 - a <tagged> & \"quoted\" case\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("body did not contain \\\"Ada\\\""),
        "{stdout}"
    );
    assert!(stdout.contains("# 1 passed, 2 failed"), "{stdout}");
    assert!(
        text(&output.stderr).contains("2 of 3 cases failed"),
        "{}",
        text(&output.stderr)
    );

    let output = project.wvpc_test(&["cases.json", "--format", "junit", "--output", "report.xml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stdout).contains("1 passed, 2 failed; report in report.xml"),
        "{}",
        text(&output.stdout)
    );
    let xml = std::fs::read_to_string(project.path().join("report.xml")).unwrap();
    assert!(
        xml.contains("<testsuite name=\"cases.json\" tests=\"3\" failures=\"2\""),
        "{xml}"
    );
    assert!(
        xml.contains("<testcase name=\"home\" classname=\"proxy\""),
        "{xml}"
    );
    assert!(
        xml.contains(
            "<failure message=\"status: expected 200, got 502 (and 2 more)\" type=\"assertion\">"
        ),
        "{xml}"
    );
    assert!(
        xml.contains("<testcase name=\"a &lt;tagged&gt; &amp; &quot;quoted&quot; case\""),
        "{xml}"
    );
    // Well-formed: every element closes, in order.
    let mut reader = quick_xml::Reader::from_str(&xml);
    let (mut open, mut testcases) = (Vec::new(), 0);
    loop {
        match reader.read_event().expect("well-formed XML") {
            quick_xml::events::Event::Start(e) => {
                open.push(e.name().as_ref().to_vec());
                testcases += usize::from(e.name().as_ref() == b"testcase");
            }
            quick_xml::events::Event::Empty(e) => {
                testcases += usize::from(e.name().as_ref() == b"testcase");
            }
            quick_xml::events::Event::End(e) => {
                assert_eq!(open.pop().as_deref(), Some(e.name().as_ref()));
            }
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    assert!(open.is_empty());
    assert_eq!(testcases, 3);
}

#[test]
fn a_bad_cases_file_is_refused_with_every_problem_and_its_path() {
    let project = Project::new();
    project.write(
        "wvpc.test.yaml",
        r#"
- name: home
  request: GET users
  faults: { DB: connection_refused }
  expect: { status: 200, stauts: 201 }
- request: GET /
"#,
    );
    let output = project.wvpc_test(&[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    for want in [
        "wvpc.test.yaml is invalid",
        "[0].request: \"users\" is not a path and query starting with /",
        "[0].faults.DB: the script's config has no binding \"DB\" in its vpc_services (it declares API)",
        "[0].expect.stauts: unknown key",
        "[1].name: missing",
        "[1].expect: missing",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }

    project.write("wvpc.test.yaml", "- name: home\n  request: [GET\n");
    let output = project.wvpc_test(&[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("YAML syntax error on line"), "{stderr}");

    // No cases file at all: the error names the default it looked for.
    std::fs::remove_file(project.path().join("wvpc.test.yaml")).unwrap();
    let output = project.wvpc_test(&[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("no cases file at"), "{stderr}");
    assert!(stderr.contains("wvpc.test.yaml"), "{stderr}");
}
