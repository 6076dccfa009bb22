//! Redeploy latency on the platform's processes: how long from a deploy's commit in the
//! directory until EVERY runtime serves the new version, while load runs against the script on
//! every runtime (and how many of those requests failed: none should).
//!
//! Each runtime is asked `GET /status` on its control listener (with the token derived from
//! the platform secret) every [`POLL`] until it lists the new version. Two kinds of redeploy:
//! the same module again (a new version, nothing to compile: what is measured is how fast the
//! change propagates) and a new module (the same code with a custom section naming the
//! redeploy, so its content hash is new and every runtime compiles it first). Deploys are
//! spread over the phase of the runtimes' directory polls.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use wasm_encoder::ComponentSection as _;
use wvpc_platform::runtime_node::{POLL_INTERVAL, TAIL_TOKEN_PURPOSE};
use wvpc_runtime::PlatformSecret;

use crate::load::{Load, Target};
use crate::platform::{Platform, SCRIPT, SCRIPT_HOST};

/// How often each runtime's status is read while a redeploy propagates (the resolution of
/// the figures).
const POLL: Duration = Duration::from_millis(2);
/// Requests that must succeed after each redeploy reached every runtime, before the next
/// one (so the load really runs on every version).
const REQUESTS_BETWEEN: u64 = 20;
/// How long one redeploy may take to reach every runtime before the bench gives up.
const GIVE_UP: Duration = Duration::from_secs(60);

/// The redeploys' figures.
#[derive(Debug)]
pub struct Redeploys {
    /// Runtimes that had to serve each version.
    pub runtimes: usize,
    /// Commit → every runtime serves it, the same module redeployed.
    pub same_module: Vec<Duration>,
    /// Commit → every runtime serves it, a new module (compiled by every runtime first).
    pub new_module: Vec<Duration>,
    /// Requests answered 200 during the redeploys.
    pub ok: u64,
    /// Requests that failed during the redeploys.
    pub failed: u64,
}

/// `count` redeploys of each kind while `connections` connections per runtime load the
/// script.
pub async fn measure(
    platform: &Platform,
    count: usize,
    connections: usize,
) -> anyhow::Result<Redeploys> {
    let secret = PlatformSecret::from_file(&PlatformSecret::path_in(platform.state()))
        .context("reading the platform secret of the state")?;
    let token = secret.derive_token(TAIL_TOKEN_PURPOSE);
    let runtimes = platform.runtimes()?;
    let mut statuses = Vec::new();
    for (_, control) in &runtimes {
        statuses.push(StatusClient::connect(*control, &token).await?);
    }

    // Every runtime serves the current version before the load starts.
    let current = platform
        .directory
        .script(SCRIPT)?
        .context("the script is not deployed")?;
    wait_served(&mut statuses, &current.version_id.to_string()).await?;
    let targets: Vec<Target> = runtimes
        .iter()
        .map(|(addr, _)| Target {
            addr: *addr,
            host: SCRIPT_HOST.to_owned(),
        })
        .collect();
    let load = Load::start(&targets, connections);
    wait_requests(&load, REQUESTS_BETWEEN).await;

    let mut same_module = Vec::new();
    let mut new_module = Vec::new();
    for (new_code, i) in (0..count)
        .map(|i| (false, i))
        .chain((0..count).map(|i| (true, i)))
    {
        let module = if new_code {
            with_marker(&platform.module, i)
        } else {
            platform.module.clone()
        };
        // Deploys land at every phase of the runtimes' directory polls, as a user's do (right
        // after a catch-up every deploy would wait a whole poll interval).
        let phase = u32::try_from(i * 61 % 100).unwrap_or(0);
        tokio::time::sleep(POLL_INTERVAL * phase / 100).await;
        let script = platform.deploy(module).await?;
        let committed = Instant::now();
        wait_served(&mut statuses, &script.version_id.to_string()).await?;
        let latency = committed.elapsed();
        if new_code {
            new_module.push(latency);
        } else {
            same_module.push(latency);
        }
        wait_requests(&load, REQUESTS_BETWEEN).await;
    }
    let (ok, failed) = load.stop().await;
    Ok(Redeploys {
        runtimes: runtimes.len(),
        same_module,
        new_module,
        ok,
        failed,
    })
}

/// `module` with a custom section holding `n`: the same code under a new content hash.
fn with_marker(module: &[u8], n: usize) -> Vec<u8> {
    let mut bytes = module.to_vec();
    wasm_encoder::CustomSection {
        name: "wvpc-bench-redeploy".into(),
        data: n.to_le_bytes().to_vec().into(),
    }
    .append_to_component(&mut bytes);
    bytes
}

/// Polls every runtime until each serves `version` of the script.
async fn wait_served(statuses: &mut [StatusClient], version: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut pending: Vec<usize> = (0..statuses.len()).collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for i in pending {
            if statuses[i].version().await?.as_deref() != Some(version) {
                still.push(i);
            }
        }
        pending = still;
        if !pending.is_empty() {
            anyhow::ensure!(
                started.elapsed() < GIVE_UP,
                "version {version} did not reach every runtime within {GIVE_UP:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(())
}

/// Waits until `n` more requests of `load` have succeeded.
async fn wait_requests(load: &Load, n: u64) {
    let until = load.ok.load(std::sync::atomic::Ordering::Relaxed) + n;
    while load.ok.load(std::sync::atomic::Ordering::Relaxed) < until {
        tokio::time::sleep(POLL).await;
    }
}

/// A kept-alive connection to one runtime's control listener.
struct StatusClient {
    addr: SocketAddr,
    authorization: String,
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl StatusClient {
    async fn connect(addr: SocketAddr, token: &str) -> anyhow::Result<StatusClient> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the runtime control listener {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(StatusClient {
            addr,
            authorization: format!("Bearer {token}"),
            sender,
        })
    }

    /// The version of the script the runtime serves (`None`: not served).
    async fn version(&mut self) -> anyhow::Result<Option<String>> {
        self.sender.ready().await?;
        let request = Request::get("/status")
            .header("host", self.addr.to_string())
            .header("authorization", self.authorization.as_str())
            .body(Empty::new())?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            status == 200,
            "GET /status at {} answered {status}: {}",
            self.addr,
            String::from_utf8_lossy(&body)
        );
        let status: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("GET /status at {} is not JSON", self.addr))?;
        Ok(status["scripts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["script"] == SCRIPT)
            .and_then(|s| s["version"].as_str())
            .map(str::to_owned))
    }
}
