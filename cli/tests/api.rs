//! `wvpc directory` as a real child process, driven over HTTP: durability across `kill -9`,
//! the CLI's `--api` mode, `wvpc deploy` and its refusals, and the real wrangler against it.

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
    std::fs::write(project.path().join("worker.wasm"), b"\0asm\x01\0\0\0").unwrap();
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
