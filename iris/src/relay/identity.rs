//! The relay's TLS identities: one cluster relay CA shared by every node, and each node's
//! leaf certificate, issued at start for its node name, that it presents both as a relay
//! server and as a relay client (mutual TLS).
//!
//! The CA lives in one directory (`<state>/relay`: `ca.pem`, `ca-key.pem` with mode 0600),
//! generated on first use; nodes of one cluster share it by copying it with `wvpc relay ca
//! export` / `import`. Unlike the edge CA, the key is kept: every start issues a fresh leaf.
//! The node name is the leaf's only subject alternative name (a DNS name), so it must be a
//! valid DNS name (`iris-a`, `iris-1.eu`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use wvpc_tls::ca::{
    CaError, CertificateAuthority, ExtendedKeyUsagePurpose, PemFile, read_pem_files,
    write_pem_files,
};

/// The relay CA certificate (PEM) inside the relay directory.
pub const CA_FILE: &str = "ca.pem";
/// The relay CA private key (PKCS#8 PEM, mode 0600) inside the relay directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// ALPN of relay connections: HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// Why the relay CA or a node's identity could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum RelayIdentityError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A CA certificate or key is unusable.
    #[error("the relay CA {what} is unusable: {detail}")]
    BadCa {
        /// `certificate` or `key`.
        what: &'static str,
        /// What was wrong and what to do.
        detail: String,
    },
    /// The node name cannot be put in a certificate.
    #[error(
        "node name {0:?} cannot name a relay certificate: it must be a DNS name (letters, digits, '-' and '.'), e.g. iris-a"
    )]
    BadNodeName(String),
    /// Certificate generation failed.
    #[error("generating a relay certificate failed: {0}")]
    Generate(String),
    /// rustls refused the material.
    #[error("building the relay TLS configuration failed: {0}")]
    Tls(String),
}

impl From<CaError> for RelayIdentityError {
    fn from(err: CaError) -> Self {
        match err {
            CaError::Io { path, source } => Self::Io { path, source },
            CaError::BadCa { what, detail } => Self::BadCa { what, detail },
            CaError::BadName(name) => Self::BadNodeName(name),
            err @ CaError::Generate(_) => Self::Generate(err.to_string()),
        }
    }
}

/// The cluster's relay CA: signs every node's relay certificate.
#[derive(Debug)]
pub struct RelayCa(CertificateAuthority);

impl RelayCa {
    /// A fresh CA in memory only (tests).
    pub fn generate() -> Result<Self, RelayIdentityError> {
        Ok(Self(CertificateAuthority::generate(
            "workers-vpc relay CA",
        )?))
    }

    /// Loads `ca.pem` and `ca-key.pem` from `dir`, or generates and writes them when either is
    /// missing.
    pub fn load_or_create(dir: &Path) -> Result<Self, RelayIdentityError> {
        if let Some([cert, key]) = read_pem_files(dir, [CA_FILE, CA_KEY_FILE])? {
            return Self::from_pem(&cert, &key);
        }
        let ca = Self::generate()?;
        ca.write(dir)?;
        tracing::info!(ca = %dir.join(CA_FILE).display(), "generated a new relay CA; copy it to every node of the cluster (wvpc relay ca export / import)");
        Ok(ca)
    }

    /// Replaces the CA in `dir` with `cert_pem` and `key_pem` (PKCS#8), after checking that
    /// they are a CA and its key (a leaf they issue verifies). Nothing is written otherwise.
    pub fn import(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<Self, RelayIdentityError> {
        const PROBE: &str = "relay-ca-check";
        let ca = Self::from_pem(cert_pem, key_pem)?;
        let probe = ca.issue(PROBE)?;
        ca.0.verify_issued(&probe.chain, &[PROBE])?;
        ca.write(dir)?;
        Ok(ca)
    }

    /// Parses a CA certificate and key (checks that they can issue).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, RelayIdentityError> {
        Ok(Self(CertificateAuthority::from_pem(cert_pem, key_pem)?))
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        self.0.cert_pem()
    }

    /// The CA private key (PKCS#8 PEM): a secret, every holder can join the cluster's relay.
    pub fn key_pem(&self) -> &str {
        self.0.key_pem()
    }

    /// A fresh leaf for `node` (its only name), valid for serving and for dialling relays.
    pub fn issue(&self, node: &str) -> Result<RelayIdentity, RelayIdentityError> {
        let leaf = self.0.issue(
            &[node],
            node,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())
            .map_err(|e| RelayIdentityError::Tls(e.to_string()))?;
        Ok(RelayIdentity {
            node: node.to_owned(),
            chain: vec![leaf.cert_der, self.0.cert_der().clone()],
            key,
            ca: self.0.cert_der().clone(),
        })
    }

    fn write(&self, dir: &Path) -> Result<(), RelayIdentityError> {
        write_pem_files(
            dir,
            &[
                PemFile {
                    name: CA_FILE,
                    contents: self.cert_pem(),
                    secret: false,
                },
                PemFile {
                    name: CA_KEY_FILE,
                    contents: self.key_pem(),
                    secret: true,
                },
            ],
        )?;
        Ok(())
    }
}

/// A node's relay certificate (for its node name), key and the CA it trusts peers by.
pub struct RelayIdentity {
    node: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: CertificateDer<'static>,
}

impl std::fmt::Debug for RelayIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayIdentity")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl RelayIdentity {
    /// The node name the certificate is issued for.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// TLS of the relay listener: this node's certificate, and a client certificate from the
    /// relay CA required of every peer.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, RelayIdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider.clone(),
        )
        .build()
        .map_err(|e| RelayIdentityError::Tls(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RelayIdentityError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| RelayIdentityError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    /// TLS of relay dials: peers must present a certificate from the relay CA for the node
    /// name dialled; this node presents its own.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, RelayIdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RelayIdentityError::Tls(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| RelayIdentityError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    /// The same certificate, trusting peers of `ca` instead (a node of another cluster that
    /// knows this one's CA).
    #[cfg(test)]
    pub(crate) fn trusting(mut self, ca: &RelayCa) -> Self {
        self.ca = ca.0.cert_der().clone();
        self
    }

    fn roots(&self) -> Result<rustls::RootCertStore, RelayIdentityError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| RelayIdentityError::BadCa {
                what: "certificate",
                detail: format!("cannot be a trust anchor: {e}"),
            })?;
        Ok(roots)
    }
}

/// The DNS names of a peer's leaf certificate (already verified against the relay CA by
/// the TLS handshake): the node names it may relay as.
pub fn certificate_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_leaf_names_its_node_and_an_imported_key_must_match_its_certificate() {
        let ca = RelayCa::generate().unwrap();
        let identity = ca.issue("iris-a").unwrap();
        assert_eq!(certificate_names(&identity.chain[0]), ["iris-a"]);
        assert!(matches!(
            ca.issue("not a dns name"),
            Err(RelayIdentityError::BadNodeName(_))
        ));

        let dir = std::env::temp_dir().join(format!("wvpc-relay-ca-{}", uuid::Uuid::new_v4()));
        let other = RelayCa::generate().unwrap();
        let err = RelayCa::import(&dir, ca.cert_pem(), other.key_pem()).unwrap_err();
        assert!(err.to_string().contains("is it the CA's key"), "{err}");
        assert!(!dir.join(CA_FILE).exists(), "nothing written");
        RelayCa::import(&dir, ca.cert_pem(), ca.key_pem()).unwrap();
        let loaded = RelayCa::load_or_create(&dir).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let _ = fs::remove_dir_all(&dir);
    }
}
