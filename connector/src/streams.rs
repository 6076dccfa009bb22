//! Streams the edge opens on a connection. The signature decides: a data stream carries a
//! `ConnectRequest` (we proxy `tcp`; http/websocket are refused, Workers VPC only uses tcp);
//! an RPC stream carries Cap'n Proto RPC to our `CloudflaredServer` (remote configuration, and
//! datagram-v2 UDP sessions); anything else is reset.
//!
//! TCP flows are tracked in a [`FlowSet`]: on shutdown the idle ones (pooled keep-alive
//! connections between requests) close at once, and only flows carrying a request are
//! waited for.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side};
use tracing::Instrument as _;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::tunnel_rpc_capnp::{cloudflared_server, configuration_manager, session_manager};
use wvpc_tunnel::connect::metadata;
use wvpc_tunnel::flows::{Facing, Flow, FlowSet, TrackedIo};
use wvpc_tunnel::preamble::read_signature;
use wvpc_tunnel::rpc_thread::stream_vat;
use wvpc_tunnel::session_rpc::session_id;
use wvpc_tunnel::{BiStream, ConnectRequest, ConnectResponse, RpcThread, StreamKind, StreamType};

use crate::egress::EgressPolicy;
use crate::metrics::ConnectorMetrics;
use crate::origin::{FlowLimiter, FlowSlot, OriginRoutes, dial_tcp};
use crate::udp::UdpSessions;
use wvpc_tunnel::VIRTUAL_DNS_RESOLVER;
use wvpc_tunnel::metrics::{CountingIo, GaugeGuard};

/// The edge must send its handshake promptly; a stream that stalls before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An RPC stream serves one call; cloudflared bounds it with its `--rpc-timeout` (5 s).
const RPC_STREAM_LIFETIME: Duration = Duration::from_secs(5);
/// Copy buffer per direction when piping a TCP flow.
const PIPE_BUFFER: usize = 64 * 1024;

/// What serving streams needs; shared by every connection of a connector.
pub(crate) struct StreamContext {
    pub(crate) routes: OriginRoutes,
    pub(crate) limiter: FlowLimiter,
    pub(crate) dial_timeout: Duration,
    pub(crate) rpc: RpcThread,
    /// Highest configuration version the edge pushed (acknowledged, not applied).
    pub(crate) config_version: Arc<AtomicI32>,
    /// TCP flows in progress, for draining on shutdown.
    pub(crate) active: Arc<FlowSet>,
    /// UDP sessions, which the edge registers by RPC over datagram v2.
    pub(crate) udp: Arc<UdpSessions>,
    /// The egress allow-list.
    pub(crate) egress: EgressPolicy,
    /// Where flows are counted.
    pub(crate) metrics: Arc<ConnectorMetrics>,
}

/// Serves the edge's streams until the connection closes. Each stream gets its own task.
pub(crate) async fn serve_streams(quic: quinn::Connection, ctx: Arc<StreamContext>) {
    while let Ok((send, recv)) = quic.accept_bi().await {
        tokio::spawn(handle_stream(
            BiStream::new(send, recv),
            ctx.clone(),
            quic.clone(),
        ));
    }
}

async fn handle_stream(mut stream: BiStream, ctx: Arc<StreamContext>, quic: quinn::Connection) {
    let kind = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_signature(&mut stream.recv)).await
    {
        Ok(Ok(kind)) => kind,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "edge stream refused");
            stream.abort();
            return;
        }
        Err(_) => {
            tracing::debug!("edge stream sent no signature in time; reset");
            stream.abort();
            return;
        }
    };
    match kind {
        StreamKind::Data => handle_data_stream(stream, &ctx).await,
        StreamKind::Rpc => {
            let service = CloudflaredService {
                applied: ctx.config_version.clone(),
                udp: ctx.udp.clone(),
                quic,
            };
            let BiStream { send, recv } = stream;
            let spawned = ctx
                .rpc
                .spawn_local(move || serve_rpc_stream(send, recv, service));
            if spawned.is_err() {
                tracing::debug!("RPC thread gone; RPC stream dropped");
            }
        }
    }
}

