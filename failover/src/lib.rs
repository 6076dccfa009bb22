//! Failing a request over to another node: which failures of an HTTP/2 request that got no
//! answer head may be sent again elsewhere ([`Unanswered::classify`]).
//!
//! One rule for every client of workers-vpc that has several nodes to choose from: the
//! binding-worker's CONNECT to iris nodes, and iris relaying a CONNECT to the nodes that hold
//! a tunnel. A request qualifies when the peer provably did not take it (GOAWAY past its
//! stream, REFUSED_STREAM) or the connection died before any answer (I/O error, closed,
//! keep-alive timeout): a CONNECT carries no body before its answer, so nothing of it reached
//! an origin. An answer that is merely late does not qualify (the peer may be dialling the
//! origin); callers time that out themselves.

/// Why a request got no answer head, when that makes it safe to send it to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unanswered {
    /// What happened, for the caller's error details (prefixed with the node).
    pub why: &'static str,
    /// The whole connection is unusable (not just this stream refused): drop it, and redial
    /// once if it had served before (it may have died while idle).
    pub connection_gone: bool,
}

impl Unanswered {
    /// Classifies `err`, the failure of a request sent on an HTTP/2 connection whose sender
    /// now reports `connection_closed` (`SendRequest::is_closed`). `None`: the failure may
    /// have happened after the peer took the request; do not send it again.
    pub fn classify(err: &hyper::Error, connection_closed: bool) -> Option<Self> {
        if let Some(h2) = find_source::<h2::Error>(err) {
            if h2.is_go_away() {
                return Some(Self {
                    why: "the peer is going away (GOAWAY) and did not take the CONNECT",
                    connection_gone: true,
                });
            }
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Some(Self {
                    why: "the peer refused the stream (REFUSED_STREAM)",
                    connection_gone: false,
                });
            }
            if h2.is_io() {
                return Some(Self {
                    why: "the connection broke before the peer answered",
                    connection_gone: true,
                });
            }
        }
        if find_source::<std::io::Error>(err).is_some() {
            return Some(Self {
                why: "the connection broke before the peer answered",
                connection_gone: true,
            });
        }
        if connection_closed
            || err.is_closed()
            || err.is_canceled()
            || err.is_incomplete_message()
            || err.is_timeout()
        {
            return Some(Self {
                why: "the connection closed before the peer answered",
                connection_gone: true,
            });
        }
        None
    }
}

/// The first error of type `T` in `err`'s source chain.
fn find_source<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}
