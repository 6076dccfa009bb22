//! A headless Chromium for tests that check pages as a user sees them: launched on a fresh
//! profile, driven over the DevTools protocol, killed with its profile removed on drop.
//!
//! The protocol runs on a pipe (`--remote-debugging-pipe`: commands on the browser's fd 3,
//! replies and events on its fd 4, each message JSON ended by a NUL byte) rather than a
//! WebSocket: no port to discover, no client crate, and nothing else on the machine can
//! drive the browser. The API is blocking (the CLI's process tests are); async callers run it
//! with `spawn_blocking`.
//!
//! Chromium is `$CHROMIUM`, else `chromium` (Debian's; `scripts/ensure-toolchain` installs
//! it) or `chromium-browser`/`google-chrome` on `PATH`. Without one, [`Browser::launch`]
//! says `SKIPPED (chromium): …` and answers `None`, for the test to return early.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use command_fds::{CommandFdExt as _, FdMapping};
use serde_json::{Value, json};

/// How long a protocol command may take before the browser is taken as stuck.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The viewport pages are laid out in (a laptop's screen).
const VIEWPORT: (u32, u32) = (1440, 900);

/// The flags every launch uses: headless, and nothing that reaches outside the machine
/// (without the background-networking ones Chromium calls Google's services).
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--remote-debugging-pipe",
];

/// What went wrong talking to the browser.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// The binary could not be started.
    #[error("cannot start {binary}: {source}")]
    Start {
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The browser closed its end of the pipe (it exited or crashed).
    #[error("the browser closed its DevTools pipe ({reason}); its last words:\n{stderr}")]
    Closed {
        /// What the pipe said.
        reason: String,
        /// The end of the browser's stderr.
        stderr: String,
    },
    /// A command had no answer in time.
    #[error("the browser did not answer {method} in time")]
    Timeout {
        /// The command (or the event) waited for.
        method: String,
    },
    /// The browser sent something that is not a DevTools message.
    #[error("the browser sent an unreadable message ({problem}): {excerpt:?}")]
    Unreadable {
        /// What is wrong with it.
        problem: String,
        /// Its first bytes, lossily decoded.
        excerpt: String,
    },
    /// The browser refused a command.
    #[error("{method} failed: {message}")]
    Command {
        /// The command.
        method: String,
        /// The browser's error message.
        message: String,
    },
    /// A page could not be loaded.
    #[error("cannot open {url}: {error}")]
    Navigation {
        /// The page.
        url: String,
        /// The browser's reason (`net::ERR_CONNECTION_REFUSED`, …).
        error: String,
    },
    /// A script threw.
    #[error("{expression:?} threw: {message}")]
    Script {
        /// The script.
        expression: String,
        /// The exception.
        message: String,
    },
    /// A condition did not become true in time.
    #[error("{condition:?} was still not true after {timeout:?} (last value: {last})")]
    WaitTimedOut {
        /// The condition.
        condition: String,
        /// How long it was given.
        timeout: Duration,
        /// Its last value.
        last: String,
    },
    /// A screenshot could not be made or saved.
    #[error("screenshot {path}: {problem}")]
    Screenshot {
        /// Where it was to go.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
}

/// One message from the browser, or the end of the pipe.
enum Incoming {
    Message(Vec<u8>),
    Closed(String),
}

/// A parsed DevTools message.
#[derive(Debug, PartialEq)]
enum Message {
    /// The answer to command `id`: its result, or the browser's error message.
    Reply {
        id: u64,
        result: Result<Value, String>,
    },
    /// An event (`Runtime.exceptionThrown`, …) and its parameters.
    Event { method: String, params: Value },
}

/// Reads one NUL-less DevTools message; anything else is an error, never a panic.
fn parse(bytes: &[u8]) -> Result<Message, BrowserError> {
    let unreadable = |problem: &str| BrowserError::Unreadable {
        problem: problem.to_owned(),
        excerpt: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
    };
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| unreadable(&format!("not JSON: {e}")))?;
    if let Some(id) = value.get("id") {
        let id = id
            .as_u64()
            .ok_or_else(|| unreadable("an id that is not a number"))?;
        let result = match (value.get("result"), value.get("error")) {
            (_, Some(error)) => Err(error
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_owned)),
            (Some(result), None) => Ok(result.clone()),
            (None, None) => return Err(unreadable("a reply with neither result nor error")),
        };
        return Ok(Message::Reply { id, result });
    }
    match value.get("method").and_then(Value::as_str) {
        Some(method) => Ok(Message::Event {
            method: method.to_owned(),
            params: value.get("params").cloned().unwrap_or(Value::Null),
        }),
        None => Err(unreadable("neither a reply nor an event")),
    }
}

