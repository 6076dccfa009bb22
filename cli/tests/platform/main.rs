//! The platform as separate processes, as an operator runs it: `wvpc directory`, `wvpc iris`,
//! `wvpc binding-worker` and `wvpc runtime` on one shared `--state`, scripts deployed with
//! `wvpc deploy` and served by Host, connectors registered over QUIC, and real origins and a
//! real DNS server behind the tunnels.
//!
//! Each scenario kills and restarts what it needs (SIGKILL: nothing gets to clean up).
//! [`cluster`] runs several iris nodes on one PostgreSQL directory.

mod cluster;
mod javascript;
mod metrics;
mod networks;
mod service_metrics;
mod traces;
mod wrangler;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;
use wvpc_connector::ConnectorConfig;
use wvpc_directory::{Credentials, Directory, HostInput, ResolverNetworkInput, Role, ServiceInput};
use wvpc_tests::client::{Reply, get_host};
use wvpc_tests::dns::{DnsServer, DnsTable};
use wvpc_tests::origin::Origin;
use wvpc_tests::real::RunningConnector;
use wvpc_tests::{TempDir, guests, within};

/// Every `IP:PORT` in a line, in order (how the addresses of `:0` listeners are read from
/// the ready lines).
fn addrs_in(line: &str) -> Vec<SocketAddr> {
    line.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .filter_map(|word| word.trim_matches(|c| c == '.' || c == ':').parse().ok())
        .collect()
}

/// The JavaScript build cache (npm toolchain, built components) the tests share:
/// `$WVPC_JS_CACHE_DIR`, else `<target>/wvpc-js`.
fn js_cache_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("WVPC_JS_CACHE_DIR") {
        return dir.into();
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| manifest.parent().unwrap().join("target"))
        .join("wvpc-js")
}

/// Spans only leave a process with `--otlp-endpoint` (the environment's endpoint is not
/// taken); then they go out within 50 ms, not the batch processor's default 5 s.
const EXPORT_ENV: [(&str, &str); 1] = [("OTEL_BSP_SCHEDULE_DELAY", "50")];

/// One `wvpc` process of the platform.
struct Proc {
    name: &'static str,
    /// The network namespace it runs in (`ip netns exec`), when not the test's.
    netns: Option<String>,
    args: Vec<String>,
    child: Child,
    /// The addresses of its ready line.
    addrs: Vec<SocketAddr>,
    /// Its stdout after the ready line (script output of a runtime).
    stdout: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proc {
    async fn start(state: &Path, name: &'static str, args: Vec<String>) -> Proc {
        Self::start_in(None, state, name, args).await
    }

    /// Starts it inside network namespace `netns` when given.
    async fn start_in(
        netns: Option<&str>,
        state: &Path,
        name: &'static str,
        args: Vec<String>,
    ) -> Proc {
        let wvpc = env!("CARGO_BIN_EXE_wvpc");
        let mut command = match netns {
            // `ip netns exec` execs the program: the child's pid is wvpc's.
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, wvpc]);
                command
            }
            None => Command::new(wvpc),
        };
        let mut child = command
            .arg("--state")
            .arg(state)
            .args(&args)
            // Failures the scenarios cause on purpose log warnings by the hundred.
            .env("RUST_LOG", "error")
            // JavaScript uploads are built with the toolchain cached under the target dir.
            .env("WVPC_JS_CACHE_DIR", js_cache_dir())
            .envs(EXPORT_ENV)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting wvpc {name}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = within(&format!("wvpc {name} ready"), async {
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) if line.starts_with("ready") => break line,
                    Ok(Some(_)) => {}
                    _ => panic!("wvpc {name} exited before it was ready"),
                }
            }
        })
        .await;
        let stdout: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let collected = stdout.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        Proc {
            name,
            netns: netns.map(str::to_owned),
            args,
            child,
            addrs: addrs_in(&ready),
            stdout,
        }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    /// SIGKILL: the process gets no chance to clean up.
    async fn kill(&mut self) {
        self.child.kill().await.expect("killing a component");
    }

    /// Starts it again with the same arguments, on the addresses it had (so that whoever
    /// points at it finds it again).
    async fn restart(&mut self, state: &Path) {
        let mut args = self.args.clone();
        let had = self.addrs.clone();
        // Ask for the ports it had instead of :0.
        let mut next = had.iter();
        for arg in &mut args {
            if arg.ends_with(":0")
                && let Some(addr) = next.next()
            {
                *arg = addr.to_string();
            }
        }
        *self = Proc::start_in(self.netns.as_deref(), state, self.name, args).await;
        assert_eq!(
            self.addrs[..had.len().min(self.addrs.len())],
            had[..had.len().min(self.addrs.len())]
        );
    }
}

/// A private network: one origin per address and a DNS server naming them.
struct PrivateNetwork {
    dns: DnsServer,
    origins: Vec<(String, Origin)>,
}

impl PrivateNetwork {
    /// Origins named `name` on `ip`, for each pair.
    async fn start(hosts: &[(&str, &str)]) -> PrivateNetwork {
        let table = DnsTable::new();
        let mut origins = Vec::new();
        for (name, ip) in hosts {
            let origin = Origin::start(ip).await.expect("starting an origin");
            table.insert(name, ip.parse::<IpAddr>().unwrap());
            origins.push(((*name).to_owned(), origin));
        }
        let dns = DnsServer::start(table)
            .await
            .expect("starting the DNS server");
        PrivateNetwork { dns, origins }
    }

    fn origin(&self, name: &str) -> &Origin {
        &self.origins.iter().find(|(n, _)| n == name).unwrap().1
    }
}

/// The four processes on one state directory, each on `127.0.0.1:0`.
struct Platform {
    state: TempDir,
    directory: Proc,
    iris: Proc,
    /// Further iris nodes (`iris-test-2`, …), when asked for.
    more_iris: Vec<Proc>,
    binding_worker: Proc,
    runtime: Proc,
    /// An admin API token of the local account.
    token: String,
    /// `--directory` of every process, when not the state's SQLite file.
    directory_url: Option<String>,
}

