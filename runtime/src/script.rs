//! Loading a script: compile its component once (from `main` or a deployment's bytes),
//! pre-instantiate it against the linker, and pair it with what its requests share
//! ([`LoadedScript`]).
//!
//! Everything that can be checked before the first request is checked here: a core module
//! instead of a component, an invalid component, or a component that imports something the
//! runtime does not provide ([`ComponentError`]; [`RuntimeError`] names `main` for a config).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::host::{HostState, ScriptPre};
use crate::instances::InstancePool;
use crate::outbound::ScriptBindings;

/// One loaded version of a script: its pre-instantiated component and what every request of
/// it shares. A request holds the `Arc` it started with, so a redeploy never changes the
/// version under a running request.
pub(crate) struct LoadedScript {
    pub pre: ScriptPre<HostState>,
    /// Which compiled component `pre` is (the module's content hash; `local` for `wvpc dev`).
    pub etag: Arc<str>,
    pub bindings: Arc<ScriptBindings>,
    /// Idle instances of this version, for the next requests (`limits.isolation`).
    pub instances: InstancePool,
    /// The component serves one request per instance whatever `limits.isolation` says
    /// ([`serves_one_request_per_instance`]).
    pub one_request_per_instance: bool,
}

/// The custom section by which a component says that an instance of it serves one request
/// only (JavaScript scripts: their engine's fetch event is created once per instance).
/// Written by `wvpc_js_build`.
pub const ISOLATION_SECTION: &str = wvpc_js_build::ISOLATION_SECTION;

/// Whether the component in `bytes` carries [`ISOLATION_SECTION`] = `request` at its top
/// level (a section of that name inside a nested module or component does not count).
pub(crate) fn serves_one_request_per_instance(bytes: &[u8]) -> bool {
    use wasmparser::Payload;
    // Nesting depth: a nested module or component ends with an `End` of its own.
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(Payload::ModuleSection { .. } | Payload::ComponentSection { .. }) => depth += 1,
            Ok(Payload::End(_)) if depth == 0 => return false,
            Ok(Payload::End(_)) => depth -= 1,
            Ok(Payload::CustomSection(section))
                if depth == 0 && section.name() == ISOLATION_SECTION =>
            {
                return section.data() == b"request";
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// Why a [`Runtime`](crate::Runtime) or [`ScriptHost`](crate::ScriptHost) could not be
/// created.
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
    /// A JavaScript `main` could not be built into a component.
    #[error(transparent)]
    BuildScript(#[from] wvpc_js_build::JsBuildError),
    /// The wasmtime engine could not be created.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    /// The binding-worker client thread could not be started.
    #[error("cannot start the binding-worker client: {0}")]
    BindingClient(#[source] std::io::Error),
    /// The workers domain is not a domain name.
    #[error(
        "workers domain {0:?} is not a domain name (use letters, digits, - and dots, e.g. \
         workers.localhost)"
    )]
    WorkersDomain(String),
}

/// Why a module cannot run as a script (the module, not where it came from, is at fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ComponentError {
    /// A core WebAssembly module; scripts must be components.
    #[error(
        "the module is a core WebAssembly module, not a component (build the script with \
         `cargo build --target wasm32-wasip2`)"
    )]
    NotAComponent,
    /// Not WebAssembly, or a malformed component.
    #[error("the module is not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// The component does not fit the `wvpc:bindings/script` world.
    #[error(
        "the module cannot run as a workers-vpc script (it must export \
         wasi:http/incoming-handler@0.2.x and import only WASI 0.2 and wvpc:bindings/vpc): {0}"
    )]
    Incompatible(String),
    /// The wasmtime engine could not be created.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
}

