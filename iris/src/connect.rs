//! The CONNECT server: the binding-worker's way into a service's private network.
//!
//! Each CONNECT names a VPC service (`wvpc-service-id`, else the authority's host) and a URL
//! scheme (`wvpc-scheme`). iris answers it in phases, each of which can fail with one code:
//!
//! 1. read the request: no usable service id → `http_request_error`;
//! 2. look the service up ([`ServiceStore`]) → `destination_not_found`;
//! 3. pick the port for the scheme → `http_request_denied` when the service forbids it;
//! 4. find addresses: fixed IPs as given (IPv4 first), a hostname through DNS *inside the
//!    tunnel* ([`DnsResolver`]) → `dns_error` / `dns_timeout`;
//! 5. open a TCP stream through the tunnel to each address in turn ([`TunnelPool::open_tcp`])
//!    until one connects → the pool's code (`connection_refused`, `destination_unavailable`, …);
//! 6. answer `200` — for `https` with the service's TLS settings (`wvpc-tls-verification`,
//!    `wvpc-tls-ca`), which the binding-worker applies to its end-to-end handshake — and copy
//!    bytes both ways, half-closes included.
//!
//! A CONNECT of a `vpc_networks` binding names a network instead (`wvpc-network`:
//! `tunnel:<uuid>`, `cf1:network` or `cf1:vnet:<uuid>`, with `wvpc-account` required) and
//! its authority is the destination `host:port`. Phase 2 asks the store how the account
//! reaches that network ([`ServiceStore::network`] → `destination_not_found`); an IP
//! destination goes through the tunnel its longest route names
//! ([`crate::routes::NetworkReach::tunnel_for`] → `destination_ip_unroutable`), a hostname is
//! resolved through the binding's tunnel (in a virtual network: the first of its tunnels this
//! node holds) and each answer routed the same way; the authority's port is dialled whatever
//! the scheme. An `https` network CONNECT is answered `verify_full`.
//!
//! `wvpc-scheme: tcp` (a script's `connect()`) on a service dials its `tcp_port`; a service
//! without one is `http_request_denied`, saying so. The bytes of a `tcp` CONNECT travel in
//! [`wvpc_schemas::socket_frames`] on the CONNECT stream, so that a reset on either side
//! reaches the other as a reset, not as a clean end.
//!
//! A failure answers the code's HTTP status with `Proxy-Status: <node>; error=<code>…`
//! ([`ProxyError::to_proxy_status`]), which the binding-worker turns back into the code; it is
//! logged once with the request id, service id and code. iris never looks inside the piped
//! bytes (TLS to the origin, if any, runs end to end from the binding-worker).
//!
//! When this node holds no usable connection of the service's tunnel (checked right after
//! phase 2), the CONNECT is relayed whole to a node that does ([`crate::relay`]): that node
//! runs phases 2–6 itself and this one passes its answer through and pipes the bytes. Relayed
//! CONNECTs arrive on a separate, mutually authenticated listener ([`Router::serve_relay`])
//! and are never relayed again.
//!
//! One listener serves HTTP/1.1 and HTTP/2 (the binding-worker multiplexes every CONNECT over
//! one HTTP/2 connection). Each pipe is counted for its service (a network CONNECT's for its
//! network), so that a deleted service's pipes close ([`Router::close_service`],
//! [`crate::pipes`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::Instrument as _;
use uuid::Uuid;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_listener::{ConnectionUse, Http2Settings, HttpServer, ServerLimits};
use wvpc_schemas::socket_frames::SocketFrames;

use crate::dns::{DnsConfig, DnsResolver, DnsSource};
use crate::metrics::ServiceHandle;
use crate::pipes::{PipeEnd, PipeKey, PipeTicket, ServicePipes};
use crate::relay::identity::certificate_names;
use crate::relay::{RELAY_MISS_HEADER, RELAYED_BY_HEADER, Relay, RelayAnswer};
use crate::routes::{
    NetworkReach, NetworkTarget, RouteTarget, RouteTls, ServiceRoute, ServiceStore,
};
use crate::tunnel_pool::{BoxIo, FlowContext, TunnelPool};

/// Header naming the VPC service (a UUID). Falls back to the CONNECT authority's host.
pub const SERVICE_ID_HEADER: &str = "wvpc-service-id";
/// Header naming the URL scheme (`http`, `https`, `tcp`) that picks the service's port.
pub const SCHEME_HEADER: &str = "wvpc-scheme";
/// Header naming the network of a `vpc_networks` binding ([`NetworkTarget`]'s spelling:
/// `tunnel:<uuid>`, `cf1:network`, `cf1:vnet:<uuid>`), instead of a service id; the
/// authority is then the destination `host:port`.
pub const NETWORK_HEADER: &str = "wvpc-network";
/// Header with the URL's host as the script wrote it (for logs; routing never uses it).
pub const ORIGINAL_HOST_HEADER: &str = "wvpc-original-host";
/// Header with the script request's id, carried into every hop's logs.
pub const REQUEST_ID_HEADER: &str = "wvpc-request-id";
/// Header with the account that owns the calling script.
pub const ACCOUNT_HEADER: &str = "wvpc-account";
/// Header with the calling script's name.
pub const SCRIPT_HEADER: &str = "wvpc-script";
/// The RFC 9209 response header that carries a failure's code.
pub const PROXY_STATUS_HEADER: &str = "proxy-status";
/// Answer header of an `https` CONNECT: the service's `cert_verification_mode`.
pub const TLS_VERIFICATION_HEADER: &str = "wvpc-tls-verification";
/// Answer header of an `https` CONNECT: the service's private CA, base64 of its PEM.
pub const TLS_CA_HEADER: &str = "wvpc-tls-ca";

