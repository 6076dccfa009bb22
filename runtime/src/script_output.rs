//! A script's stdout and stderr, captured per request: each instance's WASI context gets its
//! own pair of line-splitting pipes, and every complete line goes to the runtime's
//! [`ScriptOutput`] with the account, script, version and the id of the request the instance
//! is serving. An instance that serves many requests keeps its pipes (the guest may hold
//! their stream handles); between two requests the partial last line is emitted and the
//! request id switched ([`RequestOutput::start_request`]). The output also hears of every
//! request's outcome ([`ScriptOutput::request`]).
//!
//! The default, [`PrefixedOutput`], prints `[<script> <first 8 of the request id>] <line>`
//! on the process's stdout / stderr — what `wvpc dev` shows. [`TailHub`](crate::TailHub)
//! prints the same and also publishes every line to live `wvpc tail` subscribers.

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Which of the script's streams a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScriptStream {
    /// `wasi:cli/stdout`.
    Stdout,
    /// `wasi:cli/stderr`.
    Stderr,
}

/// One line a script printed (without its line ending).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ScriptLine<'a> {
    /// The account that owns the script.
    pub account_id: &'a str,
    /// The script's name.
    pub script: &'a str,
    /// The version that printed it (`local` under `wvpc dev`).
    pub version: &'a str,
    /// The request during which it was printed.
    pub request_id: &'a str,
    /// Stdout or stderr.
    pub stream: ScriptStream,
    /// The text; invalid UTF-8 is replaced.
    pub text: &'a str,
}

/// How a request to a script ended, as of its response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOutcome {
    /// The script answered (any status it chose).
    Ok,
    /// The script trapped, answered with an error, or returned without a response (500).
    Exception,
    /// It ran into `limits.cpu_ms` (503).
    ExceededCpu,
    /// It ran into `limits.memory_mb` (503).
    ExceededMemory,
    /// It ran into `limits.wall_time_ms` before its response head (504).
    ExceededWallTime,
    /// The request was refused before the script ran (400, 414, 431).
    Refused,
    /// The runtime failed (500).
    InternalError,
}

/// One request to a script, reported once its response head is known.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestSummary<'a> {
    /// The account that owns the script.
    pub account_id: &'a str,
    /// The script's name.
    pub script: &'a str,
    /// The version that ran it.
    pub version: &'a str,
    /// The request id (`wvpc-request-id`).
    pub request_id: &'a str,
    /// The request method.
    pub method: &'a str,
    /// The host it was sent to (lowercase, without port).
    pub host: &'a str,
    /// Its path and query.
    pub path_and_query: &'a str,
    /// The response status.
    pub status: u16,
    /// How it ended.
    pub outcome: RequestOutcome,
}

/// Where the runtime sends scripts' output lines and request outcomes.
pub trait ScriptOutput: Send + Sync + 'static {
    /// Called once per complete line, and once for a final line without a newline when the
    /// request ends.
    fn line(&self, line: ScriptLine<'_>);

    /// Called once per request that reached a script, when its response head is ready.
    /// Ignored by default.
    fn request(&self, request: &RequestSummary<'_>) {
        let _ = request;
    }
}

/// Prints each line on the process's own stdout / stderr, prefixed with the script name and
/// the start of the request id: `[proxy 5f3a1b2c] hello`.
#[derive(Debug, Default, Clone, Copy)]
pub struct PrefixedOutput;

impl PrefixedOutput {
    /// The printed form of `line`.
    pub fn format(line: &ScriptLine<'_>) -> String {
        let id = line.request_id.get(..8).unwrap_or(line.request_id);
        format!("[{} {id}] {}", line.script, line.text)
    }
}

impl ScriptOutput for PrefixedOutput {
    fn line(&self, line: ScriptLine<'_>) {
        let text = Self::format(&line);
        // A closed stdout must not fail the script.
        let _ = match line.stream {
            ScriptStream::Stdout => writeln!(std::io::stdout().lock(), "{text}"),
            ScriptStream::Stderr => writeln!(std::io::stderr().lock(), "{text}"),
        };
    }
}

/// Longest line kept before it is emitted in pieces (a script printing without newlines
/// must not grow host memory).
const MAX_LINE: usize = 16 << 10;

/// Whose output a request's streams carry.
pub(crate) struct OutputSource {
    pub account_id: Arc<str>,
    pub script: Arc<str>,
    pub version: Arc<str>,
    pub request_id: Arc<str>,
}

/// The pending partial line of one stream of one instance, and the request it belongs to.
/// Shared by every stream handle the guest opens (each `get-stdout` makes a new one); the
/// last line is emitted when the request ends or the instance's store drops it.
struct LineBuffer {
    sink: Arc<dyn ScriptOutput>,
    source: OutputSource,
    stream: ScriptStream,
    current: Mutex<Current>,
}

