//! `wvpc-bench`: what the whole path costs, as ratios against a direct request measured in
//! the same run (the machines are noisy; absolute numbers drift, ratios hold).
//!
//! It starts, in this process, an origin on 127.0.0.2, a DNS server, the stack `wvpc dev`
//! runs (runtime with `examples/proxy`, binding-worker, iris, tunnel edge) and our connector
//! over QUIC, then loads two targets with the same keep-alive HTTP/1.1 client:
//!
//! - **direct**: the origin itself;
//! - **binding**: the script, whose every request is an `env.API.fetch()` through the tunnel.
//!
//! For each: latency at concurrency 1 (exact p50/p99/p99.9 over every request), throughput at
//! concurrency N, and CPU per request (this process's user+system time over the throughput
//! run: load client, origin and, for the binding row, every component).
//!
//! Then two figures of the runtime itself: the binding-fetch overhead (binding − direct, in
//! latency and CPU per request), and the cost of one instantiation of the script (a fresh
//! store and pooled instance from the pre-instantiated component, as every request pays),
//! p50/p99 over back-to-back instantiations, also as a share of the binding row's p50.
//!
//! ```text
//! cargo run --release -p wvpc-bench -- [--seconds 5] [--concurrency 32]
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use wvpc_tests::real::RealWorld;

/// Command-line options.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds of each measured run (after a one-second warm-up)
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Connections of the throughput runs
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measure one target only (e.g. under a profiler); no ratios are printed
    #[arg(long, value_parser = ["direct", "binding"])]
    only: Option<String>,
}

/// One target's figures.
struct Figures {
    p50: Duration,
    p99: Duration,
    p999: Duration,
    rps: f64,
    cpu_us_per_req: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One runtime for the system and the load client: on two cores, a second runtime made
    // every request pay cross-runtime thread wake-ups (direct p50 ~5x higher) that belong to
    // the harness, not to the path under test.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (world, direct, binding) = rt.block_on(start_world())?;
    println!("direct  = http://{direct}/hello   (origin on 127.0.0.2)");
    println!(
        "binding = http://{binding}/hello   (script -> capnp -> binding-worker -> CONNECT -> iris -> QUIC -> connector -> origin)"
    );

    let duration = Duration::from_secs(args.seconds);
    let mut rows = Vec::new();
    for (name, addr) in [("direct", direct), ("binding", binding)] {
        if args.only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        let figures = rt.block_on(measure(addr, duration, args.concurrency))?;
        rows.push((name, figures));
    }
    let instantiation = if args.only.is_none() {
        Some(rt.block_on(measure_instantiation(duration))?)
    } else {
        None
    };
    drop(world);

    // Ratios need both rows; with --only the single row is its own base.
    let base = &rows[0].1;
    println!();
    println!(
        "| target  | p50 c=1 | p99 c=1 | p99.9 c=1 | req/s c={} | CPU µs/req | p50 × direct | req/s ÷ direct |",
        args.concurrency
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, f) in &rows {
        println!(
            "| {name} | {} | {} | {} | {:.0} | {:.0} | {:.1}× | {:.2} |",
            fmt(f.p50),
            fmt(f.p99),
            fmt(f.p999),
            f.rps,
            f.cpu_us_per_req,
            f.p50.as_secs_f64() / base.p50.as_secs_f64(),
            f.rps / base.rps,
        );
    }
    if let (Some((p50, p99, count)), [(_, direct), (_, binding)]) = (instantiation, &rows[..]) {
        println!();
        println!(
            "binding-fetch overhead: +{} p50 at c=1, +{:.0} CPU µs/req (binding − direct)",
            fmt(binding.p50.saturating_sub(direct.p50)),
            binding.cpu_us_per_req - direct.cpu_us_per_req,
        );
        println!(
            "instantiation: p50 {:.1} µs, p99 {:.1} µs over {count} instantiations \
             ({:.1}% of the binding p50)",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            100.0 * p50.as_secs_f64() / binding.p50.as_secs_f64(),
        );
    }
    Ok(())
}

/// p50, p99 and count of back-to-back instantiations of the proxy script (a fresh store and
/// instance each, dropped at once: what every request pays before the handler runs).
async fn measure_instantiation(duration: Duration) -> anyhow::Result<(Duration, Duration, usize)> {
    let config = wvpc_runtime::ScriptConfig {
        name: "bench".into(),
        main: wvpc_tests::guests::PROXY.into(),
        vpc_services: Vec::new(),
        limits: Default::default(),
    };
    let options = wvpc_runtime::RuntimeOptions {
        // Never dialled: instantiation makes no fetch.
        binding_workers: vec!["127.0.0.1:9".parse()?],
        binding_secret: None,
        account: "bench".into(),
    };
    let runtime =
        tokio::task::spawn_blocking(move || wvpc_runtime::Runtime::new(&config, options)).await??;
    let warm_until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < warm_until {
        runtime.instantiate_once().await?;
    }
    let mut samples = Vec::new();
    let until = Instant::now() + duration.min(Duration::from_secs(2));
    while Instant::now() < until {
        let t = Instant::now();
        runtime.instantiate_once().await?;
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    Ok((pct(0.50), pct(0.99), samples.len()))
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

async fn start_world() -> anyhow::Result<(RealWorld, SocketAddr, SocketAddr)> {
    let world = RealWorld::start().await.context("starting the real path")?;
    let (direct, binding) = (world.origin.addr, world.stack.script_addr);
    Ok((world, direct, binding))
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
async fn get(sender: &mut Sender, addr: SocketAddr) -> anyhow::Result<()> {
    sender.ready().await?;
    let req = Request::get("/hello")
        .header("host", addr.to_string())
        .body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    anyhow::ensure!(resp.status() == 200, "{addr} answered {}", resp.status());
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(!body.is_empty(), "{addr} answered an empty body");
    Ok(())
}

async fn measure(
    addr: SocketAddr,
    duration: Duration,
    concurrency: usize,
) -> anyhow::Result<Figures> {
    // Latency: one request in flight.
    let mut sender = connect(addr).await?;
    let warm_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < warm_until {
        get(&mut sender, addr).await?;
    }
    let mut samples = Vec::new();
    let until = Instant::now() + duration;
    while Instant::now() < until {
        let t = Instant::now();
        get(&mut sender, addr).await?;
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];

    // Throughput: `concurrency` connections, each with one request in flight.
    let cpu_before = process_cpu()?;
    let started = Instant::now();
    let until = started + duration;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let mut sender = connect(addr).await?;
        workers.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until {
                get(&mut sender, addr).await?;
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
    let cpu = process_cpu()? - cpu_before;
    Ok(Figures {
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
        rps: requests as f64 / elapsed.as_secs_f64(),
        cpu_us_per_req: cpu.as_secs_f64() * 1e6 / requests as f64,
    })
}

/// This process's user + system CPU time (from /proc/self/stat, in clock ticks of 10 ms).
fn process_cpu() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .context("malformed /proc/self/stat")?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 10))
}
