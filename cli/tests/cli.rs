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
    assert_eq!(keys, ["id", "name", "token"]);
    assert_eq!(v["name"], "home");
    let id = v["id"].as_str().unwrap();

    let creds = Credentials::from_token(v["token"].as_str().unwrap()).unwrap();
    assert_eq!(creds.tunnel_id.to_string(), id);
    assert_eq!(creds.account_tag.len(), 32);
    assert_eq!(creds.tunnel_secret.len(), 32);

    let file = state.path().join("tunnels").join(format!("{id}.json"));
    let from_file = Credentials::from_file_json(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(from_file, creds);
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
