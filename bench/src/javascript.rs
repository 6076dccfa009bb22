//! The JavaScript row (`platform-js`): the platform row's chain with `examples/proxy-js` as
//! the script, built from its JS entry into a component as `wvpc deploy` builds it
//! ([`wvpc_runtime::ScriptConfig::component`]), and its figures against the Rust proxy's
//! (`platform`) and workerd's (which runs the same JavaScript shape) in the same run.
//!
//! A JavaScript component serves one request per instance (StarlingMonkey creates its fetch
//! event once per instance), so every request instantiates it: the instantiation of both
//! scripts is measured here too, in this process, with nothing else running.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wvpc_runtime::{ScriptConfig, VpcServiceBinding};

use crate::Row;

/// The goal: a JavaScript script costs at most this many times the Rust script per request.
pub const GOAL_RATIO: f64 = 2.0;

/// The script config of a proxy: `main` (a component, or a JavaScript entry built when the
/// runtime loads it), bound to a service as `API`.
pub fn config(main: &str) -> ScriptConfig {
    ScriptConfig {
        name: "bench".into(),
        main: main.into(),
        vpc_services: vec![VpcServiceBinding {
            binding: "API".into(),
            // Never dialled by what uses this config (instantiation, the build).
            service_id: uuid::Uuid::nil(),
        }],
        vpc_networks: Vec::new(),
        limits: Default::default(),
    }
}

