//! A throwaway PostgreSQL server for tests: Debian's `postgresql` binaries, `initdb` into a
//! temporary folder and `pg_ctl` on a free loopback port, with `fsync=off`.
//!
//! PostgreSQL refuses to run as root, so as root (CI) the server runs as the `postgres` user
//! through `runuser`. A guardian shell holds a pipe from the test process: when the process
//! ends, however it ends, the pipe closes and the guardian stops the server and removes its
//! folder, so no server outlives the tests that started it.
//!
//! Tests that find no PostgreSQL print why ([`PgServer::start`] returns [`Unavailable`]) and
//! skip; `.ci/run` installs the package, so nothing is skipped there.

use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The superuser the cluster is created with (trust authentication on loopback).
pub const USER: &str = "wvpc";

/// Why no server could be started: printed by tests that then skip.
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A running throwaway cluster. Dropping it stops the server and removes its folder.
pub struct PgServer {
    bindir: PathBuf,
    dir: PathBuf,
    host: Ipv4Addr,
    port: u16,
    run_as_postgres: bool,
    guardian: Mutex<Option<(Child, ChildStdin)>>,
}

impl PgServer {
    /// Starts a new cluster listening on `127.0.0.1`.
    pub fn start() -> Result<PgServer, Unavailable> {
        PgServer::start_on(Ipv4Addr::LOCALHOST)
    }

