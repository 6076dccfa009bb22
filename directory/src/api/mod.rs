//! The directory's REST API in Cloudflare's v4 shape, under `/client/v4`:
//!
//! - `accounts/{account}/connectivity/directory/services[/{id}]` ([`services`]),
//! - `accounts/{account}/cfd_tunnel[/{id}[/token|/connections]]` ([`tunnels`]; the live
//!   connections come from the cluster registry the server was given),
//! - `accounts/{account}/teamnet/virtual_networks[/{id}]` and
//!   `accounts/{account}/teamnet/routes[/{id}]` ([`teamnet`]),
//! - `accounts/{account}/workers/scripts[/{name}[/content|/deployments|/versions]]`
//!   ([`scripts`]), `…/scripts/{name}/subdomain|routes|script-settings`
//!   ([`script_settings`]),
//! - `accounts/{account}/workers/services/{name}` ([`worker_services`]: what wrangler asks
//!   before a deploy),
//! - `accounts/{account}/workers/subdomain` ([`subdomain`]),
//! - `user/tokens/verify`, `accounts`, `memberships`: what clients such as wrangler ask
//!   before the real call.
//!
//! A request goes: read the body (bounded) → authenticate the bearer token → route → check the
//! account and the role → the handler, which runs the SQLite work on a blocking thread → the
//! envelope ([`envelope`]).

mod body;
pub mod client;
pub mod envelope;
mod script_settings;
mod scripts;
mod services;
mod subdomain;
mod teamnet;
mod tunnels;
mod worker_services;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use wvpc_listener::{HttpServer, Page, Refusal, ServerLimits};

use crate::cluster::ClusterRegistry;
use crate::database::Directory;
use crate::tokens::{ApiToken, Role};
use envelope::{ApiError, ResultInfo, code};
use wvpc_js_build::JsBuilder;

pub use body::{read_script_upload, read_service_body};
pub use scripts::{JsUpload, ScriptForm};

/// Path prefix of every endpoint.
pub const PREFIX: &str = "/client/v4";

/// Largest JSON body accepted.
pub const MAX_JSON_BODY: usize = 1024 * 1024;
/// Largest script upload accepted.
pub const MAX_SCRIPT_BODY: usize = 32 * 1024 * 1024;

/// Serves the API on `listener` until the task is dropped, with the default
/// [`ServerLimits`]; it never returns an error.
pub async fn serve(directory: Arc<Directory>, listener: TcpListener) -> std::io::Result<()> {
    serve_with(directory, listener, ServerLimits::default()).await
}

/// [`serve`] with these timeouts and connection cap. What the listener refuses on its own
/// (the connection cap, an oversized head) is answered in the API's envelope
/// ([`refusal_page`]).
pub async fn serve_with(
    directory: Arc<Directory>,
    listener: TcpListener,
    limits: ServerLimits,
) -> std::io::Result<()> {
    serve_cluster(directory, None, listener, limits).await
}

/// [`serve_with`], answering `cfd_tunnel/{id}/connections` from `cluster` (without one, that
/// endpoint answers 503). JavaScript uploads are built with [`JsBuilder::from_env`].
pub async fn serve_cluster(
    directory: Arc<Directory>,
    cluster: Option<Arc<ClusterRegistry>>,
    listener: TcpListener,
    limits: ServerLimits,
) -> std::io::Result<()> {
    serve_cluster_js(directory, cluster, listener, limits, JsBuilder::from_env()).await
}

/// [`serve_cluster`], building JavaScript uploads with `js` (its cache directory holds the
/// npm toolchain and the built components).
pub async fn serve_cluster_js(
    directory: Arc<Directory>,
    cluster: Option<Arc<ClusterRegistry>>,
    listener: TcpListener,
    limits: ServerLimits,
    js: JsBuilder,
) -> std::io::Result<()> {
    let server = HttpServer::new("directory API", limits).with_page(refusal_page);
    let context = Arc::new(Context { cluster, js });
    wvpc_listener::serve(listener, server, move |request| {
        handle(directory.clone(), context.clone(), request)
    })
    .await;
    Ok(())
}

