//! `accounts/{account}/workers/scripts[/{name}[/content|/deployments|/versions]]`: script
//! upload in the shape of Cloudflare's Workers upload (a `multipart/form-data` body with a
//! `metadata` JSON part and the module parts; the main module a wasm component, or JavaScript
//! — a module worker as wrangler bundles it — built into one with [`wvpc_js_build`]), list,
//! get (the active version), content (its module), versions (GET lists them; POST uploads
//! one without serving it), deployments (GET: the one in effect; POST makes a version active)
//! and delete. `…/subdomain`, `…/routes` and `…/script-settings` are in
//! [`super::script_settings`].
//!
//! The upload's `vpc_service` bindings are verified by the directory against the deploying
//! token ([`crate::scripts`]); every refusal names the binding, the service and what is missing.
//! Its `routes`, `workers_dev` and `limits` are checked here, each problem with its field path.

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::envelope::{ApiError, code};
use super::{ApiRequest, Caller, Reply, allow, no_route_segments, paginate};
use crate::error::DirectoryError;
use crate::scripts::{
    BindingRequest, BindingTarget, ScriptUpload, ScriptVersion, ServiceRef, VPC_NETWORK,
    VPC_SERVICE, limits_problems,
};
use crate::tokens::Role;
use wvpc_js_build::{JsBuildError, JsBuilder};
use wvpc_schemas::NetworkTarget;

pub(super) fn route(
    caller: &Caller,
    request: &ApiRequest,
    tail: &[&str],
) -> Result<Reply, ApiError> {
    match tail {
        [] => {
            allow(request, &[Method::GET])?;
            caller.require(Role::Read, "listing scripts")?;
            paginate(request, caller.dir.list_scripts()?)
        }
        [name] => {
            allow(request, &[Method::GET, Method::PUT, Method::DELETE])?;
            match request.method {
                Method::GET => {
                    caller.require(Role::Read, "reading a script")?;
                    let script = caller
                        .dir
                        .script(name)?
                        .ok_or_else(|| DirectoryError::ScriptNotFound((*name).to_owned()))?;
                    Ok(Reply::ok(json!(script)))
                }
                Method::PUT => {
                    caller.require(Role::Bind, "deploying a script")?;
                    // The handlers run on a blocking thread (see `handle`), so a JavaScript
                    // build's seconds hold no async worker.
                    let upload = parse_upload(request)?.into_upload(&caller.js)?;
                    let script = caller.dir.deploy_script(&caller.token, name, &upload)?;
                    let mut answer = json!(script);
                    // Cloudflare's name for the version an upload deployed (wrangler prints it).
                    answer["deployment_id"] = json!(script.version_id);
                    Ok(Reply::ok(answer))
                }
                _ => {
                    caller.require(Role::Bind, "deleting a script")?;
                    let deleted = caller.dir.delete_script(name)?;
                    Ok(Reply::ok(json!(deleted)))
                }
            }
        }
        [name, "deployments"] => {
            allow(request, &[Method::GET, Method::POST])?;
            if request.method == Method::GET {
                caller.require(Role::Read, "listing a script's deployments")?;
                let script = caller
                    .dir
                    .script(name)?
                    .ok_or_else(|| DirectoryError::ScriptNotFound((*name).to_owned()))?;
                // Deployments are not recorded apart from versions: the one in effect serves
                // the active version to all traffic.
                return Ok(Reply::ok(json!({
                    "deployments": [{
                        "id": script.version_id,
                        "source": "api",
                        "strategy": "percentage",
                        "created_on": script.modified_on,
                        "versions": [{ "version_id": script.version_id, "percentage": 100 }],
                    }],
                })));
            }
            caller.require(Role::Bind, "deploying a script version")?;
            let version = deployment_version(request)?;
            let activated = caller.dir.activate_version(name, version)?;
            Ok(Reply::ok(json!({
                "strategy": "percentage",
                "versions": [{ "version_id": activated.id, "percentage": 100 }],
                "version": activated,
            })))
        }
        [name, "versions"] => {
            allow(request, &[Method::GET, Method::POST])?;
            if request.method == Method::GET {
                caller.require(Role::Read, "listing a script's versions")?;
                let versions: Vec<Value> = caller
                    .dir
                    .script_versions(name)?
                    .iter()
                    .map(version_json)
                    .collect();
                return Ok(Reply::ok(json!({ "items": versions })));
            }
            caller.require(Role::Bind, "uploading a script version")?;
            let form = parse_upload(request)?;
            // A version belongs to a script that exists: say so before seconds of building.
            if caller.dir.script(name)?.is_none() {
                return Err(DirectoryError::ScriptNotFound((*name).to_owned()).into());
            }
            let upload = form.into_upload(&caller.js)?;
            let version = caller.dir.upload_version(&caller.token, name, &upload)?;
            let mut answer = version_json(&version);
            answer["resources"] = json!({
                "script": { "etag": version.etag, "handlers": ["fetch"] },
                "bindings": version.bindings,
            });
            Ok(Reply::ok(answer))
        }
        [name, "versions", id] => {
            allow(request, &[Method::GET])?;
            caller.require(Role::Read, "reading a script version")?;
            let version = Uuid::try_parse(id)
                .ok()
                .and_then(|id| {
                    caller
                        .dir
                        .script_versions(name)
                        .map(|versions| versions.into_iter().find(|v| v.id == id))
                        .transpose()
                })
                .transpose()?;
            let Some(version) = version else {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    code::VERSION_NOT_FOUND,
                    format!(
                        "script {name:?} has no version {id:?} (GET …/versions lists its versions)"
                    ),
                ));
            };
            Ok(Reply::ok(version_json(&version)))
        }
        [name, "subdomain"] => super::script_settings::subdomain(caller, request, name),
        [name, "routes"] => super::script_settings::routes(caller, request, name),
        [name, "script-settings"] => super::script_settings::script_settings(caller, request, name),
        [name, "settings"] => super::script_settings::settings(caller, request, name),
        [name, "content"] => {
            allow(request, &[Method::GET])?;
            caller.require(Role::Read, "downloading a script")?;
            let module = caller
                .dir
                .script_module(name)?
                .ok_or_else(|| DirectoryError::ScriptNotFound((*name).to_owned()))?;
            Ok(Reply::Bytes("application/wasm", module))
        }
        _ => Err(no_route_segments(&request.segments)),
    }
}

