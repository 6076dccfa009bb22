//! The workerd row: Cloudflare's open-source Workers runtime running the same script shape as
//! our proxy example — every request forwarded with `env.ORIGIN.fetch(request)`, one hop out —
//! to the same origin, as a peer measured in the same run. It runs only where the `workerd`
//! npm package (or a `workerd` binary) is installed:
//!
//! ```text
//! mkdir -p /tmp/peers/workerd && cd /tmp/peers/workerd && npm init -y && npm install workerd
//! ```
//!
//! The bench binds the listening socket itself (loopback, port 0) and hands it to workerd as
//! `--socket-fd`: no port is guessed, and a connection made before workerd's first `accept`
//! waits in the backlog rather than failing.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;
use command_fds::{CommandFdExt as _, FdMapping};

use crate::usage::Pid;

/// The script: what `examples/proxy` does, in workerd's JavaScript.
const SCRIPT: &str = "export default {\n  async fetch(request, env) {\n    return env.ORIGIN.fetch(request);\n  },\n};\n";

/// The descriptor number the socket has in workerd.
const SOCKET_FD: i32 = 3;

/// Where workerd is: `$WORKERD`, else `workerd` on `PATH`, else the npm package's binary in
/// `./node_modules` or in the peer baseline's folder (`$PEERS_WORK`, default `/tmp/peers`).
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WORKERD") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("workerd"))
            .find(|path| path.is_file())
    });
    if on_path.is_some() {
        return on_path;
    }
    let peers = std::env::var_os("PEERS_WORK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/peers"));
    let package = Path::new("node_modules/@cloudflare/workerd-linux-64/bin/workerd");
    [PathBuf::from("."), peers.join("workerd")]
        .into_iter()
        .map(|dir| dir.join(package))
        .find(|path| path.is_file())
}

/// A running `workerd serve`, ended when dropped.
pub struct Workerd {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    _config: tempfile::TempDir,
}

impl Workerd {
    /// Starts `binary` serving the forwarding script, its `ORIGIN` binding pointing at
    /// `origin` (plain HTTP).
    pub fn start(binary: &Path, origin: SocketAddr) -> anyhow::Result<Workerd> {
        let config = tempfile::tempdir()?;
        std::fs::write(config.path().join("worker.js"), SCRIPT)?;
        std::fs::write(
            config.path().join("bench.capnp"),
            format!(
                "using Workerd = import \"/workerd/workerd.capnp\";\n\
                 const config :Workerd.Config = (\n\
                 \x20 services = [\n\
                 \x20   (name = \"main\", worker = .worker),\n\
                 \x20   (name = \"origin\", external = (address = \"{origin}\", http = ())),\n\
                 \x20 ],\n\
                 \x20 sockets = [ (name = \"http\", http = (), service = \"main\") ],\n\
                 );\n\
                 const worker :Workerd.Worker = (\n\
                 \x20 modules = [ (name = \"worker\", esModule = embed \"worker.js\") ],\n\
                 \x20 compatibilityDate = \"2024-09-23\",\n\
                 \x20 bindings = [ (name = \"ORIGIN\", service = \"origin\") ],\n\
                 );\n"
            ),
        )?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let mut command = Command::new(binary);
        command
            .current_dir(config.path())
            .args(["serve", "bench.capnp", "config", "--socket-fd"])
            .arg(format!("http={SOCKET_FD}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
            .fd_mappings(vec![FdMapping {
                parent_fd: OwnedFd::from(listener),
                child_fd: SOCKET_FD,
            }])
            .context("handing workerd its socket")?;
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Workerd {
            child,
            addr,
            _config: config,
        })
    }

    /// Its process, for the usage figures.
    pub fn pid(&self) -> Pid {
        Pid::Child(self.child.id())
    }
}

impl Drop for Workerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
