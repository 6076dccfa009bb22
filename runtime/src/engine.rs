//! The process-wide wasmtime [`Engine`]: pooling allocator, epoch interruption for CPU limits,
//! and the on-disk cache of compiled components.
//!
//! One engine serves every script of the process, so compiled code, the instance pool and the
//! epoch ticker are shared. The pool bounds how many script instances (= requests in flight)
//! can exist at once; instantiation beyond it fails that request only.
//!
//! A pool slot, once used, keeps some memory resident after its instance ends, so that the
//! next instance in it takes no page faults: the pages of its linear memory (and tables) the
//! guest wrote, up to [`KEEP_RESIDENT_BYTES`], found with Linux's `PAGEMAP_SCAN` (kernel 6.7+;
//! older kernels keep the first [`KEEP_RESIDENT_BYTES`] whole), and the pages its async stack
//! touched. So the pool holds a high-water mark: what the most instances ever alive at once
//! wrote. [`pool_use`] reports it; the script host gives it back after a quiet period by
//! moving to a fresh engine ([`fresh_engine`], [`crate::pool`]), since wasmtime cannot empty
//! idle slots in place.
//!
//! Compiled components are cached on disk (wasmtime's cache, keyed by the wasm bytes, the
//! wasmtime version and the engine's settings), so restarting `wvpc dev` with an unchanged
//! script skips compilation. The directory is `$WVPC_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/wvpc/compiled`, else `~/.cache/wvpc/compiled`; `WVPC_CACHE_DIR=off`
//! turns the cache off.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig,
};

/// Requests (script instances) that may run at the same time.
pub(crate) const MAX_CONCURRENT_INSTANCES: u32 = 1000;
/// Largest linear memory of one script instance (the pool's slot size); a script's
/// `limits.memory_mb` may only lower it.
pub(crate) const MAX_MEMORY_BYTES: usize = 128 << 20;
/// Interval of the epoch ticker: how often a running script's CPU time is checked.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Most bytes of a freed instance's linear memory that are reset in place (only the pages it
/// wrote, with `PAGEMAP_SCAN`) instead of decommitted: a small script's whole working set, so
/// the next instance in the slot takes no page faults and the release costs no `madvise`.
const KEEP_RESIDENT_BYTES: usize = 1 << 20;
/// The same for tables and async stacks.
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;

/// The current engine; replaced by [`replace_engine`].
static CURRENT: Mutex<Option<Engine>> = Mutex::new(None);

/// The shared engine, created (with its ticker thread) on first use.
pub(crate) fn shared_engine() -> Result<Engine, String> {
    let mut current = CURRENT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(engine) = current.as_ref() {
        return Ok(engine.clone());
    }
    let engine = create()?;
    *current = Some(engine.clone());
    Ok(engine)
}

/// A new engine with an empty pool (and its own epoch ticker), not yet current.
pub(crate) fn fresh_engine() -> Result<Engine, String> {
    create()
}

/// Makes `engine` the one [`shared_engine`] returns from now on. The one it replaces, and
/// the memory its pool holds, is freed once nothing uses it any more (components compiled
/// on it, instances in flight).
pub(crate) fn make_current(engine: &Engine) {
    *CURRENT.lock().unwrap_or_else(PoisonError::into_inner) = Some(engine.clone());
}

/// How much of an engine's instance pool is in use, and what idle slots hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PoolUse {
    /// Instances alive now.
    pub live_instances: u64,
    /// Slots used before and idle now, each keeping some memory resident.
    pub idle_slots: u32,
    /// Bytes the idle slots keep resident (linear memories, tables and, when wasmtime
    /// reports them, stacks).
    pub idle_resident_bytes: usize,
}

/// What `engine`'s pool holds now; `None` for an engine without a pool.
pub(crate) fn pool_use(engine: &Engine) -> Option<PoolUse> {
    let pool = engine.pooling_allocator_metrics()?;
    Some(PoolUse {
        live_instances: pool.component_instances(),
        idle_slots: pool.unused_warm_memories(),
        idle_resident_bytes: pool.unused_memory_bytes_resident()
            + pool.unused_table_bytes_resident()
            + pool.unused_stack_bytes_resident().unwrap_or(0),
    })
}

fn create() -> Result<Engine, String> {
    let mut config = base_config();
    let mut pool = PoolingAllocationConfig::default();
    // A Rust wasm32-wasip2 component is a few core instances (program + adapter shims) with one
    // memory and up to two tables.
    pool.total_component_instances(MAX_CONCURRENT_INSTANCES)
        .total_core_instances(MAX_CONCURRENT_INSTANCES * 4)
        .total_memories(MAX_CONCURRENT_INSTANCES)
        .total_tables(MAX_CONCURRENT_INSTANCES * 2)
        .total_stacks(MAX_CONCURRENT_INSTANCES)
        .max_memory_size(MAX_MEMORY_BYTES)
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES)
        .async_stack_keep_resident(KEEP_RESIDENT_TABLE_BYTES)
        // Only the pages an instance wrote are reset and kept: a few KiB for a small script
        // instead of the whole `KEEP_RESIDENT_BYTES` memset (and made resident) per release.
        .pagemap_scan(Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = match Engine::new(&config) {
        Ok(engine) => engine,
        // The pool reserves its address space up front; a host that refuses (a low
        // `ulimit -v`) still gets a working, slower runtime.
        Err(err) => {
            tracing::warn!(
                error = %err,
                "pooling allocator unavailable; instantiating scripts on demand"
            );
            Engine::new(&base_config()).map_err(|e| e.to_string())?
        }
    };
    start_epoch_ticker(&engine).map_err(|e| format!("cannot start the epoch ticker: {e}"))?;
    Ok(engine)
}

fn base_config() -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    if let Some(dir) = cache_dir() {
        let mut cache = CacheConfig::new();
        cache.with_directory(&dir);
        match Cache::new(cache) {
            Ok(cache) => {
                config.cache(Some(cache));
            }
            Err(err) => tracing::warn!(
                dir = %dir.display(),
                error = %err,
                "compiled-component cache unavailable; compiling every start"
            ),
        }
    }
    config
}

/// Where compiled components are cached (see the module docs).
fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("WVPC_CACHE_DIR") {
        Some(dir) if dir == "off" => None,
        Some(dir) if !dir.is_empty() => Some(dir.into()),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|base| base.join("wvpc").join("compiled")),
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] for the life of the engine. A store
/// whose deadline passes while its guest runs checks its CPU time and yields to tokio.
fn start_epoch_ticker(engine: &Engine) -> std::io::Result<()> {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("wvpc-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
    Ok(())
}
