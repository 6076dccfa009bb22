//! The connector's supervisor: keeps `ha_connections` QUIC connections to the edge, each
//! registered on its control stream, and reconnects lost ones with jittered exponential
//! backoff. A permanent refusal (wrong credentials) stops everything with a clear error; a
//! shutdown unregisters each connection, closes idle flows (pooled origin connections between
//! requests) at once, lets flows carrying a request finish within the grace period, then
//! closes.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicI32;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wvpc_tunnel::features::connector_features;
use wvpc_tunnel::quic::CloseCode;
use wvpc_tunnel::{QUIC_SERVER_NAME, RpcThread, connector_client_config};

use crate::ConnectorError;
use crate::backoff::Backoff;
use crate::config::{ConnectorConfig, host_resolver};
use crate::control::{RegistrationOutcome, RegistrationRequest, run_control_stream};
use crate::egress::EgressPolicy;
use crate::metrics::ConnectorMetrics;
use crate::origin::{FlowLimiter, OriginRoutes};
use crate::streams::{StreamContext, serve_streams};
use crate::udp::{UdpMode, UdpSessions};
use wvpc_tunnel::metrics::GaugeGuard;

/// QUIC handshake with the edge.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `registerConnection` / `unregisterConnection` round trips (cloudflared: 5 s).
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// A registered connection up this long resets the reconnect backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(5);
/// How long a shutdown waits for close frames to leave.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// First reconnect step: a healthy connection that is lost is redialled within 0.25–0.5 s
/// (so an edge restart is recovered fast); each further attempt doubles the step.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How a connection attempt ended.
enum Attempt {
    Shutdown,
    /// A registered connection closed after being up for the given time.
    Lost(String, Duration),
    Duplicate,
    Retry(String),
    Fatal(ConnectorError),
}

/// Everything the connection loops share.
struct Shared {
    rpc: RpcThread,
    streams: Arc<StreamContext>,
    udp: Arc<UdpSessions>,
}

/// A tunnel connector. Create with [`Connector::new`], take a [`Readiness`] if you need to
/// know when it is registered, then [`Connector::serve`].
pub struct Connector {
    config: Arc<ConnectorConfig>,
    client_config: quinn::ClientConfig,
    client_id: Uuid,
    registered: watch::Sender<usize>,
    metrics: Arc<ConnectorMetrics>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tunnel", &self.config.credentials.tunnel_id)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Watches how many connections of a connector are registered.
#[derive(Debug, Clone)]
pub struct Readiness(watch::Receiver<usize>);

impl Readiness {
    /// Connections registered right now.
    pub fn registered_connections(&self) -> usize {
        *self.0.borrow()
    }

    /// Resolves once at least `count` connections are registered; `false` if the connector
    /// was dropped first.
    pub async fn wait_registered(&mut self, count: usize) -> bool {
        self.0.wait_for(|n| *n >= count).await.is_ok()
    }
}

impl Connector {
    /// Validates the configuration (edges, HA count, CA) without touching the network.
    pub fn new(config: ConnectorConfig) -> Result<Self, ConnectorError> {
        config.validate()?;
        let client_config = connector_client_config(&config.ca_pem)?;
        Ok(Self {
            config: Arc::new(config),
            client_config,
            client_id: Uuid::new_v4(),
            registered: watch::channel(0).0,
            metrics: Arc::new(ConnectorMetrics::default()),
        })
    }

