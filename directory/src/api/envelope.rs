//! The Cloudflare v4 response envelope, the numeric error codes, and how directory errors map
//! onto them.
//!
//! Every answer is `{success, errors: [{code, message}], messages, result, result_info}`.
//! A request that breaks several rules gets one error entry per rule.

use http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::DirectoryError;
use crate::scripts::BindingRefusal;

/// The numeric error codes of the API (documented in `docs/api.md`).
pub mod code {
    /// Unexpected server-side failure.
    pub const INTERNAL: u32 = 1000;
    /// The body is not valid JSON of the expected shape.
    pub const INVALID_JSON: u32 = 1001;
    /// A service breaks a validation rule (one entry per problem, path first).
    pub const VALIDATION: u32 = 1002;
    /// No such VPC service in the account.
    pub const SERVICE_NOT_FOUND: u32 = 1003;
    /// The account has reached its service limit.
    pub const SERVICE_LIMIT: u32 = 1004;
    /// No such tunnel in the account.
    pub const TUNNEL_NOT_FOUND: u32 = 1005;
    /// The tunnel name is taken.
    pub const TUNNEL_NAME_TAKEN: u32 = 1006;
    /// The tunnel is used by services or network routes.
    pub const TUNNEL_IN_USE: u32 = 1007;
    /// The tunnel name breaks the naming rules.
    pub const INVALID_TUNNEL_NAME: u32 = 1008;
    /// No such script in the account: Cloudflare's code ("This Worker does not exist on your
    /// account"), which wrangler reads as "not deployed yet".
    pub const SCRIPT_NOT_FOUND: u32 = 10007;
    /// The script upload is malformed (name, multipart form, metadata, module).
    pub const INVALID_SCRIPT: u32 = 1010;
    /// A binding names a service that does not exist.
    pub const BINDING_UNKNOWN_SERVICE: u32 = 1011;
    /// A binding names another account's service.
    pub const BINDING_FOREIGN_SERVICE: u32 = 1012;
    /// The token may not bind the service.
    pub const BINDING_NOT_PERMITTED: u32 = 1013;
    /// A binding names a service by a name no service has.
    pub const BINDING_UNKNOWN_NAME: u32 = 1014;
    /// A binding names a service by a name several services have.
    pub const BINDING_AMBIGUOUS_NAME: u32 = 1015;
    /// Two bindings share a name.
    pub const BINDING_DUPLICATE: u32 = 1016;
    /// The body is larger than the endpoint accepts.
    pub const PAYLOAD_TOO_LARGE: u32 = 1017;
    /// The body's content type is not the one the endpoint reads.
    pub const UNSUPPORTED_MEDIA_TYPE: u32 = 1018;
    /// A query parameter is invalid.
    pub const INVALID_QUERY: u32 = 1019;
    /// The uploaded module is not a component a runtime can serve (the reason says why).
    pub const INVALID_COMPONENT: u32 = 1020;
    /// A route pattern of the upload is held by another script.
    pub const ROUTE_TAKEN: u32 = 1021;
    /// The subdomain is not a valid DNS label.
    pub const INVALID_SUBDOMAIN: u32 = 1022;
    /// Another account holds the subdomain.
    pub const SUBDOMAIN_TAKEN: u32 = 1023;
    /// No such version of the script.
    pub const VERSION_NOT_FOUND: u32 = 1024;
    /// A deployment this directory does not support (gradual: several versions, or < 100%).
    pub const UNSUPPORTED_DEPLOYMENT: u32 = 1025;
    /// The directory is unavailable for now (its SQLite database is write-locked by another
    /// connection, or its PostgreSQL server cannot be reached): nothing was changed; retry
    /// later. HTTP 503.
    pub const UNAVAILABLE: u32 = 1026;
    /// No such virtual network in the account.
    pub const VNET_NOT_FOUND: u32 = 1027;
    /// The virtual network name is taken.
    pub const VNET_NAME_TAKEN: u32 = 1028;
    /// The virtual network is in use (routes, default, a script's binding, a service).
    pub const VNET_IN_USE: u32 = 1029;
    /// No such network route in the account.
    pub const ROUTE_NOT_FOUND: u32 = 1030;
    /// The network is already routed in that virtual network.
    pub const ROUTE_EXISTS: u32 = 1031;
    /// A route names another account's tunnel (HTTP 403).
    pub const FOREIGN_TUNNEL: u32 = 1032;
    /// A `vpc_network` binding names a tunnel that does not exist.
    pub const BINDING_UNKNOWN_TUNNEL: u32 = 1033;
    /// A `vpc_network` binding names another account's tunnel or virtual network.
    pub const BINDING_FOREIGN_NETWORK: u32 = 1034;
    /// A `vpc_network` binding names a virtual network that does not exist.
    pub const BINDING_UNKNOWN_NETWORK: u32 = 1035;
    /// The token's role may not make the `vpc_network` binding.
    pub const BINDING_NETWORK_NOT_PERMITTED: u32 = 1036;
    /// The route is the only one covering addresses of VPC services in its virtual network.
    pub const ROUTE_IN_USE: u32 = 1037;
    /// A JavaScript upload did not build: the build's message (file, line, message).
    pub const SCRIPT_BUILD_FAILED: u32 = 1038;
    /// The directory cannot build JavaScript now (no Node.js, or its build tools failed);
    /// HTTP 503.
    pub const BUILD_UNAVAILABLE: u32 = 1039;
    /// A setting this directory does not support (preview URLs, logpush, tail consumers,
    /// observability, tags): nothing was changed.
    pub const UNSUPPORTED_SETTING: u32 = 1040;
    /// The server refused the request by one of its own limits (open connections, header
    /// fields, header size) before reading it.
    pub const SERVER_LIMIT: u32 = 1100;
    /// No such URI (Cloudflare's code).
    pub const NO_ROUTE: u32 = 7000;
    /// A malformed identifier or an unknown account in the path (Cloudflare's code).
    pub const UNKNOWN_OBJECT: u32 = 7003;
    /// No token, or a token the directory does not know (Cloudflare's code).
    pub const AUTHENTICATION: u32 = 10000;
    /// The token lacks the role the request needs.
    pub const ROLE_MISSING: u32 = 10001;
    /// The token belongs to another account.
    pub const WRONG_ACCOUNT: u32 = 10002;
    /// The method is not served on this URI.
    pub const METHOD_NOT_ALLOWED: u32 = 10405;
}

