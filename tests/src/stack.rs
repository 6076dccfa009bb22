//! `MockStack`: iris's router, the binding-worker and the runtime over real loopback sockets,
//! with services in memory and the tunnel replaced by [`MockTunnel`].
//!
//! This is the harness most tests use: it reaches every error code by flipping a switch. The
//! real QUIC tunnel and connector are covered by the end-to-end tests, which run
//! `wvpc_platform::stack::Stack` (exactly what `wvpc dev` runs) with a real connector.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use uuid::Uuid;
use wvpc_binding_worker::{BindingWorker, BindingWorkerConfig, BindingWorkerHandle};
use wvpc_iris::mock::{MemoryStore, MockTunnel};
use wvpc_iris::{Router, RouterConfig};
use wvpc_runtime::{Runtime, RuntimeOptions, ScriptConfig, VpcServiceBinding};

use crate::dns::DnsTable;

/// A running mock-tunnel stack serving one script.
pub struct MockStack {
    /// The script's HTTP address.
    pub script_addr: SocketAddr,
    /// The services iris sees.
    pub store: MemoryStore,
    /// The tunnel and its fault switches.
    pub tunnel: MockTunnel,
    /// DNS answers given through the mock tunnel.
    pub dns: DnsTable,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    binding_worker: Option<BindingWorkerHandle>,
}

impl MockStack {
    /// Starts the stack with `script` (a component path) bound as `binding → service_id`.
    pub async fn start(script: &str, bindings: &[(&str, Uuid)]) -> MockStack {
        let dns = DnsTable::new();
        let tunnel = crate::mock_tunnel::with_dns(&dns);
        let store = MemoryStore::default();
        let router = Router::new(
            Arc::new(store.clone()),
            Arc::new(tunnel.clone()),
            RouterConfig::default(),
        );
        let iris = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let iris_addr = iris.local_addr().unwrap();
        let mut tasks = vec![tokio::spawn(async move {
            let _ = router.serve(iris).await;
        })];
        let mut worker_config = BindingWorkerConfig::new(iris_addr);
        worker_config.proxy_runtime = Some(tokio::runtime::Handle::current());
        let worker = BindingWorker::start(
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            worker_config,
        )
        .unwrap();
        let config = ScriptConfig {
            name: "test-script".into(),
            main: PathBuf::from(script),
            vpc_services: bindings
                .iter()
                .map(|(binding, service_id)| VpcServiceBinding {
                    binding: (*binding).to_owned(),
                    service_id: *service_id,
                })
                .collect(),
            vpc_networks: Vec::new(),
            limits: Default::default(),
        };
        let options = RuntimeOptions {
            binding_workers: vec![worker.local_addr()],
            binding_secret: None,
            account: "test-account".into(),
            exchange_tap: None,
            metrics: None,
        };
        let runtime = tokio::task::spawn_blocking(move || Runtime::new(&config, options))
            .await
            .unwrap()
            .expect("loading the test script");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let script_addr = listener.local_addr().unwrap();
        let runtime = Arc::new(runtime);
        tasks.push(tokio::spawn(async move {
            let _ = runtime.serve(listener).await;
        }));
        MockStack {
            script_addr,
            store,
            tunnel,
            dns,
            tasks,
            binding_worker: Some(worker),
        }
    }
}

impl Drop for MockStack {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(worker) = self.binding_worker.take() {
            worker.shutdown();
        }
    }
}
