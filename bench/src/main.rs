//! `wvpc-bench`: what the whole path costs, as ratios against a direct request measured in
//! the same run (the machines are noisy; absolute numbers drift, ratios hold).
//!
//! It loads three targets with the same keep-alive HTTP/1.1 client ([`load`]):
//!
//! - **direct**: an origin on 127.0.0.2, in this process;
//! - **workerd**: Cloudflare's Workers runtime forwarding every request to the same origin
//!   with `env.ORIGIN.fetch(request)` ([`workerd`]), where it is installed: the peer;
//! - **binding**: `wvpc dev`'s stack in this process (runtime with `examples/proxy`,
//!   binding-worker, iris, tunnel edge), our connector over QUIC, a DNS server and the origin:
//!   every request is an `env.API.fetch()` through the tunnel;
//! - **relayed**: the same stack and request after the connector moved to a second iris node
//!   ([`relayed`]): every CONNECT enters node A and is relayed to node B (mutual TLS, HTTP/2),
//!   which holds the tunnel — the cost of a request landing on a node without the tunnel;
//! - **platform**: the same chain as separate processes ([`platform`]): `wvpc iris`,
//!   `wvpc binding-worker`, `wvpc runtime` and `wvpc tunnel run` as children on one state, the
//!   script deployed in the directory and requested by `Host`
//!   (`proxy.local.workers.localhost`); origin and DNS server in this process.
//!   Each process runs with `--metrics` (counted, never scraped), as an operator runs it.
//! - **platform-bare** and **platform-traced**: the platform row without `--metrics`, and
//!   with every span exported over OTLP to a receiver in this process ([`otlp_sink`]): what
//!   metrics and traces cost per request.
//! - **platform-js**: the platform row with `examples/proxy-js` as the script, built from its
//!   JavaScript entry as `wvpc deploy` builds it ([`javascript`]): what a JavaScript script
//!   costs against the Rust one, instantiation included (it gets a fresh instance per request).
//!
//! For each: latency at concurrency 1 (exact p50/p99/p99.9 over every request), throughput at
//! concurrency N, and over the throughput run the CPU time ([`usage`]), context switches and
//! system calls ([`perf`], where `perf` is installed) per request of each process, and its
//! resident memory after the run. `--profile DIR` also writes each row's flamegraph. "All" is every
//! process of the row: this one (load client, origin, DNS and, for the binding row, every
//! component) plus, for the platform row, each child. "Chain" leaves out the load client,
//! origin and DNS in both rows: the platform row's children, each measured; the binding row's
//! all minus this process's share in the platform row (the same work at the same request
//! rate; the direct row's share, at fifty times the rate, is cheaper per request). The
//! platform row's CPU is also printed per process, and every process's resident memory after
//! load.
//!
//! Then figures of the runtime itself: the binding-fetch overhead (binding − direct), the cost
//! of one instantiation of the script (a fresh store and pooled instance from the
//! pre-instantiated component, as every request pays), the cost of finding a request's script
//! among 10 000 ([`routing`]), and how long a redeploy takes to be served by every runtime of
//! the platform, under load ([`redeploy`]: a second `wvpc runtime` joins for it).
//!
//! Last, the cluster's route propagation ([`propagation`]): three iris nodes on a throwaway
//! PostgreSQL directory (and, for contrast, on SQLite), and how long a write that changes a
//! route takes from its commit to every node's routing table.
//!
//! `--soak SECONDS` runs the soak instead ([`soak`]): the platform's processes under mixed
//! traffic with connector restarts, sampled every 30 s; it exits with status 1 when their
//! memory or descriptors grew beyond the limits.
//!
//! ```text
//! cargo run --release -p wvpc-bench -- [--seconds 5] [--concurrency 32] [--only platform | --only binding,relayed | --only propagation]
//! cargo run --release -p wvpc-bench -- --only direct,workerd,binding,platform --profile target/profile
//! cargo run --release -p wvpc-bench -- --only direct,workerd,platform,platform-js --seconds 3
//! cargo run --release -p wvpc-bench -- --soak 600
//! ```

mod javascript;
mod load;
mod otlp_sink;
mod perf;
mod platform;
mod propagation;
mod redeploy;
mod relayed;
mod routing;
mod soak;
mod usage;
mod workerd;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::load::{Figures, ProfileTo, Target, measure};
use crate::platform::Platform;
use crate::usage::{Pid, mib};

