//! Reading another process's `/status.json` (what `wvpc service metrics` does with every node
//! it is given): one HTTP/1.1 GET, with an admin token when the node is not on loopback.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use url::Url;

use crate::status::StatusReport;

/// How long one node may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a node's status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not `http://HOST:PORT[/…]`.
    #[error("{0}: give the node's operations listener as http://HOST:PORT (its --metrics address)")]
    BadUrl(String),
    /// No connection, or it broke.
    #[error("{url}: {source}")]
    Io {
        /// The node.
        url: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("{url}: {source}")]
    Http {
        /// The node.
        url: String,
        /// What failed.
        source: hyper::Error,
    },
    /// No answer within the timeout.
    #[error("{0}: no answer within 10 s")]
    Timeout(String),
    /// The node refused or failed the request.
    #[error("{url} answered {status}: {body}")]
    Refused {
        /// The node.
        url: String,
        /// Its status.
        status: StatusCode,
        /// Its explanation.
        body: String,
    },
    /// The answer is not a status report.
    #[error(
        "{url}: the answer is not a status report ({source}); is this a workers-vpc operations listener?"
    )]
    NotAReport {
        /// The node.
        url: String,
        /// Why it does not parse.
        source: serde_json::Error,
    },
}

/// The status of the node at `base` (`http://HOST:PORT`), with a summary over the last
/// `minutes` if given; `token` is sent as a bearer token.
pub async fn fetch_report(
    base: &str,
    minutes: Option<u32>,
    token: Option<&str>,
) -> Result<StatusReport, FetchError> {
    tokio::time::timeout(TIMEOUT, fetch(base, minutes, token))
        .await
        .unwrap_or_else(|_| Err(FetchError::Timeout(base.to_owned())))
}

async fn fetch(
    base: &str,
    minutes: Option<u32>,
    token: Option<&str>,
) -> Result<StatusReport, FetchError> {
    let bad = || FetchError::BadUrl(base.to_owned());
    let parsed = Url::parse(base).map_err(|_| bad())?;
    if parsed.scheme() != "http" {
        return Err(bad());
    }
    let host = parsed.host_str().ok_or_else(bad)?;
    let port = parsed.port_or_known_default().ok_or_else(bad)?;
    let authority = match parsed.host() {
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    let io = |source| FetchError::Io {
        url: base.to_owned(),
        source,
    };
    let http = |source| FetchError::Http {
        url: base.to_owned(),
        source,
    };
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(connection);
    let path = match minutes {
        Some(m) => format!("/status.json?minutes={m}"),
        None => "/status.json".to_owned(),
    };
    let mut request = Request::get(path).header(header::HOST, &authority);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Empty::<Bytes>::new()).map_err(|_| bad())?;
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(http)?
        .to_bytes();
    if !status.is_success() {
        return Err(FetchError::Refused {
            url: base.to_owned(),
            status,
            body: String::from_utf8_lossy(&body).trim().to_owned(),
        });
    }
    serde_json::from_slice(&body).map_err(|source| FetchError::NotAReport {
        url: base.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Ops;
    use std::sync::Arc;

    #[tokio::test]
    async fn reads_a_nodes_report_and_says_what_went_wrong() {
        let ops = Arc::new(Ops::new("iris", "node-x"));
        let (addr, _task) = crate::ops::start(
            "127.0.0.1:0".parse().unwrap(),
            ops,
            wvpc_listener::ServerLimits::default(),
        )
        .await
        .unwrap();
        let report = fetch_report(&format!("http://{addr}"), Some(15), None)
            .await
            .unwrap();
        assert_eq!(report.node.name, "node-x");
        assert_eq!(report.windows, vec![5, 60, 15]);

        let err = fetch_report(&format!("http://{addr}"), Some(99), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, FetchError::Refused { status, .. } if *status == StatusCode::BAD_REQUEST),
            "{err}"
        );
        let err = fetch_report("https://example.invalid", None, None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("http://HOST:PORT"), "{err}");
    }
}
