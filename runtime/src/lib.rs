//! wvpc-runtime: the wasmtime host of workers-vpc scripts.
//!
//! A script is a `wasm32-wasip2` component exporting `wasi:http/incoming-handler` (world
//! `wvpc:bindings/script` in `schemas/wit`). The runtime
//! - loads its wrangler-style config ([`ScriptConfig::load`]);
//! - compiles components on a process-wide engine (pooling allocator, CPU limit by epochs),
//!   once per content hash, and pre-instantiates them; after a burst, gives the memory the
//!   instance pool keeps back once traffic is quiet ([`PoolRelease`], [`PoolStats`]);
//! - hosts many scripts of many accounts ([`ScriptHost`], `wvpc runtime`): each deployed
//!   version ([`Deployment`]) is swapped in atomically by [`ScriptHost::apply`], requests are
//!   routed by host and path ([`RouteTable`]: default hosts
//!   `<script>.<subdomain>.workers.localhost`, wrangler routes), and a request in flight
//!   finishes on the version it started on;
//! - or one script whatever the `Host` ([`Runtime`], `wvpc dev`), through the same code;
//! - serves HTTP/1.1 ([`ScriptHost::serve`]), each request on an instance of its version:
//!   one that served earlier requests of that version (globals persist, as in a Workers
//!   isolate) or, after a trap or a limit and with `limits.isolation = "request"`, a fresh
//!   one;
//! - sends `vpc.fetch(binding, request, options, init)` over Cap'n Proto to the
//!   binding-workers (`schemas/binding.capnp`), on one reused connection each (authenticated
//!   with the [`PlatformSecret`] when there is one) shared by every script, spread over them
//!   with failover, streaming both bodies, following redirects through the same binding, and
//!   denies every other outgoing request; a script reaches only its own bindings;
//! - enforces each script's per-request [`Limits`] (CPU time, memory, wall time,
//!   subrequests, connections, URL and header sizes; `docs/limits.md`), each failing only its
//!   request;
//! - captures the script's stdout / stderr per request and hands each line, with the account,
//!   script, version and request id, to a [`ScriptOutput`] ([`PrefixedOutput`] prints
//!   `[script 5f3a1b2c] line`; [`TailHub`] also publishes it to `wvpc tail` subscribers);
//! - reports failures to the script as wasi:http `error-code`s ([`wasi_error_code`]);
//! - hands a copy of every binding exchange to an [`ExchangeTap`] when one is given
//!   (`wvpc dev --record`);
//! - counts requests, instantiations and binding calls per script into [`RuntimeMetrics`]
//!   when given one (`--metrics`).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use wvpc_runtime::{PlatformSecret, Runtime, RuntimeOptions, ScriptConfig};
//!
//! let config = ScriptConfig::load("wrangler.jsonc".as_ref())?;
//! let options = RuntimeOptions {
//!     binding_workers: vec!["127.0.0.1:7001".parse()?, "127.0.0.1:7002".parse()?],
//!     binding_secret: Some(PlatformSecret::load_or_create(".wvpc".as_ref())?),
//!     account: "acct".into(),
//!     exchange_tap: None,
//!     metrics: None,
//! };
//! let runtime = Arc::new(Runtime::new(&config, options)?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
//! runtime.serve(listener).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod binding_client;
mod config;
mod dev_server;
mod engine;
mod error_map;
mod exchange_tap;
mod host;
mod instances;
mod limits;
mod metrics;
mod outbound;
mod pool;
mod routing;
mod script;
mod script_host;
mod script_output;
mod serving;
mod serving_threads;
mod socket;
mod tail;

pub use config::{
    ConfigError, ConfigProblem, ConfigValue, LimitsError, ScriptBindings, ScriptConfig,
    VpcNetworkBinding, VpcServiceBinding,
};
pub use dev_server::{Runtime, RuntimeOptions};
pub use error_map::wasi_error_code;
pub use exchange_tap::{ExchangeTap, MAX_TAPPED_BODY, TappedBody, TappedExchange, TappedOutcome};
pub use limits::{Isolation, Limits};
pub use metrics::{BindingMetrics, RuntimeMetrics, ScriptMetrics};
pub use pool::{PoolRelease, PoolStats};
pub use routing::{RouteConflict, RouteError, RoutePattern, RouteTable, ScriptKey, ScriptRoutes};
pub use script::{ComponentError, RuntimeError, check_component};
pub use script_host::{
    ApplyReport, DEFAULT_WORKERS_DOMAIN, Deployment, DeploymentError, FailedDeployment,
    ModuleFetchError, ModuleSource, ScriptHost, ServedScript,
};
pub use script_output::{
    PrefixedOutput, RequestOutcome, RequestSummary, ScriptLine, ScriptOutput, ScriptStream,
};
pub use serving::REQUEST_ID_HEADER;
pub use tail::{TAIL_BUFFER, TailEvent, TailEventKind, TailHub};
/// The wasi:http 0.2 `error-code` variant as wasmtime represents it.
pub use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode as WasiErrorCode;
/// The secret shared by runtimes and binding-workers (`<state>/platform/secret`).
pub use wvpc_schemas::PlatformSecret;
