//! The load client every row shares: keep-alive HTTP/1.1 connections, `GET /hello` with a
//! chosen `Host`, and the measurement of one target (latency at concurrency 1, throughput
//! and, per request, the CPU time, context switches and system calls of the accounted
//! processes at concurrency N).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::perf;
use crate::usage::{self, Pid};

/// Where requests go: a listener and the `Host` they carry.
#[derive(Debug, Clone)]
pub struct Target {
    /// The listener.
    pub addr: SocketAddr,
    /// The `Host` header (what a multi-script runtime routes by).
    pub host: String,
}

impl Target {
    /// `addr`, with `Host: <addr>`.
    pub fn at(addr: SocketAddr) -> Target {
        Target {
            addr,
            host: addr.to_string(),
        }
    }
}

/// One target's figures.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Latency at concurrency 1.
    pub p50: Duration,
    /// Latency at concurrency 1.
    pub p99: Duration,
    /// Latency at concurrency 1.
    pub p999: Duration,
    /// Requests per second at concurrency N.
    pub rps: f64,
    /// CPU µs per request of each accounted process, in the order given to [`measure`],
    /// over the throughput run.
    pub cpu_us_per_req: Vec<f64>,
    /// Context switches per request of each accounted process, over the throughput run
    /// (from `perf stat`, else from `/proc`).
    pub switches_per_req: Vec<f64>,
    /// System calls per request of each accounted process, over the throughput run; `None`
    /// without `perf`.
    pub syscalls_per_req: Option<Vec<f64>>,
    /// The flamegraph of the throughput run, with `--profile`.
    pub flamegraph: Option<PathBuf>,
    /// Resident memory of each accounted process right after the throughput run, in bytes.
    pub rss_after: Vec<u64>,
    /// Allocations per request in this process over the throughput run.
    pub allocs_per_req: f64,
    /// Bytes allocated per request in this process over the throughput run.
    pub alloc_bytes_per_req: f64,
    /// Proportional resident memory ([`usage::pss`]) of each, at the same moment.
    pub pss_after: Vec<u64>,
}

/// Where `--profile` writes a row's flamegraph: the folder and the row's name.
#[derive(Debug, Clone, Copy)]
pub struct ProfileTo<'a> {
    /// The folder.
    pub dir: &'a Path,
    /// The row, naming the files.
    pub name: &'a str,
}

