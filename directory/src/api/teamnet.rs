//! `accounts/{account}/teamnet/virtual_networks[/{id}]` and
//! `accounts/{account}/teamnet/routes[/{id}]`: virtual networks and IP routes in Cloudflare's
//! shape ([`crate::teamnet`]). Lists and reads need the read role, every change the admin role.
//! The route list filters by `virtual_network_id` and `tunnel_id`.

use http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::envelope::{ApiError, code};
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
                let input: VirtualNetworkInput = body(request, "virtual network")?;
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
                    let input: VirtualNetworkInput = body(request, "virtual network")?;
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
                let input: RouteInput = body(request, "route")?;
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
                    let input: RouteInput = body(request, "route")?;
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

/// The JSON body as `T`: a wrong type or an unknown key is refused naming the field.
fn body<T: DeserializeOwned>(request: &ApiRequest, what: &str) -> Result<T, ApiError> {
    let value: serde_json::Value = request.json()?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_JSON,
            format!("the body must be a JSON object (a {what})"),
        ));
    }
    serde_json::from_value(value).map_err(|err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_JSON,
            format!("invalid {what} object: {err}"),
        )
    })
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
