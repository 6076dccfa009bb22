//! Guest for the end-to-end error-code table: one binding fetch per request, whose outcome
//! the script reports as it saw it.
//!
//! `GET /<scheme>/<host>/<rest>` fetches `<scheme>://<host>/<rest>` through binding `API` and
//! reads the whole response body in the script. It answers the origin's status and body, or
//! `502` with the body `ProxyError: <code>` (the SDK's display) and the header
//! `wvpc-wasi-error-code` holding the wasi:http `error-code` the host gave the script
//! (its `Debug` form, e.g. `ErrorCode::ConnectionRefused`).

use wvpc_sdk::{Env, Handler, ProxyError, Request, Response};

struct Checks;

impl Handler for Checks {
    fn fetch(request: Request, env: &Env) -> Response {
        let path = request.path_with_query().to_owned();
        let mut parts = path.trim_start_matches('/').splitn(3, '/');
        let (Some(scheme), Some(host)) = (parts.next(), parts.next()) else {
            return Response::new(400).with_body("use /<scheme>/<host>/<rest>");
        };
        let url = format!("{scheme}://{host}/{}", parts.next().unwrap_or(""));
        let result = env
            .binding("API")
            .fetch(Request::get(url))
            .and_then(|response| Ok((response.status(), response.into_body().into_bytes()?)));
        match result {
            Ok((status, body)) => Response::new(status).with_body(body),
            Err(err) => failure(&err),
        }
    }
}

fn failure(err: &ProxyError) -> Response {
    Response::new(502)
        .with_header("wvpc-wasi-error-code", format!("{:?}", err.error_code()))
        .with_body(err.to_string())
}

wvpc_sdk::export_handler!(Checks);
