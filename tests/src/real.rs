//! `RealWorld`: the real path, assembled — an origin on 127.0.0.2, a DNS server answering
//! `api.internal` for it, a tunnel and a hostname service in a fresh directory,
//! `wvpc_platform::stack::Stack` (exactly what `wvpc dev` runs) serving `examples/proxy`, and our
//! connector registered over QUIC.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use uuid::Uuid;
use wvpc_connector::{Connector, ConnectorConfig, ConnectorError, ConnectorMetrics, Readiness};
use wvpc_directory::{Directory, HostInput, ResolverNetworkInput, ServiceInput};
use wvpc_platform::stack::{IrisOptions, Stack, StackConfig};
use wvpc_runtime::{ScriptConfig, VpcServiceBinding};
use wvpc_tunnel::{Credentials, DatagramVersion};

use crate::TempDir;
use crate::dns::{DnsServer, DnsTable};
use crate::guests;
use crate::origin::Origin;

/// The private origin's address (a second loopback address, as a private host would be).
pub const ORIGIN_IP: &str = "127.0.0.2";
/// The private name the service resolves through the tunnel.
pub const ORIGIN_NAME: &str = "api.internal";

/// Everything of the real path, alive until dropped.
pub struct RealWorld {
    /// The dev stack.
    pub stack: Stack,
    /// The private origin.
    pub origin: Origin,
    /// The private DNS server.
    pub dns: DnsServer,
    /// The tunnel the service uses.
    pub tunnel_id: Uuid,
    /// The hostname service the script's binding `API` names.
    pub service_id: Uuid,
    /// The tunnel's credentials (for more connectors).
    pub credentials: Credentials,
    stop_connector: Option<oneshot::Sender<()>>,
    _state: TempDir,
}

/// What [`RealWorld::start_with`] starts besides the fixed parts.
#[derive(Debug, Clone)]
pub struct WorldOptions {
    /// Start one connector (1 connection) and wait for it.
    pub connector: bool,
    /// iris's node name and metrics listener.
    pub iris: IrisOptions,
    /// How the started connector carries UDP (DNS) sessions.
    pub datagram_version: DatagramVersion,
    /// The script (a component path) bound as `API` to the service.
    pub script: &'static str,
    /// The started connector's origin dial timeout (`None`: the connector's default).
    pub dial_timeout: Option<Duration>,
    /// The started connector's flow limit (0: none).
    pub max_active_flows: usize,
    /// The binding-worker's per-service connection cap.
    pub max_connections_per_service: usize,
    /// The directory store (`--directory`); `None`: the state's SQLite file.
    pub directory: Option<String>,
    /// Given every binding exchange of the script (what `wvpc dev --record` taps).
    pub exchange_tap: Option<Arc<dyn wvpc_runtime::ExchangeTap>>,
    /// The script's `limits`.
    pub limits: wvpc_runtime::Limits,
}

impl Default for WorldOptions {
    fn default() -> Self {
        Self {
            connector: true,
            iris: IrisOptions::default(),
            datagram_version: DatagramVersion::V3,
            script: guests::PROXY,
            dial_timeout: None,
            max_active_flows: 0,
            max_connections_per_service: 256,
            directory: None,
            exchange_tap: None,
            limits: Default::default(),
        }
    }
}

/// A connector started by [`RealWorld::add_connector`].
pub struct RunningConnector {
    /// Its connector id.
    pub client_id: Uuid,
    /// Its registered connections.
    pub readiness: Readiness,
    /// Its metrics.
    pub metrics: Arc<ConnectorMetrics>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ConnectorError>>,
}

impl RunningConnector {
    /// Starts `config` and waits until all its connections are registered.
    pub async fn start(config: ConnectorConfig) -> anyhow::Result<RunningConnector> {
        let want = config.ha_connections;
        let connector = Connector::new(config)?;
        let mut readiness = connector.readiness();
        let (client_id, metrics) = (connector.client_id(), connector.metrics());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            connector
                .serve(async {
                    let _ = stopped.await;
                })
                .await
        });
        let registered =
            tokio::time::timeout(Duration::from_secs(30), readiness.wait_registered(want)).await;
        anyhow::ensure!(
            matches!(registered, Ok(true)),
            "the connector did not register {want} connections within 30 s"
        );
        Ok(RunningConnector {
            client_id,
            readiness,
            metrics,
            stop: Some(stop),
            task,
        })
    }

    /// Graceful stop (what SIGTERM does): unregister, let flows finish within the grace
    /// period, close. Resolves when the connector has stopped.
    pub async fn shutdown(mut self) -> Result<(), ConnectorError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap_or(Ok(()))
    }
}

