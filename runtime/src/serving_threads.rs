//! The threads requests run on ([`ServingThreads`]): one per core, each a current-thread tokio
//! runtime that also holds its own connections to the binding-workers.
//!
//! The listener deals each accepted connection to one of them, where it stays with every
//! request on it: the script runs there, its binding fetches are served there
//! ([`BindingClient::serve_on_this_thread`]), and their capnp messages are read and written
//! there. A request therefore never hops between threads of the runtime, and wakes none: on
//! a shared thread, every fetch was two cross-thread wake-ups (the call out, the answer back)
//! and as many more for its body.

use std::num::NonZeroUsize;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::binding_client::BindingClient;

/// The serving threads of a [`crate::ScriptHost`]; they stop when this is dropped (their
/// connections with them).
pub(crate) struct ServingThreads {
    runtimes: Vec<Handle>,
    /// Dropped to stop the threads.
    _stop: Vec<oneshot::Sender<()>>,
}

impl ServingThreads {
    /// One thread per core, serving `client`'s fetches made on it.
    pub(crate) fn start(client: &BindingClient) -> std::io::Result<Self> {
        let count = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let mut runtimes = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtimes.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            let client = client.clone();
            std::thread::Builder::new()
                .name(format!("wvpc-serve-{i}"))
                .spawn(move || {
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&runtime, async move {
                        client.serve_on_this_thread();
                        let _ = stopped.await;
                    });
                })?;
        }
        Ok(Self {
            runtimes,
            _stop: stops,
        })
    }

    /// The threads' runtimes, for the listener to deal connections to.
    pub(crate) fn runtimes(&self) -> Vec<Handle> {
        self.runtimes.clone()
    }
}
