//! The HTTP/1.1 client that asks the script, and [`Response`], what the script answered.
//! Idle connections are kept and reused; a connection still busy with an unread body is not.

use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::TestingError;

pub(crate) struct Client {
    addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Client {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            idle: Mutex::default(),
        }
    }

    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response, TestingError> {
        let what = format!("{method} {path}");
        let http = |source: Box<dyn std::error::Error + Send + Sync>| TestingError::Http {
            what: what.clone(),
            source,
        };
        let mut request = hyper::Request::builder().method(method).uri(path);
        // The script's address is the `Host` unless the test gives its own.
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            request = request.header(hyper::header::HOST, self.addr.to_string());
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body)).map_err(|e| http(e.into()))?;
        let mut sender = match self.take_idle() {
            Some(sender) => sender,
            None => self.connect().await.map_err(&http)?,
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http(e.into()))?;
        // Ready again once this response's body is read; a later request that finds it busy
        // opens its own connection.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(sender);
        Ok(Response {
            what,
            inner: response,
        })
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|sender| !sender.is_closed());
        let ready = idle.iter().position(SendRequest::is_ready)?;
        Some(idle.swap_remove(ready))
    }

    async fn connect(
        &self,
    ) -> Result<SendRequest<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

/// What the script answered. The body streams: read it with [`Response::text`] or
/// [`Response::bytes`].
#[derive(Debug)]
pub struct Response {
    what: String,
    inner: hyper::Response<Incoming>,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.inner.status().as_u16()
    }

    /// The first value of header `name` (case-insensitive), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner.headers().get(name)?.to_str().ok()
    }

    /// Every header.
    pub fn headers(&self) -> &http::HeaderMap {
        self.inner.headers()
    }

    /// The whole body. Fails when the script's answer is cut short.
    pub async fn bytes(self) -> Result<Bytes, TestingError> {
        let what = format!("reading the body of the answer to {}", self.what);
        self.inner
            .into_body()
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|source| TestingError::Http {
                what,
                source: source.into(),
            })
    }

    /// The whole body as text (invalid UTF-8 replaced).
    pub async fn text(self) -> Result<String, TestingError> {
        let body = self.bytes().await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}
