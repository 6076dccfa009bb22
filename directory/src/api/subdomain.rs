//! `accounts/{account}/workers/subdomain`: the account's subdomain in Cloudflare's shape,
//! `{"subdomain": "<label>"}` for GET and PUT; scripts are served at
//! `<script>.<subdomain>.<workers domain>`.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::envelope::{ApiError, code};
use super::{ApiRequest, Caller, Reply, allow};
use crate::tokens::Role;

pub(super) fn route(caller: &Caller, request: &ApiRequest) -> Result<Reply, ApiError> {
    allow(request, &[Method::GET, Method::PUT])?;
    if request.method == Method::PUT {
        caller.require(Role::Admin, "changing the account's subdomain")?;
        let body: Value = request.json()?;
        let Some(subdomain) = body.get("subdomain").and_then(Value::as_str) else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_JSON,
                "subdomain: missing; send {\"subdomain\": \"<label>\"}",
            ));
        };
        caller.dir.set_subdomain(subdomain)?;
    } else {
        caller.require(Role::Read, "reading the account's subdomain")?;
    }
    Ok(Reply::ok(json!({ "subdomain": caller.dir.subdomain()? })))
}
