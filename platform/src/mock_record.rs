//! `wvpc dev --record FILE`: every binding exchange of the script on the real path, written
//! as a mock file ([`crate::mock_file`]) that `wvpc dev --mock FILE` replays offline.
//!
//! [`MockRecorder`] is the runtime's [`ExchangeTap`]: it hands each exchange to a thread of its
//! own, which keeps one entry per binding, method and path with its query (the latest wins)
//! and rewrites the whole file after each batch, atomically (a temporary file renamed over
//! it), so the file is valid whenever `wvpc dev` stops.
//!
//! - A response becomes a canned response: its status, its headers less the hop-by-hop and
//!   volatile ones ([`DROPPED_HEADERS`]), and its body — inline when it is UTF-8 and at most
//!   [`INLINE_BODY_LIMIT`] bytes, else in a `body_file` in the folder `<stem>.bodies/` next
//!   to the file. A header sent more than once is an array of its values; a value the mock
//!   file cannot hold (not UTF-8) is left out and said so.
//! - A failed fetch becomes a fault for its method and path, rate 100, when the mock has a
//!   fault of that code ([`FaultCode`]); a body cut short (`http_response_incomplete`) becomes
//!   both the response as far as it came and that fault.
//! - What cannot be replayed is not written, and reported ([`RecordEvent::Skipped`]): a
//!   failure code the mock cannot give, a body larger than the runtime's copy
//!   ([`wvpc_runtime::MAX_TAPPED_BODY`]).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use wvpc_errors::ErrorCode;
use wvpc_iris::dev_mock::FaultCode;
use wvpc_runtime::{ExchangeTap, TappedBody, TappedExchange, TappedOutcome};

/// The largest body written inline in the mock file; a larger one goes to a `body_file`.
pub const INLINE_BODY_LIMIT: usize = 64 << 10;

/// Response headers not recorded: hop-by-hop ones, and ones the mock sets itself (`date`,
/// `content-length`, which it computes from the body; a `HEAD` answer keeps its
/// `content-length`).
pub const DROPPED_HEADERS: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "date",
    "content-length",
];

/// Why recording cannot start or go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The file (or its folder of bodies) cannot be written.
    #[error("writing the recorded mock file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The writer thread could not be started.
    #[error("starting the mock recorder: {0}")]
    Start(std::io::Error),
}

/// What happened to one exchange, for the `wvpc dev --record` log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordEvent {
    /// Written to the file.
    Recorded {
        /// `BINDING METHOD PATH`.
        exchange: String,
        /// What was written (`200, 12 bytes inline`, `fault connection_refused`) and any
        /// caveat (a header left out, a body the script did not read to its end).
        what: String,
    },
    /// Not written: it cannot be replayed.
    Skipped {
        /// `BINDING METHOD PATH`.
        exchange: String,
        /// Why.
        why: String,
    },
    /// The file could not be rewritten (the previous version stays).
    WriteFailed(String),
}

impl fmt::Display for RecordEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Recorded { exchange, what } => write!(f, "recorded {exchange} -> {what}"),
            Self::Skipped { exchange, why } => write!(f, "not recorded {exchange}: {why}"),
            Self::WriteFailed(why) => write!(f, "{why}"),
        }
    }
}

/// The [`ExchangeTap`] of `wvpc dev --record`. Cheap to clone.
#[derive(Clone)]
pub struct MockRecorder {
    exchanges: std::sync::mpsc::Sender<TappedExchange>,
    written: watch::Receiver<u64>,
    path: Arc<Path>,
}

impl fmt::Debug for MockRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockRecorder")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ExchangeTap for MockRecorder {
    fn exchange(&self, exchange: TappedExchange) {
        // The writer only stops when every recorder is gone.
        let _ = self.exchanges.send(exchange);
    }
}