/// Every allocation of this process counted (two relaxed atomic additions each), for the
/// allocations per request of the rows that run in it.
#[global_allocator]
static ALLOCATOR: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// Command-line options.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds of each measured run (after a one-second warm-up)
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Connections of the throughput runs
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measure these targets only, comma-separated (e.g. one under a profiler, or
    /// `binding,relayed`); the other figures are not printed
    #[arg(long, value_delimiter = ',', value_parser = ["direct", "workerd", "binding", "relayed", "platform", "platform-bare", "platform-traced", "platform-js", "propagation"])]
    only: Vec<String>,
    /// Also profile each row's throughput run with `perf record` and write its flamegraph,
    /// `DIR/<row>.svg`
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// The `wvpc` binary of the platform row [default: the one next to this executable,
    /// brought up to date with `cargo build -p wvpc-cli`]
    #[arg(long, value_name = "PATH")]
    wvpc: Option<PathBuf>,
    /// Redeploys of each kind (same module, new module) timed on the platform
    #[arg(long, default_value_t = 20)]
    redeploys: usize,
    /// Route changes timed from their commit to every iris node's table
    #[arg(long, default_value_t = 50, value_name = "WRITES")]
    propagation_writes: usize,
    /// Instead of the rows: a soak of this many seconds of mixed traffic on the platform's
    /// processes, printing memory, descriptors, threads and p99 every interval
    #[arg(long, value_name = "SECONDS")]
    soak: Option<u64>,
    /// Seconds between two samples of the soak
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    soak_interval: u64,
    /// Seconds of the soak before its baseline sample
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    soak_warmup: u64,
}

/// One measured target.
struct Row {
    name: &'static str,
    /// What its processes are, for the table.
    processes: &'static str,
    /// Each accounted process, in the order of the figures' per-process vectors.
    names: Vec<&'static str>,
    figures: Figures,
}

