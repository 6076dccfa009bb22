//! `wvpc tunnel run`: a connector inside the private network that dials the edge (iris) and
//! serves the tunnel, like `cloudflared tunnel run`. Prints a line starting with `registered`
//! once the first connection is registered.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use wvpc_connector::{AllowRule, Connector, ConnectorConfig};
use wvpc_tunnel::{Credentials, DatagramVersion};

use super::dev::shutdown_signal;
use super::iris::parse_duration;

/// `wvpc tunnel run` arguments (names follow cloudflared's flags and environment variables).
#[derive(Debug, Clone, clap::Args)]
pub struct TunnelRunArgs {
    /// Tunnel token, as printed by `wvpc tunnel create` / `wvpc tunnel token`
    #[arg(
        long,
        env = "TUNNEL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: String,
    /// Edge address to dial (repeat for several edges)
    #[arg(long, required = true, value_name = "HOST:PORT")]
    pub edge: Vec<String>,
    /// DNS resolvers for the virtual DNS service instead of the system resolver (repeatable,
    /// at most 10)
    #[arg(
        long = "dns-resolver-addrs",
        env = "TUNNEL_DNS_RESOLVER_ADDRS",
        value_delimiter = ',',
        value_name = "IP:PORT"
    )]
    pub dns_resolver_addrs: Vec<SocketAddr>,
    /// PEM file with the CA certificate(s) that sign the edge's certificate
    #[arg(long, value_name = "PEM")]
    pub cacert: Option<PathBuf>,
    /// Number of connections to keep to the edge, spread over the --edge addresses
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..))]
    pub ha_connections: u8,
    /// How UDP (DNS) sessions travel: `v3` (in-band; announces support_datagram_v3_2) or `v2`
    /// (set up by RPC, what a stock cloudflared speaks without `--features`)
    #[arg(long, default_value = "v3", value_name = "v2|v3", value_parser = parse_datagram_version)]
    pub datagram_version: DatagramVersion,
    /// Most concurrent TCP streams plus UDP sessions; more are refused as rate_limited
    /// (0: no limit)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_active_flows: usize,
    /// Only reach these destinations (repeatable): a CIDR (10.0.0.0/8), an IP, or
    /// ip:port / host:port. Anything else is refused as destination_ip_prohibited; DNS to the
    /// virtual resolver stays allowed. Without --allow every destination is reachable
    #[arg(long, value_name = "CIDR|HOST:PORT")]
    pub allow: Vec<String>,
    /// On SIGTERM, how long streams in flight may finish after unregistering (e.g. 30s)
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub grace_period: Duration,
    /// Serve Prometheus metrics on http://IP:PORT/metrics
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<SocketAddr>,
}

fn parse_datagram_version(text: &str) -> Result<DatagramVersion, String> {
    match text {
        "v3" | "3" => Ok(DatagramVersion::V3),
        "v2" | "2" => Ok(DatagramVersion::V2),
        other => Err(format!("{other:?} is not a datagram version: use v2 or v3")),
    }
}

/// Reads `--allow` entries; a `host:port` is resolved now into one rule per address.
async fn allow_rules(entries: &[String]) -> anyhow::Result<Vec<AllowRule>> {
    let mut rules = Vec::new();
    for entry in entries {
        match entry.parse::<AllowRule>() {
            Ok(rule) => rules.push(rule),
            Err(err) => {
                let looks_like_host_port = entry
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !looks_like_host_port {
                    anyhow::bail!("{err}");
                }
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host(entry.as_str())
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("--allow {entry:?}: cannot resolve the host: {e}")
                    })?
                    .collect();
                if addrs.is_empty() {
                    anyhow::bail!("--allow {entry:?}: the host has no address");
                }
                rules.extend(addrs.into_iter().map(AllowRule::Addr));
            }
        }
    }
    Ok(rules)
}

/// Most `--dns-resolver-addrs`, as cloudflared allows.
const MAX_DNS_RESOLVERS: usize = 10;

/// Runs the connector until Ctrl-C or SIGTERM, or until the edge refuses the credentials.
pub async fn run(
    args: TunnelRunArgs,
    state: &Path,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let credentials = Credentials::from_token(&args.token).map_err(|err| {
        anyhow::anyhow!(
            "--token: {err} (use the token printed by `wvpc tunnel create` or `wvpc tunnel token`)"
        )
    })?;
    let mut edge = Vec::new();
    for entry in &args.edge {
        let addr = tokio::net::lookup_host(entry.as_str())
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                anyhow::anyhow!("--edge {entry:?}: not a reachable host:port (e.g. 127.0.0.1:7844)")
            })?;
        edge.push(addr);
    }
    if args.dns_resolver_addrs.len() > MAX_DNS_RESOLVERS {
        anyhow::bail!(
            "--dns-resolver-addrs: {} resolvers given, at most {MAX_DNS_RESOLVERS} are allowed",
            args.dns_resolver_addrs.len()
        );
    }
    let ca_path = match &args.cacert {
        Some(path) => path.clone(),
        None => {
            let local = state.join("edge").join(wvpc_tunnel::identity::CA_FILE);
            if !local.is_file() {
                anyhow::bail!(
                    "--cacert: no CA to verify the edge with; pass the edge's ca.pem (a `wvpc dev` \
                     or iris writes it to <state>/edge/ca.pem; {} does not exist)",
                    local.display()
                );
            }
            local
        }
    };
    let ca_pem = std::fs::read(&ca_path)
        .map_err(|err| anyhow::anyhow!("--cacert {}: {err}", ca_path.display()))?;

    let tunnel_id = credentials.tunnel_id;
    let mut config = ConnectorConfig::new(credentials, edge.clone(), ca_pem);
    config.dns_resolvers = args.dns_resolver_addrs.clone();
    config.ha_connections = usize::from(args.ha_connections);
    config.datagram_version = args.datagram_version;
    config.max_active_flows = args.max_active_flows;
    config.allow = allow_rules(&args.allow).await?;
    config.grace_period = args.grace_period;
    let connector = Connector::new(config)?;
    let mut tasks = Vec::new();
    if let Some(addr) = args.metrics {
        let ops = wvpc_observe::ops::Ops::new("connector", wvpc_observe::ops::host_name())
            .with(connector.metrics());
        let (local, task) =
            wvpc_observe::ops::start(addr, std::sync::Arc::new(ops), Default::default())
                .await
                .map_err(|e| anyhow::anyhow!("--metrics {addr}: cannot listen: {e}"))?;
        tracing::info!(addr = %local, "connector metrics at http://{local}/metrics, status at http://{local}/status");
        writeln!(out, "  metrics on http://{local}/metrics")?;
        out.flush()?;
        tasks.push(task);
    }
    let mut readiness = connector.readiness();
    let announce = async {
        if readiness.wait_registered(1).await {
            let _ = writeln!(
                out,
                "registered: tunnel {tunnel_id} via {} (connector {})",
                edge.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                connector.client_id()
            );
            let _ = out.flush();
        }
        // Keep this branch pending: only serve() ends the select below.
        std::future::pending::<()>().await
    };
    let result = tokio::select! {
        result = connector.serve(shutdown_signal()) => result,
        () = announce => Ok(()),
    };
    for task in tasks {
        task.abort();
    }
    result?;
    Ok(())
}