impl MockRecorder {
    /// Starts recording into `path` (replaced: it is written at once, with no entries) for the
    /// script of `config_path`. Returns the recorder and what happens to each exchange.
    pub fn start(
        path: &Path,
        config_path: &Path,
    ) -> Result<(MockRecorder, mpsc::UnboundedReceiver<RecordEvent>), RecordError> {
        let config = std::path::absolute(config_path).unwrap_or_else(|_| config_path.into());
        let writer = Writer::new(path, config);
        writer.write()?;
        let (exchanges, received) = std::sync::mpsc::channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let (written_tx, written) = watch::channel(0);
        std::thread::Builder::new()
            .name("wvpc-mock-record".into())
            .spawn(move || writer.run(&received, &events, &written_tx))
            .map_err(RecordError::Start)?;
        Ok((
            MockRecorder {
                exchanges,
                written,
                path: path.into(),
            },
            events_rx,
        ))
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many exchanges were handled so far (written to the file, or skipped).
    pub fn handled(&self) -> u64 {
        *self.written.borrow()
    }

    /// Resolves once `count` exchanges were handled and the file says so.
    pub async fn wait_handled(&self, count: u64) {
        let mut written = self.written.clone();
        let _ = written.wait_for(|n| *n >= count).await;
    }
}

/// One recorded route's latest outcome.
#[derive(Debug, Clone)]
enum Entry {
    Response {
        status: u16,
        headers: Vec<(String, Vec<String>)>,
        body: StoredBody,
        /// A fault that acts on the response (`http_response_incomplete`).
        fault: Option<FaultCode>,
    },
    Fault(FaultCode),
}

#[derive(Debug, Clone)]
enum StoredBody {
    Inline(String),
    /// Relative to the mock file's folder.
    File(String),
}

/// (method, path and query).
type RouteKey = (String, String);

/// The recording, owned by the writer thread.
struct Writer {
    path: PathBuf,
    config: PathBuf,
    started: SystemTime,
    bindings: BTreeMap<String, BTreeMap<RouteKey, Entry>>,
    exchanges: u64,
    skipped: Vec<String>,
}

impl Writer {
    fn new(path: &Path, config: PathBuf) -> Self {
        Self {
            path: path.to_owned(),
            config,
            started: SystemTime::now(),
            bindings: BTreeMap::new(),
            exchanges: 0,
            skipped: Vec::new(),
        }
    }

    fn folder(&self) -> PathBuf {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        }
    }

    /// `<stem>.bodies`, the folder of body files next to the mock file.
    fn bodies_name(&self) -> String {
        let stem = self
            .path
            .file_stem()
            .map_or_else(|| "mock".into(), |s| s.to_string_lossy().into_owned());
        format!("{stem}.bodies")
    }

    fn run(
        mut self,
        received: &std::sync::mpsc::Receiver<TappedExchange>,
        events: &mpsc::UnboundedSender<RecordEvent>,
        written: &watch::Sender<u64>,
    ) {
        let mut handled = 0;
        while let Ok(first) = received.recv() {
            // A burst is written once; its lines are told once the file holds them.
            let said: Vec<RecordEvent> = std::iter::once(first)
                .chain(received.try_iter())
                .map(|exchange| self.apply(exchange))
                .collect();
            handled += said.len() as u64;
            if let Err(err) = self.write() {
                let _ = events.send(RecordEvent::WriteFailed(format!(
                    "{err} (the previous version stays)"
                )));
            }
            for event in said {
                let _ = events.send(event);
            }
            written.send_replace(handled);
        }
    }