/// What a page reported as going wrong, from an event: an uncaught exception, a
/// `console.error`, or a browser log entry of level error (a failed load, say).
fn page_problem(method: &str, params: &Value) -> Option<String> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match method {
        "Runtime.exceptionThrown" => {
            let details = &params["exceptionDetails"];
            let description = details["exception"]["description"].as_str();
            Some(format!(
                "uncaught: {}",
                description.map_or_else(|| text(&details["text"]), str::to_owned)
            ))
        }
        "Runtime.consoleAPICalled"
            if matches!(params["type"].as_str(), Some("error" | "assert")) =>
        {
            let args = params["args"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let parts: Vec<String> = args
                .iter()
                .map(|a| match (&a["value"], a["description"].as_str()) {
                    (Value::String(s), _) => s.clone(),
                    (Value::Null, Some(d)) => d.to_owned(),
                    (v, _) => v.to_string(),
                })
                .collect();
            Some(format!("console.error: {}", parts.join(" ")))
        }
        "Log.entryAdded" if params["entry"]["level"] == "error" => {
            let entry = &params["entry"];
            Some(format!(
                "{}: {} {}",
                text(&entry["source"]),
                text(&entry["text"]),
                text(&entry["url"])
            ))
        }
        _ => None,
    }
}

/// A headless Chromium with one page open, killed with its profile removed on drop.
pub struct Browser {
    child: Child,
    to_browser: std::io::PipeWriter,
    from_browser: mpsc::Receiver<Incoming>,
    /// The page's session (commands for the page carry it).
    session: String,
    next_id: u64,
    /// Errors the page reported, oldest first.
    problems: Vec<String>,
    /// Whether the page fired `load` since the last navigation began.
    loaded: bool,
    /// The profile and the browser's stderr.
    home: tempfile::TempDir,
}

