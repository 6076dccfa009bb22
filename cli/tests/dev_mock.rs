//! `wvpc dev --mock` as a new user runs it: the proxy example with a mock file next to its
//! config, no connector, no directory entries, no DNS server; answered over a plain socket as
//! `curl` would, with one printed line per binding request and the file reloaded on change.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A fresh directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wvpc-{label}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `wvpc dev` running, its stdout lines arriving on a channel (a hang guard bounds each wait).
struct Dev {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Dev {
    fn spawn(state: &Path, project: &Path, args: &[&str]) -> Dev {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wvpc"))
            .arg("--state")
            .arg(state)
            .args(args)
            .current_dir(project)
            .env("RUST_LOG", "warn")
            .env_remove("WVPC_STATE")
            .stdout(Stdio::piped())
            .spawn()
            .expect("run wvpc");
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Dev { child, lines }
    }

    /// The next line containing `text` (earlier lines are skipped).
    fn line(&self, text: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(err) => panic!("no line containing {text:?} from wvpc dev: {err}"),
            }
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl -s http://addr/path`: status line and body.
fn curl(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: curl/8\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
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

    let dev = Dev::spawn(
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

    let (status, body) = curl(&addr, "/users/1");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, r#"{"id":1}"#);
    let logged = dev.line("API GET http://api.internal/users/1");
    assert!(logged.contains("-> 200"), "{logged}");

    let (status, body) = curl(&addr, "/users/2");
    assert_eq!(status, "HTTP/1.1 501 Not Implemented");
    assert!(body.contains("API: GET /users/2"), "{body}");
    dev.line("API GET http://api.internal/users/2 -> 501");

    // An edit is picked up.
    std::fs::write(&mock_path, mock_file(r#"{"id":1,"name":"Ada"}"#)).unwrap();
    dev.line("mock reloaded from");
    let (_, body) = curl(&addr, "/users/1");
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
    let (_, body) = curl(&addr, "/users/1");
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
    let output = Command::new(env!("CARGO_BIN_EXE_wvpc"))
        .arg("--state")
        .arg(state.path())
        .args(["dev", "--port", "0", "--mock", "mock.toml"])
        .current_dir(project.path())
        .env("RUST_LOG", "warn")
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
