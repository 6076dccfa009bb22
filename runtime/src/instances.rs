//! Reuse of script instances between requests (`limits.isolation = "instance"`, the
//! default): each loaded version ([`crate::script::LoadedScript`]) keeps some idle
//! instances, store and all. A request takes one or instantiates; when it has completely
//! finished cleanly, its instance goes back for the next request of the *same version* —
//! an instance never serves another script or version, since the pool belongs to the
//! version and goes away with it (a redeploy, the move to a fresh engine).
//!
//! The guest's globals persist between the requests an instance serves, as in a Workers
//! isolate; the pool slot's reset (memset / madvise of the pages the guest wrote) is paid
//! once per instance instead of once per request. An instance is thrown away, never
//! reused, after a trap, a limit (CPU, memory, wall time), a cancelled request, a handler
//! that set no response, or when it grew its memory past half its limit or holds more than
//! [`MAX_HELD_RESOURCES`] resource handles between requests (a leak: each may keep a
//! stream or a binding connection open). It also retires after
//! [`MAX_REQUESTS`] requests or [`MAX_AGE`], so slow leaks and stale state are bounded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::Store;

use crate::host::{HostState, Script};

/// Requests one instance serves before it retires. Enough that the pool slot's reset and
/// the instantiation are a rounding error per request; few enough that a guest which leaks
/// a little per request is recycled long before it matters.
pub(crate) const MAX_REQUESTS: u32 = 1000;
/// Longest life of an instance, so stale global state and leaks are also bounded in time on
/// a busy script.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(60);
/// Idle instances one version keeps: as many as its requests in flight at once under
/// steady load (one instance serves one request at a time), so that steady traffic of up to
/// this many concurrent requests never instantiates. They cost little more than the warm
/// pool slots they sit in, which keep their written pages resident anyway. A burst beyond
/// that instantiates, and its extra instances are dropped when it ends.
pub(crate) const MAX_IDLE_PER_VERSION: usize = 32;
/// Resource handles an idle instance may hold: what a guest keeps for good (Rust's std
/// caches its stdio streams on first use), with room to spare.
pub(crate) const MAX_HELD_RESOURCES: usize = 16;
/// Idle instances of the whole process: each holds a slot of the engine's instance pool
/// (`engine::MAX_CONCURRENT_INSTANCES`), so idle ones may take at most a quarter of it and
/// requests in flight always find slots.
pub(crate) const MAX_IDLE_TOTAL: usize = crate::engine::MAX_CONCURRENT_INSTANCES as usize / 4;

/// Linear memory all idle instances of the process may hold: an idle instance keeps all of
/// its memory (a warm pool slot only the pages written, up to 1 MiB). A small script (1–2
/// MiB) can keep its full count; one whose instances hold 32 MiB keeps 8.
pub(crate) const MAX_IDLE_BYTES: usize = 256 << 20;

/// Idle instances of every version in this process, and the linear memory they hold.
static IDLE: IdleBudget = IdleBudget {
    count: AtomicUsize::new(0),
    bytes: AtomicUsize::new(0),
};

/// The process-wide bounds of idle instances ([`MAX_IDLE_TOTAL`], [`MAX_IDLE_BYTES`]).
struct IdleBudget {
    count: AtomicUsize,
    bytes: AtomicUsize,
}

impl IdleBudget {
    /// Room for one more idle instance holding `bytes`, if there is.
    fn reserve(&self, bytes: usize) -> bool {
        let add = |counter: &AtomicUsize, n: usize, max: usize| {
            counter
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                    now.checked_add(n).filter(|&sum| sum <= max)
                })
                .is_ok()
        };
        if !add(&self.count, 1, MAX_IDLE_TOTAL) {
            return false;
        }
        if !add(&self.bytes, bytes, MAX_IDLE_BYTES) {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// An idle instance holding `bytes` was taken or dropped.
    fn release(&self, bytes: usize) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// An instance with its store, between requests or serving one.
pub(crate) struct Instance {
    pub store: Store<HostState>,
    /// `None` until the store's first request instantiates the component.
    pub script: Option<Script>,
    born: Instant,
    /// Requests served so far (the current one included once it ends).
    served: u32,
    /// Linear memory it held when it went idle (counted in [`IDLE`]).
    idle_bytes: usize,
}

impl Instance {
    /// A fresh store, its component not instantiated yet.
    pub fn new(store: Store<HostState>) -> Self {
        Self {
            store,
            script: None,
            born: Instant::now(),
            served: 0,
            idle_bytes: 0,
        }
    }
}

/// Why a cleanly finished instance is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retire {
    Requests,
    Age,
    Memory,
    Resources,
}

/// The idle instances of one loaded version.
#[derive(Default)]
pub(crate) struct InstancePool {
    /// Most recently used last (taken first: its pages are the warmest).
    idle: Mutex<Vec<Instance>>,
}

impl InstancePool {
    /// An idle instance young enough to serve, if there is one.
    pub fn take(&self) -> Option<Instance> {
        let mut expired = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                let Some(instance) = idle.pop() else {
                    break None;
                };
                IDLE.release(instance.idle_bytes);
                if instance.born.elapsed() < MAX_AGE {
                    break Some(instance);
                }
                expired.push(instance);
            }
        };
        // Dropping a store resets its pool slot: outside the lock.
        drop(expired);
        found
    }

    /// Gives back an instance whose request finished cleanly (a response was sent, no trap,
    /// no limit, not cancelled); it is kept unless a bound says otherwise.
    pub fn give_back(&self, mut instance: Instance) {
        instance.served += 1;
        let state = instance.store.data_mut();
        state.finish_request();
        let resources = state.resources();
        let retire = if instance.served >= MAX_REQUESTS {
            Some(Retire::Requests)
        } else if instance.born.elapsed() >= MAX_AGE {
            Some(Retire::Age)
        } else if state.memory_size() > memory_high_water(state) {
            Some(Retire::Memory)
        } else if resources > MAX_HELD_RESOURCES {
            Some(Retire::Resources)
        } else {
            None
        };
        if let Some(why) = retire {
            tracing::debug!(reason = ?why, served = instance.served, "instance retired");
            return;
        }
        // Dropping a store resets its pool slot: outside the lock.
        let mut dropped: Vec<Instance>;
        {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            dropped = idle
                .extract_if(.., |i| i.born.elapsed() >= MAX_AGE)
                .collect();
            for expired in &dropped {
                IDLE.release(expired.idle_bytes);
            }
            instance.idle_bytes = instance.store.data().memory_size();
            let room = idle.len() < MAX_IDLE_PER_VERSION && IDLE.reserve(instance.idle_bytes);
            if room {
                idle.push(instance);
            } else {
                dropped.push(instance);
            }
        }
        drop(dropped);
    }

    /// Idle instances kept now.
    pub fn idle(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for InstancePool {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().unwrap_or_else(PoisonError::into_inner);
        for instance in idle.iter() {
            IDLE.release(instance.idle_bytes);
        }
    }
}

/// Linear memory above which an instance is not reused: half its limit, so one request's
/// growth cannot leave the next one without room.
fn memory_high_water(state: &HostState) -> usize {
    state.memory_limit() / 2
}
