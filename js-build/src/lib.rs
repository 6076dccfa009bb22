//! Builds JavaScript and TypeScript scripts into WebAssembly components that the runtime
//! serves like a Rust script: `main: "src/index.js"` in wrangler.jsonc.
//!
//! The build bundles the entry with `esbuild` behind the project's shim (`js/shim.js`: it
//! serves `export default { fetch(request, env, ctx) }` on `wasi:http/incoming-handler` and
//! gives `env` its bindings), then turns the bundle into a component with
//! `@bytecodealliance/componentize-js` against the script world's WIT pinned to the WASI
//! version of its engine ([`wit`]). Both tools come from npm at pinned versions, installed
//! once into the cache directory ([`toolchain`]); components are cached there by the hash of
//! the bundle and the toolchain, so an unchanged script is never compiled twice.

pub mod toolchain;
pub mod wit;

use std::path::{Path, PathBuf};
use std::process::Command;

use ring::digest;

use crate::toolchain::Toolchain;

/// Whether `main` names a JavaScript or TypeScript entry (by its extension).
pub fn is_javascript(main: &Path) -> bool {
    matches!(
        main.extension().and_then(|e| e.to_str()),
        Some("js" | "mjs" | "ts" | "mts")
    )
}

/// A built script.
#[derive(Debug, Clone)]
pub struct BuiltScript {
    /// The component, in the cache directory.
    pub wasm: PathBuf,
    /// The source files that went into it (for a rebuild when one changes).
    pub inputs: Vec<PathBuf>,
    /// Whether the component came from the cache (nothing was compiled).
    pub cached: bool,
}

/// Why a script could not be built. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum JsBuildError {
    /// No usable Node.js.
    #[error("main: {main:?} needs Node.js ≥ 20 to build JavaScript scripts ({found})")]
    NodeMissing {
        /// The script's entry.
        main: String,
        /// What was found instead (`node` not on PATH, or its version).
        found: String,
    },
    /// The script has problems: the bundler's messages with file, line and column, or the
    /// exception its top level threw.
    #[error("{0}")]
    Script(String),
    /// The build tools failed (installing them, or running them).
    #[error("building the JavaScript script failed: {0}")]
    Tooling(String),
}

/// Builds JavaScript scripts, with its npm toolchain and its outputs in one cache directory.
#[derive(Debug, Clone)]
pub struct JsBuilder {
    cache_dir: PathBuf,
    bindings: Vec<String>,
}

impl JsBuilder {
    /// A builder whose toolchain and outputs live in `cache_dir`.
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            cache_dir,
            bindings: Vec::new(),
        }
    }

    /// The names of the script's bindings (`vpc_services` and `vpc_networks`): the
    /// properties of the `env` its handler is given. They are part of the build.
    pub fn with_bindings(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.bindings = names.into_iter().collect();
        self.bindings.sort();
        self
    }

    /// A builder on `$WVPC_JS_CACHE_DIR`, else `$XDG_CACHE_HOME/wvpc/js`, else
    /// `~/.cache/wvpc/js`.
    pub fn from_env() -> Self {
        let dir = std::env::var_os("WVPC_JS_CACHE_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .map(|base| base.join("wvpc").join("js"))
            })
            .unwrap_or_else(|| std::env::temp_dir().join("wvpc-js"));
        Self::new(dir)
    }

    /// The cache directory (toolchain and built components).
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Builds the script whose entry module is `entry` (its imports are bundled). Blocking:
    /// it runs node, and compiles for seconds unless the result is cached.
    pub fn build_entry(&self, entry: &Path) -> Result<BuiltScript, JsBuildError> {
        self.build_in(entry, None)
    }

    /// [`Self::build_entry`], with node run in `cwd` (messages name files relative to it)
    /// instead of the current directory.
    fn build_in(&self, entry: &Path, cwd: Option<&Path>) -> Result<BuiltScript, JsBuildError> {
        let toolchain = Toolchain::ready(&self.cache_dir, entry)?;
        let node = || {
            let mut command = toolchain.node();
            if let Some(cwd) = cwd {
                command.current_dir(cwd);
            }
            command
        };
        let shown = cwd
            .and_then(|cwd| entry.strip_prefix(cwd).ok())
            .unwrap_or(entry);
        let work = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&self.cache_dir)
            .map_err(|e| tooling("a build directory", &self.cache_dir, e))?;
        let mut bundle = node();
        bundle
            .arg(toolchain.script())
            .arg("bundle")
            .arg(entry)
            .arg(toolchain.shim())
            .arg(serde_json::to_string(&self.bindings).unwrap_or_default())
            .arg(work.path());
        run(bundle, "bundling the script")?;
        let bundled = work.path().join("bundle.js");
        let code = std::fs::read(&bundled).map_err(|e| tooling("the bundle", &bundled, e))?;
        let listed = work.path().join("inputs.json");
        let inputs: Vec<PathBuf> = std::fs::read(&listed)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();

        let key = {
            let mut hash = digest::Context::new(&digest::SHA256);
            hash.update(toolchain.key().as_bytes());
            // What this crate does to the component after the tools (the marker section).
            hash.update(ISOLATION_SECTION.as_bytes());
            hash.update(&code);
            hex::encode(hash.finish())
        };
        let builds = self.cache_dir.join("builds");
        let wasm = builds.join(format!("{key}.wasm"));
        if wasm.is_file() {
            // Recently used: kept when older builds are pruned.
            let _ = std::fs::File::open(&wasm)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return Ok(BuiltScript {
                wasm,
                inputs,
                cached: true,
            });
        }
        std::fs::create_dir_all(&builds).map_err(|e| tooling("the build cache", &builds, e))?;
        let out = work.path().join("script.wasm");
        let mut componentize = node();
        componentize
            .arg(toolchain.script())
            .arg("componentize")
            .arg(&bundled)
            .arg(toolchain.wit())
            .arg(&out)
            .arg(shown);
        run(componentize, "making the component")?;
        mark_one_request_per_instance(&out)?;
        // A rename, so that a concurrent build of the same script never sees half a file.
        std::fs::rename(&out, &wasm).map_err(|e| tooling("the built component", &wasm, e))?;
        prune(&builds, KEPT_BUILDS);
        tracing::info!(entry = %entry.display(), wasm = %wasm.display(), "built JavaScript script");
        Ok(BuiltScript {
            wasm,
            inputs,
            cached: false,
        })
    }

    /// Builds an uploaded module worker: `modules` are (name, bytes), `main_module` names
    /// the entry among them. Module names are relative paths (`index.js`, `lib/util.js`);
    /// messages name files by them (`index.js:3:28: error: …`).
    pub fn build_modules(
        &self,
        main_module: &str,
        modules: &[(String, Vec<u8>)],
    ) -> Result<BuiltScript, JsBuildError> {
        std::fs::create_dir_all(&self.cache_dir)
            .map_err(|e| tooling("the cache directory", &self.cache_dir, e))?;
        let sources = tempfile::Builder::new()
            .prefix("upload-")
            .tempdir_in(&self.cache_dir)
            .map_err(|e| tooling("an upload directory", &self.cache_dir, e))?;
        for (name, bytes) in modules {
            let relative = Path::new(name);
            let safe = relative
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !safe {
                return Err(JsBuildError::Script(format!(
                    "module name {name:?} is not a relative path inside the upload"
                )));
            }
            let path = sources.path().join(relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| tooling("a module", parent, e))?;
            }
            std::fs::write(&path, bytes).map_err(|e| tooling("a module", &path, e))?;
        }
        if !modules.iter().any(|(name, _)| name == main_module) {
            return Err(JsBuildError::Script(format!(
                "main_module {main_module:?} is not among the uploaded modules"
            )));
        }
        // Run in the upload's directory: messages name the modules as they were uploaded.
        let mut built = self.build_in(&sources.path().join(main_module), Some(sources.path()))?;
        // The upload's files are temporary; there is nothing to watch.
        built.inputs.clear();
        Ok(built)
    }
}

