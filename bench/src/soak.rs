//! `--soak SECONDS`: the platform's processes under a long run of mixed traffic, to show that
//! memory, file descriptors and threads stay flat.
//!
//! The chain is the platform row's ([`Platform`]: `wvpc iris`, `wvpc binding-worker`,
//! `wvpc runtime`) with two connector replicas of the tunnel. The traffic mixes what
//! production sends:
//!
//! - keep-alive requests (`GET /hello` on kept connections);
//! - a new connection per request (`Connection: close`);
//! - 1 MiB response bodies (`GET /big/1048576`) and 1 MiB request bodies (`POST /echo`);
//! - a script whose service's origin refuses connections (every answer a `502` naming
//!   `connection_refused`);
//!
//! and every minute one connector is restarted, alternately stopped with SIGTERM and killed
//! with SIGKILL, then started again.
//!
//! Every interval (30 s) the traffic pauses; once the in-flight requests are done and the
//! processes' descriptor counts have settled, each long-lived process's resident memory,
//! open descriptors and threads are read, and printed with the interval's requests, errors
//! and p99 per kind. The first sample after the warm-up is the baseline: at the end, the
//! resident memory of iris, the binding-worker and the runtime together may have grown by at
//! most [`RSS_GROWTH_LIMIT`], and their descriptors not at all.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::RwLock;

use crate::load::Target;
use crate::platform::{Component, ConnectorLauncher, Platform};
use crate::usage::{self, Pid, mib};

/// How much the long-lived processes' resident memory may grow after the warm-up.
pub const RSS_GROWTH_LIMIT: u64 = 5 << 20;
/// The large bodies, each way.
const BIG_BODY: usize = 1 << 20;
/// The script whose service's origin refuses connections.
const FAILING_SCRIPT: &str = "failing";
/// Its host.
const FAILING_HOST: &str = "failing.local.workers.localhost";
/// How often a connector is restarted.
const CONNECTOR_RESTART: Duration = Duration::from_secs(60);
/// How long the descriptor counts may take to settle at a sample.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the descriptor counts are read while settling.
const SETTLE_POLL: Duration = Duration::from_millis(50);

/// The kinds of traffic, with the loops of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    KeepAlive,
    NewConnection,
    Download,
    Upload,
    Failing,
}

impl Kind {
    const ALL: [(Kind, usize); 5] = [
        (Kind::KeepAlive, 4),
        (Kind::NewConnection, 2),
        (Kind::Download, 1),
        (Kind::Upload, 1),
        (Kind::Failing, 1),
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::KeepAlive => "keep-alive",
            Kind::NewConnection => "new conn",
            Kind::Download => "1 MiB down",
            Kind::Upload => "1 MiB up",
            Kind::Failing => "failing",
        }
    }
}

/// What one interval saw, per kind: latencies of the answers as expected, and errors.
#[derive(Default)]
struct Interval {
    latencies: BTreeMap<Kind, Vec<Duration>>,
    errors: BTreeMap<Kind, u64>,
    /// The first few error messages, printed with the interval.
    first_errors: Vec<String>,
}

/// One sample of a long-lived process.
#[derive(Debug, Clone, Copy)]
struct Usage {
    rss: u64,
    fds: u64,
    threads: u64,
}

