//! [`Runtime`]: one script behind an HTTP/1.1 server, whatever the `Host` (`wvpc dev`). It is
//! a [`ScriptHost`] holding that one script, so requests run through the same code as in
//! `wvpc runtime`; [`RuntimeOptions`] say how either reaches the binding-worker.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use wvpc_schemas::PlatformSecret;

use crate::binding_client::BindingClient;
use crate::config::ScriptConfig;
use crate::exchange_tap::ExchangeTap;
use crate::host::HostState;
use crate::metrics::RuntimeMetrics;
use crate::pool::{PoolRelease, PoolStats};
use crate::script::{LoadedScript, RuntimeError};
use crate::script_host::ScriptHost;
use crate::script_output::{PrefixedOutput, ScriptOutput};

/// How the runtime reaches the rest of workers-vpc.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// The binding-workers' capnp addresses (`VpcBinding` bootstrap capability), at least
    /// one: fetches are spread over them, and fail over to the others when one is down.
    pub binding_workers: Vec<SocketAddr>,
    /// The platform secret the binding-workers must prove they hold (and this runtime
    /// proves to them). `None`: no handshake, for binding-workers started without one.
    pub binding_secret: Option<PlatformSecret>,
    /// Account id that owns the script; sent with every binding fetch.
    pub account: String,
    /// Given a copy of every binding exchange (`wvpc dev --record`); `None` costs nothing.
    pub exchange_tap: Option<Arc<dyn ExchangeTap>>,
    /// Where requests, instantiations and binding calls are counted (`--metrics`); `None`
    /// counts nothing.
    pub metrics: Option<Arc<RuntimeMetrics>>,
}

/// The one binding-worker client of a host: every script's fetches go through it.
pub(crate) fn start_binding_client(
    options: &RuntimeOptions,
) -> Result<BindingClient, RuntimeError> {
    BindingClient::start(
        options.binding_workers.clone(),
        options.binding_secret.clone(),
        options.exchange_tap.clone(),
    )
    .map_err(RuntimeError::BindingClient)
}

/// A loaded script ready to serve requests.
pub struct Runtime {
    host: Arc<ScriptHost>,
}

impl Runtime {
    /// Compiles `config.main`, pre-instantiates it and starts the binding-worker client
    /// thread (it connects on the first fetch). Blocking: compiling takes up to a few hundred
    /// milliseconds per MB of wasm (unless the compiled component is in the on-disk cache).
    /// The script's stdout / stderr lines are printed prefixed ([`PrefixedOutput`]).
    pub fn new(config: &ScriptConfig, options: RuntimeOptions) -> Result<Runtime, RuntimeError> {
        Self::with_output(config, options, Arc::new(PrefixedOutput))
    }

    /// [`Runtime::new`], with the script's stdout / stderr lines sent to `output`.
    pub fn with_output(
        config: &ScriptConfig,
        options: RuntimeOptions,
        output: Arc<dyn ScriptOutput>,
    ) -> Result<Runtime, RuntimeError> {
        let host = ScriptHost::single(config, &options, output)?;
        Ok(Runtime {
            host: Arc::new(host),
        })
    }

    /// Creates one instance of the script in a fresh store and drops it, without running a
    /// request: the fixed cost every request pays (the benchmark measures it).
    pub async fn instantiate_once(&self) -> Result<(), RuntimeError> {
        // The current version: the script moves to a fresh engine after bursts.
        let script = self.script();
        let mut store = HostState::new_store(
            script.pre.engine(),
            script.bindings.clone(),
            "instantiation-probe".into(),
        );
        script
            .pre
            .instantiate_async(&mut store)
            .await
            .map(drop)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))
    }

    /// Serves `config`'s script from the component at `wasm` from now on (`wvpc dev` after
    /// an edit: requests in flight finish on the previous one). `Err` (a component that does
    /// not compile or link) leaves the previous one served.
    pub async fn reload(
        &self,
        config: &ScriptConfig,
        wasm: &std::path::Path,
    ) -> Result<(), RuntimeError> {
        self.host.replace_single(config, wasm).await
    }

    /// Whether every request gets a fresh instance whatever `limits.isolation` says, because
    /// the component serves one request per instance (a JavaScript script).
    pub fn one_request_per_instance(&self) -> bool {
        self.script().one_request_per_instance
    }

    fn script(&self) -> Arc<LoadedScript> {
        self.host
            .resolve("", "/")
            .expect("the host of `wvpc dev` serves its script whatever the host")
    }

    /// When the memory the instance pool keeps after a burst is given back
    /// ([`ScriptHost::set_pool_release`]).
    pub fn set_pool_release(&self, release: PoolRelease) {
        self.host.set_pool_release(release);
    }

    /// Figures of the instance pool ([`ScriptHost::pool_stats`]).
    pub fn pool_stats(&self) -> Option<PoolStats> {
        self.host.pool_stats()
    }

    /// Idle instances kept for the script's next requests ([`ScriptHost::idle_instances`]).
    pub fn idle_instances(&self) -> usize {
        self.host.idle_instances()
    }

    /// Changes each time the instance pool has been given back
    /// ([`ScriptHost::pool_releases`]).
    pub fn pool_releases(&self) -> tokio::sync::watch::Receiver<u64> {
        self.host.pool_releases()
    }

    /// Serves HTTP/1.1 (keep-alive) on `listener` until the future is dropped, every request
    /// to the script whatever its `Host` ([`ScriptHost::serve`]).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        self.host.clone().serve(listener).await
    }

    /// [`Runtime::serve`] with these timeouts and connection cap.
    pub async fn serve_with(
        self: Arc<Self>,
        listener: TcpListener,
        limits: wvpc_listener::ServerLimits,
    ) -> std::io::Result<()> {
        self.host.clone().serve_with(listener, limits).await
    }
}
