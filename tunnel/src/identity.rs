//! The edge's TLS identity: a private CA and a leaf certificate for the names cloudflared
//! expects (`quic.cftunnel.com`, `h2.cftunnel.com`, `probe.cftunnel.com`).
//!
//! Persisted as PEM in one directory so that a stock connector can trust the edge with
//! `cloudflared --cacert <dir>/ca.pem`. The CA is either generated here or given by the
//! operator ([`EdgeIdentity::issue_from_ca`]); either way its key is not kept: it signs the
//! leaf once, and a new leaf needs the CA key again.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
    Generate(#[from] rcgen::Error),
    /// The operator's CA certificate or key is unusable.
    #[error("the given CA {what} is unusable: {detail}")]
    OperatorCa {
        /// `certificate` or `key`.
        what: &'static str,
        /// What was wrong and what to do.
        detail: String,
    },
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
        let paths = [CA_FILE, CERT_FILE, KEY_FILE].map(|f| dir.join(f));
        if paths.iter().all(|p| p.exists()) {
            let read = |p: &PathBuf| {
                fs::read_to_string(p).map_err(|source| IdentityError::Io {
                    path: p.clone(),
                    source,
                })
            };
            let files = PemFiles {
                ca: read(&paths[0])?,
                chain: read(&paths[1])?,
                key: read(&paths[2])?,
            };
            tracing::debug!(dir = %dir.display(), "loaded edge TLS identity");
            return Self::from_pem(&files, dir);
        }
        let files = generate_pem()?;
        files.write(dir)?;
        tracing::info!(ca = %paths[0].display(), "generated a new edge TLS identity");
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
        let bad = |what, detail: String| IdentityError::OperatorCa { what, detail };
        let ca_der = CertificateDer::pem_slice_iter(ca_cert_pem.as_bytes())
            .next()
            .ok_or_else(|| bad("certificate", "no PEM CERTIFICATE block found".into()))?
            .map_err(|e| bad("certificate", format!("not valid PEM: {e}")))?;
        let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| {
            bad(
                "key",
                format!("not a PKCS#8 PEM private key ({e}); convert it with `openssl pkcs8 -topk8 -nocrypt`"),
            )
        })?;
        let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key)
            .map_err(|e| bad("certificate", format!("cannot be parsed as a CA: {e}")))?;
        let (leaf_pem, key_pem) = issue_leaf(&issuer)?;
        let ca_pem = pem_encode("CERTIFICATE", &ca_der);
        let files = PemFiles {
            chain: format!("{leaf_pem}{ca_pem}"),
            ca: ca_pem,
            key: key_pem,
        };
        let identity = Self::from_pem(&files, dir)?;
        check_chain(&identity, &ca_der).map_err(|detail| bad("key", detail))?;
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
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        for (file, contents, secret) in [
            (CA_FILE, &self.ca, false),
            (CERT_FILE, &self.chain, false),
            (KEY_FILE, &self.key, true),
        ] {
            let path = dir.join(file);
            write_file(&path, contents, secret).map_err(io(&path))?;
        }
        Ok(())
    }
}

fn generate_pem() -> Result<PemFiles, IdentityError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::OrganizationName, "workers-vpc");
    ca_name.push(DnType::CommonName, "workers-vpc edge CA");
    ca_params.distinguished_name = ca_name;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let (leaf, key) = issue_leaf(&issuer)?;
    Ok(PemFiles {
        ca: ca_cert.pem(),
        chain: format!("{leaf}{}", ca_cert.pem()),
        key,
    })
}

/// A fresh leaf for the cloudflared names, signed by `issuer`: (certificate PEM, key PEM).
fn issue_leaf(issuer: &Issuer<'_, KeyPair>) -> Result<(String, String), IdentityError> {
    let mut leaf_params = CertificateParams::new(vec![
        QUIC_SERVER_NAME.to_owned(),
        H2_SERVER_NAME.to_owned(),
        PROBE_SERVER_NAME.to_owned(),
    ])?;
    let mut leaf_name = DistinguishedName::new();
    leaf_name.push(DnType::OrganizationName, "workers-vpc");
    leaf_name.push(DnType::CommonName, QUIC_SERVER_NAME);
    leaf_params.distinguished_name = leaf_name;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf_params.signed_by(&leaf_key, issuer)?;
    Ok((leaf_cert.pem(), leaf_key.serialize_pem()))
}

/// Checks that the leaf verifies against the CA for every cloudflared name, as cloudflared
/// will (a CA key that does not match its certificate fails here).
fn check_chain(identity: &EdgeIdentity, ca: &CertificateDer<'static>) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| format!("the CA certificate cannot be a trust anchor: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
    let (leaf, intermediates) = identity
        .chain
        .split_first()
        .ok_or_else(|| "no leaf certificate".to_owned())?;
    for name in [QUIC_SERVER_NAME, H2_SERVER_NAME, PROBE_SERVER_NAME] {
        let server_name = rustls::pki_types::ServerName::try_from(name)
            .map_err(|e| e.to_string())?
            .to_owned();
        verifier
            .verify_server_cert(
                leaf,
                intermediates,
                &server_name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .map_err(|e| {
                format!(
                    "a leaf signed with this key does not verify against the CA certificate \
                     ({e}): the key must be the CA certificate's own key, and the CA must be \
                     valid now and allowed to sign certificates"
                )
            })?;
    }
    Ok(())
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write_file(path: &Path, contents: &str, secret: bool) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    if secret {
        // The file may have existed with wider permissions.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

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
