//! The one-process stack of `wvpc dev --mock`: the runtime, the binding-worker and iris's
//! CONNECT router, each on its own real socket as in [`crate::stack`], with a
//! [`MockNetwork`] behind iris's seams instead of the directory and the tunnels. No directory,
//! connector or DNS server is needed: the script's bindings point at the mock's synthetic
//! services.
//!
//! The binding-worker keeps no idle origin connections here, so every binding request opens
//! its own flow: each request meets the mock's faults at the dial, and a flow belongs to one
//! request (which the mock's scoped faults rely on).

use std::net::SocketAddr;
use std::sync::Arc;

use wvpc_binding_worker::{BindingWorker, BindingWorkerConfig, BindingWorkerHandle};
use wvpc_iris::connect::Router;
use wvpc_iris::dev_mock::MockNetwork;
use wvpc_iris::{ServiceStore, TunnelPool};
use wvpc_listener::ServerLimits;
use wvpc_runtime::{PlatformSecret, RuntimeOptions, ScriptConfig};

use crate::PlatformError;
use crate::iris_node::local_addr;
use crate::stack::serve_script;

/// The account the mocked script runs as.
pub const MOCK_ACCOUNT: &str = "local";

/// What the mock stack serves.
#[derive(Debug, Clone)]
pub struct MockStackConfig {
    /// The script (its bindings' service ids are replaced by the mock's).
    pub script: ScriptConfig,
    /// The network behind iris.
    pub mock: MockNetwork,
    /// HTTP listener of the script.
    pub listen: SocketAddr,
    /// Timeouts and connection cap of the listeners.
    pub server: ServerLimits,
}

/// A running mock stack. Dropping it stops every component.
pub struct MockStack {
    /// The script's HTTP address.
    pub script_addr: SocketAddr,
    /// iris's CONNECT address.
    pub iris_addr: SocketAddr,
    /// The binding-worker's capnp address.
    pub binding_worker_addr: SocketAddr,
    /// The network behind iris (faults, recorded requests, reloads).
    pub mock: MockNetwork,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    binding_worker: Option<BindingWorkerHandle>,
    runtime: Arc<wvpc_runtime::Runtime>,
}

/// `script` with every binding pointing at the mock's service for it.
pub fn mocked_script(script: &ScriptConfig, mock: &MockNetwork) -> ScriptConfig {
    let mut script = script.clone();
    for binding in &mut script.vpc_services {
        if let Some(service) = mock.service_id(&binding.binding) {
            binding.service_id = service;
        }
    }
    script
}

impl MockStack {
    /// Starts iris's router over the mock, the binding-worker and the runtime. The script's
    /// stdout / stderr lines are printed prefixed ([`wvpc_runtime::PrefixedOutput`]).
    pub async fn start(config: MockStackConfig) -> Result<MockStack, PlatformError> {
        Self::start_with_output(config, Arc::new(wvpc_runtime::PrefixedOutput)).await
    }

    /// [`MockStack::start`], with the script's stdout / stderr lines sent to `output`.
    pub async fn start_with_output(
        config: MockStackConfig,
        output: Arc<dyn wvpc_runtime::ScriptOutput>,
    ) -> Result<MockStack, PlatformError> {
        let io = |what| move |source| PlatformError::Io { what, source };
        let mock = config.mock.clone();
        let mut tasks = Vec::new();

        let mut router_config = mock.router_config();
        router_config.server = config.server.clone();
        let store: Arc<dyn ServiceStore> = Arc::new(mock.clone());
        let pool: Arc<dyn TunnelPool> = Arc::new(mock.clone());
        let router = Router::new(store, pool, router_config);
        let iris_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io("binding iris's CONNECT listener"))?;
        let iris_addr = local_addr(&iris_listener)?;
        tasks.push(tokio::spawn(async move {
            if let Err(err) = router.serve(iris_listener).await {
                tracing::error!(error = %err, "iris CONNECT listener failed");
            }
        }));

        let bw_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(io("binding the binding-worker's listener"))?;
        let mut bw_config = BindingWorkerConfig::new(iris_addr);
        bw_config.proxy_runtime = Some(tokio::runtime::Handle::current());
        bw_config.max_idle_per_origin = 0;
        // iris answers a dial that never completes after the mock's dial timeout; the
        // binding-worker must wait at least that long for the answer.
        bw_config.connect_timeout = bw_config.connect_timeout.max(mock.dial_timeout() * 2);
        let secret = PlatformSecret::generate().map_err(io("creating the platform secret"))?;
        bw_config.secret = Some(secret.clone());
        let binding_worker = BindingWorker::start(bw_listener, bw_config)
            .map_err(io("starting the binding-worker"))?;
        let binding_worker_addr = binding_worker.local_addr();
        let route_changes = binding_worker.route_changes();
        mock.on_change(Arc::new(move |service| route_changes.changed(service)));

        let script = mocked_script(&config.script, &mock);
        let options = RuntimeOptions {
            binding_workers: vec![binding_worker_addr],
            binding_secret: Some(secret),
            account: MOCK_ACCOUNT.to_owned(),
            exchange_tap: None,
            metrics: None,
        };
        let (script_addr, script_server, runtime) = serve_script(
            script,
            options,
            output,
            config.listen,
            config.server.clone(),
        )
        .await?;
        tasks.push(script_server);

        Ok(MockStack {
            script_addr,
            iris_addr,
            binding_worker_addr,
            mock,
            tasks,
            binding_worker: Some(binding_worker),
            runtime,
        })
    }

    /// Serves `script` (its bindings pointed at the mock) from the component at `wasm` from
    /// now on (`wvpc dev --mock` after an edit). `Err` leaves the previous build served.
    pub async fn reload_script(
        &self,
        script: &ScriptConfig,
        wasm: &std::path::Path,
    ) -> Result<(), PlatformError> {
        self.runtime
            .reload(&mocked_script(script, &self.mock), wasm)
            .await
            .map_err(|source| PlatformError::Script {
                script: script.name.clone(),
                source,
            })
    }

    /// Stops every component.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(worker) = self.binding_worker.take() {
            worker.shutdown();
        }
    }
}

impl Drop for MockStack {
    fn drop(&mut self) {
        self.stop();
    }
}
