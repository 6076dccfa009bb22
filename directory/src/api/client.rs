//! A small client of the API (HTTP/1.1 over one reused connection), used by the CLI
//! (`wvpc service … --api`, `wvpc deploy`, `wvpc vnet|route … --api` through the typed
//! teamnet methods) and by tests.

use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::teamnet::{RouteFilter, RouteInput, TeamnetRoute, VirtualNetwork, VirtualNetworkInput};

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
    /// A successful answer whose `result` is not the object expected.
    #[error("the directory API answered with an unreadable {what}: {detail}")]
    Unreadable {
        /// What was expected.
        what: &'static str,
        /// Why it could not be read.
        detail: String,
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

/// Virtual networks and IP routes of an account (`teamnet/…`), typed.
impl ApiClient {
    /// Every virtual network of `account`.
    pub async fn list_virtual_networks(
        &self,
        account: &str,
    ) -> Result<Vec<VirtualNetwork>, ClientError> {
        self.list_all(&format!("/accounts/{account}/teamnet/virtual_networks?"))
            .await
    }

    /// Creates a virtual network.
    pub async fn create_virtual_network(
        &self,
        account: &str,
        input: &VirtualNetworkInput,
    ) -> Result<VirtualNetwork, ClientError> {
        let path = format!("/accounts/{account}/teamnet/virtual_networks");
        self.typed(Method::POST, &path, Some(to_json(input)?)).await
    }

    /// Changes the fields `input` sets.
    pub async fn update_virtual_network(
        &self,
        account: &str,
        id: Uuid,
        input: &VirtualNetworkInput,
    ) -> Result<VirtualNetwork, ClientError> {
        let path = format!("/accounts/{account}/teamnet/virtual_networks/{id}");
        self.typed(Method::PATCH, &path, Some(to_json(input)?))
            .await
    }

    /// Deletes a virtual network; the answer is the deleted one.
    pub async fn delete_virtual_network(
        &self,
        account: &str,
        id: Uuid,
    ) -> Result<VirtualNetwork, ClientError> {
        let path = format!("/accounts/{account}/teamnet/virtual_networks/{id}");
        self.typed(Method::DELETE, &path, None).await
    }

    /// Every route of `account` that `filter` lets through.
    pub async fn list_network_routes(
        &self,
        account: &str,
        filter: RouteFilter,
    ) -> Result<Vec<TeamnetRoute>, ClientError> {
        let mut path = format!("/accounts/{account}/teamnet/routes?");
        if let Some(vnet) = filter.virtual_network_id {
            path.push_str(&format!("virtual_network_id={vnet}&"));
        }
        if let Some(tunnel) = filter.tunnel_id {
            path.push_str(&format!("tunnel_id={tunnel}&"));
        }
        self.list_all(&path).await
    }

    /// Creates a route.
    pub async fn create_network_route(
        &self,
        account: &str,
        input: &RouteInput,
    ) -> Result<TeamnetRoute, ClientError> {
        let path = format!("/accounts/{account}/teamnet/routes");
        self.typed(Method::POST, &path, Some(to_json(input)?)).await
    }

    /// Changes the fields `input` sets.
    pub async fn update_network_route(
        &self,
        account: &str,
        id: Uuid,
        input: &RouteInput,
    ) -> Result<TeamnetRoute, ClientError> {
        let path = format!("/accounts/{account}/teamnet/routes/{id}");
        self.typed(Method::PATCH, &path, Some(to_json(input)?))
            .await
    }

    /// Deletes a route; the answer is the deleted one.
    pub async fn delete_network_route(
        &self,
        account: &str,
        id: Uuid,
    ) -> Result<TeamnetRoute, ClientError> {
        let path = format!("/accounts/{account}/teamnet/routes/{id}");
        self.typed(Method::DELETE, &path, None).await
    }

    async fn typed<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, ClientError> {
        let result = self.call(method, path, body.as_ref()).await?;
        from_json(result)
    }

    /// Every page of a list; `path` ends in `?` or `&`.
    async fn list_all<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ClientError> {
        let mut items = Vec::new();
        for page in 1.. {
            let (result, info) = self
                .call_paged(
                    Method::GET,
                    &format!("{path}page={page}&per_page=1000"),
                    None,
                )
                .await?;
            let batch: Vec<T> = from_json(result)?;
            items.extend(batch);
            match info {
                Some(info) if info.page < info.total_pages => {}
                _ => break,
            }
        }
        Ok(items)
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Value, ClientError> {
    serde_json::to_value(value).map_err(|err| ClientError::Unreadable {
        what: "request body",
        detail: err.to_string(),
    })
}

fn from_json<T: DeserializeOwned>(value: Value) -> Result<T, ClientError> {
    serde_json::from_value(value).map_err(|err| ClientError::Unreadable {
        what: std::any::type_name::<T>(),
        detail: err.to_string(),
    })
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
