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
                let input: ServiceInput = request.json()?;
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
                    let input: ServiceInput = request.json()?;
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
