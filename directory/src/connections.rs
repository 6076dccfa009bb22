//! A live tunnel connection, as the iris node holding it publishes it in the cluster registry
//! ([`crate::cluster`]), which `wvpc tunnel info` and `GET …/cfd_tunnel/{id}/connections` read.

use std::time::SystemTime;

use serde::Serialize;
use uuid::Uuid;

use crate::database::rfc3339;

/// One live connection of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveConnection {
    /// Connection id the edge assigned.
    pub connection_id: Uuid,
    /// The tunnel.
    pub tunnel_id: Uuid,
    /// The connector process (random per run).
    pub client_id: Uuid,
    /// Connector version string.
    pub version: String,
    /// Connector platform, e.g. `linux_amd64`.
    pub arch: String,
    /// HA connection index.
    pub conn_index: u8,
    /// The iris node holding the connection.
    pub edge_node: String,
    /// The connector's address as seen by the edge.
    pub remote_addr: String,
    /// When it registered, RFC 3339 UTC.
    pub since: String,
}

impl LiveConnection {
    /// `since` from a clock reading.
    pub fn since_time(t: SystemTime) -> String {
        rfc3339(time::OffsetDateTime::from(t))
    }
}
