//! The script config (`wvpc_runtime::ScriptConfig`): `wrangler.jsonc` and `wrangler.toml` as
//! `wvpc dev`, `wvpc deploy` and the runtime read them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use uuid::Uuid;
use wvpc_runtime::{ConfigError, ScriptConfig};

/// The id the resolver gives the service named `api`.
const API_SERVICE: Uuid = Uuid::from_u128(0x0199d9b2_6a5c_7a3e_9d3c_3f1d2b4c5a6e);

/// A folder holding `script.wasm`, which the seeds name as `main`.
fn folder() -> &'static Path {
    static FOLDER: OnceLock<PathBuf> = OnceLock::new();
    FOLDER.get_or_init(|| {
        let dir = super::scratch("config");
        std::fs::create_dir_all(&dir).expect("creating the config folder");
        std::fs::write(dir.join("script.wasm"), b"\0asm").expect("writing script.wasm");
        dir
    })
}

fn resolve(name: &str) -> Result<Uuid, String> {
    if name == "api" {
        Ok(API_SERVICE)
    } else {
        Err(format!("no service named {name:?}"))
    }
}

/// The text, read as JSONC and as TOML: a valid config has a valid name, an existing `main`,
/// unique bindings with identifier names, and limits within their ranges; an invalid one
/// names at least one problem, each with its field; a syntax error points at a line and a
/// column inside the text.
pub fn wrangler_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // config files are read as UTF-8 text: nothing else reaches the parser
    };
    for file in ["wrangler.jsonc", "wrangler.toml"] {
        let path = folder().join(file);
        match ScriptConfig::from_text(&path, text, &resolve) {
            Ok(config) => {
                assert!((1..=63).contains(&config.name.len()));
                assert!(
                    config
                        .name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                );
                assert!(config.main.exists() && !config.main.is_dir());
                for (i, binding) in config.vpc_services.iter().enumerate() {
                    let mut chars = binding.binding.chars();
                    assert!(
                        chars
                            .next()
                            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
                    );
                    assert!(chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$'));
                    assert!(
                        config.vpc_services[..i]
                            .iter()
                            .all(|b| b.binding != binding.binding),
                        "duplicate binding {}",
                        binding.binding
                    );
                }
            }
            Err(ConfigError::Syntax { line, column, .. }) => {
                assert!(line >= 1 && column >= 1);
                // Editors (and the JSONC parser) also take a lone CR as a line break.
                let breaks = text.matches('\n').count() + text.matches('\r').count()
                    - text.matches("\r\n").count();
                assert!(line <= breaks + 1, "line {line} is past the text");
            }
            Err(ConfigError::Invalid { problems, .. }) => {
                assert!(!problems.is_empty());
                for problem in problems {
                    assert!(!problem.field.is_empty() && !problem.message.is_empty());
                }
            }
            Err(other) => panic!("unexpected config error for text: {other}"),
        }
    }
}