impl Platform {
    async fn start() -> Platform {
        Self::start_with_iris_nodes(1).await
    }

    /// With `nodes` iris processes (each with metrics on a free port), all given to the
    /// binding-worker in one comma-separated `--iris`.
    async fn start_with_iris_nodes(nodes: usize) -> Platform {
        Self::start_with(nodes, "127.0.0.1:0").await
    }

    /// The four processes, with iris's tunnel edge on `edge_listen` (`0.0.0.0:0` for
    /// connectors in a test's network namespaces, which reach it over their links).
    async fn start_with_edge(edge_listen: &str) -> Platform {
        Self::start_with(1, edge_listen).await
    }

    async fn start_with(nodes: usize, edge_listen: &str) -> Platform {
        Self::start_with_args(nodes, edge_listen, &[]).await
    }

    /// The four processes with `global` (global `wvpc` options) on each.
    async fn start_with_args(nodes: usize, edge_listen: &str, global: &[&str]) -> Platform {
        let with_global = |mut args: Vec<String>| {
            args.extend(global.iter().map(|arg| (*arg).to_owned()));
            args
        };
        wvpc_tests::trace_init();
        let state = TempDir::new("platform");
        let token = Directory::open(state.path())
            .unwrap()
            .create_token("deployer", Role::Admin, None)
            .unwrap()
            .1;
        let any = || "127.0.0.1:0".to_owned();
        let directory = Proc::start(
            state.path(),
            "directory",
            with_global(vec!["directory".into(), "--listen".into(), any()]),
        )
        .await;
        let mut iris_nodes = Vec::new();
        for n in 1..=nodes {
            let name = if n == 1 {
                "iris-test".to_owned()
            } else {
                format!("iris-test-{n}")
            };
            let node = Proc::start(
                state.path(),
                "iris",
                with_global(vec![
                    "iris".into(),
                    "--listen".into(),
                    any(),
                    "--edge-listen".into(),
                    edge_listen.to_owned(),
                    "--node-name".into(),
                    name,
                    "--metrics".into(),
                    free_port(false).to_string(),
                    "--grace-period".into(),
                    "1s".into(),
                ]),
            )
            .await;
            iris_nodes.push(node);
        }
        let iris_connect: Vec<String> = iris_nodes.iter().map(|n| n.addr(0).to_string()).collect();
        let mut iris_nodes = iris_nodes.into_iter();
        let iris = iris_nodes.next().expect("at least one iris node");
        let more_iris: Vec<Proc> = iris_nodes.collect();
        let binding_worker = Proc::start(
            state.path(),
            "binding-worker",
            with_global(vec![
                "binding-worker".into(),
                "--listen".into(),
                any(),
                "--iris".into(),
                iris_connect.join(","),
            ]),
        )
        .await;
        let runtime = Proc::start(
            state.path(),
            "runtime",
            with_global(vec![
                "runtime".into(),
                "--listen".into(),
                any(),
                "--binding-worker".into(),
                binding_worker.addr(0).to_string(),
            ]),
        )
        .await;
        Platform {
            state,
            directory,
            iris,
            more_iris,
            binding_worker,
            runtime,
            token,
            directory_url: None,
        }
    }

    fn state(&self) -> &Path {
        self.state.path()
    }

    fn directory(&self) -> Directory {
        Directory::open_spec(self.directory_url.as_deref(), self.state()).unwrap()
    }

    fn edge(&self) -> SocketAddr {
        self.iris.addr(1)
    }

