//! Per-request limits of a script ([`Limits`], the `limits` section of its wrangler config)
//! and the per-request meters that enforce them.
//!
//! | key | default | range | enforced by | when exceeded |
//! |---|---|---|---|---|
//! | `cpu_ms` | 30 000 | 1–300 000 | guest run time, checked on every epoch tick | the request fails with 503 |
//! | `memory_mb` | 128 | 1–128 | the store's resource limiter (and the instance pool) | the request fails with 503 |
//! | `wall_time_ms` | 300 000 | 1–3 600 000 | a timer around the whole run | 504, or the response body is cut |
//! | `subrequests` | 50 | 1–1000 | a counter in the outbound hooks (redirect hops count) | the fetch fails: `subrequest_limit_reached` |
//! | `connections` | 6 | 1–1000 | a per-request semaphore | the fetch waits for a free connection |
//! | `queued_connections` | 50 | 0–1000 | fetches waiting for a connection | the fetch fails: `connection_limit_reached` |
//! | `url_bytes` | 16 384 | 1–1 048 576 | incoming requests and binding fetches | 414 / `HTTP-request-URI-too-long` |
//! | `header_bytes` | 131 072 | 1–1 048 576 | incoming requests and binding fetches | 431 / `HTTP-request-header-section-size` |
//!
//! `isolation` (`"instance"` by default, or `"request"`) is not a bound but sits in the same
//! section: whether an instance serves many requests of its version ([`Isolation`],
//! [`crate::instances`]).
//!
//! `docs/limits.md` is the user-facing version of this table.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What one request of a script may use. `Default` is the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time the script's own code may run per request (`cpu_ms`); time spent waiting on the
    /// host (fetches, body streams) does not count.
    pub cpu: Duration,
    /// Linear memory of the script's instance (`memory_mb`), in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time from the start of the request (instantiation, on a fresh instance) to
    /// the end of the handler, response body included (`wall_time_ms`).
    pub wall_time: Duration,
    /// Binding fetches per request, each followed redirect included (`subrequests`).
    pub subrequests: u32,
    /// Binding connections open at once per request (`connections`); a fetch holds one from
    /// its start until its response body is consumed or dropped.
    pub connections: u32,
    /// Fetches that may wait for a connection at once (`queued_connections`).
    pub queued_connections: u32,
    /// Longest URL, in bytes, of a request to the script or through a binding (`url_bytes`).
    pub url_bytes: usize,
    /// Largest header section (sum of names and values), in bytes (`header_bytes`).
    pub header_bytes: usize,
    /// Whether an instance serves more than one request (`isolation`).
    pub isolation: Isolation,
}

/// Whether a script's instance (and its global state) outlives a request: `isolation` in
/// the `limits` section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Isolation {
    /// `"instance"`: an instance serves many requests of its version one after the other,
    /// as a Workers isolate does; globals persist between them. It is thrown away after a
    /// trap, a limit, a bounded number of requests or time, or when its memory grew large.
    #[default]
    Instance,
    /// `"request"`: every request gets a fresh instance; nothing survives a request.
    Request,
}

impl Isolation {
    /// The config values, in documentation order.
    pub(crate) const VALUES: &[(&'static str, Isolation)] = &[
        ("instance", Isolation::Instance),
        ("request", Isolation::Request),
    ];
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu: Duration::from_secs(30),
            memory_bytes: 128 << 20,
            wall_time: Duration::from_secs(300),
            subrequests: 50,
            connections: 6,
            queued_connections: 50,
            url_bytes: 16 << 10,
            header_bytes: 128 << 10,
            isolation: Isolation::Instance,
        }
    }
}

/// One configurable limit: its key in `limits`, and the range of accepted values.
pub(crate) struct LimitKey {
    pub key: &'static str,
    pub min: u64,
    pub max: u64,
    pub set: fn(&mut Limits, u64),
}

/// Every key of the `limits` section, in documentation order.
pub(crate) const LIMIT_KEYS: &[LimitKey] = &[
    LimitKey {
        key: "cpu_ms",
        min: 1,
        max: 300_000,
        set: |l, v| l.cpu = Duration::from_millis(v),
    },
    LimitKey {
        key: "memory_mb",
        min: 1,
        max: (crate::engine::MAX_MEMORY_BYTES >> 20) as u64,
        set: |l, v| l.memory_bytes = (v as usize) << 20,
    },
    LimitKey {
        key: "wall_time_ms",
        min: 1,
        max: 3_600_000,
        set: |l, v| l.wall_time = Duration::from_millis(v),
    },
    LimitKey {
        key: "subrequests",
        min: 1,
        max: 1000,
        set: |l, v| l.subrequests = v as u32,
    },
    LimitKey {
        key: "connections",
        min: 1,
        max: 1000,
        set: |l, v| l.connections = v as u32,
    },
    LimitKey {
        key: "queued_connections",
        min: 0,
        max: 1000,
        set: |l, v| l.queued_connections = v as u32,
    },
    LimitKey {
        key: "url_bytes",
        min: 1,
        max: 1 << 20,
        set: |l, v| l.url_bytes = v as usize,
    },
    LimitKey {
        key: "header_bytes",
        min: 1,
        max: 1 << 20,
        set: |l, v| l.header_bytes = v as usize,
    },
];

