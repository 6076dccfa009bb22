//! An OTLP/HTTP receiver that takes every export and keeps only its size: where the
//! `platform-traced` row's processes send their spans, so that exporting is measured
//! against a collector that answers at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// A running receiver; it stops when dropped.
pub struct OtlpSink {
    /// Where it listens (`--otlp-endpoint http://ADDR`).
    pub addr: SocketAddr,
    exports: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpSink {
    /// Listens on 127.0.0.1, any port.
    pub async fn start() -> anyhow::Result<OtlpSink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (exports, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let counted = (exports.clone(), bytes.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (exports, bytes) = counted.clone();
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (exports, bytes) = (exports.clone(), bytes.clone());
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        exports.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                        // An empty ExportTraceServiceResponse: everything accepted.
                        let mut answer = hyper::Response::new(Full::new(Bytes::new()));
                        answer.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/x-protobuf"),
                        );
                        Ok::<_, hyper::Error>(answer)
                    }
                });
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(OtlpSink {
            addr,
            exports,
            bytes,
            task,
        })
    }

    /// Exports received so far, and their bytes.
    pub fn received(&self) -> (u64, u64) {
        (
            self.exports.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