/// What every request's handler may need besides the directory.
struct Context {
    /// Where live tunnel connections are read, if this server follows a cluster registry.
    cluster: Option<Arc<ClusterRegistry>>,
    /// Builds JavaScript uploads into components.
    js: JsBuilder,
}

/// A listener's own refusal as an envelope ([`code::SERVER_LIMIT`]), request id included.
fn refusal_page(refusal: &Refusal, request_id: &str) -> Page {
    let error = ApiError::new(
        refusal.status(),
        code::SERVER_LIMIT,
        format!("{} (request id {request_id})", refusal.explanation()),
    );
    Page {
        content_type: "application/json",
        body: error.body().to_string(),
    }
}

/// A request as the handlers see it: fully read, owned, no I/O left.
#[derive(Debug)]
pub(crate) struct ApiRequest {
    pub(crate) method: Method,
    /// Path segments after [`PREFIX`].
    pub(crate) segments: Vec<String>,
    /// Decoded query pairs.
    pub(crate) query: Vec<(String, String)>,
    pub(crate) content_type: Option<String>,
    pub(crate) body: Bytes,
}

impl ApiRequest {
    pub(crate) fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON of type `T`; refuses other content types (415) and bad JSON (400).
    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        if let Some(ct) = &self.content_type
            && !ct.starts_with("application/json")
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code::UNSUPPORTED_MEDIA_TYPE,
                format!("expected a JSON body (Content-Type: application/json), got {ct:?}"),
            ));
        }
        serde_json::from_slice(&self.body).map_err(|err| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_JSON,
                format!("invalid JSON body: {err}"),
            )
        })
    }
}

/// A successful answer: status and envelope body, or raw bytes.
pub(crate) enum Reply {
    Json(StatusCode, Value),
    Bytes(&'static str, Vec<u8>),
}

impl Reply {
    pub(crate) fn ok(result: Value) -> Self {
        Reply::Json(StatusCode::OK, envelope::success(result, None))
    }

    pub(crate) fn list(result: Value, info: ResultInfo) -> Self {
        Reply::Json(StatusCode::OK, envelope::success(result, Some(info)))
    }
}

/// The authenticated caller acting on one account.
pub(crate) struct Caller {
    /// The directory, acting for the path's account.
    pub(crate) dir: Directory,
    pub(crate) token: ApiToken,
    /// Where live tunnel connections are read, if this server follows a cluster registry.
    pub(crate) cluster: Option<Arc<ClusterRegistry>>,
    /// Builds JavaScript uploads into components.
    pub(crate) js: JsBuilder,
}

impl Caller {
    /// Refuses (403) unless the token has at least `role`.
    pub(crate) fn require(&self, role: Role, action: &str) -> Result<(), ApiError> {
        if self.token.role >= role {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            code::ROLE_MISSING,
            format!(
                "{action} needs the {role} role; the API token {:?} has the {} role (create a \
                 token with `wvpc token create --role {role}`)",
                self.token.name, self.token.role
            ),
        ))
    }
}

async fn handle(
    directory: Arc<Directory>,
    context: Arc<Context>,
    request: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let method = parts.method.clone();
    let reply = match read(parts, body).await {
        Ok(request) => {
            // SQLite with synchronous=FULL waits for the disk, and a JavaScript upload's build
            // runs node for seconds: keep both off the async workers.
            match tokio::task::spawn_blocking(move || dispatch(&directory, &context, request)).await
            {
                Ok(reply) => reply,
                Err(err) => {
                    tracing::error!(error = %err, "API handler panicked");
                    Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        code::INTERNAL,
                        "internal error (see the server log)",
                    ))
                }
            }
        }
        Err(err) => Err(err),
    };
    let response = match reply {
        Ok(Reply::Json(status, body)) => json_response(status, &body),
        Ok(Reply::Bytes(content_type, bytes)) => http::Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(bytes)))
            .unwrap_or_default(),
        Err(err) => json_response(err.status, &err.body()),
    };
    tracing::debug!(%method, path, status = response.status().as_u16(), "API request");
    response
}

