//! What a listener allows ([`ServerLimits`]) and the process's file-descriptor limit its
//! connection cap is sized from ([`raise_fd_limit`], [`default_max_connections`]).

use std::time::Duration;

/// Default [`ServerLimits::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ServerLimits::idle_timeout`] (nginx's `keepalive_timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Default [`ServerLimits::max_request_headers`]. Workers bounds a request's headers by size
/// (128 KB in total), not by count; 1 000 fields fit any real request within that size while
/// keeping the per-request parse buffer small (64 bytes a field).
pub const DEFAULT_MAX_REQUEST_HEADERS: usize = 1_000;
/// Default [`ServerLimits::max_head_bytes`]: the request line and headers of one request.
/// Above Workers' 128 KB of headers plus a 16 KB URL.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 512 << 10;
/// Default [`ServerLimits::http2_keep_alive_interval`].
pub const DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Default [`ServerLimits::http2_keep_alive_timeout`].
pub const DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The default connection cap never exceeds this, whatever the fd limit: each open
/// connection also costs memory (buffers, a task).
pub const MAX_DEFAULT_CONNECTIONS: usize = 65_536;
/// Nor goes below this, however low the fd limit.
const MIN_DEFAULT_CONNECTIONS: usize = 16;
/// The fd limit assumed when it cannot be read.
const ASSUMED_FD_LIMIT: u64 = 1_024;
/// Linux's default `fs.nr_open`: the most a soft limit can be raised to when the hard
/// limit is "unlimited".
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// Timeouts and limits of one listener. [`Default`] sizes the connection cap from the
/// current fd limit: call [`raise_fd_limit`] first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// A connection must deliver a complete request head within this time of its first
    /// byte (and its first request head within this time of being accepted), else it is
    /// closed.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no byte of a new one is closed after
    /// this time (HTTP/2: no open stream; the client gets a GOAWAY).
    pub idle_timeout: Duration,
    /// Most connections open at once on the listener; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Most header fields in one HTTP/1 request; one more is answered 431.
    pub max_request_headers: usize,
    /// Most bytes of one HTTP/1 request line and headers; more is answered 431.
    pub max_head_bytes: usize,
    /// HTTP/2: how often an idle connection is pinged to find out whether the peer is alive.
    pub http2_keep_alive_interval: Duration,
    /// HTTP/2: a ping unanswered for this long closes the connection.
    pub http2_keep_alive_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: default_max_connections(),
            max_request_headers: DEFAULT_MAX_REQUEST_HEADERS,
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            http2_keep_alive_interval: DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL,
            http2_keep_alive_timeout: DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT,
        }
    }
}

/// The process's open-file limit after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit in force before.
    pub before: u64,
    /// The soft limit in force now.
    pub soft: u64,
    /// The hard limit (the most the soft limit may be raised to).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (or to Linux's `nr_open` when the
/// hard limit is unlimited). Long-running commands call it first thing, so that their
/// listeners' connection caps ([`default_max_connections`]) are sized from the raised limit.
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    let (before, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        // An unlimited hard limit cannot be the soft limit on Linux.
        Err(_) => rlimit::increase_nofile_limit(NR_OPEN_DEFAULT)?,
    };
    Ok(FdLimit { before, soft, hard })
}

/// The soft `RLIMIT_NOFILE` in force, if it can be read.
pub fn fd_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// The connection cap of one listener under the current fd limit
/// ([`connections_for_fd_limit`]).
pub fn default_max_connections() -> usize {
    connections_for_fd_limit(fd_limit().unwrap_or(ASSUMED_FD_LIMIT))
}

/// The connection cap of one listener under an fd limit of `fds`: an eighth (at least 64)
/// is kept for everything but accepted connections (files, outgoing connections, the
/// connections being refused), and half the rest goes to each listener, so that a flood on
/// one port leaves room for the other public port of `wvpc dev` and for the work requests
/// need. Within [16, [`MAX_DEFAULT_CONNECTIONS`]]. 1 024 fds → 448 connections.
pub fn connections_for_fd_limit(fds: u64) -> usize {
    let reserve = (fds / 8).max(64);
    let per_listener = fds.saturating_sub(reserve) / 2;
    usize::try_from(per_listener)
        .unwrap_or(usize::MAX)
        .clamp(MIN_DEFAULT_CONNECTIONS, MAX_DEFAULT_CONNECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_below_the_fd_limit_and_within_bounds() {
        assert_eq!(connections_for_fd_limit(1_024), 448);
        assert_eq!(connections_for_fd_limit(20_000), 8_750);
        assert_eq!(connections_for_fd_limit(1 << 20), MAX_DEFAULT_CONNECTIONS);
        assert_eq!(connections_for_fd_limit(u64::MAX), MAX_DEFAULT_CONNECTIONS);
        assert_eq!(connections_for_fd_limit(0), MIN_DEFAULT_CONNECTIONS);
        for fds in [256, 1_024, 4_096, 65_536] {
            assert!(2 * connections_for_fd_limit(fds) < usize::try_from(fds).unwrap());
        }
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let raised = raise_fd_limit().expect("getrlimit works here");
        assert!(raised.soft >= raised.before);
        assert_eq!(fd_limit(), Some(raised.soft));
        assert!(raised.soft == raised.hard || raised.soft == NR_OPEN_DEFAULT);
    }
}
