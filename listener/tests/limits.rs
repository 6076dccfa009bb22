//! The limits of `wvpc_listener::serve` on real sockets, seen from raw TCP clients: idle and
//! slow connections are closed, the connection cap answers 503 and service resumes, and
//! request heads hyper refuses get an explained answer with a request id.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use wvpc_listener::{HttpServer, REQUEST_ID_HEADER, ServerLimits};

/// Generous bound on any wait, so that a regression fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

/// A server answering `ok` with `limits`; its address.
async fn server(limits: ServerLimits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(wvpc_listener::serve(
        listener,
        HttpServer::new("test", limits),
        |_request| async { http::Response::new(Full::new(Bytes::from_static(b"ok"))) },
    ));
    addr
}

fn limits() -> ServerLimits {
    ServerLimits {
        max_connections: 1_000,
        ..ServerLimits::default()
    }
}

/// One response read from `stream`: its head and body (by content-length).
struct Answer {
    head: String,
    body: String,
}

impl Answer {
    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

async fn read_answer(stream: &mut TcpStream) -> Answer {
    tokio::time::timeout(PATIENCE, async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let n = stream.read(&mut chunk).await.expect("read the answer");
            assert!(n > 0, "the server closed before answering: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + length {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed mid-body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8(buf[head_end..head_end + length].to_vec()).unwrap();
        Answer { head, body }
    })
    .await
    .expect("an answer in time")
}

/// Reads until the server closes the connection; panics if it sends anything else.
async fn assert_closed_by_server(stream: &mut TcpStream) {
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
        .await
        .expect("the server should close the connection");
    match read {
        Ok(0) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!(
            "expected the server to close, got {:?}",
            String::from_utf8_lossy(&chunk[..n])
        ),
        Err(err) => panic!("expected the server to close, got {err}"),
    }
}

async fn get(stream: &mut TcpStream, extra_headers: &str) -> Answer {
    let request = format!("GET / HTTP/1.1\r\nhost: test\r\n{extra_headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_answer(stream).await
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let addr = server(ServerLimits {
        idle_timeout: Duration::from_millis(200),
        ..limits()
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let answer = get(&mut stream, "").await;
    assert_eq!((answer.status(), answer.body.as_str()), (200, "ok"));
    // Kept alive: a second request on the same connection is served.
    let answer = get(&mut stream, "").await;
    assert_eq!(answer.status(), 200);
    assert_closed_by_server(&mut stream).await;
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed() {
    let addr = server(ServerLimits {
        header_read_timeout: Duration::from_millis(200),
        ..limits()
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    assert_closed_by_server(&mut stream).await;
}

#[tokio::test]
async fn a_slowloris_head_that_never_ends_is_closed() {
    // The idle timeout is long: only the header-read timeout can close this connection.
    let addr = server(ServerLimits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(3600),
        ..limits()
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A first request, so that the slow head comes on a kept-alive connection.
    assert_eq!(get(&mut stream, "").await.status(), 200);
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nx-slow: 1\r\n")
        .await
        .unwrap();
    // Trickle more header lines until the server gives up on the head.
    let mut chunk = [0u8; 64];
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut line = 0u32;
        loop {
            tokio::select! {
                read = stream.read(&mut chunk) => return read,
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    line += 1;
                    let more = format!("x-more-{line}: 1\r\n");
                    stream.write_all(more.as_bytes()).await?;
                }
            }
        }
    })
    .await
    .expect("the server should close a head that never ends");
    match closed {
        Ok(0) => {}
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) => {}
        other => panic!("expected the server to close, got {other:?}"),
    }
}

#[tokio::test]
async fn at_the_connection_cap_new_connections_get_503_and_service_resumes() {
    let addr = server(ServerLimits {
        max_connections: 50,
        header_read_timeout: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(3600),
        ..ServerLimits::default()
    })
    .await;
    let mut admitted = Vec::new();
    // The first 50 fill the cap (one request each proves it is admitted).
    for _ in 0..50 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert_eq!(get(&mut stream, "").await.status(), 200);
        admitted.push(stream);
    }
    // The next 10 are refused with an explanation, and closed.
    for _ in 0..10 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let answer = get(&mut stream, "").await;
        assert_eq!(answer.status(), 503, "{}{}", answer.head, answer.body);
        assert!(
            answer.body.contains("50 connections open, its limit"),
            "{}",
            answer.body
        );
        let id = answer.header(REQUEST_ID_HEADER).expect("a request id");
        assert!(answer.body.contains(id), "{}", answer.body);
        assert_eq!(answer.header("retry-after"), Some("1"));
        assert_closed_by_server(&mut stream).await;
    }
    // Connections already open keep working.
    for stream in admitted.iter_mut().take(5) {
        assert_eq!(get(stream, "").await.status(), 200);
    }
    // Clients leave: new connections are served again.
    admitted.truncate(40);
    let served = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            if get(&mut stream, "").await.status() == 200 {
                return;
            }
        }
    })
    .await;
    assert!(served.is_ok(), "no connection served after clients left");
}

