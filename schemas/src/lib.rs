//! Wire contracts of workers-vpc, generated from the `.capnp` files in this folder.
//!
//! - [`binding_capnp`]: runtime ↔ binding-worker (`VpcBinding.fetch`, streamed bodies,
//!   errors as [`binding_capnp::ErrorCode`]).
//! - [`byte_stream_flow`]: the bounded window both sides keep on the bodies of
//!   `binding_capnp` ([`StreamWriter`] to send one, [`inbox`] to receive one).
//! - [`tunnel_stream_capnp`]: tunnel data-stream `ConnectRequest` / `ConnectResponse`,
//!   byte-compatible with cloudflared.
//! - [`tunnel_rpc_capnp`]: tunnel registration and connector RPC, with cloudflared's
//!   interface ids and ordinals.
//! - [`binding_auth`]: the handshake that runs before `binding_capnp` on each runtime ↔
//!   binding-worker connection, and the [`PlatformSecret`] both sides prove they hold.
//! - [`network`]: what a `vpc_networks` binding names ([`NetworkTarget`]), spelled the same
//!   in config, capnp and iris's CONNECT headers.
//! - [`socket_frames`]: the envelope of a `connect()` socket's bytes between the
//!   binding-worker and iris, which tells a half-close from a reset.
//!
//! The guest world (WIT) lives in `wit/` beside this crate; it is read by the runtime's and
//! the SDK's bindings generators, not compiled here.

capnp::generated_code!(pub mod binding_capnp);
capnp::generated_code!(pub mod tunnel_stream_capnp);
capnp::generated_code!(pub mod tunnel_rpc_capnp);

mod wire_error;
pub use wire_error::{read_wire_error, write_wire_error};

pub mod binding_auth;
pub mod network;
pub mod socket_frames;
pub use binding_auth::PlatformSecret;
pub use network::NetworkTarget;

/// Most headers a `RequestHead` or `ResponseHead` of [`binding_capnp`] may carry. A head with
/// more is refused with a code (`http_request_error` / `http_response_header_section_size`)
/// before anything is sized by its count: far above real use, and well below what
/// `http::HeaderMap` holds (it panics past about 24 576 entries).
pub const MAX_HEAD_HEADERS: u32 = 4096;

/// The read and write buffer of each end of a runtime ↔ binding-worker connection. Small
/// messages (calls, returns, short body chunks) gather in it and cross in one system call;
/// a message larger than the buffer is written straight through.
pub const RPC_BUFFER: usize = 16 * 1024;

/// Most bytes of a body sent inside the call that starts or answers a fetch (a request body
/// in `fetch`, a response body in `deliver`) instead of as a stream: small enough that the
/// message fits the connection's buffer ([`RPC_BUFFER`]).
pub const INLINE_BODY_MAX: usize = 8 * 1024;

pub mod byte_stream_flow;
pub use byte_stream_flow::{StreamWriter, inbox};
