//! Runs the built `wvpc` binary against a fresh state directory and checks what a user sees:
//! output shapes, exit codes and error messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use wvpc_tunnel::Credentials;

/// A unique state directory, removed on drop.
struct State(PathBuf);

impl State {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("wvpc-cli-test-{}", uuid::Uuid::new_v4())))
    }

    /// Runs `wvpc --state <dir> args…` with logging quiet.
    fn wvpc(&self, args: &[&str]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_wvpc"))
            .arg("--state")
            .arg(&self.0)
            .args(args)
            .env("RUST_LOG", "warn")
            .env_remove("WVPC_STATE")
            .env_remove("TUNNEL_TOKEN")
            .output()
            .expect("run wvpc");
        Run(output)
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let run = self.wvpc(args);
        assert_eq!(run.code(), 0, "wvpc {args:?} failed:\n{}", run.stderr());
        run.stdout()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("wvpc {args:?} printed no JSON ({e}):\n{out}"))
    }

    fn tunnel(&self, name: &str) -> String {
        self.json(&["tunnel", "create", name, "--json"])["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run(Output);

impl Run {
    fn code(&self) -> i32 {
        self.0.status.code().expect("exit code")
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
}

#[test]
fn tunnel_create_json_has_a_cloudflared_token_and_writes_credentials() {
    let state = State::new();
    let v = state.json(&["tunnel", "create", "home", "--json"]);
    let obj = v.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["credentials_file", "id", "name", "token"]);
    assert_eq!(v["name"], "home");
    let id = v["id"].as_str().unwrap();

    let creds = Credentials::from_token(v["token"].as_str().unwrap()).unwrap();
    assert_eq!(creds.tunnel_id.to_string(), id);
    assert_eq!(creds.account_tag.len(), 32);
    assert_eq!(creds.tunnel_secret.len(), 32);

    let file = state.path().join("tunnels").join(format!("{id}.json"));
    assert_eq!(
        v["credentials_file"].as_str().unwrap(),
        file.to_str().unwrap()
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let from_file = Credentials::from_file_json(&text).unwrap();
    assert_eq!(from_file, creds);
    // Exactly cloudflared's `Credentials` JSON: these four keys, all strings.
    let raw: Value = serde_json::from_str(&text).unwrap();
    let mut file_keys: Vec<&str> = raw
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    file_keys.sort_unstable();
    assert_eq!(
        file_keys,
        ["AccountTag", "Endpoint", "TunnelID", "TunnelSecret"]
    );
    assert_eq!(raw["TunnelID"], id);
    assert_eq!(raw["Endpoint"], "");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the credentials file holds the secret");
    }

    // The token is printed again, by id or by name.
    assert_eq!(
        state.ok(&["tunnel", "token", "home"]).trim(),
        v["token"].as_str().unwrap()
    );
    assert_eq!(
        state.ok(&["tunnel", "token", id]).trim(),
        v["token"].as_str().unwrap()
    );

    // Human form mentions id, token and the credentials file.
    let human = state.ok(&["tunnel", "create", "office"]);
    assert!(human.contains("Created tunnel \"office\""), "{human}");
    assert!(
        human.contains(&state.path().join("tunnels").display().to_string()),
        "{human}"
    );

    let list = state.json(&["tunnel", "list", "--json"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["home", "office"]);

    let dup = state.wvpc(&["tunnel", "create", "home"]);
    assert_eq!(dup.code(), 1);
    assert!(dup.stderr().contains("already exists"), "{}", dup.stderr());
}

#[test]
fn service_create_list_get_delete_round_trip() {
    let state = State::new();
    let tunnel = state.tunnel("home");

    let created = state.json(&[
        "service",
        "create",
        "api",
        "--type",
        "http",
        "--tunnel-id",
        &tunnel,
        "--hostname",
        "api.internal",
        "--resolver-ips",
        "10.0.0.53,[fd00::53]:5353",
        "--json",
    ]);
    let id = created["service_id"].as_str().unwrap().to_owned();
    assert_eq!(created["name"], "api");
    assert_eq!(created["type"], "http");
    assert_eq!(created["http_port"], 80);
    assert_eq!(created["https_port"], 443);
    assert_eq!(created["host"]["hostname"], "api.internal");
    assert_eq!(
        created["host"]["resolver_network"]["tunnel_id"],
        tunnel.as_str()
    );
    assert_eq!(
        created["host"]["resolver_network"]["resolver_ips"],
        serde_json::json!(["10.0.0.53", "[fd00::53]:5353"])
    );

    let db = state.json(&[
        "service",
        "create",
        "db",
        "--type",
        "tcp",
        "--tunnel-id",
        &tunnel,
        "--ipv4",
        "10.0.0.5",
        "--ipv6",
        "fd00::5",
        "--tcp-port",
        "5432",
        "--app-protocol",
        "postgresql",
        "--cert-verification-mode",
        "verify_ca",
        "--json",
    ]);
    assert_eq!(db["tcp_port"], 5432);
    assert_eq!(db["host"]["ipv4"], "10.0.0.5");
    assert_eq!(db["host"]["ipv6"], "fd00::5");
    assert_eq!(db["tls_settings"]["cert_verification_mode"], "verify_ca");

    assert_eq!(state.json(&["service", "get", &id, "--json"]), created);
    let all = state.json(&["service", "list", "--json"]);
    assert_eq!(all, serde_json::json!([created.clone(), db.clone()]));
    assert_eq!(
        state.json(&["service", "list", "--json", "--type", "tcp"]),
        serde_json::json!([db.clone()])
    );

    let table = state.ok(&["service", "list"]);
    let header = table.lines().next().unwrap();
    for column in [
        "ID", "NAME", "TYPE", "PORTS", "HOST", "TUNNEL", "CREATED", "MODIFIED",
    ] {
        assert!(header.contains(column), "{table}");
    }
    assert!(
        table.contains(&id) && table.contains("HTTP:80, HTTPS:443") && table.contains(&tunnel[..8]),
        "{table}"
    );
    assert!(
        table.contains("TCP:5432") && table.contains("10.0.0.5, fd00::5"),
        "{table}"
    );

    let human = state.ok(&[
        "service",
        "create",
        "web",
        "--type",
        "http",
        "--tunnel-id",
        &tunnel,
        "--ipv4",
        "10.0.0.8",
        "--https-port",
        "8443",
    ]);
    assert!(human.starts_with("✅ Created VPC service: "), "{human}");
    assert!(
        human.contains("HTTP port: disabled") && human.contains("HTTPS port: 8443"),
        "{human}"
    );

    // A tunnel in use cannot be deleted; the error names the services.
    let refused = state.wvpc(&["tunnel", "delete", "home"]);
    assert_eq!(refused.code(), 1);
    assert!(
        refused.stderr().contains("\"api\"") && refused.stderr().contains(&id),
        "{}",
        refused.stderr()
    );

    assert!(state.ok(&["service", "delete", &id]).contains(&id));
    let gone = state.wvpc(&["service", "get", &id]);
    assert_eq!(gone.code(), 1);
    assert!(
        gone.stderr()
            .contains(&format!("error: no VPC service {id}")),
        "{}",
        gone.stderr()
    );
    assert_eq!(
        state
            .json(&["service", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn update_replaces_the_whole_service() {
    let state = State::new();
    let tunnel = state.tunnel("home");
    let created = state.json(&[
        "service",
        "create",
        "api",
        "--type",
        "http",
        "--tunnel-id",
        &tunnel,
        "--hostname",
        "api.internal",
        "--json",
    ]);
    let id = created["service_id"].as_str().unwrap();
    let updated = state.json(&[
        "service",
        "update",
        id,
        "--name",
        "db",
        "--type",
        "tcp",
        "--tunnel-id",
        &tunnel,
        "--hostname",
        "db.internal:5432",
        "--json",
    ]);
    assert_eq!(updated["service_id"], id);
    assert_eq!(updated["name"], "db");
    assert_eq!(updated["type"], "tcp");
    assert_eq!(
        updated["tcp_port"], 5432,
        "the port is taken out of --hostname for tcp"
    );
    assert_eq!(updated["host"]["hostname"], "db.internal");
    assert_eq!(updated["created_at"], created["created_at"]);
}

#[test]
fn hostname_and_ipv4_together_are_refused_naming_both() {
    let state = State::new();
    let tunnel = state.tunnel("home");
    let run = state.wvpc(&[
        "service",
        "create",
        "api",
        "--type",
        "http",
        "--tunnel-id",
        &tunnel,
        "--hostname",
        "x",
        "--ipv4",
        "1.2.3.4",
    ]);
    assert_eq!(run.code(), 2, "usage error");
    let err = run.stderr();
    assert!(
        err.contains("--hostname") && err.contains("--ipv4"),
        "{err}"
    );
}

#[test]
fn resolver_ips_without_hostname_are_refused() {
    let state = State::new();
    let tunnel = state.tunnel("home");
    let run = state.wvpc(&[
        "service",
        "create",
        "api",
        "--type",
        "http",
        "--tunnel-id",
        &tunnel,
        "--ipv4",
        "10.0.0.1",
        "--resolver-ips",
        "10.0.0.53",
    ]);
    assert_eq!(run.code(), 2);
    assert!(
        run.stderr().contains("--resolver-ips") && run.stderr().contains("--ipv4"),
        "{}",
        run.stderr()
    );
    assert_eq!(
        state.json(&["service", "list", "--json"]),
        serde_json::json!([])
    );
}

#[test]
fn a_bad_resolver_ip_is_refused_with_its_flag() {
    let state = State::new();
    let tunnel = state.tunnel("home");
    let run = state.wvpc(&[
        "service",
        "create",
        "api",
        "--type",
        "http",
        "--tunnel-id",
        &tunnel,
        "--hostname",
        "api.internal",
        "--resolver-ips",
        "10.0.0.53,nope",
    ]);
    assert_eq!(run.code(), 1);
    let err = run.stderr();
    assert!(
        err.contains("--resolver-ips (host.resolver_network.resolver_ips[1])"),
        "{err}"
    );
    assert!(err.contains("\"nope\""), "{err}");
    assert_eq!(
        state.json(&["service", "list", "--json"]),
        serde_json::json!([])
    );
}

#[test]
fn an_unknown_tunnel_id_is_refused() {
    let state = State::new();
    state.tunnel("home");
    let unknown = uuid::Uuid::new_v4().to_string();
    let run = state.wvpc(&[
        "service",
        "create",
        "api",
        "--type",
        "http",
        "--tunnel-id",
        &unknown,
        "--hostname",
        "api.internal",
    ]);
    assert_eq!(run.code(), 1);
    let err = run.stderr();
    assert!(
        err.contains("--tunnel-id") && err.contains(&unknown),
        "{err}"
    );
}

#[test]
fn every_problem_is_printed_at_once() {
    let state = State::new();
    let tunnel = state.tunnel("home");
    let run = state.wvpc(&[
        "service",
        "create",
        "api",
        "--type",
        "tcp",
        "--tunnel-id",
        &tunnel,
        "--ipv4",
        "10.0.0",
        "--ipv6",
        "nope",
        "--tcp-port",
        "70000",
    ]);
    assert_eq!(run.code(), 1);
    let err = run.stderr();
    assert!(
        err.starts_with("error: invalid VPC service (3 problems):"),
        "{err}"
    );
    for flag in [
        "--tcp-port (tcp_port)",
        "--ipv4 (host.ipv4)",
        "--ipv6 (host.ipv6)",
    ] {
        assert!(err.contains(flag), "{flag} missing in:\n{err}");
    }
}

#[test]
fn conflicting_tcp_ports_are_a_usage_error() {
    let state = State::new();
    let tunnel = state.tunnel("home");
    let run = state.wvpc(&[
        "service",
        "create",
        "db",
        "--type",
        "tcp",
        "--tunnel-id",
        &tunnel,
        "--hostname",
        "db.internal:5432",
        "--tcp-port",
        "5433",
    ]);
    assert_eq!(run.code(), 2);
    assert!(
        run.stderr().contains("conflicting TCP port"),
        "{}",
        run.stderr()
    );
}

#[test]
fn stubbed_and_missing_things_fail_cleanly() {
    let state = State::new();
    let run = state.wvpc(&["tunnel", "delete", "nope"]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr()
            .starts_with("error: no tunnel with id or name \"nope\""),
        "{}",
        run.stderr()
    );
    let run = state.wvpc(&["service", "get", "not-a-uuid"]);
    assert_eq!(run.code(), 2);
}

#[test]
fn edge_ca_export_prints_or_writes_the_ca_connectors_trust() {
    let state = State::new();
    let printed = state.ok(&["edge", "ca", "export"]);
    assert!(
        printed.starts_with("-----BEGIN CERTIFICATE-----"),
        "{printed}"
    );
    // The same CA every time: it is the state directory's identity.
    assert_eq!(state.ok(&["edge", "ca", "export"]), printed);
    let out = state.path().join("exported-ca.pem");
    let said = state.ok(&["edge", "ca", "export", "--out", out.to_str().unwrap()]);
    assert!(said.contains("--cacert"), "{said}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), printed);
}

#[test]
fn edge_ca_import_refuses_a_key_that_is_not_the_cas_and_keeps_the_identity() {
    let state = State::new();
    let before = state.ok(&["edge", "ca", "export"]);
    let cert = state.path().join("operator-ca.pem");
    std::fs::write(&cert, &before).unwrap();
    let key = state.path().join("operator-ca-key.pem");
    // The generated CA's key is not kept, so the leaf key cannot sign for it.
    let leaf_key = std::fs::read_to_string(state.path().join("edge").join("edge-key.pem")).unwrap();
    std::fs::write(&key, leaf_key).unwrap();
    let run = state.wvpc(&[
        "edge",
        "ca",
        "import",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_ne!(run.code(), 0);
    assert!(run.stderr().contains("left unchanged"), "{}", run.stderr());
    assert!(run.stderr().contains("does not verify"), "{}", run.stderr());
    assert_eq!(state.ok(&["edge", "ca", "export"]), before);
}

#[test]
fn relay_ca_export_and_import_give_two_nodes_one_relay_ca() {
    let first = State::new();
    let out_dir = first.path().join("shared-relay-ca");
    let said = first.ok(&[
        "relay",
        "ca",
        "export",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(said.contains("wvpc relay ca import"), "{said}");
    let (cert, key) = (out_dir.join("ca.pem"), out_dir.join("ca-key.pem"));
    let exported = std::fs::read_to_string(&cert).unwrap();
    assert!(
        exported.starts_with("-----BEGIN CERTIFICATE-----"),
        "{exported}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is the owner's only: {mode:o}");
    }

    let second = State::new();
    // A key that is not the CA's is refused and nothing changes.
    let other_dir = second.path().join("other");
    second.ok(&[
        "relay",
        "ca",
        "export",
        "--out-dir",
        other_dir.to_str().unwrap(),
    ]);
    let before = std::fs::read_to_string(second.path().join("relay").join("ca.pem")).unwrap();
    let run = second.wvpc(&[
        "relay",
        "ca",
        "import",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        other_dir.join("ca-key.pem").to_str().unwrap(),
    ]);
    assert_ne!(run.code(), 0);
    assert!(run.stderr().contains("left unchanged"), "{}", run.stderr());
    assert_eq!(
        std::fs::read_to_string(second.path().join("relay").join("ca.pem")).unwrap(),
        before
    );
    // The right pair: the second node now holds the first node's CA.
    second.ok(&[
        "relay",
        "ca",
        "import",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(second.path().join("relay").join("ca.pem")).unwrap(),
        exported
    );
}

#[test]
fn tunnel_create_says_where_the_credentials_file_is_and_how_to_run_cloudflared() {
    let state = State::new();
    let out = state.ok(&["tunnel", "create", "lab"]);
    let id = state.json(&["tunnel", "list", "--json"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = state.path().join("tunnels").join(format!("{id}.json"));
    assert!(file.is_file());
    assert!(
        out.contains(&format!(
            "Credentials file (cloudflared format): {}",
            file.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("run --credentials-file {} {id}", file.display())),
        "{out}"
    );
    assert!(out.contains("--cacert ca.pem"), "{out}");
}

/// A `wvpc` process kept running, with its stdout read line by line.
struct Daemon {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Daemon {
    fn spawn(state: &State, args: &[&str]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wvpc"))
            .arg("--state")
            .arg(state.path())
            .args(args)
            .env("RUST_LOG", "warn")
            .env_remove("WVPC_STATE")
            .env_remove("TUNNEL_TOKEN")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run wvpc");
        let stdout = child.stdout.take().unwrap();
        let lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        Daemon { child, lines }
    }

    /// The next stdout line that starts with `prefix` (trimmed); panics at end of output.
    fn line(&mut self, prefix: &str) -> String {
        for line in self.lines.by_ref() {
            let line = line.unwrap();
            if line.trim_start().starts_with(prefix) {
                return line.trim().to_owned();
            }
        }
        panic!("wvpc ended without printing a line starting with {prefix:?}");
    }

    /// SIGTERM, then the exit status and the rest of stdout.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let rest: Vec<String> = self.lines.by_ref().map_while(Result::ok).collect();
        (self.child.wait().unwrap(), rest.join("\n"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /metrics` over a plain TCP socket.
fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn iris_and_a_connector_run_as_processes_report_metrics_and_tunnel_info_and_drain_on_sigterm() {
    let state = State::new();
    let token = state.json(&["tunnel", "create", "office", "--json"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut iris = Daemon::spawn(
        &state,
        &[
            "iris",
            "--listen",
            "127.0.0.1:0",
            "--edge-listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--node-name",
            "iris-test",
        ],
    );
    let ready = iris.line("ready:");
    let edge = ready
        .split("connectors on ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no edge address in {ready:?}"))
        .to_owned();
    let iris_metrics = iris.line("metrics on http://");
    let iris_metrics = iris_metrics
        .trim_start_matches("metrics on http://")
        .trim_end_matches("/metrics")
        .to_owned();

    let mut connector = Daemon::spawn(
        &state,
        &[
            "tunnel",
            "run",
            "--token",
            &token,
            "--edge",
            &edge,
            "--ha-connections",
            "1",
            "--allow",
            "10.0.0.0/8",
            "--max-active-flows",
            "5",
            "--grace-period",
            "2s",
        ],
    );
    connector.line("registered:");

    // Connection records reach the directory through iris's writer queue, a moment after the
    // connector hears it is registered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let info = loop {
        let info = state.ok(&["tunnel", "info", "office"]);
        if info.contains("1 live connection(s) from 1 connector(s)")
            || std::time::Instant::now() > deadline
        {
            break info;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        info.contains("1 live connection(s) from 1 connector(s)"),
        "{info}"
    );
    assert!(
        info.contains("iris-test") && info.contains("wvpc-connector/"),
        "{info}"
    );
    let metrics = scrape(&iris_metrics);
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(
        metrics.contains("wvpc_iris_tunnel_connections{state=\"active\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("wvpc_iris_registrations_total{result=\"ok\"} 1"));

    // SIGTERM: the connector unregisters and exits cleanly, then iris drains and exits.
    let (status, _) = connector.terminate();
    assert!(status.success(), "the connector exited with {status}");
    let (status, rest) = iris.terminate();
    assert!(status.success(), "iris exited with {status}");
    assert!(rest.contains("stopped: every stream finished"), "{rest}");
}

#[test]
fn bad_connector_flags_are_refused_naming_the_flag() {
    let state = State::new();
    let token = state.json(&["tunnel", "create", "office", "--json"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ca = state.path().join("ca.pem");
    std::fs::write(&ca, "not a pem").unwrap();
    let base = [
        "tunnel",
        "run",
        "--token",
        token.as_str(),
        "--edge",
        "127.0.0.1:7844",
        "--cacert",
        ca.to_str().unwrap(),
    ];
    let run = state.wvpc(&[&base[..], &["--allow", "10.0.0.0/33"]].concat());
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr()
            .contains("--allow \"10.0.0.0/33\": prefix \"33\""),
        "{}",
        run.stderr()
    );
    let run = state.wvpc(&[&base[..], &["--grace-period", "soon"]].concat());
    assert_eq!(run.code(), 2);
    assert!(run.stderr().contains("not a duration"), "{}", run.stderr());
}

#[test]
fn a_private_ca_is_read_from_its_file_and_checked() {
    let state = State::new();
    let tunnel = state.tunnel("home");
    let create = |ca: &Path| {
        state.wvpc(&[
            "service",
            "create",
            "secure",
            "--type",
            "http",
            "--tunnel-id",
            &tunnel,
            "--hostname",
            "secure.internal",
            "--ca-certificate",
            ca.to_str().unwrap(),
            "--json",
        ])
    };
    let ca = rcgen::generate_simple_self_signed(vec!["ca.internal".to_owned()])
        .unwrap()
        .cert
        .pem();
    let ca_file = state.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let created: Value = serde_json::from_str(&create(&ca_file).stdout()).unwrap();
    // Without --cert-verification-mode the CA comes with the default, verify_full.
    assert_eq!(
        created["tls_settings"]["cert_verification_mode"],
        "verify_full"
    );
    assert_eq!(created["tls_settings"]["ca_certificate"], ca.as_str());

    let not_a_cert = state.path().join("key.pem");
    std::fs::write(&not_a_cert, "hello").unwrap();
    let run = create(&not_a_cert);
    assert_eq!(run.code(), 1);
    let err = run.stderr();
    assert!(
        err.contains("--ca-certificate (tls_settings.ca_certificate)") && err.contains("no PEM"),
        "{err}"
    );
    let run = create(&state.path().join("missing.pem"));
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(
        run.stderr().contains("--ca-certificate: cannot read"),
        "{}",
        run.stderr()
    );
    assert_eq!(
        state
            .json(&["service", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn accounts_have_subdomains_that_can_be_set() {
    let state = State::new();
    let id = state.ok(&["account", "create", "Team B"]).trim().to_owned();
    assert_eq!(id.len(), 32, "{id}");
    let json = state.json(&[
        "account",
        "create",
        "--name",
        "ops",
        "--subdomain",
        "ops-1",
        "--json",
    ]);
    assert_eq!(
        (json["name"].as_str(), json["subdomain"].as_str()),
        (Some("ops"), Some("ops-1"))
    );
    let list = state.ok(&["account", "list"]);
    let rows: Vec<Vec<&str>> = list
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["ID", "NAME", "SUBDOMAIN", "CREATED"], "{list}");
    assert_eq!(rows[1][1..3], ["local", "local"], "{list}");
    assert_eq!(rows[2][..4], [id.as_str(), "Team", "B", "team-b"], "{list}");

    let taken = state.wvpc(&["account", "create", "x", "--subdomain", "team-b"]);
    assert_eq!(taken.code(), 1);
    assert!(
        taken
            .stderr()
            .contains("the subdomain \"team-b\" is taken by another account; pick another"),
        "{}",
        taken.stderr()
    );

    assert_eq!(state.ok(&["account", "subdomain"]), "local\n");
    assert_eq!(
        state.ok(&["account", "subdomain", "--for-account", &id]),
        "team-b\n"
    );
    let local_id = rows[1][0];
    assert_eq!(
        state.ok(&["account", "subdomain", "--set", "home"]),
        format!(
            "✅ Account {local_id} now serves its scripts at <script>.home.workers.localhost (the \
             suffix is the runtimes' --workers-domain)\n"
        )
    );
    let bad = state.wvpc(&["account", "subdomain", "--set", "Home.Lab"]);
    assert_eq!(bad.code(), 1);
    assert!(
        bad.stderr().contains(
            "invalid subdomain \"Home.Lab\": contains 'H'; use only lowercase letters, digits and \
             '-' (e.g. \"home-lab\")"
        ),
        "{}",
        bad.stderr()
    );
    assert_eq!(state.ok(&["account", "subdomain"]), "home\n");
}

#[test]
fn the_api_keeps_serving_with_1100_idle_connections_under_a_1024_fd_limit() {
    use std::io::{Read as _, Write as _};
    let state = State::new();
    // `ulimit -n` sets the hard limit too: wvpc cannot raise it and sizes its cap from 1 024.
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -n 1024 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_wvpc"))
        .arg("--state")
        .arg(state.path())
        .args([
            "directory",
            "--listen",
            "127.0.0.1:0",
            "--header-read-timeout",
            "1s",
        ])
        .env("RUST_LOG", "warn")
        .env_remove("WVPC_STATE")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run wvpc");
    let stdout = child.stdout.take().unwrap();
    let mut daemon = Daemon {
        child,
        lines: std::io::BufRead::lines(std::io::BufReader::new(stdout)),
    };
    let ready = daemon.line("ready:");
    let addr = ready
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {ready:?}"))
        .to_owned();

    let idle: Vec<std::net::TcpStream> = (0..1_100)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // New clients get an explained 503 (or, while many are being refused, a closed
    // connection) until the server has closed idle connections, then they are served.
    let patience = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut refused = 0;
    let served = loop {
        assert!(
            std::time::Instant::now() < patience,
            "the API never served again ({refused} refusals)"
        );
        let Ok(mut stream) = std::net::TcpStream::connect(&addr) else {
            continue;
        };
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let request =
            "GET /client/v4/user/tokens/verify HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            continue;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        if answer.starts_with("HTTP/1.1 503") {
            assert!(answer.contains("connections open, its limit"), "{answer}");
            refused += 1;
        } else if !answer.is_empty() {
            break answer;
        }
    };
    // No token: the API's own answer, so it served the request.
    assert!(served.starts_with("HTTP/1.1 401"), "{served}");
    // The idle connections it accepted were closed by the server (the others were refused).
    for mut stream in idle.into_iter().take(20) {
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut rest = Vec::new();
        let closed = stream.read_to_end(&mut rest);
        assert!(
            closed.is_ok()
                || closed.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "an idle connection was not closed"
        );
    }
    let (status, _) = daemon.terminate();
    assert!(status.success(), "wvpc directory exited with {status}");
}

#[test]
fn commands_work_on_a_postgres_directory_and_say_when_it_is_unreachable() {
    let Some(server) = wvpc_pg_harness::PgServer::shared() else {
        return;
    };
    let url = server.create_database();
    let state = State::new();
    let id = state.json(&["--directory", &url, "tunnel", "create", "office", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Another state directory, the same store: the tunnel is there, the local file is not.
    let other = State::new();
    let listed = other.ok(&["--directory", &url, "tunnel", "list"]);
    assert!(listed.contains(&id), "{listed}");
    assert!(!other.path().join("wvpc.db").exists());
    assert!(!other.ok(&["tunnel", "list"]).contains(&id));

    let refused = state.wvpc(&[
        "--directory",
        "postgres://wvpc@127.0.0.1:1/nowhere",
        "tunnel",
        "list",
    ]);
    assert_ne!(refused.code(), 0);
    assert!(
        refused
            .stderr()
            .contains("directory unavailable: postgres 127.0.0.1:1/nowhere: "),
        "{}",
        refused.stderr()
    );
    let bad = state.wvpc(&["--directory", "mysql://x/y", "tunnel", "list"]);
    assert_ne!(bad.code(), 0);
    assert!(
        bad.stderr().contains("invalid --directory"),
        "{}",
        bad.stderr()
    );
}

#[test]
fn vnets_and_routes_are_managed_by_name_and_refused_with_the_argument_to_fix() {
    let state = State::new();
    let tunnel = state.tunnel("office");
    let vnets = state.json(&["vnet", "list", "--json"]);
    assert_eq!(vnets.as_array().unwrap().len(), 1);
    assert_eq!(vnets[0]["name"], "default");
    assert_eq!(vnets[0]["is_default"], true);

    let lab = state.json(&["vnet", "add", "lab", "--comment", "the lab", "--json"]);
    assert_eq!(
        (lab["name"].as_str(), lab["is_default"].as_bool()),
        (Some("lab"), Some(false))
    );
    let lab_id = lab["id"].as_str().unwrap();

    let route = state.json(&[
        "route",
        "ip",
        "add",
        "10.1.0.0/16",
        "office",
        "--vnet",
        "lab",
        "--json",
    ]);
    assert_eq!(route["network"], "10.1.0.0/16");
    assert_eq!(route["tunnel_id"], tunnel.as_str());
    assert_eq!(route["virtual_network_id"], lab_id);
    let added = state.ok(&["route", "ip", "add", "10.0.0.0/24", &tunnel]);
    assert!(
        added.starts_with("✅ Added route 10.0.0.0/24 through tunnel \"office\"")
            && added.contains("in virtual network \"default\""),
        "{added}"
    );

    let run = state.wvpc(&["route", "ip", "add", "10.0.0.5/24", "office"]);
    assert_eq!(run.code(), 1);
    assert_eq!(
        run.stderr().trim_end(),
        "error: invalid route (1 problem):\n  CIDR (network): \"10.0.0.5/24\" has host bits set; \
         use the network address \"10.0.0.0/24\""
    );
    let run = state.wvpc(&["route", "ip", "add", "10.0.0.0/24", "office"]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr()
            .contains("already routed in virtual network \"default\""),
        "{}",
        run.stderr()
    );
    let run = state.wvpc(&["route", "ip", "add", "10.9.0.0/16", "nope"]);
    assert!(
        run.stderr().contains("no tunnel \"nope\""),
        "{}",
        run.stderr()
    );
    let run = state.wvpc(&[
        "route",
        "ip",
        "add",
        "10.9.0.0/16",
        "office",
        "--vnet",
        "nope",
    ]);
    assert!(
        run.stderr().contains("no virtual network \"nope\""),
        "{}",
        run.stderr()
    );

    let listed = state.ok(&["route", "ip", "show", "--vnet", "lab"]);
    assert!(
        listed.contains("10.1.0.0/16") && !listed.contains("10.0.0.0/24"),
        "{listed}"
    );
    assert!(
        listed.lines().next().unwrap().contains("VIRTUAL NET"),
        "{listed}"
    );
    let by_tunnel = state.json(&["route", "ip", "list", "--tunnel", "office", "--json"]);
    assert_eq!(by_tunnel.as_array().unwrap().len(), 2);

    // What uses a virtual network or tunnel is named.
    let run = state.wvpc(&["vnet", "delete", "lab"]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr().contains("route(s) 10.1.0.0/16"),
        "{}",
        run.stderr()
    );
    let run = state.wvpc(&["tunnel", "delete", "office"]);
    assert!(run.stderr().contains("10.0.0.0/24"), "{}", run.stderr());
    let run = state.wvpc(&["vnet", "delete", "default"]);
    assert!(
        run.stderr().contains("make another one the default first"),
        "{}",
        run.stderr()
    );

    // Delete by CIDR (in --vnet) and by id; then the lab can become the default.
    state.ok(&["route", "ip", "delete", "10.1.0.0/16", "--vnet", "lab"]);
    let run = state.wvpc(&["route", "ip", "delete", route["id"].as_str().unwrap()]);
    assert!(
        run.stderr().contains("no route"),
        "deleted already: {}",
        run.stderr()
    );
    let default_route = state.json(&["route", "ip", "list", "--json"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    state.ok(&["route", "ip", "delete", &default_route]);
    let updated = state.json(&[
        "vnet",
        "update",
        "lab",
        "--default",
        "--name",
        "lab2",
        "--json",
    ]);
    assert_eq!(
        (updated["name"].as_str(), updated["is_default"].as_bool()),
        (Some("lab2"), Some(true))
    );
    assert!(
        state
            .ok(&["vnet", "delete", "default"])
            .contains("Deleted virtual network \"default\"")
    );
}

#[test]
fn an_http_service_takes_a_tcp_port_and_a_virtual_network() {
    let state = State::new();
    let tunnel = state.tunnel("office");
    let lab = state.json(&["vnet", "create", "lab", "--json"]);
    let lab_id = lab["id"].as_str().unwrap();
    let args = [
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
        lab_id,
    ];
    let run = state.wvpc(&args);
    assert_eq!(run.code(), 1);
    let err = run.stderr();
    assert!(
        err.contains("--virtual-network-id (host.network.virtual_network_id): tunnel")
            && err.contains("covering 10.1.2.3"),
        "{err}"
    );
    state.ok(&[
        "route",
        "ip",
        "add",
        "10.1.0.0/16",
        "office",
        "--vnet",
        "lab",
    ]);
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let web = state.json(&json_args);
    assert_eq!(web["tcp_port"], 2222);
    assert_eq!(web["http_port"], 80);
    assert_eq!(web["host"]["network"]["virtual_network_id"], lab_id);
    let shown = state.ok(&["service", "get", web["service_id"].as_str().unwrap()]);
    assert!(
        shown.contains("TCP port (connect()): 2222") && shown.contains(lab_id),
        "{shown}"
    );
}
