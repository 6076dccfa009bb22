//! Every process's `--metrics` page as an operator scrapes it: iris, `wvpc tunnel run`, the
//! binding-worker and the runtime, each on `127.0.0.1:0`, after traffic that succeeds and
//! traffic that fails. Each page must pass `promtool check metrics` (when promtool is
//! installed) and show the figures a user looks for.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;

use super::*;

/// The four platform processes, each with `--metrics 127.0.0.1:0`.
async fn platform_with_metrics() -> Platform {
    wvpc_tests::trace_init();
    let state = TempDir::new("platform-metrics");
    let token = Directory::open(state.path())
        .unwrap()
        .create_token("deployer", Role::Admin, None)
        .unwrap()
        .1;
    let any = || "127.0.0.1:0".to_owned();
    let start = |name, args: &[&str]| {
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        Proc::start(state.path(), name, args)
    };
    let directory = start("directory", &["directory", "--listen", &any()]).await;
    let iris = start(
        "iris",
        &[
            "iris",
            "--listen",
            &any(),
            "--edge-listen",
            &any(),
            "--node-name",
            "iris-test",
            "--metrics",
            &any(),
        ],
    )
    .await;
    let binding_worker = start(
        "binding-worker",
        &[
            "binding-worker",
            "--listen",
            &any(),
            "--iris",
            &iris.addr(0).to_string(),
            "--metrics",
            &any(),
        ],
    )
    .await;
    let runtime = start(
        "runtime",
        &[
            "runtime",
            "--listen",
            &any(),
            "--binding-worker",
            &binding_worker.addr(0).to_string(),
            "--metrics",
            &any(),
        ],
    )
    .await;
    Platform {
        state,
        directory,
        iris,
        more_iris: Vec::new(),
        binding_worker,
        runtime,
        token,
        directory_url: None,
    }
}