/// `examples/proxy-js` built into a component (cached by content under
/// `$WVPC_JS_CACHE_DIR`): its path and bytes.
pub async fn build_proxy() -> anyhow::Result<(PathBuf, Vec<u8>)> {
    let config = config(wvpc_tests::guests::PROXY_JS);
    let started = Instant::now();
    let wasm = tokio::task::spawn_blocking(move || config.component())
        .await?
        .with_context(|| format!("building {}", wvpc_tests::guests::PROXY_JS))?;
    let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
    eprintln!(
        "built {} into {} ({:.1} MB) in {:.1} s",
        wvpc_tests::guests::PROXY_JS,
        wasm.display(),
        bytes.len() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok((wasm, bytes))
}

/// Instantiations of one script, back to back, each a fresh store and instance dropped at
/// once: what a request that gets a fresh instance pays before its handler runs.
#[derive(Debug, Clone, Copy)]
pub struct Instantiation {
    pub p50: Duration,
    pub p99: Duration,
    pub count: usize,
    /// Whether the runtime gives every request of this script a fresh instance.
    pub every_request: bool,
}

/// Measures [`Instantiation`] of `config`'s script for up to `duration` (2 s at most), after
/// half a second of warm-up.
pub async fn measure_instantiation(
    config: ScriptConfig,
    duration: Duration,
) -> anyhow::Result<Instantiation> {
    let options = wvpc_runtime::RuntimeOptions {
        // Never dialled: instantiation makes no fetch.
        binding_workers: vec!["127.0.0.1:9".parse()?],
        binding_secret: None,
        account: "bench".into(),
        exchange_tap: None,
        metrics: None,
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
    Ok(Instantiation {
        p50: pct(0.50),
        p99: pct(0.99),
        count: samples.len(),
        every_request: runtime.one_request_per_instance(),
    })
}

/// What the JavaScript section prints.
pub struct Report<'a> {
    pub rows: &'a [Row],
    /// The component's size in bytes.
    pub component_bytes: usize,
    pub js: Instantiation,
    pub rust: Instantiation,
}

/// Prints the JavaScript section: instantiation, the per-process and chain CPU, latency and
/// throughput of `platform-js` against `platform` and `workerd`, and the goal.
pub fn print(report: &Report<'_>) {
    let row = |name: &str| report.rows.iter().find(|r| r.name == name);
    let Some(js) = row("platform-js") else {
        return;
    };
    let (rust, workerd) = (row("platform"), row("workerd"));
    let (ji, ri) = (&report.js, &report.rust);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!();
    println!(
        "JavaScript script: examples/proxy-js, built from src/index.js into a {:.1} MB \
         component (as `wvpc deploy` builds it), on the platform row's chain. {}",
        report.component_bytes as f64 / 1e6,
        if ji.every_request {
            "It serves one request per instance (StarlingMonkey creates its fetch event once \
             per instance): EVERY REQUEST INSTANTIATES IT."
        } else {
            "Its instances are reused across requests."
        },
    );
    println!(
        "instantiation (a fresh store and instance from the pre-instantiated component): JS \
         p50 {:.1} µs, p99 {:.1} µs over {} instantiations; Rust p50 {:.1} µs, p99 {:.1} µs over \
         {} ({}); JS ÷ Rust {:.1}×",
        us(ji.p50),
        us(ji.p99),
        ji.count,
        us(ri.p50),
        us(ri.p99),
        ri.count,
        if ri.every_request {
            "every request pays it"
        } else {
            "paid once per instance, reused by many requests"
        },
        ji.p50.as_secs_f64() / ri.p50.as_secs_f64(),
    );
    let ratio = |a: f64, b: f64| format!("{:.2}×", a / b);
    let (jf, chain_js) = (
        &js.figures,
        js.figures.cpu_us_per_req[1..].iter().sum::<f64>(),
    );
    println!();
    println!(
        "| per request | platform (Rust) | platform-js | JS ÷ Rust | workerd | JS ÷ workerd |"
    );
    println!("|---|---|---|---|---|---|");
    let cell = |v: Option<f64>, unit: &str| v.map_or("–".to_owned(), |v| format!("{v:.0}{unit}"));
    let vs = |v: f64, other: Option<f64>| other.map_or("–".to_owned(), |o| ratio(v, o));
    let figure = |label: &str, v: f64, unit: &str, r: Option<f64>, w: Option<f64>| {
        println!(
            "| {label} | {} | {v:.0}{unit} | {} | {} | {} |",
            cell(r, unit),
            vs(v, r),
            cell(w, unit),
            vs(v, w),
        );
    };
    figure(
        "instantiation p50 (µs; JS: every request)",
        us(ji.p50),
        "",
        Some(us(ri.p50)),
        None,
    );
    for (i, name) in js.names.iter().enumerate().skip(1) {
        let r = rust.and_then(|r| {
            let at = r.names.iter().position(|n| n == name)?;
            Some(r.figures.cpu_us_per_req[at])
        });
        figure(
            &format!("CPU µs/req, {name}"),
            jf.cpu_us_per_req[i],
            "",
            r,
            None,
        );
    }
    let chain = |r: &Row| r.figures.cpu_us_per_req[1..].iter().sum::<f64>();
    figure(
        "CPU µs/req, chain (c=32)",
        chain_js,
        "",
        rust.map(chain),
        workerd.map(chain),
    );
    figure(
        "p50 c=1 (µs)",
        us(jf.p50),
        "",
        rust.map(|r| us(r.figures.p50)),
        workerd.map(|w| us(w.figures.p50)),
    );
    figure(
        "req/s c=32",
        jf.rps,
        "",
        rust.map(|r| r.figures.rps),
        workerd.map(|w| w.figures.rps),
    );
    let runtime_rss = |r: &Row| {
        let at = r.names.iter().position(|n| *n == "runtime")?;
        Some(crate::usage::mib(r.figures.rss_after[at]))
    };
    if let Some(js_rss) = runtime_rss(js) {
        figure(
            "runtime RSS after load (MiB)",
            js_rss,
            "",
            rust.and_then(runtime_rss),
            None,
        );
    }
    let Some(rust) = rust else {
        println!("(no platform row in this run: add `platform` to --only for the JS ÷ Rust goal)");
        return;
    };
    let runtime_cpu = |r: &Row| {
        r.names
            .iter()
            .position(|n| *n == "runtime")
            .map(|at| r.figures.cpu_us_per_req[at])
    };
    if let (Some(js_rt), Some(rust_rt)) = (runtime_cpu(js), runtime_cpu(rust)) {
        println!(
            "the JS script's own cost: +{:.0} CPU µs/req in the runtime (JS − Rust), of which \
             instantiation ≈ {:.0} µs",
            js_rt - rust_rt,
            if ji.every_request { us(ji.p50) } else { 0.0 },
        );
    }
    let verdict = |r: f64| if r <= GOAL_RATIO { "met" } else { "NOT met" };
    let cpu = chain_js / chain(rust);
    let p50 = jf.p50.as_secs_f64() / rust.figures.p50.as_secs_f64();
    println!();
    println!("| goal | figure | goal value | |");
    println!("|---|---|---|---|");
    println!(
        "| JS script per request ≤ {GOAL_RATIO}× the Rust script: CPU µs/req of the chain | {chain_js:.0} = {cpu:.2}× | ≤ {:.0} | {} |",
        GOAL_RATIO * chain(rust),
        verdict(cpu),
    );
    println!(
        "| JS script per request ≤ {GOAL_RATIO}× the Rust script: p50 c=1 | {} = {p50:.2}× | ≤ {} | {} |",
        crate::fmt(jf.p50),
        crate::fmt(rust.figures.p50.mul_f64(GOAL_RATIO)),
        verdict(p50),
    );
}