/// Connections per runtime loading the script during the redeploys.
const REDEPLOY_LOAD_CONNECTIONS: usize = 4;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wants = |name: &str| args.only.is_empty() || args.only.iter().any(|only| only == name);
    let full = args.only.is_empty();
    // One runtime for the system and the load client: on two cores, a second runtime made
    // every request pay cross-runtime thread wake-ups (direct p50 ~5x higher) that belong to
    // the harness, not to the path under test.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Some(seconds) = args.soak {
        let wvpc = platform::wvpc_binary(args.wvpc.as_deref())?;
        let flat = rt.block_on(async {
            let mut platform = Platform::start(wvpc).await?;
            soak::run(
                &mut platform,
                seconds,
                Duration::from_secs(args.soak_interval.max(1)),
                Duration::from_secs(args.soak_warmup),
            )
            .await
        })?;
        drop(rt);
        if !flat {
            std::process::exit(1);
        }
        return Ok(());
    }
    let duration = Duration::from_secs(args.seconds);
    let mut rows = Vec::new();

    let profile = |name| {
        args.profile
            .as_deref()
            .map(|dir: &Path| ProfileTo { dir, name })
    };

    // In this process: binding, then workerd and direct (so that the RSS after the binding row
    // does not hold the origin's record of the direct row's many requests); printed direct,
    // workerd, binding, relayed.
    let mut dev_rss = None;
    let mut instantiation = None;
    if ["direct", "workerd", "binding", "relayed"]
        .iter()
        .any(|name| wants(name))
    {
        let rss_before = usage::rss(Pid::Own)?;
        let mut cluster = rt.block_on(relayed::Cluster::start())?;
        let (direct, binding) = (cluster.world.origin.addr, cluster.world.stack.script_addr);
        println!("direct   = http://{direct}/hello   (origin on 127.0.0.2)");
        println!(
            "binding  = http://{binding}/hello   (one process: script -> capnp -> binding-worker \
             -> CONNECT -> iris -> QUIC -> connector -> origin)"
        );
        for (name, processes) in [
            ("binding", "1: this, with wvpc dev's stack"),
            (
                "relayed",
                "1: this, with wvpc dev's stack (node A) and iris node B",
            ),
            ("workerd", "2: this + workerd"),
            ("direct", "1: this"),
        ] {
            if !wants(name) {
                continue;
            }
            let mut names = vec!["this"];
            let mut pids = vec![Pid::Own];
            let mut addr = if name == "direct" { direct } else { binding };
            let mut peer = None;
            if name == "relayed" {
                rt.block_on(cluster.move_tunnel_to_b())?;
            }
            if name == "workerd" {
                let Some(binary) = workerd::binary() else {
                    println!(
                        "workerd: SKIPPED (no workerd: set WORKERD, or `npm install workerd` in \
                         /tmp/peers/workerd)"
                    );
                    continue;
                };
                let started = workerd::Workerd::start(&binary, direct)?;
                println!(
                    "workerd  = http://{}/hello   ({}: env.ORIGIN.fetch(request) to the origin)",
                    started.addr,
                    binary.display()
                );
                addr = started.addr;
                names.push("workerd");
                pids.push(started.pid());
                peer = Some(started);
            }
            let figures = rt.block_on(measure(
                &Target::at(addr),
                duration,
                args.concurrency,
                &pids,
                profile(name),
                ALLOCATOR,
            ))?;
            drop(peer);
            if name == "binding" {
                dev_rss = Some((figures.rss_after[0], rss_before));
            }
            let row = Row {
                name,
                processes,
                names,
                figures,
            };
            match name {
                "direct" => rows.insert(0, row),
                "workerd" => {
                    let at = usize::from(rows.first().is_some_and(|r| r.name == "direct"));
                    rows.insert(at, row)
                }
                _ => rows.push(row),
            }
        }
        if full {
            let rust = javascript::config(wvpc_tests::guests::PROXY);
            let measured = rt.block_on(javascript::measure_instantiation(rust, duration))?;
            instantiation = Some((measured.p50, measured.p99, measured.count));
        }
        drop(cluster);
    }

    // Separate processes: platform, and the redeploys on its processes.
    let mut redeploys = None;
    if wants("platform") {
        let wvpc = platform::wvpc_binary(args.wvpc.as_deref())?;
        let mut platform = rt.block_on(Platform::start(wvpc))?;
        let target = platform.target()?;
        println!(
            "platform = http://{}/hello with Host {}   (processes: runtime -> capnp -> \
             binding-worker -> CONNECT -> iris -> QUIC -> connector -> origin)",
            target.addr, target.host
        );
        let (pids, names) = platform.accounted();
        let figures = rt.block_on(measure(
            &target,
            duration,
            args.concurrency,
            &pids,
            profile("platform"),
            ALLOCATOR,
        ))?;
        rows.push(Row {
            name: "platform",
            processes: "5: this + iris, binding-worker, runtime, connector",
            names,
            figures,
        });
        if full {
            redeploys = Some(rt.block_on(async {
                platform.add_runtime().await?;
                redeploy::measure(&platform, args.redeploys, REDEPLOY_LOAD_CONNECTIONS).await
            })?);
        }
        drop(platform);
    }

    // What metrics and traces cost: the platform row's processes without `--metrics`, and
    // with every span exported to a local OTLP receiver.
    let mut exported = None;
    for (name, processes) in [
        (
            "platform-bare",
            "5: this + the platform row's processes, without --metrics",
        ),
        (
            "platform-traced",
            "5: this (+ OTLP receiver) + the platform row's processes, spans exported",
        ),
    ] {
        if !wants(name) {
            continue;
        }
        let wvpc = platform::wvpc_binary(args.wvpc.as_deref())?;
        let sink = rt.block_on(otlp_sink::OtlpSink::start())?;
        let observe = if name == "platform-bare" {
            platform::Observe::Nothing
        } else {
            platform::Observe::MetricsAndTraces(sink.addr)
        };
        let platform = rt.block_on(Platform::start_observed(wvpc, observe))?;
        let target = platform.target()?;
        println!(
            "{name} = http://{}/hello with Host {}   ({processes})",
            target.addr, target.host
        );
        let (pids, names) = platform.accounted();
        let figures = rt.block_on(measure(
            &target,
            duration,
            args.concurrency,
            &pids,
            profile(name),
            ALLOCATOR,
        ))?;
        rows.push(Row {
            name,
            processes,
            names,
            figures,
        });
        drop(platform);
        if name == "platform-traced" {
            exported = Some(sink.received());
        }
    }

    // The JavaScript proxy on the same chain, and both scripts' instantiation (measured here,
    // with nothing else running).
    let mut js_report = None;
    // Skipped, saying why, where Node.js and npm are missing.
    if wants("platform-js") && wvpc_tests::guests::javascript_builds() {
        let (_, module) = rt.block_on(javascript::build_proxy())?;
        let component_bytes = module.len();
        let js = rt.block_on(javascript::measure_instantiation(
            javascript::config(wvpc_tests::guests::PROXY_JS),
            duration,
        ))?;
        let rust = rt.block_on(javascript::measure_instantiation(
            javascript::config(wvpc_tests::guests::PROXY),
            duration,
        ))?;
        let wvpc = platform::wvpc_binary(args.wvpc.as_deref())?;
        let platform = rt.block_on(Platform::start_with(wvpc, module))?;
        let target = platform.target()?;
        println!(
            "platform-js = http://{}/hello with Host {}   (the platform row's processes, the \
             script examples/proxy-js)",
            target.addr, target.host
        );
        let (pids, names) = platform.accounted();
        let figures = rt.block_on(measure(
            &target,
            duration,
            args.concurrency,
            &pids,
            profile("platform-js"),
            ALLOCATOR,
        ))?;
        rows.push(Row {
            name: "platform-js",
            processes: "5: this + iris, binding-worker, runtime (JS script), connector",
            names,
            figures,
        });
        js_report = Some((component_bytes, js, rust));
        drop(platform);
    }

    // The cluster's route propagation: iris nodes on PostgreSQL, then on SQLite.
    let mut propagations = Vec::new();
    if wants("propagation") {
        let writes = args.propagation_writes.max(1);
        match wvpc_pg_harness::PgServer::start() {
            Ok(server) => {
                let url = server.create_database();
                propagations.push(rt.block_on(propagation::measure(
                    propagation::Store::Postgres(url),
                    writes,
                ))?);
            }
            Err(why) => println!(
                "route propagation on PostgreSQL: SKIPPED (PostgreSQL): {why} (install the \
                 `postgresql` package to measure it)"
            ),
        }
        propagations.push(rt.block_on(propagation::measure(propagation::Store::Sqlite, writes))?);
    }
    drop(rt);

    // Pure CPU, with nothing else running.
    let routing = if full {
        Some(routing::measure()?)
    } else {
        None
    };

    print_rows(&rows, args.concurrency);
    if let Some((rss, before)) = dev_rss {
        println!(
            "binding row, RSS after load: {:.0} MiB, {:.0} MiB more than before the stack started \
             (this process: wvpc dev's stack, connector, origin, DNS, load client)",
            mib(rss),
            mib(rss.saturating_sub(before)),
        );
    }
    print_processes(&rows);
    print_goals(&rows, instantiation.map(|(p50, _, _)| p50));
    print_observability(&rows, exported);
    let by_name = |name: &str| rows.iter().find(|r| r.name == name).map(|r| &r.figures);
    if let (Some(binding), Some(relayed)) = (by_name("binding"), by_name("relayed")) {
        println!(
            "relay: relayed p50 {} = {:.2}× the binding p50 {} (goal ≤ 1.3×), +{} at c=1, \
             {:+.0} CPU µs/req (relayed − binding)",
            fmt(relayed.p50),
            relayed.p50.as_secs_f64() / binding.p50.as_secs_f64(),
            fmt(binding.p50),
            fmt(relayed.p50.saturating_sub(binding.p50)),
            relayed.total_cpu_us_per_req() - binding.total_cpu_us_per_req(),
        );
    }
    if let (Some((p50, p99, count)), Some(direct), Some(binding)) =
        (instantiation, by_name("direct"), by_name("binding"))
    {
        println!();
        println!(
            "binding-fetch overhead: +{} p50 at c=1, +{:.0} CPU µs/req (binding − direct)",
            fmt(binding.p50.saturating_sub(direct.p50)),
            binding.total_cpu_us_per_req() - direct.total_cpu_us_per_req(),
        );
        println!(
            "instantiation: p50 {:.1} µs, p99 {:.1} µs over {count} instantiations \
             ({:.1}% of the binding p50)",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            100.0 * p50.as_secs_f64() / binding.p50.as_secs_f64(),
        );
    }
    if let Some(routing) = &routing {
        print_routing(routing);
    }
    if let Some(redeploys) = &redeploys {
        print_redeploys(redeploys);
    }
    if let Some((component_bytes, js, rust)) = js_report {
        javascript::print(&javascript::Report {
            rows: &rows,
            component_bytes,
            js,
            rust,
        });
    }
    print_propagations(&propagations);
    Ok(())
}

