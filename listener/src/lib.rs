//! Accepting and serving connections within limits, the same way on every listener of
//! workers-vpc (the script HTTP listener of `wvpc dev` and `wvpc runtime`, the runtime's
//! control listener, the directory API, iris's CONNECT listener, the metrics listeners and
//! the binding-worker's capnp listener).
//!
//! - [`Acceptor`]: a connection cap per listener (one more connection gets a short 503 with
//!   an explanation, or is closed when the listener does not speak HTTP), and an accept loop
//!   that backs off and keeps serving when the process runs out of file descriptors.
//! - [`serve`] ([`serve_with`] after a per-connection handshake such as TLS): HTTP/1.1 (optionally HTTP/2) over an [`Acceptor`] with a header-read timeout
//!   (slowloris), an idle timeout for keep-alive connections, HTTP/2 keep-alive pings, and
//!   explained answers, with a request id, to request heads hyper refuses (too many header
//!   fields, too large, malformed).
//! - [`raise_fd_limit`]: long-running commands raise `RLIMIT_NOFILE` to the hard limit at
//!   start; [`ServerLimits::default`] sizes the connection cap from the limit then in force.

mod accept;
mod http;
mod limits;
mod refusal;

pub use accept::{ACCEPT_BACKOFF, Acceptor, Admitted, ConnectionPermit, RefuseWith};
pub use http::{ConnectionHold, ConnectionUse, Http2Settings, HttpServer, serve, serve_with};
pub use limits::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL,
    DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_HEAD_BYTES,
    DEFAULT_MAX_REQUEST_HEADERS, FdLimit, MAX_DEFAULT_CONNECTIONS, ServerLimits,
    connections_for_fd_limit, default_max_connections, fd_limit, raise_fd_limit,
};
pub use refusal::{Page, PageFn, REQUEST_ID_HEADER, Refusal, new_request_id, plain_text_page};