impl Drop for RunningConnector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RealWorld {
    /// Starts everything and waits until the connector is registered.
    pub async fn start() -> anyhow::Result<RealWorld> {
        Self::start_with(WorldOptions::default()).await
    }

    /// Starts the fixed parts and what `options` asks for.
    pub async fn start_with(options: WorldOptions) -> anyhow::Result<RealWorld> {
        let state = TempDir::new("world");
        let origin = Origin::start(ORIGIN_IP).await?;
        let origin_ip: IpAddr = ORIGIN_IP.parse()?;
        let dns = DnsServer::start(DnsTable::new().with(ORIGIN_NAME, origin_ip)).await?;

        let directory = Directory::open_spec(options.directory.as_deref(), state.path())?;
        let (tunnel, credentials) = directory.create_tunnel("office")?;
        let mut input = ServiceInput::http(
            "api",
            HostInput {
                hostname: Some(ORIGIN_NAME.into()),
                resolver_network: Some(ResolverNetworkInput {
                    virtual_network_id: None,
                    tunnel_id: Some(tunnel.id.to_string()),
                    resolver_ips: Some(vec![dns.addr.to_string()]),
                }),
                ..HostInput::default()
            },
        );
        input.http_port = Some(i64::from(origin.addr.port()));
        let service = directory.create_service(&input)?;
        drop(directory);

        let max_connections = options.max_connections_per_service;
        let stack = Stack::start_tuned(
            StackConfig {
                directory: options.directory.clone(),
                state: state.path().to_owned(),
                script: ScriptConfig {
                    name: "proxy".into(),
                    main: PathBuf::from(options.script),
                    vpc_services: vec![VpcServiceBinding {
                        binding: "API".into(),
                        service_id: service.service_id,
                    }],
                    vpc_networks: Vec::new(),
                    limits: options.limits,
                },
                listen: "127.0.0.1:0".parse()?,
                edge_listen: "127.0.0.1:0".parse()?,
                server: Default::default(),
                exchange_tap: options.exchange_tap.clone(),
            },
            options.iris.clone(),
            |bw| bw.max_connections_per_service = max_connections,
        )
        .await?;

        let mut world = RealWorld {
            stack,
            origin,
            dns,
            tunnel_id: tunnel.id,
            service_id: service.service_id,
            credentials,
            stop_connector: None,
            _state: state,
        };
        if !options.connector {
            return Ok(world);
        }
        let mut config = world.connector_config(world.stack.edge_addr);
        config.datagram_version = options.datagram_version;
        if let Some(timeout) = options.dial_timeout {
            config.dial_timeout = timeout;
        }
        config.max_active_flows = options.max_active_flows;
        let connector = Connector::new(config)?;
        let mut readiness = connector.readiness();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(err) = connector.serve(shutdown).await {
                tracing::error!(error = %err, "connector stopped");
            }
        });
        let registered =
            tokio::time::timeout(Duration::from_secs(30), readiness.wait_registered(1)).await;
        anyhow::ensure!(
            matches!(registered, Ok(true)),
            "the connector did not register within 30 s"
        );
        world.stop_connector = Some(stop);
        Ok(world)
    }

    /// The state directory (directory database, edge identity).
    pub fn state(&self) -> &std::path::Path {
        self._state.path()
    }

    /// Creates an http service on this world's tunnel reaching `ip:port` directly (no DNS).
    pub fn create_ip_service(&self, name: &str, ip: std::net::Ipv4Addr, port: u16) -> Uuid {
        let mut input = ServiceInput::http(
            name,
            HostInput {
                ipv4: Some(ip.to_string()),
                network: Some(wvpc_directory::NetworkInput {
                    virtual_network_id: None,
                    tunnel_id: Some(self.tunnel_id.to_string()),
                }),
                ..HostInput::default()
            },
        );
        input.http_port = Some(i64::from(port));
        self.stack
            .directory
            .create_service(&input)
            .expect("creating an ip service")
            .service_id
    }

    /// A connector configuration for this world's tunnel dialling `edge` (1 connection).
    pub fn connector_config(&self, edge: SocketAddr) -> ConnectorConfig {
        ConnectorConfig::new(
            self.credentials.clone(),
            vec![edge],
            self.stack.edge_identity.ca_pem().as_bytes().to_vec(),
        )
    }

    /// Stops the connector (it unregisters and closes its connections).
    pub fn stop_connector(&mut self) {
        if let Some(stop) = self.stop_connector.take() {
            let _ = stop.send(());
        }
    }
}
