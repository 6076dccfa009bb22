//! The edge's TLS identity: a private CA and a leaf certificate for the names cloudflared
//! expects (`quic.cftunnel.com`, `h2.cftunnel.com`, `probe.cftunnel.com`).
//!
//! Persisted as PEM in one directory so that a stock connector can trust the edge with
//! `cloudflared --cacert <dir>/ca.pem`. The CA is either generated here or given by the
//! operator ([`EdgeIdentity::issue_from_ca`]); either way its key is not kept: it signs the
//! leaf once, and a new leaf needs the CA key again.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use wvpc_tls::ca::{
    CaError, CertificateAuthority, ExtendedKeyUsagePurpose, PemFile, certificate_pem,
    read_pem_files, write_pem_files,
};

/// SNI cloudflared sends over QUIC.
pub const QUIC_SERVER_NAME: &str = "quic.cftunnel.com";
/// SNI cloudflared sends over HTTP/2.
pub const H2_SERVER_NAME: &str = "h2.cftunnel.com";
/// SNI of cloudflared's connectivity pre-checks.
pub const PROBE_SERVER_NAME: &str = "probe.cftunnel.com";

/// File names inside the identity directory.
pub const CA_FILE: &str = "ca.pem";
/// Leaf certificate chain (leaf, then CA).
pub const CERT_FILE: &str = "edge.pem";
/// Leaf private key (mode 0600).
pub const KEY_FILE: &str = "edge-key.pem";

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A file is not the PEM we expect.
    #[error("{path} is not valid PEM ({what}): {detail}; delete the directory to regenerate it")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
        /// Parser message.
        detail: String,
    },
    /// Certificate generation failed.
    #[error("generating the edge certificate failed: {0}")]
    Generate(String),
    /// The operator's CA certificate or key is unusable.
    #[error("the given CA {what} is unusable: {detail}")]
    OperatorCa {
        /// `certificate` or `key`.
        what: &'static str,
        /// What was wrong and what to do.
        detail: String,
    },
}

impl From<CaError> for IdentityError {
    fn from(err: CaError) -> Self {
        match err {
            CaError::Io { path, source } => Self::Io { path, source },
            CaError::BadCa { what, detail } => Self::OperatorCa { what, detail },
            err @ (CaError::BadName(_) | CaError::Generate(_)) => Self::Generate(err.to_string()),
        }
    }
}

