//! The CONNECT client to iris: every origin connection is one HTTP/2 CONNECT stream on a
//! single shared, multiplexed connection, re-dialled when it dies.
//!
//! The CONNECT names the service (`<service-id>:<80|443>` plus `wvpc-service-id`) and the
//! scheme; iris picks the real port, resolves, dials through the tunnel and answers `200`, or
//! a failure status whose `Proxy-Status` header carries the code.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use wvpc_errors::{ErrorCode, ProxyError};

use crate::origin_tls::{TlsPolicy, Verification};
use crate::request::FetchRequest;

/// Header names shared with iris (`wvpc_iris::connect`); repeated here because the two
/// binaries do not depend on each other.
const SERVICE_ID_HEADER: &str = "wvpc-service-id";
const SCHEME_HEADER: &str = "wvpc-scheme";
const ORIGINAL_HOST_HEADER: &str = "wvpc-original-host";
const REQUEST_ID_HEADER: &str = "wvpc-request-id";
const ACCOUNT_HEADER: &str = "wvpc-account";
const SCRIPT_HEADER: &str = "wvpc-script";
const PROXY_STATUS_HEADER: &str = "proxy-status";
const TLS_VERIFICATION_HEADER: &str = "wvpc-tls-verification";
const TLS_CA_HEADER: &str = "wvpc-tls-ca";

/// HTTP/2 flow-control windows: large enough that a multi-MiB body is not paced by window
/// updates on a fast link.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// Settings of the iris connection.
#[derive(Debug, Clone)]
pub(crate) struct IrisSettings {
    pub(crate) addr: SocketAddr,
    /// Bound on dialling iris and on iris's answer to a CONNECT.
    pub(crate) connect_timeout: Duration,
}

/// The shared connection to iris.
#[derive(Debug)]
pub(crate) struct IrisClient {
    settings: IrisSettings,
    /// A tokio mutex: while one task dials, the others wait for that connection.
    current: Mutex<LiveConnection>,
}

/// The connection in use; `sender` is `None` until first use and after it died.
#[derive(Debug, Default)]
struct LiveConnection {
    /// Counts dials, so that a late `forget` cannot drop a newer connection.
    generation: u64,
    sender: Option<http2::SendRequest<Empty<Bytes>>>,
}

impl IrisClient {
    pub(crate) fn new(settings: IrisSettings) -> Self {
        Self {
            settings,
            current: Mutex::new(LiveConnection::default()),
        }
    }

    /// Bound on dialling and on CONNECT answers (reused for the origin TLS handshake).
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.settings.connect_timeout
    }

    /// Opens a byte stream to `request`'s service: a CONNECT answered with `200`, whose
    /// headers carry the service's TLS settings for `https`.
    pub(crate) async fn connect(
        &self,
        request: &FetchRequest,
    ) -> Result<(Upgraded, TlsPolicy), ProxyError> {
        // One retry: a connection that died since its last use fails the first request.
        for attempt in 0..2 {
            let (generation, mut sender, reused) = self.sender().await?;
            let connect = connect_request(request)?;
            let answer =
                tokio::time::timeout(self.settings.connect_timeout, sender.send_request(connect))
                    .await;
            let response = match answer {
                Err(_elapsed) => {
                    return Err(ProxyError::new(ErrorCode::ConnectionTimeout).with_details(
                        format!(
                            "iris did not answer the CONNECT within {:?}",
                            self.settings.connect_timeout
                        ),
                    ));
                }
                Ok(Ok(response)) => response,
                Ok(Err(err)) => {
                    let connection_died =
                        sender.is_closed() || err.is_closed() || err.is_canceled();
                    if connection_died {
                        self.forget(generation).await;
                    }
                    if connection_died && reused && attempt == 0 {
                        tracing::debug!(error = %err, "iris connection failed; re-dialling");
                        continue;
                    }
                    return Err(ProxyError::new(ErrorCode::ProxyInternalError)
                        .with_details(format!("CONNECT to iris failed: {err}")));
                }
            };
            if response.status() != StatusCode::OK {
                return Err(refusal(response.status(), response.headers()));
            }
            let tls = tls_policy(response.headers())?;
            let stream = hyper::upgrade::on(response).await.map_err(|err| {
                ProxyError::new(ErrorCode::ProxyInternalError).with_details(format!(
                    "iris accepted the CONNECT but the stream failed: {err}"
                ))
            })?;
            return Ok((stream, tls));
        }
        Err(ProxyError::new(ErrorCode::ProxyInternalError)
            .with_details("iris connection failed twice in a row"))
    }

    /// The live connection, dialled if needed. `reused` tells whether it served before.
    async fn sender(&self) -> Result<(u64, http2::SendRequest<Empty<Bytes>>, bool), ProxyError> {
        let mut current = self.current.lock().await;
        if let Some(sender) = current.sender.as_ref()
            && !sender.is_closed()
        {
            return Ok((current.generation, sender.clone(), true));
        }
        let sender = self.dial().await?;
        current.generation += 1;
        current.sender = Some(sender.clone());
        Ok((current.generation, sender, false))
    }

    /// Drops the connection of `generation` if it is still the current one.
    async fn forget(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.generation == generation {
            current.sender = None;
        }
    }

    async fn dial(&self) -> Result<http2::SendRequest<Empty<Bytes>>, ProxyError> {
        let addr = self.settings.addr;
        let unreachable = |why: String| {
            ProxyError::new(ErrorCode::ProxyInternalError)
                .with_details(format!("cannot reach iris at {addr}: {why}"))
        };
        let tcp = tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        tcp.set_nodelay(true)
            .map_err(|e| unreachable(e.to_string()))?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| unreachable(format!("HTTP/2 handshake failed: {e}")))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::info!(%addr, error = %err, "iris connection closed");
            }
        });
        tracing::debug!(%addr, "connected to iris");
        Ok(sender)
    }
}