fn json_response(status: StatusCode, body: &Value) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

/// Everything that needs the network, before routing: the path split into segments, the
/// query, the body (bounded by the endpoint's limit) and the bearer token.
async fn read(
    parts: http::request::Parts,
    body: Incoming,
) -> Result<(ApiRequest, Option<String>), ApiError> {
    let path = parts.uri.path();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Err(no_route(path));
    };
    let segments: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect();
    let limit = if segments.iter().any(|s| s == "scripts") {
        MAX_SCRIPT_BODY
    } else {
        MAX_JSON_BODY
    };
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than this endpoint accepts ({limit} bytes)"),
        )
    };
    if let Some(length) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && length > limit
    {
        return Err(too_large());
    }
    let body = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    code::INVALID_JSON,
                    format!("could not read the request body: {err}"),
                )
            }
        })?
        .to_bytes();
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned());
    let query = parts
        .uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(k, true), percent_decode(v, true))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((
        ApiRequest {
            method: parts.method,
            segments,
            query,
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body,
        },
        bearer,
    ))
}

fn dispatch(
    directory: &Directory,
    context: &Context,
    (request, bearer): (ApiRequest, Option<String>),
) -> Result<Reply, ApiError> {
    let token = authenticate(directory, bearer.as_deref())?;
    let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["user", "tokens", "verify"] => {
            allow(&request, &[Method::GET])?;
            Ok(Reply::ok(json!({
                "id": token.id,
                "status": "active",
                "name": token.name,
                "role": token.role,
            })))
        }
        ["accounts"] => {
            allow(&request, &[Method::GET])?;
            let accounts = own_accounts(directory, &token)?;
            let info = ResultInfo {
                page: 1,
                per_page: accounts.len().max(1),
                count: accounts.len(),
                total_count: accounts.len(),
                total_pages: 1,
            };
            Ok(Reply::list(Value::Array(accounts), info))
        }
        ["memberships"] => {
            allow(&request, &[Method::GET])?;
            let memberships: Vec<Value> = own_accounts(directory, &token)?
                .into_iter()
                .map(|account| json!({ "id": account["id"], "account": account, "status": "accepted" }))
                .collect();
            let n = memberships.len();
            Ok(Reply::list(
                Value::Array(memberships),
                ResultInfo {
                    page: 1,
                    per_page: n.max(1),
                    count: n,
                    total_count: n,
                    total_pages: 1,
                },
            ))
        }
        // wrangler looks zones up before it publishes routes (when workers.dev stays off);
        // routes here need no zone, and wrangler skips the lookup with workers.dev on.
        ["zones", ..] => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            code::NO_ROUTE,
            format!(
                "No route for that URI: {PREFIX}/{}: this directory has no zones (a script's \
                 routes need none); with wrangler, set \"workers_dev\": true beside \"routes\" \
                 so that it does not look zones up, or deploy the routes with `wvpc deploy`",
                request.segments.join("/")
            ),
        )),
        ["accounts", account, rest @ ..] => {
            let caller = Caller {
                dir: account_view(directory, &token, account)?,
                token,
                cluster: context.cluster.clone(),
                js: context.js.clone(),
            };
            match rest {
                ["connectivity", "directory", "services", tail @ ..] => {
                    services::route(&caller, &request, tail)
                }
                ["cfd_tunnel", tail @ ..] => tunnels::route(&caller, &request, tail),
                ["teamnet", "virtual_networks", tail @ ..] => {
                    teamnet::route_vnets(&caller, &request, tail)
                }
                ["teamnet", "routes", tail @ ..] => teamnet::route_routes(&caller, &request, tail),
                ["workers", "scripts", tail @ ..] => scripts::route(&caller, &request, tail),
                ["workers", "subdomain"] => subdomain::route(&caller, &request),
                ["workers", "services", tail @ ..] => {
                    worker_services::route(&caller, &request, tail)
                }
                _ => Err(no_route_segments(&request.segments)),
            }
        }
        _ => Err(no_route_segments(&request.segments)),
    }
}