async fn handle_data_stream(mut stream: BiStream, ctx: &StreamContext) {
    let request = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        ConnectRequest::read_after_signature(&mut stream.recv),
    )
    .await
    {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "malformed ConnectRequest; stream reset");
            stream.abort();
            return;
        }
        Err(_) => {
            tracing::debug!("ConnectRequest not received in time; stream reset");
            stream.abort();
            return;
        }
    };
    let flow = request.metadata(metadata::FLOW_ID).unwrap_or("").to_owned();
    // The stream's span: the child of the edge's (`cf-trace-id`, as cloudflared reads it).
    let span = tracing::info_span!(
        "edge_stream",
        %flow,
        dest = %request.dest,
        code = tracing::field::Empty,
    );
    if let Some(trace) = request.metadata(metadata::CF_TRACE_ID) {
        wvpc_observe::trace::continue_cf_trace_id(&span, trace);
    }
    match request.stream_type {
        StreamType::Tcp => proxy_tcp(stream, &request, &flow, ctx, span).await,
        StreamType::Http | StreamType::Websocket => {
            let err = ProxyError::new(ErrorCode::HttpRequestError).with_details(format!(
                "{:?} streams are not supported by this connector (Workers VPC uses tcp)",
                request.stream_type
            ));
            tracing::debug!(%flow, dest = %request.dest, "refused a non-tcp stream");
            respond_failure(&mut stream, &err, &ctx.metrics).await;
        }
    }
}

async fn respond_failure(stream: &mut BiStream, err: &ProxyError, metrics: &ConnectorMetrics) {
    tracing::Span::current().record("code", tracing::field::display(err.code));
    metrics.error(err.code);
    let _ = ConnectResponse::failure(err).write(&mut stream.send).await;
    let _ = stream.send.finish();
}

async fn proxy_tcp(
    mut stream: BiStream,
    request: &ConnectRequest,
    flow: &str,
    ctx: &StreamContext,
    span: tracing::Span,
) {
    // The span covers the opening (up to the answer), not the piping: a pooled connection's
    // stream lives on for later requests.
    let opened = open_tcp(&mut stream, request, flow, ctx)
        .instrument(span)
        .await;
    let Some(Opened {
        dest,
        origin,
        tracked,
        slot,
    }) = opened
    else {
        return;
    };
    let mut origin = CountingIo::new(origin, ctx.metrics.origin_bytes());
    let _open = GaugeGuard::raise(&ctx.metrics.streams_open);
    let mut edge = TrackedIo::new(&mut stream, tracked, Facing::Caller);
    let piped =
        tokio::io::copy_bidirectional_with_sizes(&mut edge, &mut origin, PIPE_BUFFER, PIPE_BUFFER)
            .await;
    let closed_idle = edge.flow().was_closed();
    drop(edge);
    match piped {
        Ok((up, down)) => tracing::debug!(%flow, %dest, up, down, "tcp flow finished"),
        Err(_) if closed_idle => {
            // A pooled connection between requests: end it cleanly both ways.
            tracing::debug!(%flow, %dest, "idle tcp flow closed for shutdown");
            let _ = stream.send.finish();
            let _ = stream.recv.stop(quinn::VarInt::from_u32(0));
        }
        Err(e) => {
            // After the response was sent, a failure can only be signalled by a reset.
            tracing::debug!(%flow, %dest, error = %e, "tcp flow failed; stream reset");
            ctx.metrics.error(ErrorCode::ConnectionTerminated);
            stream.abort();
        }
    }
    drop(slot);
}

/// A TCP flow whose origin answered: what piping it needs.
struct Opened {
    dest: SocketAddr,
    origin: tokio::net::TcpStream,
    tracked: Flow,
    slot: FlowSlot,
}

/// Checks the flow, dials the origin and answers the edge; `None` when the flow ended
/// there (its failure answered).
async fn open_tcp(
    stream: &mut BiStream,
    request: &ConnectRequest,
    flow: &str,
    ctx: &StreamContext,
) -> Option<Opened> {
    let dest = match request.dest.parse::<std::net::SocketAddr>() {
        Ok(dest) => dest,
        Err(_) => {
            let err = ProxyError::new(ErrorCode::HttpRequestError).with_details(format!(
                "tcp dest {:?} is not a literal ip:port",
                request.dest
            ));
            respond_failure(stream, &err, &ctx.metrics).await;
            return None;
        }
    };
    ctx.metrics.streams.inc();
    if let Err(err) = ctx.egress.check(dest) {
        tracing::warn!(%flow, %dest, "destination not in the egress allow-list; tcp flow refused");
        respond_failure(stream, &err, &ctx.metrics).await;
        return None;
    }
    let slot = match ctx.limiter.acquire() {
        Ok(slot) => slot,
        Err(err) => {
            tracing::warn!(%flow, %dest, "too many active flows; tcp flow refused");
            respond_failure(stream, &err, &ctx.metrics).await;
            return None;
        }
    };
    let target = ctx.routes.target(dest);
    if dest == VIRTUAL_DNS_RESOLVER {
        ctx.metrics.dns_queries.inc("forwarded");
    }
    // From here the flow counts for a shutdown: the edge's request waits for the dial.
    let tracked = ctx.active.enter();
    tracked.activity().caller_spoke();
    let dialing = std::time::Instant::now();
    let dial_span =
        tracing::info_span!("origin_dial", origin = %target, code = tracing::field::Empty);
    let dialed = dial_tcp(target, ctx.dial_timeout)
        .instrument(dial_span.clone())
        .await;
    if let Err(err) = &dialed {
        dial_span.record("code", tracing::field::display(err.code));
    }
    drop(dial_span);
    let origin = match dialed {
        Ok(origin) => {
            ctx.metrics
                .origin_dial_seconds
                .observe(dialing.elapsed().as_secs_f64());
            origin
        }
        Err(err) => {
            tracing::debug!(%flow, %dest, %target, code = %err.code, "origin dial failed");
            respond_failure(stream, &err, &ctx.metrics).await;
            return None;
        }
    };
    if ConnectResponse::ok().write(&mut stream.send).await.is_err() {
        return None;
    }
    tracked.activity().origin_spoke();
    tracing::debug!(%flow, %dest, %target, "tcp flow started");
    Some(Opened {
        dest,
        origin,
        tracked,
        slot,
    })
}