/// What `--metrics` and exported traces cost: the platform row (metrics on, no export)
/// against the same processes without `--metrics`, and with every span exported.
fn print_observability(rows: &[Row], exported: Option<(u64, u64)>) {
    let row = |name: &str| rows.iter().find(|r| r.name == name);
    let Some(bare) = row("platform-bare") else {
        return;
    };
    let chain = |r: &Row| -> f64 { r.figures.cpu_us_per_req[1..].iter().sum() };
    println!();
    for (name, what, goal) in [
        (
            "platform",
            "metrics (--metrics, never scraped)",
            " (goal ≤ 3%)",
        ),
        (
            "platform-traced",
            "metrics and every span exported over OTLP",
            "",
        ),
    ] {
        let Some(with) = row(name) else { continue };
        println!(
            "observability: {what}: chain CPU {:.0} µs/req vs {:.0} without = {:+.1}%{goal}; \
             p50 {} vs {} ({:.2}×)",
            chain(with),
            chain(bare),
            100.0 * (chain(with) / chain(bare) - 1.0),
            fmt(with.figures.p50),
            fmt(bare.figures.p50),
            with.figures.p50.as_secs_f64() / bare.figures.p50.as_secs_f64(),
        );
    }
    if let Some((exports, bytes)) = exported {
        println!(
            "observability: the OTLP receiver took {exports} exports, {:.1} MiB of spans",
            mib(bytes)
        );
    }
}

