//! A small client of the API (HTTP/1.1 over one reused connection), used by the CLI
//! (`wvpc service … --api`, `wvpc deploy`) and by tests.

use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::Mutex;

use super::PREFIX;
use super::envelope::{ApiError, ErrorEntry, ResultInfo};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL is not `http://host:port[/client/v4]`.
    #[error("invalid API address {0:?}: expected http://HOST:PORT (e.g. http://127.0.0.1:8788)")]
    BadBase(String),
    /// The server could not be reached.
    #[error(
        "cannot reach the directory API at {addr}: {source} (is `wvpc directory` or `wvpc dev` running?)"
    )]
    Connect {
        /// host:port.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// HTTP failed mid-request.
    #[error("HTTP error talking to the directory API: {0}")]
    Http(#[from] hyper::Error),
    /// The answer is not a v4 envelope.
    #[error("the directory API answered HTTP {status} with an unexpected body: {body}")]
    NotEnvelope {
        /// Status of the answer.
        status: StatusCode,
        /// The body, lossily decoded.
        body: String,
    },
    /// The API refused the request.
    #[error(
        "the directory API refused the request (HTTP {}):{}",
        .0.status.as_u16(),
        .0.errors.iter().map(|e| format!("\n  [{}] {}", e.code, e.message)).collect::<String>()
    )]
    Api(ApiError),
}

/// A raw answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The body.
    pub body: Bytes,
}

impl RawResponse {
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A client of one API server.
#[derive(Debug)]
pub struct ApiClient {
    authority: String,
    prefix: String,
    token: Option<String>,
    connection: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl ApiClient {
    /// `base` is `http://HOST:PORT` (the API under `/client/v4`) or a full
    /// `http://HOST:PORT/client/v4`.
    pub fn new(base: &str, token: Option<String>) -> Result<ApiClient, ClientError> {
        let rest = base
            .strip_prefix("http://")
            .ok_or_else(|| ClientError::BadBase(base.to_owned()))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(ClientError::BadBase(base.to_owned()));
        }
        let path = path.trim_end_matches('/');
        let prefix = if path.is_empty() {
            PREFIX.to_owned()
        } else {
            format!("/{path}")
        };
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(ApiClient {
            authority,
            prefix,
            token,
            connection: Mutex::new(None),
        })
    }

    /// Sends one request; `path` is relative to the API prefix (`/accounts/…`).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<RawResponse, ClientError> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(header::HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(body))
            .map_err(|_| ClientError::BadBase(path.to_owned()))?;
        let mut slot = self.connection.lock().await;
        let reusable = match slot.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            *slot = Some(self.dial().await?);
        }
        let sender = slot
            .as_mut()
            .ok_or_else(|| ClientError::BadBase(String::new()))?;
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(RawResponse {
            status: parts.status,
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body,
        })
    }

    /// Sends a JSON request and unwraps the envelope: the `result`, or the API's errors.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        json: Option<&Value>,
    ) -> Result<Value, ClientError> {
        Ok(self.call_paged(method, path, json).await?.0)
    }

    /// Like [`ApiClient::call`], also returning `result_info`.
    pub async fn call_paged(
        &self,
        method: Method,
        path: &str,
        json: Option<&Value>,
    ) -> Result<(Value, Option<ResultInfo>), ClientError> {
        let body = json.map(|v| ("application/json", Bytes::from(v.to_string())));
        let response = self.send(method, path, body).await?;
        unwrap_envelope(&response)
    }

    async fn dial(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|source| ClientError::Connect {
                addr: self.authority.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "API client connection ended");
            }
        });
        Ok(sender)
    }
}

/// The `result` (and `result_info`) of a successful envelope, or its errors.
pub fn unwrap_envelope(response: &RawResponse) -> Result<(Value, Option<ResultInfo>), ClientError> {
    let not_envelope = || ClientError::NotEnvelope {
        status: response.status,
        body: String::from_utf8_lossy(&response.body).into_owned(),
    };
    let body: Value = serde_json::from_slice(&response.body).map_err(|_| not_envelope())?;
    match body.get("success").and_then(Value::as_bool) {
        Some(true) => {
            let info = body
                .get("result_info")
                .and_then(|v| serde_json::from_value(v.clone()).ok());
            Ok((body.get("result").cloned().unwrap_or(Value::Null), info))
        }
        Some(false) => {
            let errors: Vec<ErrorEntry> = body
                .get("errors")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .ok_or_else(not_envelope)?;
            Err(ClientError::Api(ApiError {
                status: response.status,
                errors,
            }))
        }
        None => Err(not_envelope()),
    }
}
