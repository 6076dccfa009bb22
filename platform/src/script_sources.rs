//! The sources of `wvpc dev`'s script and their builds: the component of a wasm `main`, or
//! of a JavaScript `main` built with `wvpc_js_build`; and the files to watch for an edit
//! (the wasm file, or every module the JavaScript bundle read).

use std::path::PathBuf;
use std::time::SystemTime;

use wvpc_js_build::JsBuildError;
use wvpc_runtime::ScriptConfig;

/// A build of the script.
#[derive(Debug, Clone)]
pub struct ScriptBuild {
    /// The component to serve.
    pub wasm: PathBuf,
    /// The files it was made from.
    pub sources: Vec<PathBuf>,
    /// Whether a JavaScript build came from the cache; `None` for a wasm `main`.
    pub cached: Option<bool>,
}

/// Builds `config`'s script (off the async threads: a JavaScript build runs node).
pub async fn build(config: &ScriptConfig) -> Result<ScriptBuild, JsBuildError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        Ok(match config.build()? {
            Some(built) => ScriptBuild {
                wasm: built.wasm,
                sources: built.inputs,
                cached: Some(built.cached),
            },
            None => ScriptBuild {
                wasm: config.main.clone(),
                sources: vec![config.main.clone()],
                cached: None,
            },
        })
    })
    .await
    .map_err(|join| JsBuildError::Tooling(format!("the build task failed: {join}")))?
}

/// The modification times of a build's sources, to notice an edit.
#[derive(Debug, Default)]
pub struct SourceWatch {
    files: Vec<(PathBuf, Option<SystemTime>)>,
}

impl SourceWatch {
    /// Watches `sources` from their current state.
    pub fn new(sources: &[PathBuf]) -> Self {
        Self {
            files: sources.iter().map(|p| (p.clone(), modified(p))).collect(),
        }
    }

    /// The first source that changed (or appeared, or went) since the last call; each change
    /// is reported once.
    pub fn changed(&mut self) -> Option<PathBuf> {
        let mut first = None;
        for (path, seen) in &mut self.files {
            let now = modified(path);
            if now != *seen {
                *seen = now;
                first.get_or_insert_with(|| path.clone());
            }
        }
        first
    }
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
