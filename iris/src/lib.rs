//! iris, the edge router.
//!
//! A CONNECT from the binding-worker names a VPC service; iris looks the service up
//! ([`routes`]), resolves its hostname with DNS sent *through the tunnel* ([`dns`]), opens a
//! TCP stream through the tunnel to `ip:port` ([`tunnel_pool`]) and pipes bytes
//! ([`connect`]). iris is also the tunnel edge ([`edge`]): the QUIC listener connectors dial,
//! registration, and the registry of live connections that implements [`TunnelPool`].
//! [`metrics`] holds the Prometheus counters both count into. [`peers`] is the cluster's
//! view of which other nodes hold a tunnel's connections, and [`relay`] forwards a CONNECT
//! to one of them when this node holds none.

#![forbid(unsafe_code)]

pub mod connect;
pub mod dev_mock;
pub mod dns;
pub mod edge;
pub mod metrics;
#[cfg(any(test, feature = "mock"))]
pub mod mock;
pub mod peers;
pub mod pipes;
pub mod relay;
pub mod routes;
pub mod tunnel_pool;

pub use connect::{Router, RouterConfig};
pub use dns::{DnsConfig, DnsResolver};
pub use routes::{
    CertVerificationMode, NetworkReach, NetworkTarget, RouteTarget, RouteTls, ServiceRoute,
    ServiceStore,
};
pub use tunnel_pool::{BoxFuture, BoxIo, FlowContext, TunnelPool, UdpFlow};