/// The request being served and its partial line.
struct Current {
    request_id: Arc<str>,
    pending: Vec<u8>,
}

impl LineBuffer {
    fn emit(&self, request_id: &str, bytes: &[u8]) {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        self.sink.line(ScriptLine {
            account_id: &self.source.account_id,
            script: &self.source.script,
            version: &self.source.version,
            request_id,
            stream: self.stream,
            text: &String::from_utf8_lossy(bytes),
        });
    }

    fn write(&self, mut bytes: &[u8]) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let Current {
            request_id,
            pending,
        } = &mut *current;
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            pending.extend_from_slice(&bytes[..end]);
            self.emit(request_id, pending);
            pending.clear();
            bytes = &bytes[end + 1..];
        }
        pending.extend_from_slice(bytes);
        while pending.len() >= MAX_LINE {
            let rest = pending.split_off(MAX_LINE);
            self.emit(request_id, pending);
            *pending = rest;
        }
    }

    /// Emits the partial last line of the current request, if any.
    fn flush(&self, current: &mut Current) {
        if !current.pending.is_empty() {
            self.emit(&current.request_id, &current.pending);
            current.pending.clear();
        }
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        let mut current = std::mem::replace(
            self.current.get_mut().unwrap_or_else(|p| p.into_inner()),
            Current {
                request_id: self.source.request_id.clone(),
                pending: Vec::new(),
            },
        );
        self.flush(&mut current);
    }
}

/// The `StdoutStream` given to one request's WASI context.
#[derive(Clone)]
pub(crate) struct RequestOutput(Arc<LineBuffer>);

impl RequestOutput {
    pub fn new(sink: Arc<dyn ScriptOutput>, source: OutputSource, stream: ScriptStream) -> Self {
        let current = Current {
            request_id: source.request_id.clone(),
            pending: Vec::new(),
        };
        Self(Arc::new(LineBuffer {
            sink,
            source,
            stream,
            current: Mutex::new(current),
        }))
    }

    /// Emits the partial last line of the request that ended (with its id); what the
    /// instance writes from now on belongs to `request_id`.
    pub fn start_request(&self, request_id: Arc<str>) {
        let mut current = self.0.current.lock().unwrap_or_else(|p| p.into_inner());
        self.0.flush(&mut current);
        current.request_id = request_id;
    }

    /// Emits the partial last line of the current request, if any.
    pub fn finish_request(&self) {
        let mut current = self.0.current.lock().unwrap_or_else(|p| p.into_inner());
        self.0.flush(&mut current);
    }
}

impl IsTerminal for RequestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for RequestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for RequestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.write(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for RequestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for RequestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.write(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<String>>);

    impl ScriptOutput for Collect {
        fn line(&self, line: ScriptLine<'_>) {
            self.0.lock().unwrap().push(PrefixedOutput::format(&line));
        }
    }

    #[test]
    fn splits_lines_across_writes_and_flushes_the_last_one() {
        let sink = Arc::new(Collect::default());
        let source = OutputSource {
            account_id: "acct".into(),
            script: "proxy".into(),
            version: "v1".into(),
            request_id: "5f3a1b2c9d".into(),
        };
        let output = RequestOutput::new(sink.clone(), source, ScriptStream::Stdout);
        let mut stream = output.p2_stream();
        stream.write(Bytes::from_static(b"one\r\ntw")).unwrap();
        // A second handle (a new get-stdout) continues the same line.
        output
            .p2_stream()
            .write(Bytes::from_static(b"o\nthree"))
            .unwrap();
        assert_eq!(
            *sink.0.lock().unwrap(),
            ["[proxy 5f3a1b2c] one", "[proxy 5f3a1b2c] two"]
        );
        drop((stream, output));
        assert_eq!(
            sink.0.lock().unwrap().last().unwrap(),
            "[proxy 5f3a1b2c] three"
        );
    }

    #[test]
    fn a_reused_stream_writes_under_the_next_request_id() {
        let sink = Arc::new(Collect::default());
        let source = OutputSource {
            account_id: "acct".into(),
            script: "proxy".into(),
            version: "v1".into(),
            request_id: "11111111aa".into(),
        };
        let output = RequestOutput::new(sink.clone(), source, ScriptStream::Stdout);
        // The guest keeps its stream handle from one request to the next.
        let mut stream = output.p2_stream();
        stream.write(Bytes::from_static(b"first\npartial")).unwrap();
        output.start_request("22222222bb".into());
        stream.write(Bytes::from_static(b"second\nend")).unwrap();
        output.finish_request();
        assert_eq!(
            *sink.0.lock().unwrap(),
            [
                "[proxy 11111111] first",
                "[proxy 11111111] partial",
                "[proxy 22222222] second",
                "[proxy 22222222] end",
            ]
        );
        drop((stream, output));
        assert_eq!(sink.0.lock().unwrap().len(), 4, "nothing left to emit");
    }
}