fn print_propagations(propagations: &[propagation::Propagation]) {
    let Some(first) = propagations.first() else {
        return;
    };
    println!();
    println!(
        "route propagation: commit returned → the changed route in the routing table of every \
         one of {} iris nodes (in this process, each with its own store connections), over {} \
         writes that change a service's port; goal ≤ {} ms:",
        propagation::NODES,
        first.every_node.len(),
        propagation::GOAL.as_millis(),
    );
    println!();
    println!(
        "| store, how nodes learn | every node p50 | every node p99 | every node max | first node p50 | writes within the goal |"
    );
    println!("|---|---|---|---|---|---|");
    for p in propagations {
        let mut every = p.every_node.clone();
        every.sort_unstable();
        let mut first = p.first_node.clone();
        first.sort_unstable();
        let pct = |sorted: &[Duration], q: f64| {
            sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
        };
        let within = every.iter().filter(|d| **d <= propagation::GOAL).count();
        println!(
            "| {} | {} | {} | {} | {} | {within}/{} |",
            p.store,
            fmt(pct(&every, 0.50)),
            fmt(pct(&every, 0.99)),
            fmt(every[every.len() - 1]),
            fmt(pct(&first, 0.50)),
            every.len(),
        );
    }
}

fn print_rows(rows: &[Row], concurrency: usize) {
    // Ratios need the direct row; with --only the single row is its own base.
    let Some(first) = rows.first() else {
        return;
    };
    let row = |name: &str| rows.iter().find(|r| r.name == name).map(|r| &r.figures);
    let base = row("direct").unwrap_or(&first.figures);
    let outside_chain = outside_chain(rows);
    println!();
    println!(
        "| target | processes | p50 c=1 | p99 c=1 | p99.9 c=1 | req/s c={concurrency} | CPU µs/req, all | CPU µs/req, chain | p50 × direct | req/s ÷ direct |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (name, processes, f) = (r.name, r.processes, &r.figures);
        let chain = chain_cpu(r, outside_chain.map(|(outside, _)| outside))
            .map_or("–".to_owned(), |cpu| format!("{cpu:.0}"));
        println!(
            "| {name} | {processes} | {} | {} | {} | {:.0} | {:.0} | {chain} | {:.1}× | {:.2} |",
            fmt(f.p50),
            fmt(f.p99),
            fmt(f.p999),
            f.rps,
            f.total_cpu_us_per_req(),
            f.p50.as_secs_f64() / base.p50.as_secs_f64(),
            f.rps / base.rps,
        );
    }
    if let (Some((outside, whose)), true) = (outside_chain, row("binding").is_some()) {
        println!(
            "(chain: the platform row's own processes, measured each; the binding row's all − \
             this process's share without the chain (load client, origin, DNS), {whose} \
             {outside:.0} µs/req; the workerd row's, the workerd process)"
        );
    }
}

