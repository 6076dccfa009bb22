//! The one-process stack behind `wvpc dev`: the directory, iris (CONNECT router and QUIC
//! tunnel edge), the binding-worker and the runtime, each on its own real socket.
//!
//! Tests and the benchmark start exactly this, so they exercise what `wvpc dev` runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wvpc_binding_worker::{
    BindingWorker, BindingWorkerConfig, BindingWorkerHandle, BindingWorkerMetrics,
};
use wvpc_directory::{Directory, Service, ServiceTarget};
use wvpc_iris::edge::TunnelRegistry;
use wvpc_listener::ServerLimits;
use wvpc_runtime::{
    ExchangeTap, PlatformSecret, Runtime, RuntimeMetrics, RuntimeOptions, ScriptConfig,
};
use wvpc_tunnel::EdgeIdentity;

use crate::PlatformError;
use crate::iris_node::local_addr;
pub use crate::iris_node::{IrisNode, IrisOptions};

/// Where the stack listens and what it serves.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// State directory (directory database, edge identity).
    pub state: PathBuf,
    /// Where the directory is stored (`--directory`: `postgres://…`, `sqlite:<file>`);
    /// `None`: `<state>/wvpc.db`.
    pub directory: Option<String>,
    /// The script and its bindings.
    pub script: ScriptConfig,
    /// HTTP listener of the script.
    pub listen: SocketAddr,
    /// UDP listener of the tunnel edge.
    pub edge_listen: SocketAddr,
    /// Timeouts and connection cap of the script's HTTP listener.
    pub server: ServerLimits,
    /// Given a copy of every binding exchange of the script (`wvpc dev --record`:
    /// [`crate::mock_record::MockRecorder`]).
    pub exchange_tap: Option<Arc<dyn ExchangeTap>>,
}

/// A running stack. Dropping it stops every component.
pub struct Stack {
    /// The script's HTTP address.
    pub script_addr: SocketAddr,
    /// The tunnel edge's (QUIC) address.
    pub edge_addr: SocketAddr,
    /// iris's CONNECT address.
    pub iris_addr: SocketAddr,
    /// The binding-worker's capnp address.
    pub binding_worker_addr: SocketAddr,
    /// PEM file of the CA that signs the edge certificate (for connectors' `--cacert`).
    pub edge_ca_path: PathBuf,
    /// The edge's identity.
    pub edge_identity: EdgeIdentity,
    /// iris's metrics listener, if asked for.
    pub metrics_addr: Option<SocketAddr>,
    /// The directory the stack reads.
    pub directory: Arc<Directory>,
    iris: IrisNode,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    binding_worker: Option<BindingWorkerHandle>,
    runtime: Arc<Runtime>,
}

impl Stack {
    /// Checks the script's bindings against the directory and starts every component. With
    /// `options.metrics_listen`, iris's operations listener shows the runtime's and the
    /// binding-worker's metrics and the script's status too (role `dev`).
    pub async fn start(config: StackConfig) -> Result<Stack, PlatformError> {
        Self::start_tuned(config, IrisOptions::default(), |_| {}).await
    }

    /// [`Stack::start`] with iris's node name and metrics listener.
    pub async fn start_with(
        config: StackConfig,
        options: IrisOptions,
    ) -> Result<Stack, PlatformError> {
        Self::start_tuned(config, options, |_| {}).await
    }

    /// [`Stack::start_with`], with the binding-worker's limits and timeouts adjusted by `tune`.
    pub async fn start_tuned(
        config: StackConfig,
        options: IrisOptions,
        tune: impl FnOnce(&mut BindingWorkerConfig),
    ) -> Result<Stack, PlatformError> {
        let directory = Arc::new(Directory::open_spec(
            config.directory.as_deref(),
            &config.state,
        )?);
        check_bindings(&config.script, &directory, &config.state)?;

        // One process, one operations listener: iris's shows every part.
        let mut options = options;
        let (runtime_metrics, bw_metrics) = if options.metrics_listen.is_some() {
            let runtime = Arc::new(RuntimeMetrics::default());
            let binding_worker = Arc::new(BindingWorkerMetrics::default());
            options.observed.0.push(runtime.clone());
            options.observed.0.push(binding_worker.clone());
            options.role = "dev";
            (Some(runtime), Some(binding_worker))
        } else {
            (None, None)
        };
        let iris = IrisNode::start(
            directory.clone(),
            &config.state,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            config.edge_listen,
            &options,
        )
        .await?;
        let iris_addr = iris.iris_addr;
        let mut tasks = Vec::new();

        let io = |what| move |source| PlatformError::Io { what, source };
        let bw_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(io("binding the binding-worker's listener"))?;
        let mut bw_config = BindingWorkerConfig::new(iris_addr);
        // One process: the binding-worker's HTTP work shares this runtime's threads.
        bw_config.proxy_runtime = Some(tokio::runtime::Handle::current());
        // Pooled origin connections keep the route they were opened with: renew them often
        // enough that service changes reach steady traffic within a second.
        bw_config.route_lease = Some(crate::live_routes::ROUTE_LEASE);
        // One process: a secret of its own, so that nothing else on this machine can make
        // binding calls through the dev binding-worker's port.
        let secret = PlatformSecret::generate().map_err(io("creating the platform secret"))?;
        bw_config.secret = Some(secret.clone());
        if let Some(metrics) = bw_metrics {
            bw_config.metrics = metrics;
        }
        tune(&mut bw_config);
        let binding_worker = BindingWorker::start(bw_listener, bw_config)
            .map_err(io("starting the binding-worker"))?;
        let binding_worker_addr = binding_worker.local_addr();
        // One process: a changed route closes the service's idle pooled origin connections
        // at once, so the next request already takes the new route.
        let route_changes = binding_worker.route_changes();
        iris.routes.on_change(Box::new(move |services| {
            for service in services {
                route_changes.changed(*service);
            }
        }));

        let script = config.script.clone();
        let options = RuntimeOptions {
            binding_workers: vec![binding_worker_addr],
            binding_secret: Some(secret),
            account: directory.account_id().to_owned(),
            exchange_tap: config.exchange_tap.clone(),
            metrics: runtime_metrics,
        };
        let (script_addr, script_server, runtime) = serve_script(
            script,
            options,
            Arc::new(wvpc_runtime::PrefixedOutput),
            config.listen,
            config.server.clone(),
        )
        .await?;
        tasks.push(script_server);

        Ok(Stack {
            script_addr,
            edge_addr: iris.edge_addr,
            iris_addr,
            binding_worker_addr,
            edge_ca_path: iris.edge_ca_path.clone(),
            edge_identity: iris.edge_identity.clone(),
            metrics_addr: iris.metrics_addr,
            directory,
            iris,
            tasks,
            binding_worker: Some(binding_worker),
            runtime,
        })
    }