/// A version in Cloudflare's shape (`id`, `number`, `metadata`) with its fields as stored.
fn version_json(version: &ScriptVersion) -> Value {
    let mut value = json!(version);
    value["metadata"] = json!({
        "created_on": version.created_on,
        "modified_on": version.created_on,
        "source": "api",
        "author_email": version.author,
    });
    value
}

/// The body of `POST …/deployments`, in Cloudflare's shape:
/// `{"strategy": "percentage", "versions": [{"version_id": "<id>", "percentage": 100}]}`.
/// Only one version at 100% is supported; the answer says so for anything else.
fn deployment_version(request: &ApiRequest) -> Result<Uuid, ApiError> {
    let body: Value = request.json()?;
    let unsupported = |message: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code::UNSUPPORTED_DEPLOYMENT,
            message,
        )
    };
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, code::INVALID_JSON, message);
    match body.get("strategy") {
        None => {}
        Some(Value::String(s)) if s == "percentage" => {}
        Some(other) => {
            return Err(unsupported(format!(
                "strategy: {other} is not supported; use \"percentage\" with one version at 100"
            )));
        }
    }
    let Some(versions) = body.get("versions").and_then(Value::as_array) else {
        return Err(bad(
            "versions: missing; send {\"strategy\": \"percentage\", \"versions\": \
             [{\"version_id\": \"<id>\", \"percentage\": 100}]}"
                .into(),
        ));
    };
    let [version] = versions.as_slice() else {
        return Err(unsupported(format!(
            "versions: {} versions given; gradual deployments are not supported: give exactly \
             one version with percentage 100",
            versions.len()
        )));
    };
    let percentage = version.get("percentage").and_then(Value::as_f64);
    if percentage.is_some_and(|p| (p - 100.0).abs() > f64::EPSILON) {
        return Err(unsupported(format!(
            "versions[0].percentage: {} is not supported; gradual deployments are not \
             supported: the one version gets percentage 100",
            version["percentage"]
        )));
    }
    if percentage.is_none() && version.get("percentage").is_some() {
        return Err(bad("versions[0].percentage: expected a number (100)".into()));
    }
    match version.get("version_id") {
        Some(Value::String(id)) => Uuid::try_parse(id).map_err(|_| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                code::VERSION_NOT_FOUND,
                format!("versions[0].version_id: {id:?} is not a version id (a UUID)"),
            )
        }),
        _ => Err(bad(
            "versions[0].version_id: missing; the id of the version to serve (GET \
             …/deployments lists them)"
                .into(),
        )),
    }
}