/// Runs the soak for `seconds` with samples every `interval` and a warm-up of `warmup`;
/// returns whether memory and descriptors stayed within their limits.
pub async fn run(
    platform: &mut Platform,
    seconds: u64,
    interval: Duration,
    warmup: Duration,
) -> anyhow::Result<bool> {
    let target = platform.target()?;
    // A second service of the tunnel whose port nothing listens on.
    let closed_port = {
        let socket = std::net::TcpListener::bind((wvpc_tests::real::ORIGIN_IP, 0))?;
        socket.local_addr()?.port()
    };
    let dead = platform.create_service("dead", closed_port)?;
    platform
        .deploy_as(FAILING_SCRIPT, dead, platform.module.clone())
        .await?;
    wait_served(&target.addr, FAILING_HOST).await?;
    // Two replicas: the one started with the platform, and another, restarted in turn.
    let first = platform
        .components
        .pop()
        .context("the platform has no connector")?;
    let launcher = platform.connector_launcher()?;
    let second = launcher.start().await?;
    let watched: Vec<(&'static str, Pid)> = platform
        .components
        .iter()
        .map(|c| (c.name, c.pid()))
        .collect();

    let stats = Arc::new(Mutex::new(Interval::default()));
    // Each request holds a read guard; a sample takes the write guard, which waits for the
    // requests in flight and holds back new ones.
    let gate = Arc::new(RwLock::new(()));
    let mut loops = Vec::new();
    for (kind, count) in Kind::ALL {
        for _ in 0..count {
            let target = match kind {
                Kind::Failing => Target {
                    addr: target.addr,
                    host: FAILING_HOST.to_owned(),
                },
                _ => target.clone(),
            };
            loops.push(tokio::spawn(traffic(
                kind,
                target,
                stats.clone(),
                gate.clone(),
            )));
        }
    }

    println!(
        "soak: {seconds} s of mixed traffic on the platform's processes ({}), a connector \
         restart every {} s; a sample every {} s, the baseline after {} s",
        watched
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", "),
        CONNECTOR_RESTART.as_secs(),
        interval.as_secs(),
        warmup.as_secs(),
    );
    print_header(&watched);

    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let restarts = Arc::new(AtomicU32::new(0));
    let restarter = tokio::spawn(restart_connectors(
        launcher,
        vec![first, second],
        started,
        restarts.clone(),
    ));
    let mut next_sample = started + interval;
    let mut baseline: Option<Vec<Usage>> = None;
    let mut total_errors = 0u64;
    let last = loop {
        let now = Instant::now();
        if now >= next_sample || now >= end {
            let pause = gate.write().await;
            let usage = settle_and_read(&watched).await?;
            let seen = std::mem::take(&mut *stats.lock().expect("stats lock"));
            drop(pause);
            let t = started.elapsed();
            total_errors += seen.errors.values().sum::<u64>();
            print_row(t, &seen, &usage);
            if baseline.is_none() && t >= warmup {
                baseline = Some(usage.clone());
            }
            if now >= end {
                break usage;
            }
            next_sample += interval;
            continue;
        }
        tokio::time::sleep_until(next_sample.min(end).into()).await;
    };
    for task in loops {
        task.abort();
    }
    restarter.abort();
    match restarter.await {
        Ok(result) => result?,
        Err(err) if err.is_cancelled() => {}
        Err(err) => return Err(err.into()),
    }
    let restarts = restarts.load(Ordering::Relaxed);

    let baseline = baseline.unwrap_or_else(|| last.clone());
    let rss_growth = last.iter().map(|u| u.rss as i64).sum::<i64>()
        - baseline.iter().map(|u| u.rss as i64).sum::<i64>();
    let fd_growth = last.iter().map(|u| u.fds as i64).sum::<i64>()
        - baseline.iter().map(|u| u.fds as i64).sum::<i64>();
    println!(
        "after the warm-up: resident memory {:+.1} MiB (limit +{:.0} MiB), descriptors {:+} \
         (limit 0); {restarts} connector restarts, {total_errors} requests failed",
        rss_growth as f64 / (1024.0 * 1024.0),
        mib(RSS_GROWTH_LIMIT),
        fd_growth,
    );
    let flat = rss_growth <= RSS_GROWTH_LIMIT as i64 && fd_growth <= 0;
    println!(
        "soak: {}",
        if flat {
            "flat"
        } else {
            "GREW beyond its limits"
        }
    );
    Ok(flat)
}

/// Every [`CONNECTOR_RESTART`], the oldest replica goes (alternately SIGTERM and SIGKILL) and
/// a new one takes its place, counted in `restarts`. Runs until aborted; returns only on an
/// error.
async fn restart_connectors(
    launcher: ConnectorLauncher,
    mut connectors: Vec<Component>,
    started: Instant,
    counted: Arc<AtomicU32>,
) -> anyhow::Result<()> {
    let mut next = started + CONNECTOR_RESTART;
    loop {
        tokio::time::sleep_until(next.into()).await;
        let old = connectors.remove(0);
        let restarts = counted.load(Ordering::Relaxed);
        let how = if restarts.is_multiple_of(2) {
            let stopping = Instant::now();
            old.terminate().await?;
            format!(
                "SIGTERM, exited after {:.1} s",
                stopping.elapsed().as_secs_f64()
            )
        } else {
            old.kill()?;
            "SIGKILL".to_owned()
        };
        connectors.push(launcher.start().await?);
        counted.store(restarts + 1, Ordering::Relaxed);
        println!(
            "  {:>5.0} s  connector restarted ({how})",
            started.elapsed().as_secs_f64()
        );
        next += CONNECTOR_RESTART;
    }
}

