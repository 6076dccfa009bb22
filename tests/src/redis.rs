//! A real `redis-server` (Debian's `redis-server` package) on a loopback port, for tests of
//! scripts that speak RESP over `connect()`. Started with no persistence and no config file;
//! ready once it answers `PING`. Killed when dropped.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A running `redis-server`.
pub struct RedisServer {
    /// Where it listens.
    pub addr: SocketAddr,
    _child: Child,
}

impl RedisServer {
    /// Starts `redis-server` on `127.0.0.1` and a free port; `Err` (why) when the binary is
    /// missing (the caller prints that it skips) or it does not come up.
    pub async fn start() -> Result<RedisServer, String> {
        let program = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        // The port is chosen by the kernel and released for redis to take: a race with
        // another process is possible but would show as a failed start, not a wrong answer.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let child = Command::new(&program)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {program:?} (install Debian's redis-server): {e}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if ping(addr).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        match ready {
            Ok(()) => Ok(RedisServer {
                addr,
                _child: child,
            }),
            Err(_) => Err(format!(
                "{program} did not answer PING on {addr} within 30 s"
            )),
        }
    }
}

async fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).await.is_ok() && &reply == b"+PONG\r\n"
}
