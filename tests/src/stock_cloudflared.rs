//! The stock `cloudflared` connector as a test peer: the binary named by the environment
//! variable [`CLOUDFLARED_ENV`], probed for the flags its version has, run as a child process
//! against a local edge, and an isolated network for it.
//!
//! cloudflared looks things up on the internet on its own (edge SRV records, DNS-over-TLS to
//! 1.1.1.1, feature TXT records), all best-effort. Tests must send traffic only to loopback, so
//! tests that run it re-run themselves in a fresh user + network namespace that has nothing
//! but loopback ([`isolated`]): there those lookups fail at once and nothing leaves the host.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context as _;
use uuid::Uuid;

/// The environment variable naming a cloudflared binary.
pub const CLOUDFLARED_ENV: &str = "CLOUDFLARED";
/// Set in the re-run inside the isolated network namespace.
const ISOLATED_ENV: &str = "WVPC_TEST_ISOLATED_NETNS";

/// A cloudflared binary and what its version supports.
#[derive(Debug, Clone)]
pub struct Cloudflared {
    /// The binary.
    pub binary: PathBuf,
    /// What `--version` printed, e.g. `cloudflared version 2026.8.2 (built …)`.
    pub version: String,
    /// The feature that selects datagram v3: `support_datagram_v3_2` from 2025.10,
    /// `support_datagram_v3_1` before.
    pub v3_feature: &'static str,
    /// Whether `--no-prechecks` exists (2026.5 and later).
    pub has_no_prechecks: bool,
}

impl Cloudflared {
    /// The binary named by `CLOUDFLARED`, or `None` (the caller skips, saying so).
    pub fn from_env() -> Option<anyhow::Result<Self>> {
        let binary = PathBuf::from(std::env::var_os(CLOUDFLARED_ENV)?);
        Some(Self::probe(binary))
    }

    fn probe(binary: PathBuf) -> anyhow::Result<Self> {
        let run = |args: &[&str]| -> anyhow::Result<String> {
            let out = std::process::Command::new(&binary)
                .args(args)
                .output()
                .with_context(|| format!("running {} {args:?}", binary.display()))?;
            Ok(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        };
        let version = run(&["--version"])?.trim().to_owned();
        let (year, month) = parse_version(&version)
            .with_context(|| format!("unrecognised cloudflared version {version:?}"))?;
        let v3_feature = if (year, month) >= (2025, 10) {
            "support_datagram_v3_2"
        } else {
            "support_datagram_v3_1"
        };
        let help = run(&["tunnel", "--help"])?;
        Ok(Self {
            binary,
            version,
            v3_feature,
            has_no_prechecks: help.contains("--no-prechecks"),
        })
    }

    /// Starts `cloudflared tunnel … run …` with its log in `log`.
    pub fn run(&self, options: &RunOptions, log: &Path) -> anyhow::Result<CloudflaredProcess> {
        let args = self.args(options);
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("creating the cloudflared log {}", log.display()))?;
        let child = tokio::process::Command::new(&self.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        Ok(CloudflaredProcess {
            child,
            log: log.to_owned(),
            command: format!("{} {}", self.binary.display(), args.join(" ")),
        })
    }

    /// The command line: the operator's command from the docs, plus test-only quietness.
    pub fn args(&self, o: &RunOptions) -> Vec<String> {
        let mut args: Vec<String> = ["tunnel", "--no-autoupdate", "--protocol", "quic"]
            .map(String::from)
            .into();
        for edge in &o.edges {
            args.extend(["--edge".into(), edge.to_string()]);
        }
        args.extend([
            "--cacert".into(),
            o.ca.display().to_string(),
            "--ha-connections".into(),
            o.ha_connections.to_string(),
            "--metrics".into(),
            "127.0.0.1:0".into(),
            "--loglevel".into(),
            "debug".into(),
        ]);
        if self.has_no_prechecks {
            args.push("--no-prechecks".into());
        }
        args.extend([
            "run".into(),
            "--credentials-file".into(),
            o.credentials.display().to_string(),
        ]);
        if let Some(max) = o.max_active_flows {
            args.extend(["--max-active-flows".into(), max.to_string()]);
        }
        for resolver in &o.dns_resolvers {
            args.extend(["--dns-resolver-addrs".into(), resolver.to_string()]);
        }
        if o.datagram_v3 {
            args.extend(["--features".into(), self.v3_feature.into()]);
        }
        args.push(o.tunnel_id.to_string());
        args
    }
}

/// `2026.8.2` in `cloudflared version 2026.8.2 (built …)` → (2026, 8).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let word = text.split_whitespace().find(|w| w.contains('.'))?;
    let mut parts = word.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// What to run cloudflared with.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `--edge` values (each one counts as an address).
    pub edges: Vec<SocketAddr>,
    /// `--cacert`.
    pub ca: PathBuf,
    /// `--credentials-file`.
    pub credentials: PathBuf,
    /// The tunnel.
    pub tunnel_id: Uuid,
    /// `--dns-resolver-addrs`.
    pub dns_resolvers: Vec<SocketAddr>,
    /// Pass the version's datagram-v3 feature; otherwise cloudflared speaks datagram v2.
    pub datagram_v3: bool,
    /// `--ha-connections`.
    pub ha_connections: usize,
    /// `--max-active-flows` (TCP flows plus UDP sessions), if given.
    pub max_active_flows: Option<usize>,
}

/// A running cloudflared; killed when dropped.
pub struct CloudflaredProcess {
    child: tokio::process::Child,
    log: PathBuf,
    /// The command line, for failure messages.
    pub command: String,
}

impl CloudflaredProcess {
    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `Some(status)` once it exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// Where a test runs with respect to network isolation.
#[derive(Debug)]
pub enum Isolation {
    /// This process is the isolated re-run: do the work.
    Inside,
    /// The isolated re-run of the test passed; nothing left to do here.
    Passed,
    /// No user + network namespace can be made here (the reason); the caller skips.
    Unavailable(String),
}

/// Runs the test `name` of the current test binary again inside a new user + network
/// namespace with only loopback up, unless this already is that run. Panics (failing the test)
/// with the re-run's output when it fails.
pub fn isolated(name: &str) -> Isolation {
    if std::env::var_os(ISOLATED_ENV).is_some() {
        return Isolation::Inside;
    }
    let unshare = |tail: &[&str]| {
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--user", "--map-root-user", "--net", "--", "sh", "-c"])
            .arg(r#"ip link set lo up && exec "$@""#)
            .arg("sh")
            .args(tail);
        cmd
    };
    match unshare(&["true"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Isolation::Unavailable(format!(
                "`unshare --user --map-root-user --net` + `ip link set lo up` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Err(e) => return Isolation::Unavailable(format!("cannot run `unshare`: {e}")),
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = unshare(&[
        exe.to_str().expect("a UTF-8 test binary path"),
        name,
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ISOLATED_ENV, "1")
    .output()
    .expect("running the isolated test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Show what the re-run printed (captured by the harness unless --nocapture).
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "the isolated run of {name} failed ({})",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the isolated run did not run {name}:\n{stdout}"
    );
    Isolation::Passed
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions_are_parsed_from_cloudflareds_banner() {
        assert_eq!(
            parse_version("cloudflared version 2026.8.2 (built 2026-08-14-1122 UTC)"),
            Some((2026, 8))
        );
        assert_eq!(
            parse_version("cloudflared version 2025.9.0 (built x)"),
            Some((2025, 9))
        );
        assert_eq!(parse_version("garbage"), None);
    }
}