    /// Runs a connector until `shutdown` resolves or the edge permanently refuses the tunnel.
    pub async fn run(
        config: ConnectorConfig,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ConnectorError> {
        Self::new(config)?.serve(shutdown).await
    }

    /// Readiness of this connector's connections.
    pub fn readiness(&self) -> Readiness {
        Readiness(self.registered.subscribe())
    }

    /// This connector's metrics (register them for the operations listener, `wvpc_observe::ops`).
    pub fn metrics(&self) -> Arc<ConnectorMetrics> {
        self.metrics.clone()
    }

    /// This process's connector id (`ClientInfo.clientId`).
    pub fn client_id(&self) -> Uuid {
        self.client_id
    }

    /// Keeps the connections up until `shutdown` resolves (then unregisters and closes them)
    /// or a connection is permanently refused (then returns that error).
    pub async fn serve(&self, shutdown: impl Future<Output = ()>) -> Result<(), ConnectorError> {
        let config = &self.config;
        let rpc = RpcThread::spawn("wvpc-connector-rpc").map_err(ConnectorError::RpcThread)?;
        let resolver = if config.dns_resolvers.is_empty() {
            let host = host_resolver();
            tracing::info!(resolver = %host, "DNS for the virtual resolver goes to the host's resolver");
            host
        } else {
            tracing::info!(resolvers = ?config.dns_resolvers, "DNS for the virtual resolver goes to the configured resolvers");
            SocketAddr::from(([127, 0, 0, 1], 53))
        };
        let routes = OriginRoutes::new(config.dns_resolvers.clone(), resolver);
        let limiter = FlowLimiter::new(config.max_active_flows);
        let egress = EgressPolicy::new(config.allow.clone());
        if !config.allow.is_empty() {
            tracing::info!(allow = ?config.allow.iter().map(ToString::to_string).collect::<Vec<_>>(), "egress restricted to the allow-list");
        }
        let udp = Arc::new(UdpSessions::new(
            routes.clone(),
            limiter.clone(),
            UdpMode::new(config.datagram_version, &rpc),
            egress.clone(),
            self.metrics.clone(),
        ));
        let shared = Shared {
            streams: Arc::new(StreamContext {
                routes,
                limiter,
                dial_timeout: config.dial_timeout,
                rpc: rpc.clone(),
                config_version: Arc::new(AtomicI32::new(0)),
                active: Arc::default(),
                udp: udp.clone(),
                egress,
                metrics: self.metrics.clone(),
            }),
            udp,
            rpc,
        };

        let token = CancellationToken::new();
        let mut loops: FuturesUnordered<_> = (0..config.ha_connections)
            .map(|i| self.connection_loop(i, &shared, token.clone()))
            .collect();
        let shutdown = std::pin::pin!(shutdown);
        let mut shutdown = futures::FutureExt::fuse(shutdown);
        let mut result = Ok(());
        loop {
            tokio::select! {
                () = &mut shutdown, if !token.is_cancelled() => {
                    tracing::info!("connector shutting down");
                    token.cancel();
                }
                next = loops.next() => match next {
                    None => break,
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        if result.is_ok() {
                            result = Err(e);
                        }
                        token.cancel();
                    }
                },
            }
        }
        result
    }

