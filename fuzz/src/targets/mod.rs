//! The target functions, grouped by the crate whose parser they drive. Each takes the raw
//! input; most also read a structured value out of the same bytes ([`arbitrary`]) to check
//! that what we encode decodes back to the same value.

pub mod binding;
pub mod config;
pub mod credentials;
pub mod directory;
pub mod dns;
pub mod errors;
pub mod tunnel;

use std::path::PathBuf;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Runs a reader over an in-memory stream to completion: such a reader never waits, so one
/// poll must finish it.
pub(crate) fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a reader of an in-memory stream waited"),
    }
}

/// A scratch folder of this process under the system's temporary directory (config files,
/// a directory database), removed by [`remove_scratch`].
pub(crate) fn scratch(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wvpc-fuzz-{what}-{}", std::process::id()))
}

/// Removes the scratch folders this process made (the stable runner calls it at the end).
pub fn remove_scratch() {
    for what in ["config", "tokens"] {
        let _ = std::fs::remove_dir_all(scratch(what));
    }
}