/// The limit a request ran into, recorded where it is detected so the runtime can answer
/// with the right status and log line after the script stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitExceeded {
    Cpu,
    Memory,
    WallTime,
}

/// Guest run time of one request: the clock runs from a host → wasm transition to the next
/// wasm → host transition (wasmtime call hooks).
#[derive(Debug, Default)]
pub(crate) struct CpuMeter {
    used: Duration,
    running_since: Option<Instant>,
}

impl CpuMeter {
    pub fn resume(&mut self) {
        self.running_since.get_or_insert_with(Instant::now);
    }

    pub fn pause(&mut self) {
        if let Some(since) = self.running_since.take() {
            self.used += since.elapsed();
        }
    }

    /// Run time so far, the current stretch included.
    pub fn used(&self) -> Duration {
        self.used + self.running_since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

/// The store's resource limiter: linear memory up to `memory_bytes`; a refused growth is
/// remembered, so the trap that usually follows (an allocation failure aborts) is reported as
/// the memory limit. It also knows how large the instance's memories have grown (creation
/// counts as growth from 0), for the high-water mark of a reused instance.
pub(crate) struct MemoryLimiter {
    pub max: usize,
    pub refused: bool,
    /// Bytes of linear memory the instance has, all memories together.
    pub size: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.refused = true;
            return Ok(false);
        }
        self.size = self.size.saturating_add(desired.saturating_sub(current));
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The instance pool bounds tables.
        Ok(true)
    }
}

/// Binding fetches of one request: the subrequest count and the connection slots. Shared by
/// the request's store and the fetch futures it spawns.
pub(crate) struct FetchBudget {
    limits: Limits,
    subrequests: AtomicU32,
    connections: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
}

/// Why a fetch may not go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BudgetExceeded {
    Subrequests(u32),
    QueuedConnections(u32),
}

impl FetchBudget {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            subrequests: AtomicU32::new(0),
            connections: Arc::new(Semaphore::new(limits.connections as usize)),
            queued: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counts one subrequest (a fetch or a followed redirect).
    pub fn take_subrequest(&self) -> Result<(), BudgetExceeded> {
        let limit = self.limits.subrequests;
        self.subrequests
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .map(drop)
            .map_err(|_| BudgetExceeded::Subrequests(limit))
    }

    /// Reserves a connection slot for a fetch being sent: a free one at once, else a place
    /// in the (FIFO) queue; a fetch that would wait behind `queued_connections` others fails.
    /// Synchronous, so fetches started one after the other queue in that order.
    pub fn reserve_connection(&self) -> Result<Connection, BudgetExceeded> {
        if let Ok(permit) = self.connections.clone().try_acquire_owned() {
            return Ok(Connection::Ready(permit));
        }
        let limit = self.limits.queued_connections;
        let queued = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit as usize).then_some(n + 1)
            });
        if queued.is_err() {
            return Err(BudgetExceeded::QueuedConnections(limit));
        }
        Ok(Connection::Queued(QueuedConnection {
            connections: self.connections.clone(),
            queued: self.queued.clone(),
        }))
    }
}

/// A reserved connection slot ([`FetchBudget::reserve_connection`]).
pub(crate) enum Connection {
    Ready(OwnedSemaphorePermit),
    Queued(QueuedConnection),
}

impl Connection {
    /// The slot, once it is free.
    pub async fn acquire(self) -> OwnedSemaphorePermit {
        match self {
            Connection::Ready(permit) => permit,
            Connection::Queued(queued) => {
                let permit = queued.connections.clone().acquire_owned().await;
                permit.expect("the semaphore is never closed")
            }
        }
    }
}

/// A place in the connection queue; leaving it (with or without a slot) frees the place.
pub(crate) struct QueuedConnection {
    connections: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
}

impl Drop for QueuedConnection {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Size of a header section as the limits count it: names plus values.
pub(crate) fn header_section_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_wait_then_overflow_the_queue() {
        let budget = FetchBudget::new(Limits {
            connections: 1,
            queued_connections: 1,
            ..Limits::default()
        });
        let first = budget.reserve_connection().expect("a free slot");
        assert!(matches!(first, Connection::Ready(_)));
        // The second waits for the first...
        let second = budget.reserve_connection().expect("a place in the queue");
        assert!(matches!(second, Connection::Queued(_)));
        // ...and a third, behind a full queue, fails at once.
        assert!(matches!(
            budget.reserve_connection(),
            Err(BudgetExceeded::QueuedConnections(1))
        ));
        let waiting = tokio::spawn(second.acquire());
        drop(first.acquire().await);
        drop(waiting.await.expect("the queued fetch got the slot"));
        assert_eq!(budget.queued.load(Ordering::Relaxed), 0);
        assert!(matches!(
            budget.reserve_connection(),
            Ok(Connection::Ready(_))
        ));
    }

    #[test]
    fn subrequests_stop_at_the_limit() {
        let budget = FetchBudget::new(Limits {
            subrequests: 2,
            ..Limits::default()
        });
        assert_eq!(budget.take_subrequest(), Ok(()));
        assert_eq!(budget.take_subrequest(), Ok(()));
        assert_eq!(
            budget.take_subrequest(),
            Err(BudgetExceeded::Subrequests(2))
        );
    }
}
