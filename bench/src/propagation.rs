//! Route propagation: how long a directory write that changes a route takes to be in the
//! routing table of every iris node of a cluster, timed from the moment the write's commit
//! returns to the writer.
//!
//! Three [`IrisNode`]s run in this process on one store, each on a directory handle of its own
//! ([`Directory::reopen`]: its own connections and, on PostgreSQL, its own `LISTEN
//! wvpc_directory` connection, as separate `wvpc iris` processes have), so each learns the
//! change through the same feed and reload path a process does: a PostgreSQL notification at
//! commit (or, on SQLite, the 100 ms poll), a read of the revision, a route snapshot, the
//! table swap. In-process nodes let the bench await each node's own signal —
//! [`LiveRoutes::caught_up`](wvpc_platform::live_routes::LiveRoutes::caught_up), a watch
//! channel the node sends on right after it swapped the new table in — instead of polling a
//! process's metrics, so the figure carries no polling error.
//!
//! Each write replaces the service's HTTP port (what a CONNECT to it dials); after every node
//! caught up, each node's table is checked to route the service to the new port. Writes are
//! spaced by pauses spread over one SQLite poll interval ([`pause`]): a write issued right
//! after the previous one arrived would always land just after a poll and wait a whole
//! interval.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wvpc_directory::{Directory, HostInput, ResolverNetworkInput, SQLITE_POLL, ServiceInput};
use wvpc_iris::ServiceStore as _;
use wvpc_platform::stack::{IrisNode, IrisOptions};
use wvpc_tests::TempDir;

/// iris nodes following the store.
pub const NODES: usize = 3;
/// The goal: a route reaches every node within this long of its commit.
pub const GOAL: Duration = Duration::from_millis(100);
/// Bound on one write's propagation (only a hang trips it: the safety poll is 5 s).
const PATIENCE: Duration = Duration::from_secs(30);
/// The (never dialled) DNS server of the service's resolver network.
const RESOLVER: &str = "127.0.0.1:53";

/// One store's figures.
pub struct Propagation {
    /// `PostgreSQL (LISTEN/NOTIFY)`, `SQLite (100 ms poll)`.
    pub store: &'static str,
    /// Per write: commit returned → the last node swapped the change in.
    pub every_node: Vec<Duration>,
    /// Per write: commit returned → the first node swapped the change in.
    pub first_node: Vec<Duration>,
}

/// Where the store lives.
pub enum Store {
    /// A PostgreSQL database URL.
    Postgres(String),
    /// The SQLite file of the bench's state directory.
    Sqlite,
}

/// Starts [`NODES`] iris nodes on `store` and times `writes` route changes.
pub async fn measure(store: Store, writes: usize) -> anyhow::Result<Propagation> {
    let state = TempDir::new("bench-propagation");
    let (label, writer) = match &store {
        Store::Postgres(url) => (
            "PostgreSQL (LISTEN/NOTIFY)",
            Directory::open_spec(Some(url), state.path()),
        ),
        Store::Sqlite => ("SQLite (100 ms poll)", Directory::open(state.path())),
    };
    let writer = Arc::new(writer.context("opening the directory")?);
    let (tunnel, _) = writer.create_tunnel("office")?;
    let input = |port: u16| {
        let mut input = ServiceInput::http(
            "api",
            HostInput {
                hostname: Some("origin.internal".into()),
                resolver_network: Some(ResolverNetworkInput {
                    virtual_network_id: None,
                    tunnel_id: Some(tunnel.id.to_string()),
                    resolver_ips: Some(vec![RESOLVER.into()]),
                }),
                ..HostInput::default()
            },
        );
        input.http_port = Some(i64::from(port));
        input
    };
    let service = writer.create_service(&input(8000))?.service_id;

    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let mut nodes = Vec::with_capacity(NODES);
    for i in 0..NODES {
        let directory = Arc::new(writer.reopen().context("a directory handle for a node")?);
        let options = IrisOptions {
            node_name: format!("iris-{i}"),
            ..IrisOptions::default()
        };
        let node = IrisNode::start(directory, state.path(), any, any, &options)
            .await
            .with_context(|| format!("starting iris node {i}"))?;
        nodes.push(node);
    }

    let mut every_node = Vec::with_capacity(writes);
    let mut first_node = Vec::with_capacity(writes);
    for i in 0..writes {
        tokio::time::sleep(pause(i)).await;
        let port = 8001 + u16::try_from(i % 1000)?;
        let before = tokio::task::spawn_blocking({
            let writer = writer.clone();
            move || writer.revision()
        })
        .await??;
        let committed = tokio::task::spawn_blocking({
            let (writer, input) = (writer.clone(), input(port));
            move || -> anyhow::Result<Instant> {
                writer.replace_service(service, &input)?;
                Ok(Instant::now())
            }
        })
        .await??;
        // This bench is the only writer: the write is revision `before + 1`.
        let caught_up = nodes.iter().map(|node| async move {
            node.routes.caught_up(before + 1).await;
            committed.elapsed()
        });
        let mut times = tokio::time::timeout(PATIENCE, futures::future::join_all(caught_up))
            .await
            .with_context(|| format!("write {i} did not reach every node within {PATIENCE:?}"))?;
        times.sort_unstable();
        first_node.push(times[0]);
        every_node.push(times[times.len() - 1]);
        for (n, node) in nodes.iter().enumerate() {
            let route = node
                .routes
                .route(service)?
                .context("the service has no route")?;
            anyhow::ensure!(
                route.http_port == Some(port),
                "iris node {n} caught up with write {i} but routes to port {:?}, not {port}",
                route.http_port
            );
        }
    }
    let after = tokio::task::spawn_blocking({
        let writer = writer.clone();
        move || writer.revision()
    })
    .await??;
    anyhow::ensure!(
        nodes.iter().all(|node| node.routes.revision() == after),
        "a node does not route with the directory's last revision {after}"
    );
    drop(nodes);
    Ok(Propagation {
        store: label,
        every_node,
        first_node,
    })
}

/// The pause before write `i`: a fraction of the SQLite poll interval from a low-discrepancy
/// sequence (multiples of the golden ratio), so that writes fall evenly over the phases of
/// the nodes' polls, and the same in every run.
fn pause(i: usize) -> Duration {
    const GOLDEN: f64 = 0.618_033_988_749_895;
    SQLITE_POLL.mul_f64((i as f64 * GOLDEN).fract())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SQLite figure is only fair if writes meet the nodes' polls at every phase: the
    /// pauses of 50 writes fill every tenth of the interval.
    #[test]
    fn pauses_spread_over_the_whole_poll_interval() {
        let mut tenths = [0usize; 10];
        for i in 0..50 {
            let pause = pause(i);
            assert!(pause < SQLITE_POLL, "write {i} pauses {pause:?}");
            tenths[(pause.as_secs_f64() / SQLITE_POLL.as_secs_f64() * 10.0) as usize] += 1;
        }
        assert!(
            tenths.iter().all(|&n| (3..=7).contains(&n)),
            "writes per tenth of the poll interval: {tenths:?}"
        );
    }
}