impl Browser {
    /// The Chromium to run: `$CHROMIUM` if set, else the first of `chromium`,
    /// `chromium-browser` and `google-chrome` on `PATH`.
    pub fn binary() -> Result<PathBuf, String> {
        if let Some(path) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(format!("CHROMIUM={} is not a file", path.display()))
            };
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| {
                "no chromium, chromium-browser or google-chrome on PATH and no CHROMIUM set \
                 (Debian: apt-get install chromium, as scripts/ensure-toolchain does)"
                    .to_owned()
            })
    }

    /// Launches the browser, or answers `None` after printing `SKIPPED (chromium): …` when
    /// none is installed. A browser that is there but fails to start is a failure (panic).
    pub fn launch() -> Option<Browser> {
        let binary = match Self::binary() {
            Ok(binary) => binary,
            Err(why) => {
                println!("SKIPPED (chromium): {why}");
                return None;
            }
        };
        match Self::start(&binary) {
            Ok(browser) => Some(browser),
            Err(err) => panic!("{err}"),
        }
    }

    /// Starts `binary` headless on a fresh profile, with one blank page attached.
    pub fn start(binary: &Path) -> Result<Browser, BrowserError> {
        let start_error = |source| BrowserError::Start {
            binary: binary.to_owned(),
            source,
        };
        let home = tempfile::Builder::new()
            .prefix("wvpc-chromium-")
            .tempdir()
            .map_err(start_error)?;
        let profile = home.path().join("profile");
        let stderr = std::fs::File::create(home.path().join("stderr")).map_err(start_error)?;
        let (commands_read, commands_write) = std::io::pipe().map_err(start_error)?;
        let (replies_read, replies_write) = std::io::pipe().map_err(start_error)?;
        let mut command = Command::new(binary);
        command
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own process group: the renderers and helpers go with it on drop.
            .process_group(0)
            .fd_mappings(vec![
                FdMapping {
                    parent_fd: OwnedFd::from(commands_read),
                    child_fd: 3,
                },
                FdMapping {
                    parent_fd: OwnedFd::from(replies_write),
                    child_fd: 4,
                },
            ])
            .map_err(|e| start_error(std::io::Error::other(e.to_string())))?;
        let child = command.spawn().map_err(start_error)?;
        // Our copies of the child's ends are closed now, so the pipe ends when it exits.
        drop(command);

        let (tx, from_browser) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(replies_read);
            loop {
                let mut message = Vec::new();
                let incoming = match reader.read_until(0, &mut message) {
                    Ok(0) => Incoming::Closed("end of file".into()),
                    Ok(_) => {
                        if message.last() == Some(&0) {
                            message.pop();
                        }
                        Incoming::Message(message)
                    }
                    Err(err) => Incoming::Closed(err.to_string()),
                };
                let closed = matches!(incoming, Incoming::Closed(_));
                if tx.send(incoming).is_err() || closed {
                    return;
                }
            }
        });

        let mut browser = Browser {
            child,
            to_browser: commands_write,
            from_browser,
            session: String::new(),
            next_id: 0,
            problems: Vec::new(),
            loaded: false,
            home,
        };
        // The first answer is the readiness: the browser reads its pipe once it is up.
        let target =
            browser.browser_call("Target.createTarget", json!({ "url": "about:blank" }))?;
        let target = target["targetId"].clone();
        let attached = browser.browser_call(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        )?;
        browser.session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| BrowserError::Unreadable {
                problem: "Target.attachToTarget answered no sessionId".into(),
                excerpt: attached.to_string(),
            })?
            .to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({}))?;
        }
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": VIEWPORT.0, "height": VIEWPORT.1,
                    "deviceScaleFactor": 1, "mobile": false }),
        )?;
        Ok(browser)
    }

    /// Loads `url` and waits for its `load` event.
    pub fn open(&mut self, url: &str) -> Result<(), BrowserError> {
        self.loaded = false;
        let navigated = self.call("Page.navigate", json!({ "url": url }))?;
        if let Some(error) = navigated["errorText"].as_str().filter(|e| !e.is_empty()) {
            return Err(BrowserError::Navigation {
                url: url.to_owned(),
                error: error.to_owned(),
            });
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        while !self.loaded {
            // Late replies to commands given up on are dropped here too.
            self.next_message("Page.loadEventFired", deadline)?;
        }
        Ok(())
    }

    /// The value of `expression` in the page (a promise is awaited); what it threw is an
    /// error. `undefined` and values JSON cannot carry are `null`.
    pub fn eval(&mut self, expression: &str) -> Result<Value, BrowserError> {
        self.evaluate(expression, COMMAND_TIMEOUT)
    }

    /// Waits until `condition` (a JavaScript expression) is truthy in the page, and answers
    /// its value. The page itself re-checks it every 25 ms, so a change is seen whenever it
    /// happens; an exception counts as not yet.
    pub fn wait_for(&mut self, condition: &str, timeout: Duration) -> Result<Value, BrowserError> {
        let script = format!(
            "new Promise(resolve => {{\n\
               const until = performance.now() + {ms};\n\
               let last;\n\
               const check = () => {{\n\
                 try {{ last = (\n{condition}\n); }} catch (e) {{ last = undefined; }}\n\
                 if (last) resolve({{ done: true, value: last }});\n\
                 else if (performance.now() > until) resolve({{ done: false, value: String(last) }});\n\
                 else setTimeout(check, 25);\n\
               }};\n\
               check();\n\
             }})",
            ms = timeout.as_millis()
        );
        let outcome = self.evaluate(&script, timeout + COMMAND_TIMEOUT)?;
        if outcome["done"] == true {
            Ok(outcome["value"].clone())
        } else {
            Err(BrowserError::WaitTimedOut {
                condition: condition.to_owned(),
                timeout,
                last: outcome["value"].as_str().unwrap_or("?").to_owned(),
            })
        }
    }

    /// Saves the whole page (not just the viewport) as a PNG at `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<(), BrowserError> {
        let failed = |problem: String| BrowserError::Screenshot {
            path: path.to_owned(),
            problem,
        };
        let metrics = self.call("Page.getLayoutMetrics", json!({}))?;
        let size = &metrics["cssContentSize"];
        let (width, height) = (size["width"].as_f64(), size["height"].as_f64());
        let (Some(width), Some(height)) = (width, height) else {
            return Err(failed(format!("no content size in {metrics}")));
        };
        let shot = self.call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": { "x": 0, "y": 0, "width": width.max(VIEWPORT.0 as f64),
                          "height": height, "scale": 1 },
            }),
        )?;
        let data = shot["data"]
            .as_str()
            .ok_or_else(|| failed("the browser answered no image".into()))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| failed(format!("the image is not base64: {e}")))?;
        if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
            return Err(failed("the image is not a PNG".into()));
        }
        std::fs::write(path, png).map_err(|e| failed(e.to_string()))
    }

    /// What the page reported as going wrong so far: uncaught exceptions, `console.error`
    /// calls and failed loads, oldest first.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The browser's profile directory (removed on drop).
    pub fn profile(&self) -> PathBuf {
        self.home.path().join("profile")
    }

    /// The browser's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn evaluate(&mut self, expression: &str, timeout: Duration) -> Result<Value, BrowserError> {
        let answer = self.send(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            true,
            timeout,
        )?;
        if let Some(details) = answer.get("exceptionDetails") {
            let message = details["exception"]["description"]
                .as_str()
                .or(details["text"].as_str())
                .unwrap_or("an exception")
                .to_owned();
            return Err(BrowserError::Script {
                expression: expression.to_owned(),
                message,
            });
        }
        Ok(answer["result"]["value"].clone())
    }

    /// A command to the page.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.send(method, params, true, COMMAND_TIMEOUT)
    }

    /// A command to the browser itself.
    fn browser_call(&mut self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.send(method, params, false, COMMAND_TIMEOUT)
    }

    fn send(
        &mut self,
        method: &str,
        params: Value,
        to_page: bool,
        timeout: Duration,
    ) -> Result<Value, BrowserError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if to_page {
            message["sessionId"] = Value::String(self.session.clone());
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        if let Err(err) = self.to_browser.write_all(&bytes) {
            return Err(self.closed(err.to_string()));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_message(method, deadline)? {
                Some(Message::Reply { id: got, result }) if got == id => {
                    return result.map_err(|message| BrowserError::Command {
                        method: method.to_owned(),
                        message,
                    });
                }
                // Replies to commands given up on, and events (already recorded).
                _ => {}
            }
        }
    }

    /// The next message, with events recorded; `None` for an event.
    fn next_message(
        &mut self,
        waiting_for: &str,
        deadline: Instant,
    ) -> Result<Option<Message>, BrowserError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let bytes = match self.from_browser.recv_timeout(left) {
            Ok(Incoming::Message(bytes)) => bytes,
            Ok(Incoming::Closed(reason)) => return Err(self.closed(reason)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(self.closed("the reader stopped".into()));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(BrowserError::Timeout {
                    method: waiting_for.to_owned(),
                });
            }
        };
        match parse(&bytes)? {
            Message::Event { method, params } => {
                if method == "Page.loadEventFired" {
                    self.loaded = true;
                }
                if let Some(problem) = page_problem(&method, &params) {
                    self.problems.push(problem);
                }
                Ok(None)
            }
            reply => Ok(Some(reply)),
        }
    }

    fn closed(&self, reason: String) -> BrowserError {
        let stderr = std::fs::read_to_string(self.home.path().join("stderr")).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        BrowserError::Closed {
            reason,
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: the browser's renderers and helpers with it. The profile goes
        // when `home` drops, after this.
        let group = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::net::TcpListener;

    /// A page whose script fills in a list from `/items` and then says it is done.
    const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>items</title></head>
<body><h1 id="state">loading</h1><ul id="items"></ul>
<script>
fetch("/items").then(r => r.json()).then(items => {
  for (const item of items) {
    const li = document.createElement("li");
    li.textContent = item;
    document.getElementById("items").append(li);
  }
  document.getElementById("state").textContent = "loaded " + items.length;
});
</script></body></html>"#;

    /// Serves [`PAGE`] at `/` and a JSON list at `/items` on 127.0.0.1:0, one thread per
    /// connection, until the test process ends.
    fn serve() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head);
                    let (kind, body) = if head.starts_with("GET /items ") {
                        ("application/json", r#"["apple","pear"]"#)
                    } else {
                        ("text/html; charset=utf-8", PAGE)
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        addr
    }

    #[test]
    fn a_page_is_opened_waited_on_read_and_photographed() {
        let Some(mut browser) = Browser::launch() else {
            return;
        };
        let addr = serve();
        browser.open(&format!("http://{addr}/")).unwrap();
        let state = browser
            .wait_for(
                "document.getElementById('state').textContent.startsWith('loaded') \
                 && document.getElementById('state').textContent",
                Duration::from_secs(20),
            )
            .unwrap();
        assert_eq!(state, "loaded 2");
        let items = browser
            .eval("[...document.querySelectorAll('#items li')].map(li => li.textContent)")
            .unwrap();
        assert_eq!(items, json!(["apple", "pear"]));
        assert_eq!(browser.eval("Promise.resolve(6 * 7)").unwrap(), json!(42));
        assert_eq!(browser.eval("undefined").unwrap(), Value::Null);

        let thrown = browser.eval("missing.property").unwrap_err();
        assert!(
            thrown.to_string().contains("missing is not defined"),
            "{thrown}"
        );
        let never = browser
            .wait_for("document.title === 'other'", Duration::from_millis(200))
            .unwrap_err();
        assert!(
            matches!(never, BrowserError::WaitTimedOut { .. }),
            "{never}"
        );
        assert!(browser.problems().is_empty(), "{:?}", browser.problems());

        // An uncaught exception in the page is recorded as a problem.
        // (Timers run in order: the event is in before the second one answers.)
        browser
            .eval(
                "new Promise(done => { \
                   setTimeout(() => { throw new Error('boom from the page'); }, 0); \
                   setTimeout(done, 0); })",
            )
            .unwrap();
        assert!(
            browser
                .problems()
                .iter()
                .any(|p| p.contains("boom from the page")),
            "{:?}",
            browser.problems()
        );

        let shot = tempfile::Builder::new().suffix(".png").tempfile().unwrap();
        browser.screenshot(shot.path()).unwrap();
        let png = std::fs::read(shot.path()).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000);

        let refused = {
            let closed = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = closed.local_addr().unwrap();
            drop(closed);
            browser.open(&format!("http://{addr}/")).unwrap_err()
        };
        assert!(
            refused.to_string().contains("ERR_CONNECTION_REFUSED"),
            "{refused}"
        );

        let (pid, profile) = (browser.pid(), browser.profile());
        assert!(profile.is_dir());
        drop(browser);
        assert!(!profile.exists(), "the profile is removed");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the browser is gone"
        );
    }

    #[test]
    fn bad_bytes_from_the_browser_are_errors() {
        for bad in [
            &b"\xff\xfe not json"[..],
            b"",
            b"[1, 2]",
            br#"{"id": "seven", "result": {}}"#,
            br#"{"id": 7}"#,
            br#"{"params": {}}"#,
        ] {
            let err = parse(bad).unwrap_err();
            assert!(matches!(err, BrowserError::Unreadable { .. }), "{err}");
        }
        assert_eq!(
            parse(br#"{"id": 3, "error": {"code": -32601, "message": "no such method"}}"#).unwrap(),
            Message::Reply {
                id: 3,
                result: Err("no such method".into())
            }
        );
        let event = br#"{"method": "Runtime.exceptionThrown", "params": {"exceptionDetails":
            {"text": "Uncaught", "exception": {"description": "Error: boom"}}}}"#;
        let Message::Event { method, params } = parse(event).unwrap() else {
            panic!("an event")
        };
        assert_eq!(
            page_problem(&method, &params).as_deref(),
            Some("uncaught: Error: boom")
        );
        // Odd shapes of known events are not problems, and not panics.
        assert_eq!(page_problem("Log.entryAdded", &json!([1])), None);
        assert_eq!(
            page_problem(
                "Runtime.consoleAPICalled",
                &json!({"type": "error", "args": 5})
            ),
            Some("console.error: ".into())
        );
    }
}
