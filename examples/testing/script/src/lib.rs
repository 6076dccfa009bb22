//! Example script of `examples/testing`: forwards each request to the `API` binding
//! (`http://api.internal<path>`), and handles the service's failures itself:
//!
//! - the service cannot be reached: `502` with the body `ProxyError: <code>`
//!   (e.g. `ProxyError: connection_refused`);
//! - the service has not answered within [`TIMEOUT`]: `504` with the body
//!   `API timed out after 1000 ms`;
//! - the service's response body is cut short: the answer is cut short too (the body streams).
//!
//! Its tests (`../tests/`) run it with `wvpc-testing` against a mock of the service.

use std::time::Duration;

use wvpc_sdk::{Env, FetchOptions, Handler, Request, Response};

/// How long the script waits for the service's response head.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// The `Host` the service sees.
pub const API_HOST: &str = "api.internal";

struct TimedProxy;

impl Handler for TimedProxy {
    fn fetch(request: Request, env: &Env) -> Response {
        let url = format!("http://{API_HOST}{}", request.path_with_query());
        let outcome = env
            .binding("API")
            .start(request.with_url(url), FetchOptions::default())
            .map(|pending| pending.wait_timeout(TIMEOUT));
        match outcome {
            Ok(Some(Ok(response))) => response,
            Ok(None) => text(
                504,
                format!("API timed out after {} ms", TIMEOUT.as_millis()),
            ),
            Err(err) | Ok(Some(Err(err))) => text(502, err.to_string()),
        }
    }
}

fn text(status: u16, body: String) -> Response {
    Response::new(status)
        .with_header("content-type", "text/plain; charset=utf-8")
        .with_body(body)
}

wvpc_sdk::export_handler!(TimedProxy);