    /// Serves `script` from the component at `wasm` from now on (`wvpc dev` after an edit).
    /// `Err` leaves the previous build served.
    pub async fn reload_script(
        &self,
        script: &ScriptConfig,
        wasm: &std::path::Path,
    ) -> Result<(), PlatformError> {
        self.runtime
            .reload(script, wasm)
            .await
            .map_err(|source| PlatformError::Script {
                script: script.name.clone(),
                source,
            })
    }

    /// Resolves once iris routes by everything committed to the directory so far (changes
    /// reach it within a poll interval; tests that change a service wait for this).
    pub async fn routes_current(&self) -> Result<(), PlatformError> {
        let directory = self.directory.clone();
        let revision = tokio::task::spawn_blocking(move || directory.revision())
            .await
            .map_err(|join| PlatformError::Io {
                what: "reading the directory revision",
                source: std::io::Error::other(join),
            })??;
        self.iris.routes.caught_up(revision).await;
        Ok(())
    }

    /// Live tunnel connections, for readiness and `tunnel info`-style output.
    pub fn registry(&self) -> &Arc<TunnelRegistry> {
        self.iris.registry()
    }

    /// Stops every component.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.iris.stop();
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(worker) = self.binding_worker.take() {
            worker.shutdown();
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every binding must name a service that exists in this directory; all problems at once.
fn check_bindings(
    script: &ScriptConfig,
    directory: &Directory,
    state: &Path,
) -> Result<(), PlatformError> {
    let mut problems = Vec::new();
    for (i, binding) in script.vpc_services.iter().enumerate() {
        match directory.service(binding.service_id)? {
            Some(_) => {}
            None => problems.push(format!(
                "vpc_services[{i}].service_id: binding {:?} names VPC service {}, which does not \
                 exist in the directory at {} (list services with `wvpc service list`, create one \
                 with `wvpc service create`)",
                binding.binding,
                binding.service_id,
                state.display()
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PlatformError::Bindings(problems))
    }
}

/// A one-line description of each binding, for the start-up summary.
pub fn describe_bindings(script: &ScriptConfig, directory: &Directory) -> Vec<String> {
    script
        .vpc_services
        .iter()
        .map(|b| match directory.service(b.service_id) {
            Ok(Some(s)) => format!(
                "{} -> service {} ({}: {})",
                b.binding,
                s.service_id,
                s.name,
                target_text(&s)
            ),
            _ => format!("{} -> service {}", b.binding, b.service_id),
        })
        .collect()
}

fn target_text(s: &Service) -> String {
    let host = match s.target() {
        ServiceTarget::Hostname { name, .. } => name,
        ServiceTarget::Ips { ipv4, ipv6 } => [
            ipv4.map(|ip| ip.to_string()),
            ipv6.map(|ip| format!("[{ip}]")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" "),
    };
    format!("{host} via tunnel {}", s.tunnel_id())
}

/// Loads `script` (compiling its component off the async workers: it is CPU work) and serves
/// it on `listen`; returns the bound address and the serving task.
pub(crate) async fn serve_script(
    script: ScriptConfig,
    options: RuntimeOptions,
    output: Arc<dyn wvpc_runtime::ScriptOutput>,
    listen: SocketAddr,
    server: ServerLimits,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>, Arc<Runtime>), PlatformError> {
    let name = script.name.clone();
    let runtime =
        tokio::task::spawn_blocking(move || Runtime::with_output(&script, options, output))
            .await
            .map_err(|join| PlatformError::Io {
                what: "loading the script",
                source: std::io::Error::other(join),
            })?
            .map_err(|source| PlatformError::Script {
                script: name,
                source,
            })?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| PlatformError::Listen {
            what: "the script's HTTP listener",
            addr: listen,
            source,
        })?;
    let script_addr = local_addr(&listener)?;
    let runtime = Arc::new(runtime);
    let served = runtime.clone();
    let serving = tokio::spawn(async move {
        if let Err(err) = served.serve_with(listener, server).await {
            tracing::error!(error = %err, "script HTTP listener failed");
        }
    });
    Ok((script_addr, serving, runtime))
}
