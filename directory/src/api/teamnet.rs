//! `accounts/{account}/teamnet/virtual_networks[/{id}]` and
//! `accounts/{account}/teamnet/routes[/{id}]`: virtual networks and IP routes in Cloudflare's
//! shape ([`crate::teamnet`]). Lists and reads need the read role, every change the admin role.
//! The route list filters by `virtual_network_id` and `tunnel_id`.

use http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::envelope::{ApiError, ErrorEntry, code};
use super::{ApiRequest, Caller, Reply, allow, no_route_segments, paginate, parse_id};
use crate::error::DirectoryError;
use crate::teamnet::{RouteFilter, RouteInput, VirtualNetworkInput};
use crate::tokens::Role;

pub(super) fn route_vnets(
    caller: &Caller,
    request: &ApiRequest,
    tail: &[&str],
) -> Result<Reply, ApiError> {
    match tail {
        [] => {
            allow(request, &[Method::GET, Method::POST])?;
            if request.method == Method::GET {
                caller.require(Role::Read, "listing virtual networks")?;
                paginate(request, caller.dir.list_virtual_networks()?)
            } else {
                caller.require(Role::Admin, "creating a virtual network")?;
                let input: VirtualNetworkInput = body(request, "virtual network", VNET_FIELDS)?;
                Ok(Reply::ok(
                    serde_json::to_value(caller.dir.create_virtual_network(&input)?)
                        .map_err(internal)?,
                ))
            }
        }
        [id] => {
            allow(request, &[Method::GET, Method::PATCH, Method::DELETE])?;
            let id = parse_id("virtual network", id)?;
            let vnet = match request.method {
                Method::GET => {
                    caller.require(Role::Read, "reading a virtual network")?;
                    caller
                        .dir
                        .virtual_network(id)?
                        .ok_or_else(|| DirectoryError::VirtualNetworkNotFound(id.to_string()))?
                }
                Method::PATCH => {
                    caller.require(Role::Admin, "updating a virtual network")?;
                    let input: VirtualNetworkInput = body(request, "virtual network", VNET_FIELDS)?;
                    caller.dir.update_virtual_network(id, &input)?
                }
                _ => {
                    caller.require(Role::Admin, "deleting a virtual network")?;
                    caller.dir.delete_virtual_network(id)?
                }
            };
            Ok(Reply::ok(serde_json::to_value(vnet).map_err(internal)?))
        }
        _ => Err(no_route_segments(&request.segments)),
    }
}

pub(super) fn route_routes(
    caller: &Caller,
    request: &ApiRequest,
    tail: &[&str],
) -> Result<Reply, ApiError> {
    match tail {
        [] => {
            allow(request, &[Method::GET, Method::POST])?;
            if request.method == Method::GET {
                caller.require(Role::Read, "listing routes")?;
                let filter = RouteFilter {
                    virtual_network_id: query_id(request, "virtual_network_id")?,
                    tunnel_id: query_id(request, "tunnel_id")?,
                };
                paginate(request, caller.dir.list_network_routes(filter)?)
            } else {
                caller.require(Role::Admin, "creating a route")?;
                let input: RouteInput = body(request, "route", ROUTE_FIELDS)?;
                Ok(Reply::ok(
                    serde_json::to_value(caller.dir.create_network_route(&input)?)
                        .map_err(internal)?,
                ))
            }
        }
        [id] => {
            allow(request, &[Method::GET, Method::PATCH, Method::DELETE])?;
            let id = parse_id("route", id)?;
            let route = match request.method {
                Method::GET => {
                    caller.require(Role::Read, "reading a route")?;
                    caller
                        .dir
                        .network_route(id)?
                        .ok_or_else(|| DirectoryError::RouteNotFound(id.to_string()))?
                }
                Method::PATCH => {
                    caller.require(Role::Admin, "updating a route")?;
                    let input: RouteInput = body(request, "route", ROUTE_FIELDS)?;
                    caller.dir.update_network_route(id, &input)?
                }
                _ => {
                    caller.require(Role::Admin, "deleting a route")?;
                    caller.dir.delete_network_route(id)?
                }
            };
            Ok(Reply::ok(serde_json::to_value(route).map_err(internal)?))
        }
        _ => Err(no_route_segments(&request.segments)),
    }
}

/// Whether a field holds text or a boolean (`null` is "not set" for either).
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Bool,
}

const VNET_FIELDS: &[(&str, Kind)] = &[
    ("name", Kind::Text),
    ("comment", Kind::Text),
    ("is_default", Kind::Bool),
    ("is_default_network", Kind::Bool),
];

const ROUTE_FIELDS: &[(&str, Kind)] = &[
    ("network", Kind::Text),
    ("tunnel_id", Kind::Text),
    ("virtual_network_id", Kind::Text),
    ("comment", Kind::Text),
];

/// The JSON body as `T`: every field of the wrong type is refused naming it (all at once),
/// and an unknown key is refused by name.
fn body<T: DeserializeOwned>(
    request: &ApiRequest,
    what: &str,
    fields: &[(&str, Kind)],
) -> Result<T, ApiError> {
    let value: serde_json::Value = request.json()?;
    let Some(object) = value.as_object() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_JSON,
            format!("the body must be a JSON object (a {what})"),
        ));
    };
    let errors: Vec<ErrorEntry> = fields
        .iter()
        .filter_map(|(key, kind)| {
            let found = object.get(*key)?;
            let expected = match kind {
                Kind::Text if !found.is_string() && !found.is_null() => "a string",
                Kind::Bool if !found.is_boolean() && !found.is_null() => "true or false",
                _ => return None,
            };
            Some(ErrorEntry {
                code: code::VALIDATION,
                message: format!("{key}: expected {expected}, found {}", json_kind(found)),
            })
        })
        .collect();
    if !errors.is_empty() {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            errors,
        });
    }
    serde_json::from_value(value).map_err(|err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_JSON,
            format!("invalid {what} object: {err}"),
        )
    })
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// An optional UUID query parameter.
fn query_id(request: &ApiRequest, key: &str) -> Result<Option<Uuid>, ApiError> {
    request
        .query(key)
        .filter(|v| !v.is_empty())
        .map(|text| {
            Uuid::try_parse(text).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    code::INVALID_QUERY,
                    format!("{key}={text:?}: expected a UUID"),
                )
            })
        })
        .transpose()
}

fn internal(err: serde_json::Error) -> ApiError {
    tracing::error!(error = %err, "serializing a teamnet object");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        code::INTERNAL,
        "internal error (see the server log)",
    )
}