/// The CONNECT for `request`: the authority and headers name the service and the caller.
fn connect_request(request: &FetchRequest) -> Result<Request<Empty<Bytes>>, ProxyError> {
    let mut builder = Request::builder()
        .method(Method::CONNECT)
        .uri(format!(
            "{}:{}",
            request.service_id,
            request.scheme.default_port()
        ))
        .header(SERVICE_ID_HEADER, request.service_id.to_string())
        .header(SCHEME_HEADER, request.scheme.as_str())
        .header(ORIGINAL_HOST_HEADER, request.host.as_str());
    for (name, value) in [
        (REQUEST_ID_HEADER, &request.caller.request_id),
        (ACCOUNT_HEADER, &request.caller.account),
        (SCRIPT_HEADER, &request.caller.script),
    ] {
        if value.is_empty() {
            continue;
        }
        let value = HeaderValue::from_str(value).map_err(|_| {
            ProxyError::new(ErrorCode::ProxyConfigurationError).with_details(format!(
                "binding context value for {name} is not a valid header value"
            ))
        })?;
        builder = builder.header(name, value);
    }
    builder.body(Empty::new()).map_err(|e| {
        ProxyError::new(ErrorCode::ProxyInternalError)
            .with_details(format!("cannot build the CONNECT: {e}"))
    })
}

/// The service's TLS settings from a `200` answer; without them, `verify_full` and no CA.
fn tls_policy(headers: &http::HeaderMap) -> Result<TlsPolicy, ProxyError> {
    use base64::Engine as _;
    let bad = |why: String| {
        ProxyError::new(ErrorCode::ProxyInternalError)
            .with_details(format!("iris answered the CONNECT with {why}"))
    };
    let verification = match headers.get(TLS_VERIFICATION_HEADER) {
        None => Verification::default(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(Verification::parse)
            .ok_or_else(|| bad(format!("an unknown {TLS_VERIFICATION_HEADER} {value:?}")))?,
    };
    let ca_certificate = match headers.get(TLS_CA_HEADER) {
        None => None,
        Some(value) => {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(value.as_bytes())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| bad(format!("a {TLS_CA_HEADER} that is not base64 of PEM text")))?;
            Some(pem)
        }
    };
    Ok(TlsPolicy {
        verification,
        ca_certificate,
    })
}

/// The error a non-200 CONNECT answer carries.
fn refusal(status: StatusCode, headers: &http::HeaderMap) -> ProxyError {
    headers
        .get(PROXY_STATUS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(ProxyError::from_proxy_status)
        .unwrap_or_else(|| {
            ProxyError::new(ErrorCode::ProxyInternalError).with_details(format!(
                "iris answered the CONNECT with {status} and no Proxy-Status error"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_without_proxy_status_is_an_internal_error() {
        let mut headers = http::HeaderMap::new();
        let err = refusal(StatusCode::BAD_GATEWAY, &headers);
        assert_eq!(err.code, ErrorCode::ProxyInternalError);
        headers.insert(
            PROXY_STATUS_HEADER,
            HeaderValue::from_static("iris; error=nonsense"),
        );
        assert_eq!(
            refusal(StatusCode::BAD_GATEWAY, &headers).code,
            ErrorCode::ProxyInternalError
        );
        headers.insert(
            PROXY_STATUS_HEADER,
            HeaderValue::from_static("iris; error=dns_error; rcode=\"NXDOMAIN\""),
        );
        assert_eq!(
            refusal(StatusCode::BAD_GATEWAY, &headers),
            ProxyError::dns("NXDOMAIN")
        );
    }
}
