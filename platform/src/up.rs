//! `wvpc up`: the platform on one machine as separate processes — the directory API, iris,
//! a binding-worker and a runtime — all sharing one state directory, started in order, each
//! awaited until it prints its `ready` line, and stopped together.
//!
//! Each child is the `wvpc` binary itself with the matching subcommand, so what runs is
//! exactly what an operator would start by hand (docs/operations.md). Children's logs go to
//! this process's stderr; their stdout (ready lines, script output) is forwarded to its
//! stdout. When one child exits, the others are stopped: a half platform is not served.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::PlatformError;

/// Set on every child: its stdin is a pipe from `wvpc up`, and the end of it (this process
/// exited, even by SIGKILL) stops the child as SIGTERM would, so no component outlives the
/// platform it belongs to.
pub const EXIT_WITH_STDIN_ENV: &str = "WVPC_EXIT_WITH_STDIN";

/// How long a component may take to print its `ready` line (the runtime compiles every
/// deployed script first).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Where each process of the platform listens.
#[derive(Debug, Clone)]
pub struct PlatformAddrs {
    /// The directory API (`wvpc directory --listen`).
    pub directory: SocketAddr,
    /// iris's CONNECT listener (`wvpc iris --listen`).
    pub iris: SocketAddr,
    /// The tunnel edge, QUIC (`wvpc iris --edge-listen`).
    pub edge: SocketAddr,
    /// The binding-worker (`wvpc binding-worker --listen`).
    pub binding_worker: SocketAddr,
    /// The runtime's HTTP listener (`wvpc runtime --listen`).
    pub runtime: SocketAddr,
    /// The runtime's `--workers-domain`.
    pub workers_domain: String,
}

/// One started component.
struct Component {
    name: &'static str,
    child: Child,
    /// Held open while this process lives (see [`EXIT_WITH_STDIN_ENV`]).
    _stdin: Option<tokio::process::ChildStdin>,
}