    fn apply(&mut self, exchange: TappedExchange) -> RecordEvent {
        let TappedExchange {
            binding,
            method,
            uri,
            outcome,
            ..
        } = exchange;
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
        let label = format!("{binding} {method} {path}");
        let skip = |this: &mut Self, why: String| {
            this.skipped.push(format!("{label}: {why}"));
            RecordEvent::Skipped {
                exchange: label.clone(),
                why,
            }
        };
        let key = (method.as_str().to_owned(), path.clone());
        let (entry, what) = match outcome {
            TappedOutcome::Failed(code) => match fault_for(code) {
                Some(fault) => (Entry::Fault(fault), format!("fault {fault}")),
                None => return skip(self, unreplayable(code)),
            },
            TappedOutcome::Response {
                status,
                headers,
                body,
            } => {
                let (bytes, fault, mut notes) = match body {
                    TappedBody::Complete(bytes) => (bytes, None, Vec::new()),
                    TappedBody::Unread(bytes) => {
                        let note = format!(
                            "the script read {} bytes of the body and stopped; those are recorded",
                            bytes.len()
                        );
                        (bytes, None, vec![note])
                    }
                    TappedBody::Failed(bytes, code) => match fault_for(code) {
                        Some(fault @ FaultCode::HttpResponseIncomplete) => {
                            (bytes, Some(fault), Vec::new())
                        }
                        _ => return skip(self, format!("its body failed: {}", unreplayable(code))),
                    },
                    TappedBody::TooLarge { bytes } => {
                        return skip(
                            self,
                            format!(
                                "its body is larger than {} MiB ({bytes} bytes read when the \
                                 copy stopped); answer it from an upstream instead",
                                wvpc_runtime::MAX_TAPPED_BODY >> 20
                            ),
                        );
                    }
                };
                let head = method == http::Method::HEAD;
                let headers = recordable_headers(&headers, head, &mut notes);
                let len = bytes.len();
                let stored = match self.store_body(&binding, &key, bytes) {
                    Ok(stored) => stored,
                    Err(err) => return skip(self, err.to_string()),
                };
                let mut what = match &stored {
                    StoredBody::Inline(_) => format!("{} ({len} bytes inline)", status.as_u16()),
                    StoredBody::File(name) => {
                        format!("{} ({len} bytes in {name})", status.as_u16())
                    }
                };
                if let Some(fault) = fault {
                    what.push_str(&format!(", then fault {fault}"));
                }
                for note in notes {
                    what.push_str(&format!("; {note}"));
                }
                let entry = Entry::Response {
                    status: status.as_u16(),
                    headers,
                    body: stored,
                    fault,
                };
                (entry, what)
            }
        };
        self.exchanges += 1;
        let routes = self.bindings.entry(binding).or_default();
        let replaced = routes.insert(key.clone(), entry.clone());
        // A body file the latest entry no longer uses.
        if let Some(Entry::Response {
            body: StoredBody::File(old),
            ..
        }) = replaced
            && !matches!(&entry, Entry::Response { body: StoredBody::File(new), .. } if *new == old)
        {
            let _ = std::fs::remove_file(self.folder().join(old));
        }
        RecordEvent::Recorded {
            exchange: label,
            what,
        }
    }

