//! QUIC endpoint configuration for both ends, matched to cloudflared's transport: ALPN
//! `argotunnel`, TLS 1.3 with the ring provider, DATAGRAM frames on, cloudflared's 5 s idle
//! timeout on both ends, a 1 s keep-alive on the connector (cloudflared's
//! `MaxIdlePingPeriod`) and a faster one on the edge, so that a peer that went silent is
//! noticed in about a second ([`EDGE_KEEP_ALIVE`], [`silence_limit`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::identity::EdgeIdentity;

/// ALPN of the tunnel over QUIC.
pub const ALPN: &[u8] = b"argotunnel";

/// Connector keep-alive (cloudflared's `MaxIdlePingPeriod`: 1 s).
pub const CONNECTOR_KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Connector idle timeout (cloudflared's `MaxIdleTimeout`: 5 s).
pub const CONNECTOR_MAX_IDLE: Duration = Duration::from_secs(5);
/// Edge idle timeout: cloudflared's 5 s. The effective timeout is the smaller of both ends.
pub const EDGE_MAX_IDLE: Duration = Duration::from_secs(5);
/// Edge keep-alive. quinn sends a PING after this long without receiving anything, and a live
/// peer acknowledges it at once: while the peer is alive the edge hears from it at least every
/// `EDGE_KEEP_ALIVE` + RTT, which lets [`silence_limit`] be about a second. Costs a PING and an
/// ACK every 250 ms on an idle connection.
pub const EDGE_KEEP_ALIVE: Duration = Duration::from_millis(250);
/// Least silence after which the edge declares a peer dead while flows wait on it.
pub const SILENCE_FLOOR: Duration = Duration::from_secs(1);

/// How long a peer may stay silent (nothing received, not even an ACK of the edge's PINGs)
/// before the edge declares it dead while flows wait on it: [`SILENCE_FLOOR`], or three
/// keep-alive round trips on a slow path. A live peer answers every keep-alive within one.
pub fn silence_limit(rtt: Duration) -> Duration {
    SILENCE_FLOOR.max((EDGE_KEEP_ALIVE + rtt) * 3)
}

/// Initial packet size cloudflared uses for IPv4 (WARP's 1280 MTU minus headers).
const INITIAL_MTU: u16 = 1232;
/// Per-stream and per-connection flow-control windows (cloudflared: 6 MB / 30 MB).
const STREAM_WINDOW: u32 = 6 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 30 * 1024 * 1024;
/// Datagrams buffered per connection before quinn drops the oldest.
const DATAGRAM_BUFFER: usize = 4 * 1024 * 1024;
/// How many streams the edge may have open toward a connector at once (concurrent flows per
/// connection; the window slides as streams finish). cloudflared allows 2^60, but quinn
/// allocates stream state up front for the whole window: 1M costs ~0.4 s per connection.
const CONNECTOR_MAX_INCOMING_STREAMS: u32 = 8192;
/// How many streams a connector may open toward the edge (control stream + v2 RPC streams).
const EDGE_MAX_INCOMING_BIDI: u32 = 256;

/// Why a QUIC/TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum QuicConfigError {
    /// rustls refused the certificate, key or protocol set.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The CA bundle holds no usable certificate.
    #[error("edge CA: {0}")]
    Ca(String),
    /// quinn refused the rustls configuration.
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

fn transport(keep_alive: Duration, max_idle: Duration, incoming_bidi: u32) -> TransportConfig {
    let idle_ms = u32::try_from(max_idle.as_millis()).unwrap_or(u32::MAX);
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(keep_alive))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(idle_ms))))
        .max_concurrent_bidi_streams(VarInt::from_u32(incoming_bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .initial_mtu(INITIAL_MTU)
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_BUFFER);
    t
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The edge's QUIC server configuration.
///
/// Key exchange: the ring provider offers X25519, P-256 and P-384. cloudflared's default
/// "prefer post-quantum" client lists X25519MLKEM768 first and P-256 after it, so the handshake
/// settles on P-256 through a HelloRetryRequest. (`--post-quantum` strict mode would need an
/// ML-KEM provider such as aws-lc-rs.)
pub fn edge_server_config(identity: &EdgeIdentity) -> Result<quinn::ServerConfig, QuicConfigError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain().to_vec(), identity.private_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| QuicConfigError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport(
        EDGE_KEEP_ALIVE,
        EDGE_MAX_IDLE,
        EDGE_MAX_INCOMING_BIDI,
    )));
    Ok(config)
}

