//! `wvpc binding-worker` as a process: what it prints, the platform secret it creates, how it
//! refuses a stranger, how it stops on SIGTERM, and what a wrong `--secret-file` says.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};

/// A unique state directory, removed on drop.
struct State(PathBuf);

impl State {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("wvpc-bw-test-{}", uuid::Uuid::new_v4())))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wvpc"));
        command
            .arg("--state")
            .arg(&self.0)
            .args(args)
            .env("RUST_LOG", "warn")
            .env_remove("WVPC_STATE");
        command
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The process, killed on drop if still running.
struct Running {
    child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Running {
    fn spawn(state: &State, args: &[&str]) -> Self {
        let mut child = state
            .command(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run wvpc");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    fn next_line(&mut self) -> String {
        self.lines
            .next()
            .expect("wvpc printed nothing more")
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn binding_worker_starts_with_a_private_secret_refuses_strangers_and_drains_on_sigterm() {
    let state = State::new();
    // No iris listens there: the worker starts anyway, and fails fetches until one does.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let iris = closed.to_string();
    let mut worker = Running::spawn(
        &state,
        &[
            "binding-worker",
            "--listen",
            "127.0.0.1:0",
            "--iris",
            &iris,
            "--iris",
            "127.0.0.1:9",
            "--grace-period",
            "2s",
        ],
    );
    let ready = worker.next_line();
    let addr = ready
        .strip_prefix("ready: binding-worker on ")
        .and_then(|rest| rest.split_once(' '))
        .map(|(addr, _)| addr.to_owned())
        .unwrap_or_else(|| panic!("unexpected first line {ready:?}"));
    assert!(
        ready.ends_with(&format!("(iris: {iris}, 127.0.0.1:9)")),
        "{ready}"
    );
    let secret_line = worker.next_line();
    let secret = state.0.join("platform").join("secret");
    assert!(
        secret_line.contains(&secret.display().to_string()) && secret_line.contains("fingerprint"),
        "{secret_line}"
    );
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // A client that does not know the handshake is closed without an answer.
    let mut stranger = std::net::TcpStream::connect(&addr).unwrap();
    stranger
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = stranger.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{answer:?}");

    let status = Command::new("kill")
        .args(["-TERM", &worker.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(worker.next_line(), "stopped: every fetch finished");
    assert!(worker.child.wait().unwrap().success());
    // The listener is gone with the process.
    assert!(std::net::TcpStream::connect(&addr).is_err());
}

#[test]
fn a_secret_file_that_is_missing_or_not_a_secret_is_explained() {
    let state = State::new();
    std::fs::create_dir_all(&state.0).unwrap();
    let missing = state.0.join("nowhere");
    let bad = state.0.join("bad-secret");
    std::fs::write(&bad, "hunter2").unwrap();
    for (file, expected) in [(&missing, "No such file"), (&bad, "64 hex digits")] {
        let output = state
            .command(&[
                "binding-worker",
                "--listen",
                "127.0.0.1:0",
                "--iris",
                "127.0.0.1:9",
                "--secret-file",
                file.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--secret-file") && stderr.contains(expected),
            "{stderr}"
        );
    }
    // Without --iris it is a usage error.
    let output = state.command(&["binding-worker"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--iris"));
}

#[test]
fn an_iris_name_is_resolved_at_start_and_its_nodes_are_printed() {
    let state = State::new();
    let mut worker = Running::spawn(
        &state,
        &[
            "binding-worker",
            "--listen",
            "127.0.0.1:0",
            "--iris",
            "localhost:9,127.0.0.1:7",
        ],
    );
    let ready = worker.next_line();
    // localhost is 127.0.0.1 (and ::1 where /etc/hosts says so).
    let (_, nodes) = ready
        .split_once("(iris: localhost:9, 127.0.0.1:7; nodes now: ")
        .unwrap_or_else(|| panic!("{ready}"));
    assert!(
        nodes.contains("127.0.0.1:9") && nodes.trim_end().ends_with("127.0.0.1:7)"),
        "{ready}"
    );

    // A value without a port is a usage error naming it.
    let output = state
        .command(&["binding-worker", "--iris", "127.0.0.1:7,iris.internal"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\"iris.internal\" has no port"), "{stderr}");
}
