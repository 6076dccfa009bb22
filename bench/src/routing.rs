//! What finding the script of a request costs a runtime that hosts many: a
//! [`RouteTable`] of [`SCRIPTS`] scripts (each with its default host and one route pattern —
//! exact hosts, wildcards, path prefixes), timed per kind of lookup, matching and not.
//!
//! Each kind is looked up in batches of [`BATCH`] different hosts; the figure is the p50 (and
//! p99) over batches of the time per lookup, against the per-request budget [`BUDGET`].

use std::hint::black_box;
use std::time::{Duration, Instant};

use wvpc_runtime::{RoutePattern, RouteTable, ScriptKey, ScriptRoutes};

/// Scripts in the table, each with one route.
pub const SCRIPTS: usize = 10_000;
/// Accounts the scripts belong to.
const ACCOUNTS: usize = 1_000;
/// Lookups per timed batch.
const BATCH: usize = 1_000;
/// How long each kind is looked up.
const PER_KIND: Duration = Duration::from_millis(300);
/// What a lookup may cost per request.
pub const BUDGET: Duration = Duration::from_micros(5);

/// One kind of lookup's figures.
#[derive(Debug)]
pub struct LookupFigures {
    /// What is looked up.
    pub kind: &'static str,
    /// Whether it finds a script.
    pub matching: bool,
    /// Per lookup, p50 over batches.
    pub p50: Duration,
    /// Per lookup, p99 over batches.
    pub p99: Duration,
}

/// The table's build time and every kind's figures.
#[derive(Debug)]
pub struct Routing {
    /// Route patterns in the table.
    pub routes: usize,
    /// Scripts in the table, each with its default host
    /// (`<script>.<subdomain>.<domain>`) and short host (`<script>.<domain>`).
    pub scripts: usize,
    /// [`RouteTable::build`] of the whole set (what a runtime does on every change).
    pub build: Duration,
    /// Per kind of lookup.
    pub lookups: Vec<LookupFigures>,
}

/// The route of script `i`: four shapes in turn.
fn route(i: usize) -> String {
    match i % 4 {
        0 => format!("api{i}.example.com/*"),
        1 => format!("*.tenant{i}.example.net/*"),
        2 => format!("shop{i}.example.org/api/*"),
        _ => format!("www{i}.example.dev/"),
    }
}

/// Builds the table and times every kind of lookup.
pub fn measure() -> anyhow::Result<Routing> {
    let keys: Vec<ScriptKey> = (0..SCRIPTS)
        .map(|i| ScriptKey::new(format!("account-{}", i % ACCOUNTS), format!("script-{i}")))
        .collect();
    let subdomains: Vec<String> = (0..SCRIPTS)
        .map(|i| format!("acct{}", i % ACCOUNTS))
        .collect();
    let routes: Vec<Vec<RoutePattern>> = (0..SCRIPTS)
        .map(|i| Ok(vec![RoutePattern::parse(&route(i))?]))
        .collect::<anyhow::Result<_>>()?;
    let scripts = || {
        (0..SCRIPTS).map(|i| ScriptRoutes {
            key: &keys[i],
            subdomain: &subdomains[i],
            workers_dev: true,
            routes: &routes[i],
        })
    };
    let started = Instant::now();
    let table = RouteTable::build("workers.localhost", scripts());
    let build = started.elapsed();
    anyhow::ensure!(
        table.conflicts().is_empty(),
        "the bench's routes conflict: {:?}",
        &table.conflicts()[..1]
    );

    // (kind, matching, host and path of the i-th lookup)
    type Request = fn(usize) -> (String, &'static str);
    let kinds: [(&'static str, bool, Request); 7] = [
        ("default host <script>.<subdomain>.<domain>", true, |i| {
            (
                format!("script-{i}.acct{}.workers.localhost", i % ACCOUNTS),
                "/hello",
            )
        }),
        ("route, exact host", true, |i| {
            (format!("api{}.example.com", i * 4), "/v1/items")
        }),
        ("route, wildcard host", true, |i| {
            (format!("eu.tenant{}.example.net", i * 4 + 1), "/")
        }),
        ("route, path prefix", true, |i| {
            (
                format!("shop{}.example.org", i * 4 + 2),
                "/api/orders?page=2",
            )
        }),
        ("unknown host", false, |i| {
            (format!("nothing{i}.example.invalid"), "/")
        }),
        ("unknown script under the workers domain", false, |i| {
            (
                format!("missing{i}.acct{}.workers.localhost", i % ACCOUNTS),
                "/",
            )
        }),
        ("known host, path outside its routes", false, |i| {
            (format!("shop{}.example.org", i * 4 + 2), "/checkout")
        }),
    ];
    let mut lookups = Vec::new();
    for (kind, matching, request) in kinds {
        let requests: Vec<(String, &str)> =
            (0..BATCH).map(|i| request(i % (SCRIPTS / 4))).collect();
        for (host, path) in &requests {
            anyhow::ensure!(
                table.lookup(host, path).is_some() == matching,
                "{kind}: {host}{path} {} a script",
                if matching { "finds no" } else { "finds" }
            );
        }
        let mut per_lookup = Vec::new();
        let until = Instant::now() + PER_KIND;
        while Instant::now() < until {
            let started = Instant::now();
            for (host, path) in &requests {
                black_box(table.lookup(black_box(host), black_box(path)));
            }
            per_lookup.push(started.elapsed() / BATCH as u32);
        }
        per_lookup.sort_unstable();
        let pct =
            |p: f64| per_lookup[((per_lookup.len() as f64 * p) as usize).min(per_lookup.len() - 1)];
        lookups.push(LookupFigures {
            kind,
            matching,
            p50: pct(0.50),
            p99: pct(0.99),
        });
    }
    Ok(Routing {
        routes: SCRIPTS,
        scripts: SCRIPTS,
        build,
        lookups,
    })
}