/// Tuning of the [`Router`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouterConfig {
    /// This node's name in `Proxy-Status` values.
    pub node_name: String,
    /// DNS through tunnels.
    pub dns: DnsConfig,
    /// Concurrent CONNECT streams one HTTP/2 client may hold. The binding-worker keeps idle
    /// origin connections open as streams, so this is far above HTTP/2's usual 100.
    pub max_concurrent_streams: u32,
    /// HTTP/2 flow-control window per stream, in bytes.
    pub stream_window: u32,
    /// HTTP/2 flow-control window per connection, in bytes.
    pub connection_window: u32,
    /// Buffer size of each direction of a pipe, in bytes.
    pub pipe_buffer: usize,
    /// Where refused CONNECTs and DNS lookups are counted (usually the edge registry's).
    pub metrics: Option<Arc<crate::metrics::IrisMetrics>>,
    /// Bound on opening one TCP stream through the tunnel, the connector's dial of the origin
    /// and its answer included (→ `connection_timeout`, then the next address). Above the
    /// connector's own dial timeout (10 s by default), so that its precise code wins.
    pub stream_open_timeout: std::time::Duration,
    /// Timeouts and connection cap of the CONNECT listener (and of the relay listener).
    pub server: ServerLimits,
    /// Relaying to the nodes that hold a tunnel this node has no usable connection of
    /// (`None`: a single node; such CONNECTs fail with `destination_unavailable`).
    pub relay: Option<Arc<Relay>>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            node_name: "iris".to_owned(),
            dns: DnsConfig::default(),
            max_concurrent_streams: 16_384,
            stream_window: 1 << 20,
            connection_window: 16 << 20,
            pipe_buffer: 64 << 10,
            metrics: None,
            stream_open_timeout: std::time::Duration::from_secs(20),
            server: ServerLimits::default(),
            relay: None,
        }
    }
}

/// The CONNECT router. Cheap to clone; clones share the DNS cache.
#[derive(Clone)]
pub struct Router {
    inner: Arc<RouterInner>,
}

struct RouterInner {
    store: Arc<dyn ServiceStore>,
    pool: Arc<dyn TunnelPool>,
    dns: DnsResolver,
    config: RouterConfig,
    pipes: Arc<ServicePipes>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// What a CONNECT says about itself, read once for the phases and the log line.
#[derive(Debug)]
struct ConnectHead {
    /// What the CONNECT reaches: a service, or a destination in a network.
    target: Result<ConnectTarget, ProxyError>,
    scheme: String,
    ctx: FlowContext,
    original_host: String,
    account: String,
    script: String,
    /// The node that relayed this CONNECT (relay listener only).
    relayed_by: Option<String>,
}

/// What a CONNECT names.
#[derive(Debug, Clone)]
enum ConnectTarget {
    /// A VPC service (`wvpc-service-id`, else the authority's host).
    Service(Uuid),
    /// A destination inside a `vpc_networks` binding's network (`wvpc-network`): the
    /// authority's host (an IP literal, or a hostname resolved through the tunnel) and port.
    Network {
        network: NetworkTarget,
        host: String,
        port: u16,
    },
}

impl ConnectTarget {
    /// The service id, `-` for a network CONNECT (for logs).
    fn service_label(&self) -> String {
        match self {
            Self::Service(id) => id.to_string(),
            Self::Network { .. } => "-".to_owned(),
        }
    }

