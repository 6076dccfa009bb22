//! Server-certificate verification of TLS clients: one rustls [`ClientConfig`] builder for
//! the three ways workers-vpc checks a server ([`ServerVerification`]), and private CA roots
//! read from PEM ([`add_pem_roots`]).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// How a server's certificate is checked.
#[derive(Debug, Clone)]
pub enum ServerVerification {
    /// The chain must reach one of the roots and the certificate must name the server.
    Full(Arc<RootCertStore>),
    /// The chain must reach one of the roots; any name passes.
    ChainOnly(Arc<RootCertStore>),
    /// Nothing about the certificate; the handshake signature still is checked, so the peer
    /// holds the key of the certificate it sent (encrypted, not authenticated).
    SignatureOnly,
}

/// Why a client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The crypto provider supports no safe protocol version.
    #[error("{0}")]
    Protocol(#[from] rustls::Error),
    /// The roots cannot make a verifier (e.g. none).
    #[error("{0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// A client configuration (safe default protocol versions, no client certificate) that
/// checks servers as `verification` says, with `provider`'s algorithms.
pub fn client_config(
    verification: ServerVerification,
    provider: &Arc<CryptoProvider>,
) -> Result<ClientConfig, ConfigError> {
    let builder = ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()?;
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        ServerVerification::Full(roots) => webpki(roots, provider)?,
        ServerVerification::ChainOnly(roots) => Arc::new(Lenient {
            chain: Some(webpki(roots, provider)?),
            provider: Arc::clone(provider),
        }),
        ServerVerification::SignatureOnly => Arc::new(Lenient {
            chain: None,
            provider: Arc::clone(provider),
        }),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn webpki(
    roots: Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, rustls::client::VerifierBuilderError> {
    WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(provider)).build()
}

/// Why PEM could not become trust anchors.
#[derive(Debug, thiserror::Error)]
pub enum PemRootsError {
    /// A block is not PEM (or the file cannot be read on the way).
    #[error("is not valid PEM: {0}")]
    Pem(rustls::pki_types::pem::Error),
    /// A certificate cannot be a trust anchor.
    #[error("holds an unusable certificate: {0}")]
    Unusable(rustls::Error),
    /// No certificate at all.
    #[error("holds no certificate")]
    Empty,
}

/// Adds every certificate of `certs` (a PEM iterator: `CertificateDer::pem_slice_iter` or
/// `pem_file_iter`) to `roots`; an empty PEM is an error, as a CA file must hold a CA.
pub fn add_pem_roots<'a>(
    roots: &mut RootCertStore,
    certs: impl IntoIterator<Item = Result<CertificateDer<'a>, rustls::pki_types::pem::Error>>,
) -> Result<usize, PemRootsError> {
    let mut added = 0;
    for cert in certs {
        roots
            .add(cert.map_err(PemRootsError::Pem)?)
            .map_err(PemRootsError::Unusable)?;
        added += 1;
    }
    if added == 0 {
        return Err(PemRootsError::Empty);
    }
    Ok(added)
}

/// Less than the full WebPKI check: with `chain`, that check except that a certificate for
/// another name passes (webpki checks the chain before the name, so a name error means the
/// chain was fine); without, any certificate passes. Handshake signatures are always checked
/// with the provider's algorithms (what the WebPKI verifier does too).
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