    /// Runs `wvpc <args>` against the directory API with `token`; stdout, or a panic with
    /// stderr.
    async fn wvpc(&self, token: &str, args: &[&str]) -> Result<String, String> {
        let output = Command::new(env!("CARGO_BIN_EXE_wvpc"))
            .arg("--state")
            .arg(self.state())
            .args(args)
            .env("WVPC_API", format!("http://{}", self.directory.addr(0)))
            .env("WVPC_API_TOKEN", token)
            .env_remove("WVPC_ACCOUNT_ID")
            .env("RUST_LOG", "warn")
            .output()
            .await
            .expect("running wvpc");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Runs `wvpc <args>` on the state directory itself (no API); stdout, or stderr.
    async fn wvpc_local(&self, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wvpc"));
        command
            .arg("--state")
            .arg(self.state())
            .args(args)
            .env_remove("WVPC_API")
            .env_remove("WVPC_DIRECTORY")
            .env("RUST_LOG", "warn");
        if let Some(url) = &self.directory_url {
            command.args(["--directory", url]);
        }
        let output = command.output().await.expect("running wvpc");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// The connector ids `wvpc tunnel info` lists for `tunnel`.
    async fn connectors_listed(&self, tunnel: &str) -> Vec<String> {
        let info = self
            .wvpc_local(&["tunnel", "info", tunnel, "--json"])
            .await
            .expect("wvpc tunnel info");
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        let mut ids: Vec<String> = info["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["client_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Writes a wrangler config binding `API` to `service` and deploys it with `token`.
    async fn deploy(
        &self,
        token: &str,
        name: &str,
        main: &str,
        service: Uuid,
        extra: &str,
    ) -> Result<String, String> {
        let config = self
            .state()
            .join(format!("{name}-{}.jsonc", Uuid::new_v4().simple()));
        std::fs::write(
            &config,
            format!(
                r#"{{ "name": "{name}", "main": "{main}",
                     "vpc_services": [{{ "binding": "API", "service_id": "{service}" }}] {extra} }}"#
            ),
        )
        .unwrap();
        self.wvpc(token, &["deploy", "--config", config.to_str().unwrap()])
            .await
    }

    /// `GET http://{host}{path}` at the runtime.
    async fn get(&self, host: &str, path: &str) -> Reply {
        get_host(self.runtime.addr(0), host, path).await
    }

    /// Polls (bounded) until `GET host path` answers `status` with a body containing `text`.
    async fn until(&self, host: &str, path: &str, status: u16, text: &str) -> Reply {
        within(
            &format!("{host}{path} answering {status} {text:?}"),
            self.answering(host, path, status, text),
        )
        .await
    }

    /// [`Platform::until`] for a JavaScript script the runtime compiles first (a 13 MB
    /// component: tens of seconds on a cold cache while other tests compile too).
    async fn until_built(&self, host: &str, path: &str, status: u16, text: &str) -> Reply {
        wvpc_tests::within_build(
            &format!("{host}{path} answering {status} {text:?}"),
            self.answering(host, path, status, text),
        )
        .await
    }

    /// Polls until `GET host path` answers `status` with a body containing `text`.
    async fn answering(&self, host: &str, path: &str, status: u16, text: &str) -> Reply {
        loop {
            let reply = self.get(host, path).await;
            if reply.status == status && reply.text().contains(text) {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Platform {
    /// `GET host path` once the script is served (a `404` naming the host means its
    /// deployment has not reached the runtime yet), whatever it answers then.
    async fn until_served(&self, host: &str, path: &str) -> Reply {
        wvpc_tests::within_build(&format!("{host}{path} served"), async {
            loop {
                let reply = self.get(host, path).await;
                if !(reply.status == 404 && reply.text().contains(host)) {
                    return reply;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    }
}

/// The address of an iris node's `--metrics` listener.
fn metrics_of(iris: &Proc) -> SocketAddr {
    let at = iris.args.iter().position(|a| a == "--metrics").unwrap();
    iris.args[at + 1].parse().unwrap()
}

/// The value of the sample `name` (with its labels) in a Prometheus text page (0 if absent).
fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The sample `name` on an iris node's metrics page now.
async fn iris_sample(iris: &Proc, name: &str) -> f64 {
    sample(
        &wvpc_tests::client::scrape(metrics_of(iris), "/metrics").await,
        name,
    )
}

/// A tunnel of `directory`'s account with a hostname service for `name`, resolved by `dns`.
fn tunnel_and_service(
    directory: &Directory,
    tunnel: &str,
    service: &str,
    name: &str,
    net: &PrivateNetwork,
) -> (Credentials, Uuid) {
    let (tunnel, credentials) = directory.create_tunnel(tunnel).unwrap();
    let mut input = ServiceInput::http(
        service,
        HostInput {
            hostname: Some(name.into()),
            resolver_network: Some(ResolverNetworkInput {
                virtual_network_id: None,
                tunnel_id: Some(tunnel.id.to_string()),
                resolver_ips: Some(vec![net.dns.addr.to_string()]),
            }),
            ..HostInput::default()
        },
    );
    input.http_port = Some(i64::from(net.origin(name).addr.port()));
    let service = directory.create_service(&input).unwrap();
    (credentials, service.service_id)
}

/// A hostname service on `tunnel` whose name `net`'s DNS server does not know (NXDOMAIN).
fn unresolvable_service(directory: &Directory, tunnel: Uuid, net: &PrivateNetwork) -> Uuid {
    let mut input = ServiceInput::http(
        "nowhere",
        HostInput {
            hostname: Some("nowhere.internal".into()),
            resolver_network: Some(ResolverNetworkInput {
                virtual_network_id: None,
                tunnel_id: Some(tunnel.to_string()),
                resolver_ips: Some(vec![net.dns.addr.to_string()]),
            }),
            ..HostInput::default()
        },
    );
    input.http_port = Some(80);
    directory.create_service(&input).unwrap().service_id
}

/// Our connector for `credentials`, registered with the platform's edge.
async fn connector(platform: &Platform, credentials: &Credentials) -> RunningConnector {
    let credentials = credentials.clone();
    let ca = std::fs::read(platform.state().join("edge").join("ca.pem")).unwrap();
    RunningConnector::start(ConnectorConfig::new(credentials, vec![platform.edge()], ca))
        .await
        .expect("the connector registers")
}

/// Requests `host path` from `tasks` loops until `stop`; counts answers that were not 200.
fn load(
    platform: &Platform,
    host: &str,
    path: &str,
    tasks: usize,
    stop: &Arc<AtomicBool>,
) -> (
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let handles = (0..tasks)
        .map(|_| {
            let (runtime, host, path) =
                (platform.runtime.addr(0), host.to_owned(), path.to_owned());
            let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let reply = get_host(runtime, &host, &path).await;
                    if reply.status == 200 {
                        ok.fetch_add(1, Ordering::SeqCst);
                    } else {
                        eprintln!("failed under load: {} {}", reply.status, reply.text());
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    (ok, failed, handles)
}

/// Stops a [`load`] and waits (bounded: no request may hang) for its loops to end; prints
/// the totals and returns how many requests failed.
async fn finish_load(
    stop: &AtomicBool,
    handles: Vec<tokio::task::JoinHandle<()>>,
    ok: &AtomicUsize,
    failed: &AtomicUsize,
) -> usize {
    stop.store(true, Ordering::SeqCst);
    for handle in handles {
        within("the load stops", handle).await.unwrap();
    }
    let failed = failed.load(Ordering::SeqCst);
    eprintln!("in all: {} ok, {failed} failed", ok.load(Ordering::SeqCst));
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_scripts_are_routed_by_host_isolated_redeployed_under_load_and_deleted() {
    let net = PrivateNetwork::start(&[
        ("a.internal", "127.0.0.2"),
        ("b.internal", "127.0.0.3"),
        ("c.internal", "127.0.0.4"),
    ])
    .await;
    let platform = Platform::start().await;
    let local = platform.directory();
    let (office, service_a) = tunnel_and_service(&local, "office", "a", "a.internal", &net);
    let (_, service_c) = {
        let mut input = ServiceInput::http(
            "c",
            HostInput {
                hostname: Some("c.internal".into()),
                resolver_network: Some(ResolverNetworkInput {
                    virtual_network_id: None,
                    tunnel_id: Some(office.tunnel_id.to_string()),
                    resolver_ips: Some(vec![net.dns.addr.to_string()]),
                }),
                ..HostInput::default()
            },
        );
        input.http_port = Some(i64::from(net.origin("c.internal").addr.port()));
        ((), local.create_service(&input).unwrap().service_id)
    };
    // A second tenant with its own tunnel, service and token.
    let other = local.create_account("other").unwrap();
    let other_dir = local.for_account(&other.id).unwrap().unwrap();
    let (other_tunnel, service_b) =
        tunnel_and_service(&other_dir, "branch", "b", "b.internal", &net);
    let other_token = other_dir
        .create_token("other-deployer", Role::Admin, None)
        .unwrap()
        .1;
    let _office = connector(&platform, &office).await;
    let _branch = connector(&platform, &other_tunnel).await;

    let deployed = platform
        .deploy(
            &platform.token,
            "proxy",
            guests::PROXY,
            service_a,
            r#", "routes": ["api.example.test/*"]"#,
        )
        .await
        .expect("deploying the local account's proxy");
    assert!(
        deployed.contains("proxy.local.workers.localhost"),
        "deploy says where the script is served: {deployed}"
    );
    platform
        .deploy(&other_token, "proxy", guests::PROXY, service_b, "")
        .await
        .expect("deploying the other account's proxy");

    // The default host of each account's script reaches that account's service only.
    let reply = platform
        .until("proxy.local.workers.localhost", "/a", 200, "")
        .await;
    assert!(reply.text().contains("/a"), "{}", reply.text());
    net.origin("a.internal").wait_seen("/a").await;
    platform
        .until("proxy.other.workers.localhost", "/b", 200, "")
        .await;
    net.origin("b.internal").wait_seen("/b").await;
    assert!(
        net.origin("a.internal")
            .seen()
            .iter()
            .all(|s| s.path != "/b")
    );
    assert!(
        net.origin("b.internal")
            .seen()
            .iter()
            .all(|s| s.path != "/a")
    );
    // A route, whatever the path below it.
    platform
        .until("api.example.test", "/deep/route?q=1", 200, "")
        .await;
    net.origin("a.internal").wait_seen("/deep/route?q=1").await;
    // `proxy.<domain>` is ambiguous (two accounts have a `proxy`), so it is not served.
    let reply = platform.get("proxy.workers.localhost", "/").await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    let reply = platform.get("nothing.local.workers.localhost", "/").await;
    assert_eq!(reply.status, 404);
    assert!(
        reply.text().contains("nothing.local.workers.localhost"),
        "{}",
        reply.text()
    );
    // A script of one account cannot bind another account's service.
    let refused = platform
        .deploy(&other_token, "thief", guests::PROXY, service_a, "")
        .await
        .expect_err("binding another account's service is refused");
    assert!(refused.contains("another account"), "{refused}");
    assert_eq!(
        platform
            .get("thief.other.workers.localhost", "/")
            .await
            .status,
        404
    );

    // The script's output reaches the runtime's stdout and `wvpc tail`, from any runtime.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_wvpc"))
        .arg("--state")
        .arg(platform.state())
        .args(["tail", "proxy", "--format", "json"])
        .env_remove("WVPC_API")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut tailed = BufReader::new(tail.stdout.take().unwrap()).lines();
    within("wvpc tail shows the script's output", async {
        loop {
            platform
                .get("proxy.local.workers.localhost", "/tailed")
                .await;
            let line = tokio::select! {
                line = tailed.next_line() => line.unwrap().expect("tail ended"),
                () = tokio::time::sleep(Duration::from_millis(200)) => continue,
            };
            if line.contains("GET /tailed -> 200") {
                let event: serde_json::Value = serde_json::from_str(&line).unwrap();
                assert_eq!(event["script"], "proxy");
                break;
            }
        }
    })
    .await;
    drop(tail);
    assert!(
        platform
            .runtime
            .stdout
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("[proxy ") && l.contains("GET /a -> 200")),
        "the runtime prints the script's output"
    );

    // A redeploy under load: no request fails, and the new version takes over.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, tasks) = load(
        &platform,
        "proxy.local.workers.localhost",
        "/load",
        4,
        &stop,
    );
    within("load running", async {
        while ok.load(Ordering::SeqCst) < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    platform
        .deploy(&platform.token, "proxy", guests::PROXY, service_c, "")
        .await
        .expect("redeploying with another binding");
    within(
        "the new version serves",
        net.origin("c.internal").wait_seen("/load"),
    )
    .await;
    let before = ok.load(Ordering::SeqCst);
    within("load continuing on the new version", async {
        while ok.load(Ordering::SeqCst) < before + 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during the redeploy"
    );
    // A route is the script's, not the version's: the redeploy without `routes` dropped it.
    platform
        .until("api.example.test", "/", 404, "api.example.test")
        .await;

    // Delete: the host answers 404 naming it.
    let deleted = platform
        .wvpc(&platform.token, &["delete", "proxy"])
        .await
        .unwrap();
    assert!(deleted.contains("proxy"), "{deleted}");
    platform
        .until(
            "proxy.local.workers.localhost",
            "/",
            404,
            "proxy.local.workers.localhost",
        )
        .await;
    // The other account's script of the same name is untouched.
    assert_eq!(
        platform
            .get("proxy.other.workers.localhost", "/b2")
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_binding_workers_and_iris_nodes_are_destination_unavailable_until_they_return() {
    let net = PrivateNetwork::start(&[("a.internal", "127.0.0.2")]).await;
    let mut platform = Platform::start().await;
    let (office, service) =
        tunnel_and_service(&platform.directory(), "office", "a", "a.internal", &net);
    let _connector = connector(&platform, &office).await;
    platform
        .deploy(&platform.token, "proxy", guests::PROXY, service, "")
        .await
        .unwrap();
    let host = "proxy.local.workers.localhost";
    platform.until(host, "/up", 200, "").await;

    platform.binding_worker.kill().await;
    let reply = platform.get(host, "/bw-down").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        reply.text().contains("destination_unavailable"),
        "{}",
        reply.text()
    );
    let state = platform.state().to_owned();
    platform.binding_worker.restart(&state).await;
    platform.until(host, "/bw-back", 200, "").await;

    platform.iris.kill().await;
    let reply = platform
        .until(host, "/iris-down", 502, "destination_unavailable")
        .await;
    assert_eq!(reply.status, 502);
    platform.iris.restart(&state).await;
    // The connector finds the restarted node by itself, and the binding-worker redials it.
    platform.until(host, "/iris-back", 200, "").await;
    net.origin("a.internal").wait_seen("/iris-back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_restarted_during_a_directory_outage_comes_back_by_itself() {
    let net = PrivateNetwork::start(&[("a.internal", "127.0.0.2")]).await;
    let mut platform = Platform::start().await;
    let (office, service_a) =
        tunnel_and_service(&platform.directory(), "office", "a", "a.internal", &net);
    let connector_before = connector(&platform, &office).await;
    platform
        .deploy(&platform.token, "proxy", guests::PROXY, service_a, "")
        .await
        .unwrap();
    let host = "proxy.local.workers.localhost";
    platform.until(host, "/before", 200, "").await;

    // The outage: the directory API is gone and the database is write-locked by someone
    // else (a stuck writer); iris can neither record connections nor be asked anything.
    platform.directory.kill().await;
    let lock =
        rusqlite::Connection::open(platform.state().join(wvpc_directory::DB_FILE_NAME)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE; DELETE FROM runtime_nodes WHERE 0;")
        .unwrap();

    connector_before.shutdown().await.unwrap();
    let _connector_after = connector(&platform, &office).await;
    platform.until(host, "/during", 200, "").await;
    net.origin("a.internal").wait_seen("/during").await;

    // The directory returns; the next deploy is picked up.
    lock.execute_batch("ROLLBACK;").unwrap();
    drop(lock);
    let state = platform.state().to_owned();
    platform.directory.restart(&state).await;
    platform
        .deploy(
            &platform.token,
            "proxy",
            guests::PROXY,
            service_a,
            r#", "routes": ["after.example.test/*"]"#,
        )
        .await
        .expect("deploying after the outage");
    platform
        .until("after.example.test", "/after", 200, "")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_held_directory_write_lock_traffic_and_registrations_go_on_and_writes_fail_fast() {
    let net = PrivateNetwork::start(&[("a.internal", "127.0.0.2")]).await;
    let platform = Platform::start().await;
    let (office, service) =
        tunnel_and_service(&platform.directory(), "office", "a", "a.internal", &net);
    let tunnel = office.tunnel_id.to_string();
    let ca = std::fs::read(platform.state().join("edge").join("ca.pem")).unwrap();
    let config = || {
        let mut config = ConnectorConfig::new(office.clone(), vec![platform.edge()], ca.clone());
        config.grace_period = Duration::from_secs(1);
        config
    };
    let leaving = RunningConnector::start(config()).await.unwrap();
    platform
        .deploy(&platform.token, "proxy", guests::PROXY, service, "")
        .await
        .unwrap();
    let host = "proxy.local.workers.localhost";
    platform.until(host, "/before", 200, "").await;
    within("tunnel info lists the first connector", async {
        while platform.connectors_listed(&tunnel).await != [leaving.client_id.to_string()] {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // The same through the directory API (`wvpc directory` reads the state's cluster registry).
    let over_api = platform
        .wvpc(&platform.token, &["tunnel", "info", &tunnel])
        .await
        .expect("wvpc tunnel info over the API");
    assert!(
        over_api.contains("1 live connection(s) from 1 connector(s)")
            && over_api.contains(&leaving.client_id.to_string()),
        "{over_api}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, tasks) = load(&platform, host, "/load", 4, &stop);
    let served = |more: usize| {
        let ok = ok.clone();
        async move {
            let until = ok.load(Ordering::SeqCst) + more;
            while ok.load(Ordering::SeqCst) < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    within("load running", served(20)).await;

    // A backup, a slow migration or a stuck writer holds the write lock from here on.
    let lock =
        rusqlite::Connection::open(platform.state().join(wvpc_directory::DB_FILE_NAME)).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE; DELETE FROM runtime_nodes WHERE 0;")
        .unwrap();

    // A connector registers (its credentials are in iris's memory) and another leaves; the
    // edge records neither now, and traffic keeps flowing through it all.
    let staying = within("a connector registering under the lock", async {
        RunningConnector::start(config()).await
    })
    .await
    .expect("the connector registers while the directory is locked");
    within("the other connector leaving", leaving.shutdown())
        .await
        .unwrap();
    within("load continuing on the new connector", served(40)).await;

    // Writes fail within seconds, saying why; from the CLI on the state and through the API.
    let started = std::time::Instant::now();
    let refused = platform
        .wvpc_local(&[
            "service",
            "create",
            "blocked",
            "--type",
            "http",
            "--tunnel-id",
            &tunnel,
            "--ipv4",
            "10.0.0.9",
        ])
        .await
        .expect_err("a write under the lock fails");
    let local_after = started.elapsed();
    assert!(refused.contains("directory busy: "), "{refused}");
    assert!(!refused.contains("database is locked"), "{refused}");
    let started = std::time::Instant::now();
    let refused = platform
        .wvpc(
            &platform.token,
            &[
                "service",
                "create",
                "blocked",
                "--type",
                "http",
                "--tunnel-id",
                &tunnel,
                "--ipv4",
                "10.0.0.9",
            ],
        )
        .await
        .expect_err("a write through the API under the lock fails");
    let api_after = started.elapsed();
    assert!(refused.contains("HTTP 503"), "{refused}");
    assert!(refused.contains("[1026] directory busy: "), "{refused}");
    eprintln!(
        "under the lock: `wvpc service create` failed after {local_after:?} (state), \
         {api_after:?} (API)"
    );
    // Reads are served meanwhile.
    let listed = platform
        .wvpc(&platform.token, &["service", "list"])
        .await
        .expect("reading through the API under the lock");
    assert!(listed.contains(&service.to_string()), "{listed}");
    platform
        .wvpc_local(&["tunnel", "list"])
        .await
        .expect("reading the state under the lock");
    within("load continuing", served(20)).await;

    // Released: everything catches up by itself.
    lock.execute_batch("ROLLBACK;").unwrap();
    drop(lock);
    within(
        "tunnel info showing the connector that stayed, only",
        async {
            while platform.connectors_listed(&tunnel).await != [staying.client_id.to_string()] {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;
    platform
        .wvpc(
            &platform.token,
            &[
                "service",
                "create",
                "after",
                "--type",
                "http",
                "--tunnel-id",
                &tunnel,
                "--ipv4",
                "10.0.0.9",
            ],
        )
        .await
        .expect("writing after the lock is released");
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed");
    eprintln!(
        "under the lock: {} requests served, none failed",
        ok.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_service_closes_its_pooled_connections_and_deleting_its_tunnel_stops_the_connector()
 {
    let net = PrivateNetwork::start(&[("a.internal", "127.0.0.2")]).await;
    let platform = Platform::start().await;
    let (office, service) =
        tunnel_and_service(&platform.directory(), "office", "a", "a.internal", &net);
    let origin = net.origin("a.internal");
    // `wvpc tunnel run`, as an operator runs it.
    let mut connector = Command::new(env!("CARGO_BIN_EXE_wvpc"))
        .arg("--state")
        .arg(platform.state())
        .args(["tunnel", "run", "--ha-connections", "1", "--edge"])
        .arg(platform.edge().to_string())
        .env("TUNNEL_TOKEN", office.to_token())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(connector.stdout.take().unwrap()).lines();
    within("the connector registers", async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if line.starts_with("registered") {
                return;
            }
        }
        panic!("the connector exited before registering");
    })
    .await;
    let logged: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let collecting = {
        let logged = logged.clone();
        let mut stderr = BufReader::new(connector.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                logged.lock().unwrap().push(line);
            }
        })
    };
    platform
        .deploy(&platform.token, "proxy", guests::PROXY, service, "")
        .await
        .unwrap();
    let host = "proxy.local.workers.localhost";
    platform.until(host, "/pooled", 200, "").await;
    let reply = platform.get(host, "/again").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // One keep-alive origin connection, pooled by the binding-worker between requests.
    assert_eq!(origin.connections(), 1);
    assert_eq!(origin.open_connections(), 1);

    // Deleting the service closes the pooled connection (the origin sees it go) and the next
    // request is refused without reaching the origin.
    platform
        .wvpc(
            &platform.token,
            &["service", "delete", &service.to_string()],
        )
        .await
        .unwrap();
    within(
        "the pooled connection to the deleted service closing",
        origin.wait_open_connections(0),
    )
    .await;
    let reply = platform.get(host, "/after-delete").await;
    assert_ne!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.text().contains("destination_not_found"),
        "{}",
        reply.text()
    );
    assert_eq!(origin.connections(), 1, "no new origin connection");
    assert!(origin.seen().iter().all(|s| s.path != "/after-delete"));

    // Deleting the tunnel disconnects its connector, which logs why and stops instead of
    // reconnecting for ever.
    platform
        .wvpc(&platform.token, &["tunnel", "delete", "office"])
        .await
        .unwrap();
    let status = within("the connector stopping", connector.wait())
        .await
        .unwrap();
    assert!(!status.success(), "{status}");
    collecting.await.unwrap();
    let logged = logged.lock().unwrap().join("\n");
    let tunnel = office.tunnel_id;
    assert!(
        logged.contains(&format!(
            "the edge disconnected this tunnel: tunnel {tunnel} was deleted"
        )),
        "{logged}"
    );
    assert!(logged.contains("unknown tunnel"), "{logged}");
    // iris's record of the connection goes too.
    let cluster = wvpc_directory::ClusterRegistry::sqlite(
        platform.state(),
        wvpc_directory::cluster::DEFAULT_LEASE_TTL,
    )
    .await
    .unwrap();
    within("the connection record going", async {
        while !cluster.tunnel_connections(tunnel).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_refused_because_the_directory_cannot_be_read_retries_until_it_registers() {
    let platform = Platform::start().await;
    let account = platform.directory().account_id().to_owned();
    // A tunnel the running iris has not loaded (written without bumping the directory's
    // revision), and a fault: the tunnels cannot be read (their table is renamed away).
    let credentials = Credentials::mint(&account, Uuid::new_v4());
    let db =
        rusqlite::Connection::open(platform.state().join(wvpc_directory::DB_FILE_NAME)).unwrap();
    db.execute(
        "INSERT INTO tunnels (tunnel_id, account_id, name, secret, created_at)
         VALUES (?1, ?2, 'late', ?3, '2026-01-01T00:00:00.000000Z')",
        rusqlite::params![
            credentials.tunnel_id.to_string(),
            account,
            credentials.tunnel_secret
        ],
    )
    .unwrap();
    db.execute_batch("ALTER TABLE tunnels RENAME TO tunnels_unreadable;")
        .unwrap();

    let ca = std::fs::read(platform.state().join("edge").join("ca.pem")).unwrap();
    let connector = wvpc_connector::Connector::new(ConnectorConfig::new(
        credentials,
        vec![platform.edge()],
        ca,
    ))
    .unwrap();
    let (mut readiness, metrics) = (connector.readiness(), connector.metrics());
    let serving = tokio::spawn(async move { connector.serve(std::future::pending()).await });
    // Told to retry, it retries (a permanent refusal would end `serve`).
    within("the connector being refused twice", async {
        while metrics.registrations.get("refused") < 2 {
            assert!(!serving.is_finished(), "the connector gave up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(!serving.is_finished(), "the connector gave up");
    assert_eq!(readiness.registered_connections(), 0);

    // The directory can be read again: the next attempt registers.
    db.execute_batch("ALTER TABLE tunnels_unreadable RENAME TO tunnels;")
        .unwrap();
    assert!(within("the connector registering", readiness.wait_registered(1)).await);
    serving.abort();
}

/// A free loopback port (TCP, or UDP for the edge), released for the process that takes it.
fn free_port(udp: bool) -> SocketAddr {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wvpc_up_starts_the_four_processes_and_stops_them_on_sigterm() {
    let state = TempDir::new("up");
    let runtime = free_port(false);
    let api = free_port(false);
    let mut up = Command::new(env!("CARGO_BIN_EXE_wvpc"))
        .arg("--state")
        .arg(state.path())
        .args(["up", "--listen", &runtime.to_string()])
        .args(["--api-listen", &api.to_string()])
        .args(["--edge-listen", &free_port(true).to_string()])
        .args(["--iris-listen", &free_port(false).to_string()])
        .args(["--binding-worker-listen", &free_port(false).to_string()])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let mut summary = Vec::new();
    within("wvpc up ready", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with("  state");
            summary.push(line);
            if done {
                break;
            }
        }
    })
    .await;
    let summary = summary.join("\n");
    assert!(summary.contains("ready: platform"), "{summary}");
    for component in ["directory:", "iris:", "binding-worker:", "runtime:"] {
        assert!(
            summary.contains(component),
            "{component} missing: {summary}"
        );
    }
    // The runtime answers by host, and the directory API answers too.
    let reply = get_host(runtime, "nothing.local.workers.localhost", "/").await;
    assert_eq!(reply.status, 404);
    assert!(reply.text().contains("nothing.local.workers.localhost"));
    let reply = get_host(api, "127.0.0.1", "/client/v4/accounts").await;
    assert_eq!(reply.status, 401, "no token: refused, {}", reply.text());

    let pid = rustix::process::Pid::from_raw(i32::try_from(up.id().unwrap()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = within("wvpc up stops", up.wait()).await.unwrap();
    assert!(status.success(), "{status}");
    let rest: Vec<String> = within("wvpc up output", async {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    })
    .await;
    assert!(rest.iter().any(|l| l == "stopped"), "{rest:?}");
    // Every component is gone: its ports are free again.
    std::net::TcpListener::bind(runtime).expect("the runtime's port is free");
    std::net::TcpListener::bind(api).expect("the directory's port is free");
}

/// `wvpc tunnel run` as its own process for `credentials`, dialing the platform's edge;
/// resolves once its first connection is registered.
async fn connector_process(
    platform: &Platform,
    credentials: &Credentials,
    extra: &[&str],
) -> Child {
    connector_process_to(platform, credentials, &[platform.edge()], extra).await
}

/// `wvpc tunnel run` dialing `edges` (`--edge` each, in order).
async fn connector_process_to(
    platform: &Platform,
    credentials: &Credentials,
    edges: &[SocketAddr],
    extra: &[&str],
) -> Child {
    connector_process_in(None, platform, credentials, edges, extra).await
}

/// [`connector_process_to`], run inside `netns` when given (`ip netns exec`).
async fn connector_process_in(
    netns: Option<&wvpc_tests::netns::Netns>,
    platform: &Platform,
    credentials: &Credentials,
    edges: &[SocketAddr],
    extra: &[&str],
) -> Child {
    let command = match netns {
        Some(netns) => netns.command(env!("CARGO_BIN_EXE_wvpc")),
        None => std::process::Command::new(env!("CARGO_BIN_EXE_wvpc")),
    };
    let mut child = Command::from(command)
        .arg("--state")
        .arg(platform.state())
        .args(["tunnel", "run", "--token", &credentials.to_token()])
        .args(
            edges
                .iter()
                .flat_map(|edge| ["--edge".to_owned(), edge.to_string()]),
        )
        .args(extra)
        .env("RUST_LOG", "error")
        .envs(EXPORT_ENV)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("starting wvpc tunnel run");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    within("wvpc tunnel run registered", async {
        loop {
            match lines.next_line().await {
                Ok(Some(line)) if line.starts_with("registered") => break,
                Ok(Some(_)) => {}
                _ => panic!("wvpc tunnel run exited before it registered"),
            }
        }
    })
    .await;
    // Keep reading, so that its stdout stays open until it exits.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_process_killed_under_load_loses_no_request_and_a_full_outage_fails_fast() {
    let net = PrivateNetwork::start(&[("a.internal", "127.0.0.2")]).await;
    let platform = Platform::start().await;
    let (office, service) =
        tunnel_and_service(&platform.directory(), "office", "a", "a.internal", &net);
    let ha = ["--ha-connections", "2"];
    let mut doomed = connector_process(&platform, &office, &ha).await;
    let mut survivor = connector_process(&platform, &office, &ha).await;
    platform
        .deploy(&platform.token, "proxy", guests::PROXY, service, "")
        .await
        .unwrap();
    let host = "proxy.local.workers.localhost";
    platform.until(host, "/up", 200, "").await;

    // Requests that each take 200 ms at the origin, 8 at a time, on both replicas.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, handles) = load(&platform, host, "/slow/200", 8, &stop);
    within("load on both replicas", async {
        while ok.load(Ordering::SeqCst) < 40 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    doomed.kill().await.expect("kill -9 of a connector");
    let killed = std::time::Instant::now();
    let at_kill = ok.load(Ordering::SeqCst);
    within("load after the kill", async {
        while ok.load(Ordering::SeqCst) < at_kill + 80 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for handle in handles {
        within("the load stops", handle).await.unwrap();
    }
    eprintln!(
        "connector process killed under load: {} ok, {} failed, {:.2?} of load after the kill",
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        killed.elapsed()
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests in flight on the killed connector are sent again on the live one"
    );

    // The last connector dies too: requests fail with the no-connector code, not a hang.
    survivor
        .kill()
        .await
        .expect("kill -9 of the last connector");
    let outage = std::time::Instant::now();
    let reply = within("a request during the outage", platform.get(host, "/outage")).await;
    eprintln!(
        "every connector killed: the first request was answered after {:.2?}",
        outage.elapsed()
    );
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        reply.text().contains("destination_unavailable"),
        "{}",
        reply.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_returns_at_once_from_an_idle_connector_and_waits_for_a_request_in_flight() {
    let net = PrivateNetwork::start(&[("a.internal", "127.0.0.2")]).await;
    let platform = Platform::start().await;
    let (office, service) =
        tunnel_and_service(&platform.directory(), "office", "a", "a.internal", &net);
    // An hour of grace: returning while a test bound of seconds runs means nothing was
    // waited for.
    let grace = ["--grace-period", "1h"];
    let mut idle = connector_process(&platform, &office, &grace).await;
    platform
        .deploy(&platform.token, "proxy", guests::PROXY, service, "")
        .await
        .unwrap();
    let host = "proxy.local.workers.localhost";
    platform.until(host, "/up", 200, "").await;
    // A few requests at once, so the binding-worker keeps several origin connections pooled.
    let runtime = platform.runtime.addr(0);
    let pooled: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(async move { get_host(runtime, host, &format!("/pooled/{i}")).await })
        })
        .collect();
    for request in pooled {
        let reply = within("a request", request).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    signal(&idle, rustix::process::Signal::TERM);
    let status = within("the idle connector exits", idle.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status}");

    // A connector with a request in flight: SIGTERM waits for it.
    let mut busy = connector_process(&platform, &office, &grace).await;
    let long = tokio::spawn(async move { get_host(runtime, host, "/slow/3000?in-flight").await });
    within(
        "the request reaches the origin",
        net.origin("a.internal").wait_seen("/slow/3000?in-flight"),
    )
    .await;
    signal(&busy, rustix::process::Signal::TERM);
    let reply = within("the request in flight", long).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "hello from origin: /slow/3000?in-flight");
    let status = within("the busy connector exits", busy.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Bounds a longer wait (a connector's reconnect backoff after a node was down for seconds).
async fn within_a_minute<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_iris_nodes_one_killed_under_load_loses_no_request_and_is_used_again_when_back() {
    let net = PrivateNetwork::start(&[("a.internal", "127.0.0.2")]).await;
    let mut platform = Platform::start_with_iris_nodes(2).await;
    let (office, service) =
        tunnel_and_service(&platform.directory(), "office", "a", "a.internal", &net);
    // `--edge A --edge B`: connection i dials edge i mod 2, so 4 connections are 2 per node.
    let edge_b = platform.more_iris[0].addr(1).to_string();
    let _connector = connector_process(
        &platform,
        &office,
        &["--edge", &edge_b, "--ha-connections", "4"],
    )
    .await;
    const ACTIVE: &str = "wvpc_iris_tunnel_connections{state=\"active\"}";
    const STREAMS: &str = "wvpc_iris_streams_total";
    for node in std::iter::once(&platform.iris).chain(&platform.more_iris) {
        within("two tunnel connections on each iris node", async {
            while iris_sample(node, ACTIVE).await != 2.0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
    platform
        .deploy(&platform.token, "proxy", guests::PROXY, service, "")
        .await
        .unwrap();
    let host = "proxy.local.workers.localhost";
    platform.until(host, "/up", 200, "").await;

    // GETs that each take 200 ms at the origin, 8 at a time, spread over both nodes.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, handles) = load(&platform, host, "/slow/200", 8, &stop);
    let at_least = |n: usize| {
        let ok = ok.clone();
        async move {
            while ok.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    within("load on both nodes", at_least(40)).await;
    let (a, b) = (
        iris_sample(&platform.iris, STREAMS).await,
        iris_sample(&platform.more_iris[0], STREAMS).await,
    );
    eprintln!("streams before the kill: iris-test {a}, iris-test-2 {b}");
    assert!(a > 0.0 && b > 0.0, "both nodes carry requests ({a}, {b})");

    platform.iris.kill().await;
    let killed = std::time::Instant::now();
    let at_kill = ok.load(Ordering::SeqCst);
    within("load after the kill", at_least(at_kill + 80)).await;
    let failed_while_down = failed.load(Ordering::SeqCst);
    eprintln!(
        "iris-test killed under load: {} ok and {failed_while_down} failed in the {:.2?} after",
        ok.load(Ordering::SeqCst) - at_kill,
        killed.elapsed()
    );

    // Back on its addresses: the binding-worker re-dials it, the connector reconnects, and
    // it serves again.
    let state = platform.state().to_owned();
    platform.iris.restart(&state).await;
    let back = std::time::Instant::now();
    within_a_minute("the restarted node serving requests again", async {
        while iris_sample(&platform.iris, STREAMS).await == 0.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    eprintln!(
        "the restarted iris-test served again {:.2?} after it was back",
        back.elapsed()
    );
    let now = ok.load(Ordering::SeqCst);
    within("load after the return", at_least(now + 40)).await;

    // The other node stops gracefully (SIGTERM: GOAWAY, drain within its 1 s grace period).
    signal(&platform.more_iris[0].child, rustix::process::Signal::TERM);
    let stopped = std::time::Instant::now();
    let (at_stop, failed_before) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    within("load after the graceful stop", at_least(at_stop + 80)).await;
    eprintln!(
        "iris-test-2 stopped with SIGTERM under load: {} ok and {} failed in the {:.2?} after",
        ok.load(Ordering::SeqCst) - at_stop,
        failed.load(Ordering::SeqCst) - failed_before,
        stopped.elapsed()
    );
    assert_eq!(
        finish_load(&stop, handles, &ok, &failed).await,
        0,
        "GETs in flight through the killed or stopped node are sent again through the other"
    );
}
