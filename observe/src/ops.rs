//! The operations listener that `--metrics` opens on every process:
//!
//! - `GET /metrics`: the registry in Prometheus text format 0.0.4, for any peer (scrapers
//!   run elsewhere; the figures are counts, never request contents);
//! - `GET /status`: a page that draws `/status.json` and refreshes itself;
//! - `GET /status.json[?minutes=N]`: the [`StatusReport`], with a summary over the last N
//!   minutes (1–60) beside the 5- and 60-minute ones.
//!
//! The status routes name tunnels, connectors and services, so they answer loopback peers
//! in full, and others only with an account's admin token (`Authorization: Bearer …`, or
//! `?token=` for a browser; the page passes it on), checked by the process's
//! [`TokenCheck`]; such a viewer sees that account's tunnels, services and scripts only. A
//! process with no way to check tokens answers only loopback peers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use wvpc_listener::{HttpServer, ServerLimits};

use crate::status::{NodeStatus, StatusReport, rfc3339};

/// The status page: plain HTML, CSS and a small script, no build step.
const STATUS_PAGE: &str = include_str!("page/status.html");

/// The windows every status report summarises, in minutes.
pub const WINDOWS: [u32; 2] = [5, 60];

/// The account a bearer token is an admin token of, if it is one. May block (it reads the
/// directory): it runs on a blocking thread.
pub type TokenCheck = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A part of a process that shows itself on the operations listener: its metrics, its
/// sections of the status report, or both.
pub trait Observable: Send + Sync + 'static {
    /// Registers this part's metrics (called once, when the part is added).
    fn register(&self, _registry: &mut Registry) {}
    /// Adds this part's sections to `report` (its `windows` are already set).
    fn contribute(&self, _report: &mut StatusReport) {}
}

/// Parts a caller hands to a process to show beside its own (`wvpc dev`: the runtime and
/// the binding-worker beside iris).
#[derive(Clone, Default)]
pub struct Parts(pub Vec<Arc<dyn Observable>>);

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Parts({})", self.0.len())
    }
}

/// Who reads the status.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Viewer {
    /// A loopback peer: everything.
    Operator,
    /// An account's admin token: that account's entries.
    Account(String),
}

/// What one process serves on its operations listener.
pub struct Ops {
    registry: Registry,
    parts: Vec<Arc<dyn Observable>>,
    role: &'static str,
    name: String,
    started: Instant,
    started_wall: SystemTime,
    token_check: Option<TokenCheck>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("role", &self.role)
            .field("name", &self.name)
            .field("parts", &self.parts.len())
            .finish_non_exhaustive()
    }
}

impl Ops {
    /// A process of `role` named `name`, showing nothing yet.
    pub fn new(role: &'static str, name: impl Into<String>) -> Self {
        Self {
            registry: Registry::default(),
            parts: Vec::new(),
            role,
            name: name.into(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            token_check: None,
        }
    }

    /// Adds a part: its metrics are registered now, its sections drawn on every report.
    pub fn with(mut self, part: Arc<dyn Observable>) -> Self {
        part.register(&mut self.registry);
        self.parts.push(part);
        self
    }

    /// Adds every part of `parts`.
    pub fn with_all(self, parts: impl IntoIterator<Item = Arc<dyn Observable>>) -> Self {
        parts.into_iter().fold(self, Self::with)
    }

    /// Lets non-loopback peers read the status routes with a token `check` accepts.
    pub fn with_token_check(mut self, check: TokenCheck) -> Self {
        self.token_check = Some(check);
        self
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        if let Err(err) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::warn!(error = %err, "cannot encode the metrics");
        }
        text
    }

    /// The full status report, with a summary over `minutes` too if given.
    pub fn report(&self, minutes: Option<u32>) -> StatusReport {
        self.report_for(&Viewer::Operator, minutes)
    }

    fn report_for(&self, viewer: &Viewer, minutes: Option<u32>) -> StatusReport {
        let mut windows = WINDOWS.to_vec();
        if let Some(m) = minutes.filter(|m| !windows.contains(m)) {
            windows.push(m);
        }
        let mut report = StatusReport {
            node: NodeStatus {
                role: self.role.to_owned(),
                name: self.name.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_at: rfc3339(self.started_wall),
                uptime_seconds: self.started.elapsed().as_secs(),
            },
            generated_at: rfc3339(SystemTime::now()),
            windows,
            ..StatusReport::default()
        };
        for part in &self.parts {
            part.contribute(&mut report);
        }
        if let Viewer::Account(account) = viewer {
            let own = |owner: &Option<String>| owner.as_deref() == Some(account.as_str());
            report.tunnels.retain(|t| own(&t.account));
            report.services.retain(|s| own(&s.account));
            report.service_requests.retain(|s| own(&s.account));
            report.scripts.retain(|s| own(&s.account));
            report.peers.clear();
        }
        report
    }