/// Parses an upload; every problem of the form and the metadata at once.
pub(super) fn parse_upload(request: &ApiRequest) -> Result<ScriptForm, ApiError> {
    let content_type = request.content_type.as_deref().unwrap_or("");
    let Some(boundary) = boundary(content_type) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "a script upload is multipart/form-data with a \"metadata\" part and the \
                 module part; got Content-Type {content_type:?}"
            ),
        ));
    };
    let parts = multipart(&request.body, &boundary).map_err(invalid)?;
    let metadata = parts
        .iter()
        .find(|p| p.name == "metadata")
        .ok_or_else(|| invalid("the form has no \"metadata\" part".into()))?;
    let metadata: Map<String, Value> = serde_json::from_slice(&metadata.body)
        .map_err(|err| invalid(format!("metadata: invalid JSON: {err}")))?;
    let mut problems = Vec::new();
    let main_module = match metadata.get("main_module") {
        Some(Value::String(m)) => Some(m.clone()),
        None => {
            // One module part: that is the main module.
            let modules: Vec<_> = parts.iter().filter(|p| p.name != "metadata").collect();
            match modules.as_slice() {
                [only] => Some(only.name.clone()),
                _ => {
                    problems.push(
                        "metadata.main_module: missing; name the part that holds the main \
                         module (a wasm component or JavaScript)"
                            .to_owned(),
                    );
                    None
                }
            }
        }
        Some(_) => {
            problems.push("metadata.main_module: expected a string".to_owned());
            None
        }
    };
    let bindings = parse_bindings(metadata.get("bindings"), &mut problems);
    let routes = crate::routes::parse_routes(metadata.get("routes"), &mut problems);
    let workers_dev = match metadata.get("workers_dev") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            problems.push(format!(
                "metadata.workers_dev: expected true or false, found {other}"
            ));
            true
        }
    };
    let limits = match metadata.get("limits") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(limits)) => {
            problems.extend(limits_problems(limits));
            limits.clone()
        }
        Some(other) => {
            problems.push(format!(
                "metadata.limits: expected an object such as {{\"cpu_ms\": 50}}, found {other}"
            ));
            Map::new()
        }
    };
    if metadata.contains_key("body_part") {
        problems.push(
            "metadata.body_part: the service-worker format is not supported; upload a module \
             worker (`export default { fetch }`) named by metadata.main_module"
                .to_owned(),
        );
    }
    let module = main_module.as_ref().and_then(|main| {
        let Some(part) = parts.iter().find(|p| &p.name == main) else {
            problems.push(format!(
                "metadata.main_module: the form has no part named {main:?}"
            ));
            return None;
        };
        if part.body.starts_with(b"\0asm") {
            return Some(MainModule::Wasm(part.body.clone()));
        }
        if is_javascript_part(part) {
            return Some(MainModule::JavaScript);
        }
        problems.push(format!(
            "part {main:?}: neither a WebAssembly component (it must start with \\0asm) nor a \
             JavaScript module (Content-Type application/javascript+module); build the script \
             first, or upload its bundled JavaScript"
        ));
        None
    });
    let (Some(main_module), Some(module)) = (main_module, module) else {
        return Err(refusal(problems));
    };
    if !problems.is_empty() {
        return Err(refusal(problems));
    }
    let mut upload = ScriptUpload {
        main_module,
        module: Vec::new(),
        bindings,
        routes,
        workers_dev,
        limits,
    };
    Ok(match module {
        MainModule::Wasm(bytes) => {
            upload.module = bytes;
            ScriptForm::Wasm(upload)
        }
        MainModule::JavaScript => ScriptForm::JavaScript(JsUpload {
            upload,
            modules: parts
                .into_iter()
                .filter(|p| p.name != "metadata")
                .map(|p| (p.name, p.body))
                .collect(),
        }),
    })
}

