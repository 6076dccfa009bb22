//! Flow-level liveness: noticing in about a second that a connector died without a word
//! (`kill -9`, a host gone, a partition), instead of after QUIC's 5 s idle timeout.
//!
//! The edge's keep-alive ([`wvpc_tunnel::quic::EDGE_KEEP_ALIVE`]) makes a live peer answer
//! several times a second, even while its origin takes minutes to respond. So when flows wait
//! on a connection (a stream opening, a request awaiting its answer, an answer streaming, a UDP
//! session) and nothing at all has come from the peer for
//! [`silence_limit`](wvpc_tunnel::quic::silence_limit), the peer is dead: the connection is
//! closed with [`CloseCode::Unresponsive`], which fails its streams at once. Streams not yet
//! answered are then retried on a live connection ([`super::registry`]). Connections with
//! nothing waiting are left to the idle timeout, so a brief network stall does not cut them.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use wvpc_tunnel::quic::{CloseCode, silence_limit};

use super::registry::{EdgeConnection, TunnelRegistry};

/// How often the watcher samples a connection that has flows waiting on its peer.
const BUSY_TICK: Duration = Duration::from_millis(100);
/// How often it samples one with nothing waiting (so that the time the peer was last heard is
/// known when a flow arrives).
const IDLE_TICK: Duration = Duration::from_millis(250);

/// When the peer was last heard, from quinn's count of datagrams received.
#[derive(Debug)]
pub(crate) struct PeerHeard {
    datagrams: u64,
    at: Instant,
}

impl PeerHeard {
    pub(crate) fn new(quic: &quinn::Connection) -> Self {
        Self {
            datagrams: quic.stats().udp_rx.datagrams,
            at: Instant::now(),
        }
    }

    /// Samples the connection; how long the peer has been silent.
    pub(crate) fn silence(&mut self, quic: &quinn::Connection) -> Duration {
        let datagrams = quic.stats().udp_rx.datagrams;
        let now = Instant::now();
        if datagrams != self.datagrams {
            self.datagrams = datagrams;
            self.at = now;
        }
        now - self.at
    }
}

/// Watches one registered connection until it closes or its peer is found dead.
pub(crate) async fn watch(conn: Arc<EdgeConnection>, registry: Arc<TunnelRegistry>) {
    let mut heard = PeerHeard::new(&conn.quic);
    // Silence is confirmed on a second sample, a tick later: after a stall of this process,
    // datagrams that arrived meanwhile may not have been read by the endpoint yet.
    let mut suspect = false;
    loop {
        let tick = if suspect || conn.waiting_on_peer() {
            BUSY_TICK
        } else {
            IDLE_TICK
        };
        tokio::select! {
            _ = conn.quic.closed() => return,
            () = conn.flow_started.notified(), if !suspect => {}
            () = tokio::time::sleep(tick) => {}
        }
        let silence = heard.silence(&conn.quic);
        let limit = silence_limit(conn.quic.rtt());
        if silence < limit || !conn.waiting_on_peer() {
            suspect = false;
            continue;
        }
        if !suspect {
            suspect = true;
            continue;
        }
        tracing::warn!(
            tunnel = %conn.info.tunnel_id,
            connection = %conn.info.connection_id,
            remote = %conn.info.remote_addr,
            silent_ms = silence.as_millis() as u64,
            limit_ms = limit.as_millis() as u64,
            "connector unresponsive while flows waited on it; closing its connection"
        );
        registry.metrics().connections_unresponsive.inc();
        // Out of the registry first, so that retries of the failing flows go elsewhere.
        registry.forget(&conn.quic);
        conn.quic.close(
            CloseCode::Unresponsive.varint(),
            b"no packet from the connector while flows waited",
        );
        return;
    }
}
