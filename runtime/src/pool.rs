//! Giving back the memory the instance pool keeps after a burst.
//!
//! Every pool slot an instance ever used keeps the pages it wrote resident (up to a bound;
//! see [`crate::engine`]), so after a burst of N requests at once the pool holds N slots'
//! worth, and wasmtime cannot empty idle slots in place. While a [`ScriptHost`] serves, a
//! watcher samples the pool (every second, or more often for a short quiet period). When,
//! over a whole [`PoolRelease::quiet_period`], at most a quarter of the slots the pool has
//! warmed were serving requests at once (idle instances kept for reuse do not count; they
//! are dropped with the old engine), and its idle slots keep at least
//! [`PoolRelease::min_idle_resident_bytes`], every script moves to a fresh engine (its
//! compiled component comes from wasmtime's on-disk cache) and the old pool is freed when its
//! last request ends. A small script keeps a few KiB per slot and never gets there; one that
//! writes megabytes per request does.
//!
//! The pool belongs to the engine, which every host of a process shares until one moves: a
//! process with one host (`wvpc dev`, `wvpc runtime`) gets all of it back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use wasmtime::{Engine, EngineWeak};

use crate::script_host::ScriptHost;

/// When the instance pool is given back (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRelease {
    /// The idle slots must keep at least this many bytes resident.
    pub min_idle_resident_bytes: usize,
    /// How long traffic must have needed at most a quarter of the warmed slots.
    pub quiet_period: Duration,
}

impl Default for PoolRelease {
    /// 32 MiB, 30 s.
    fn default() -> Self {
        Self {
            min_idle_resident_bytes: 32 << 20,
            quiet_period: Duration::from_secs(30),
        }
    }
}

/// Figures of a runtime's instance pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Script instances alive now: requests running, and idle instances kept for reuse
    /// ([`ScriptHost::idle_instances`](crate::ScriptHost::idle_instances)).
    pub live_instances: u64,
    /// Slots used before and idle now.
    pub idle_slots: u32,
    /// Bytes the idle slots keep resident (linear memories and tables; async stacks are not
    /// counted by wasmtime).
    pub idle_resident_bytes: usize,
    /// Times the pool has been given back.
    pub releases: u64,
    /// Pools given back whose memory is not freed yet: requests that started on them are
    /// still running.
    pub retired_pools: usize,
}

/// A host's pool settings, release count and retired pools.
pub(crate) struct PoolWatch {
    release: Mutex<PoolRelease>,
    releases: watch::Sender<u64>,
    retired: Mutex<Vec<EngineWeak>>,
    /// Whether a watcher runs (one per host, however many listeners it serves).
    watching: AtomicBool,
}

impl Default for PoolWatch {
    fn default() -> Self {
        Self {
            release: Mutex::new(PoolRelease::default()),
            releases: watch::Sender::new(0),
            retired: Mutex::new(Vec::new()),
            watching: AtomicBool::new(false),
        }
    }
}

impl PoolWatch {
    pub(crate) fn set_release(&self, release: PoolRelease) {
        *self.release.lock().unwrap_or_else(PoisonError::into_inner) = release;
    }

    fn release(&self) -> PoolRelease {
        *self.release.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn releases(&self) -> watch::Receiver<u64> {
        self.releases.subscribe()
    }

    /// Figures of `engine`'s pool; `None` for an engine without one.
    pub(crate) fn stats(&self, engine: &Engine) -> Option<PoolStats> {
        let pool = crate::engine::pool_use(engine)?;
        let retired_pools = {
            let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
            retired.retain(|engine| engine.upgrade().is_some());
            retired.len()
        };
        Some(PoolStats {
            live_instances: pool.live_instances,
            idle_slots: pool.idle_slots,
            idle_resident_bytes: pool.idle_resident_bytes,
            releases: *self.releases.borrow(),
            retired_pools,
        })
    }
}

/// Starts the watcher of `host` unless one runs; it stops when the returned guard drops.
pub(crate) fn watch(host: &Arc<ScriptHost>) -> Option<Watching> {
    if host.pool_watch().watching.swap(true, Ordering::AcqRel) {
        return None;
    }
    Some(Watching {
        _task: AbortOnDropHandle::new(tokio::spawn(watch_pool(Arc::downgrade(host)))),
        host: Arc::downgrade(host),
    })
}

/// A running watcher; dropping it stops it.
pub(crate) struct Watching {
    _task: AbortOnDropHandle<()>,
    host: Weak<ScriptHost>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        if let Some(host) = self.host.upgrade() {
            host.pool_watch().watching.store(false, Ordering::Release);
        }
    }
}

/// How often the pool is sampled for a quiet period this long.
fn sample_interval(quiet_period: Duration) -> Duration {
    (quiet_period / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

async fn watch_pool(host: Weak<ScriptHost>) {
    // The most instances alive at once in this period, as sampled.
    let mut peak = 0;
    let mut since = Instant::now();
    loop {
        let Some(quiet_period) = host
            .upgrade()
            .map(|h| h.pool_watch().release().quiet_period)
        else {
            return;
        };
        tokio::time::sleep(sample_interval(quiet_period)).await;
        let Some(host) = host.upgrade() else {
            return;
        };
        let release = host.pool_watch().release();
        let engine = host.engine();
        let Some(pool) = crate::engine::pool_use(&engine) else {
            return; // no pool: nothing is kept
        };
        // Instances kept idle for reuse are not traffic: a release drops them with their
        // versions and the next requests instantiate on the fresh engine.
        let busy = pool
            .live_instances
            .saturating_sub(host.idle_instances() as u64);
        peak = peak.max(busy);
        if since.elapsed() < release.quiet_period {
            continue;
        }
        let warmed = u64::from(pool.idle_slots) + pool.live_instances;
        if pool.idle_resident_bytes >= release.min_idle_resident_bytes
            && peak.saturating_mul(4) <= warmed
        {
            let retiring = engine.weak();
            drop(engine);
            match host.move_to_fresh_engine().await {
                Ok(()) => {
                    tracing::info!(
                        idle_slots = pool.idle_slots,
                        idle_resident_mib = pool.idle_resident_bytes >> 20,
                        peak_in_quiet_period = peak,
                        "instance pool given back after a quiet period; scripts moved to a \
                         fresh engine"
                    );
                    let watch = host.pool_watch();
                    watch
                        .retired
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(retiring);
                    watch.releases.send_modify(|count| *count += 1);
                }
                Err(why) => tracing::warn!(
                    error = %why,
                    "cannot move the scripts to a fresh engine; the instance pool keeps its \
                     memory until the next try"
                ),
            }
        }
        peak = 0;
        since = Instant::now();
    }
}
