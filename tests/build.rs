//! Builds the example scripts the integration tests run (wasm32-wasip2 components) and
//! exports their paths as `WVPC_GUEST_<NAME>` compile-time env vars.
//!
//! The guests get their own target dir (`target/guests/<checkout>`) so this nested cargo never
//! waits on the lock of the build that runs it, and two checkouts that share one
//! `CARGO_TARGET_DIR` never overwrite each other's guests.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::process::Command;

/// (env name, package, example of that package or `None` for the package's own cdylib).
const GUESTS: &[(&str, &str, Option<&str>)] = &[
    ("PROXY", "wvpc-example-proxy", None),
    ("BINDING_CHECKS", "wvpc-sdk", Some("binding-checks")),
    ("WEBSOCKET", "wvpc-sdk", Some("websocket")),
    ("SOCKETS", "wvpc-sdk", Some("sockets")),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    for dir in ["sdk", "examples", "schemas/wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guests")
        .join(checkout_key(&root));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for &(name, package, example) in GUESTS {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&root)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "-p",
                package,
            ])
            .arg("--target-dir")
            .arg(&target_dir);
        if let Some(example) = example {
            cmd.args(["--example", example]);
        }
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
            .expect("running cargo to build the wasm guests");
        assert!(
            status.success(),
            "building guest {package} for wasm32-wasip2 failed (is the target installed? \
             `rustup target add wasm32-wasip2`)"
        );
        let release = target_dir.join("wasm32-wasip2/release");
        let wasm = match example {
            None => release.join(format!("{}.wasm", package.replace('-', "_"))),
            Some(example) => release
                .join("examples")
                .join(format!("{}.wasm", example.replace('-', "_"))),
        };
        assert!(
            wasm.exists(),
            "guest build did not produce {}",
            wasm.display()
        );
        println!("cargo:rustc-env=WVPC_GUEST_{name}={}", wasm.display());
    }
}

/// A short stable name for the checkout at `root` (its path, hashed).
fn checkout_key(root: &std::path::Path) -> String {
    let mut hasher = DefaultHasher::new();
    root.hash(&mut hasher);
    format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}
