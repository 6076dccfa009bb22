//! `RealWorld`: the real path, assembled — an origin on 127.0.0.2, a DNS server answering
//! `api.internal` for it, a tunnel and a hostname service in a fresh directory,
//! `wvpc_cli::stack::Stack` (exactly what `wvpc dev` runs) serving `examples/proxy`, and our
//! connector registered over QUIC.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;
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

/// Everything of the real path, alive until dropped.
pub struct RealWorld {
    /// The dev stack.
    pub stack: Stack,
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

        let stack = Stack::start(StackConfig {
            state: state.path().to_owned(),
            script: ScriptConfig {
                name: "proxy".into(),
                main: PathBuf::from(guests::PROXY),
                vpc_services: vec![VpcServiceBinding {
                    binding: "API".into(),
                    service_id: service.service_id,
                }],
                limits: Default::default(),
            },
            listen: "127.0.0.1:0".parse()?,
            edge_listen: "127.0.0.1:0".parse()?,
        })
        .await?;

        let connector = Connector::new(ConnectorConfig::new(
            credentials,
            vec![stack.edge_addr],
            stack.edge_identity.ca_pem().as_bytes().to_vec(),
        ))?;
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