/// This process's CPU µs per request that is not the chain (load client, origin, DNS), and
/// whose figure it is: as the platform row measured it, at the same request rate (its chain
/// runs in other processes); else the direct row's, which is cheaper per request at its much
/// higher rate.
fn outside_chain(rows: &[Row]) -> Option<(f64, &'static str)> {
    let row = |name: &str| rows.iter().find(|r| r.name == name).map(|r| &r.figures);
    match (row("platform"), row("direct")) {
        (Some(platform), _) => Some((platform.cpu_us_per_req[0], "the platform row's")),
        (None, Some(direct)) => Some((direct.total_cpu_us_per_req(), "the direct row's")),
        (None, None) => None,
    }
}

/// CPU µs per request of a row's chain: its processes other than this one where it has some
/// (platform, workerd); for the binding row, whose chain runs in this process, all of this
/// process's less `outside` ([`outside_chain`]).
fn chain_cpu(row: &Row, outside: Option<f64>) -> Option<f64> {
    let f = &row.figures;
    if row.names.len() > 1 {
        Some(f.cpu_us_per_req[1..].iter().sum())
    } else if row.name == "binding" {
        outside.map(|outside| f.total_cpu_us_per_req() - outside)
    } else {
        None
    }
}

/// Each row's processes over its throughput run: CPU, context switches and system calls per
/// request, and resident memory after it.
fn print_processes(rows: &[Row]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "| target | process | CPU µs/req | context switches/req | syscalls/req | allocations/req | RSS after load | PSS after load |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        let f = &row.figures;
        let syscalls = |i: usize| match &f.syscalls_per_req {
            Some(s) => format!("{:.1}", s[i]),
            None => "– (no perf)".to_owned(),
        };
        for (i, name) in row.names.iter().enumerate() {
            let allocations = if i == 0 {
                format!("{:.0} ({:.0} B)", f.allocs_per_req, f.alloc_bytes_per_req)
            } else {
                "–".to_owned()
            };
            println!(
                "| {} | {name} | {:.0} | {:.1} | {} | {allocations} | {:.1} MiB | {:.1} MiB |",
                row.name,
                f.cpu_us_per_req[i],
                f.switches_per_req[i],
                syscalls(i),
                mib(f.rss_after[i]),
                mib(f.pss_after[i]),
            );
        }
        if row.names.len() > 2 {
            println!(
                "| {} | all but this | {:.0} | {:.1} | {} | – | {:.1} MiB | {:.1} MiB |",
                row.name,
                f.cpu_us_per_req[1..].iter().sum::<f64>(),
                f.switches_per_req[1..].iter().sum::<f64>(),
                match &f.syscalls_per_req {
                    Some(s) => format!("{:.1}", s[1..].iter().sum::<f64>()),
                    None => "–".to_owned(),
                },
                mib(f.rss_after[1..].iter().sum()),
                mib(f.pss_after[1..].iter().sum()),
            );
        }
        if let Some(svg) = &f.flamegraph {
            println!(
                "| {} | flamegraph: {} | | | | | | |",
                row.name,
                svg.display()
            );
        }
    }
    println!(
        "(\"this\" is the bench: load client, origin and DNS, and for the binding and relayed \
         rows every component of the chain too; allocations are counted in it only)"
    );
    let row = |name: &str| rows.iter().find(|r| r.name == name).map(|r| &r.figures);
    if let (Some(binding), Some(outside)) = (row("binding"), row("platform").or(row("direct"))) {
        println!(
            "allocations per request of the chain in one process (binding row − the bench's own \
             share): {:.0}, {:.0} bytes",
            binding.allocs_per_req - outside.allocs_per_req,
            binding.alloc_bytes_per_req - outside.alloc_bytes_per_req,
        );
    }
}