    /// The network and destination, `-` for a service CONNECT (for logs).
    fn network_label(&self) -> (String, String) {
        match self {
            Self::Service(_) => ("-".to_owned(), "-".to_owned()),
            Self::Network {
                network,
                host,
                port,
            } => (network.to_string(), destination_text(host, *port)),
        }
    }
}

/// `host:port`, with brackets around an IPv6 literal.
fn destination_text(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The node names in a relay peer's verified certificate: what the relay listener's TLS
/// handshake puts in each request's extensions (their presence marks a relayed request).
#[derive(Debug, Clone)]
struct RelayPeerNames(Arc<[String]>);

/// A CONNECT this node can answer `200`: a stream through a local tunnel connection, or
/// through the node it relayed the CONNECT to.
enum Opened {
    Local {
        io: BoxIo,
        tls: RouteTls,
    },
    Relayed {
        io: BoxIo,
        /// The holder's `wvpc-*` answer headers, passed through.
        headers: HeaderMap,
        peer: String,
        open: Option<wvpc_tunnel::metrics::GaugeGuard>,
    },
}

/// Why a CONNECT is answered with a failure.
enum Refusal {
    /// This node's own failure.
    Error(ProxyError),
    /// A relayed CONNECT this node holds no usable connection for: the relaying node may try
    /// another holder.
    RelayMiss(ProxyError),
    /// A holder's final failure, passed through.
    Relayed {
        status: StatusCode,
        proxy_status: Option<String>,
        error: ProxyError,
        peer: String,
    },
}

impl From<ProxyError> for Refusal {
    fn from(err: ProxyError) -> Self {
        Self::Error(err)
    }
}

impl Router {
    /// A router that looks services up in `store` and reaches them through `pool`.
    pub fn new(
        store: Arc<dyn ServiceStore>,
        pool: Arc<dyn TunnelPool>,
        config: RouterConfig,
    ) -> Self {
        let dns = DnsResolver::new(Arc::clone(&pool), config.dns.clone());
        Self {
            inner: Arc::new(RouterInner {
                store,
                pool,
                dns,
                config,
                pipes: Arc::default(),
            }),
        }
    }

    /// The service was deleted: its open pipes on this node close as soon as each is quiet
    /// (no request waiting for its answer, nothing in flight; see [`crate::pipes`]), which
    /// ends the pooled origin connections the binding-workers keep for it. Returns how many
    /// pipes were open.
    pub fn close_service(&self, service_id: Uuid) -> usize {
        self.inner.pipes.close_service(service_id)
    }

    /// The DNS resolver (and cache) this router uses.
    pub fn dns(&self) -> &DnsResolver {
        &self.inner.dns
    }

    /// Accepts connections on `listener` and serves CONNECTs on them until the returned
    /// future is dropped, within the config's [`RouterConfig::server`] limits (a connection
    /// with no CONNECT open is closed after the idle timeout, with a GOAWAY on HTTP/2).
    /// Connections already accepted keep running as their own tasks. Accept failures are
    /// waited out: it never returns an error.
    pub async fn serve(&self, listener: TcpListener) -> io::Result<()> {
        let router = self.clone();
        wvpc_listener::serve(listener, self.http_server("iris CONNECT"), move |req| {
            let router = router.clone();
            async move { router.handle(req).await }
        })
        .await;
        Ok(())
    }

    /// Serves relayed CONNECTs from other nodes on `listener`, over TLS with `tls` (which
    /// must require a client certificate from the cluster's relay CA:
    /// [`crate::relay::RelayIdentity::server_config`]). Each request must name the relaying
    /// node in `wvpc-relayed-by`, and that name must be in the peer's certificate. The TLS
    /// handshake is bounded by the header-read timeout. Like [`Router::serve`], it never
    /// returns an error.
    pub async fn serve_relay(
        &self,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) -> io::Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let handshake = move |tcp: tokio::net::TcpStream| {
            let acceptor = acceptor.clone();
            async move {
                let stream = acceptor.accept(tcp).await?;
                let names = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(certificate_names)
                    .unwrap_or_default();
                Ok((stream, RelayPeerNames(names.into())))
            }
        };
        let router = self.clone();
        wvpc_listener::serve_with(
            listener,
            self.http_server("iris relay"),
            handshake,
            move |req| {
                let router = router.clone();
                async move { router.handle(req).await }
            },
        )
        .await;
        Ok(())
    }

    fn http_server(&self, name: &'static str) -> HttpServer {
        let config = &self.inner.config;
        HttpServer::new(name, config.server.clone()).with_http2(Http2Settings {
            max_concurrent_streams: Some(config.max_concurrent_streams),
            stream_window: Some(config.stream_window),
            connection_window: Some(config.connection_window),
        })
    }

    /// Answers one request inside its `connect` span (the child of the caller's
    /// `traceparent`): a CONNECT is routed; anything else is refused.
    async fn handle(&self, req: Request<Incoming>) -> Response<Empty<Bytes>> {
        let span = tracing::info_span!(
            "connect",
            request_id = tracing::field::Empty,
            service_id = tracing::field::Empty,
            network = tracing::field::Empty,
            destination = tracing::field::Empty,
            scheme = tracing::field::Empty,
            account = tracing::field::Empty,
            script = tracing::field::Empty,
            relayed_by = tracing::field::Empty,
            code = tracing::field::Empty,
        );
        if let Some(parent) = header_text(req.headers(), wvpc_observe::trace::TRACEPARENT) {
            wvpc_observe::trace::continue_traceparent(&span, parent);
        }
        self.handle_traced(req, &span)
            .instrument(span.clone())
            .await
    }

    async fn handle_traced(
        &self,
        mut req: Request<Incoming>,
        span: &tracing::Span,
    ) -> Response<Empty<Bytes>> {
        let arrived = std::time::Instant::now();
        let head = ConnectHead::read(&req);
        if !span.is_disabled() {
            head.record(span);
        }
        if req.method() != Method::CONNECT {
            let err = ProxyError::new(ErrorCode::HttpRequestError)
                .with_details(format!("iris only accepts CONNECT, not {}", req.method()));
            return self.refuse(&head, err.into());
        }
        let relay_peer = req.extensions().get::<RelayPeerNames>();
        if let Err(err) = self.check_relay_headers(&head, relay_peer) {
            return self.refuse(&head, err.into());
        }
        let opened = match self.open_destination(&head, req.uri(), req.headers()).await {
            Ok(opened) => opened,
            Err(refusal) => return self.refuse(&head, refusal),
        };
        let ticket = match self.pipe_ticket(&head) {
            Ok(ticket) => ticket,
            Err(err) => return self.refuse(&head, err.into()),
        };
        if let Some((service, _)) = self.counted_service(&head) {
            service.connected(arrived.elapsed());
        }
        let mut response = Response::new(Empty::new());
        // A socket's bytes travel in frames to the binding-worker, so that a broken tunnel
        // stream reads as a reset there, not as the destination's FIN
        // (`wvpc_schemas::socket_frames`); a relaying node passes the holder's frames through.
        let framed = head.scheme == "tcp" && matches!(opened, Opened::Local { .. });
        let (tunnel_io, relayed_open) = match opened {
            Opened::Local { io, tls } => {
                if head.scheme == "https" {
                    tls_answer_headers(&tls, response.headers_mut());
                }
                (io, None)
            }
            Opened::Relayed {
                io,
                headers,
                peer,
                open,
            } => {
                tracing::debug!(request_id = %head.ctx.request_id, %peer, "CONNECT relayed");
                *response.headers_mut() = headers;
                (io, open)
            }
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let buffer = self.inner.config.pipe_buffer;
        let metrics = self.inner.config.metrics.clone();
        let (network, destination) = head.target.as_ref().map_or_else(
            |_| ("-".to_owned(), "-".to_owned()),
            ConnectTarget::network_label,
        );
        let request_id = head.ctx.request_id;
        // The client connection is not idle while the pipe runs.
        let in_use = req
            .extensions()
            .get::<ConnectionUse>()
            .map(ConnectionUse::hold);
        tokio::spawn(async move {
            let _in_use = in_use;
            let _relayed_open = relayed_open;
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::debug!(%request_id, error = %err, "CONNECT client left before the pipe started");
                    return;
                }
            };
            let client = TokioIo::new(upgraded);
            let piped = if framed {
                let client = SocketFrames::new(client);
                crate::pipes::pipe(ticket, client, tunnel_io, buffer, metrics).await
            } else {
                crate::pipes::pipe(ticket, client, tunnel_io, buffer, metrics).await
            };
            match piped {
                PipeEnd::Finished(up, down) => {
                    tracing::debug!(%request_id, %network, %destination, up, down, "CONNECT pipe closed");
                }
                PipeEnd::Broke(err) => {
                    tracing::debug!(%request_id, %network, %destination, error = %err, "CONNECT pipe broke");
                }
                PipeEnd::ServiceDeleted => {
                    tracing::debug!(%request_id, "CONNECT pipe closed: its service was deleted");
                }
            }
        });
        response
    }

