//! `accounts/{account}/connectivity/directory/services[/{id}]`: list (paged, `type` filter),
//! create, get, full-replace PUT and delete of VPC services.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::envelope::{ApiError, code};
use super::{ApiRequest, Caller, Reply, allow, no_route_segments, paginate, parse_id};
use crate::service::ServiceType;
use crate::service_input::ServiceInput;
use crate::tokens::Role;

pub(super) fn route(
    caller: &Caller,
    request: &ApiRequest,
    tail: &[&str],
) -> Result<Reply, ApiError> {
    match tail {
        [] => {
            allow(request, &[Method::GET, Method::POST])?;
            if request.method == Method::GET {
                caller.require(Role::Read, "listing VPC services")?;
                let filter = match request.query("type") {
                    None => None,
                    Some(text) => Some(ServiceType::parse(text).ok_or_else(|| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            code::INVALID_QUERY,
                            format!("type={text:?}: expected \"http\" or \"tcp\""),
                        )
                    })?),
                };
                paginate(request, caller.dir.list_services(filter)?)
            } else {
                caller.require(Role::Admin, "creating a VPC service")?;
                let input = service_input(request)?;
                Ok(Reply::ok(json!(caller.dir.create_service(&input)?)))
            }
        }
        [id] => {
            allow(request, &[Method::GET, Method::PUT, Method::DELETE])?;
            let id = parse_id("service", id)?;
            match request.method {
                Method::GET => {
                    caller.require(Role::Read, "reading a VPC service")?;
                    let service = caller
                        .dir
                        .service(id)?
                        .ok_or(crate::DirectoryError::ServiceNotFound(id))?;
                    Ok(Reply::ok(json!(service)))
                }
                Method::PUT => {
                    caller.require(Role::Admin, "replacing a VPC service")?;
                    let input = service_input(request)?;
                    Ok(Reply::ok(json!(caller.dir.replace_service(id, &input)?)))
                }
                _ => {
                    caller.require(Role::Admin, "deleting a VPC service")?;
                    caller.dir.delete_service(id)?;
                    Ok(Reply::ok(Value::Null))
                }
            }
        }
        _ => Err(no_route_segments(&request.segments)),
    }
}

/// The body as a [`ServiceInput`]. Values of the wrong JSON type are reported first, all of
/// them with their paths (serde alone would stop at the first); range and rule checks follow
/// in the directory's validation.
pub(super) fn service_input(request: &ApiRequest) -> Result<ServiceInput, ApiError> {
    let body: Value = request.json()?;
    let mut problems = Vec::new();
    check_shape(&body, "", &SERVICE_SHAPE, &mut problems);
    if !problems.is_empty() {
        return Err(ApiError::each(
            StatusCode::BAD_REQUEST,
            code::VALIDATION,
            problems,
        ));
    }
    serde_json::from_value(body).map_err(|err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_JSON,
            format!("invalid service object: {err}"),
        )
    })
}

/// The JSON type a known field must have (`null` is accepted everywhere: "not set").
enum Shape {
    Text,
    Integer,
    TextList,
    Object(&'static [(&'static str, Shape)]),
}

const SERVICE_SHAPE: Shape = Shape::Object(&[
    ("name", Shape::Text),
    ("type", Shape::Text),
    ("http_port", Shape::Integer),
    ("https_port", Shape::Integer),
    ("tcp_port", Shape::Integer),
    ("app_protocol", Shape::Text),
    (
        "host",
        Shape::Object(&[
            ("hostname", Shape::Text),
            ("ipv4", Shape::Text),
            ("ipv6", Shape::Text),
            (
                "network",
                Shape::Object(&[
                    ("tunnel_id", Shape::Text),
                    ("virtual_network_id", Shape::Text),
                ]),
            ),
            (
                "resolver_network",
                Shape::Object(&[
                    ("tunnel_id", Shape::Text),
                    ("virtual_network_id", Shape::Text),
                    ("resolver_ips", Shape::TextList),
                ]),
            ),
        ]),
    ),
    (
        "tls_settings",
        Shape::Object(&[("cert_verification_mode", Shape::Text)]),
    ),
]);

/// Unknown keys are left to serde, which refuses them by name.
fn check_shape(value: &Value, path: &str, shape: &Shape, problems: &mut Vec<String>) {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    let found = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    let label = if path.is_empty() { "(body)" } else { path };
    match shape {
        _ if value.is_null() && !path.is_empty() => {}
        Shape::Text if !value.is_string() => {
            problems.push(format!(
                "{label}: expected a string, found {}",
                found(value)
            ));
        }
        Shape::Integer if !(value.is_i64() || value.is_u64()) => problems.push(format!(
            "{label}: expected a whole number, found {}",
            match value {
                Value::Number(_) => "a fraction",
                other => found(other),
            }
        )),
        Shape::TextList => match value.as_array() {
            None => problems.push(format!(
                "{label}: expected an array of strings, found {}",
                found(value)
            )),
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    if !item.is_string() {
                        problems.push(format!(
                            "{path}[{i}]: expected a string, found {}",
                            found(item)
                        ));
                    }
                }
            }
        },
        Shape::Object(fields) => match value.as_object() {
            None => problems.push(format!(
                "{label}: expected an object, found {}",
                found(value)
            )),
            Some(map) => {
                for (key, field_shape) in *fields {
                    if let Some(field) = map.get(*key) {
                        check_shape(field, &at(key), field_shape, problems);
                    }
                }
            }
        },
        _ => {}
    }
}
