//! The edge's TLS identity: a private CA and a leaf certificate for the names cloudflared
//! expects (`quic.cftunnel.com`, `h2.cftunnel.com`, `probe.cftunnel.com`).
//!
//! Persisted as PEM in one directory so that a stock connector can trust the edge with
//! `cloudflared --cacert <dir>/ca.pem`. The CA key is not kept: it signs the leaf once; a new
//! identity is a new CA.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
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
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let files = generate_pem()?;
        write_file(&paths[0], &files.ca, false).map_err(io(&paths[0]))?;
        write_file(&paths[1], &files.chain, false).map_err(io(&paths[1]))?;
        write_file(&paths[2], &files.key, true).map_err(io(&paths[2]))?;
        tracing::info!(ca = %paths[0].display(), "generated a new edge TLS identity");
        Self::from_pem(&files, dir)
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
    let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer)?;

    Ok(PemFiles {
        ca: ca_cert.pem(),
        chain: format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        key: leaf_key.serialize_pem(),
    })
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
}
