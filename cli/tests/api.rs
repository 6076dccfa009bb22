//! `wvpc directory` as a real child process, driven over HTTP: durability across `kill -9`,
//! the CLI's `--api` mode, `wvpc deploy` and its refusals, `wvpc deployments list`,
//! `wvpc rollback` and `wvpc delete`, and the real wrangler against it.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use http::Method;
use serde_json::{Value, json};
use uuid::Uuid;
use wvpc_directory::api::client::ApiClient;
use wvpc_directory::{Directory, HostInput, Role, ServiceInput};

/// A unique state directory, removed on drop.
struct State(PathBuf);

impl State {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("wvpc-api-cli-test-{}", Uuid::new_v4())))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn token(&self, role: Role, services: Option<Vec<Uuid>>) -> String {
        Directory::open(&self.0)
            .unwrap()
            .create_token(&format!("{role}-token"), role, services)
            .unwrap()
            .1
    }

    /// `wvpc --state <dir> args…` with `env`.
    fn wvpc(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wvpc"));
        command
            .arg("--state")
            .arg(&self.0)
            .args(args)
            .env("RUST_LOG", "warn")
            .env_remove("WVPC_API")
            .env_remove("WVPC_API_TOKEN")
            .env_remove("WVPC_ACCOUNT_ID");
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().expect("run wvpc")
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `wvpc directory --listen 127.0.0.1:0` as a child, killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(state: &State) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wvpc"))
            .arg("--state")
            .arg(state.path())
            .args(["directory", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start wvpc directory");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "ready: directory API on http://127.0.0.1:PORT/client/v4 (account …)"
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no ready line: {line:?}"));
        Server {
            child,
            base: url.to_owned(),
        }
    }

    fn addr(&self) -> String {
        self.base.trim_end_matches("/client/v4").to_owned()
    }

    /// `kill -9`.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A component a runtime can serve (an incoming-handler export); `n` makes its bytes distinct.
fn component(n: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
            (import "wvpc:bindings/vpc@0.1.0" (instance))
            (core module $m (func (export "handle")))
            (core instance $i (instantiate $m))
            (func $handle (canon lift (core func $i "handle")))
            (instance $handler (export "handle" (func $handle)))
            (export "wasi:http/incoming-handler@0.2.{n}" (instance $handler)))"#
    ))
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_mid_batch() {
    let state = State::new();
    let token = state.token(Role::Admin, None);
    let (account, tunnel) = {
        let dir = Directory::open(state.path()).unwrap();
        (
            dir.account_id().to_owned(),
            dir.create_tunnel("office").unwrap().0.id,
        )
    };
    let mut server = Server::start(&state);
    let path = format!("/accounts/{account}/connectivity/directory/services");

    // Four writers create services as fast as the server acknowledges them.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let (progress, mut watch) = tokio::sync::watch::channel(0usize);
    let progress = Arc::new(progress);
    let mut writers = Vec::new();
    for writer in 0..4 {
        let client = ApiClient::new(&server.base, Some(token.clone())).unwrap();
        let (acked, progress, path) = (acked.clone(), progress.clone(), path.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let body = json!({
                    "name": format!("w{writer}-{i}"),
                    "type": "http",
                    "host": { "hostname": "api.internal", "resolver_network": { "tunnel_id": tunnel } },
                });
                match client.call(Method::POST, &path, Some(&body)).await {
                    Ok(service) => {
                        let mut acked = acked.lock().unwrap();
                        acked.push(service["service_id"].as_str().unwrap().to_owned());
                        progress.send_replace(acked.len());
                    }
                    // The server died under us: whatever was in flight is unacknowledged.
                    Err(_) => return,
                }
            }
        }));
    }
    watch.wait_for(|n| *n >= 60).await.unwrap();
    server.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let server = Server::start(&state);
    let client = ApiClient::new(&server.base, Some(token)).unwrap();
    let (stored, info) = client
        .call_paged(Method::GET, &format!("{path}?per_page=1000"), None)
        .await
        .unwrap();
    let stored: Vec<String> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service_id"].as_str().unwrap().to_owned())
        .collect();
    for id in &acked {
        assert!(stored.contains(id), "acknowledged service {id} was lost");
    }
    // At most the four in-flight writes may have committed without their answer.
    let total = info.unwrap().total_count;
    assert!(
        total >= acked.len() && total <= acked.len() + 4,
        "{total} stored, {} acked",
        acked.len()
    );
    eprintln!(
        "kill -9 after {} acknowledged writes: all {} present ({total} stored)",
        acked.len(),
        acked.len()
    );
    drop(server);
    Directory::open(state.path())
        .unwrap()
        .check_integrity()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_commands_talk_to_the_api_with_the_same_flags_and_output() {
    let state = State::new();
    // The first admin token comes from the CLI on the state, printed once.
    let created = state.wvpc(
        &["token", "create", "--role", "admin", "--name", "ops"],
        &[],
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let printed = stdout(&created);
    let token = printed
        .split_whitespace()
        .find(|w| w.starts_with("wvpc_"))
        .unwrap_or_else(|| panic!("no token in {printed:?}"))
        .to_owned();
    assert!(
        printed.contains("(role admin)") && printed.contains("shown only now"),
        "{printed}"
    );
    let listed = stdout(&state.wvpc(&["token", "list"], &[]));
    assert!(
        listed.contains("ops") && !listed.contains(&token),
        "{listed}"
    );
    let tunnel = Directory::open(state.path())
        .unwrap()
        .create_tunnel("office")
        .unwrap()
        .0
        .id
        .to_string();
    let server = Server::start(&state);
    // A separate, empty state: every answer must come from the API.
    let client_state = State::new();
    let api = server.addr();
    let env = [
        ("WVPC_API", api.as_str()),
        ("WVPC_API_TOKEN", token.as_str()),
    ];
    let run = |args: &[&str]| client_state.wvpc(args, &env);

    let created = run(&[
        "service",
        "create",
        "api",
        "--type",
        "http",
        "--tunnel-id",
        &tunnel,
        "--hostname",
        "api.internal",
        "--http-port",
        "8080",
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    let text = stdout(&created);
    assert!(text.starts_with("✅ Created VPC service: "), "{text}");
    assert!(
        text.contains("   Tunnel ID: ") && text.contains("(office)"),
        "{text}"
    );
    let id = text
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();

    let listed = stdout(&run(&["service", "list"]));
    let mut lines = listed.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        [
            "ID", "NAME", "TYPE", "PORTS", "HOST", "TUNNEL", "CREATED", "MODIFIED"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..5],
        [id.as_str(), "api", "http", "HTTP:8080", "api.internal"]
    );

    let got: Value =
        serde_json::from_str(&stdout(&run(&["service", "get", &id, "--json"]))).unwrap();
    assert_eq!(got["host"]["hostname"], "api.internal");

    let updated = run(&[
        "service",
        "update",
        &id,
        "--name",
        "db",
        "--type",
        "tcp",
        "--tunnel-id",
        &tunnel,
        "--ipv4",
        "10.0.0.5",
        "--tcp-port",
        "5432",
    ]);
    assert!(updated.status.success(), "{}", stderr(&updated));
    assert!(stdout(&updated).contains("   TCP port: 5432"));

    // Validation problems come back from the API and are shown with their flags.
    let invalid = run(&[
        "service",
        "create",
        "bad",
        "--type",
        "http",
        "--tunnel-id",
        &tunnel,
        "--hostname",
        "https://x/",
        "--http-port",
        "0",
    ]);
    assert_eq!(invalid.status.code(), Some(1));
    let err = stderr(&invalid);
    assert!(err.contains("--hostname (host.hostname): "), "{err}");
    assert!(err.contains("--http-port (http_port): "), "{err}");

    // Tunnels too: create writes the credentials file, list counts the services, delete by name.
    let created = run(&["tunnel", "create", "branch", "--json"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let created: Value = serde_json::from_str(&stdout(&created)).unwrap();
    let branch = created["id"].as_str().unwrap().to_owned();
    assert!(
        client_state
            .path()
            .join("tunnels")
            .join(format!("{branch}.json"))
            .is_file()
    );
    let listed = stdout(&run(&["tunnel", "list"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&branch) && l.contains("branch")),
        "{listed}"
    );
    let token = stdout(&run(&["tunnel", "token", "branch"]));
    assert_eq!(token.trim(), created["token"].as_str().unwrap());
    let refused = run(&["tunnel", "delete", "office"]);
    assert!(
        stderr(&refused).contains("[1007] tunnel \"office\""),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        stdout(&run(&["tunnel", "delete", "branch"])),
        format!("✅ Deleted tunnel \"branch\": {branch}\n")
    );

    let deleted = run(&["service", "delete", &id]);
    assert_eq!(stdout(&deleted), format!("✅ Deleted VPC service: {id}\n"));
    let missing = run(&["service", "get", &id]);
    assert!(
        stderr(&missing).contains(&format!("no VPC service {id}")),
        "{}",
        stderr(&missing)
    );

    // A read token lists but may not create; the error names the role.
    let read = state.token(Role::Read, None);
    let denied = client_state.wvpc(
        &[
            "service",
            "create",
            "x",
            "--type",
            "http",
            "--tunnel-id",
            &tunnel,
            "--ipv4",
            "10.0.0.1",
        ],
        &[
            ("WVPC_API", api.as_str()),
            ("WVPC_API_TOKEN", read.as_str()),
        ],
    );
    assert!(
        stderr(&denied).contains("[10001] creating a VPC service needs the admin role"),
        "{}",
        stderr(&denied)
    );
    // Without a token: a clear error before any request.
    let no_token = client_state.wvpc(&["service", "list"], &[("WVPC_API", api.as_str())]);
    assert!(
        stderr(&no_token).contains("needs an API token in WVPC_API_TOKEN"),
        "{}",
        stderr(&no_token)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_uploads_the_script_and_the_directory_names_what_it_refuses() {
    let state = State::new();
    let (api_service, other_service) = {
        let dir = Directory::open(state.path()).unwrap();
        let tunnel = dir.create_tunnel("office").unwrap().0.id;
        let api = dir
            .create_service(&ServiceInput::http(
                "api",
                HostInput::hostname("api.internal", tunnel),
            ))
            .unwrap();
        let other = dir
            .create_service(&ServiceInput::http(
                "other",
                HostInput::hostname("o.internal", tunnel),
            ))
            .unwrap();
        (api.service_id, other.service_id)
    };
    let scoped = state.token(Role::Bind, Some(vec![api_service]));
    let server = Server::start(&state);
    let project = State::new();
    std::fs::create_dir_all(project.path()).unwrap();
    std::fs::write(project.path().join("worker.wasm"), component(0)).unwrap();
    let config = project.path().join("wrangler.jsonc");
    let api = server.addr();
    let deploy = |bindings: &str| {
        std::fs::write(
            &config,
            format!(
                r#"{{ "name": "proxy", "main": "worker.wasm", "vpc_services": [{bindings}] }}"#
            ),
        )
        .unwrap();
        project.wvpc(
            &["deploy", "--config", config.to_str().unwrap()],
            &[
                ("WVPC_API", api.as_str()),
                ("WVPC_API_TOKEN", scoped.as_str()),
            ],
        )
    };

    let ok = deploy(r#"{ "binding": "API", "service": "api" }"#);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains(&format!("   binding API -> VPC service {api_service}")),
        "{}",
        stdout(&ok)
    );

    let refused = deploy(&format!(
        r#"{{ "binding": "API", "service": "api" }}, {{ "binding": "OTHER", "service_id": "{other_service}" }}, {{ "binding": "GONE", "service": "gone" }}"#
    ));
    assert_eq!(refused.status.code(), Some(1));
    let account = Directory::open(state.path())
        .unwrap()
        .account_id()
        .to_owned();
    let err = stderr(&refused);
    assert!(
        err.contains(&format!(
            "[1013] binding \"OTHER\": the API token \"bind-token\" (role bind) may not bind VPC \
             service {other_service} (\"other\"): missing permission bind on this service (its \
             bind permission is limited to other services)"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "[1014] binding \"GONE\": no VPC service named \"gone\" in account {account}"
        )),
        "{err}"
    );
    // Nothing of the refused upload was stored: the first deploy is still there.
    let script = Directory::open(state.path())
        .unwrap()
        .script("proxy")
        .unwrap()
        .unwrap();
    assert_eq!(script.bindings.len(), 1);
}

/// The real `wrangler vpc service` commands against `wvpc directory`, when `WRANGLER` names a
/// wrangler binary (`npm install --prefix /work/ext/wrangler wrangler`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrangler_vpc_service_commands_work_against_the_directory() {
    let Some(wrangler) = std::env::var_os("WRANGLER") else {
        eprintln!(
            "skipping: set WRANGLER to a wrangler binary (e.g. node_modules/.bin/wrangler) to run this test"
        );
        return;
    };
    let state = State::new();
    let token = state.token(Role::Admin, None);
    let (account, tunnel) = {
        let dir = Directory::open(state.path()).unwrap();
        (
            dir.account_id().to_owned(),
            dir.create_tunnel("office").unwrap().0.id.to_string(),
        )
    };
    let server = Server::start(&state);
    let home = State::new();
    std::fs::create_dir_all(home.path()).unwrap();
    let wrangler = |args: &[&str]| {
        let output = Command::new(&wrangler)
            .args(args)
            .current_dir(home.path())
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path())
            .env("CLOUDFLARE_API_BASE_URL", &server.base)
            .env("CLOUDFLARE_API_TOKEN", &token)
            .env("CLOUDFLARE_ACCOUNT_ID", &account)
            // Nothing leaves the machine: no metrics, no error reports, no update check.
            .env("WRANGLER_SEND_METRICS", "false")
            .env("WRANGLER_SEND_ERROR_REPORTS", "false")
            .env("WRANGLER_HIDE_BANNER", "true")
            .env("npm_config_registry", "http://127.0.0.1:9/")
            .env("CI", "true")
            .env("NO_COLOR", "1")
            .output()
            .expect("run wrangler");
        (
            output.status.success(),
            format!("{}{}", stdout(&output), stderr(&output)),
        )
    };

    let (ok, out) = wrangler(&[
        "vpc",
        "service",
        "create",
        "api",
        "--type",
        "http",
        "--tunnel-id",
        &tunnel,
        "--hostname",
        "api.internal",
        "--http-port",
        "8080",
    ]);
    assert!(ok, "{out}");
    let id = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("✅ Created VPC service: "))
        .unwrap_or_else(|| panic!("no service id in: {out}"))
        .trim()
        .to_owned();
    let stored = Directory::open(state.path())
        .unwrap()
        .service(id.parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(stored.name, "api");
    assert_eq!(stored.http_port(), Some(8080));

    let (ok, out) = wrangler(&["vpc", "service", "list"]);
    assert!(
        ok && out.contains(&id) && out.contains("api.internal") && out.contains("HTTP:8080"),
        "{out}"
    );

    let (ok, out) = wrangler(&["vpc", "service", "get", &id]);
    assert!(ok && out.contains("Hostname: api.internal"), "{out}");

    let (ok, out) = wrangler(&[
        "vpc",
        "service",
        "update",
        &id,
        "--name",
        "api2",
        "--type",
        "http",
        "--tunnel-id",
        &tunnel,
        "--ipv4",
        "10.0.0.5",
        "--http-port",
        "8081",
    ]);
    assert!(ok && out.contains("IPv4: 10.0.0.5"), "{out}");

    // Our validation's message reaches the wrangler user.
    let (ok, out) = wrangler(&[
        "vpc",
        "service",
        "create",
        "bad",
        "--type",
        "http",
        "--tunnel-id",
        &Uuid::new_v4().to_string(),
        "--ipv4",
        "10.0.0.1",
    ]);
    assert!(!ok && out.contains("host.network.tunnel_id"), "{out}");

    let (ok, out) = wrangler(&["vpc", "service", "delete", &id]);
    assert!(ok, "{out}");
    assert!(
        Directory::open(state.path())
            .unwrap()
            .list_services(None)
            .unwrap()
            .is_empty()
    );
    let (ok, out) = wrangler(&["vpc", "service", "list"]);
    assert!(ok && !out.contains(&id), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_prints_where_the_script_is_served_and_versions_roll_back_and_delete() {
    let state = State::new();
    let token = state.token(Role::Bind, None);
    let admin = state.token(Role::Admin, None);
    let account = Directory::open(state.path())
        .unwrap()
        .account_id()
        .to_owned();
    let server = Server::start(&state);
    let api = server.addr();
    let project = State::new();
    std::fs::create_dir_all(project.path()).unwrap();
    let env = [
        ("WVPC_API", api.as_str()),
        ("WVPC_API_TOKEN", token.as_str()),
    ];
    let run = |args: &[&str]| project.wvpc(args, &env);
    let ok = |args: &[&str]| {
        let output = run(args);
        assert!(
            output.status.success(),
            "wvpc {args:?}: {}",
            stderr(&output)
        );
        stdout(&output)
    };
    let jsonc = project.path().join("wrangler.jsonc");
    let toml = project.path().join("wrangler.toml");

    // Version 1: routes (one a custom domain) and limits from a JSONC config.
    std::fs::write(project.path().join("worker.wasm"), component(0)).unwrap();
    std::fs::write(
        &jsonc,
        r#"{
          // wrangler's keys, as wrangler writes them
          "name": "proxy",
          "main": "worker.wasm",
          "routes": ["api.example.com/*", { "pattern": "shop.example.com", "custom_domain": true }],
          "limits": { "cpu_ms": 50, "isolation": "request" },
        }"#,
    )
    .unwrap();
    let out = ok(&["deploy", "--config", jsonc.to_str().unwrap()]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("✅ Deployed script \"proxy\" version 1 (")
            && lines[0].contains(&format!(") to account {account}: ")),
        "{out}"
    );
    assert_eq!(
        &lines[1..],
        [
            "   served at http://proxy.local.workers.localhost (workers.localhost is the \
             runtimes' --workers-domain)",
            "   served on route api.example.com/*",
            "   served on route shop.example.com/*",
        ],
        "{out}"
    );
    let snapshot = Directory::open(state.path())
        .unwrap()
        .deployment_snapshot()
        .unwrap();
    assert_eq!(snapshot.scripts[0].limits["cpu_ms"], 50);
    assert_eq!(snapshot.scripts[0].limits["isolation"], "request");

    // Version 2: TOML with wrangler's single `route` and workers_dev off.
    std::fs::write(project.path().join("worker.wasm"), component(1)).unwrap();
    std::fs::write(
        &toml,
        "name = \"proxy\"\nmain = \"worker.wasm\"\nroute = \"api.example.com/*\"\n\
         workers_dev = false\n",
    )
    .unwrap();
    let out = ok(&["deploy", "--config", toml.to_str().unwrap()]);
    assert!(
        out.starts_with("✅ Deployed script \"proxy\" version 2 ("),
        "{out}"
    );
    assert!(
        out.ends_with(
            "   not served on its default host (workers_dev is false)\n   served on route \
             api.example.com/*\n"
        ),
        "{out}"
    );
    // A domain of the operator's own shows in the URL.
    std::fs::write(project.path().join("worker.wasm"), component(2)).unwrap();
    let out = ok(&[
        "deploy",
        "--config",
        jsonc.to_str().unwrap(),
        "--workers-domain",
        "w.example.net",
    ]);
    assert!(
        out.contains(
            "   served at http://proxy.local.w.example.net (w.example.net is the runtimes' \
             --workers-domain)"
        ),
        "{out}"
    );

    // The versions, newest first.
    let out = ok(&["deployments", "list", "proxy"]);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["VERSION", "ID", "ETAG", "CREATED", "AUTHOR", "ACTIVE"],
        "{out}"
    );
    assert_eq!(
        rows[1..]
            .iter()
            .map(|r| (r[0], r[5], r.get(6).copied()))
            .collect::<Vec<_>>(),
        [
            ("3", "bind-token", Some("yes")),
            ("2", "bind-token", None),
            ("1", "bind-token", None)
        ],
        "{out}"
    );
    assert_eq!(rows[1][2].len(), 12, "an etag prefix: {out}");
    let listed: Value =
        serde_json::from_str(&ok(&["deployments", "list", "proxy", "--json"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    let version_1 = listed[2]["id"].as_str().unwrap().to_owned();

    // Rollback: the one before the active one, by number, by id.
    let out = ok(&["rollback", "proxy"]);
    assert!(
        out.starts_with("✅ Script \"proxy\" now serves version 2 ("),
        "{out}"
    );
    assert!(out.ends_with("; it served version 3 before\n"), "{out}");
    let out = ok(&["rollback", "proxy", "1"]);
    assert!(
        out.starts_with(&format!(
            "✅ Script \"proxy\" now serves version 1 ({version_1}, etag "
        )),
        "{out}"
    );
    let served = Directory::open(state.path())
        .unwrap()
        .deployment_snapshot()
        .unwrap();
    assert_eq!(served.scripts[0].version_number, 1);
    // Routes and workers_dev belong to the script: the last upload's stay.
    assert_eq!(
        served.scripts[0].routes,
        ["api.example.com/*", "shop.example.com/*"]
    );
    assert!(served.scripts[0].workers_dev);
    let out = ok(&["rollback", "proxy", &version_1]);
    assert!(out.contains("already serves version 1"), "{out}");
    let oldest = run(&["rollback", "proxy"]);
    assert_eq!(oldest.status.code(), Some(1));
    assert!(
        stderr(&oldest).contains(
            "script \"proxy\" serves version 1, its oldest kept version: there is none before \
             it to roll back to"
        ),
        "{}",
        stderr(&oldest)
    );

    let missing = run(&["rollback", "proxy", "9"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains(
            "script \"proxy\" has no version 9 (it keeps versions 1–3); `wvpc deployments list \
             proxy` shows them"
        ),
        "{}",
        stderr(&missing)
    );
    let usage = run(&["rollback", "proxy", "latest"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(
        stderr(&usage).contains("expected a version number (e.g. 3) or a version id"),
        "{}",
        stderr(&usage)
    );

    // Another script may not take a route of this one.
    let other = project.path().join("other.jsonc");
    std::fs::write(
        &other,
        r#"{ "name": "other", "main": "worker.wasm", "routes": ["API.example.com/*"] }"#,
    )
    .unwrap();
    let taken = run(&["deploy", "--config", other.to_str().unwrap()]);
    assert_eq!(taken.status.code(), Some(1));
    assert!(
        stderr(&taken).contains(
            "[1021] metadata.routes[0].pattern: \"api.example.com/*\" is already routed to script \
             \"proxy\" of this account"
        ),
        "{}",
        stderr(&taken)
    );

    // A core module is refused with how to build a component; the served version stays.
    std::fs::write(project.path().join("worker.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let refused = run(&["deploy", "--config", jsonc.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains(
            "[1020] the module is a core WebAssembly module, not a component; build the script \
             as a component with `cargo build --target wasm32-wasip2`"
        ),
        "{}",
        stderr(&refused)
    );

    // The subdomain over the API: read with any token, set with an admin one.
    assert_eq!(ok(&["account", "subdomain"]), "local\n");
    let set = project.wvpc(
        &["account", "subdomain", "--set", "team-a"],
        &[
            ("WVPC_API", api.as_str()),
            ("WVPC_API_TOKEN", admin.as_str()),
        ],
    );
    assert!(set.status.success(), "{}", stderr(&set));
    assert_eq!(
        stdout(&set),
        format!(
            "✅ Account {account} now serves its scripts at <script>.team-a.workers.localhost \
             (the suffix is the runtimes' --workers-domain)\n"
        )
    );
    let denied = run(&["account", "subdomain", "--set", "team-b"]);
    assert!(
        stderr(&denied).contains("[10001] changing the account's subdomain needs the admin role"),
        "{}",
        stderr(&denied)
    );

    // Delete says what went; then the script is gone.
    let out = ok(&["delete", "proxy"]);
    assert_eq!(
        out,
        format!(
            "✅ Deleted script \"proxy\" from account {account}: 3 versions, routes \
             api.example.com/*, shop.example.com/*\n"
        )
    );
    let gone = run(&["deployments", "list", "proxy"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr(&gone).contains("[10007] no script \"proxy\" in this account"),
        "{}",
        stderr(&gone)
    );
    let gone = run(&["delete", "proxy"]);
    assert!(
        stderr(&gone).contains("[10007] no script \"proxy\" in this account"),
        "{}",
        stderr(&gone)
    );
    let no_api = project.wvpc(&["delete", "proxy"], &[]);
    assert!(
        stderr(&no_api).contains(
            "wvpc delete talks to a directory API: pass --api http://HOST:PORT or set WVPC_API"
        ),
        "{}",
        stderr(&no_api)
    );
}

#[tokio::test]
async fn vnet_and_route_commands_talk_to_the_api_and_deploy_sends_network_bindings() {
    let state = State::new();
    let admin = state.token(Role::Admin, None);
    let tunnel = Directory::open(state.path())
        .unwrap()
        .create_tunnel("office")
        .unwrap()
        .0
        .id
        .to_string();
    let server = Server::start(&state);
    // A separate, empty state: every answer must come from the API.
    let client = State::new();
    let api = server.addr();
    let env = [
        ("WVPC_API", api.as_str()),
        ("WVPC_API_TOKEN", admin.as_str()),
    ];
    let run = |args: &[&str]| client.wvpc(args, &env);

    let lab = run(&["vnet", "create", "lab", "--comment", "the lab", "--json"]);
    assert!(lab.status.success(), "{}", stderr(&lab));
    let lab: Value = serde_json::from_str(&stdout(&lab)).unwrap();
    let lab_id = lab["id"].as_str().unwrap().to_owned();
    let listed = stdout(&run(&["vnet", "list"]));
    assert!(
        listed.contains("default") && listed.contains("the lab"),
        "{listed}"
    );

    let added = run(&[
        "route",
        "ip",
        "add",
        "10.1.0.0/16",
        "office",
        "--vnet",
        "lab",
    ]);
    assert!(added.status.success(), "{}", stderr(&added));
    assert!(
        stdout(&added).contains("in virtual network \"lab\""),
        "{}",
        stdout(&added)
    );
    let bad = run(&[
        "route",
        "ip",
        "add",
        "10.1.0.5/16",
        &tunnel,
        "--vnet",
        &lab_id,
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("CIDR (network): \"10.1.0.5/16\" has host bits set; use the network address \"10.1.0.0/16\""),
        "{}",
        stderr(&bad)
    );
    let routes: Value = serde_json::from_str(&stdout(&run(&[
        "route", "ip", "list", "--tunnel", "office", "--json",
    ])))
    .unwrap();
    assert_eq!(routes[0]["virtual_network_id"], lab_id.as_str());

    // wvpc deploy sends vpc_networks as vpc_network bindings; the directory checks them.
    let project = State::new();
    std::fs::create_dir_all(project.path()).unwrap();
    std::fs::write(project.path().join("worker.wasm"), component(0)).unwrap();
    let config = project.path().join("wrangler.jsonc");
    std::fs::write(
        &config,
        format!(
            r#"{{ "name": "net", "main": "worker.wasm", "vpc_networks": [
                {{ "binding": "OFFICE", "tunnel_id": "{tunnel}" }},
                {{ "binding": "LAB", "network_id": "cf1:vnet:{lab_id}" }} ] }}"#
        ),
    )
    .unwrap();
    let deployed = project.wvpc(&["deploy", "--config", config.to_str().unwrap()], &env);
    assert!(deployed.status.success(), "{}", stderr(&deployed));
    let printed = stdout(&deployed);
    assert!(
        printed.contains(&format!(
            "   binding OFFICE -> network through tunnel {tunnel}"
        )) && printed.contains(&format!("   binding LAB -> network cf1:vnet:{lab_id}")),
        "{printed}"
    );
    // A bind token may not bind a tunnel.
    let bind = state.token(Role::Bind, None);
    let refused = project.wvpc(
        &["deploy", "--config", config.to_str().unwrap()],
        &[
            ("WVPC_API", api.as_str()),
            ("WVPC_API_TOKEN", bind.as_str()),
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains(
            "binding \"OFFICE\": a vpc_network binding by tunnel_id needs the admin role"
        ),
        "{}",
        stderr(&refused)
    );

    // Services over the API: tcp with wrangler's flags, http with a tcp_port, in the lab.
    let db = run(&[
        "service",
        "create",
        "db",
        "--type",
        "tcp",
        "--tunnel-id",
        &tunnel,
        "--hostname",
        "db.internal",
        "--tcp-port",
        "3306",
        "--app-protocol",
        "mysql",
        "--json",
    ]);
    assert!(db.status.success(), "{}", stderr(&db));
    let db: Value = serde_json::from_str(&stdout(&db)).unwrap();
    assert_eq!(
        (db["tcp_port"].clone(), db["app_protocol"].clone()),
        (json!(3306), json!("mysql"))
    );
    let web = run(&[
        "service",
        "create",
        "web",
        "--type",
        "http",
        "--tunnel-id",
        &tunnel,
        "--ipv4",
        "10.1.2.3",
        "--tcp-port",
        "2222",
        "--virtual-network-id",
        &lab_id,
    ]);
    assert!(web.status.success(), "{}", stderr(&web));
    assert!(
        stdout(&web).contains("TCP port (connect()): 2222"),
        "{}",
        stdout(&web)
    );
    let outside = run(&[
        "service",
        "create",
        "far",
        "--type",
        "http",
        "--tunnel-id",
        &tunnel,
        "--ipv4",
        "192.0.2.1",
        "--virtual-network-id",
        &lab_id,
    ]);
    assert_eq!(outside.status.code(), Some(1));
    assert!(
        stderr(&outside).contains("--virtual-network-id (host.network.virtual_network_id): tunnel"),
        "{}",
        stderr(&outside)
    );

    // The bound lab cannot be deleted; the API names the script.
    let in_use = run(&["vnet", "delete", "lab"]);
    assert_eq!(in_use.status.code(), Some(1));
    assert!(
        stderr(&in_use).contains("script(s) \"net\""),
        "{}",
        stderr(&in_use)
    );
    assert!(
        stderr(&in_use).contains("VPC service(s) \"web\""),
        "{}",
        stderr(&in_use)
    );
    let needed = run(&["route", "ip", "delete", "10.1.0.0/16", "--vnet", "lab"]);
    assert_eq!(needed.status.code(), Some(1));
    assert!(
        stderr(&needed)
            .contains("route 10.1.0.0/16 is needed by VPC service(s) \"web\" (10.1.2.3)"),
        "{}",
        stderr(&needed)
    );
}