fn authenticate(directory: &Directory, bearer: Option<&str>) -> Result<ApiToken, ApiError> {
    let Some(bearer) = bearer.filter(|b| !b.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            code::AUTHENTICATION,
            "Authentication error: no API token; send `Authorization: Bearer <token>` (create \
             one with `wvpc token create --role admin`)",
        ));
    };
    directory.authenticate(bearer)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            code::AUTHENTICATION,
            "Authentication error: the API token is not valid (unknown or revoked); create one \
             with `wvpc token create`",
        )
    })
}

/// The directory acting for `account`, once the token is known to belong to it.
fn account_view(
    directory: &Directory,
    token: &ApiToken,
    account: &str,
) -> Result<Directory, ApiError> {
    let Some(view) = directory.for_account(account)? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            code::UNKNOWN_OBJECT,
            format!(
                "no account {account:?} in this directory; the API token belongs to account {}",
                token.account_id
            ),
        ));
    };
    if token.account_id != account {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            code::WRONG_ACCOUNT,
            format!(
                "the API token {:?} belongs to account {}, not to account {account}",
                token.name, token.account_id
            ),
        ));
    }
    Ok(view)
}

fn own_accounts(directory: &Directory, token: &ApiToken) -> Result<Vec<Value>, ApiError> {
    Ok(directory
        .list_accounts()?
        .into_iter()
        .filter(|a| a.id == token.account_id)
        .map(|a| json!({ "id": a.id, "name": a.name, "created_on": a.created_at }))
        .collect())
}

/// Refuses methods other than `allowed` (405, naming them).
pub(crate) fn allow(request: &ApiRequest, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(&request.method) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        code::METHOD_NOT_ALLOWED,
        format!(
            "method {} is not allowed on {PREFIX}/{}; allowed: {}",
            request.method,
            request.segments.join("/"),
            allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

fn no_route(path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        code::NO_ROUTE,
        format!("No route for that URI: {path} (the API lives under {PREFIX}/)"),
    )
}

pub(crate) fn no_route_segments(segments: &[String]) -> ApiError {
    no_route(&format!("{PREFIX}/{}", segments.join("/")))
}

/// A path identifier that must be a UUID (404 with code 7003 otherwise, as Cloudflare does).
pub(crate) fn parse_id(what: &str, text: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::try_parse(text).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            code::UNKNOWN_OBJECT,
            format!("{text:?} is not a valid {what} id (a UUID)"),
        )
    })
}

/// `page` and `per_page` (1-based, default 1 and 20, per_page at most 1000) of a list.
pub(crate) fn paginate<T: serde::Serialize>(
    request: &ApiRequest,
    items: Vec<T>,
) -> Result<Reply, ApiError> {
    let number = |key: &str, default: usize, max: usize| -> Result<usize, ApiError> {
        match request.query(key) {
            None => Ok(default),
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    code::INVALID_QUERY,
                    format!("{key}={text:?}: expected a whole number from 1 to {max}"),
                )),
            },
        }
    };
    let page = number("page", 1, usize::MAX)?;
    let per_page = number("per_page", 20, 1000)?;
    let total_count = items.len();
    let start = page.saturating_sub(1).saturating_mul(per_page);
    let page_items: Vec<T> = items.into_iter().skip(start).take(per_page).collect();
    let info = ResultInfo {
        page,
        per_page,
        count: page_items.len(),
        total_count,
        total_pages: total_count.div_ceil(per_page),
    };
    Ok(Reply::list(json!(page_items), info))
}

/// `%XX` escapes (and, in queries, `+` for space) decoded; invalid escapes kept as they are.
fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
