//! The layout of a state directory (`--state`): every process of one machine that shares it
//! finds the directory database, the edge's TLS identity, the relay CA and the platform secret
//! there.

use std::path::{Path, PathBuf};

/// Where the cluster's relay CA (certificate and key) lives.
pub fn relay_dir(state: &Path) -> PathBuf {
    state.join("relay")
}

/// Where the edge's TLS identity (CA and leaf certificate) lives.
pub fn edge_identity_dir(state: &Path) -> PathBuf {
    state.join("edge")
}
