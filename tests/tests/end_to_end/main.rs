//! End-to-end tests: a request travels script → runtime → capnp → binding-worker → HTTP/2
//! CONNECT → iris → DNS through the tunnel → tunnel → origin and back, on real sockets.
//!
//! - [`real_tunnel`]: the stack `wvpc dev` runs, with the real QUIC edge, our connector and a
//!   real DNS server.
//! - [`cluster`]: two iris nodes over one cluster registry (SQLite and PostgreSQL).
//! - [`ha`]: replicas, failover under load, graceful shutdown, iris restart, limits, metrics.
//! - [`live_config`]: service changes reach iris while load runs.
//! - [`mock_tunnel`]: the same path with `MockTunnel` in place of QUIC, and its fault switches.
//! - [`dev_mock`]: the stack of `wvpc dev --mock`: canned answers, upstream, `501`, and each
//!   fault giving what its real cause gives on the real path.
//! - [`dev_record`]: `wvpc dev --record`: exchanges on the real path written as a mock file,
//!   replayed offline with the same answers and codes.
//! - [`error_codes`]: the table of error codes, each from its real cause on the real path.
//! - [`network_connect`]: `vpc_networks` CONNECTs and `tcp` sockets through the real tunnel
//!   and connector (its allow-list, an origin's reset).
//! - [`relay`]: a request relayed from the iris node it entered to the node holding the tunnel.
//! - [`websocket`]: a WebSocket upgrade through the real path.
//! - [`javascript`]: JavaScript scripts (`examples/proxy-js` and inline ones) on the real path.
//! - [`postgres_directory`]: the real path on a PostgreSQL directory, and while it is down.

mod cluster;
mod dev_mock;
mod dev_record;
mod error_codes;
mod ha;
mod javascript;
mod live_config;
mod mock_tunnel;
mod network_connect;
mod postgres_directory;
mod real_tunnel;
mod relay;
mod websocket;
