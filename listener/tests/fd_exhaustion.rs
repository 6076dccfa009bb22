//! A listener whose process runs out of file descriptors keeps its accept loop: it waits for
//! descriptors to come back, then serves again. Its own test binary (one process, one
//! test): it lowers the process's open-file limit.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use wvpc_listener::{HttpServer, ServerLimits};

const PATIENCE: Duration = Duration::from_secs(30);

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

/// One `connection: close` request; the status line, or `None` if the exchange failed.
async fn status(addr: std::net::SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_pauses_accepting_and_service_resumes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(wvpc_listener::serve(
        listener,
        HttpServer::new(
            "test",
            ServerLimits {
                max_connections: 10_000,
                ..ServerLimits::default()
            },
        ),
        |_request| async { http::Response::new(Full::new(Bytes::from_static(b"ok"))) },
    ));
    assert_eq!(status(addr).await.as_deref(), Some("HTTP/1.1 200 OK"));

    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let low = open_fds() + 40;
    rlimit::setrlimit(rlimit::Resource::NOFILE, low, hard).unwrap();
    // Idle clients until the process has no descriptor left: the server's side of the last
    // ones cannot be accepted (EMFILE) and waits in the backlog.
    let mut clients = Vec::new();
    while let Ok(stream) = TcpStream::connect(addr).await {
        clients.push(stream);
        assert!(clients.len() < 100, "the lowered limit did not take effect");
    }
    assert!(!clients.is_empty());
    // Clients leave; the listener is still accepting and serves again.
    clients.clear();
    let served = tokio::time::timeout(PATIENCE, async {
        loop {
            if status(addr).await.as_deref() == Some("HTTP/1.1 200 OK") {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard).unwrap();
    assert!(served.is_ok(), "the listener did not serve again");
}
