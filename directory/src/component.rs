//! The check a script's module passes before it is stored: a valid WebAssembly component that
//! a runtime can serve. It must export `wasi:http/incoming-handler@0.2.x` (the request handler
//! of a `wasi:http/proxy` world) and import nothing but `wasi:*` interfaces and
//! `wvpc:bindings/*` (the VPC binding), because those are all a runtime links.
//!
//! Checked at upload, so that a bad build is refused with its reason and the version already
//! deployed keeps serving, instead of failing at the first request on every runtime.

use std::fmt;

use wasmparser::{Encoding, Parser, Payload, Validator, WasmFeatures};

/// The interface a script must export, without its version.
pub const HANDLER_INTERFACE: &str = "wasi:http/incoming-handler";

/// Why a module is not a deployable component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentRefusal {
    /// A core WebAssembly module, not a component.
    CoreModule,
    /// Not WebAssembly that validates; the validator's reason.
    Invalid(String),
    /// No `wasi:http/incoming-handler@0.2.x` export; the exports it has.
    NoHandler {
        /// Every top-level export name.
        exports: Vec<String>,
    },
    /// Imports that no runtime provides.
    ForeignImports(Vec<String>),
}

impl fmt::Display for ComponentRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComponentRefusal::CoreModule => f.write_str(
                "the module is a core WebAssembly module, not a component; build the script \
                 as a component with `cargo build --target wasm32-wasip2`",
            ),
            ComponentRefusal::Invalid(reason) => {
                write!(
                    f,
                    "the module is not a valid WebAssembly component: {reason}"
                )
            }
            ComponentRefusal::NoHandler { exports } => {
                write!(
                    f,
                    "the component does not export {HANDLER_INTERFACE}@0.2.x, the request \
                     handler a runtime calls (it exports: {}); build it for the wasi:http/proxy \
                     world, e.g. with the wvpc SDK",
                    if exports.is_empty() {
                        "nothing".to_owned()
                    } else {
                        exports.join(", ")
                    }
                )
            }
            ComponentRefusal::ForeignImports(imports) => write!(
                f,
                "the component imports {}, which no runtime provides; a script may import only \
                 wasi:* interfaces and wvpc:bindings/* (its VPC service bindings)",
                imports
                    .iter()
                    .map(|i| format!("{i:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Checks `module` (see the module docs); `Ok` when a runtime can serve it.
pub fn check(module: &[u8]) -> Result<(), ComponentRefusal> {
    if let Some(Ok(Payload::Version {
        encoding: Encoding::Module,
        ..
    })) = Parser::new(0).parse_all(module).next()
    {
        return Err(ComponentRefusal::CoreModule);
    }
    Validator::new_with_features(WasmFeatures::default())
        .validate_all(module)
        .map_err(|err| ComponentRefusal::Invalid(err.to_string()))?;

    // The component's own imports and exports are those at depth 1; nested modules and
    // components (depth 2 and more) have theirs, which the outer component satisfies.
    let mut depth = 0usize;
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(|err| ComponentRefusal::Invalid(err.to_string()))?;
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    let import =
                        import.map_err(|err| ComponentRefusal::Invalid(err.to_string()))?;
                    imports.push(import.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(section) if depth == 1 => {
                for export in section {
                    let export =
                        export.map_err(|err| ComponentRefusal::Invalid(err.to_string()))?;
                    exports.push(export.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    let foreign: Vec<String> = imports
        .into_iter()
        .filter(|name| !is_provided_import(name))
        .collect();
    if !foreign.is_empty() {
        return Err(ComponentRefusal::ForeignImports(foreign));
    }
    if !exports.iter().any(|name| is_handler_export(name)) {
        return Err(ComponentRefusal::NoHandler { exports });
    }
    Ok(())
}

/// `wasi:http/incoming-handler@0.2.<patch>` (any patch, pre-release suffixes included).
fn is_handler_export(name: &str) -> bool {
    name.strip_prefix(HANDLER_INTERFACE)
        .and_then(|rest| rest.strip_prefix("@0.2."))
        .is_some_and(|patch| patch.starts_with(|c: char| c.is_ascii_digit()))
}

/// What runtimes link: WASI and the VPC binding interfaces.
fn is_provided_import(name: &str) -> bool {
    name.starts_with("wasi:") || name.starts_with("wvpc:bindings/")
}

/// Test components, written in the component text format.
#[cfg(test)]
pub(crate) mod fixtures {
    /// A component that exports `export` (an instance with one `handle` function) and imports
    /// each of `imports` (as an empty instance).
    pub(crate) fn component(export: &str, imports: &[&str]) -> Vec<u8> {
        let imports: String = imports
            .iter()
            .map(|name| format!("(import \"{name}\" (instance))\n"))
            .collect();
        wat::parse_str(format!(
            r#"(component
                {imports}
                (core module $m (func (export "handle")))
                (core instance $i (instantiate $m))
                (func $handle (canon lift (core func $i "handle")))
                (instance $handler (export "handle" (func $handle)))
                (export "{export}" (instance $handler)))"#
        ))
        .expect("test component")
    }

    /// A component a runtime can serve.
    pub(crate) fn handler() -> Vec<u8> {
        component(
            "wasi:http/incoming-handler@0.2.0",
            &["wasi:http/types@0.2.0", "wvpc:bindings/vpc@0.1.0"],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_component_passes() {
        assert_eq!(check(&fixtures::handler()), Ok(()));
        for version in ["0.2.0", "0.2.12", "0.2.3-rc-2024"] {
            let module = fixtures::component(&format!("wasi:http/incoming-handler@{version}"), &[]);
            assert_eq!(check(&module), Ok(()), "{version}");
        }
    }

    #[test]
    fn a_core_module_is_refused_with_how_to_build_a_component() {
        let refusal = check(b"\0asm\x01\0\0\0").unwrap_err();
        assert_eq!(refusal, ComponentRefusal::CoreModule);
        assert!(
            refusal
                .to_string()
                .contains("cargo build --target wasm32-wasip2"),
            "{refusal}"
        );
    }

    #[test]
    fn broken_bytes_are_refused_with_the_validators_reason() {
        let mut module = fixtures::handler();
        module.truncate(module.len() - 3);
        let Err(ComponentRefusal::Invalid(reason)) = check(&module) else {
            panic!("a truncated component passed");
        };
        assert!(!reason.is_empty());
        assert!(matches!(
            check(b"not wasm at all"),
            Err(ComponentRefusal::Invalid(_))
        ));
    }

    #[test]
    fn the_handler_export_is_required_in_version_0_2() {
        for export in [
            "wasi:http/incoming-handler@0.3.0",
            "wasi:http/incoming-handler@1.2.0",
            "wasi:cli/run@0.2.0",
        ] {
            let refusal = check(&fixtures::component(export, &[])).unwrap_err();
            assert_eq!(
                refusal,
                ComponentRefusal::NoHandler {
                    exports: vec![export.to_owned()]
                }
            );
            assert!(
                refusal
                    .to_string()
                    .contains("does not export wasi:http/incoming-handler@0.2.x"),
                "{refusal}"
            );
        }
    }

    #[test]
    fn imports_outside_wasi_and_the_bindings_are_named() {
        let module = fixtures::component(
            "wasi:http/incoming-handler@0.2.0",
            &[
                "wasi:cli/environment@0.2.0",
                "acme:net/sockets@1.0.0",
                "wvpc:other/thing@0.1.0",
            ],
        );
        let refusal = check(&module).unwrap_err();
        assert_eq!(
            refusal,
            ComponentRefusal::ForeignImports(vec![
                "acme:net/sockets@1.0.0".into(),
                "wvpc:other/thing@0.1.0".into()
            ])
        );
        assert_eq!(
            refusal.to_string(),
            "the component imports \"acme:net/sockets@1.0.0\", \"wvpc:other/thing@0.1.0\", \
             which no runtime provides; a script may import only wasi:* interfaces and \
             wvpc:bindings/* (its VPC service bindings)"
        );
    }
}
