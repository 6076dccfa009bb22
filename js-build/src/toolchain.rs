//! The build tools of JavaScript scripts: Node.js from the machine, and the pinned npm
//! packages of `toolchain/package-lock.json` (componentize-js, esbuild), installed with
//! `npm ci` into `<cache>/toolchain-<hash>` the first time a script is built. The hash covers
//! everything the project ships for the build (lock, build script, shim, WIT), so a new
//! version of wvpc installs beside an old one instead of mixing with it.

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
    dir: PathBuf,
    key: String,
    node: PathBuf,
}

impl Toolchain {
    /// The toolchain in `cache_dir`, installed now if it is not yet (once per machine and
    /// version; concurrent builds wait for one install). `entry` names the script in errors.
    pub fn ready(cache_dir: &Path, entry: &Path) -> Result<Self, JsBuildError> {
        let node = node_binary(entry)?;
        let key = key();
        let dir = cache_dir.join(format!("toolchain-{}", &key[..16]));
        let installed = dir.join(".installed");
        if !installed.is_file() {
            install(cache_dir, &dir)?;
        }
        Ok(Self { dir, key, node })
    }

    /// A `node` command run in the current directory (paths in messages are relative to it).
    pub fn node(&self) -> Command {
        let mut command = Command::new(&self.node);
        command.env("NODE_PATH", self.dir.join("node_modules"));
        command
    }

    /// The build script (`js/build.mjs`).
    pub fn script(&self) -> PathBuf {
        self.dir.join("build.mjs")
    }

    /// The shim every script is bundled behind (`js/shim.js`).
    pub fn shim(&self) -> PathBuf {
        self.dir.join("shim.js")
    }

    /// The script world's WIT, pinned to the engine's WASI version.
    pub fn wit(&self) -> PathBuf {
        self.dir.join("wit")
    }

    /// The hash of what the project ships for the build: part of every component's key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// The hash of the lock, the build script, the shim and the WIT.
fn key() -> String {
    let mut hash = digest::Context::new(&digest::SHA256);
    for part in [PACKAGE_JSON, PACKAGE_LOCK, BUILD_SCRIPT, SHIM] {
        hash.update(part.as_bytes());
        hash.update(b"\0");
    }
    for (name, text) in crate::wit::files() {
        hash.update(name.as_bytes());
        hash.update(text.as_bytes());
    }
    hex::encode(hash.finish())
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
    let wit = staging.join("wit");
    std::fs::create_dir_all(wit.join("deps")).map_err(|e| io("the toolchain", &staging, e))?;
    let mut files = vec![
        ("package.json".to_owned(), PACKAGE_JSON.to_owned()),
        ("package-lock.json".to_owned(), PACKAGE_LOCK.to_owned()),
        ("build.mjs".to_owned(), BUILD_SCRIPT.to_owned()),
        ("shim.js".to_owned(), SHIM.to_owned()),
    ];
    files.extend(
        crate::wit::files()
            .into_iter()
            .map(|(name, text)| (format!("wit/{name}"), text)),
    );
    for (name, text) in files {
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