impl Figures {
    /// CPU µs per request summed over every accounted process.
    pub fn total_cpu_us_per_req(&self) -> f64 {
        self.cpu_us_per_req.iter().sum()
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One GET on a kept-alive connection; fails on anything but a 200 with a body.
async fn get(sender: &mut Sender, target: &Target) -> anyhow::Result<()> {
    sender.ready().await?;
    let req = Request::get("/hello")
        .header("host", target.host.as_str())
        .body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status == 200,
        "{} (Host {}) answered {status}: {}",
        target.addr,
        target.host,
        String::from_utf8_lossy(&body)
    );
    anyhow::ensure!(
        !body.is_empty(),
        "{} (Host {}) answered an empty body",
        target.addr,
        target.host
    );
    Ok(())
}

/// Measures `target`: a one-second warm-up, `duration` at concurrency 1 (every latency kept),
/// then `duration` at `concurrency`, with the CPU time, context switches and (with `perf`)
/// system calls of each of `processes` during it, and its profile when `profile` is given.
pub async fn measure(
    target: &Target,
    duration: Duration,
    concurrency: usize,
    processes: &[Pid],
    profile: Option<ProfileTo<'_>>,
    allocator: &stats_alloc::StatsAlloc<std::alloc::System>,
) -> anyhow::Result<Figures> {
    // Latency: one request in flight.
    let mut sender = connect(target.addr).await?;
    let warm_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < warm_until {
        get(&mut sender, target).await?;
    }
    let mut samples = Vec::new();
    let until = Instant::now() + duration;
    while Instant::now() < until {
        let t = Instant::now();
        get(&mut sender, target).await?;
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];

    // Throughput: `concurrency` connections, each with one request in flight.
    let mut senders = Vec::new();
    for _ in 0..concurrency {
        senders.push(connect(target.addr).await?);
    }
    let mut counting = if perf::available() {
        Some(perf::Counting::attach(processes)?)
    } else {
        None
    };
    let mut profiling = match profile {
        Some(to) => Some(perf::Profile::attach(processes, to.dir, to.name)?),
        None => None,
    };
    if let Some(counting) = &mut counting {
        counting.enable()?;
    }
    if let Some(profiling) = &mut profiling {
        profiling.enable()?;
    }
    let allocs_before = allocator.stats();
    let cpu_before = cpu_of(processes)?;
    let switches_before = switches_of(processes)?;
    let started = Instant::now();
    let until = started + duration;
    let mut workers = Vec::new();
    for mut sender in senders {
        let target = target.clone();
        workers.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until {
                get(&mut sender, &target).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut requests = 0u64;
    for worker in workers {
        requests += worker.await??;
    }
    let elapsed = started.elapsed();
    let cpu_after = cpu_of(processes)?;
    let allocs = allocator.stats() - allocs_before;
    let switches_after = switches_of(processes)?;
    let counts = counting.map(perf::Counting::finish).transpose()?;
    let flamegraph = profiling.map(perf::Profile::finish).transpose()?;
    let rss_after = processes
        .iter()
        .map(|&pid| usage::rss(pid))
        .collect::<anyhow::Result<_>>()?;
    let pss_after = processes
        .iter()
        .map(|&pid| usage::pss(pid))
        .collect::<anyhow::Result<_>>()?;
    let per_req = |n: u64| n as f64 / requests as f64;
    Ok(Figures {
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
        rps: requests as f64 / elapsed.as_secs_f64(),
        cpu_us_per_req: cpu_before
            .iter()
            .zip(&cpu_after)
            .map(|(before, after)| (*after - *before).as_secs_f64() * 1e6 / requests as f64)
            .collect(),
        switches_per_req: match &counts {
            Some(counts) => counts.iter().map(|c| per_req(c.context_switches)).collect(),
            None => switches_before
                .iter()
                .zip(&switches_after)
                .map(|(before, after)| per_req(after.saturating_sub(*before)))
                .collect(),
        },
        syscalls_per_req: counts.map(|counts| counts.iter().map(|c| per_req(c.syscalls)).collect()),
        flamegraph,
        rss_after,
        pss_after,
        allocs_per_req: per_req((allocs.allocations + allocs.reallocations) as u64),
        alloc_bytes_per_req: per_req(allocs.bytes_allocated as u64),
    })
}

fn cpu_of(processes: &[Pid]) -> anyhow::Result<Vec<Duration>> {
    processes.iter().map(|&pid| usage::cpu(pid)).collect()
}

fn switches_of(processes: &[Pid]) -> anyhow::Result<Vec<u64>> {
    processes
        .iter()
        .map(|&pid| usage::context_switches(pid))
        .collect()
}

/// Load that keeps going whatever the answers, counting them: `connections` loops per
/// target, each on its own kept-alive connection (a new one after a failure).
pub struct Load {
    /// Requests answered 200 with a body.
    pub ok: Arc<AtomicU64>,
    /// Requests that failed (another status, a broken connection).
    pub failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts the loops.
    pub fn start(targets: &[Target], connections: usize) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for target in targets {
            for _ in 0..connections {
                let (target, ok, failed, stop) =
                    (target.clone(), ok.clone(), failed.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let mut sender = None;
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = match sender.as_mut() {
                            Some(sender) => get(sender, &target).await,
                            None => match connect(target.addr).await {
                                Ok(new) => get(sender.insert(new), &target).await,
                                Err(err) => Err(err),
                            },
                        };
                        match outcome {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(err) => {
                                eprintln!("a request failed under load: {err:#}");
                                sender = None;
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                }));
            }
        }
        Load {
            ok,
            failed,
            stop,
            tasks,
        }
    }

    /// Stops the loops after their requests in flight; returns (ok, failed).
    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
