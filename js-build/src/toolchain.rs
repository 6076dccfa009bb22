//! The build tools of JavaScript scripts: Node.js from the machine, and the pinned npm
//! packages of `toolchain/package-lock.json` (componentize-js, esbuild), installed with
//! `npm ci` into `<cache>/toolchain-<hash of the lock>` the first time a script is built; a
//! wvpc with other pins installs beside it instead of mixing with it. The project's own build
//! files (build script, shim, WIT) go into `kit-<their hash>/` inside it, where the build
//! script resolves the packages from the parent `node_modules`: a wvpc that changes only
//! those reuses the installed packages.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ring::digest;

use crate::JsBuildError;

const PACKAGE_JSON: &str = include_str!("../toolchain/package.json");
const PACKAGE_LOCK: &str = include_str!("../toolchain/package-lock.json");
const BUILD_SCRIPT: &str = include_str!("../js/build.mjs");
const SHIM: &str = include_str!("../js/shim.js");
/// Oldest Node.js major version the tools support.
const MIN_NODE_MAJOR: u32 = 20;

/// An installed toolchain.
pub struct Toolchain {
    /// The kit directory (build script, shim, WIT) inside the installed packages' directory.
    kit: PathBuf,
    key: String,
    node: PathBuf,
}

impl Toolchain {
    /// The toolchain in `cache_dir`, installed now if it is not yet (once per machine and
    /// version; concurrent builds wait for one install). `entry` names the script in errors.
    pub fn ready(cache_dir: &Path, entry: &Path) -> Result<Self, JsBuildError> {
        let node = node_binary(entry)?;
        let dir = cache_dir.join(format!(
            "toolchain-{}",
            &hash(&[PACKAGE_JSON, PACKAGE_LOCK])[..16]
        ));
        if !dir.join(".installed").is_file() {
            install(cache_dir, &dir)?;
        }
        let key = key();
        let kit = dir.join(format!("kit-{}", &key[..16]));
        if !kit.join("build.mjs").is_file() {
            write_kit(&dir, &kit)?;
        }
        Ok(Self { kit, key, node })
    }

    /// A `node` command run in the current directory (paths in messages are relative to it).
    pub fn node(&self) -> Command {
        Command::new(&self.node)
    }

    /// The build script (`js/build.mjs`).
    pub fn script(&self) -> PathBuf {
        self.kit.join("build.mjs")
    }

    /// The shim every script is bundled behind (`js/shim.js`).
    pub fn shim(&self) -> PathBuf {
        self.kit.join("shim.js")
    }

    /// The script world's WIT, pinned to the engine's WASI version.
    pub fn wit(&self) -> PathBuf {
        self.kit.join("wit")
    }

    /// The hash of what the project ships for the build: part of every component's key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// The hash of the lock, the build script, the shim and the WIT.
fn key() -> String {
    let wit = crate::wit::files();
    let mut parts = vec![PACKAGE_JSON, PACKAGE_LOCK, BUILD_SCRIPT, SHIM];
    for (name, text) in &wit {
        parts.push(name);
        parts.push(text);
    }
    hash(&parts)
}

/// SHA-256 of `parts`, each ended by a NUL, in hex.
fn hash(parts: &[&str]) -> String {
    let mut hash = digest::Context::new(&digest::SHA256);
    for part in parts {
        hash.update(part.as_bytes());
        hash.update(b"\0");
    }
    hex::encode(hash.finish())
}

/// Writes the build script, the shim and the WIT into `kit` (inside the packages' `dir`),
/// through a fresh directory and a rename so that a concurrent build never sees half a kit.
fn write_kit(dir: &Path, kit: &Path) -> Result<(), JsBuildError> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        JsBuildError::Tooling(format!("{what} ({}): {e}", path.display()))
    };
    let staging = tempfile::Builder::new()
        .prefix("kit-writing-")
        .tempdir_in(dir)
        .map_err(|e| io("the build kit", dir, e))?;
    std::fs::create_dir_all(staging.path().join("wit/deps"))
        .map_err(|e| io("the build kit", staging.path(), e))?;
    let mut files = vec![
        ("build.mjs".to_owned(), BUILD_SCRIPT.to_owned()),
        ("shim.js".to_owned(), SHIM.to_owned()),
    ];
    files.extend(
        crate::wit::files()
            .into_iter()
            .map(|(name, text)| (format!("wit/{name}"), text)),
    );
    for (name, text) in files {
        let path = staging.path().join(name);
        std::fs::write(&path, text).map_err(|e| io("the build kit", &path, e))?;
    }
    let staged = staging.keep();
    if std::fs::rename(&staged, kit).is_err() {
        // Another build wrote the same kit first.
        let _ = std::fs::remove_dir_all(&staged);
    }
    Ok(())
}

