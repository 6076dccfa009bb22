//! Builds the example script (`script/`) for wasm32-wasip2 and exports the component's path
//! as the compile-time env var `WVPC_EXAMPLE_SCRIPT`, for the tests.
//!
//! The guest gets its own target dir (`<target>/guests/<checkout>`, shared with the guests of
//! `tests/`) so this nested cargo never waits on the lock of the build that runs it.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::process::Command;

const PACKAGE: &str = "wvpc-example-testing-script";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest
        .ancestors()
        .nth(2)
        .expect("examples/testing is two levels below the workspace root")
        .to_path_buf();
    for dir in ["sdk", "examples/testing/script", "schemas/wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guests")
        .join(checkout_key(&root));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            PACKAGE,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // Settings of the outer (host) build must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("running cargo to build the example script");
    assert!(
        status.success(),
        "building {PACKAGE} for wasm32-wasip2 failed (is the target installed? \
         `rustup target add wasm32-wasip2`)"
    );
    let wasm = target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", PACKAGE.replace('-', "_")));
    assert!(
        wasm.exists(),
        "the build did not produce {}",
        wasm.display()
    );
    println!("cargo:rustc-env=WVPC_EXAMPLE_SCRIPT={}", wasm.display());
}

/// A short stable name for the checkout at `root` (its path, hashed), as `tests/build.rs`.
fn checkout_key(root: &std::path::Path) -> String {
    let mut hasher = DefaultHasher::new();
    root.hash(&mut hasher);
    format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}
