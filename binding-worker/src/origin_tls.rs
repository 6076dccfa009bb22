//! TLS to `https` origins, run end to end from the binding-worker over the CONNECT stream
//! (iris and the tunnel only see ciphertext): SNI is the URL's host, and the certificate must
//! chain to a trusted root and name that host (`verify_full`).

use std::io;
use std::sync::Arc;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use wvpc_errors::{ErrorCode, ProxyError};

/// A TLS client for origins.
#[derive(Clone)]
pub(crate) struct OriginTls {
    connector: TlsConnector,
}

impl std::fmt::Debug for OriginTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginTls").finish_non_exhaustive()
    }
}

impl OriginTls {
    /// Trusts `roots`, or the system's trust store when `None`.
    pub(crate) fn new(roots: Option<Arc<RootCertStore>>) -> io::Result<Self> {
        let roots = match roots {
            Some(roots) => roots,
            None => Arc::new(system_roots()),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // We speak HTTP/1.1 to origins.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Runs the handshake over `stream` for the URL host `host` (brackets allowed for IPv6).
    pub(crate) async fn handshake(
        &self,
        host: &str,
        stream: Upgraded,
    ) -> Result<TlsStream<TokioIo<Upgraded>>, ProxyError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(bare.to_owned()).map_err(|_| {
            ProxyError::new(ErrorCode::HttpRequestError)
                .with_details(format!("URL host {host:?} cannot be a TLS server name"))
        })?;
        self.connector
            .connect(server_name, TokioIo::new(stream))
            .await
            .map_err(|e| tls_error(&e))
    }
}

fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        tracing::warn!(error = %err, "reading the system trust store");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "no trusted roots found in the system store: https origins will fail verification"
        );
    }
    tracing::debug!(
        added,
        ignored,
        "loaded system trust roots for https origins"
    );
    roots
}

/// Classifies a failed handshake.
fn tls_error(err: &io::Error) -> ProxyError {
    let code = match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => ErrorCode::TlsCertificateError,
        Some(rustls::Error::AlertReceived(_)) => ErrorCode::TlsAlertReceived,
        Some(_) => ErrorCode::TlsProtocolError,
        None if err.kind() == io::ErrorKind::UnexpectedEof => ErrorCode::TlsProtocolError,
        None => ErrorCode::ConnectionTerminated,
    };
    ProxyError::new(code).with_details(format!("TLS handshake with the origin failed: {err}"))
}