/// The address a process printed as `  metrics on http://IP:PORT/metrics` after its ready
/// line (it prints it before it flushes the ready output).
async fn metrics_printed(proc: &Proc) -> SocketAddr {
    within(
        &format!("wvpc {} printing its metrics address", proc.name),
        async {
            loop {
                let found = proc
                    .stdout
                    .lock()
                    .unwrap()
                    .iter()
                    .find_map(|line| metrics_address(line));
                if let Some(addr) = found {
                    return addr;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await
}

fn metrics_address(line: &str) -> Option<SocketAddr> {
    line.trim()
        .strip_prefix("metrics on http://")?
        .strip_suffix("/metrics")?
        .parse()
        .ok()
}

/// `wvpc tunnel run --metrics 127.0.0.1:0` for `credentials`, once registered, with the
/// address of its metrics listener.
async fn connector_with_metrics(
    platform: &Platform,
    credentials: &wvpc_directory::Credentials,
) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wvpc"))
        .arg("--state")
        .arg(platform.state())
        .args(["tunnel", "run", "--ha-connections", "1", "--edge"])
        .arg(platform.edge().to_string())
        .args([
            "--token",
            &credentials.to_token(),
            "--metrics",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("starting wvpc tunnel run");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let metrics = within("wvpc tunnel run registered", async {
        let mut metrics = None;
        loop {
            match lines.next_line().await {
                Ok(Some(line)) if line.starts_with("registered") => break metrics,
                Ok(Some(line)) => metrics = metrics.or(metrics_address(&line)),
                _ => panic!("wvpc tunnel run exited before it registered"),
            }
        }
    })
    .await;
    let metrics = metrics.expect("wvpc tunnel run printed no `metrics on` line");
    (child, metrics)
}

/// Runs `promtool check metrics` on `page` (stdin); `Err` with its output when it finds
/// problems. Without promtool, says so and passes (CI installs it).
async fn promtool_check(what: &str, page: &str) -> Result<(), String> {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "SKIPPED: promtool is not installed, {what}'s /metrics is not linted \
                 (install Debian's `prometheus` package, as scripts/ensure-toolchain does)"
            );
            return Ok(());
        }
        Err(err) => panic!("running promtool: {err}"),
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(page.as_bytes()).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics failed on {what}'s /metrics ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Asserts that the sample `name` (labels included) is above zero in `page`.
fn assert_positive(what: &str, page: &str, name: &str) {
    assert!(
        sample(page, name) > 0.0,
        "{what}: {name} missing or 0 in\n{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_serves_metrics_that_promtool_accepts_with_successes_and_failures_by_code() {
    let net = PrivateNetwork::start(&[("a.internal", "127.0.0.2")]).await;
    let platform = platform_with_metrics().await;
    let directory = platform.directory();
    let account = directory.account_id().to_owned();
    let (office, good) = tunnel_and_service(&directory, "office", "a", "a.internal", &net);
    let bad = unresolvable_service(&directory, office.tunnel_id, &net);
    let (_connector, connector_metrics) = connector_with_metrics(&platform, &office).await;

    for (script, service) in [("proxy", good), ("broken", bad)] {
        platform
            .deploy(&platform.token, script, guests::PROXY, service, "")
            .await
            .unwrap();
    }
    let proxy = "proxy.local.workers.localhost";
    let broken = "broken.local.workers.localhost";
    platform.until(proxy, "/first", 200, "").await;
    for i in 0..3 {
        let reply = platform.get(proxy, &format!("/again/{i}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    platform.until(broken, "/nowhere", 502, "dns_error").await;
    let unrouted = platform.get("nobody.local.workers.localhost", "/").await;
    assert_eq!(unrouted.status, 404);

    let pages = [
        ("iris", metrics_printed(&platform.iris).await),
        ("wvpc tunnel run", connector_metrics),
        (
            "binding-worker",
            metrics_printed(&platform.binding_worker).await,
        ),
        ("runtime", metrics_printed(&platform.runtime).await),
    ];
    let mut scraped = Vec::new();
    let mut problems = Vec::new();
    for (what, addr) in pages {
        let page = wvpc_tests::client::scrape(addr, "/metrics").await;
        if let Err(problem) = promtool_check(what, &page).await {
            problems.push(problem);
        }
        scraped.push(page);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // What an operator reads about them: every family served is in docs/operations.md under
    // the name it is served as (`# TYPE` names a counter without its `_total`).
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
    )
    .unwrap();
    let undocumented: Vec<String> = scraped
        .iter()
        .flat_map(|page| page.lines())
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| match kind {
            "counter" if !name.ends_with("_total") => format!("{name}_total"),
            _ => name.to_owned(),
        })
        .filter(|name| !docs.contains(&format!("`{name}")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/operations.md does not list {undocumented:?}"
    );
    let [iris, connector, binding_worker, runtime] = scraped.try_into().unwrap();

    // iris: the service's CONNECTs, and the unresolvable one's NXDOMAIN as a client error.
    let (good, bad) = (good.to_string(), bad.to_string());
    assert_positive(
        "iris",
        &iris,
        &format!("wvpc_iris_service_connections_total{{service=\"{good}\",outcome=\"success\"}}"),
    );
    assert_positive(
        "iris",
        &iris,
        &format!(
            "wvpc_iris_service_errors_total{{service=\"{bad}\",category=\"client\",code=\"dns_error\"}}"
        ),
    );
    assert_positive(
        "wvpc tunnel run",
        &connector,
        "wvpc_connector_streams_total",
    );
    assert_positive(
        "wvpc tunnel run",
        &connector,
        "wvpc_connector_origin_dial_seconds_count",
    );

    // The binding-worker: calls by outcome and code, CONNECT time, origin TTFB, connections.
    for name in [
        format!(
            "wvpc_binding_worker_calls_total{{service=\"{good}\",call=\"fetch\",outcome=\"success\"}}"
        ),
        format!(
            "wvpc_binding_worker_errors_total{{service=\"{bad}\",call=\"fetch\",category=\"client\",code=\"dns_error\"}}"
        ),
        format!("wvpc_binding_worker_iris_connect_seconds_count{{service=\"{good}\"}}"),
        format!("wvpc_binding_worker_origin_ttfb_seconds_count{{service=\"{good}\"}}"),
        format!(
            "wvpc_binding_worker_origin_connections_total{{service=\"{good}\",connection=\"opened\"}}"
        ),
    ] {
        assert_positive("binding-worker", &binding_worker, &name);
    }
    let ok = sample(
        &binding_worker,
        &format!(
            "wvpc_binding_worker_calls_total{{service=\"{good}\",call=\"fetch\",outcome=\"success\"}}"
        ),
    );
    assert!(ok >= 4.0, "4 fetches reached the origin, counted {ok}");

    // The runtime: requests by outcome, instantiation, binding fetch time and failures.
    let script = |name: &str| format!("account=\"{account}\",script=\"{name}\"");
    for name in [
        format!(
            "wvpc_runtime_requests_total{{{},outcome=\"ok\"}}",
            script("proxy")
        ),
        format!("wvpc_runtime_request_seconds_count{{{}}}", script("proxy")),
        format!(
            "wvpc_runtime_instantiate_seconds_count{{{}}}",
            script("proxy")
        ),
        format!(
            "wvpc_runtime_binding_fetch_seconds_count{{{},binding=\"API\"}}",
            script("proxy")
        ),
        format!(
            "wvpc_runtime_binding_calls_total{{{},binding=\"API\",outcome=\"success\"}}",
            script("proxy")
        ),
        format!(
            "wvpc_runtime_binding_errors_total{{{},binding=\"API\",category=\"client\",code=\"dns_error\"}}",
            script("broken")
        ),
        "wvpc_runtime_unrouted_requests_total".to_owned(),
    ] {
        assert_positive("runtime", &runtime, &name);
    }

    // The runtime's status lists both scripts with their account, the broken one's failures
    // as its script's own (the script answered 502 itself: a success for the runtime).
    let status =
        wvpc_tests::client::scrape(metrics_printed(&platform.runtime).await, "/status.json").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["node"]["role"], "runtime");
    let scripts = status["scripts"].as_array().unwrap();
    let listed = |name: &str| {
        scripts
            .iter()
            .find(|s| s["id"] == name)
            .unwrap_or_else(|| panic!("{name} missing from the status: {status}"))
    };
    assert_eq!(listed("proxy")["account"], account.as_str());
    assert!(listed("proxy")["total_requests"].as_u64().unwrap() >= 4);
    assert!(listed("broken")["total_requests"].as_u64().unwrap() >= 1);
}