    /// Who the request's peer and token make the reader, if anyone.
    async fn viewer(
        &self,
        peer: Option<SocketAddr>,
        request: &Request<impl Sized>,
    ) -> Option<Viewer> {
        if peer.is_some_and(|p| p.ip().is_loopback() || is_mapped_loopback(&p)) {
            return Some(Viewer::Operator);
        }
        let check = self.token_check.clone()?;
        let token = bearer(request)?;
        tokio::task::spawn_blocking(move || check(&token))
            .await
            .ok()
            .flatten()
            .map(Viewer::Account)
    }

    async fn answer(
        self: &Arc<Self>,
        peer: Option<SocketAddr>,
        request: &Request<impl Sized>,
    ) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "the operations listener answers GET only\n".into(),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let path = request.uri().path();
        match path {
            "/metrics" => {
                let mut response = text(StatusCode::OK, self.metrics_text());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    ),
                );
                response
            }
            "/status" | "/status.json" => {
                let Some(viewer) = self.viewer(peer, request).await else {
                    return refused(self.token_check.is_some());
                };
                if path == "/status.json" {
                    let minutes = match minutes_asked(request) {
                        Ok(minutes) => minutes,
                        Err(message) => return text(StatusCode::BAD_REQUEST, message),
                    };
                    // Parts may read the directory (tunnel names): off the async workers.
                    let ops = Arc::clone(self);
                    let report =
                        tokio::task::spawn_blocking(move || ops.report_for(&viewer, minutes))
                            .await
                            .unwrap_or_default();
                    let body = serde_json::to_string(&report).unwrap_or_default();
                    let mut response = text(StatusCode::OK, body);
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    response
                } else {
                    let mut response = text(StatusCode::OK, STATUS_PAGE.to_owned());
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/html; charset=utf-8"),
                    );
                    response
                }
            }
            "/" => {
                let mut response = text(StatusCode::FOUND, "see /status\n".into());
                response
                    .headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static("/status"));
                response
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: this listener serves /metrics, /status and /status.json\n".into(),
            ),
        }
    }
}

fn is_mapped_loopback(peer: &SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        std::net::IpAddr::V4(_) => false,
    }
}

/// The token of `Authorization: Bearer …`, or of the `token` query parameter.
fn bearer(request: &Request<impl Sized>) -> Option<String> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    query_pairs(request)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

fn query_pairs(request: &Request<impl Sized>) -> url::form_urlencoded::Parse<'_> {
    url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
}

fn minutes_asked(request: &Request<impl Sized>) -> Result<Option<u32>, String> {
    let Some((_, value)) = query_pairs(request).find(|(k, _)| k == "minutes") else {
        return Ok(None);
    };
    match value.parse::<u32>() {
        Ok(m) if (1..=60).contains(&m) => Ok(Some(m)),
        _ => Err(format!(
            "minutes={value:?}: give a whole number of minutes from 1 to 60 (the status keeps one hour)\n"
        )),
    }
}

fn refused(token_possible: bool) -> Response<Full<Bytes>> {
    let message = if token_possible {
        "the status page needs an admin token from a non-loopback address: send \
         `Authorization: Bearer <token>` or add ?token=<token>\n"
    } else {
        "the status page answers loopback peers only: this process cannot check tokens\n"
    };
    let mut response = text(StatusCode::UNAUTHORIZED, message.into());
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The peer of a connection, put in each request's extensions.
#[derive(Debug, Clone, Copy)]
struct Peer(Option<SocketAddr>);

/// Serves `ops` on `listener` until the future is dropped, with `limits` (every listener's
/// timeouts and connection cap).
pub async fn serve(listener: TcpListener, ops: Arc<Ops>, limits: ServerLimits) {
    let server = HttpServer::new("operations", limits);
    let learn_peer = |stream: TcpStream| {
        let peer = stream.peer_addr().ok();
        std::future::ready(Ok((stream, Peer(peer))))
    };
    wvpc_listener::serve_with(listener, server, learn_peer, move |request: Request<_>| {
        let ops = ops.clone();
        async move {
            let peer = request.extensions().get::<Peer>().and_then(|p| p.0);
            let mut response = ops.answer(peer, &request).await;
            if request.method() == Method::HEAD {
                *response.body_mut() = Full::new(Bytes::new());
            }
            response
        }
    })
    .await;
}

/// The Prometheus text of one part's metrics alone (tests and diagnostics).
pub fn render_alone(part: &dyn Observable) -> String {
    let mut registry = Registry::default();
    part.register(&mut registry);
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        tracing::warn!(error = %err, "cannot encode the metrics");
    }
    text
}