/// Waits (bounded) until the runtime serves `host`: a deploy reaches it within moments.
async fn wait_served(addr: &std::net::SocketAddr, host: &str) -> anyhow::Result<()> {
    let target = Target {
        addr: *addr,
        host: host.to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut sender = connect(&target).await?;
        let req = Request::get("/hello")
            .header("host", host)
            .body(Full::new(Bytes::new()))?;
        let status = sender.send_request(req).await?.status();
        if status != 404 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the runtime did not serve {host} within 30 s of its deploy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One loop of `kind` until aborted: a request at a time, each timed and checked.
async fn traffic(kind: Kind, target: Target, stats: Arc<Mutex<Interval>>, gate: Arc<RwLock<()>>) {
    let upload = Bytes::from(vec![b'u'; BIG_BODY]);
    let mut kept: Option<Sender> = None;
    loop {
        let _open = gate.read().await;
        let started = Instant::now();
        let outcome = request(kind, &target, &mut kept, &upload).await;
        let elapsed = started.elapsed();
        let mut stats = stats.lock().expect("stats lock");
        match outcome {
            Ok(()) => stats.latencies.entry(kind).or_default().push(elapsed),
            Err(err) => {
                kept = None;
                *stats.errors.entry(kind).or_default() += 1;
                if stats.first_errors.len() < 3 {
                    stats
                        .first_errors
                        .push(format!("{}: {err:#}", kind.label()));
                }
            }
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(target: &Target) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One request of `kind`; an error unless the answer is the one expected.
async fn request(
    kind: Kind,
    target: &Target,
    kept: &mut Option<Sender>,
    upload: &Bytes,
) -> anyhow::Result<()> {
    let (method, path, body) = match kind {
        Kind::KeepAlive | Kind::NewConnection | Kind::Failing => ("GET", "/hello", Bytes::new()),
        Kind::Download => ("GET", "/big/1048576", Bytes::new()),
        Kind::Upload => ("POST", "/echo", upload.clone()),
    };
    let mut fresh = None;
    let sender = match kind {
        Kind::NewConnection => fresh.insert(connect(target).await?),
        _ => match kept {
            Some(sender) => sender,
            None => kept.insert(connect(target).await?),
        },
    };
    sender.ready().await?;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", target.host.as_str());
    if kind == Kind::NewConnection {
        req = req.header("connection", "close");
    }
    let resp = sender.send_request(req.body(Full::new(body))?).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    match kind {
        Kind::Failing => anyhow::ensure!(
            status == 502 && String::from_utf8_lossy(&body).contains("connection_refused"),
            "expected 502 connection_refused, got {status}: {}",
            String::from_utf8_lossy(&body)
        ),
        Kind::Download | Kind::Upload => anyhow::ensure!(
            status == 200 && body.len() == BIG_BODY,
            "expected 200 with {BIG_BODY} bytes, got {status} with {} bytes",
            body.len()
        ),
        Kind::KeepAlive | Kind::NewConnection => anyhow::ensure!(
            status == 200 && !body.is_empty(),
            "expected 200, got {status}: {}",
            String::from_utf8_lossy(&body)
        ),
    }
    Ok(())
}

/// Waits (bounded) until the watched processes' descriptor counts stop changing (closed
/// connections are released a moment after the client hangs up), then reads their usage.
async fn settle_and_read(watched: &[(&'static str, Pid)]) -> anyhow::Result<Vec<Usage>> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut previous = fd_counts(watched)?;
    loop {
        tokio::time::sleep(SETTLE_POLL).await;
        let now = fd_counts(watched)?;
        if now == previous || Instant::now() >= deadline {
            break;
        }
        previous = now;
    }
    watched
        .iter()
        .map(|&(_, pid)| {
            Ok(Usage {
                rss: usage::rss(pid)?,
                fds: usage::fds(pid)?,
                threads: usage::threads(pid)?,
            })
        })
        .collect()
}

fn fd_counts(watched: &[(&'static str, Pid)]) -> anyhow::Result<Vec<u64>> {
    watched.iter().map(|&(_, pid)| usage::fds(pid)).collect()
}

fn print_header(watched: &[(&'static str, Pid)]) {
    let processes = watched
        .iter()
        .map(|(name, _)| format!("{name} MiB/fds/thr"))
        .collect::<Vec<_>>()
        .join("  ");
    let kinds = Kind::ALL
        .iter()
        .map(|(kind, _)| kind.label())
        .collect::<Vec<_>>()
        .join(" / ");
    println!(
        "  {:>7}  {:>8} {:>6}  p99 ms ({kinds})  |  {processes}",
        "t", "requests", "errors"
    );
}

fn print_row(t: Duration, seen: &Interval, usage: &[Usage]) {
    let requests: usize = seen.latencies.values().map(Vec::len).sum();
    let errors: u64 = seen.errors.values().sum();
    let p99s = Kind::ALL
        .iter()
        .map(|(kind, _)| match seen.latencies.get(kind) {
            Some(samples) if !samples.is_empty() => {
                format!("{:.1}", p99(samples).as_secs_f64() * 1e3)
            }
            _ => "-".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" / ");
    let processes = usage
        .iter()
        .map(|u| format!("{:.1}/{}/{}", mib(u.rss), u.fds, u.threads))
        .collect::<Vec<_>>()
        .join("  ");
    println!(
        "  {:>5.0} s  {:>8} {:>6}  {p99s}  |  {processes}",
        t.as_secs_f64(),
        requests + errors as usize,
        errors,
    );
    for err in &seen.first_errors {
        println!("           failed: {err}");
    }
}

/// The exact 99th percentile of `samples` (nearest rank).
fn p99(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((sorted.len() as f64) * 0.99).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
