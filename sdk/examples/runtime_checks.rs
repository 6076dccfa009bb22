//! Guest for wvpc-runtime's integration tests: each path exercises one host behaviour.
//!
//! - `/trap`: panics, so the instance traps (the host must fail this request only).
//! - `/outbound?port=N`: a plain `wasi:http/outgoing-handler` request to `127.0.0.1:N`, which
//!   the host must deny; answers `outbound: <outcome>`.
//! - `/undeclared`: fetch through a binding the config does not declare; answers the error.
//! - `/buffered/<rest>`: fetch `http://api.internal/<rest>` through `API` and read the whole
//!   body in the script; answers it, or 502 `ProxyError: <code>` when the fetch or the body
//!   read fails.

use wvpc_sdk::wasip2::http::outgoing_handler;
use wvpc_sdk::wasip2::http::types::{Fields, OutgoingRequest, Scheme};
use wvpc_sdk::{Env, Handler, ProxyError, Request, Response};

struct Checks;

impl Handler for Checks {
    fn fetch(request: Request, env: &Env) -> Response {
        let path = request.path_with_query().to_owned();
        if path == "/trap" {
            panic!("runtime-checks: trapping on purpose");
        }
        if let Some(port) = path.strip_prefix("/outbound?port=") {
            return Response::new(200).with_body(format!("outbound: {}", plain_outbound(port)));
        }
        if path == "/undeclared" {
            return match env
                .binding("UNDECLARED")
                .fetch(Request::get("http://api.internal/"))
            {
                Ok(response) => {
                    Response::new(200).with_body(format!("status {}", response.status()))
                }
                Err(err) => Response::new(502).with_body(err.to_string()),
            };
        }
        if let Some(rest) = path.strip_prefix("/buffered/") {
            let upstream = request.with_url(format!("http://api.internal/{rest}"));
            let result = env
                .binding("API")
                .fetch(upstream)
                .and_then(|response| Ok((response.status(), response.into_body().into_bytes()?)));
            return match result {
                Ok((status, body)) => Response::new(status).with_body(body),
                Err(err) => Response::new(502).with_body(err.to_string()),
            };
        }
        Response::new(404).with_body("unknown check")
    }
}

/// What happens to an outgoing request that bypasses the bindings.
fn plain_outbound(port: &str) -> String {
    let request = OutgoingRequest::new(Fields::new());
    let authority = format!("127.0.0.1:{port}");
    if request.set_scheme(Some(&Scheme::Http)).is_err()
        || request.set_authority(Some(&authority)).is_err()
        || request.set_path_with_query(Some("/")).is_err()
    {
        return "could not build the request".into();
    }
    let pending = match outgoing_handler::handle(request, None) {
        Ok(pending) => pending,
        Err(code) => return ProxyError::from(code).to_string(),
    };
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => format!("status {}", response.status()),
        Some(Ok(Err(code))) => ProxyError::from(code).to_string(),
        Some(Err(())) | None => "no outcome".into(),
    }
}

wvpc_sdk::export_handler!(Checks);
