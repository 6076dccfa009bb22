//! wvpc-sdk: write workers-vpc scripts in Rust (`wasm32-wasip2` only).
//!
//! A script handles each incoming HTTP request and may call the VPC Services and networks it
//! declares in `vpc_services` / `vpc_networks` of its wrangler config, like
//! `env.API.fetch(request)` in a Worker:
//!
//! ```ignore
//! use wvpc_sdk::{Env, Handler, Request, Response};
//!
//! struct Proxy;
//!
//! impl Handler for Proxy {
//!     fn fetch(request: Request, env: &Env) -> Response {
//!         let upstream = request.with_url(format!("http://api.internal{}", "/status"));
//!         match env.binding("API").fetch(upstream) {
//!             Ok(response) => response,                                  // streams through
//!             Err(err) => Response::new(502).with_body(err.to_string()), // "ProxyError: <code>"
//!         }
//!     }
//! }
//!
//! wvpc_sdk::export_handler!(Proxy);
//! ```
//!
//! Everything is synchronous: calls block on wasi pollables, which is fine in a component (one
//! instance serves one request). [`Fetcher::start`] sends a request without waiting for its
//! response, for several fetches in flight at once, and
//! [`PendingResponse::wait_timeout`] gives up on a slow service after a time the script
//! chooses; [`Fetcher::fetch_with`] takes
//! [`FetchOptions`] such as [`Redirect::Manual`] (redirects are followed by default). Bodies stream in both directions ([`Body`]). Errors of a
//! binding are [`ProxyError`]s whose [`code`](ProxyError::code) is the RFC 9209 Proxy-Status
//! type the product documents (`connection_refused`, `dns_error`, …).
//!
//! [`Fetcher::connect`] opens a raw TCP connection through a binding instead (a [`Socket`]:
//! read, write, half-close; see [`socket`]), e.g. to a database on the private network:
//!
//! ```ignore
//! let mut redis = env.binding("NET").connect("10.0.0.5:6379")?;
//! redis.write_all(b"*1\r\n$4\r\nPING\r\n")?;
//! let mut reply = [0; 16];
//! let n = redis.read(&mut reply)?; // b"+PONG\r\n"
//! ```
//!
//! Built on the `wasip2` crate (WASI 0.2.12, the version the workers-vpc runtime implements)
//! and the `wvpc:bindings/script` world in `schemas/wit`.

#![forbid(unsafe_code)]

#[macro_use]
mod wire_name;

mod body;
mod error;
mod fetch;
mod handler;
mod headers;
mod message;
pub mod socket;

pub use body::{Body, IncomingBody};
pub use error::ProxyError;
pub use fetch::{Env, FetchOptions, Fetcher, PendingResponse, Redirect};
pub use handler::Handler;
pub use headers::Headers;
pub use message::{Request, Response};
pub use socket::{PendingSocket, Socket};
/// The raw WASI 0.2 bindings the SDK is built on, for what the SDK does not wrap.
pub use wasip2;

/// Generated bindings of world `wvpc:bindings/script`; WASI types are `wasip2`'s. Used by
/// [`export_handler!`]; not a stable API.
#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../schemas/wit",
        world: "wvpc:bindings/script",
        with: {
            "wasi:http/types@0.2.12": wasip2::http::types,
            "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/streams@0.2.12": wasip2::io::streams,
            "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
            "wasi:clocks/wall-clock@0.2.12": wasip2::clocks::wall_clock,
            "wasi:random/random@0.2.12": wasip2::random::random,
            "wasi:cli/stdout@0.2.12": wasip2::cli::stdout,
            "wasi:cli/stderr@0.2.12": wasip2::cli::stderr,
            "wasi:cli/stdin@0.2.12": wasip2::cli::stdin,
        },
        pub_export_macro: true,
        export_macro_name: "__export_script",
        default_bindings_module: "::wvpc_sdk::__bindings",
    });

    pub use crate::handler::run;
}

/// Exports `$handler` (a [`Handler`]) as the script's `wasi:http/incoming-handler`. Use it
/// once, at the root of the script crate (a `cdylib`).
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
        const _: () = {
            struct WvpcIncomingHandler;

            impl $crate::__bindings::exports::wasi::http::incoming_handler::Guest
                for WvpcIncomingHandler
            {
                fn handle(
                    request: $crate::wasip2::http::types::IncomingRequest,
                    response_out: $crate::wasip2::http::types::ResponseOutparam,
                ) {
                    $crate::__bindings::run::<$handler>(request, response_out)
                }
            }

            $crate::__bindings::__export_script!(
                WvpcIncomingHandler with_types_in $crate::__bindings
            );
        };
    };
}