    async fn connection_loop(
        &self,
        index: usize,
        shared: &Shared,
        token: CancellationToken,
    ) -> Result<(), ConnectorError> {
        let edges = &self.config.edge;
        let mut edge_slot = index;
        let mut endpoint: Option<(SocketAddr, quinn::Endpoint)> = None;
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
        loop {
            if token.is_cancelled() {
                return Ok(());
            }
            let edge = edges[edge_slot % edges.len()];
            // One UDP socket per connection, kept across reconnects (the edge may recognise
            // a reconnect by its source address).
            let bind = bind_address(edge);
            let ep = match &endpoint {
                Some((addr, ep)) if *addr == bind => ep.clone(),
                _ => {
                    let mut ep = quinn::Endpoint::client(bind)
                        .map_err(|source| ConnectorError::Socket { index, source })?;
                    ep.set_default_client_config(self.client_config.clone());
                    endpoint = Some((bind, ep.clone()));
                    ep
                }
            };
            let attempts = u8::try_from(backoff.attempts()).unwrap_or(u8::MAX);
            match self
                .connect_once(index, edge, &ep, shared, &token, attempts)
                .await
            {
                Attempt::Shutdown => {
                    // Let the close frame reach the edge before the process may exit.
                    let _ = tokio::time::timeout(CLOSE_FLUSH, ep.wait_idle()).await;
                    return Ok(());
                }
                Attempt::Fatal(e) => return Err(e),
                Attempt::Lost(reason, up) => {
                    // A connection that served for a while proves the edge healthy: start the
                    // backoff over. One dropped right after registering keeps growing it, so
                    // a flapping edge is not hammered.
                    tracing::warn!(conn_index = index, %edge, %reason, up_s = up.as_secs_f32(), "tunnel connection lost; reconnecting");
                    if up >= HEALTHY_AFTER {
                        backoff.reset();
                    }
                }
                Attempt::Duplicate => {
                    tracing::warn!(conn_index = index, %edge, "edge reports a duplicate connection; trying the next edge address");
                    edge_slot += 1;
                }
                Attempt::Retry(reason) => {
                    tracing::warn!(conn_index = index, %edge, %reason, "tunnel connection failed; retrying");
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect_once(
        &self,
        index: usize,
        edge: SocketAddr,
        endpoint: &quinn::Endpoint,
        shared: &Shared,
        token: &CancellationToken,
        previous_attempts: u8,
    ) -> Attempt {
        let connecting_gauge = GaugeGuard::raise(&self.metrics.connections("connecting"));
        let connecting = match endpoint.connect(edge, QUIC_SERVER_NAME) {
            Ok(c) => c,
            Err(e) => return Attempt::Retry(format!("cannot dial {edge}: {e}")),
        };
        let quic = tokio::select! {
            () = token.cancelled() => return Attempt::Shutdown,
            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting) => match r {
                Ok(Ok(quic)) => quic,
                Ok(Err(e)) => return Attempt::Retry(format!("QUIC handshake with {edge} failed: {e}")),
                Err(_) => return Attempt::Retry(format!("QUIC handshake with {edge} timed out")),
            },
        };
        let (send, recv) = match quic.open_bi().await {
            Ok(s) => s,
            Err(e) => return Attempt::Retry(format!("cannot open the control stream: {e}")),
        };
        let request = RegistrationRequest {
            credentials: self.config.credentials.clone(),
            conn_index: u8::try_from(index).unwrap_or(u8::MAX),
            client_id: self.client_id,
            features: connector_features(self.config.datagram_version),
            version: self.config.version.clone(),
            arch: arch(),
            origin_local_ip: match quic.local_ip() {
                Some(IpAddr::V4(ip)) => ip.octets().to_vec(),
                Some(IpAddr::V6(ip)) => ip.octets().to_vec(),
                None => Vec::new(),
            },
            previous_attempts,
        };
        let (outcome_tx, outcome_rx) = oneshot::channel();
        let (unregister_tx, unregister_rx) = oneshot::channel();
        if shared
            .rpc
            .spawn_local(move || run_control_stream(send, recv, request, outcome_tx, unregister_rx))
            .is_err()
        {
            quic.close(CloseCode::Normal.varint(), b"");
            return Attempt::Fatal(ConnectorError::RpcThread(std::io::Error::other(
                "RPC thread stopped",
            )));
        }
        let outcome = tokio::select! {
            () = token.cancelled() => {
                quic.close(CloseCode::Normal.varint(), b"");
                return Attempt::Shutdown;
            }
            r = tokio::time::timeout(RPC_TIMEOUT, outcome_rx) => match r {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => RegistrationOutcome::Failed("control stream ended".into()),
                Err(_) => RegistrationOutcome::Failed("registerConnection timed out".into()),
            },
        };
        let tunnel_id = self.config.credentials.tunnel_id;
        self.metrics.registrations.inc(match &outcome {
            RegistrationOutcome::Registered { .. } => "ok",
            RegistrationOutcome::Duplicate => "duplicate",
            RegistrationOutcome::Refused { .. } => "refused",
            RegistrationOutcome::Failed(_) => "failed",
        });
        let (connection_id, location) = match outcome {
            RegistrationOutcome::Registered {
                connection_id,
                location,
            } => (connection_id, location),
            RegistrationOutcome::Duplicate => {
                quic.close(CloseCode::Normal.varint(), b"");
                return Attempt::Duplicate;
            }
            RegistrationOutcome::Refused {
                cause,
                retry: false,
            } => {
                quic.close(CloseCode::Normal.varint(), b"");
                tracing::error!(tunnel = %tunnel_id, %edge, %cause, "edge refused the tunnel registration");
                return Attempt::Fatal(if cause.contains("Unauthorized") {
                    ConnectorError::Unauthorized { tunnel_id, cause }
                } else {
                    ConnectorError::Refused { tunnel_id, cause }
                });
            }
            RegistrationOutcome::Refused { cause, retry: true } => {
                quic.close(CloseCode::Normal.varint(), b"");
                return Attempt::Retry(format!("edge refused the registration for now: {cause}"));
            }
            RegistrationOutcome::Failed(reason) => {
                quic.close(
                    CloseCode::ProtocolViolation.varint(),
                    b"registration failed",
                );
                return Attempt::Retry(reason);
            }
        };
        tracing::info!(
            tunnel = %tunnel_id,
            conn_index = index,
            connection = %connection_id,
            %location,
            %edge,
            "registered tunnel connection"
        );
        drop(connecting_gauge);
        let registered_at = std::time::Instant::now();
        let registered_gauge = GaugeGuard::raise(&self.metrics.connections("registered"));
        self.registered.send_modify(|n| *n += 1);
        let streams = tokio::spawn(serve_streams(quic.clone(), shared.streams.clone()));
        let datagrams = tokio::spawn(shared.udp.clone().serve(quic.clone()));
        let end = tokio::select! {
            reason = quic.closed() => Attempt::Lost(describe_close(&reason), registered_at.elapsed()),
            () = token.cancelled() => {
                drop(registered_gauge);
                let _draining = GaugeGuard::raise(&self.metrics.connections("draining"));
                self.registered.send_modify(|n| *n = n.saturating_sub(1));
                let (done_tx, done_rx) = oneshot::channel();
                if unregister_tx.send(done_tx).is_ok() {
                    let _ = tokio::time::timeout(RPC_TIMEOUT, done_rx).await;
                }
                tracing::info!(conn_index = index, connection = %connection_id, busy_flows = shared.streams.active.close_idle(), "unregistered; idle flows closed, waiting for flows in flight");
                if !shared.streams.active.drain(self.config.grace_period).await {
                    tracing::warn!(conn_index = index, flows = shared.streams.active.len(), "grace period over; closing flows still in flight");
                }
                quic.close(CloseCode::Normal.varint(), b"");
                streams.abort();
                datagrams.abort();
                return Attempt::Shutdown;
            }
        };
        self.registered.send_modify(|n| *n = n.saturating_sub(1));
        streams.abort();
        datagrams.abort();
        end
    }
}

/// Why a registered connection closed, as logged: the edge's reason first when the edge
/// dropped the tunnel (e.g. it was deleted).
fn describe_close(err: &quinn::ConnectionError) -> String {
    if let quinn::ConnectionError::ApplicationClosed(close) = err
        && CloseCode::from_varint(close.error_code) == Some(CloseCode::Disconnected)
    {
        return format!(
            "the edge disconnected this tunnel: {} (reconnecting checks the credentials again)",
            String::from_utf8_lossy(&close.reason)
        );
    }
    err.to_string()
}

/// The local address for a connection to `edge`: loopback for a loopback edge, otherwise the
/// unspecified address of the edge's family.
fn bind_address(edge: SocketAddr) -> SocketAddr {
    let ip = match edge.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(ip) if ip.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

/// cloudflared's platform string, e.g. `linux_amd64`.
fn arch() -> String {
    let cpu = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!("{}_{cpu}", std::env::consts::OS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_match_the_edge_family_and_scope() {
        assert_eq!(
            bind_address("127.0.0.1:7844".parse().unwrap()),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(
            bind_address("[::1]:7844".parse().unwrap()),
            "[::1]:0".parse().unwrap()
        );
        assert_eq!(
            bind_address("198.51.100.7:7844".parse().unwrap()),
            "0.0.0.0:0".parse().unwrap()
        );
        assert_eq!(
            bind_address("[2001:db8::1]:7844".parse().unwrap()),
            "[::]:0".parse().unwrap()
        );
        assert!(arch().contains('_'));
    }
}