/// The connector's QUIC client configuration: trusts only the CA(s) in `ca_pem` and expects the
/// edge to present [`crate::identity::QUIC_SERVER_NAME`] (pass it to `Endpoint::connect`).
pub fn connector_client_config(ca_pem: &[u8]) -> Result<quinn::ClientConfig, QuicConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| QuicConfigError::Ca(format!("not valid PEM: {e}")))?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(QuicConfigError::Ca(
            "no certificate found in the CA PEM".into(),
        ));
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| QuicConfigError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport(
        CONNECTOR_KEEP_ALIVE,
        CONNECTOR_MAX_IDLE,
        CONNECTOR_MAX_INCOMING_STREAMS,
    )));
    Ok(config)
}

/// Application close codes on tunnel connections (QUIC `CONNECTION_CLOSE`), so the other end
/// can tell why without parsing the reason text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Orderly shutdown (cloudflared closes with 0 too).
    Normal = 0,
    /// Registration was refused.
    RegistrationRefused = 1,
    /// The control stream was not Cap'n Proto RPC, or broke before registering.
    ProtocolViolation = 2,
    /// No registration arrived in time.
    RegistrationTimeout = 3,
    /// A newer connection from the same connector and index replaced this one.
    Replaced = 4,
    /// The edge is shutting down.
    EdgeShutdown = 5,
    /// The edge dropped the tunnel's connections (e.g. the tunnel was deleted or its
    /// credentials rotated); reconnecting re-checks the credentials.
    Disconnected = 6,
    /// The peer sent nothing, not even acknowledgements, for [`silence_limit`] while flows
    /// waited on it: the edge gave up on it (a peer that is in fact alive reconnects).
    Unresponsive = 7,
}

impl CloseCode {
    /// The QUIC error code.
    pub fn varint(self) -> VarInt {
        VarInt::from_u32(self as u32)
    }

    /// The code for a QUIC application error code, if it is one of ours.
    pub fn from_varint(code: VarInt) -> Option<Self> {
        [
            Self::Normal,
            Self::RegistrationRefused,
            Self::ProtocolViolation,
            Self::RegistrationTimeout,
            Self::Replaced,
            Self::EdgeShutdown,
            Self::Disconnected,
            Self::Unresponsive,
        ]
        .into_iter()
        .find(|c| c.varint() == code)
    }
}

/// One bidirectional QUIC stream as a single byte stream: reads from the receive half, writes
/// to the send half; `shutdown` finishes the send half (FIN), leaving reads open.
#[derive(Debug)]
pub struct BiStream {
    /// The send half.
    pub send: quinn::SendStream,
    /// The receive half.
    pub recv: quinn::RecvStream,
}

impl BiStream {
    /// Joins two halves.
    pub fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        Self { send, recv }
    }

    /// Aborts both directions (RESET_STREAM and STOP_SENDING with code 0, as cloudflared
    /// does when a proxied stream fails after its response was sent).
    pub fn abort(&mut self) {
        let _ = self.send.reset(VarInt::from_u32(0));
        let _ = self.recv.stop(VarInt::from_u32(0));
    }
}

impl AsyncRead for BiStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf)
    }
}

impl AsyncWrite for BiStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build_and_bad_ca_is_explained() {
        let identity = EdgeIdentity::generate().unwrap();
        edge_server_config(&identity).unwrap();
        connector_client_config(identity.ca_pem().as_bytes()).unwrap();
        let err = connector_client_config(b"hello").unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
    }

    #[test]
    fn silence_limit_is_a_second_on_a_fast_path_and_grows_with_rtt() {
        assert_eq!(silence_limit(Duration::from_micros(100)), SILENCE_FLOOR);
        let slow = silence_limit(Duration::from_millis(300));
        assert_eq!(slow, Duration::from_millis(1650));
        // Several keep-alive answers fit in the limit, so one lost packet is not a death.
        assert!(silence_limit(Duration::ZERO) >= EDGE_KEEP_ALIVE * 3);
    }

    #[test]
    fn close_codes_round_trip() {
        for code in [
            CloseCode::Normal,
            CloseCode::Disconnected,
            CloseCode::Unresponsive,
        ] {
            assert_eq!(CloseCode::from_varint(code.varint()), Some(code));
        }
        assert_eq!(CloseCode::from_varint(VarInt::from_u32(99)), None);
    }
}