/// The performance goals, for the platform row (the chain as separate processes) and the
/// binding row (the same chain in one process), against the direct and workerd rows.
fn print_goals(rows: &[Row], instantiation: Option<Duration>) {
    let row = |name: &str| rows.iter().find(|r| r.name == name);
    let (direct, workerd) = (row("direct"), row("workerd"));
    let ours: Vec<&Row> = ["binding", "platform", "platform-js"]
        .iter()
        .filter_map(|name| row(name))
        .collect();
    if ours.is_empty() {
        return;
    }
    let outside = outside_chain(rows).map(|(outside, _)| outside);
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!();
    println!("| goal | target | figure | goal value | |");
    println!("|---|---|---|---|---|");
    for ours in ours {
        let f = &ours.figures;
        // The chain's own processes: the platform row's children; in one process, all of
        // it minus the bench's own share as the platform row measured it.
        let Some(cpu) = chain_cpu(ours, outside) else {
            continue;
        };
        let memory = (ours.names.len() > 1).then(|| {
            (
                f.pss_after[1..].iter().sum::<u64>(),
                f.rss_after[1..].iter().sum::<u64>(),
            )
        });
        let name = ours.name;
        let workerd_cpu = workerd.and_then(|w| chain_cpu(w, None));
        println!(
            "| CPU µs/req of the chain, c=32 | {name} | {cpu:.0} | ≤ 200{} | {} |",
            workerd_cpu.map_or(String::new(), |w| format!(" (workerd here: {w:.0})")),
            verdict(cpu <= 200.0),
        );
        if let Some(w) = workerd {
            println!(
                "| req/s c=32 ≥ workerd's | {name} | {:.0} | ≥ {:.0} | {} |",
                f.rps,
                w.figures.rps,
                verdict(f.rps >= w.figures.rps),
            );
        }
        if let Some(d) = direct {
            let ratio = f.p50.as_secs_f64() / d.figures.p50.as_secs_f64();
            println!(
                "| p50 c=1 ≤ 8× direct | {name} | {} = {ratio:.1}× | ≤ {} | {} |",
                fmt(f.p50),
                fmt(d.figures.p50 * 8),
                verdict(ratio <= 8.0),
            );
        }
        println!(
            "| p99 c=1 ≤ 3× our p50 | {name} | {} = {:.1}× | ≤ {} | {} |",
            fmt(f.p99),
            f.p99.as_secs_f64() / f.p50.as_secs_f64(),
            fmt(f.p50 * 3),
            verdict(f.p99 <= f.p50 * 3),
        );
        if let Some((pss, rss)) = memory {
            println!(
                "| memory of our processes after load (PSS: the binary's shared pages once; RSS sum {:.0} MiB) | {name} | {:.1} MiB | ≤ 80 MiB | {} |",
                mib(rss),
                mib(pss),
                verdict(mib(pss) <= 80.0),
            );
        }
    }
    if let Some(p50) = instantiation {
        println!(
            "| instantiation p50 (a fresh instance; reused instances skip it) | binding | {:.1} µs | ≤ 10 µs | {} |",
            p50.as_secs_f64() * 1e6,
            verdict(p50 <= Duration::from_micros(10)),
        );
    }
}

fn print_routing(routing: &routing::Routing) {
    println!();
    println!(
        "routing: a RouteTable of {} scripts ({} route patterns, and each script's default and \
         short host), built in {}; per lookup, p50/p99 over batches of different hosts, \
         against the {} µs budget:",
        routing.scripts,
        routing.routes,
        fmt(routing.build),
        routing::BUDGET.as_micros(),
    );
    println!();
    println!("| lookup | finds a script | ns p50 | ns p99 | share of the budget (p99) |");
    println!("|---|---|---|---|---|");
    for l in &routing.lookups {
        println!(
            "| {} | {} | {} | {} | {:.2}% |",
            l.kind,
            if l.matching { "yes" } else { "no" },
            l.p50.as_nanos(),
            l.p99.as_nanos(),
            100.0 * l.p99.as_secs_f64() / routing::BUDGET.as_secs_f64(),
        );
    }
}

fn print_redeploys(r: &redeploy::Redeploys) {
    println!();
    println!(
        "redeploy → served by all {} runtimes (commit → every runtime's /status lists the new \
         version), under load on every runtime:",
        r.runtimes
    );
    for (kind, samples) in [
        ("same module", &r.same_module),
        ("new module, compiled by each runtime", &r.new_module),
    ] {
        let mut sorted = samples.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            continue;
        }
        let pct = |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
        println!(
            "  {kind}: p50 {}, p99 {}, max {} over {} redeploys",
            fmt(pct(0.50)),
            fmt(pct(0.99)),
            fmt(sorted[sorted.len() - 1]),
            sorted.len(),
        );
    }
    println!(
        "  requests during the redeploys: {} answered 200, {} failed",
        r.ok, r.failed
    );
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}
