//! Loading a script: read `main`, compile it once, pre-instantiate it against the linker.
//!
//! Everything that can be checked before the first request is checked here, with errors that
//! name `main`: not a file, a core module instead of a component, an invalid component, or a
//! component that imports something the runtime does not provide.

use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::host::{HostState, ScriptPre};

/// Why a [`Runtime`](crate::Runtime) could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// `main` could not be read.
    #[error("main: cannot read {}: {source}", path.display())]
    ReadMain {
        /// The resolved `main` path.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// `main` is a core WebAssembly module; scripts must be components.
    #[error(
        "main: {} is a core WebAssembly module, not a component (build the script with \
         `cargo build --target wasm32-wasip2`)",
        path.display()
    )]
    NotAComponent {
        /// The resolved `main` path.
        path: PathBuf,
    },
    /// `main` is not WebAssembly, or a malformed component.
    #[error("main: {} is not a valid WebAssembly component: {reason}", path.display())]
    InvalidComponent {
        /// The resolved `main` path.
        path: PathBuf,
        /// What wasmtime reported.
        reason: String,
    },
    /// The component does not fit the `wvpc:bindings/script` world (a missing
    /// `wasi:http/incoming-handler` export, an import the runtime does not provide).
    #[error(
        "main: {} cannot run as a workers-vpc script (it must export \
         wasi:http/incoming-handler@0.2.x and import only WASI 0.2 and wvpc:bindings/vpc): \
         {reason}",
        path.display()
    )]
    IncompatibleComponent {
        /// The resolved `main` path.
        path: PathBuf,
        /// What wasmtime reported.
        reason: String,
    },
    /// The wasmtime engine could not be created.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    /// The binding-worker client thread could not be started.
    #[error("cannot start the binding-worker client: {0}")]
    BindingClient(#[source] std::io::Error),
}

const WASM_MAGIC: &[u8] = b"\0asm";
/// Version field of a core module (a component has layer 1 there instead).
const CORE_MODULE_VERSION: &[u8] = &[1, 0, 0, 0];

/// Compiles the component at `path` and pre-instantiates it.
pub(crate) fn load(engine: &Engine, path: &Path) -> Result<ScriptPre<HostState>, RuntimeError> {
    let bytes = std::fs::read(path).map_err(|source| RuntimeError::ReadMain {
        path: path.into(),
        source,
    })?;
    if bytes.starts_with(WASM_MAGIC) && bytes.get(4..8) == Some(CORE_MODULE_VERSION) {
        return Err(RuntimeError::NotAComponent { path: path.into() });
    }
    if !bytes.starts_with(WASM_MAGIC) {
        return Err(RuntimeError::InvalidComponent {
            path: path.into(),
            reason: "the file does not start with the WebAssembly magic bytes".into(),
        });
    }
    let component = Component::new(engine, &bytes).map_err(|e| RuntimeError::InvalidComponent {
        path: path.into(),
        reason: format!("{e:#}"),
    })?;
    let incompatible = |e: wasmtime::Error| RuntimeError::IncompatibleComponent {
        path: path.into(),
        reason: format!("{e:#}"),
    };
    let linker = crate::host::linker(engine).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
    let pre = linker.instantiate_pre(&component).map_err(incompatible)?;
    ScriptPre::new(pre).map_err(incompatible)
}
