//! `wvpc iris`: a standalone iris node — the CONNECT router and the tunnel edge — over the
//! directory of `--state`. Prints a line starting with `ready` once it serves; on SIGTERM or
//! Ctrl-C it drains (no new CONNECTs or tunnel connections, streams in flight finish within
//! `--grace-period`, then tunnel connections close with the edge-shutdown code, and the node
//! leaves the cluster registry). Its live connections are published in the cluster registry
//! under a lease of `--lease-ttl`.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use wvpc_directory::cluster::{MAX_LEASE_TTL, MIN_LEASE_TTL};

use super::dev::shutdown_signal;
use wvpc_platform::iris_node::{IrisNode, IrisOptions, RelayOptions};

/// `wvpc iris` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct IrisArgs {
    /// Address of the CONNECT listener (binding-workers connect here)
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// Address where the tunnel edge accepts connectors over QUIC (UDP)
    #[arg(long, default_value = "127.0.0.1:7844", value_name = "IP:PORT")]
    pub edge_listen: SocketAddr,
    /// Open the operations listener on IP:PORT: Prometheus metrics at /metrics, the status
    /// page at /status (and /status.json) for loopback peers or an account's admin token
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<SocketAddr>,
    /// This node's name: reported to connectors and recorded with their connections
    #[arg(long, default_value = "iris", value_name = "NAME")]
    pub node_name: String,
    /// Address of the relay listener: other iris nodes relay CONNECTs for tunnels they hold
    /// no connection of to this node here (mutual TLS from the relay CA in <state>/relay).
    /// Without it, this node neither relays nor accepts relays
    #[arg(long, value_name = "IP:PORT")]
    pub relay_listen: Option<SocketAddr>,
    /// Address other nodes dial to reach the relay listener (default: --relay-listen, which
    /// then must not be 0.0.0.0 / [::])
    #[arg(long, value_name = "IP:PORT", requires = "relay_listen")]
    pub relay_advertise: Option<SocketAddr>,
    /// How long this node's cluster lease lasts without a heartbeat (it heartbeats every
    /// third of it); other nodes forget a node that died this long after its last heartbeat
    #[arg(long, default_value = "10s", value_parser = parse_lease_ttl, value_name = "DURATION")]
    pub lease_ttl: Duration,
    /// On shutdown, how long streams in flight may finish (e.g. 30s, 500ms, 2m)
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub grace_period: Duration,
    /// Timeouts and connection cap of the listeners.
    #[command(flatten)]
    pub server: super::server_args::ServerArgs,
}

/// Runs iris until SIGTERM or Ctrl-C, then drains.
pub async fn run(
    args: IrisArgs,
    state: &crate::StateDir,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let directory = Arc::new(state.open_directory()?);
    let node = IrisNode::start(
        directory,
        state,
        args.listen,
        args.edge_listen,
        &IrisOptions {
            node_name: args.node_name.clone(),
            metrics_listen: args.metrics,
            server: args.server.limits(),
            relay: args.relay_listen.map(|listen| RelayOptions {
                listen,
                advertise: args.relay_advertise,
            }),
            lease_ttl: args.lease_ttl,
            ..IrisOptions::default()
        },
    )
    .await?;
    writeln!(
        out,
        "ready: iris {:?} accepting CONNECT on {} and connectors on {} (QUIC)",
        args.node_name, node.iris_addr, node.edge_addr
    )?;
    writeln!(
        out,
        "  connectors trust the edge with --cacert {}",
        node.edge_ca_path.display()
    )?;
    if let (Some(addr), Some(advertise)) = (node.relay_addr, node.relay_advertise) {
        writeln!(
            out,
            "  relay listener on {addr} (advertised as {advertise}), CA in {}",
            wvpc_platform::state::relay_dir(state).display()
        )?;
    }
    if let Some(addr) = node.metrics_addr {
        writeln!(out, "  metrics on http://{addr}/metrics")?;
        writeln!(out, "  status page on http://{addr}/status")?;
    }
    writeln!(out, "  state {}", state.display())?;
    out.flush()?;
    shutdown_signal().await;
    tracing::info!(grace_s = args.grace_period.as_secs_f32(), "iris draining");
    let finished = node.drain(args.grace_period).await;
    writeln!(
        out,
        "stopped: {}",
        if finished {
            "every stream finished"
        } else {
            "grace period over, remaining streams were closed"
        }
    )?;
    Ok(())
}

