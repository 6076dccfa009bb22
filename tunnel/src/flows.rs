//! The TCP flows a node is proxying, and whether each is carrying a request right now.
//!
//! Flows through the tunnel are opaque byte streams (HTTP/1.1 keep-alive, TLS, anything), so
//! whether one is in the middle of an exchange is judged from its bytes alone. A flow is
//! **busy** while the caller has spoken last (a request waits for its answer) or while bytes
//! moved within the last [`QUIET`] (an answer is still streaming); otherwise it is **idle**: a
//! pooled keep-alive connection between two requests.
//!
//! A graceful shutdown ([`FlowSet::drain`]) closes idle flows at once and each busy one as
//! soon as it turns idle, so it waits only for real requests. The edge also asks
//! [`FlowSet::any_busy`] to know when a tunnel connection has something waiting on its peer.
//!
//! A flow is tracked by wrapping one side of its pipe in [`TrackedIo`], which notes who spoke
//! and fails the pipe once the set closes the flow.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long an answered flow must stay silent to count as idle. Longer than the pauses of
/// most streamed answers, short enough that a shutdown right after traffic is still quick.
pub const QUIET: Duration = Duration::from_secs(2);

/// How often a drain looks again at flows that are still busy.
const DRAIN_TICK: Duration = Duration::from_millis(100);

/// Who spoke last on one flow, and when a byte last moved.
#[derive(Debug)]
pub struct FlowActivity {
    start: Instant,
    /// Milliseconds after `start` when a byte last moved either way.
    last_ms: AtomicU64,
    /// The caller spoke last: its request waits for an answer.
    caller_last: AtomicBool,
}

impl Default for FlowActivity {
    fn default() -> Self {
        Self::new()
    }
}

impl FlowActivity {
    /// A flow that just opened: nobody has spoken; it turns idle after [`QUIET`] unless the
    /// caller speaks.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            caller_last: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// The caller sent bytes (a request, or part of one).
    pub fn caller_spoke(&self) {
        self.touch();
        if !self.caller_last.load(Ordering::Relaxed) {
            self.caller_last.store(true, Ordering::Relaxed);
        }
    }

    /// The origin sent bytes (an answer, or part of one).
    pub fn origin_spoke(&self) {
        self.touch();
        if self.caller_last.load(Ordering::Relaxed) {
            self.caller_last.store(false, Ordering::Relaxed);
        }
    }

    /// Whether the caller spoke last, so that an answer is awaited.
    pub fn awaiting_answer(&self) -> bool {
        self.caller_last.load(Ordering::Relaxed)
    }

    /// How long until the flow turns idle if no byte moves: zero when it is idle now, `None`
    /// while the caller awaits an answer.
    pub fn idle_in(&self) -> Option<Duration> {
        self.idle_in_at(Instant::now())
    }

    /// [`FlowActivity::idle_in`] as of `now` (one clock read for many flows).
    pub fn idle_in_at(&self, now: Instant) -> Option<Duration> {
        if self.awaiting_answer() {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let quiet_for = now
            .saturating_duration_since(self.start)
            .saturating_sub(last);
        Some(QUIET.saturating_sub(quiet_for))
    }

    /// Whether the flow is idle now.
    pub fn is_idle(&self) -> bool {
        self.is_idle_at(Instant::now())
    }

    fn is_idle_at(&self, now: Instant) -> bool {
        self.idle_in_at(now) == Some(Duration::ZERO)
    }
}

/// One tracked flow, shared by the set and the flow's [`TrackedIo`].
#[derive(Debug, Default)]
struct FlowState {
    activity: FlowActivity,
    closed: AtomicBool,
    waker: AtomicWaker,
}

impl FlowState {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// The flows of a node (or of one tunnel connection). Cheap to share (`Arc`).
#[derive(Debug, Default)]
pub struct FlowSet {
    flows: Mutex<HashMap<u64, Arc<FlowState>>>,
    next_id: AtomicU64,
    /// Signalled when a flow leaves.
    left: Notify,
    /// Set by [`FlowSet::drain`]: idle flows are closed.
    draining: AtomicBool,
}

impl FlowSet {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<FlowState>>> {
        self.flows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tracks a new flow until the returned handle drops.
    pub fn enter(self: &Arc<Self>) -> Flow {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(FlowState::default());
        self.lock().insert(id, state.clone());
        Flow {
            set: self.clone(),
            id,
            state,
        }
    }

    /// Flows open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no flow is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether some flow is busy (an answer awaited, or bytes moved within [`QUIET`]).
    pub fn any_busy(&self) -> bool {
        let now = Instant::now();
        self.lock().values().any(|f| !f.activity.is_idle_at(now))
    }

    /// Closes the flows that are idle now; returns how many busy flows are left.
    pub fn close_idle(&self) -> usize {
        let now = Instant::now();
        let mut busy = 0;
        for flow in self.lock().values() {
            if flow.activity.is_idle_at(now) {
                flow.close();
            } else {
                busy += 1;
            }
        }
        busy
    }

