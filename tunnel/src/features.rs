//! Feature strings a connector sends in `ClientInfo.features`, and what the edge derives from
//! them (the datagram version).

/// Always sent by cloudflared: the edge may push remote configuration.
pub const ALLOW_REMOTE_CONFIG: &str = "allow_remote_config";
/// Always sent: HTTP headers are serialized as metadata.
pub const SERIALIZED_HEADERS: &str = "serialized_headers";
/// Always sent (even by v3 connectors): RPC-managed UDP sessions are understood.
pub const SUPPORT_DATAGRAM_V2: &str = "support_datagram_v2";
/// Stream FIN ends a request body.
pub const SUPPORT_QUIC_EOF: &str = "support_quic_eof";
/// Always sent by cloudflared: management log streaming.
pub const MANAGEMENT_LOGS: &str = "management_logs";
/// Datagram v3 (cloudflared 2026.x).
pub const SUPPORT_DATAGRAM_V3_2: &str = "support_datagram_v3_2";
/// Datagram v3 (cloudflared 2025.x).
pub const SUPPORT_DATAGRAM_V3_1: &str = "support_datagram_v3_1";
/// Post-quantum key exchange only.
pub const POSTQUANTUM: &str = "postquantum";

/// The features our connector sends.
pub const CONNECTOR_FEATURES: [&str; 4] = [
    SERIALIZED_HEADERS,
    SUPPORT_DATAGRAM_V2,
    SUPPORT_QUIC_EOF,
    SUPPORT_DATAGRAM_V3_2,
];

/// The features our connector sends for a datagram version: v3 adds
/// [`SUPPORT_DATAGRAM_V3_2`] to what every connector sends; v2 leaves it out, as a stock
/// cloudflared does by default.
pub fn connector_features(version: DatagramVersion) -> Vec<String> {
    CONNECTOR_FEATURES
        .iter()
        .filter(|f| version == DatagramVersion::V3 || **f != SUPPORT_DATAGRAM_V3_2)
        .map(|f| (*f).to_owned())
        .collect()
}

/// How UDP travels on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramVersion {
    /// Sessions set up by RPC, session id as a suffix.
    V2,
    /// Sessions set up in-band, request id as a prefix.
    V3,
}

impl DatagramVersion {
    /// v3 when a v3 feature is present; `support_datagram_v2` is sent by every connector, so
    /// its presence decides nothing.
    pub fn from_features<S: AsRef<str>>(features: &[S]) -> Self {
        let v3 = features
            .iter()
            .any(|f| matches!(f.as_ref(), SUPPORT_DATAGRAM_V3_2 | SUPPORT_DATAGRAM_V3_1));
        if v3 { Self::V3 } else { Self::V2 }
    }
}

impl std::fmt::Display for DatagramVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V2 => "v2",
            Self::V3 => "v3",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_needs_an_explicit_v3_feature() {
        assert_eq!(
            DatagramVersion::from_features(&CONNECTOR_FEATURES),
            DatagramVersion::V3
        );
        assert_eq!(
            DatagramVersion::from_features(&[SUPPORT_DATAGRAM_V2, SUPPORT_DATAGRAM_V3_1]),
            DatagramVersion::V3
        );
        for version in [DatagramVersion::V2, DatagramVersion::V3] {
            let features = connector_features(version);
            assert_eq!(DatagramVersion::from_features(&features), version);
            assert!(features.iter().any(|f| f == SUPPORT_DATAGRAM_V2));
        }
        let stock_default = [ALLOW_REMOTE_CONFIG, SERIALIZED_HEADERS, SUPPORT_DATAGRAM_V2];
        assert_eq!(
            DatagramVersion::from_features(&stock_default),
            DatagramVersion::V2
        );
    }
}
