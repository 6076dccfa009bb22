//! The listener flags of the commands that serve HTTP (`--header-read-timeout`,
//! `--idle-timeout`, `--max-connections`), and raising the open-file limit at the start of
//! every command that serves until stopped.

use std::time::Duration;

use wvpc_listener::ServerLimits;

use super::iris::parse_duration;

/// Timeouts and connection cap of a command's listeners.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Close a connection whose request head is not complete this long after its first
    /// byte, or after it was accepted (e.g. 10s, 500ms)
    #[arg(long, default_value = "10s", value_parser = parse_timeout, value_name = "DURATION")]
    pub header_read_timeout: Duration,
    /// Close a keep-alive connection with no request (HTTP/2: no stream) for this long
    #[arg(long, default_value = "75s", value_parser = parse_timeout, value_name = "DURATION")]
    pub idle_timeout: Duration,
    /// Most connections open at once on each listener; one more is answered 503 and closed
    /// [default: from the open-file limit: (limit - limit/8) / 2, at most 65536]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
}

impl ServerArgs {
    /// The limits these flags ask for (call after [`raise_fd_limit`]: the default cap is
    /// sized from the limit in force).
    pub fn limits(&self) -> ServerLimits {
        let mut limits = ServerLimits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            ..ServerLimits::default()
        };
        if let Some(max) = self.max_connections {
            limits.max_connections = max as usize;
        }
        limits
    }
}

/// A timeout: a duration ([`parse_duration`]) above zero.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!(
            "{text:?} would close every connection at once; give a duration above zero"
        ));
    }
    Ok(duration)
}

/// Raises the soft open-file limit to the hard limit, and logs the outcome.
pub fn raise_fd_limit() {
    match wvpc_listener::raise_fd_limit() {
        Ok(limit) if limit.soft > limit.before => tracing::debug!(
            from = limit.before,
            to = limit.soft,
            "raised the open-file limit"
        ),
        Ok(limit) => tracing::debug!(limit = limit.soft, "open-file limit"),
        Err(err) => {
            tracing::warn!(error = %err, "cannot raise the open-file limit; connection caps follow the current one");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_commands_take_the_listener_flags() {
        use clap::Parser as _;
        let cli = crate::Cli::try_parse_from([
            "wvpc",
            "dev",
            "--idle-timeout",
            "5s",
            "--header-read-timeout",
            "2s",
            "--max-connections",
            "10",
        ])
        .unwrap();
        let crate::Command::Dev(args) = cli.command else {
            panic!("not dev: {:?}", cli.command);
        };
        let limits = args.server.limits();
        assert_eq!(
            (
                limits.idle_timeout,
                limits.header_read_timeout,
                limits.max_connections
            ),
            (Duration::from_secs(5), Duration::from_secs(2), 10)
        );
        for command in ["runtime", "iris", "directory"] {
            let cli = crate::Cli::try_parse_from(["wvpc", command, "--max-connections", "0"]);
            assert!(cli.is_err(), "{command} accepted --max-connections 0");
        }
        // Without the flag, the cap follows the open-file limit.
        let cli = crate::Cli::try_parse_from(["wvpc", "directory"]).unwrap();
        let crate::Command::Directory(args) = cli.command else {
            panic!("not directory");
        };
        assert_eq!(
            args.server.limits().max_connections,
            wvpc_listener::default_max_connections()
        );
    }

    #[test]
    fn a_zero_timeout_is_refused() {
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_timeout("0s").unwrap_err().contains("above zero"));
    }
}
