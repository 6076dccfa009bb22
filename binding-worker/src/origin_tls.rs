//! TLS to `https` origins, run end to end from the binding-worker over the CONNECT stream
//! (iris and the tunnel only see ciphertext). SNI is the URL's host. How the certificate is
//! checked is the service's `tls_settings`, which iris hands over in its CONNECT answer
//! ([`TlsPolicy`]):
//!
//! - `verify_full` (default): the chain must reach a trusted root and name the URL's host;
//! - `verify_ca`: the chain must reach a trusted root; the name is not checked;
//! - `disabled`: nothing about the certificate is checked (the handshake signature still is,
//!   so the peer holds the key of the certificate it sent).
//!
//! Trusted roots are the system's (or [`crate::BindingWorkerConfig::tls_roots`]) plus the
//! service's private CA (`ca_certificate`, PEM). One rustls config is built per distinct
//! policy and reused.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_tls::verify::{ServerVerification, add_pem_roots, client_config};

/// How an origin's certificate is verified (the service's `cert_verification_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) enum Verification {
    /// Chain and host name.
    #[default]
    Full,
    /// Chain only.
    Ca,
    /// Nothing.
    Disabled,
}

impl Verification {
    /// Reads the API spelling (`verify_full`, `verify_ca`, `disabled`).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "verify_full" => Some(Self::Full),
            "verify_ca" => Some(Self::Ca),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }
}

/// A service's TLS settings, as iris answered them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct TlsPolicy {
    pub(crate) verification: Verification,
    /// PEM of a private CA trusted besides the base roots.
    pub(crate) ca_certificate: Option<String>,
}

/// Distinct policies kept; past this the cache starts over (services rarely have their own CA).
const MAX_CACHED_CONFIGS: usize = 256;

/// A TLS client for origins.
pub(crate) struct OriginTls {
    base_roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    connectors: Mutex<HashMap<TlsPolicy, TlsConnector>>,
}

impl std::fmt::Debug for OriginTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginTls")
            .field("base_roots", &self.base_roots.len())
            .finish_non_exhaustive()
    }
}

impl OriginTls {
    /// Trusts `roots`, or the system's trust store when `None`, plus each service's own CA.
    pub(crate) fn new(roots: Option<Arc<RootCertStore>>) -> io::Result<Self> {
        let base_roots = match roots {
            Some(roots) => roots,
            None => Arc::new(system_roots()),
        };
        let tls = Self {
            base_roots,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            connectors: Mutex::new(HashMap::new()),
        };
        // Fail at start, not on the first https fetch, if the provider cannot be used.
        tls.connector(&TlsPolicy::default())
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(tls)
    }

    /// Runs the handshake over `stream` for the URL host `host` (brackets allowed for IPv6).
    pub(crate) async fn handshake(
        &self,
        host: &str,
        policy: &TlsPolicy,
        stream: Upgraded,
    ) -> Result<TlsStream<TokioIo<Upgraded>>, ProxyError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(bare.to_owned()).map_err(|_| {
            ProxyError::new(ErrorCode::HttpRequestError)
                .with_details(format!("URL host {host:?} cannot be a TLS server name"))
        })?;
        let connector = self.connector(policy)?;
        connector
            .connect(server_name, TokioIo::new(stream))
            .await
            .map_err(|e| tls_error(&e))
    }

    /// The connector for `policy`, built once.
    fn connector(&self, policy: &TlsPolicy) -> Result<TlsConnector, ProxyError> {
        let mut cache = self
            .connectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(connector) = cache.get(policy) {
            return Ok(connector.clone());
        }
        let connector = self.build(policy)?;
        if cache.len() >= MAX_CACHED_CONFIGS {
            cache.clear();
        }
        cache.insert(policy.clone(), connector.clone());
        Ok(connector)
    }

    fn build(&self, policy: &TlsPolicy) -> Result<TlsConnector, ProxyError> {
        let roots = match &policy.ca_certificate {
            None => Arc::clone(&self.base_roots),
            Some(pem) => Arc::new(with_private_ca(&self.base_roots, pem)?),
        };
        let verification = match policy.verification {
            Verification::Full => ServerVerification::Full(roots),
            Verification::Ca => ServerVerification::ChainOnly(roots),
            Verification::Disabled => ServerVerification::SignatureOnly,
        };
        let mut config = client_config(verification, &self.provider).map_err(|e| {
            ProxyError::new(ErrorCode::ProxyInternalError)
                .with_details(format!("cannot set up TLS for origins: {e}"))
        })?;
        // We speak HTTP/1.1 to origins.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// `base` plus the certificates of `pem`. The directory validated the PEM when the service
/// was saved, so a failure here means the stored value was changed behind its back.
fn with_private_ca(base: &RootCertStore, pem: &str) -> Result<RootCertStore, ProxyError> {
    let mut roots = base.clone();
    add_pem_roots(&mut roots, CertificateDer::pem_slice_iter(pem.as_bytes())).map_err(|why| {
        ProxyError::new(ErrorCode::ProxyConfigurationError)
            .with_details(format!("the service's tls_settings.ca_certificate {why}"))
    })?;
    Ok(roots)
}

/// The system trust store (`SSL_CERT_FILE`/`SSL_CERT_DIR`, else the distribution's bundle,
/// e.g. Debian's `ca-certificates` in `/etc/ssl/certs`).
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        tracing::warn!(error = %err, "reading the system trust store");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "no trusted roots found in the system store (install ca-certificates or set \
             SSL_CERT_FILE): https origins verify only against a service's ca_certificate"
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