/// This machine's host name (the name of processes that have no other), `localhost` if it
/// cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Binds `addr` and serves `ops` on it in a task; the bound address and the task.
pub async fn start(
    addr: SocketAddr,
    ops: Arc<Ops>,
    limits: ServerLimits,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, tokio::spawn(serve(listener, ops, limits))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{TrafficStatus, TunnelStatus};
    use http_body_util::BodyExt as _;
    use prometheus_client::metrics::counter::Counter;

    /// Two accounts' tunnels and a counter.
    struct Part(Counter);
    impl Observable for Part {
        fn register(&self, registry: &mut Registry) {
            registry.register("wvpc_test_things", "Things", self.0.clone());
        }
        fn contribute(&self, report: &mut StatusReport) {
            for (id, account) in [("t1", "acct-a"), ("t2", "acct-b")] {
                report.tunnels.push(TunnelStatus {
                    id: id.into(),
                    account: Some(account.into()),
                    ..TunnelStatus::default()
                });
            }
            report.services.push(TrafficStatus {
                id: "s2".into(),
                account: Some("acct-b".into()),
                ..TrafficStatus::default()
            });
        }
    }

    fn ops(check: Option<TokenCheck>) -> Arc<Ops> {
        let counter = Counter::<u64>::default();
        counter.inc();
        let ops = Ops::new("dev", "node-a").with(Arc::new(Part(counter)));
        Arc::new(match check {
            Some(check) => ops.with_token_check(check),
            None => ops,
        })
    }

    fn get(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    async fn body(response: Response<Full<Bytes>>) -> String {
        let Ok(collected) = response.into_body().collect().await;
        String::from_utf8(collected.to_bytes().to_vec()).unwrap()
    }

    async fn report(response: Response<Full<Bytes>>) -> StatusReport {
        assert_eq!(response.status(), StatusCode::OK);
        serde_json::from_str(&body(response).await).unwrap()
    }

    const LOOPBACK: Option<SocketAddr> = Some(SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        5000,
    ));
    const REMOTE: Option<SocketAddr> = Some(SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3)),
        5000,
    ));

    #[tokio::test]
    async fn metrics_are_prometheus_text_for_anyone() {
        let ops = ops(None);
        let response = ops.answer(REMOTE, &get("/metrics")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        assert!(body(response).await.contains("wvpc_test_things_total 1\n"));
    }

    #[tokio::test]
    async fn status_answers_loopback_in_full_and_an_admin_token_its_account() {
        let check: TokenCheck = Arc::new(|token| (token == "b-admin").then(|| "acct-b".to_owned()));
        let ops = ops(Some(check));
        let full = report(ops.answer(LOOPBACK, &get("/status.json")).await).await;
        assert_eq!(full.node.role, "dev");
        assert_eq!(full.node.name, "node-a");
        assert_eq!(full.windows, vec![5, 60]);
        assert_eq!(full.tunnels.len(), 2);

        let refused = ops.answer(REMOTE, &get("/status")).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(body(refused).await.contains("admin token"));
        let wrong = ops.answer(REMOTE, &get("/status.json?token=nope")).await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        let page = ops.answer(REMOTE, &get("/status?token=b-admin")).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert!(body(page).await.contains("<html"));
        let by_header = Request::get("/status.json")
            .header("authorization", "Bearer b-admin")
            .body(())
            .unwrap();
        let own = report(ops.answer(REMOTE, &by_header).await).await;
        let tunnels: Vec<_> = own.tunnels.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(tunnels, ["t2"], "account b sees its own tunnel only");
        assert_eq!(own.services.len(), 1);

        let no_check = self::ops(None);
        let refused = no_check
            .answer(REMOTE, &get("/status.json?token=b-admin"))
            .await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(body(refused).await.contains("loopback peers only"));
    }

    #[tokio::test]
    async fn an_extra_window_is_summarised_when_asked() {
        let ops = ops(None);
        let extra = report(ops.answer(LOOPBACK, &get("/status.json?minutes=15")).await).await;
        assert_eq!(extra.windows, vec![5, 60, 15]);
        let bad = ops.answer(LOOPBACK, &get("/status.json?minutes=90")).await;
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert!(body(bad).await.contains("minutes=\"90\""));
        let post = Request::post("/metrics").body(()).unwrap();
        assert_eq!(
            ops.answer(LOOPBACK, &post).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
