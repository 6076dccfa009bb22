//! The process-wide wasmtime [`Engine`]: pooling allocator, epoch interruption for CPU limits.
//!
//! One engine serves every script of the process, so compiled code, the instance pool and the
//! epoch ticker are shared. The pool bounds how many script instances (= requests in flight)
//! can exist at once; instantiation beyond it fails that request only.

use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Requests (script instances) that may run at the same time.
pub(crate) const MAX_CONCURRENT_INSTANCES: u32 = 1000;
/// Linear-memory limit of one script instance.
pub(crate) const MAX_MEMORY_BYTES: usize = 128 << 20;
/// Interval of the epoch ticker; the CPU limit is counted in these ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);
/// CPU time a script may spend on one request (ticks it was seen executing), like the
/// Workers default of 30 s.
pub(crate) const CPU_LIMIT_TICKS: u32 = 3000;

/// The shared engine, created (with its ticker thread) on first use.
pub(crate) fn shared_engine() -> Result<Engine, String> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE.get_or_init(create).clone()
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
        .max_memory_size(MAX_MEMORY_BYTES);
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
    config
}

/// Advances the engine's epoch every [`EPOCH_TICK`] for the life of the process. A store
/// whose deadline passes while its guest runs yields to tokio and counts the tick against
/// [`CPU_LIMIT_TICKS`].
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
