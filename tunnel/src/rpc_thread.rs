//! A dedicated thread for Cap'n Proto RPC.
//!
//! capnp-rpc is `!Send` (it is built on `Rc`), while quinn streams are `Send`. Each end of the
//! tunnel therefore runs all of its RPC on one thread with a current-thread runtime and a
//! `LocalSet`: callers send a `Send` closure, and the closure builds the `!Send` future on
//! that thread. One thread serves every connection of an edge or connector. [`stream_vat`]
//! is the two-party network every RPC of the tunnel runs on: one QUIC stream.

use std::future::Future;
use std::pin::Pin;

use capnp_rpc::{rpc_twoparty_capnp::Side, twoparty};
use futures::io::{BufReader, BufWriter};
use tokio::sync::mpsc;
use tokio_util::compat::{TokioAsyncReadCompatExt as _, TokioAsyncWriteCompatExt as _};

type LocalJob = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// The RPC thread is gone (its runtime failed to start or it was shut down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the tunnel RPC thread is not running")]
pub struct RpcThreadGone;

/// Handle to the RPC thread. Dropping every handle stops the thread and drops the RPC tasks
/// still on it.
#[derive(Clone)]
pub struct RpcThread {
    jobs: mpsc::UnboundedSender<LocalJob>,
}

impl std::fmt::Debug for RpcThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcThread")
            .field("running", &!self.jobs.is_closed())
            .finish()
    }
}

impl RpcThread {
    /// Starts the thread.
    pub fn spawn(name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (jobs, mut rx) = mpsc::unbounded_channel::<LocalJob>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    while let Some(job) = rx.recv().await {
                        tokio::task::spawn_local(job());
                    }
                });
            })?;
        Ok(Self { jobs })
    }

    /// Runs `job` on the RPC thread: `job` is called there and the future it returns is
    /// spawned as a local task.
    pub fn spawn_local<F, Fut>(&self, job: F) -> Result<(), RpcThreadGone>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.jobs
            .send(Box::new(move || {
                Box::pin(job()) as Pin<Box<dyn Future<Output = ()>>>
            }))
            .map_err(|_| RpcThreadGone)
    }
}

/// A two-party RPC network over one QUIC stream, as `side`. `max_words` bounds what one
/// incoming message may make the reader traverse (`None`: capnp's default).
pub fn stream_vat(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    side: Side,
    max_words: Option<usize>,
) -> Box<dyn capnp_rpc::VatNetwork<Side>> {
    let mut options = capnp::message::ReaderOptions::new();
    if let Some(words) = max_words {
        options.traversal_limit_in_words(Some(words));
    }
    Box::new(twoparty::VatNetwork::new(
        BufReader::new(recv.compat()),
        BufWriter::new(send.compat_write()),
        side,
        options,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_rpc_thread_and_may_be_not_send() {
        let thread = RpcThread::spawn("wvpc-rpc-test").unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        thread
            .spawn_local(move || async move {
                let not_send = std::rc::Rc::new(41);
                tokio::task::yield_now().await;
                let _ = tx.send((
                    *not_send + 1,
                    std::thread::current().name().map(str::to_owned),
                ));
            })
            .unwrap();
        assert_eq!(rx.await.unwrap(), (42, Some("wvpc-rpc-test".to_owned())));
    }
}
