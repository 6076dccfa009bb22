//! Example script: a reverse proxy in front of the VPC Service bound as `API`.
//!
//! Every incoming request is forwarded to `http://api.internal<path>?<query>` through the
//! `API` binding, with its method, headers and body (streamed); the service's response
//! (status, headers, streamed body) is returned as is. When the service cannot be reached the
//! answer is `502` with the body `ProxyError: <code>` (e.g. `ProxyError: connection_refused`).
//! Each request is logged on stdout (`GET /hello -> 200`), which `wvpc dev` prints and
//! `wvpc tail` follows.
//!
//! The URL's host does not choose the destination — the binding does (its `service_id`).
//! The host only becomes the `Host` header the origin sees, so it is a constant here:
//! [`API_HOST`]. Change it to the name your origin expects (a virtual host).
//!
//! Build: `cargo build --target wasm32-wasip2 -p wvpc-example-proxy`, then point `main` in
//! `wrangler.jsonc` at `target/wasm32-wasip2/debug/wvpc_example_proxy.wasm`.

use wvpc_sdk::{Env, Handler, Request, Response};

/// The `Host` the origin sees (never used for routing).
pub const API_HOST: &str = "api.internal";
/// The binding declared in `vpc_services`.
pub const BINDING: &str = "API";

struct Proxy;

impl Handler for Proxy {
    fn fetch(request: Request, env: &Env) -> Response {
        let line = format!("{} {}", request.method(), request.path_with_query());
        let url = format!("http://{API_HOST}{}", request.path_with_query());
        match env.binding(BINDING).fetch(request.with_url(url)) {
            Ok(response) => {
                println!("{line} -> {}", response.status());
                response
            }
            Err(err) => {
                println!("{line} -> 502 {err}");
                Response::new(502)
                    .with_header("content-type", "text/plain; charset=utf-8")
                    .with_body(err.to_string())
            }
        }
    }
}

wvpc_sdk::export_handler!(Proxy);
