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
    /// The value of header `name`, when it is there and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

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
    send_to_host(addr, &addr.to_string(), method, path, body).await
}

/// `GET http://{host}{path}`, sent to `addr`: how a runtime that routes by `Host` is asked.
pub async fn get_host(addr: SocketAddr, host: &str, path: &str) -> Reply {
    send_to_host(addr, host, "GET", path, Bytes::new()).await
}

/// [`get_host`] with extra request headers.
pub async fn get_host_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    exchange(addr, host, "GET", path, headers, Bytes::new()).await
}

/// [`send`] with extra request headers.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    exchange(addr, &addr.to_string(), method, path, headers, body).await
}

/// [`send`] with `host` as the `Host` header.
pub async fn send_to_host(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    body: Bytes,
) -> Reply {
    exchange(addr, host, method, path, &[], body).await
}

async fn exchange(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connecting to the script's server");
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(body)).unwrap();
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

/// `GET path` through iris directly, as the binding-worker does: `CONNECT` naming
/// `service_id` (scheme http), then HTTP/1.1 over the tunnel. A refused CONNECT comes back
/// as its status with the `Proxy-Status` header.
pub async fn get_via_iris(iris: SocketAddr, service_id: uuid::Uuid, path: &str) -> Reply {
    let resp = send_connect(iris, service_id, &[]).await;
    if resp.status() != http::StatusCode::OK {
        return Reply {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: Bytes::new(),
        };
    }
    let upgraded = hyper::upgrade::on(resp).await.expect("CONNECT upgrade");
    let (mut origin, conn) = hyper::client::conn::http1::handshake(upgraded)
        .await
        .expect("HTTP/1.1 handshake through the tunnel");
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(path)
        .header(hyper::header::HOST, "api.internal")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = origin
        .send_request(req)
        .await
        .expect("GET through the tunnel");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// `GET http://addr{path}` on a plain HTTP server (e.g. a `/metrics` endpoint): the body.
pub async fn scrape(addr: SocketAddr, path: &str) -> String {
    get(addr, path).await.text()
}

/// `CONNECT {service_id}:80` for scheme http, with `headers` added.
fn connect_request(service_id: uuid::Uuid, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut connect = Request::builder()
        .method("CONNECT")
        .uri(format!("{service_id}:80"))
        .header("wvpc-service-id", service_id.to_string())
        .header("wvpc-scheme", "http");
    for (name, value) in headers {
        connect = connect.header(*name, *value);
    }
    connect.body(Full::new(Bytes::new())).unwrap()
}

/// Sends [`connect_request`] to an iris CONNECT listener over HTTP/1.1 (upgrades enabled).
async fn send_connect(
    iris: SocketAddr,
    service_id: uuid::Uuid,
    headers: &[(&str, &str)],
) -> hyper::Response<hyper::body::Incoming> {
    let stream = TcpStream::connect(iris).await.expect("connecting to iris");
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake with iris");
    tokio::spawn(conn.with_upgrades());
    sender
        .send_request(connect_request(service_id, headers))
        .await
        .expect("sending CONNECT")
}

/// The answer to `CONNECT {service_id}:80` at an iris CONNECT listener with `headers` added
/// (status and headers; the tunnel, when opened, is closed at once).
pub async fn connect_via_iris(
    iris: SocketAddr,
    service_id: uuid::Uuid,
    headers: &[(&str, &str)],
) -> Reply {
    let resp = send_connect(iris, service_id, headers).await;
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: Bytes::new(),
    }
}

/// The answer to a relayed `CONNECT {service_id}:80` sent to an iris node's relay listener
/// as the peer `tls` names (HTTP/2 over mutual TLS, the server named `node`), with `headers`.
pub async fn connect_via_relay(
    relay: SocketAddr,
    node: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    service_id: uuid::Uuid,
    headers: &[(&str, &str)],
) -> Reply {
    let stream = TcpStream::connect(relay)
        .await
        .expect("connecting to the relay listener");
    stream.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from(node.to_owned()).expect("a DNS name");
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, stream)
        .await
        .expect("mutual TLS with the relay listener");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake with the relay listener");
    tokio::spawn(conn);
    let resp = sender
        .send_request(connect_request(service_id, headers))
        .await
        .expect("sending the relayed CONNECT");
    let (parts, body) = resp.into_parts();
    let body = if parts.status == http::StatusCode::OK {
        Bytes::new()
    } else {
        body.collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default()
    };
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}