    /// The rules of `wvpc-relayed-by`: only on the relay listener, always there, naming the
    /// node of the peer's certificate, never this node.
    fn check_relay_headers(
        &self,
        head: &ConnectHead,
        relay_peer: Option<&RelayPeerNames>,
    ) -> Result<(), ProxyError> {
        let own = &self.inner.config.node_name;
        match (relay_peer, head.relayed_by.as_deref()) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(ProxyError::new(ErrorCode::HttpRequestError).with_details(
                format!(
                    "{RELAYED_BY_HEADER} is only accepted on the relay listener, from another iris node"
                ),
            )),
            (Some(_), None) => Err(ProxyError::new(ErrorCode::HttpRequestError).with_details(
                format!(
                    "a CONNECT on the relay listener must name the relaying node in {RELAYED_BY_HEADER}"
                ),
            )),
            (Some(names), Some(by)) if !names.0.iter().any(|name| name == by) => Err(
                ProxyError::new(ErrorCode::HttpRequestDenied).with_details(format!(
                    "{RELAYED_BY_HEADER} {by:?} is not the node named by the peer's relay certificate ({:?})",
                    names.0
                )),
            ),
            (Some(_), Some(by)) if by == own => Err(ProxyError::new(
                ErrorCode::ProxyLoopDetected,
            )
            .with_details(format!(
                "this CONNECT was relayed by this node ({by}) to itself: check that no two nodes share a name and that each node's relay address is its own"
            ))),
            (Some(_), Some(_)) => Ok(()),
        }
    }

    /// Phases 1–5: from the request to a connected stream through the tunnel, plus the
    /// TLS settings for the answer — or through the node the CONNECT was relayed to, when
    /// this node holds no usable connection of the tunnel.
    async fn open_destination(
        &self,
        head: &ConnectHead,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Result<Opened, Refusal> {
        match head.target.clone()? {
            ConnectTarget::Service(service_id) => {
                self.open_service(head, service_id, uri, headers).await
            }
            ConnectTarget::Network {
                network,
                host,
                port,
            } => {
                self.open_network(head, network, &host, port, uri, headers)
                    .await
            }
        }
    }

    async fn open_service(
        &self,
        head: &ConnectHead,
        service_id: Uuid,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Result<Opened, Refusal> {
        let route = tracing::info_span!("route_lookup")
            .in_scope(|| self.inner.store.route(service_id))?
            .ok_or_else(|| {
                ProxyError::new(ErrorCode::DestinationNotFound)
                    .with_details(format!("no VPC service has id {service_id}"))
            })?;
        if let Some(relayed) = self
            .relay_if_absent(head, route.tunnel_id, uri, headers)
            .await?
        {
            return Ok(relayed);
        }
        let port = route
            .port_for_scheme(&head.scheme)
            .ok_or_else(|| scheme_refused(service_id, &head.scheme))?;
        let service = self
            .inner
            .config
            .metrics
            .as_ref()
            .map(|metrics| metrics.services.service(service_id));
        let addrs = self
            .addresses(&route, &head.ctx, service.as_deref())
            .await?;
        let candidates: Vec<(Uuid, IpAddr)> =
            addrs.into_iter().map(|ip| (route.tunnel_id, ip)).collect();
        let io = self.dial(&candidates, port, &head.ctx).await?;
        Ok(Opened::Local { io, tls: route.tls })
    }

    /// A network CONNECT: the account's network says which tunnel carries the destination
    /// (an IP by its routes; a hostname is resolved through a tunnel first, and each of its
    /// addresses routed the same way).
    async fn open_network(
        &self,
        head: &ConnectHead,
        network: NetworkTarget,
        host: &str,
        port: u16,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Result<Opened, Refusal> {
        if !matches!(head.scheme.as_str(), "http" | "https" | "tcp") {
            return Err(ProxyError::new(ErrorCode::HttpRequestError)
                .with_details(format!(
                    "{SCHEME_HEADER} {:?} is not one of http, https, tcp",
                    head.scheme
                ))
                .into());
        }
        let reach = tracing::info_span!("route_lookup")
            .in_scope(|| self.inner.store.network(&head.account, &network))?
            .ok_or_else(|| network_not_found(&network, &head.account))?;
        let candidates = if let Ok(ip) = host.parse::<IpAddr>() {
            let tunnel = reach
                .tunnel_for(ip)
                .ok_or_else(|| unroutable(&network, &reach, &ip.to_string()))?;
            if let Some(relayed) = self.relay_if_absent(head, tunnel, uri, headers).await? {
                return Ok(relayed);
            }
            vec![(tunnel, ip)]
        } else {
            let resolver = self.resolver_tunnel(&reach, &network, host)?;
            if let Some(relayed) = self.relay_if_absent(head, resolver, uri, headers).await? {
                return Ok(relayed);
            }
            let resolved = self.resolve(resolver, &[], host, &head.ctx, None).await?;
            let routed: Vec<(Uuid, IpAddr)> = resolved
                .iter()
                .filter_map(|ip| reach.tunnel_for(*ip).map(|tunnel| (tunnel, *ip)))
                .collect();
            if routed.is_empty() {
                let ips: Vec<String> = resolved.iter().map(ToString::to_string).collect();
                return Err(unroutable(
                    &network,
                    &reach,
                    &format!("{host} (which resolves to {})", ips.join(", ")),
                )
                .into());
            }
            routed
        };
        let io = self.dial(&candidates, port, &head.ctx).await?;
        // A network destination has no service TLS settings: the certificate must be valid
        // for the URL's host.
        Ok(Opened::Local {
            io,
            tls: RouteTls::default(),
        })
    }

    /// The tunnel whose connectors resolve a hostname of the network: the binding's tunnel,
    /// or in a virtual network the first of its tunnels this node holds a usable connection
    /// of (else one another node holds, to relay to; else the first).
    fn resolver_tunnel(
        &self,
        reach: &NetworkReach,
        network: &NetworkTarget,
        host: &str,
    ) -> Result<Uuid, ProxyError> {
        match reach {
            NetworkReach::Tunnel(tunnel) => Ok(*tunnel),
            NetworkReach::VirtualNetwork { vnet, routes } => {
                let tunnels = routes.tunnels(*vnet);
                let relay = self.inner.config.relay.as_ref();
                tunnels
                    .iter()
                    .find(|t| self.inner.pool.has_usable_connection(**t))
                    .or_else(|| {
                        tunnels
                            .iter()
                            .find(|t| relay.is_some_and(|r| r.has_holders(**t)))
                    })
                    .or_else(|| tunnels.first())
                    .copied()
                    .ok_or_else(|| {
                        ProxyError::new(ErrorCode::DestinationIpUnroutable).with_details(format!(
                            "virtual network {vnet} ({network}) has no routes, so no tunnel \
                             can resolve {host}: add a route to the virtual network"
                        ))
                    })
            }
        }
    }

    /// When this node holds no usable connection of `tunnel`: relays the CONNECT to a node
    /// that does (`Some`), or refuses a relayed one (this node was the wrong holder). `None`:
    /// dial here (with no holder anywhere, the pool's own failure is the answer).
    async fn relay_if_absent(
        &self,
        head: &ConnectHead,
        tunnel: Uuid,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Result<Option<Opened>, Refusal> {
        if self.inner.pool.has_usable_connection(tunnel) {
            return Ok(None);
        }
        if head.relayed_by.is_some() {
            return Err(Refusal::RelayMiss(
                ProxyError::new(ErrorCode::DestinationUnavailable).with_details(format!(
                    "node {} holds no usable connection of tunnel {tunnel}",
                    self.inner.config.node_name
                )),
            ));
        }
        let Some(relay) = &self.inner.config.relay else {
            return Ok(None);
        };
        if !relay.has_holders(tunnel) {
            return Ok(None);
        }
        let span = tracing::info_span!(
            "relay",
            %tunnel,
            peer = tracing::field::Empty,
            code = tracing::field::Empty
        );
        let answer = relay
            .forward(tunnel, uri, headers)
            .instrument(span.clone())
            .await
            .inspect_err(|err| {
                span.record("code", tracing::field::display(err.code));
            })?;
        match &answer {
            RelayAnswer::Opened { peer, .. } => span.record("peer", peer.as_str()),
            RelayAnswer::Refused { peer, error, .. } => span
                .record("peer", peer.as_str())
                .record("code", tracing::field::display(error.code)),
        };
        match answer {
            RelayAnswer::Opened {
                io,
                headers,
                peer,
                open,
            } => Ok(Some(Opened::Relayed {
                io,
                headers,
                peer,
                open,
            })),
            RelayAnswer::Refused {
                status,
                proxy_status,
                error,
                peer,
            } => Err(Refusal::Relayed {
                status,
                proxy_status,
                error,
                peer,
            }),
        }
    }

    /// Counts the pipe for its service (or network). The route is looked up once more after
    /// that, so a service deleted while this CONNECT was being opened (after
    /// [`Router::close_service`] ran) is refused now instead of leaving a pipe nothing would
    /// close.
    fn pipe_ticket(&self, head: &ConnectHead) -> Result<PipeTicket, ProxyError> {
        match head.target.clone()? {
            ConnectTarget::Service(service_id) => {
                let ticket = self.inner.pipes.register(PipeKey::Service(service_id));
                if self.inner.store.route(service_id)?.is_none() {
                    return Err(
                        ProxyError::new(ErrorCode::DestinationNotFound).with_details(format!(
                            "VPC service {service_id} was deleted while its CONNECT was being opened"
                        )),
                    );
                }
                Ok(ticket)
            }
            ConnectTarget::Network { network, .. } => {
                let ticket = self.inner.pipes.register(PipeKey::Network(network));
                if self.inner.store.network(&head.account, &network)?.is_none() {
                    return Err(network_not_found(&network, &head.account));
                }
                Ok(ticket)
            }
        }
    }

    /// Phase 4: the service's addresses, IPv4 first.
    async fn addresses(
        &self,
        route: &ServiceRoute,
        ctx: &FlowContext,
        service: Option<&ServiceHandle>,
    ) -> Result<Vec<IpAddr>, ProxyError> {
        match &route.target {
            RouteTarget::Ips { ipv4, ipv6 } => {
                let addrs: Vec<IpAddr> = ipv4
                    .map(IpAddr::V4)
                    .into_iter()
                    .chain(ipv6.map(IpAddr::V6))
                    .collect();
                if addrs.is_empty() {
                    return Err(
                        ProxyError::new(ErrorCode::DestinationNotFound).with_details(format!(
                            "service {} has neither an IPv4 nor an IPv6 address",
                            route.service_id
                        )),
                    );
                }
                Ok(addrs)
            }
            RouteTarget::Hostname { name, resolvers } => Ok(self
                .resolve(route.tunnel_id, resolvers, name, ctx, service)
                .await?
                .to_vec()),
        }
    }

    /// DNS through `tunnel` (cached per tunnel), counted (per node, and for `service`).
    async fn resolve(
        &self,
        tunnel: Uuid,
        resolvers: &[SocketAddr],
        name: &str,
        ctx: &FlowContext,
        service: Option<&ServiceHandle>,
    ) -> Result<Arc<[IpAddr]>, ProxyError> {
        let span = tracing::info_span!(
            "dns",
            %name,
            %tunnel,
            cache = tracing::field::Empty,
            code = tracing::field::Empty
        );
        let (resolved, source) = self
            .inner
            .dns
            .resolve_sourced(tunnel, resolvers, name, ctx)
            .instrument(span.clone())
            .await;
        match &source {
            Some(DnsSource::Cache) => span.record("cache", "hit"),
            Some(DnsSource::Lookup(_)) => span.record("cache", "miss"),
            None => &span,
        };
        if let Err(err) = &resolved {
            span.record("code", tracing::field::display(err.code));
        }
        match (service, source) {
            (Some(service), Some(DnsSource::Cache)) => service.dns_hit(),
            (Some(service), Some(DnsSource::Lookup(took))) => service.dns_lookup(took),
            _ => {}
        }
        if let Some(metrics) = &self.inner.config.metrics {
            metrics.dns_lookups.inc(match &resolved {
                Ok(_) => "ok",
                Err(err) => err.code.wire_name(),
            });
        }
        resolved
    }

    /// Phase 5: the first address that connects (through its tunnel) wins; only connection
    /// failures move on.
    async fn dial(
        &self,
        candidates: &[(Uuid, IpAddr)],
        port: u16,
        ctx: &FlowContext,
    ) -> Result<BoxIo, ProxyError> {
        let mut last_error = None;
        for &(tunnel, ip) in candidates {
            let dest = SocketAddr::new(ip, port);
            let timeout = self.inner.config.stream_open_timeout;
            // The tunnel stream's `cf-trace-id` is this span's context.
            let span = tracing::info_span!(
                "tunnel_open",
                %tunnel,
                %dest,
                code = tracing::field::Empty
            );
            let opened = tokio::time::timeout(timeout, self.inner.pool.open_tcp(tunnel, dest, ctx))
                .instrument(span.clone())
                .await
                .unwrap_or_else(|_| {
                    Err(
                        ProxyError::new(ErrorCode::ConnectionTimeout).with_details(format!(
                            "the tunnel stream to {dest} did not open within {timeout:?}"
                        )),
                    )
                });
            if let Err(err) = &opened {
                span.record("code", tracing::field::display(err.code));
            }
            match opened {
                Ok(io) => return Ok(io),
                Err(err) if is_per_address_failure(err.code) => {
                    tracing::debug!(request_id = %ctx.request_id, %tunnel, %dest, error = %err, "origin address failed; trying the next");
                    last_error = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last_error.unwrap_or_else(|| ProxyError::new(ErrorCode::DestinationNotFound)))
    }

    /// The service whose connection figures this CONNECT counts in: a service CONNECT that
    /// entered the edge here (a relayed one was counted by the node that relayed it).
    fn counted_service(
        &self,
        head: &ConnectHead,
    ) -> Option<(Arc<ServiceHandle>, &Arc<crate::metrics::IrisMetrics>)> {
        let metrics = self.inner.config.metrics.as_ref()?;
        match (&head.target, &head.relayed_by) {
            (Ok(ConnectTarget::Service(id)), None) => {
                Some((metrics.services.service(*id), metrics))
            }
            _ => None,
        }
    }

    /// The error answer for a failed CONNECT, logged once.
    fn refuse(&self, head: &ConnectHead, refusal: Refusal) -> Response<Empty<Bytes>> {
        let node = &self.inner.config.node_name;
        let (err, status, proxy_status, relay_miss, via) = match refusal {
            Refusal::Error(err) => {
                let status =
                    StatusCode::from_u16(err.code.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
                let value = err.to_proxy_status(node);
                (err, status, value, false, None)
            }
            Refusal::RelayMiss(err) => {
                let status = StatusCode::from_u16(err.code.http_status())
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                let value = err.to_proxy_status(node);
                (err, status, value, true, None)
            }
            Refusal::Relayed {
                status,
                proxy_status,
                error,
                peer,
            } => {
                let holder = proxy_status.unwrap_or_else(|| error.to_proxy_status(&peer));
                let value = crate::relay::append_proxy_status(&holder, node, &peer);
                (error, status, value, false, Some(peer))
            }
        };
        tracing::Span::current().record("code", tracing::field::display(err.code));
        let (service_id, (network, destination)) = match &head.target {
            Ok(target) => (target.service_label(), target.network_label()),
            Err(_) => ("-".to_owned(), ("-".to_owned(), "-".to_owned())),
        };
        tracing::warn!(
            request_id = %head.ctx.request_id,
            service_id = %service_id,
            network = %network,
            destination = %destination,
            scheme = %head.scheme,
            original_host = %head.original_host,
            account = %head.account,
            script = %head.script,
            relayed_by = head.relayed_by.as_deref().unwrap_or(""),
            relayed_to = via.as_deref().unwrap_or(""),
            code = %err.code,
            rcode = err.rcode.as_deref().unwrap_or(""),
            details = err.details.as_deref().unwrap_or(""),
            "CONNECT refused"
        );
        if let Some(metrics) = &self.inner.config.metrics {
            metrics.error(err.code);
        }
        if let Some((service, metrics)) = self.counted_service(head) {
            service.failed(&metrics.services, &err);
        }
        let mut response = Response::new(Empty::new());
        *response.status_mut() = status;
        // `to_proxy_status` only emits printable ASCII, and a holder's value was a header
        // value already, so this cannot fail in practice.
        if let Ok(value) = HeaderValue::from_str(&proxy_status) {
            response.headers_mut().insert(PROXY_STATUS_HEADER, value);
        }
        if relay_miss {
            response
                .headers_mut()
                .insert(RELAY_MISS_HEADER, HeaderValue::from_static("?1"));
        }
        response
    }
}

impl ConnectHead {
    /// Puts what the CONNECT says on its span (only called for an enabled one).
    fn record(&self, span: &tracing::Span) {
        use tracing::field::display;
        span.record("request_id", self.ctx.request_id.as_str())
            .record("scheme", self.scheme.as_str())
            .record("account", self.account.as_str())
            .record("script", self.script.as_str());
        if let Some(by) = &self.relayed_by {
            span.record("relayed_by", by.as_str());
        }
        match &self.target {
            Ok(ConnectTarget::Service(id)) => {
                span.record("service_id", display(id));
            }
            Ok(ConnectTarget::Network {
                network,
                host,
                port,
            }) => {
                span.record("network", display(network))
                    .record("destination", display(format_args!("{host}:{port}")));
            }
            Err(_) => {}
        }
    }

    fn read(req: &Request<Incoming>) -> Self {
        let headers = req.headers();
        let authority_port = req.uri().authority().and_then(|a| a.port_u16());
        let target = match header_text(headers, NETWORK_HEADER) {
            Some(network) => read_network_target(req, network),
            None => match header_text(headers, SERVICE_ID_HEADER) {
                Some(id) => parse_service_id(id, SERVICE_ID_HEADER).map(ConnectTarget::Service),
                None => match req.uri().authority() {
                    Some(authority) => parse_service_id(authority.host(), "the CONNECT authority")
                        .map(ConnectTarget::Service),
                    None => Err(ProxyError::new(ErrorCode::HttpRequestError).with_details(
                        format!(
                            "missing {SERVICE_ID_HEADER} header: name the VPC service to reach"
                        ),
                    )),
                },
            },
        };
        let scheme = header_text(headers, SCHEME_HEADER).map_or_else(
            // Without the header the authority's port says what the client meant.
            || {
                if authority_port == Some(443) {
                    "https"
                } else {
                    "http"
                }
                .to_owned()
            },
            str::to_ascii_lowercase,
        );
        let text = |name: &str| header_text(headers, name).unwrap_or("-").to_owned();
        Self {
            target,
            scheme,
            ctx: FlowContext {
                request_id: text(REQUEST_ID_HEADER),
            },
            original_host: text(ORIGINAL_HOST_HEADER),
            account: text(ACCOUNT_HEADER),
            script: text(SCRIPT_HEADER),
            relayed_by: header_text(headers, RELAYED_BY_HEADER).map(str::to_owned),
        }
    }
}

/// A network CONNECT: `wvpc-network` names the network, the authority the destination, and
/// `wvpc-account` (required) whose network it is. A service id next to it is refused rather
/// than silently ignored.
fn read_network_target(
    req: &Request<Incoming>,
    network: &str,
) -> Result<ConnectTarget, ProxyError> {
    let bad = |details: String| ProxyError::new(ErrorCode::HttpRequestError).with_details(details);
    let network: NetworkTarget = network
        .parse()
        .map_err(|e| bad(format!("{NETWORK_HEADER}: {e}")))?;
    if req.headers().contains_key(SERVICE_ID_HEADER) {
        return Err(bad(format!(
            "a CONNECT names either a service ({SERVICE_ID_HEADER}) or a network \
             ({NETWORK_HEADER}), not both"
        )));
    }
    if header_text(req.headers(), ACCOUNT_HEADER).is_none() {
        return Err(bad(format!(
            "a network CONNECT must name the account that owns {network} in {ACCOUNT_HEADER}"
        )));
    }
    let authority = req.uri().authority().ok_or_else(|| {
        bad(format!(
            "a network CONNECT's authority is the destination host:port; this one has none \
             ({network})"
        ))
    })?;
    let port = authority
        .port_u16()
        .filter(|port| *port != 0)
        .ok_or_else(|| {
            bad(format!(
                "destination {authority} has no port (or port 0): a network CONNECT names \
             host:port"
            ))
        })?;
    let host = authority.host();
    // An IPv6 literal comes in brackets.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad(format!("destination {authority} has no host")));
    }
    Ok(ConnectTarget::Network {
        network,
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// The TLS settings of an `https` service, for the binding-worker that runs the handshake.
fn tls_answer_headers(tls: &RouteTls, headers: &mut HeaderMap) {
    use base64::Engine as _;
    headers.insert(
        TLS_VERIFICATION_HEADER,
        HeaderValue::from_static(tls.cert_verification_mode.as_str()),
    );
    if let Some(pem) = &tls.ca_certificate {
        let encoded = base64::engine::general_purpose::STANDARD.encode(pem);
        // Base64 is always a valid header value.
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            headers.insert(TLS_CA_HEADER, value);
        }
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn parse_service_id(value: &str, source: &str) -> Result<Uuid, ProxyError> {
    Uuid::parse_str(value).map_err(|_| {
        ProxyError::new(ErrorCode::HttpRequestError).with_details(format!(
            "{source} {value:?} is not a VPC service id (a UUID)"
        ))
    })
}

/// A service that has no port for the CONNECT's scheme.
fn scheme_refused(service_id: Uuid, scheme: &str) -> ProxyError {
    let details = if scheme == "tcp" {
        format!(
            "service {service_id} has no tcp_port, so connect() cannot reach it: give the \
             service a tcp_port (an http service may have one besides its http_port / \
             https_port), or use fetch()"
        )
    } else {
        format!("service {service_id} does not accept {scheme} (it has no {scheme}_port)")
    };
    ProxyError::new(ErrorCode::HttpRequestDenied).with_details(details)
}

/// The binding's tunnel or virtual network is not in the account.
fn network_not_found(network: &NetworkTarget, account: &str) -> ProxyError {
    let what = match network {
        NetworkTarget::Tunnel(id) => format!("tunnel {id}"),
        NetworkTarget::AllNetworks => "default virtual network (cf1:network)".to_owned(),
        NetworkTarget::VirtualNetwork(id) => format!("virtual network {id}"),
    };
    ProxyError::new(ErrorCode::DestinationNotFound)
        .with_details(format!("account {account} has no {what}"))
}

/// No route of the network covers the destination.
fn unroutable(network: &NetworkTarget, reach: &NetworkReach, destination: &str) -> ProxyError {
    let what = match reach {
        NetworkReach::VirtualNetwork { vnet, .. } => format!("virtual network {vnet} ({network})"),
        NetworkReach::Tunnel(tunnel) => format!("tunnel {tunnel}"),
    };
    ProxyError::new(ErrorCode::DestinationIpUnroutable).with_details(format!(
        "no route of {what} covers {destination}: add a route that covers it to the virtual network"
    ))
}

/// Failures that concern one address, so that the next address may still work.
fn is_per_address_failure(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::ConnectionRefused
            | ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionTerminated
            | ErrorCode::DestinationIpUnroutable
    )
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use http_body_util::BodyExt;
    use hyper::client::conn::http2;
    use hyper_util::rt::TokioExecutor;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::mock::{MemoryStore, MockTunnel};

    const ECHO: Uuid = Uuid::from_u128(1);
    const HTTP_ONLY: Uuid = Uuid::from_u128(2);
    const REFUSING: Uuid = Uuid::from_u128(3);

    fn route(
        id: Uuid,
        target: RouteTarget,
        http: Option<u16>,
        https: Option<u16>,
    ) -> (Uuid, ServiceRoute) {
        let route = ServiceRoute {
            service_id: id,
            tunnel_id: Uuid::from_u128(99),
            target,
            http_port: http,
            https_port: https,
            tcp_port: None,
            tls: RouteTls::default(),
        };
        (id, route)
    }

    /// A router in front of an echo server, plus an HTTP/2 client connected to it.
    async fn setup() -> (http2::SendRequest<Empty<Bytes>>, MockTunnel) {
        let echo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    tokio::io::copy(&mut r, &mut w).await.unwrap();
                    w.shutdown().await.unwrap();
                });
            }
        });
        let closed_port = {
            let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let loopback = RouteTarget::Ips {
            ipv4: Some(Ipv4Addr::LOCALHOST),
            ipv6: None,
        };
        let store: MemoryStore = [
            route(ECHO, loopback.clone(), Some(echo_port), Some(echo_port)),
            route(HTTP_ONLY, loopback.clone(), Some(echo_port), None),
            route(REFUSING, loopback, Some(closed_port), None),
        ]
        .into_iter()
        .map(|(_, route)| route)
        .collect();
        let pool = MockTunnel::default();
        let router = Router::new(
            Arc::new(store),
            Arc::new(pool.clone()),
            RouterConfig::default(),
        );
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { router.serve(listener).await });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        (sender, pool)
    }

    fn connect(service: &str, scheme: &str) -> Request<Empty<Bytes>> {
        let mut builder = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("{service}:80"));
        if !scheme.is_empty() {
            builder = builder.header(SCHEME_HEADER, scheme);
        }
        builder
            .header(REQUEST_ID_HEADER, "req-test")
            .body(Empty::new())
            .unwrap()
    }

    async fn refused_with(
        sender: &mut http2::SendRequest<Empty<Bytes>>,
        req: Request<Empty<Bytes>>,
    ) -> (StatusCode, ProxyError) {
        let res = sender.send_request(req).await.unwrap();
        let status = res.status();
        let header = res.headers()[PROXY_STATUS_HEADER]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(header.starts_with("iris; error="), "{header}");
        assert!(
            res.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
        (status, ProxyError::from_proxy_status(&header).unwrap())
    }

    #[tokio::test]
    async fn a_connect_to_a_known_service_pipes_bytes_both_ways() {
        let (mut sender, pool) = setup().await;
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("{ECHO}:80"))
            .header(SERVICE_ID_HEADER, ECHO.to_string())
            .header(SCHEME_HEADER, "http")
            .body(Empty::new())
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let mut io = TokioIo::new(hyper::upgrade::on(res).await.unwrap());
        io.write_all(b"ping through the tunnel").await.unwrap();
        io.shutdown().await.unwrap();
        let mut echoed = Vec::new();
        io.read_to_end(&mut echoed).await.unwrap();
        assert_eq!(echoed, b"ping through the tunnel");
        assert_eq!(pool.dialed().len(), 1);
    }

    #[tokio::test]
    async fn failures_answer_the_codes_status_with_proxy_status() {
        let (mut sender, _pool) = setup().await;

        let (status, err) = refused_with(&mut sender, connect("not-a-uuid", "http")).await;
        assert_eq!(
            (status, err.code),
            (StatusCode::BAD_REQUEST, ErrorCode::HttpRequestError)
        );

        let unknown = Uuid::from_u128(42);
        let (status, err) = refused_with(&mut sender, connect(&unknown.to_string(), "http")).await;
        assert_eq!(
            (status, err.code),
            (StatusCode::NOT_FOUND, ErrorCode::DestinationNotFound)
        );

        let (status, err) =
            refused_with(&mut sender, connect(&HTTP_ONLY.to_string(), "https")).await;
        assert_eq!(
            (status, err.code),
            (StatusCode::FORBIDDEN, ErrorCode::HttpRequestDenied)
        );
        assert!(err.details.unwrap().contains("https"));

        let (status, err) = refused_with(&mut sender, connect(&REFUSING.to_string(), "http")).await;
        assert_eq!(
            (status, err.code),
            (StatusCode::BAD_GATEWAY, ErrorCode::ConnectionRefused)
        );
    }

    #[tokio::test]
    async fn a_tunnel_stream_that_does_not_open_in_time_is_connection_timeout() {
        // A listener with a full backlog: the mock tunnel's dial to it never completes.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        socket.listen(0).unwrap();
        let stuck = socket.local_addr().unwrap().as_socket().unwrap();
        let _filler = std::net::TcpStream::connect(stuck).unwrap();
        let target = RouteTarget::Ips {
            ipv4: Some(Ipv4Addr::LOCALHOST),
            ipv6: None,
        };
        let store: MemoryStore = [route(ECHO, target, Some(stuck.port()), None).1]
            .into_iter()
            .collect();
        let config = RouterConfig {
            stream_open_timeout: std::time::Duration::from_millis(200),
            ..RouterConfig::default()
        };
        let router = Router::new(Arc::new(store), Arc::new(MockTunnel::default()), config);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { router.serve(listener).await });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let (status, err) = refused_with(&mut sender, connect(&ECHO.to_string(), "http")).await;
        assert_eq!(
            (status, err.code),
            (StatusCode::GATEWAY_TIMEOUT, ErrorCode::ConnectionTimeout)
        );
        assert!(err.details.unwrap().contains("did not open"));
    }

    #[tokio::test]
    async fn without_a_scheme_header_the_authority_port_decides() {
        let (mut sender, _pool) = setup().await;
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("{HTTP_ONLY}:443"))
            .body(Empty::new())
            .unwrap();
        let (_, err) = refused_with(&mut sender, req).await;
        assert_eq!(err.code, ErrorCode::HttpRequestDenied);
        let res = sender
            .send_request(connect(&HTTP_ONLY.to_string(), ""))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn an_idle_client_connection_is_closed_but_not_while_a_pipe_runs() {
        let patience = std::time::Duration::from_secs(30);
        let echo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        let loopback = RouteTarget::Ips {
            ipv4: Some(Ipv4Addr::LOCALHOST),
            ipv6: None,
        };
        let store: MemoryStore = [route(ECHO, loopback, Some(echo_port), None).1]
            .into_iter()
            .collect();
        let config = RouterConfig {
            server: ServerLimits {
                idle_timeout: std::time::Duration::from_millis(300),
                ..ServerLimits::default()
            },
            ..RouterConfig::default()
        };
        let router = Router::new(Arc::new(store), Arc::new(MockTunnel::default()), config);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { router.serve(listener).await });
        let client = || async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
            (sender, tokio::spawn(conn))
        };

        // A: a connection whose only stream is a running pipe.
        let (mut piping, piping_conn) = client().await;
        let res = piping
            .send_request(connect(&ECHO.to_string(), "http"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let mut pipe = TokioIo::new(hyper::upgrade::on(res).await.unwrap());
        // B, opened after A: nothing open on it, so iris closes it after the idle timeout.
        let (_idle, idle_conn) = client().await;
        tokio::time::timeout(patience, idle_conn)
            .await
            .expect("iris closes an idle connection")
            .unwrap()
            .unwrap();
        // A has been open longer than B, but its pipe keeps it in use: the pipe works, and
        // A takes new CONNECTs (it got no GOAWAY).
        pipe.write_all(b"still piping").await.unwrap();
        let mut echoed = [0u8; 12];
        pipe.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"still piping");
        let res = piping
            .send_request(connect(&ECHO.to_string(), "http"))
            .await
            .expect("a connection in use is not closed as idle");
        assert_eq!(res.status(), StatusCode::OK);
        drop(res);
        // Once the pipe is over, A is idle and closed as well.
        pipe.shutdown().await.unwrap();
        let mut rest = Vec::new();
        pipe.read_to_end(&mut rest).await.unwrap();
        drop(pipe);
        tokio::time::timeout(patience, piping_conn)
            .await
            .expect("iris closes the connection once its pipe ended")
            .unwrap()
            .unwrap();
    }
}

#[cfg(test)]
#[path = "connect_network_tests.rs"]
mod network_tests;