/// The main module of an upload, by what its bytes are.
enum MainModule {
    Wasm(Vec<u8>),
    JavaScript,
}

/// Whether a form part is a JavaScript module: by its Content-Type (wrangler's
/// `application/javascript+module`, or a plain JavaScript type), else by its name.
fn is_javascript_part(part: &Part) -> bool {
    match part.content_type.as_deref() {
        Some(ct) => {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            matches!(
                mime.as_str(),
                "application/javascript+module" | "application/javascript" | "text/javascript"
            )
        }
        None => wvpc_js_build::is_javascript(std::path::Path::new(&part.name)),
    }
}

fn refusal(problems: Vec<String>) -> ApiError {
    ApiError::each(StatusCode::BAD_REQUEST, code::INVALID_SCRIPT, problems)
}

/// An upload's form, read: a wasm component ready to store, or a JavaScript module worker
/// (already bundled, as wrangler uploads it) that is built into a component first.
#[derive(Debug)]
pub enum ScriptForm {
    /// The main module is a wasm component.
    Wasm(ScriptUpload),
    /// The main module is JavaScript.
    JavaScript(JsUpload),
}

/// A JavaScript module worker as uploaded: its metadata and every module part.
#[derive(Debug)]
pub struct JsUpload {
    /// The metadata; `module` stays empty until [`JsUpload::build`].
    upload: ScriptUpload,
    /// Every part but `metadata`, by name: the modules (and any source maps).
    modules: Vec<(String, Vec<u8>)>,
}

impl JsUpload {
    /// The name of the entry module.
    pub fn main_module(&self) -> &str {
        &self.upload.main_module
    }

    /// The uploaded modules, `(name, bytes)`.
    pub fn modules(&self) -> &[(String, Vec<u8>)] {
        &self.modules
    }

    /// Builds the modules into a component with `builder` (given the names of the upload's
    /// bindings): the upload to store. Blocking: it runs node, seconds unless cached. A
    /// problem of the script is a 400 with the build's message (file, line, message); a
    /// server that cannot build JavaScript answers 503.
    pub fn build(self, builder: JsBuilder) -> Result<ScriptUpload, ApiError> {
        let JsUpload {
            mut upload,
            modules,
        } = self;
        let builder = builder.with_bindings(upload.bindings.iter().map(|b| b.binding.clone()));
        let built = builder
            .build_modules(&upload.main_module, &modules)
            .map_err(|err| build_refusal(&upload.main_module, err))?;
        upload.module = std::fs::read(&built.wasm).map_err(|err| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code::BUILD_UNAVAILABLE,
                format!(
                    "the built component {} could not be read: {err}",
                    built.wasm.display()
                ),
            )
        })?;
        Ok(upload)
    }
}

/// A failed JavaScript build as the API answers it.
fn build_refusal(main_module: &str, err: JsBuildError) -> ApiError {
    match err {
        JsBuildError::Script(message) => ApiError::new(
            StatusCode::BAD_REQUEST,
            code::SCRIPT_BUILD_FAILED,
            format!("building {main_module:?} failed: {message}"),
        ),
        other => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::BUILD_UNAVAILABLE,
            format!("this directory cannot build JavaScript scripts now: {other}"),
        ),
    }
}