/// `$WVPC_NODE`, else `node` on PATH, checked to be Node.js ≥ 20 (once per process).
fn node_binary(entry: &Path) -> Result<PathBuf, JsBuildError> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let node = std::env::var_os("WVPC_NODE")
            .filter(|n| !n.is_empty())
            .map_or_else(|| PathBuf::from("node"), PathBuf::from);
        let output = Command::new(&node)
            .arg("--version")
            .output()
            .map_err(|e| format!("{}: {e}", node.display()))?;
        let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let major = version
            .strip_prefix('v')
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse::<u32>().ok());
        match major {
            Some(major) if major >= MIN_NODE_MAJOR => Ok(node),
            _ => Err(format!("{} --version says {version:?}", node.display())),
        }
    });
    let cwd = std::env::current_dir().unwrap_or_default();
    found.clone().map_err(|found| JsBuildError::NodeMissing {
        main: entry
            .strip_prefix(&cwd)
            .unwrap_or(entry)
            .display()
            .to_string(),
        found,
    })
}

/// Installs the toolchain into `dir`: the files into a fresh directory, `npm ci` there, then
/// a rename, under a lock so that two builds never install at once.
fn install(cache_dir: &Path, dir: &Path) -> Result<(), JsBuildError> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        JsBuildError::Tooling(format!("{what} ({}): {e}", path.display()))
    };
    std::fs::create_dir_all(cache_dir).map_err(|e| io("the cache directory", cache_dir, e))?;
    let lock_path = cache_dir.join("toolchain.lock");
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| io("the install lock", &lock_path, e))?;
    lock.lock()
        .map_err(|e| io("the install lock", &lock_path, e))?;
    if dir.join(".installed").is_file() {
        return Ok(());
    }
    let staging = cache_dir.join(format!(
        "{}.installing",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io("an old install", &staging, e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| io("the toolchain", &staging, e))?;
    for (name, text) in [
        ("package.json", PACKAGE_JSON),
        ("package-lock.json", PACKAGE_LOCK),
    ] {
        let path = staging.join(name);
        std::fs::write(&path, text).map_err(|e| io("the toolchain", &path, e))?;
    }
    let npm = std::env::var_os("WVPC_NPM")
        .filter(|n| !n.is_empty())
        .map_or_else(|| PathBuf::from("npm"), PathBuf::from);
    tracing::info!(dir = %dir.display(), "installing the JavaScript build tools (npm ci)");
    let output = Command::new(&npm)
        .current_dir(&staging)
        .args([
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ])
        .output()
        .map_err(|e| {
            JsBuildError::Tooling(format!(
                "installing the JavaScript build tools: running {}: {e} (npm comes with \
                 Node.js ≥ 20)",
                npm.display()
            ))
        })?;
    if !output.status.success() {
        return Err(JsBuildError::Tooling(format!(
            "installing the JavaScript build tools with `npm ci` in {}: {}\n{}",
            staging.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        )));
    }
    let marker = staging.join(".installed");
    std::fs::write(&marker, b"").map_err(|e| io("the toolchain", &marker, e))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io("a broken install", dir, e))?;
    }
    std::fs::rename(&staging, dir).map_err(|e| io("the toolchain", dir, e))?;
    Ok(())
}