/// `--lease-ttl`: a duration from [`MIN_LEASE_TTL`] (the heartbeat, a third of it, must fit
/// a store round trip) to [`MAX_LEASE_TTL`] (a dead node is trusted that long).
fn parse_lease_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl < MIN_LEASE_TTL {
        return Err(format!(
            "{text:?} is shorter than the minimum, {}ms",
            MIN_LEASE_TTL.as_millis()
        ));
    }
    if ttl > MAX_LEASE_TTL {
        return Err(format!("{text:?} is longer than the maximum, 1h"));
    }
    Ok(ttl)
}

/// The longest value of a duration flag: anything longer is a mistake, and values near
/// `u64::MAX` seconds overflow the clock when a deadline is computed from them.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// A duration as humantime writes it (`30s`, `500ms`, `2m`, `1h 30m`), or plain seconds
/// (`10`), at most [`MAX_DURATION`]. clap puts the flag's name before the error.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let too_long = || format!("{text:?} is longer than the maximum, 24h");
    let duration = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        // Digits only, but more than u64 holds.
        Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(too_long());
        }
        Err(_) => humantime::parse_duration(text).map_err(|err| match err {
            humantime::DurationError::NumberOverflow => too_long(),
            err => format!("{text:?} is not a duration ({err}); e.g. 30s, 500ms, 2m"),
        })?,
    };
    if duration > MAX_DURATION {
        return Err(too_long());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_ttl_below_the_minimum_is_refused_naming_the_flag() {
        use clap::Parser as _;
        let err = crate::Cli::try_parse_from(["wvpc", "iris", "--lease-ttl", "100ms"]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--lease-ttl") && text.contains("minimum, 300ms"),
            "{text}"
        );
        let cli = crate::Cli::try_parse_from(["wvpc", "iris", "--lease-ttl", "3s"]);
        assert!(cli.is_ok());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(
            parse_duration("3 fortnights")
                .unwrap_err()
                .contains("unknown time unit")
        );
        assert_eq!(parse_duration("24h"), Ok(MAX_DURATION));
    }

    /// Every duration flag refuses huge values with its name and the maximum: they used to
    /// parse (or overflow) and panic when the deadline was computed.
    #[test]
    fn huge_duration_flags_are_refused_naming_the_flag_and_the_maximum() {
        use clap::Parser as _;
        let commands: [&[&str]; 5] = [
            &["iris", "--grace-period"],
            &["binding-worker", "--iris", "127.0.0.1:1", "--grace-period"],
            &[
                "binding-worker",
                "--iris",
                "127.0.0.1:1",
                "--connect-timeout",
            ],
            &[
                "binding-worker",
                "--iris",
                "127.0.0.1:1",
                "--response-timeout",
            ],
            &[
                "tunnel",
                "run",
                "--token",
                "t",
                "--edge",
                "127.0.0.1:1",
                "--grace-period",
            ],
        ];
        for command in commands {
            let flag = command.last().unwrap();
            for huge in [
                "300000000000000000h",
                "18446744073709551615",
                "99999999999999999999",
                "25h",
            ] {
                let args = [&["wvpc"], command, &[huge]].concat();
                let err = crate::Cli::try_parse_from(&args).unwrap_err();
                assert_eq!(
                    err.kind(),
                    clap::error::ErrorKind::ValueValidation,
                    "{args:?}"
                );
                let text = err.to_string();
                assert!(text.contains(flag), "{text}");
                assert!(text.contains("maximum, 24h"), "{text}");
            }
        }
    }
}