/// Built components kept in the cache (about 13 MB each); the least recently used go first.
const KEPT_BUILDS: usize = 32;

/// Removes all but the `keep` most recently used components in `builds`. Best effort: a
/// file another build is using stays readable (it is only unlinked).
fn prune(builds: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(builds) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    for (_, path) in files.drain(keep..) {
        let _ = std::fs::remove_file(path);
    }
}

/// The custom section by which the runtime gives each request a fresh instance: the
/// engine creates its fetch event once per instance, so an instance serves one request.
/// (`wvpc_runtime`'s `ISOLATION_SECTION`.)
pub const ISOLATION_SECTION: &str = "wvpc:isolation";

/// Appends [`ISOLATION_SECTION`] = `request` to the component at `path` (custom sections may
/// stand anywhere at a component's top level).
fn mark_one_request_per_instance(path: &Path) -> Result<(), JsBuildError> {
    use wasm_encoder::ComponentSection as _;
    let mut section = Vec::new();
    wasm_encoder::CustomSection {
        name: ISOLATION_SECTION.into(),
        data: b"request".as_slice().into(),
    }
    .append_to_component(&mut section);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| tooling("the component", path, e))?;
    std::io::Write::write_all(&mut file, &section).map_err(|e| tooling("the component", path, e))
}

fn tooling(what: &str, path: &Path, err: std::io::Error) -> JsBuildError {
    JsBuildError::Tooling(format!("{what} ({}): {err}", path.display()))
}

/// Runs one step of the build: exit status 2 is a problem of the script, others the tools'.
fn run(mut command: Command, what: &str) -> Result<(), JsBuildError> {
    let output = command
        .output()
        .map_err(|e| JsBuildError::Tooling(format!("{what}: running node: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr)
        .trim_end()
        .to_owned();
    match output.status.code() {
        Some(2) => Err(JsBuildError::Script(stderr)),
        _ => Err(JsBuildError::Tooling(format!(
            "{what}: {}\n{stderr}",
            output.status
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_most_recently_used_builds() {
        let dir = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        for (i, name) in ["old.wasm", "mid.wasm", "new.wasm"].iter().enumerate() {
            let path = dir.path().join(name);
            std::fs::write(&path, b"\0asm").unwrap();
            let at = now - std::time::Duration::from_secs(100 * (3 - i as u64));
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(at)
                .unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"kept").unwrap();
        prune(dir.path(), 2);
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["mid.wasm", "new.wasm", "notes.txt"]);
    }
}
