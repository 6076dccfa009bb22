//! The guest components the tests run, built once per test run with cargo for
//! `wasm32-wasip2` into `target/guests` (a separate target dir: the outer `cargo test` holds
//! the lock of the usual one). Cargo makes this a no-op when they are up to date.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub struct Guests {
    /// `examples/proxy`: forwards everything to binding `API`.
    pub proxy: PathBuf,
    /// `sdk/examples/runtime_checks.rs`: traps, plain outbound HTTP, undeclared binding.
    pub checks: PathBuf,
    /// `sdk/examples/sockets.rs`: Redis over `connect()`, echo with half-close, fetches
    /// through a network binding.
    pub sockets: PathBuf,
}

pub fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(build)
}

fn build() -> Guests {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let target_dir = workspace.join("target").join("guests");
    cargo_build(workspace, &target_dir, &["-p", "wvpc-example-proxy"]);
    cargo_build(
        workspace,
        &target_dir,
        &["-p", "wvpc-sdk", "--example", "runtime-checks"],
    );
    cargo_build(
        workspace,
        &target_dir,
        &["-p", "wvpc-sdk", "--example", "sockets"],
    );
    let out = target_dir.join("wasm32-wasip2").join("debug");
    Guests {
        proxy: out.join("wvpc_example_proxy.wasm"),
        checks: out.join("examples").join("runtime_checks.wasm"),
        sockets: out.join("examples").join("sockets.wasm"),
    }
}

fn cargo_build(workspace: &Path, target_dir: &Path, what: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(target_dir)
        .args(what)
        .status()
        .expect("run cargo to build a guest");
    assert!(
        status.success(),
        "building guest {what:?} failed (is the wasm32-wasip2 target installed?)"
    );
}
