//! [`Handler`]: the script's entry point, and the glue that runs it for each incoming request.

use wasip2::http::types::{IncomingRequest, OutgoingResponse, ResponseOutparam};

use crate::fetch::Env;
use crate::message::{Request, Response};

/// A script: answers each incoming request. Export it with
/// [`export_handler!`](crate::export_handler).
pub trait Handler {
    /// Handles one request, like a Worker's `fetch(request, env)`. The response body streams
    /// to the client after this returns.
    fn fetch(request: Request, env: &Env) -> Response;
}

/// Runs `H` for one incoming request. Called by the code [`export_handler!`] generates.
#[doc(hidden)]
pub fn run<H: Handler>(request: IncomingRequest, response_out: ResponseOutparam) {
    let request = Request::from_incoming(request);
    let response = H::fetch(request, &Env::new());
    send(response, response_out);
}

fn send(response: Response, response_out: ResponseOutparam) {
    let (status, headers, body) = response.into_parts();
    let fields = match headers.to_wasi() {
        Ok(fields) => fields,
        Err(invalid) => {
            let message = format!(
                "the script's response has an invalid header field {:?}",
                invalid.0
            );
            ResponseOutparam::set(
                response_out,
                Err(wasip2::http::types::ErrorCode::InternalError(Some(message))),
            );
            return;
        }
    };
    let outgoing = OutgoingResponse::new(fields);
    if outgoing.set_status_code(status).is_err() {
        ResponseOutparam::set(
            response_out,
            Err(wasip2::http::types::ErrorCode::InternalError(Some(
                format!("the script's response status {status} is not a valid HTTP status"),
            ))),
        );
        return;
    }
    let Ok(out_body) = outgoing.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(outgoing));
    // The head is out; a body that fails now can only be cut short, which `send` does by not
    // finishing it.
    let _ = body.send(out_body);
}