impl ComponentError {
    /// The same problem as a [`RuntimeError`] naming `main`'s path.
    fn at(self, path: &Path) -> RuntimeError {
        let path = path.into();
        match self {
            ComponentError::NotAComponent => RuntimeError::NotAComponent { path },
            ComponentError::Invalid(reason) => RuntimeError::InvalidComponent { path, reason },
            ComponentError::Incompatible(reason) => {
                RuntimeError::IncompatibleComponent { path, reason }
            }
            ComponentError::Engine(reason) => RuntimeError::Engine(reason),
        }
    }
}

const WASM_MAGIC: &[u8] = b"\0asm";
/// Version field of a core module (a component has layer 1 there instead).
const CORE_MODULE_VERSION: &[u8] = &[1, 0, 0, 0];

/// Compiles the component at `path` and pre-instantiates it; also returns the bytes read.
pub(crate) fn load(
    engine: &Engine,
    path: &Path,
) -> Result<(Vec<u8>, ScriptPre<HostState>), RuntimeError> {
    let bytes = std::fs::read(path).map_err(|source| RuntimeError::ReadMain {
        path: path.into(),
        source,
    })?;
    let pre = compile(engine, &bytes).map_err(|e| e.at(path))?;
    Ok((bytes, pre))
}

/// Compiles a component (or takes it from wasmtime's on-disk cache) and pre-instantiates it
/// against the runtime's linker. CPU-bound: call it off the async threads.
pub(crate) fn compile(
    engine: &Engine,
    bytes: &[u8],
) -> Result<ScriptPre<HostState>, ComponentError> {
    if bytes.starts_with(WASM_MAGIC) && bytes.get(4..8) == Some(CORE_MODULE_VERSION) {
        return Err(ComponentError::NotAComponent);
    }
    if !bytes.starts_with(WASM_MAGIC) {
        return Err(ComponentError::Invalid(
            "it does not start with the WebAssembly magic bytes".into(),
        ));
    }
    let component =
        Component::new(engine, bytes).map_err(|e| ComponentError::Invalid(format!("{e:#}")))?;
    let incompatible = |e: wasmtime::Error| ComponentError::Incompatible(format!("{e:#}"));
    let linker =
        crate::host::linker(engine).map_err(|e| ComponentError::Engine(format!("{e:#}")))?;
    let pre = linker.instantiate_pre(&component).map_err(incompatible)?;
    ScriptPre::new(pre).map_err(incompatible)
}

/// Checks that `bytes` is a component that can run as a script: compiles it on the runtime's
/// engine and links it, exactly as a runtime will. A deploy can refuse a bad module with this
/// reason before storing it; the compiled code lands in the on-disk cache, so a runtime on
/// the same machine does not compile it again. CPU-bound (up to a few hundred milliseconds
/// per MB of wasm): call it off the async threads.
pub fn check_component(bytes: &[u8]) -> Result<(), ComponentError> {
    let engine = crate::engine::shared_engine().map_err(ComponentError::Engine)?;
    compile(&engine, bytes).map(drop)
}

#[cfg(test)]
mod tests {
    use wasm_encoder::{Component, CustomSection, Module, ModuleSection};

    use super::*;

    fn marker(data: &'static [u8]) -> CustomSection<'static> {
        CustomSection {
            name: ISOLATION_SECTION.into(),
            data: data.into(),
        }
    }

    #[test]
    fn only_a_top_level_request_marker_means_one_request_per_instance() {
        assert!(!serves_one_request_per_instance(&Component::new().finish()));

        let mut marked = Component::new();
        marked.section(&marker(b"request"));
        assert!(serves_one_request_per_instance(&marked.finish()));

        let mut other = Component::new();
        other.section(&marker(b"instance"));
        assert!(!serves_one_request_per_instance(&other.finish()));

        // The marker inside a nested module is the module's, not the component's.
        let mut module = Module::new();
        module.section(&marker(b"request"));
        let mut nested = Component::new();
        nested.section(&ModuleSection(&module));
        assert!(!serves_one_request_per_instance(&nested.finish()));

        assert!(!serves_one_request_per_instance(b"not wasm"));
    }
}