/// Serves one RPC stream for the edge. Must run on the RPC thread.
async fn serve_rpc_stream(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    service: CloudflaredService,
) {
    let network = stream_vat(send, recv, Side::Server, None);
    let client: cloudflared_server::Client = capnp_rpc::new_client(service);
    let rpc = RpcSystem::new(network, Some(client.client));
    if let Ok(Err(e)) = tokio::time::timeout(RPC_STREAM_LIFETIME, rpc).await {
        tracing::debug!(error = %e, "edge RPC stream failed");
    }
}

/// The connector's RPC service for the edge, on one connection.
struct CloudflaredService {
    applied: Arc<AtomicI32>,
    udp: Arc<UdpSessions>,
    /// The connection the RPC stream belongs to: v2 sessions registered here send their
    /// datagrams on it.
    quic: quinn::Connection,
}

impl session_manager::Server for CloudflaredService {
    async fn register_udp_session(
        self: CapRc<Self>,
        params: session_manager::RegisterUdpSessionParams,
        mut results: session_manager::RegisterUdpSessionResults,
    ) -> Result<(), capnp::Error> {
        if !self.udp.by_rpc() {
            results.get().init_result().set_err(
                "datagram v2 is not supported by this connector: the edge must use datagram v3 \
                 (feature support_datagram_v3_2)",
            );
            return Ok(());
        }
        let params = params.get()?;
        let id = session_id(params.get_session_id()?)?;
        let raw_ip = params.get_dst_ip()?;
        let ip = match raw_ip.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(raw_ip).unwrap_or_default()),
            16 => IpAddr::from(<[u8; 16]>::try_from(raw_ip).unwrap_or_default()),
            n => {
                results
                    .get()
                    .init_result()
                    .set_err(format!("dstIp must be 4 or 16 bytes, got {n}").as_str());
                return Ok(());
            }
        };
        let idle =
            Duration::from_nanos(u64::try_from(params.get_close_after_idle_hint()).unwrap_or(0));
        let dest = SocketAddr::new(ip, params.get_dst_port());
        let err = self.udp.register_by_rpc(id, dest, idle, &self.quic);
        results.get().init_result().set_err(err.as_str());
        Ok(())
    }

    async fn unregister_udp_session(
        self: CapRc<Self>,
        params: session_manager::UnregisterUdpSessionParams,
        _: session_manager::UnregisterUdpSessionResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let id = session_id(params.get_session_id()?)?;
        let message = params.get_message()?.to_string()?;
        self.udp.unregister_by_rpc(id, &message);
        Ok(())
    }
}

impl configuration_manager::Server for CloudflaredService {
    async fn update_configuration(
        self: CapRc<Self>,
        params: configuration_manager::UpdateConfigurationParams,
        mut results: configuration_manager::UpdateConfigurationResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let version = params.get_version();
        // Nothing in a remote configuration applies to this connector: acknowledge the newest.
        let applied = self
            .applied
            .fetch_max(version, Ordering::AcqRel)
            .max(version);
        tracing::info!(
            version,
            bytes = params.get_config()?.len(),
            "edge pushed a configuration (acknowledged)"
        );
        let mut result = results.get().init_result();
        result.set_latest_applied_version(applied);
        result.set_err("");
        Ok(())
    }
}

impl cloudflared_server::Server for CloudflaredService {}
