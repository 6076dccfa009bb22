//! The relayed row's cluster: `wvpc dev`'s stack (in this process) is iris node A with a relay
//! listener, and a second iris node B runs on the same state. The binding row is measured
//! with the connector on A; then the connector moves to B and A learns that B holds the
//! tunnel ([`Cluster::move_tunnel_to_b`]), so every CONNECT of the script is relayed A → B
//! over mutual TLS: the same stack and request, one more hop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wvpc_iris::peers::{PeerMap, RelayPeer};
use wvpc_platform::iris_node::RelayOptions;
use wvpc_platform::stack::{IrisNode, IrisOptions};
use wvpc_tests::real::{RealWorld, RunningConnector, WorldOptions};

/// Bound on each step of the move (only a hang trips it).
const PATIENCE: Duration = Duration::from_secs(30);

/// Node A (the world's stack), node B, and who A thinks holds the tunnel.
pub struct Cluster {
    /// The real path, entered at node A.
    pub world: RealWorld,
    b: IrisNode,
    peers: Arc<PeerMap>,
    connector: Option<RunningConnector>,
}

impl Cluster {
    /// The real path with relaying on, its connector on A.
    pub async fn start() -> anyhow::Result<Self> {
        let peers = Arc::new(PeerMap::new());
        let relay_on = |ip: &str| {
            Some(RelayOptions {
                listen: format!("{ip}:0").parse().expect("an address"),
                advertise: None,
            })
        };
        let world = RealWorld::start_with(WorldOptions {
            iris: IrisOptions {
                node_name: "iris-a".into(),
                relay: relay_on("127.0.0.1"),
                peers: Some(peers.clone()),
                ..IrisOptions::default()
            },
            ..WorldOptions::default()
        })
        .await
        .context("starting the real path")?;
        let b = IrisNode::start(
            world.stack.directory.clone(),
            world.state(),
            "127.0.0.3:0".parse()?,
            "127.0.0.3:0".parse()?,
            &IrisOptions {
                node_name: "iris-b".into(),
                relay: relay_on("127.0.0.3"),
                ..IrisOptions::default()
            },
        )
        .await
        .context("starting iris node B")?;
        Ok(Self {
            world,
            b,
            peers,
            connector: None,
        })
    }

    /// Moves the tunnel's connector from A to B and tells A that B holds it; returns once a
    /// script request is served through the relay.
    pub async fn move_tunnel_to_b(&mut self) -> anyhow::Result<()> {
        let tunnel = self.world.tunnel_id;
        self.world.stop_connector();
        let deadline = Instant::now() + PATIENCE;
        while self.world.stack.registry().has_usable_connection(tunnel) {
            anyhow::ensure!(Instant::now() < deadline, "the connector did not leave A");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let connector = tokio::time::timeout(
            PATIENCE,
            RunningConnector::start(self.world.connector_config(self.b.edge_addr)),
        )
        .await
        .context("the connector did not register with B in time")??;
        self.connector = Some(connector);
        tokio::time::timeout(PATIENCE, self.b.registry().wait_for_connections(tunnel, 1))
            .await
            .context("B did not register the connection in time")?;
        let addr = self.b.relay_advertise.context("B has no relay address")?;
        self.peers.replace(HashMap::from([(
            tunnel,
            vec![RelayPeer {
                node: "iris-b".into(),
                addr,
                connections: 1,
            }],
        )]));
        // The binding-worker's pooled origin connections through A's old tunnel connection
        // are gone: settle until requests pass again.
        let mut in_a_row = 0;
        while in_a_row < 5 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no request passed through the relay"
            );
            let reply = wvpc_tests::client::get(self.world.stack.script_addr, "/hello").await;
            in_a_row = if reply.status == 200 { in_a_row + 1 } else { 0 };
        }
        Ok(())
    }
}
