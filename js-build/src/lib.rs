//! Builds JavaScript and TypeScript scripts into WebAssembly components that the runtime
//! serves like a Rust script: `main: "src/index.js"` in wrangler.jsonc.
//!
//! The build bundles the entry with `esbuild`, wraps it in the project's shim (which serves
//! `export default { fetch(request, env, ctx) }` on `wasi:http/incoming-handler` and gives
//! `env` its bindings) and turns the bundle into a component with
//! `@bytecodealliance/componentize-js`. Both come from npm at pinned versions, installed once
//! into the cache directory; components are cached there by the hash of what went into them.

use std::path::{Path, PathBuf};

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
    NodeMissing { main: String, found: String },
    /// The script has errors; the bundler's messages with file, line and column.
    #[error("{0}")]
    Script(String),
    /// The build tools failed.
    #[error("building the JavaScript script failed: {0}")]
    Tooling(String),
}

/// Builds JavaScript scripts, with its npm toolchain and its outputs in one cache directory.
#[derive(Debug, Clone)]
pub struct JsBuilder {
    cache_dir: PathBuf,
}

impl JsBuilder {
    /// A builder whose toolchain and outputs live in `cache_dir`.
    pub fn new(cache_dir: PathBuf) -> Self {
        Self { cache_dir }
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

    /// Builds the script whose entry module is `entry` (its imports are bundled).
    pub fn build_entry(&self, entry: &Path) -> Result<BuiltScript, JsBuildError> {
        let _ = entry;
        Err(JsBuildError::Tooling("not implemented yet".into()))
    }

    /// Builds an uploaded module worker: `modules` are (name, bytes), `main_module` names
    /// the entry among them.
    pub fn build_modules(
        &self,
        main_module: &str,
        modules: &[(String, Vec<u8>)],
    ) -> Result<BuiltScript, JsBuildError> {
        let _ = (main_module, modules);
        Err(JsBuildError::Tooling("not implemented yet".into()))
    }
}
