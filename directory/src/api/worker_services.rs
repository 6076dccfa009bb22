//! `accounts/{account}/workers/services/{name}`: a script as Cloudflare's "service" (the
//! worker with its one `production` environment). wrangler asks for it before each deploy:
//! an unknown script answers 404 with [`code::SCRIPT_NOT_FOUND`] (Cloudflare's 10007), which
//! wrangler reads as "not deployed yet"; a known one answers its default environment.

use http::Method;
use serde_json::json;

use super::envelope::ApiError;
use super::{ApiRequest, Caller, Reply, allow, no_route_segments};
use crate::error::DirectoryError;
use crate::tokens::Role;

#[cfg(doc)]
use super::envelope::code;

pub(super) fn route(
    caller: &Caller,
    request: &ApiRequest,
    tail: &[&str],
) -> Result<Reply, ApiError> {
    let [name] = tail else {
        return Err(no_route_segments(&request.segments));
    };
    allow(request, &[Method::GET])?;
    caller.require(Role::Read, "reading a script")?;
    let script = caller
        .dir
        .script(name)?
        .ok_or_else(|| DirectoryError::ScriptNotFound((*name).to_owned()))?;
    Ok(Reply::ok(json!({
        "id": script.id,
        "created_on": script.created_on,
        "modified_on": script.modified_on,
        "default_environment": {
            "environment": "production",
            "created_on": script.created_on,
            "modified_on": script.modified_on,
            "script": {
                "id": script.id,
                // Cloudflare's tag is an opaque id of the script; the name is ours.
                "tag": script.id,
                "etag": script.etag,
                "handlers": ["fetch"],
                "created_on": script.created_on,
                "modified_on": script.modified_on,
            },
        },
    })))
}
