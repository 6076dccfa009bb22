//! The request bodies of the API read without a connection, exactly as the handlers read them
//! before any database work: a service object (create, replace) and a script upload. Tools
//! and the fuzz targets call these; the server calls the same code through its handlers.

use bytes::Bytes;
use http::Method;

use super::ApiRequest;
use super::envelope::ApiError;
use super::scripts::ScriptForm;
use crate::service_input::ServiceInput;

fn request(method: Method, content_type: Option<&str>, body: &[u8]) -> ApiRequest {
    ApiRequest {
        method,
        segments: Vec::new(),
        query: Vec::new(),
        content_type: content_type.map(str::to_owned),
        body: Bytes::copy_from_slice(body),
    }
}

/// The body of a service create or replace, with every wrong JSON type reported by its path
/// (the rules of [`ServiceInput::validate`] come after).
pub fn read_service_body(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<ServiceInput, ApiError> {
    super::services::service_input(&request(Method::POST, content_type, body))
}

/// A script upload (`multipart/form-data` with a `metadata` part and the module parts), with
/// every problem of the form and its metadata reported at once. A JavaScript upload is not
/// built here ([`ScriptForm::into_upload`] does).
pub fn read_script_upload(content_type: Option<&str>, body: &[u8]) -> Result<ScriptForm, ApiError> {
    super::scripts::parse_upload(&request(Method::PUT, content_type, body))
}
