//! The layout of a state directory (`--state`): every process of one machine that shares it
//! finds the directory database, the edge's TLS identity and the platform secret there.

use std::path::{Path, PathBuf};

/// Where the edge's TLS identity (CA and leaf certificate) lives.
pub fn edge_identity_dir(state: &Path) -> PathBuf {
    state.join("edge")
}

/// The platform secret runtimes and binding-workers authenticate each other with.
pub fn secret_file(state: &Path) -> PathBuf {
    state.join("platform").join("secret")
}

/// The platform secret: from `file` if given, else `<state>/platform/secret` (created with
/// fresh random bytes if missing, so processes sharing a state need no flag).
pub fn platform_secret(state: &Path, file: Option<&Path>) -> std::io::Result<Vec<u8>> {
    match file {
        Some(file) => read_secret(file),
        None => todo_secret(state),
    }
}
