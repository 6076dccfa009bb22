//! Private certificate authorities: a self-signed CA generated here or an operator's own
//! ([`CertificateAuthority`]), the leaf certificates it issues ([`IssuedLeaf`]), the check
//! that a leaf verifies against it as a peer will ([`CertificateAuthority::verify_issued`]),
//! and the PEM files they live in under the state directory ([`read_pem_files`],
//! [`write_pem_files`]; secrets with mode 0600).
//!
//! What differs between the CAs of workers-vpc (the edge CA that connectors trust, the
//! relay CA of iris nodes) is given by the caller: the CA's common name, the leaf's names and
//! extended key usages, the file names, and whether the CA key is kept.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rcgen::ExtendedKeyUsagePurpose;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// The organization named in every certificate workers-vpc generates.
const ORGANIZATION: &str = "workers-vpc";

/// Why a CA could not be created, read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The CA certificate or key is unusable.
    #[error("the CA {what} is unusable: {detail}")]
    BadCa {
        /// `certificate` or `key`.
        what: &'static str,
        /// What was wrong and what to do.
        detail: String,
    },
    /// A leaf name is not a DNS name.
    #[error("{0:?} cannot name a certificate: it must be a DNS name")]
    BadName(String),
    /// Certificate generation failed.
    #[error("generating a certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A CA that can issue leaves: its certificate and its key.
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A fresh self-signed CA named `common_name` (organization `workers-vpc`), allowed to
    /// sign certificates and CRLs.
    pub fn generate(common_name: &str) -> Result<Self, CaError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, ORGANIZATION);
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// A CA from its certificate (the first PEM block of `cert_pem`) and its PKCS#8 PEM key.
    /// Checks that they can issue; [`Self::verify_issued`] checks that they belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let bad = |what, detail: String| CaError::BadCa { what, detail };
        let cert_der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .ok_or_else(|| bad("certificate", "no PEM CERTIFICATE block found".into()))?
            .map_err(|e| bad("certificate", format!("not valid PEM: {e}")))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            bad(
                "key",
                format!(
                    "not a PKCS#8 PEM private key ({e}); convert it with `openssl pkcs8 -topk8 -nocrypt`"
                ),
            )
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| bad("certificate", format!("cannot be parsed as a CA: {e}")))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der,
            issuer,
        })
    }

    /// The CA certificate, as given (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PKCS#8 PEM): a secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A fresh leaf for `names` (DNS names, its subject alternative names), with subject
    /// `common_name` and the extended key `usages`, signed by this CA.
    pub fn issue(
        &self,
        names: &[&str],
        common_name: &str,
        usages: &[ExtendedKeyUsagePurpose],
    ) -> Result<IssuedLeaf, CaError> {
        if let Some(bad) = names
            .iter()
            .find(|n| !matches!(ServerName::try_from(**n), Ok(ServerName::DnsName(_))))
        {
            return Err(CaError::BadName((*bad).to_owned()));
        }
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, ORGANIZATION);
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages.to_vec();
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedLeaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Checks that `chain` (leaf first) verifies against this CA for every one of `names`,
    /// as a peer will: a key that does not belong to the CA certificate fails here.
    pub fn verify_issued(
        &self,
        chain: &[CertificateDer<'static>],
        names: &[&str],
    ) -> Result<(), CaError> {
        let bad = |what, detail: String| CaError::BadCa { what, detail };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert_der.clone())
            .map_err(|e| bad("certificate", format!("cannot be a trust anchor: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad("certificate", e.to_string()))?;
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| bad("certificate", "it issued no certificate".into()))?;
        for name in names {
            let server_name =
                ServerName::try_from(*name).map_err(|_| CaError::BadName((*name).to_owned()))?;
            verifier
                .verify_server_cert(leaf, intermediates, &server_name, &[], UnixTime::now())
                .map_err(|e| {
                    bad(
                        "key",
                        format!(
                            "a certificate it signs does not verify against the CA certificate \
                             ({e}); is it the CA's key? It must be the CA certificate's own key, \
                             and the CA must be valid now and allowed to sign certificates"
                        ),
                    )
                })?;
        }
        Ok(())
    }
}

/// A leaf certificate and its key, as [`CertificateAuthority::issue`] made them.
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The certificate (DER).
    pub cert_der: CertificateDer<'static>,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
}

