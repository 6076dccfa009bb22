//! Following a script's output on every live runtime (`wvpc tail`, and the directory API's
//! tail endpoint): each runtime serves `GET /tail?account=…&script=…` on its control
//! listener as a stream of JSON lines, one per event; [`follow`] finds the live runtimes
//! ([`crate::runtimes`]), connects to each, keeps looking for new ones, and merges their
//! lines into one channel.
//!
//! The control listener answers only requests that carry a token derived from the platform
//! secret, so nothing else on the network reads scripts' output.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::error::DirectoryError;

/// Path of the tail endpoint on a runtime's control listener.
pub const TAIL_PATH: &str = "/tail";
/// How often [`follow`] looks for runtimes that started since.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(2);
/// Longest event line passed on; longer lines are dropped (a runtime bounds its lines far
/// below this).
const MAX_LINE: usize = 256 << 10;

/// Whose output to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailTarget {
    /// The script's account.
    pub account_id: String,
    /// The script's name.
    pub script: String,
}

impl TailTarget {
    /// The request path and query for this target.
    pub fn path_and_query(&self) -> String {
        format!(
            "{TAIL_PATH}?account={}&script={}",
            form_urlencoded::byte_serialize(self.account_id.as_bytes()).collect::<String>(),
            form_urlencoded::byte_serialize(self.script.as_bytes()).collect::<String>()
        )
    }
}

/// Lists the control addresses of the live runtimes (blocking: a directory read).
pub type RuntimeLister = dyn Fn() -> Result<Vec<SocketAddr>, DirectoryError> + Send + Sync;

/// Follows `target` on every runtime `list` names, now and later, until the receiver is
/// dropped. Each item is one event line (JSON, without the newline).
pub fn follow(
    list: Arc<RuntimeLister>,
    token: String,
    target: TailTarget,
) -> mpsc::Receiver<Bytes> {
    let (lines, receiver) = mpsc::channel(1024);
    tokio::spawn(async move {
        let followed: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
        let mut ticks = tokio::time::interval(DISCOVERY_INTERVAL);
        loop {
            ticks.tick().await;
            if lines.is_closed() {
                return;
            }
            let list = list.clone();
            let runtimes = match tokio::task::spawn_blocking(move || list()).await {
                Ok(Ok(runtimes)) => runtimes,
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "cannot list the live runtimes to tail");
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "runtime listing failed");
                    continue;
                }
            };
            for addr in runtimes {
                let new = followed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(addr);
                if !new {
                    continue;
                }
                let (lines, token, target, followed) = (
                    lines.clone(),
                    token.clone(),
                    target.clone(),
                    followed.clone(),
                );
                tokio::spawn(async move {
                    if let Err(err) = follow_one(addr, &token, &target, &lines).await {
                        tracing::debug!(runtime = %addr, error = %err, "tail of a runtime ended");
                    }
                    // Looked for again at the next discovery, if it is still live.
                    followed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&addr);
                });
            }
        }
    });
    receiver
}

/// Why following one runtime ended.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("connecting: {0}")]
    Connect(#[from] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("the runtime answered {0}")]
    Status(http::StatusCode),
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
}

async fn follow_one(
    addr: SocketAddr,
    token: &str,
    target: &TailTarget,
    lines: &mpsc::Sender<Bytes>,
) -> Result<(), FollowError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let request = http::Request::get(target.path_and_query())
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    if response.status() != http::StatusCode::OK {
        connection.abort();
        return Err(FollowError::Status(response.status()));
    }
    let mut body = response.into_body();
    let mut pending = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line = pending.split_to(end + 1).freeze();
            let line = line.slice(..end);
            if !line.is_empty() && lines.send(line).await.is_err() {
                connection.abort();
                return Ok(());
            }
        }
        if pending.len() > MAX_LINE {
            pending.clear();
        }
    }
    connection.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_encoded_in_the_query() {
        let target = TailTarget {
            account_id: "abc".into(),
            script: "my script&x".into(),
        };
        assert_eq!(
            target.path_and_query(),
            "/tail?account=abc&script=my+script%26x"
        );
    }
}