    /// Inline when UTF-8 and small, else a body file (written atomically).
    fn store_body(
        &self,
        binding: &str,
        (method, path): &RouteKey,
        bytes: Bytes,
    ) -> Result<StoredBody, RecordError> {
        if bytes.len() <= INLINE_BODY_LIMIT
            && let Ok(text) = std::str::from_utf8(&bytes)
        {
            return Ok(StoredBody::Inline(text.to_owned()));
        }
        let name = format!(
            "{}/{}",
            self.bodies_name(),
            body_file_name(binding, method, path)
        );
        let full = self.folder().join(&name);
        let dir = full.parent().unwrap_or(Path::new("."));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let mut file = tempfile::NamedTempFile::new_in(dir)?;
            file.write_all(&bytes)?;
            file.persist(&full).map_err(|e| e.error)?;
            Ok(())
        };
        write().map_err(|source| RecordError::Write {
            path: full.clone(),
            source,
        })?;
        Ok(StoredBody::File(name))
    }

    /// Rewrites the whole file: a temporary file next to it, renamed over it.
    fn write(&self) -> Result<(), RecordError> {
        let text = self.render();
        let folder = self.folder();
        let write = || -> std::io::Result<()> {
            let mut file = tempfile::NamedTempFile::new_in(&folder)?;
            file.write_all(text.as_bytes())?;
            file.as_file().sync_data()?;
            file.persist(&self.path).map_err(|e| e.error)?;
            Ok(())
        };
        write().map_err(|source| RecordError::Write {
            path: self.path.clone(),
            source,
        })
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let now = SystemTime::now();
        out.push_str(&format!(
            "// Recorded by `wvpc dev --record` from the script of {}\n\
             // from {} to {} ({} exchanges). Replay it offline with `wvpc dev --mock {}`.\n\
             // Each binding, method and path (with its query) keeps its latest exchange; a failed\n\
             // one is a fault of rate 100. Large or binary bodies are in {}/.\n",
            self.config.display(),
            humantime::format_rfc3339_seconds(self.started),
            humantime::format_rfc3339_seconds(now),
            self.exchanges,
            self.path.display(),
            self.bodies_name(),
        ));
        if !self.skipped.is_empty() {
            out.push_str("// Not recorded (they cannot be replayed):\n");
            for skipped in &self.skipped {
                out.push_str(&format!("//   {}\n", skipped.replace('\n', " ")));
            }
        }
        out.push_str("{\n  \"bindings\": {");
        let mut first_binding = true;
        for (binding, routes) in &self.bindings {
            out.push_str(if first_binding { "\n" } else { ",\n" });
            first_binding = false;
            out.push_str(&format!("    {}: {{\n", json(binding)));
            // A path with a query before the same path without: the mock's first match wins,
            // and a pattern without a query matches any query.
            let mut ordered: Vec<(&RouteKey, &Entry)> = routes.iter().collect();
            ordered.sort_by_key(|((method, path), _)| {
                (!path.contains('?'), path.clone(), method.clone())
            });
            let mut responses = Vec::new();
            let mut faults = Vec::new();
            for ((method, path), entry) in ordered {
                let route = format!("\"method\": {}, \"path\": {}", json(method), json(path));
                match entry {
                    Entry::Fault(code) => faults.push(fault_line(&route, *code)),
                    Entry::Response {
                        status,
                        headers,
                        body,
                        fault,
                    } => {
                        let mut line = format!("{{ {route}, \"status\": {status}");
                        if !headers.is_empty() {
                            let fields: Vec<String> = headers
                                .iter()
                                .map(|(name, values)| match values.as_slice() {
                                    [one] => format!("{}: {}", json(name), json(one)),
                                    many => format!(
                                        "{}: [{}]",
                                        json(name),
                                        many.iter().map(|v| json(v)).collect::<Vec<_>>().join(", ")
                                    ),
                                })
                                .collect();
                            line.push_str(&format!(
                                ",\n          \"headers\": {{ {} }}",
                                fields.join(", ")
                            ));
                        }
                        match body {
                            StoredBody::Inline(text) => {
                                line.push_str(&format!(",\n          \"body\": {}", json(text)));
                            }
                            StoredBody::File(name) => {
                                line.push_str(&format!(
                                    ",\n          \"body_file\": {}",
                                    json(name)
                                ));
                            }
                        }
                        line.push_str(" }");
                        responses.push(line);
                        if let Some(code) = fault {
                            faults.push(fault_line(&route, *code));
                        }
                    }
                }
            }
            let mut sections = Vec::new();
            if !responses.is_empty() {
                sections.push(format!(
                    "      \"responses\": [\n        {}\n      ]",
                    responses.join(",\n        ")
                ));
            }
            if !faults.is_empty() {
                sections.push(format!(
                    "      \"faults\": [\n        {}\n      ]",
                    faults.join(",\n        ")
                ));
            }
            out.push_str(&sections.join(",\n"));
            out.push_str("\n    }");
        }
        out.push_str(if first_binding {
            "}\n}\n"
        } else {
            "\n  }\n}\n"
        });
        out
    }
}

fn fault_line(route: &str, code: FaultCode) -> String {
    format!(
        "{{ {route}, \"code\": {}, \"rate\": 100 }}",
        json(code.name())
    )
}