#[tokio::test]
async fn eleven_hundred_idle_connections_do_not_stop_service() {
    let addr = server(ServerLimits {
        max_connections: 1_000,
        header_read_timeout: Duration::from_millis(500),
        ..ServerLimits::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..1_100 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // New connections get 503 while the idle ones hold the cap (or are closed unanswered
    // while many refusals are under way), and once the server has closed the idle ones,
    // requests are served again.
    let served = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let request = b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n";
            if stream.write_all(request).await.is_err() {
                continue;
            }
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            let answer = String::from_utf8_lossy(&answer).into_owned();
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
                "unexpected answer: {answer}"
            );
        }
    })
    .await;
    assert!(served.is_ok(), "service did not resume");
    for stream in &mut idle[..10] {
        assert_closed_by_server(stream).await;
    }
}

fn headers(count: usize) -> String {
    (0..count).map(|i| format!("x-h{i}: {i}\r\n")).collect()
}

#[tokio::test]
async fn a_hundred_and_fifty_headers_are_served() {
    let addr = server(limits()).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let answer = get(&mut stream, &headers(150)).await;
    assert_eq!((answer.status(), answer.body.as_str()), (200, "ok"));
}

#[tokio::test]
async fn too_many_headers_get_an_explained_431_with_a_request_id() {
    let addr = server(ServerLimits {
        max_request_headers: 100,
        ..limits()
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let answer = get(&mut stream, &headers(150)).await;
    assert_eq!(answer.status(), 431, "{}", answer.head);
    assert!(
        answer
            .body
            .contains("more than 100 header fields, the most this server reads; send fewer"),
        "{}",
        answer.body
    );
    let id = answer.header(REQUEST_ID_HEADER).expect("a request id");
    assert_eq!(id.len(), 32);
    assert!(
        answer.body.ends_with(&format!("(request id {id})\n")),
        "{}",
        answer.body
    );
    assert_eq!(answer.header("connection"), Some("close"));
    assert_closed_by_server(&mut stream).await;
}

#[tokio::test]
async fn a_head_over_the_size_limit_gets_an_explained_431() {
    let addr = server(ServerLimits {
        max_head_bytes: 16 << 10,
        ..limits()
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let big = format!("cookie: {}\r\n", "c".repeat(32 << 10));
    let answer = get(&mut stream, &big).await;
    assert_eq!(answer.status(), 431, "{}", answer.head);
    assert!(
        answer.body.contains("larger than 16384 bytes"),
        "{}",
        answer.body
    );
    assert!(answer.header(REQUEST_ID_HEADER).is_some());
}

#[tokio::test]
async fn a_malformed_head_gets_an_explained_400() {
    let addr = server(limits()).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut stream).await;
    assert_eq!(answer.status(), 400, "{}", answer.head);
    assert!(
        answer.body.contains("not valid HTTP/1.1"),
        "{}",
        answer.body
    );
    assert!(answer.header(REQUEST_ID_HEADER).is_some());
}

#[tokio::test]
async fn the_handlers_own_error_answers_are_left_alone() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(wvpc_listener::serve(
        listener,
        HttpServer::new("test", limits()),
        |request: http::Request<_>| async move {
            let status: u16 = request.uri().path()[1..].parse().unwrap();
            let mut response =
                http::Response::new(Full::new(Bytes::from(format!("handler said {status}"))));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            response
        },
    ));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    for (status, version) in [
        (431, "1.1"),
        (414, "1.1"),
        (400, "1.0"),
        (200, "1.1"),
        (431, "1.1"),
    ] {
        let request =
            format!("GET /{status} HTTP/{version}\r\nhost: test\r\nconnection: keep-alive\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream).await;
        assert_eq!(answer.status(), status);
        assert_eq!(answer.body, format!("handler said {status}"));
    }
    // hyper's own refusal on the same connection is still explained.
    stream
        .write_all(format!("GET / HTTP/1.1\r\nhost: test\r\n{}\r\n", headers(1_001)).as_bytes())
        .await
        .unwrap();
    let answer = read_answer(&mut stream).await;
    assert_eq!(answer.status(), 431);
    assert!(
        answer.body.contains("more than 1000 header fields"),
        "{}",
        answer.body
    );
}
