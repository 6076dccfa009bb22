//! How workers-vpc is assembled from its parts: the wiring that the `wvpc` binary, the tests
//! and the benchmark share, so that each runs exactly what an operator runs.
//!
//! - [`iris_node`]: one iris node (CONNECT router + QUIC tunnel edge) over a directory, with
//!   its routes ([`live_routes`]) and tunnel credentials ([`authority`]) held in memory and
//!   its live connections recorded through a queue, so directory I/O never runs on the edge.
//! - [`runtime_node`]: one runtime process serving every deployed script, following the
//!   directory, with its control listener for `wvpc tail`.
//! - [`stack`]: the one-process stack of `wvpc dev`: directory, iris, binding-worker and
//!   runtime, each on its own real socket.
//! - [`mock_stack`]: the stack of `wvpc dev --mock`: runtime, binding-worker and iris's router
//!   over a mock network instead of the directory and the tunnels; [`mock_file`] reads the
//!   mock file it serves, [`mock_record`] writes one from the real path's exchanges
//!   (`wvpc dev --record`).
//! - [`script_sources`]: `wvpc dev`'s script builds (a JavaScript `main` built with
//!   `wvpc_js_build`) and the watch of their sources.
//! - [`state`]: where the parts keep their files in a state directory.
//! - [`up`]: the platform on one machine as separate processes (`wvpc up`).

#![forbid(unsafe_code)]

pub mod authority;
pub mod iris_node;
mod iris_status;
pub mod live_routes;
pub mod mock_file;
pub mod mock_record;
pub mod mock_stack;
pub mod runtime_node;
pub mod script_sources;
pub mod stack;
pub mod state;
pub mod up;

mod error;

pub use error::PlatformError;
