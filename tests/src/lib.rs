//! Test harness for workers-vpc: real servers on loopback `:0` ports, built like Lego.
//!
//! - [`origin`]: a private HTTP origin that records what it received.
//! - [`dns`]: a real DNS server (UDP) answering from a table, with fault switches.
//! - [`mock_tunnel`]: iris's `MockTunnel` (dials loopback, injects faults) answering DNS
//!   from a [`dns::DnsTable`], for tests that do not need QUIC.
//! - [`stack`]: `MockStack`, iris's router, the binding-worker and the runtime with a script
//!   over real sockets on a [`mock_tunnel::MockTunnel`]. The real QUIC path runs
//!   `wvpc_platform::stack::Stack`, exactly what `wvpc dev` runs: [`real::RealWorld`].
//! - [`stock_cloudflared`]: the stock cloudflared connector (binary from `CLOUDFLARED`) as a
//!   child process, in a network namespace with only loopback.
//! - [`fault`]: a UDP relay in front of the edge that can go silent (a connector "killed"),
//!   and a TCP forwarder that can be partitioned and healed.
//! - [`netns`]: a network namespace for one process, with a link the test can take down.
//! - [`redis`]: a real `redis-server` on loopback, for scripts speaking RESP over `connect()`.
//! - [`client`]: a one-request HTTP/1.1 client.
//! - [`browser`]: a headless Chromium driven over the DevTools protocol, for pages checked as
//!   a user sees them (skips without Chromium).
//! - [`guests`]: paths of the example scripts, built for wasm32-wasip2 by this crate's build
//!   script.

pub mod browser;
pub mod client;
pub mod dns;
pub mod fault;
pub mod mock_tunnel;
pub mod netns;
pub mod origin;
pub mod real;
pub mod redis;
pub mod stack;
pub mod stock_cloudflared;

/// Paths of the guest components built by `build.rs`.
pub mod guests {
    /// `examples/proxy`: forwards each request to binding `API`.
    pub const PROXY: &str = env!("WVPC_GUEST_PROXY");
    /// `sdk/examples/binding_checks.rs`: `/<scheme>/<host>/<rest>` fetched through `API`,
    /// the outcome reported as the script saw it.
    pub const BINDING_CHECKS: &str = env!("WVPC_GUEST_BINDING_CHECKS");
    /// `sdk/examples/websocket.rs`: `/echo/<text>` as a WebSocket exchange through `API`.
    pub const WEBSOCKET: &str = env!("WVPC_GUEST_WEBSOCKET");
    /// `sdk/examples/sockets.rs`: `connect()` through a binding — `/redis` (PING, SET, GET in
    /// RESP), `/echo` (write, half-close, read to the end), `/fetch?url=` through a network
    /// binding, `/open`, `/stash`; failures answer `502 ProxyError: <code>`.
    pub const SOCKETS: &str = env!("WVPC_GUEST_SOCKETS");
    /// `examples/proxy-js`: the proxy in JavaScript — its entry module, built into a
    /// component by the runtime when loaded (`wvpc_js_build`; needs Node.js, see
    /// [`javascript_builds`]).
    pub const PROXY_JS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/proxy-js/src/index.js"
    );

    /// `tests/js/binding_checks.js`: the `binding_checks` guest in JavaScript (it answers
    /// `ProxyError: <code>` without the wasi:http variant).
    pub const BINDING_CHECKS_JS: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/js/binding_checks.js");
    /// `tests/js/websocket.js`: the `websocket` guest's exchange in JavaScript.
    pub const WEBSOCKET_JS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/js/websocket.js");

    /// Whether JavaScript scripts can be built here (Node.js ≥ 20 and npm); prints why not
    /// (`SKIPPED (node): …`) for the test that then returns early.
    pub fn javascript_builds() -> bool {
        let node = std::process::Command::new("node").arg("--version").output();
        let npm = std::process::Command::new("npm").arg("--version").output();
        match (node, npm) {
            (Ok(node), Ok(npm)) if node.status.success() && npm.status.success() => true,
            _ => {
                println!("SKIPPED (node): JavaScript scripts need Node.js ≥ 20 and npm to build");
                false
            }
        }
    }
}

/// Installs a tracing subscriber once (`RUST_LOG` controls it; quiet by default).
pub fn trace_init() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A fresh, empty directory under the system temp dir (removed when the value drops).
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Creates `<tmp>/wvpc-<label>-<random>`.
    pub fn new(label: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("wvpc-{label}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// [`within`] for a start that builds and compiles a JavaScript script (seconds of node and
/// of compiling a 13 MB component the first time, more while other tests compile).
pub async fn within_build<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(300), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Bounds a test await: a hang fails the test with `what` instead of blocking CI.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}
