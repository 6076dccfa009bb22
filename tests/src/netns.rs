//! A network namespace for one process of a test, joined to the test's namespace by two veth
//! links, so that a test can take one link down: the kernel then drops that path's packets
//! silently, as a real partition does, while the other path keeps working.
//!
//! ```text
//!   test's namespace                         the namespace ("wvpc-<pid>-<n>")
//!   10.213.N.1  ── data link ──────────────  10.213.N.2   (the process listens here)
//!   10.213.N.5  ── store link ─────────────  10.213.N.6   (reaches 10.213.N.5 through it)
//! ```
//!
//! The addresses are private, exist only on these links, and go with them. Creating
//! namespaces and links needs root (`CAP_NET_ADMIN`) and the `ip` command: without them
//! [`Netns::create`] says why and the test skips. Dropping it deletes the namespace and both
//! links.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

/// A namespace with its data and store links.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// The test's end of the store link (taken down by [`Netns::cut_store_link`]).
    store_link: String,
    /// The subnet's third octet.
    n: u8,
}

/// Runs `ip args…`; `Err` with its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates the namespace and its two links, up; `Err` (why) where this process may not.
    pub fn create() -> Result<Netns, String> {
        static NEXT: AtomicU8 = AtomicU8::new(0);
        if !rustix::process::geteuid().is_root() {
            return Err("not root: creating network namespaces needs CAP_NET_ADMIN".into());
        }
        let pid = std::process::id();
        let seq = NEXT.fetch_add(1, Ordering::SeqCst);
        // A subnet per (process, namespace), so that parallel test processes do not collide.
        let n = u8::try_from((pid as usize * 8 + usize::from(seq)) % 250).unwrap_or(0) + 1;
        let name = format!("wvpc-{pid}-{seq}");
        let (data, store) = (format!("wvd{pid}x{seq}"), format!("wvs{pid}x{seq}"));
        let netns = Netns {
            name: name.clone(),
            store_link: store.clone(),
            n,
        };
        ip(&["netns", "add", &name])?;
        // From here on, dropping `netns` cleans up what was made.
        for (link, inner, host_ip, ns_ip) in [
            (&data, "data", netns.host_data_ip(), netns.ip()),
            (&store, "store", netns.host_store_ip(), netns.store_ip()),
        ] {
            ip(&[
                "link", "add", link, "type", "veth", "peer", "name", inner, "netns", &name,
            ])?;
            ip(&["addr", "add", &format!("{host_ip}/30"), "dev", link])?;
            ip(&["link", "set", link, "up"])?;
            netns.exec_ip(&["addr", "add", &format!("{ns_ip}/30"), "dev", inner])?;
            netns.exec_ip(&["link", "set", inner, "up"])?;
        }
        netns.exec_ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    fn exec_ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process's address on the data link (where it listens).
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.n, 2)
    }

    /// The test's address on the data link.
    pub fn host_data_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.n, 1)
    }

    /// The test's address on the store link: a server listening here is reached by the
    /// process through the store link only.
    pub fn host_store_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.n, 5)
    }

    fn store_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.n, 6)
    }

    /// `program` run inside the namespace (`ip netns exec <name> program`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Adds `ip` (as a /32 or /128) to the namespace's loopback: an address that exists
    /// only inside it, as a host of a private network does.
    pub fn add_loopback_address(&self, ip: std::net::IpAddr) -> Result<(), String> {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        self.exec_ip(&["addr", "add", &format!("{ip}/{prefix}"), "dev", "lo"])
    }

    /// A TCP listener bound to `addr` *inside* the namespace, for a server this process runs
    /// (a socket stays in the namespace it was made in). Made on a thread of its own that
    /// joins the namespace, so no other thread of the test moves.
    pub fn bind_tcp(&self, addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path)?;
                    rustix::thread::move_into_link_name_space(
                        std::os::fd::AsFd::as_fd(&file),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )?;
                    std::net::TcpListener::bind(addr)
                })
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the binding thread panicked")))
        })
    }

    /// Takes the store link down: from now on the process's packets to
    /// [`Netns::host_store_ip`] are dropped without a word, and no reply reaches it.
    pub fn cut_store_link(&self) {
        ip(&["link", "set", &self.store_link, "down"]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Brings the store link back up.
    pub fn heal_store_link(&self) {
        ip(&["link", "set", &self.store_link, "up"]).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its ends of the veth pairs, and with them ours.
        let _ = ip(&["netns", "del", &self.name]);
    }
}
