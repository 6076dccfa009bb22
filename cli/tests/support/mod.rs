//! What the CLI's process tests share: a throwaway directory, the `wvpc` binary on a state
//! directory, a running process whose stdout lines are awaited, and a `curl`-like GET.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A fresh directory, removed on drop.
pub struct Dir(PathBuf);

impl Dir {
    pub fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wvpc-{label}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `wvpc --state <state>`, logging warnings only, ignoring any `WVPC_STATE` of the caller.
pub fn wvpc(state: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wvpc"));
    command
        .arg("--state")
        .arg(state)
        .env("RUST_LOG", "warn")
        .env_remove("WVPC_STATE");
    command
}

/// A running `wvpc` process, its stdout lines arriving on a channel (a hang guard bounds each
/// wait); killed on drop.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    pub fn spawn(mut command: Command) -> Running {
        let mut child = command.stdout(Stdio::piped()).spawn().expect("run wvpc");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }

    /// The next line containing `text` (earlier lines are skipped). Bounded generously: a
    /// JavaScript main is built and its 13 MB component compiled before `ready` (tens of
    /// seconds on a cold cache while other tests compile too).
    pub fn line(&self, text: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(300)) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(err) => panic!("no line containing {text:?} from wvpc: {err}"),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl -s -i http://addr/path`: status line, headers (lower-case names) and body.
pub fn curl(addr: &str, path: &str) -> (String, Vec<String>, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: curl/8\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("").to_owned();
    let headers = lines.map(str::to_ascii_lowercase).collect();
    (status, headers, body.to_owned())
}