/// The edge's certificate chain and key, plus the CA that connectors trust.
pub struct EdgeIdentity {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for EdgeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeIdentity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Clone for EdgeIdentity {
    fn clone(&self) -> Self {
        Self {
            ca_pem: self.ca_pem.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl EdgeIdentity {
    /// A fresh CA and leaf, in memory only (tests, ephemeral dev setups).
    pub fn generate() -> Result<Self, IdentityError> {
        let files = generate_pem()?;
        Self::from_pem(&files, Path::new("<generated>"))
    }

    /// Loads `ca.pem`, `edge.pem` and `edge-key.pem` from `dir`, or, when any is missing,
    /// generates a new identity and writes all three (the key with mode 0600).
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        if let Some([ca, chain, key]) = read_pem_files(dir, [CA_FILE, CERT_FILE, KEY_FILE])? {
            tracing::debug!(dir = %dir.display(), "loaded edge TLS identity");
            return Self::from_pem(&PemFiles { ca, chain, key }, dir);
        }
        let files = generate_pem()?;
        files.write(dir)?;
        tracing::info!(ca = %dir.join(CA_FILE).display(), "generated a new edge TLS identity");
        Self::from_pem(&files, dir)
    }

    /// Replaces the identity in `dir` with one issued by the operator's CA: `ca.pem` becomes
    /// `ca_cert_pem`, and a fresh leaf for the cloudflared names is signed with `ca_key_pem`
    /// (PKCS#8 PEM). The CA key is not stored. The leaf is checked against the CA before
    /// anything is written, so a key that does not belong to the certificate changes nothing.
    pub fn issue_from_ca(
        dir: &Path,
        ca_cert_pem: &str,
        ca_key_pem: &str,
    ) -> Result<Self, IdentityError> {
        let ca = CertificateAuthority::from_pem(ca_cert_pem, ca_key_pem)?;
        let files = issue_files(&ca, certificate_pem(ca.cert_der()))?;
        let identity = Self::from_pem(&files, dir)?;
        ca.verify_issued(&identity.chain, &LEAF_NAMES)?;
        files.write(dir)?;
        tracing::info!(dir = %dir.display(), "edge TLS identity issued by the operator's CA");
        Ok(identity)
    }

    fn from_pem(files: &PemFiles, dir: &Path) -> Result<Self, IdentityError> {
        let pem_err = |file: &str, what, detail: String| IdentityError::Pem {
            path: dir.join(file),
            what,
            detail,
        };
        let chain = CertificateDer::pem_slice_iter(files.chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(CERT_FILE, "certificate chain", e.to_string()))?;
        if chain.is_empty() {
            return Err(pem_err(
                CERT_FILE,
                "certificate chain",
                "no certificate found".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(files.key.as_bytes())
            .map_err(|e| pem_err(KEY_FILE, "private key", e.to_string()))?;
        let ca_count = CertificateDer::pem_slice_iter(files.ca.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(CA_FILE, "CA certificate", e.to_string()))?
            .len();
        if ca_count == 0 {
            return Err(pem_err(
                CA_FILE,
                "CA certificate",
                "no certificate found".into(),
            ));
        }
        Ok(Self {
            ca_pem: files.ca.clone(),
            chain,
            key,
        })
    }

    /// The CA certificate connectors must trust, as PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The leaf chain served to connectors.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf's private key.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

struct PemFiles {
    ca: String,
    chain: String,
    key: String,
}

impl PemFiles {
    /// Writes the three files (the key with mode 0600).
    fn write(&self, dir: &Path) -> Result<(), IdentityError> {
        let file = |name, contents, secret| PemFile {
            name,
            contents,
            secret,
        };
        write_pem_files(
            dir,
            &[
                file(CA_FILE, &self.ca, false),
                file(CERT_FILE, &self.chain, false),
                file(KEY_FILE, &self.key, true),
            ],
        )?;
        Ok(())
    }
}

/// The names of the edge's leaf: every SNI cloudflared sends.
const LEAF_NAMES: [&str; 3] = [QUIC_SERVER_NAME, H2_SERVER_NAME, PROBE_SERVER_NAME];

fn generate_pem() -> Result<PemFiles, IdentityError> {
    let ca = CertificateAuthority::generate("workers-vpc edge CA")?;
    issue_files(&ca, ca.cert_pem().to_owned())
}

/// A fresh leaf for the cloudflared names signed by `ca`, as the identity's files (`ca_pem`
/// is what connectors are told to trust).
fn issue_files(ca: &CertificateAuthority, ca_pem: String) -> Result<PemFiles, IdentityError> {
    let leaf = ca.issue(
        &LEAF_NAMES,
        QUIC_SERVER_NAME,
        &[ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    Ok(PemFiles {
        chain: format!("{}{ca_pem}", leaf.cert_pem),
        ca: ca_pem,
        key: leaf.key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    use std::fs;

    #[test]
    fn identity_is_created_once_then_reloaded() {
        let dir = std::env::temp_dir().join(format!("wvpc-identity-{}", uuid::Uuid::new_v4()));
        let first = EdgeIdentity::load_or_create(&dir).unwrap();
        let second = EdgeIdentity::load_or_create(&dir).unwrap();
        assert_eq!(first.ca_pem(), second.ca_pem());
        assert_eq!(first.cert_chain(), second.cert_chain());
        assert!(first.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::write(dir.join(KEY_FILE), "not pem").unwrap();
        let err = EdgeIdentity::load_or_create(&dir).unwrap_err();
        assert!(err.to_string().contains("edge-key.pem"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    fn operator_ca() -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "operator CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn an_operator_ca_issues_the_leaf_and_a_foreign_key_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("wvpc-identity-{}", uuid::Uuid::new_v4()));
        let (ca, key) = operator_ca();
        let issued = EdgeIdentity::issue_from_ca(&dir, &ca, &key).unwrap();
        let ca_der = CertificateDer::from_pem_slice(ca.as_bytes()).unwrap();
        assert_eq!(
            CertificateDer::from_pem_slice(issued.ca_pem().as_bytes()).unwrap(),
            ca_der
        );
        assert_eq!(issued.cert_chain().len(), 2);
        assert_eq!(issued.cert_chain()[1], ca_der);
        // The next start loads exactly what was issued.
        let loaded = EdgeIdentity::load_or_create(&dir).unwrap();
        assert_eq!(loaded.cert_chain(), issued.cert_chain());

        let (_, other_key) = operator_ca();
        let err = EdgeIdentity::issue_from_ca(&dir, &ca, &other_key).unwrap_err();
        assert!(
            err.to_string().contains("does not verify against the CA"),
            "{err}"
        );
        let err = EdgeIdentity::issue_from_ca(&dir, "junk", &key).unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
        let err = EdgeIdentity::issue_from_ca(&dir, &ca, "junk").unwrap_err();
        assert!(err.to_string().contains("PKCS#8"), "{err}");
        // Refused imports left the issued identity in place.
        let after = EdgeIdentity::load_or_create(&dir).unwrap();
        assert_eq!(after.cert_chain(), issued.cert_chain());
        fs::remove_dir_all(&dir).unwrap();
    }
}