/// `der` as one PEM block labelled `CERTIFICATE`.
pub fn certificate_pem(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The contents of `files` in `dir`, or `None` when any of them is missing (to be created).
pub fn read_pem_files<const N: usize>(
    dir: &Path,
    files: [&str; N],
) -> Result<Option<[String; N]>, CaError> {
    let paths = files.map(|f| dir.join(f));
    if !paths.iter().all(|p| p.exists()) {
        return Ok(None);
    }
    let mut out = [const { String::new() }; N];
    for (slot, path) in out.iter_mut().zip(paths) {
        *slot = fs::read_to_string(&path).map_err(|source| CaError::Io { path, source })?;
    }
    Ok(Some(out))
}

/// One file of [`write_pem_files`].
#[derive(Debug, Clone, Copy)]
pub struct PemFile<'a> {
    /// The file name inside the directory.
    pub name: &'a str,
    /// What it holds.
    pub contents: &'a str,
    /// A private key: mode 0600 (also when the file existed with wider permissions).
    pub secret: bool,
}

/// Creates `dir` if needed and writes `files` into it, each synced to disk.
pub fn write_pem_files(dir: &Path, files: &[PemFile<'_>]) -> Result<(), CaError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CaError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    for file in files {
        let path = dir.join(file.name);
        write_file(&path, file.contents, file.secret).map_err(io(&path))?;
    }
    Ok(())
}

fn write_file(path: &Path, contents: &str, secret: bool) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
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
    fn a_leaf_verifies_for_its_names_and_only_against_its_own_ca() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let leaf = ca
            .issue(
                &["a.example", "b.example"],
                "a.example",
                &[ExtendedKeyUsagePurpose::ServerAuth],
            )
            .unwrap();
        let chain = [leaf.cert_der.clone(), ca.cert_der().clone()];
        ca.verify_issued(&chain, &["a.example", "b.example"])
            .unwrap();
        assert!(ca.verify_issued(&chain, &["c.example"]).is_err());

        let other = CertificateAuthority::generate("other CA").unwrap();
        let err = other.verify_issued(&chain, &["a.example"]).unwrap_err();
        assert!(err.to_string().contains("is it the CA's key"), "{err}");

        // The certificate of one CA with the key of another issues leaves nobody trusts.
        let mixed = CertificateAuthority::from_pem(ca.cert_pem(), other.key_pem()).unwrap();
        let leaf = mixed.issue(&["a.example"], "a.example", &[]).unwrap();
        assert!(
            mixed
                .verify_issued(&[leaf.cert_der], &["a.example"])
                .is_err()
        );

        assert!(matches!(
            ca.issue(&["not a dns name"], "x", &[]),
            Err(CaError::BadName(_))
        ));
        let err = CertificateAuthority::from_pem("junk", ca.key_pem()).unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
        let err = CertificateAuthority::from_pem(ca.cert_pem(), "junk").unwrap_err();
        assert!(err.to_string().contains("PKCS#8"), "{err}");
        assert_eq!(
            CertificateDer::from_pem_slice(certificate_pem(ca.cert_der()).as_bytes()).unwrap(),
            *ca.cert_der()
        );
    }

    #[test]
    fn pem_files_are_read_back_and_secrets_are_private() {
        let dir = std::env::temp_dir().join(format!("wvpc-tls-ca-{}", uuid::Uuid::new_v4()));
        assert!(read_pem_files(&dir, ["a.pem", "b.pem"]).unwrap().is_none());
        write_pem_files(
            &dir,
            &[
                PemFile {
                    name: "a.pem",
                    contents: "public",
                    secret: false,
                },
                PemFile {
                    name: "b.pem",
                    contents: "secret",
                    secret: true,
                },
            ],
        )
        .unwrap();
        let [a, b] = read_pem_files(&dir, ["a.pem", "b.pem"]).unwrap().unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("public", "secret"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |f: &str| fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode("b.pem"), 0o600);
        }
        fs::remove_file(dir.join("b.pem")).unwrap();
        assert!(read_pem_files(&dir, ["a.pem", "b.pem"]).unwrap().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
