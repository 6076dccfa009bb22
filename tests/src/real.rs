//! `RealWorld`: the real path, assembled — an origin on 127.0.0.2, a DNS server answering
//! `api.internal` for it, a tunnel and a hostname service in a fresh directory,
//! `wvpc_cli::stack::Stack` (exactly what `wvpc dev` runs) serving `examples/proxy`, and our
//! connector registered over QUIC.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;
use uuid::Uuid;
use wvpc_cli::stack::{Stack, StackConfig};
use wvpc_connector::{Connector, ConnectorConfig};
use wvpc_directory::{Directory, HostInput, ResolverNetworkInput, ServiceInput};
use wvpc_runtime::{ScriptConfig, VpcServiceBinding};

use crate::TempDir;
use crate::dns::{DnsServer, DnsTable};
use crate::guests;
use crate::origin::Origin;

/// The private origin's address (a second loopback address, as a private host would be).
pub const ORIGIN_IP: &str = "127.0.0.2";
/// The private name the service resolves through the tunnel.
pub const ORIGIN_NAME: &str = "api.internal";

/// What a [`RealWorld`] runs, where tests need other than the defaults.
#[derive(Debug, Clone)]
pub struct WorldOptions {
    /// The script (a component path) bound as `API` to the service.
    pub script: &'static str,
    /// The connector's origin dial timeout (`None`: the connector's default).
    pub dial_timeout: Option<Duration>,
    /// The connector's flow limit (0: none).
    pub max_active_flows: usize,
    /// The binding-worker's per-service connection cap.
    pub max_connections_per_service: usize,
}

impl Default for WorldOptions {
    fn default() -> Self {
        WorldOptions {
            script: guests::PROXY,
            dial_timeout: None,
            max_active_flows: 0,
            max_connections_per_service: 256,
        }
    }
}

/// Everything of the real path, alive until dropped.
pub struct RealWorld {
    /// The dev stack.
    pub stack: Stack,
    /// The tunnel the connector serves.
    pub tunnel_id: Uuid,
    /// The service bound as `API`.
    pub service_id: Uuid,
    /// The private origin.
    pub origin: Origin,
    /// The private DNS server.
    pub dns: DnsServer,
    stop_connector: Option<oneshot::Sender<()>>,
    _state: TempDir,
}

impl RealWorld {
    /// Starts everything and waits until the connector is registered.
    pub async fn start() -> anyhow::Result<RealWorld> {
        Self::start_with(WorldOptions::default()).await
    }

    /// [`RealWorld::start`] with `options`.
    pub async fn start_with(options: WorldOptions) -> anyhow::Result<RealWorld> {
        let state = TempDir::new("world");
        let origin = Origin::start(ORIGIN_IP).await?;
        let origin_ip: IpAddr = ORIGIN_IP.parse()?;
        let dns = DnsServer::start(DnsTable::new().with(ORIGIN_NAME, origin_ip)).await?;

        let directory = Directory::open(state.path())?;
        let (tunnel, credentials) = directory.create_tunnel("office")?;
        let mut input = ServiceInput::http(
            "api",
            HostInput {
                hostname: Some(ORIGIN_NAME.into()),
                resolver_network: Some(ResolverNetworkInput {
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
                state: state.path().to_owned(),
                script: ScriptConfig {
                    name: "proxy".into(),
                    main: PathBuf::from(options.script),
                    vpc_services: vec![VpcServiceBinding {
                        binding: "API".into(),
                        service_id: service.service_id,
                    }],
                },
                listen: "127.0.0.1:0".parse()?,
                edge_listen: "127.0.0.1:0".parse()?,
            },
            |bw| bw.max_connections_per_service = max_connections,
        )
        .await?;

        let mut connector_config = ConnectorConfig::new(
            credentials,
            vec![stack.edge_addr],
            stack.edge_identity.ca_pem().as_bytes().to_vec(),
        );
        if let Some(timeout) = options.dial_timeout {
            connector_config.dial_timeout = timeout;
        }
        connector_config.max_active_flows = options.max_active_flows;
        let connector = Connector::new(connector_config)?;
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
        Ok(RealWorld {
            stack,
            tunnel_id: tunnel.id,
            service_id: service.service_id,
            origin,
            dns,
            stop_connector: Some(stop),
            _state: state,
        })
    }

    /// Stops the connector (it unregisters and closes its connections).
    pub fn stop_connector(&mut self) {
        if let Some(stop) = self.stop_connector.take() {
            let _ = stop.send(());
        }
    }
}
