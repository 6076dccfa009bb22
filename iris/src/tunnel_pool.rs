//! The seam between iris's router and the tunnels: open a TCP stream or a UDP flow to an
//! `ip:port` inside a tunnel's private network.
//!
//! The real implementation is the QUIC edge's connection registry ([`crate::edge`]); tests
//! use a mock pool that dials loopback directly and can inject faults.

use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use uuid::Uuid;
use wvpc_errors::ProxyError;

/// A boxed future, as trait objects need.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A bidirectional byte stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A TCP stream through a tunnel (already connected at the far end).
pub type BoxIo = Box<dyn Io>;

/// Per-flow facts that travel with the flow for logs (`FlowID` on the tunnel).
#[derive(Debug, Clone, Default)]
pub struct FlowContext {
    /// The request id of the script request this flow serves.
    pub request_id: String,
}

/// A UDP flow through a tunnel to one `ip:port`: datagrams out, datagrams back.
pub trait UdpFlow: Send + Sync {
    /// Sends one datagram to the destination.
    fn send(&self, payload: Bytes) -> BoxFuture<'_, Result<(), ProxyError>>;
    /// The next datagram from the destination. Cancel-safe; callers bound it with a timeout.
    fn recv(&self) -> BoxFuture<'_, Result<Bytes, ProxyError>>;
}

/// Opens flows through tunnels.
///
/// Errors are codes: no live connection for the tunnel → `destination_unavailable`; the
/// connector's dial refused → `connection_refused`; timed out → `connection_timeout`; the
/// connector's flow limit → `rate_limited`; the connection died → `connection_terminated`.
pub trait TunnelPool: Send + Sync + 'static {
    /// Opens a TCP stream to `dest` through `tunnel`. Resolves once the connector has
    /// connected to `dest` (or failed to).
    fn open_tcp<'a>(
        &'a self,
        tunnel: Uuid,
        dest: SocketAddr,
        ctx: &'a FlowContext,
    ) -> BoxFuture<'a, Result<BoxIo, ProxyError>>;

    /// Whether this node holds a usable connection of `tunnel` now: the router serves the
    /// CONNECT locally if so, else relays it to a node that does (when relaying is on).
    /// Cheap (asked on every CONNECT). Pools without a notion of connections say yes.
    fn has_usable_connection(&self, tunnel: Uuid) -> bool {
        let _ = tunnel;
        true
    }

    /// Opens a UDP flow to `dest` through `tunnel`. Resolves once the connector accepted the
    /// session. The flow closes when dropped.
    fn open_udp<'a>(
        &'a self,
        tunnel: Uuid,
        dest: SocketAddr,
        ctx: &'a FlowContext,
    ) -> BoxFuture<'a, Result<Box<dyn UdpFlow>, ProxyError>>;
}