/// One `{code, message}` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ErrorEntry {
    /// Numeric code ([`code`]).
    pub code: u32,
    /// What went wrong and what to do.
    pub message: String,
}

/// A failed request: its HTTP status and every error entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Error entries (at least one).
    pub errors: Vec<ErrorEntry>,
}

impl ApiError {
    /// One error.
    pub fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            errors: vec![ErrorEntry {
                code,
                message: message.into(),
            }],
        }
    }

    /// One error per message, all with `code` (every problem of a request at once).
    pub fn each(
        status: StatusCode,
        code: u32,
        messages: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            status,
            errors: messages
                .into_iter()
                .map(|message| ErrorEntry {
                    code,
                    message: message.into(),
                })
                .collect(),
        }
    }

    /// The envelope body.
    pub fn body(&self) -> Value {
        json!({
            "success": false,
            "errors": self.errors,
            "messages": [],
            "result": null,
        })
    }
}

/// `result_info` of a paged list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ResultInfo {
    /// 1-based page number.
    pub page: usize,
    /// Page size.
    pub per_page: usize,
    /// Items on this page.
    pub count: usize,
    /// Items on all pages.
    pub total_count: usize,
    /// Number of pages.
    pub total_pages: usize,
}

/// The envelope of a successful answer.
pub fn success(result: Value, result_info: Option<ResultInfo>) -> Value {
    let mut body = json!({
        "success": true,
        "errors": [],
        "messages": [],
        "result": result,
    });
    if let Some(info) = result_info {
        body["result_info"] = json!(info);
    }
    body
}

impl From<crate::cluster::RegistryError> for ApiError {
    fn from(err: crate::cluster::RegistryError) -> Self {
        use crate::cluster::RegistryError as E;
        let (status, code) = match &err {
            E::Corrupt { .. } | E::Invalid(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, code::INTERNAL)
            }
            E::Unavailable(_) | E::LeaseLost { .. } | E::SchemaTooNew { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE)
            }
        };
        ApiError::new(status, code, err.to_string())
    }
}