    /// Starts a new cluster listening on `host` (a loopback address, or the test's end of a
    /// link into a network namespace the test made).
    pub fn start_on(host: Ipv4Addr) -> Result<PgServer, Unavailable> {
        let bindir = bindir()?;
        let run_as_postgres = is_root();
        let dir =
            std::env::temp_dir().join(format!("wvpc-pg-{}-{}", std::process::id(), next_id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Unavailable(format!("creating {}: {e}", dir.display())))?;
        if run_as_postgres {
            run(
                Command::new("chown").arg("postgres:postgres").arg(&dir),
                "chown",
            )?;
        }
        let data = dir.join("data");
        let mut initdb = command(&bindir, "initdb", run_as_postgres);
        initdb.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            USER,
            "--no-sync",
            "-E",
            "UTF8",
            "--no-instructions",
        ]);
        if let Err(e) = run(&mut initdb, "initdb") {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        // initdb trusts loopback clients only; a server on a test link (a network namespace's
        // veth) trusts whoever reaches its one listen address.
        if !host.is_loopback() {
            let hba = data.join("pg_hba.conf");
            let trusted = std::fs::OpenOptions::new()
                .append(true)
                .open(&hba)
                .and_then(|mut file| writeln!(file, "host all all 0.0.0.0/0 trust"));
            if let Err(e) = trusted {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(Unavailable(format!("writing {}: {e}", hba.display())));
            }
        }
        let guardian = guardian(&bindir, &data, &dir, run_as_postgres)?;
        let mut server = PgServer {
            bindir,
            dir,
            host,
            port: 0,
            run_as_postgres,
            guardian: Mutex::new(Some(guardian)),
        };
        // A free port can be taken between our probe and the server's bind: try a few.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port(host)?;
            match server.pg_ctl_start() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Unavailable("pg_ctl start failed".into())))
    }

    /// One server for the whole test process, started on first use; `None` (after printing
    /// why once) where PostgreSQL is not installed.
    pub fn shared() -> Option<&'static PgServer> {
        static SHARED: OnceLock<Result<PgServer, Unavailable>> = OnceLock::new();
        match SHARED.get_or_init(PgServer::start) {
            Ok(server) => Some(server),
            Err(why) => {
                static SAID: OnceLock<()> = OnceLock::new();
                SAID.get_or_init(|| eprintln!("SKIPPED (PostgreSQL): {why}"));
                None
            }
        }
    }

    /// The address the server listens on.
    pub fn host(&self) -> Ipv4Addr {
        self.host
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@{}:{}/{database}", self.host, self.port)
    }

    /// Creates a new empty database with a unique name and returns its URL.
    pub fn create_database(&self) -> String {
        let name = format!("t_{}_{}", std::process::id(), next_id());
        let mut createdb = Command::new(self.bindir.join("createdb"));
        createdb
            .args([
                "-h",
                &self.host.to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
            ])
            .arg(&name);
        run(&mut createdb, "createdb").unwrap_or_else(|e| panic!("{e}"));
        self.url(&name)
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn kill(&self) {
        let mut stop = command(&self.bindir, "pg_ctl", self.run_as_postgres);
        stop.arg("-D")
            .arg(self.data())
            .args(["stop", "-m", "immediate", "-w"]);
        run(&mut stop, "pg_ctl stop").unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts the server again on the same port after [`PgServer::kill`].
    pub fn restart(&self) {
        self.pg_ctl_start().unwrap_or_else(|e| panic!("{e}"));
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_ctl_start(&self) -> Result<(), Unavailable> {
        let options = format!(
            "-k {} -c listen_addresses={} -p {} -c fsync=off \
             -c full_page_writes=off -c max_connections=300",
            self.dir.display(),
            self.host,
            self.port
        );
        let mut start = command(&self.bindir, "pg_ctl", self.run_as_postgres);
        start
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-o", &options, "-w", "-t", "60", "start"]);
        run(&mut start, "pg_ctl start").map_err(|e| {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            Unavailable(format!("{e}; server log ends: {}", tail.join(" | ")))
        })
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let guardian = self
            .guardian
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((mut child, stdin)) = guardian {
            // Closing the pipe is the guardian's signal to stop the server and clean up.
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// A shell that waits for its stdin to close, then stops the server and removes `dir`.
fn guardian(
    bindir: &Path,
    data: &Path,
    dir: &Path,
    run_as_postgres: bool,
) -> Result<(Child, ChildStdin), Unavailable> {
    let as_postgres = if run_as_postgres {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "cat >/dev/null; {as_postgres}\"$0\" -D \"$1\" stop -m immediate -w >/dev/null 2>&1; \
         rm -rf \"$2\""
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(bindir.join("pg_ctl"))
        .arg(data)
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Unavailable(format!("starting the guardian shell: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Nothing is ever written; a write error would only mean the guardian already left.
    let _ = stdin.flush();
    Ok((child, stdin))
}

/// The folder of `initdb` and `pg_ctl`: `pg_config --bindir` (Debian diverts it to the
/// newest server's), else the newest `/usr/lib/postgresql/<version>/bin`.
fn bindir() -> Result<PathBuf, Unavailable> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        Unavailable(
            "no PostgreSQL server binaries (initdb, pg_ctl): install Debian's `postgresql`".into(),
        )
    })
}

fn command(bindir: &Path, program: &str, run_as_postgres: bool) -> Command {
    if run_as_postgres {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(bindir.join(program));
        command
    } else {
        Command::new(bindir.join(program))
    }
}

fn run(command: &mut Command, what: &str) -> Result<(), Unavailable> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Unavailable(format!("running {what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Unavailable(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port(host: Ipv4Addr) -> Result<u16, Unavailable> {
    TcpListener::bind((host, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| Unavailable(format!("finding a free port on {host}: {e}")))
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psql(server: &PgServer, url: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(server.bindir.join("psql"))
            .args(["-X", "-A", "-t", "-c", sql, url])
            .output()
            .expect("running psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    #[test]
    fn a_server_serves_databases_survives_a_crash_and_is_gone_after_drop() {
        let server = match PgServer::start() {
            Ok(server) => server,
            Err(why) => {
                eprintln!("SKIPPED (PostgreSQL): {why}");
                return;
            }
        };
        let url = server.create_database();
        psql(
            &server,
            &url,
            "CREATE TABLE t (v int); INSERT INTO t VALUES (7)",
        )
        .unwrap();
        assert_eq!(psql(&server, &url, "SELECT v FROM t").unwrap(), "7");

        server.kill();
        assert!(
            psql(&server, &url, "SELECT 1").is_err(),
            "a killed server refuses"
        );
        server.restart();
        assert_eq!(
            psql(&server, &url, "SELECT v FROM t").unwrap(),
            "7",
            "data kept"
        );

        let dir = server.dir.clone();
        drop(server);
        assert!(!dir.exists(), "the folder is removed");
        assert!(psql_at(&url).is_err(), "the server is stopped");
    }

    fn psql_at(url: &str) -> Result<(), ()> {
        let bindir = bindir().map_err(|_| ())?;
        let out = Command::new(bindir.join("psql"))
            .args(["-X", "-c", "SELECT 1", url])
            .output()
            .map_err(|_| ())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(())
        }
    }
}