    /// Whether [`FlowSet::drain`] has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Graceful end: closes idle flows at once and every busy one as soon as it turns idle;
    /// resolves when no flow is left (`true`), or after `grace` (`false`; the flows left are
    /// the caller's to close).
    pub async fn drain(&self, grace: Duration) -> bool {
        self.draining.store(true, Ordering::Release);
        let deadline = Instant::now() + grace;
        loop {
            let left = self.left.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            self.close_idle();
            if self.is_empty() {
                return true;
            }
            tokio::select! {
                () = left => {}
                () = tokio::time::sleep(DRAIN_TICK) => {}
                () = tokio::time::sleep_until(deadline) => return self.is_empty(),
            }
        }
    }
}

/// A tracked flow; leaves its set when dropped.
#[derive(Debug)]
pub struct Flow {
    set: Arc<FlowSet>,
    id: u64,
    state: Arc<FlowState>,
}

impl Flow {
    /// Who spoke last on this flow.
    pub fn activity(&self) -> &FlowActivity {
        &self.state.activity
    }

    /// Whether the set closed this flow (it was idle during a drain).
    pub fn was_closed(&self) -> bool {
        self.state.closed.load(Ordering::Acquire)
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
        self.set.left.notify_waiters();
    }
}

/// Which end of the flow a [`TrackedIo`] faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Facing {
    /// Reads are the caller's bytes (e.g. the connector's side of a tunnel stream).
    Caller,
    /// Reads are the origin's bytes (e.g. iris's side of a tunnel stream).
    Origin,
}

/// One side of a flow's pipe, noting who spoke; once the set closes the flow, reads and
/// writes fail with `ConnectionAborted`, which ends the pipe.
#[derive(Debug)]
pub struct TrackedIo<T> {
    io: T,
    flow: Flow,
    facing: Facing,
}

impl<T> TrackedIo<T> {
    /// Wraps `io`, one side of `flow`'s pipe.
    pub fn new(io: T, flow: Flow, facing: Facing) -> Self {
        Self { io, flow, facing }
    }

    /// The flow.
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }

    fn closed(&self, cx: &Context<'_>) -> Option<io::Error> {
        self.flow.state.waker.register(cx.waker());
        self.flow.was_closed().then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "idle flow closed by a graceful shutdown",
            )
        })
    }

    fn read_came(&self) {
        match self.facing {
            Facing::Caller => self.flow.activity().caller_spoke(),
            Facing::Origin => self.flow.activity().origin_spoke(),
        }
    }

    fn write_went(&self) {
        match self.facing {
            Facing::Caller => self.flow.activity().origin_spoke(),
            Facing::Origin => self.flow.activity().caller_spoke(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(err) = self.closed(cx) {
            return Poll::Ready(Err(err));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.read_came();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(err) = self.closed(cx) {
            return Poll::Ready(Err(err));
        }
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.write_went();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flow_is_busy_while_an_answer_is_awaited_or_streaming_and_idle_after_quiet() {
        let activity = FlowActivity::new();
        assert_eq!(
            activity.idle_in(),
            Some(QUIET),
            "a new flow waits for its request"
        );
        activity.caller_spoke();
        tokio::time::advance(QUIET * 10).await;
        assert_eq!(activity.idle_in(), None, "a slow answer is still awaited");
        activity.origin_spoke();
        assert!(!activity.is_idle(), "the answer may still be streaming");
        tokio::time::advance(QUIET / 2).await;
        assert!(!activity.is_idle());
        tokio::time::advance(QUIET).await;
        assert!(
            activity.is_idle(),
            "answered and quiet: a pooled connection"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_closes_idle_flows_at_once_and_waits_for_busy_ones() {
        let set = Arc::new(FlowSet::default());
        // An idle pooled flow: answered long ago.
        let (idle_near, mut idle_far) = tokio::io::duplex(64);
        let mut idle = TrackedIo::new(idle_near, set.enter(), Facing::Origin);
        idle.write_all(b"GET /").await.unwrap();
        idle_far.write_all(b"200").await.unwrap();
        let mut answer = [0; 3];
        idle.read_exact(&mut answer).await.unwrap();
        // A request waiting for a slow origin.
        let (busy_near, mut busy_far) = tokio::io::duplex(64);
        let mut busy = TrackedIo::new(busy_near, set.enter(), Facing::Origin);
        busy.write_all(b"GET /slow").await.unwrap();
        tokio::time::advance(QUIET * 2).await;
        assert!(set.any_busy());

        let drain = tokio::spawn({
            let set = set.clone();
            async move { set.drain(Duration::from_secs(3600)).await }
        });
        let err = idle.read(&mut answer).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert!(idle.flow().was_closed());
        drop(idle);

        // The busy flow is answered, then goes quiet: the drain closes it too.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!drain.is_finished());
        busy_far.write_all(b"200").await.unwrap();
        busy.read_exact(&mut answer).await.unwrap();
        let err = busy.read(&mut answer).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        drop(busy);
        assert!(
            drain.await.unwrap(),
            "every flow ended before the grace period"
        );
        assert!(set.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_without_flows_returns_at_once_and_one_past_grace_says_so() {
        let set = Arc::new(FlowSet::default());
        assert!(set.drain(Duration::from_secs(3600)).await);
        let flow = set.enter();
        flow.activity().caller_spoke();
        assert!(!set.drain(Duration::from_secs(1)).await);
        drop(flow);
    }
}
