//! The tunnel connector: runs inside a private network, dials iris over QUIC (outbound only),
//! registers with the tunnel's credentials, and serves what the edge asks for: TCP streams to
//! `ip:port`, UDP sessions over datagram v3, DNS through the virtual resolver address
//! (`[2606:4700:cf1:2000::1]:53`, sent to `dns_resolvers` or the host's resolver).
//! Protocol-compatible with cloudflared, so either can serve a tunnel.
//!
//! Modules: [`config`] (configuration, `resolv.conf`), `supervisor` (HA connections,
//! registration, reconnects), `control` (registration RPC), `streams` (edge-opened streams:
//! TCP proxy and the `CloudflaredServer` RPC), `udp` (datagram-v3 sessions), `origin`
//! (dialing, resolver redirection, flow limit), [`egress`] (the `--allow` list),
//! [`metrics`] (Prometheus counters), `backoff`.
//!
//! ```no_run
//! # async fn run(token: &str, ca_pem: Vec<u8>) -> Result<(), wvpc_connector::ConnectorError> {
//! use wvpc_connector::{Connector, ConnectorConfig};
//! let credentials = wvpc_tunnel::Credentials::from_token(token).expect("valid token");
//! let mut config = ConnectorConfig::new(credentials, vec!["127.0.0.1:7844".parse().unwrap()], ca_pem);
//! config.dns_resolvers = vec!["127.0.0.1:5353".parse().unwrap()];
//! Connector::run(config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

#![forbid(unsafe_code)]

use uuid::Uuid;

mod backoff;
pub mod config;
mod control;
pub mod egress;
pub mod metrics;
mod origin;
mod streams;
mod supervisor;
mod udp;

pub use config::{ConnectorConfig, host_resolver, parse_resolv_conf};
pub use egress::{AllowRule, AllowRuleError};
pub use metrics::ConnectorMetrics;
pub use supervisor::{Connector, Readiness};

/// Why a connector stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The configuration is unusable.
    #[error("invalid connector configuration: {0}")]
    Config(String),
    /// The edge CA could not be loaded.
    #[error("the edge CA is unusable: {0}")]
    Ca(#[from] wvpc_tunnel::QuicConfigError),
    /// The edge refused the credentials.
    #[error(
        "the edge refused tunnel {tunnel_id} ({cause}): the token or credentials are wrong for \
         this tunnel, or the tunnel no longer exists; check --token"
    )]
    Unauthorized {
        /// The tunnel in the credentials.
        tunnel_id: Uuid,
        /// The edge's reason.
        cause: String,
    },
    /// The edge refused the registration permanently for another reason.
    #[error("the edge permanently refused tunnel {tunnel_id}: {cause}")]
    Refused {
        /// The tunnel in the credentials.
        tunnel_id: Uuid,
        /// The edge's reason.
        cause: String,
    },
    /// A local UDP socket could not be bound.
    #[error("cannot open a UDP socket for edge connection {index}: {source}")]
    Socket {
        /// HA connection index.
        index: usize,
        /// The failure.
        source: std::io::Error,
    },
    /// The RPC thread could not start.
    #[error("cannot start the connector RPC thread: {0}")]
    RpcThread(std::io::Error),
}
