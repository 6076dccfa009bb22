//! A minimal HTTP/1.1 client for tests: one request per call, the whole response collected.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A collected response.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET http://addr{path}`.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, Bytes::new()).await
}

/// Sends one request with `body` and collects the response. Panics on transport errors: a
/// test that reaches this wanted an HTTP answer.
pub async fn send(addr: SocketAddr, method: &str, path: &str, body: Bytes) -> Reply {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connecting to the script's server");
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Full::new(body))
        .unwrap();
    let resp = sender.send_request(req).await.expect("sending the request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("reading the response body")
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}