/// The running platform. Dropping it kills every child at once; [`Platform::stop`] stops
/// them gracefully.
pub struct Platform {
    components: Vec<Component>,
    /// Components' stdout after their ready lines, until [`Platform::forward_output`].
    outputs: Vec<(&'static str, tokio::io::Lines<BufReader<ChildStdout>>)>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field(
                "components",
                &self.components.iter().map(|c| c.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Why a component did not come up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpError {
    /// The process could not be started.
    #[error("starting {name}: {source}")]
    Spawn {
        /// The component.
        name: &'static str,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The process ended before it was ready.
    #[error("{name} exited before it was ready ({status}); its log is above")]
    Exited {
        /// The component.
        name: &'static str,
        /// How it ended.
        status: String,
    },
    /// The process did not print its ready line in time.
    #[error("{name} was not ready within {READY_TIMEOUT:?}")]
    NotReady {
        /// The component.
        name: &'static str,
    },
}

impl From<UpError> for PlatformError {
    fn from(err: UpError) -> Self {
        PlatformError::Io {
            what: "starting the platform",
            source: std::io::Error::other(err),
        }
    }
}

impl Platform {
    /// Starts the four components from `exe` (the `wvpc` binary) on `state`, in dependency
    /// order, each awaited until ready. `ready` is told each component's ready line. With
    /// `otlp_endpoint` each exports its spans there.
    pub async fn start(
        exe: &Path,
        state: &Path,
        directory: Option<&str>,
        otlp_endpoint: Option<&str>,
        addrs: &PlatformAddrs,
        mut ready: impl FnMut(&str, &str),
    ) -> Result<Platform, UpError> {
        let mut platform = Platform {
            components: Vec::new(),
            outputs: Vec::new(),
            forwarders: Vec::new(),
        };

        let plan: [(&'static str, Vec<String>); 4] = [
            (
                "directory",
                vec![
                    "directory".into(),
                    "--listen".into(),
                    addrs.directory.to_string(),
                ],
            ),
            (
                "iris",
                vec![
                    "iris".into(),
                    "--listen".into(),
                    addrs.iris.to_string(),
                    "--edge-listen".into(),
                    addrs.edge.to_string(),
                ],
            ),
            (
                "binding-worker",
                vec![
                    "binding-worker".into(),
                    "--listen".into(),
                    addrs.binding_worker.to_string(),
                    "--iris".into(),
                    addrs.iris.to_string(),
                ],
            ),
            (
                "runtime",
                vec![
                    "runtime".into(),
                    "--listen".into(),
                    addrs.runtime.to_string(),
                    "--binding-worker".into(),
                    addrs.binding_worker.to_string(),
                    "--workers-domain".into(),
                    addrs.workers_domain.clone(),
                ],
            ),
        ];
        for (name, args) in plan {
            let mut child = Command::new(exe)
                .arg("--state")
                .arg(state)
                // In the environment, not on the command line, where `ps` would show a password.
                .envs(directory.map(|d| ("WVPC_DIRECTORY", d)))
                .envs(otlp_endpoint.map(|e| ("OTEL_EXPORTER_OTLP_ENDPOINT", e)))
                .args(&args)
                .env(EXIT_WITH_STDIN_ENV, "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| UpError::Spawn { name, source })?;
            let stdout = child.stdout.take();
            let stdin = child.stdin.take();
            platform.components.push(Component {
                name,
                child,
                _stdin: stdin,
            });
            let Some(stdout) = stdout else {
                return Err(UpError::Spawn {
                    name,
                    source: std::io::Error::other("no stdout pipe"),
                });
            };
            let mut lines = BufReader::new(stdout).lines();
            let line = tokio::time::timeout(READY_TIMEOUT, ready_line(&mut lines))
                .await
                .map_err(|_| UpError::NotReady { name })?;
            match line {
                Some(line) => ready(name, &line),
                None => {
                    let status = platform
                        .components
                        .last_mut()
                        .map(|c| c.child.try_wait())
                        .and_then(Result::ok)
                        .flatten()
                        .map_or_else(|| "stdout closed".to_owned(), |s| s.to_string());
                    return Err(UpError::Exited { name, status });
                }
            }
            platform.outputs.push((name, lines));
        }
        Ok(platform)
    }

    /// From now on, prints what the components write on stdout (the rest of their start-up
    /// summaries, scripts' output). Until then it waits in their pipes, so that it does not
    /// interleave with the caller's own summary.
    pub fn forward_output(&mut self) {
        for (name, lines) in self.outputs.drain(..) {
            self.forwarders.push(tokio::spawn(forward(name, lines)));
        }
    }

    /// Resolves when a component exits on its own; names it and how it ended.
    pub async fn exited(&mut self) -> (&'static str, String) {
        let waits: Vec<_> = self
            .components
            .iter_mut()
            .map(|c| {
                Box::pin(async move {
                    let status = c.child.wait().await;
                    (
                        c.name,
                        status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                    )
                })
            })
            .collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        futures::future::select_all(waits).await.0
    }

    /// Stops the components in reverse order (runtime first): SIGTERM, then SIGKILL for one
    /// still running after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        for component in self.components.iter_mut().rev() {
            terminate(&mut component.child, component.name, grace).await;
        }
        for forwarder in self.forwarders.drain(..) {
            forwarder.abort();
        }
    }
}

/// Reads stdout lines until one starts with `ready`; `None` when stdout closed first. Lines
/// before it are passed through.
async fn ready_line(lines: &mut tokio::io::Lines<BufReader<ChildStdout>>) -> Option<String> {
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("ready") {
            return Some(line);
        }
        println!("{line}");
    }
    None
}

/// Forwards a component's further stdout lines (more of its start-up summary, script output).
async fn forward(name: &'static str, mut lines: tokio::io::Lines<BufReader<ChildStdout>>) {
    while let Ok(Some(line)) = lines.next_line().await {
        println!("{line}");
    }
    tracing::debug!(component = name, "stdout closed");
}

async fn terminate(child: &mut Child, name: &'static str, grace: Duration) {
    if let Some(pid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => tracing::info!(component = name, "stopped"),
        Err(_) => {
            tracing::warn!(
                component = name,
                "did not stop within the grace period; killing it"
            );
            let _ = child.kill().await;
        }
    }
}

/// The `wvpc` binary to start children from: this process's own executable.
pub fn current_exe() -> Result<PathBuf, PlatformError> {
    std::env::current_exe().map_err(|source| PlatformError::Io {
        what: "finding the wvpc executable",
        source,
    })
}