impl ScriptForm {
    /// The metadata of the upload (bindings, routes, limits), whatever its module.
    pub fn metadata(&self) -> &ScriptUpload {
        match self {
            ScriptForm::Wasm(upload) => upload,
            ScriptForm::JavaScript(js) => &js.upload,
        }
    }

    /// The upload to store: a wasm component as it is, JavaScript built with `builder`
    /// ([`JsUpload::build`]; blocking).
    pub fn into_upload(self, builder: &JsBuilder) -> Result<ScriptUpload, ApiError> {
        match self {
            ScriptForm::Wasm(upload) => Ok(upload),
            ScriptForm::JavaScript(js) => js.build(builder.clone()),
        }
    }
}

fn invalid(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code::INVALID_SCRIPT, message)
}

/// `metadata.bindings`: `{type:"vpc_service", name, service_id}` or `{…, service: "name"}`,
/// and `{type:"vpc_network", name, tunnel_id | network_id}`.
fn parse_bindings(value: Option<&Value>, problems: &mut Vec<String>) -> Vec<BindingRequest> {
    let entries = match value {
        None => return Vec::new(),
        Some(Value::Array(entries)) => entries,
        Some(_) => {
            problems.push("metadata.bindings: expected an array".to_owned());
            return Vec::new();
        }
    };
    let mut bindings = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("metadata.bindings[{i}]");
        let Some(entry) = entry.as_object() else {
            problems.push(format!("{at}: expected an object"));
            continue;
        };
        let name = entry.get("name").and_then(Value::as_str);
        if name.is_none_or(str::is_empty) {
            problems.push(format!(
                "{at}.name: missing; the name the script uses, e.g. API"
            ));
        }
        let target = match entry.get("type").and_then(Value::as_str) {
            Some(VPC_SERVICE) => service_ref(entry, &at, problems).map(BindingTarget::Service),
            Some(VPC_NETWORK) => network_target(entry, &at, problems).map(BindingTarget::Network),
            Some(other) => {
                problems.push(format!(
                    "{at}.type: binding type {other:?} is not supported; use \"vpc_service\" or \
                     \"vpc_network\""
                ));
                continue;
            }
            None => {
                problems.push(format!(
                    "{at}.type: missing (use \"vpc_service\" or \"vpc_network\")"
                ));
                continue;
            }
        };
        if let (Some(name), Some(target)) = (name.filter(|n| !n.is_empty()), target) {
            bindings.push(BindingRequest {
                binding: name.to_owned(),
                target,
            });
        }
    }
    bindings
}