impl From<DirectoryError> for ApiError {
    fn from(err: DirectoryError) -> Self {
        use DirectoryError as E;
        let status_code = match &err {
            E::Invalid(invalid) => {
                return ApiError::each(
                    StatusCode::BAD_REQUEST,
                    code::VALIDATION,
                    invalid
                        .problems
                        .iter()
                        .map(|p| format!("{}: {}", p.path, p.message)),
                );
            }
            E::BindingsRefused(refusals) => return refused_bindings(refusals),
            E::InvalidNetworkInput { problems, .. } => {
                return ApiError::each(
                    StatusCode::BAD_REQUEST,
                    code::VALIDATION,
                    problems
                        .iter()
                        .map(|p| format!("{}: {}", p.path, p.message)),
                );
            }
            E::VirtualNetworkNotFound(_) => (StatusCode::NOT_FOUND, code::VNET_NOT_FOUND),
            E::VirtualNetworkNameTaken(_) => (StatusCode::CONFLICT, code::VNET_NAME_TAKEN),
            E::VirtualNetworkInUse { .. } => (StatusCode::CONFLICT, code::VNET_IN_USE),
            E::RouteNotFound(_) => (StatusCode::NOT_FOUND, code::ROUTE_NOT_FOUND),
            E::RouteExists { .. } => (StatusCode::CONFLICT, code::ROUTE_EXISTS),
            E::RouteInUse { .. } => (StatusCode::CONFLICT, code::ROUTE_IN_USE),
            E::ForeignTunnel { .. } => (StatusCode::FORBIDDEN, code::FOREIGN_TUNNEL),
            E::ServiceNotFound(_) => (StatusCode::NOT_FOUND, code::SERVICE_NOT_FOUND),
            E::ServiceLimit { .. } => (StatusCode::CONFLICT, code::SERVICE_LIMIT),
            E::TunnelNotFound(_) => (StatusCode::NOT_FOUND, code::TUNNEL_NOT_FOUND),
            E::TunnelNameTaken(_) => (StatusCode::CONFLICT, code::TUNNEL_NAME_TAKEN),
            E::InvalidTunnelName { .. } => (StatusCode::BAD_REQUEST, code::INVALID_TUNNEL_NAME),
            E::TunnelInUse { .. } => (StatusCode::CONFLICT, code::TUNNEL_IN_USE),
            E::ScriptNotFound(_) => (StatusCode::NOT_FOUND, code::SCRIPT_NOT_FOUND),
            E::InvalidScriptName(_) => (StatusCode::BAD_REQUEST, code::INVALID_SCRIPT),
            E::InvalidUpload(problems) => {
                return ApiError::each(StatusCode::BAD_REQUEST, code::INVALID_SCRIPT, problems);
            }
            E::InvalidComponent(_) => (StatusCode::BAD_REQUEST, code::INVALID_COMPONENT),
            E::RoutesTaken(conflicts) => {
                return ApiError {
                    status: StatusCode::CONFLICT,
                    errors: conflicts
                        .iter()
                        .map(|c| ErrorEntry {
                            code: code::ROUTE_TAKEN,
                            message: c.to_string(),
                        })
                        .collect(),
                };
            }
            E::InvalidSubdomain { .. } => (StatusCode::BAD_REQUEST, code::INVALID_SUBDOMAIN),
            E::SubdomainTaken(_) => (StatusCode::CONFLICT, code::SUBDOMAIN_TAKEN),
            E::VersionNotFound { .. } => (StatusCode::NOT_FOUND, code::VERSION_NOT_FOUND),
            E::Busy { .. } | E::Unavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE)
            }
            _ => {
                tracing::error!(error = %err, "directory failure while serving the API");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    code::INTERNAL,
                    "internal directory error (see the server log)",
                );
            }
        };
        ApiError::new(status_code.0, status_code.1, err.to_string())
    }
}

fn refused_bindings(refusals: &[BindingRefusal]) -> ApiError {
    let status = if refusals.iter().any(BindingRefusal::is_permission) {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::BAD_REQUEST
    };
    ApiError {
        status,
        errors: refusals
            .iter()
            .map(|r| ErrorEntry {
                code: match r {
                    BindingRefusal::UnknownService { .. } => code::BINDING_UNKNOWN_SERVICE,
                    BindingRefusal::ForeignService { .. } => code::BINDING_FOREIGN_SERVICE,
                    BindingRefusal::NotPermitted { .. } => code::BINDING_NOT_PERMITTED,
                    BindingRefusal::UnknownName { .. } => code::BINDING_UNKNOWN_NAME,
                    BindingRefusal::AmbiguousName { .. } => code::BINDING_AMBIGUOUS_NAME,
                    BindingRefusal::DuplicateBinding { .. } => code::BINDING_DUPLICATE,
                    BindingRefusal::UnknownTunnel { .. } => code::BINDING_UNKNOWN_TUNNEL,
                    BindingRefusal::ForeignNetwork { .. } => code::BINDING_FOREIGN_NETWORK,
                    BindingRefusal::UnknownNetwork { .. } => code::BINDING_UNKNOWN_NETWORK,
                    BindingRefusal::NetworkNotPermitted { .. } => {
                        code::BINDING_NETWORK_NOT_PERMITTED
                    }
                },
                message: r.to_string(),
            })
            .collect(),
    }
}
