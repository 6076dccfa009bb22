//! What wrangler sets on a script after uploading it, in Cloudflare's shape:
//!
//! - `workers/scripts/{name}/subdomain`: `{"enabled", "previews_enabled"}`, whether the script
//!   is served on `<script>.<subdomain>.<workers domain>` (the script's `workers_dev`);
//!   preview URLs do not exist here, so `previews_enabled` is always false and asking for
//!   them is refused;
//! - `workers/scripts/{name}/routes`: the script's routes, replaced as a whole by PUT (the
//!   routes an upload's `metadata.routes` sets, [`crate::routes`]);
//! - `workers/scripts/{name}/script-settings`: logpush, tail consumers, observability and
//!   tags, none of which this directory has: a PATCH that asks for nothing but their "off"
//!   values succeeds and changes nothing, anything else is refused by field;
//! - `workers/scripts/{name}/settings` (GET): the active version's bindings with those same
//!   settings (wrangler reads it to find bindings it would have to provision).

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::envelope::{ApiError, code};
use super::{ApiRequest, Caller, Reply, allow};
use crate::error::DirectoryError;
use crate::scripts::Script;
use crate::tokens::Role;

/// `…/scripts/{name}/subdomain`.
pub(super) fn subdomain(
    caller: &Caller,
    request: &ApiRequest,
    name: &str,
) -> Result<Reply, ApiError> {
    allow(request, &[Method::GET, Method::POST])?;
    let script = if request.method == Method::POST {
        caller.require(Role::Bind, "changing a script's workers.dev route")?;
        let body: Value = request.json()?;
        let mut problems = Vec::new();
        let enabled = match body.get("enabled") {
            Some(Value::Bool(enabled)) => Some(*enabled),
            Some(other) => {
                problems.push(format!("enabled: expected true or false, found {other}"));
                None
            }
            None => {
                problems.push(
                    "enabled: missing; send {\"enabled\": true} to serve the script on its \
                     workers.dev host"
                        .to_owned(),
                );
                None
            }
        };
        match body.get("previews_enabled") {
            None | Some(Value::Null | Value::Bool(false)) => {}
            Some(Value::Bool(true)) => problems.push(
                "previews_enabled: preview URLs are not supported by this directory; set \
                 `preview_urls = false` in the wrangler config (or leave it out)"
                    .to_owned(),
            ),
            Some(other) => {
                problems.push(format!(
                    "previews_enabled: expected true or false, found {other}"
                ));
            }
        }
        match (enabled, problems.is_empty()) {
            (Some(enabled), true) => caller.dir.set_workers_dev(name, enabled)?,
            _ => return Err(refusal(&problems)),
        }
    } else {
        caller.require(Role::Read, "reading a script's workers.dev route")?;
        existing(caller, name)?
    };
    Ok(Reply::ok(json!({
        "enabled": script.workers_dev,
        "previews_enabled": false,
    })))
}

/// `…/scripts/{name}/routes`.
pub(super) fn routes(caller: &Caller, request: &ApiRequest, name: &str) -> Result<Reply, ApiError> {
    allow(request, &[Method::GET, Method::PUT])?;
    let script = if request.method == Method::PUT {
        caller.require(Role::Bind, "changing a script's routes")?;
        let body: Value = request.json()?;
        let mut problems = Vec::new();
        let routes = crate::routes::parse_routes_at("routes", Some(&body), &mut problems);
        if !problems.is_empty() {
            return Err(ApiError::each(
                StatusCode::BAD_REQUEST,
                code::INVALID_SCRIPT,
                problems,
            ));
        }
        caller.dir.set_routes(name, &routes).map_err(|err| {
            // The directory names an upload's fields (`metadata.routes[0]…`); here the routes
            // are the body itself.
            let mut err = ApiError::from(err);
            for entry in &mut err.errors {
                if let Some(rest) = entry.message.strip_prefix("metadata.") {
                    entry.message = rest.to_owned();
                }
            }
            err
        })?
    } else {
        caller.require(Role::Read, "reading a script's routes")?;
        existing(caller, name)?
    };
    let routes: Vec<Value> = script
        .routes
        .iter()
        .map(|route| {
            let mut entry = json!({ "pattern": route.pattern, "script": script.id });
            if let Some(zone) = &route.zone_name {
                entry["zone_name"] = json!(zone);
            }
            if route.custom_domain {
                entry["custom_domain"] = json!(true);
            }
            entry
        })
        .collect();
    Ok(Reply::ok(Value::Array(routes)))
}

/// `…/scripts/{name}/script-settings`.
pub(super) fn script_settings(
    caller: &Caller,
    request: &ApiRequest,
    name: &str,
) -> Result<Reply, ApiError> {
    allow(request, &[Method::GET, Method::PATCH])?;
    if request.method == Method::PATCH {
        caller.require(Role::Bind, "changing a script's settings")?;
        let body: Map<String, Value> = request.json()?;
        existing(caller, name)?;
        let problems = unsupported_settings(&body);
        if !problems.is_empty() {
            return Err(ApiError::each(
                StatusCode::BAD_REQUEST,
                code::UNSUPPORTED_SETTING,
                problems,
            ));
        }
    } else {
        caller.require(Role::Read, "reading a script's settings")?;
        existing(caller, name)?;
    }
    Ok(Reply::ok(json!({
        "logpush": false,
        "tail_consumers": [],
        "observability": { "enabled": false },
        "tags": [],
    })))
}

/// `…/scripts/{name}/settings` (GET only).
pub(super) fn settings(
    caller: &Caller,
    request: &ApiRequest,
    name: &str,
) -> Result<Reply, ApiError> {
    allow(request, &[Method::GET])?;
    caller.require(Role::Read, "reading a script's settings")?;
    let script = existing(caller, name)?;
    Ok(Reply::ok(json!({
        "bindings": script.bindings,
        "logpush": false,
        "tail_consumers": [],
        "observability": { "enabled": false },
        "tags": [],
    })))
}

/// The settings of a PATCH that ask for something this directory does not have.
fn unsupported_settings(body: &Map<String, Value>) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, value) in body {
        let off = match key.as_str() {
            "logpush" => matches!(value, Value::Null | Value::Bool(false)),
            "tail_consumers" | "tags" => {
                value.is_null() || value.as_array().is_some_and(Vec::is_empty)
            }
            "observability" => {
                value.is_null() || value.get("enabled").and_then(Value::as_bool) == Some(false)
            }
            _ => {
                problems.push(format!(
                    "{key}: not a script setting (known: logpush, tail_consumers, \
                     observability, tags)"
                ));
                continue;
            }
        };
        if !off {
            problems.push(format!(
                "{key}: {value} is not supported by this directory (it has no logpush, tail \
                 consumers, observability or tags); remove it from the wrangler config"
            ));
        }
    }
    problems
}

fn existing(caller: &Caller, name: &str) -> Result<Script, ApiError> {
    Ok(caller
        .dir
        .script(name)?
        .ok_or_else(|| DirectoryError::ScriptNotFound(name.to_owned()))?)
}

fn refusal(problems: &[String]) -> ApiError {
    ApiError::each(StatusCode::BAD_REQUEST, code::INVALID_JSON, problems)
}