fn json(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// The mock's fault that gives `code`, if it has one.
fn fault_for(code: ErrorCode) -> Option<FaultCode> {
    FaultCode::ALL.into_iter().find(|f| f.error_code() == code)
}

fn unreplayable(code: ErrorCode) -> String {
    let names: Vec<&str> = FaultCode::ALL.iter().map(|c| c.name()).collect();
    format!(
        "it failed with {code}, which the mock cannot give (its faults: {})",
        names.join(", ")
    )
}

/// The headers the mock file can hold, each name once with its values in order.
fn recordable_headers(
    headers: &http::HeaderMap,
    head: bool,
    notes: &mut Vec<String>,
) -> Vec<(String, Vec<String>)> {
    let mut kept: Vec<(String, Vec<String>)> = Vec::new();
    for name in headers.keys() {
        let name = name.as_str();
        if DROPPED_HEADERS.contains(&name) && !(head && name == "content-length") {
            continue;
        }
        let mut values = Vec::new();
        for value in headers.get_all(name) {
            // JSON strings hold UTF-8 only: a value in another encoding (latin-1) is lost.
            match std::str::from_utf8(value.as_bytes()) {
                Ok(text) => values.push(text.to_owned()),
                Err(_) => notes.push(format!(
                    "a value of header {name} was left out (it is not UTF-8, which the mock \
                     file cannot hold)"
                )),
            }
        }
        if !values.is_empty() {
            kept.push((name.to_owned(), values));
        }
    }
    kept
}

/// A stable, readable file name for one route's body.
fn body_file_name(binding: &str, method: &str, path: &str) -> String {
    let readable: String = path
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let readable: String = readable.chars().take(60).collect();
    // FNV-1a: the same route gives the same name in every run (a rerun overwrites it).
    let mut hash: u32 = 0x811c_9dc5;
    for byte in [binding, "\0", method, "\0", path].concat().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let binding: String = binding
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{binding}-{method}-{readable}-{hash:08x}.body")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wvpc_iris::dev_mock::Fault;
    use wvpc_runtime::{ScriptConfig, VpcServiceBinding};

    struct Dir(PathBuf);
    impl Dir {
        fn new() -> Self {
            let dir =
                std::env::temp_dir().join(format!("wvpc-mock-record-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn exchange(method: &str, path: &str, outcome: TappedOutcome) -> TappedExchange {
        TappedExchange {
            script: "s".into(),
            binding: "API".into(),
            method: method.parse().unwrap(),
            uri: format!("http://api.internal{path}").parse().unwrap(),
            outcome,
        }
    }

    fn response(status: u16, headers: &[(&str, &str)], body: TappedBody) -> TappedOutcome {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        TappedOutcome::Response {
            status: http::StatusCode::from_u16(status).unwrap(),
            headers: map,
            body,
        }
    }

    fn load(path: &Path) -> wvpc_iris::dev_mock::BindingMock {
        let script = ScriptConfig {
            name: "s".into(),
            main: "s.wasm".into(),
            vpc_services: vec![VpcServiceBinding {
                binding: "API".into(),
                service_id: uuid::Uuid::nil(),
            }],
            vpc_networks: Vec::new(),
            limits: Default::default(),
        };
        let mut spec = crate::mock_file::load(path, &script).expect("a valid mock file");
        spec.bindings.remove("API").unwrap_or_default()
    }

    #[test]
    fn each_outcome_becomes_what_replays_it_and_the_rest_is_said() {
        let dir = Dir::new();
        let path = dir.0.join("rec.jsonc");
        let mut writer = Writer::new(&path, dir.0.join("wrangler.jsonc"));
        let big = Bytes::from(vec![b'x'; INLINE_BODY_LIMIT + 1]);
        let events = [
            exchange(
                "GET",
                "/cut",
                response(
                    200,
                    &[],
                    TappedBody::Failed(
                        Bytes::from_static(b"par"),
                        ErrorCode::HttpResponseIncomplete,
                    ),
                ),
            ),
            exchange("GET", "/dns", TappedOutcome::Failed(ErrorCode::DnsError)),
            exchange(
                "GET",
                "/gone",
                TappedOutcome::Failed(ErrorCode::DestinationUnavailable),
            ),
            exchange(
                "GET",
                "/huge",
                response(200, &[], TappedBody::TooLarge { bytes: 1 << 25 }),
            ),
            exchange(
                "HEAD",
                "/file",
                response(
                    200,
                    &[("content-length", "42")],
                    TappedBody::Complete(Bytes::new()),
                ),
            ),
            exchange(
                "GET",
                "/file",
                response(200, &[], TappedBody::Complete(big.clone())),
            ),
            exchange(
                "GET",
                "/half",
                response(200, &[], TappedBody::Unread(Bytes::from_static(b"ab"))),
            ),
        ];
        let said: Vec<String> = events
            .into_iter()
            .map(|e| writer.apply(e).to_string())
            .collect();
        writer.write().unwrap();
        assert_eq!(
            said[0],
            "recorded API GET /cut -> 200 (3 bytes inline), then fault http_response_incomplete"
        );
        assert_eq!(said[1], "recorded API GET /dns -> fault dns_error");
        assert!(
            said[2].starts_with(
                "not recorded API GET /gone: it failed with destination_unavailable, which the \
                 mock cannot give"
            ),
            "{}",
            said[2]
        );
        assert!(
            said[3].starts_with("not recorded API GET /huge: its body is larger than 16 MiB"),
            "{}",
            said[3]
        );
        assert!(said[6].contains("the script read 2 bytes"), "{}", said[6]);

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("//   API GET /gone: it failed with"),
            "{text}"
        );
        let mock = load(&path);
        let cut = mock.responses.iter().find(|r| r.path == "/cut").unwrap();
        assert_eq!(cut.body, Bytes::from_static(b"par"));
        assert!(
            mock.faults.contains(
                &Fault::new(FaultCode::HttpResponseIncomplete)
                    .on_path("/cut")
                    .on_method("GET")
            )
        );
        assert!(
            mock.faults.contains(
                &Fault::new(FaultCode::DnsError)
                    .on_path("/dns")
                    .on_method("GET")
            )
        );
        let head = mock
            .responses
            .iter()
            .find(|r| r.method.as_deref() == Some("HEAD"))
            .unwrap();
        assert_eq!(
            head.headers,
            vec![("content-length".to_owned(), "42".to_owned())]
        );
        let file = mock
            .responses
            .iter()
            .find(|r| r.method.as_deref() == Some("GET") && r.path == "/file")
            .unwrap();
        assert_eq!(file.body, big);
        assert!(!mock.responses.iter().any(|r| r.path == "/huge"));

        // The latest wins: a small answer for /file replaces the body file, which is removed.
        let bodies = dir.0.join("rec.bodies");
        assert_eq!(std::fs::read_dir(&bodies).unwrap().count(), 1);
        writer.apply(exchange(
            "GET",
            "/file",
            response(201, &[], TappedBody::Complete(Bytes::from_static(b"small"))),
        ));
        writer.write().unwrap();
        assert_eq!(std::fs::read_dir(&bodies).unwrap().count(), 0);
        let mock = load(&path);
        let file = mock
            .responses
            .iter()
            .find(|r| r.method.as_deref() == Some("GET") && r.path == "/file")
            .unwrap();
        assert_eq!((file.status, &file.body[..]), (201, &b"small"[..]));
    }

    #[test]
    fn a_path_with_a_query_comes_before_the_same_path_without() {
        let dir = Dir::new();
        let path = dir.0.join("rec.jsonc");
        let mut writer = Writer::new(&path, dir.0.join("wrangler.jsonc"));
        for p in ["/a", "/a?x=1"] {
            writer.apply(exchange(
                "GET",
                p,
                response(200, &[], TappedBody::Complete(Bytes::from(p))),
            ));
        }
        writer.write().unwrap();
        let mock = load(&path);
        let paths: Vec<&str> = mock.responses.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/a?x=1", "/a"]);
    }

    #[test]
    fn a_file_with_no_exchange_yet_is_a_valid_mock() {
        let dir = Dir::new();
        let path = dir.0.join("rec.jsonc");
        Writer::new(&path, dir.0.join("wrangler.jsonc"))
            .write()
            .unwrap();
        assert_eq!(load(&path), Default::default());
    }

    #[test]
    fn body_file_names_are_stable_and_distinct() {
        let a = body_file_name("API", "GET", "/big/100000?x=1");
        assert_eq!(a, body_file_name("API", "GET", "/big/100000?x=1"));
        assert!(a.starts_with("API-GET-big-100000-x-1-"), "{a}");
        assert_ne!(a, body_file_name("API", "GET", "/big/100000?x=2"));
        assert_ne!(a, body_file_name("API", "POST", "/big/100000?x=1"));
    }

    #[test]
    fn hop_by_hop_and_volatile_headers_are_dropped_and_repeats_kept() {
        let mut headers = http::HeaderMap::new();
        headers.insert("date", "Fri, 04 Dec 2026 03:00:00 GMT".parse().unwrap());
        headers.insert("content-length", "5".parse().unwrap());
        headers.insert("connection", "keep-alive".parse().unwrap());
        headers.append("set-cookie", "a=1".parse().unwrap());
        headers.append("set-cookie", "b=2".parse().unwrap());
        headers.insert(
            "x-latin",
            http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        );
        let mut notes = Vec::new();
        let kept = recordable_headers(&headers, false, &mut notes);
        assert_eq!(
            kept,
            vec![(
                "set-cookie".to_owned(),
                vec!["a=1".to_owned(), "b=2".to_owned()]
            )]
        );
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("x-latin"), "{notes:?}");
        let kept = recordable_headers(&headers, true, &mut Vec::new());
        assert!(
            kept.iter()
                .any(|(n, v)| n == "content-length" && v == &["5"])
        );
    }
}