/// The service of a `vpc_service` binding: `service_id`, or `service` (its name).
fn service_ref(
    entry: &serde_json::Map<String, Value>,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<ServiceRef> {
    match (entry.get("service_id"), entry.get("service")) {
        (Some(_), Some(_)) => {
            problems.push(format!(
                "{at}: give either service_id or service (a name), not both"
            ));
            None
        }
        (Some(Value::String(id)), None) => match Uuid::try_parse(id) {
            Ok(id) => Some(ServiceRef::Id(id)),
            Err(_) => {
                problems.push(format!("{at}.service_id: {id:?} is not a UUID"));
                None
            }
        },
        (None, Some(Value::String(name))) if !name.is_empty() => {
            Some(ServiceRef::Name(name.clone()))
        }
        (Some(_), None) => {
            problems.push(format!("{at}.service_id: expected a string"));
            None
        }
        (None, Some(_)) => {
            problems.push(format!("{at}.service: expected a service name"));
            None
        }
        (None, None) => {
            problems.push(format!(
                "{at}: missing service_id (or service, the service's name)"
            ));
            None
        }
    }
}

/// The network of a `vpc_network` binding: exactly one of `tunnel_id` and `network_id`.
fn network_target(
    entry: &serde_json::Map<String, Value>,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<NetworkTarget> {
    match (entry.get("tunnel_id"), entry.get("network_id")) {
        (Some(_), Some(_)) => {
            problems.push(format!(
                "{at}: give either tunnel_id or network_id, not both (tunnel_id reaches one \
                 tunnel, network_id a virtual network)"
            ));
            None
        }
        (None, None) => {
            problems.push(format!(
                "{at}: missing tunnel_id or network_id (\"cf1:network\" or \
                 \"cf1:vnet:<virtual network id>\")"
            ));
            None
        }
        (Some(Value::String(id)), None) => match Uuid::try_parse(id) {
            Ok(id) => Some(NetworkTarget::Tunnel(id)),
            Err(_) => {
                problems.push(format!(
                    "{at}.tunnel_id: {id:?} is not a tunnel id (a UUID, as `wvpc tunnel list` \
                     prints)"
                ));
                None
            }
        },
        (None, Some(Value::String(id))) => match NetworkTarget::parse_network_id(id) {
            Ok(target) => Some(target),
            Err(err) => {
                problems.push(format!("{at}.network_id: {err}"));
                None
            }
        },
        (Some(_), None) => {
            problems.push(format!("{at}.tunnel_id: expected a string"));
            None
        }
        (None, Some(_)) => {
            problems.push(format!("{at}.network_id: expected a string"));
            None
        }
    }
}

/// One part of a `multipart/form-data` body.
struct Part {
    name: String,
    /// Its `Content-Type`, if it has one.
    content_type: Option<String>,
    body: Vec<u8>,
}

fn boundary(content_type: &str) -> Option<String> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|param| {
        let (key, value) = param.trim().split_once('=')?;
        key.eq_ignore_ascii_case("boundary")
            .then(|| value.trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
    })
}

/// Splits a `multipart/form-data` body (RFC 7578) into named parts.
fn multipart(body: &[u8], boundary: &str) -> Result<Vec<Part>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut rest = match find(body, delimiter) {
        Some(at) => &body[at + delimiter.len()..],
        None => return Err("multipart body: no boundary found".into()),
    };
    let mut parts = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or("multipart body: expected CRLF after a boundary")?;
        let head_end = find(rest, b"\r\n\r\n").ok_or("multipart body: a part has no header end")?;
        let head = std::str::from_utf8(&rest[..head_end])
            .map_err(|_| "multipart body: part headers are not UTF-8")?;
        let name = head
            .split("\r\n")
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                if !key.trim().eq_ignore_ascii_case("content-disposition") {
                    return None;
                }
                value.split(';').find_map(|param| {
                    let (k, v) = param.trim().split_once('=')?;
                    (k == "name").then(|| v.trim_matches('"').to_owned())
                })
            })
            .ok_or("multipart body: a part has no Content-Disposition name")?;
        let content_type = head.split("\r\n").find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        });
        let content = &rest[head_end + 4..];
        let mut closing = b"\r\n".to_vec();
        closing.extend_from_slice(delimiter);
        let end = find(content, &closing)
            .ok_or_else(|| format!("multipart body: part {name:?} is not terminated"))?;
        parts.push(Part {
            name,
            content_type,
            body: content[..end].to_vec(),
        });
        rest = &content[end + closing.len()..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_parts_are_split_by_name() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
            Content-Type: application/json\r\n\r\n{\"a\":1}\r\n--XyZ\r\n\
            Content-Disposition: form-data; name=\"w.wasm\"; filename=\"w.wasm\"\r\n\r\n\0asm\r\n\x01\r\n--XyZ--\r\n";
        let parts = multipart(body, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "metadata");
        assert_eq!(parts[0].body, b"{\"a\":1}");
        assert_eq!(parts[1].name, "w.wasm");
        assert_eq!(parts[1].body, b"\0asm\r\n\x01");
        assert_eq!(
            boundary("multipart/form-data; boundary=\"XyZ\"").as_deref(),
            Some("XyZ")
        );
        assert!(boundary("application/json").is_none());
        assert!(
            multipart(
                b"--XyZ\r\nContent-Disposition: form-data; name=\"m\"\r\n\r\nabc",
                "XyZ"
            )
            .is_err()
        );
    }
}
