//! Where a directory lives: `--directory` / `WVPC_DIRECTORY` parsed into a SQLite file or a
//! PostgreSQL connection (with its TLS settings).
//!
//! Accepted forms: `postgres://…` / `postgresql://…` (libpq's URL, including `sslmode` and
//! `sslrootcert`), `sqlite:<path>` (a database file), or nothing: `<state>/wvpc.db`.
//! tokio-postgres does not know libpq's `sslrootcert` nor the `verify-ca` / `verify-full`
//! modes, so those are taken out of the URL here and become the rustls configuration.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use wvpc_tls::verify::{PemRootsError, ServerVerification, add_pem_roots, client_config};

/// A directory location that cannot be used; the message names the flag and what to do.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid --directory {shown:?}: {problem}; give postgres://user@host:port/database, \
     sqlite:<file>, or leave it out for <state>/wvpc.db"
)]
pub struct LocationError {
    /// The location as given, without its password.
    pub shown: String,
    /// What is wrong.
    pub problem: String,
}

/// Where the directory is stored.
#[derive(Debug, Clone)]
pub enum DirectoryLocation {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(Box<PgLocation>),
}

impl DirectoryLocation {
    /// `spec` (the `--directory` value) or, without one, `<state_dir>/wvpc.db`.
    pub fn resolve(spec: Option<&str>, state_dir: &Path) -> Result<Self, LocationError> {
        match spec.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(Self::Sqlite(state_dir.join(crate::DB_FILE_NAME))),
            Some(spec) => Self::parse(spec),
        }
    }

    /// Parses a `--directory` value.
    pub fn parse(spec: &str) -> Result<Self, LocationError> {
        let err = |problem: String| LocationError {
            shown: redact(spec),
            problem,
        };
        if let Some(path) = spec.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(err("sqlite: needs a file path after the colon".into()));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            return PgLocation::parse(spec)
                .map(|pg| Self::Postgres(Box::new(pg)))
                .map_err(err);
        }
        Err(err(
            "unknown scheme (expected postgres://, postgresql:// or sqlite:)".into(),
        ))
    }

    /// How the location is shown in logs and errors (never with a password).
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite {}", path.display()),
            Self::Postgres(pg) => pg.label.clone(),
        }
    }
}

/// libpq's `sslmode`, as far as it applies to a rustls client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without verifying it (libpq's default).
    Prefer,
    /// TLS required; verified against `sslrootcert` when given (as libpq does), else not.
    Require,
    /// TLS required, the chain verified against `sslrootcert`, any host name.
    VerifyCa,
    /// TLS required, the chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "disable" => Self::Disable,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }
}

/// A PostgreSQL connection: tokio-postgres's configuration plus the TLS settings it lacks.
#[derive(Debug, Clone)]
pub struct PgLocation {
    /// Everything but TLS verification.
    pub config: tokio_postgres::Config,
    /// The TLS mode.
    pub ssl_mode: SslMode,
    /// CA certificates (PEM) the server's certificate must chain to.
    pub root_cert: Option<PathBuf>,
    /// `postgres host:port/database`, for messages.
    pub label: String,
}

impl PgLocation {
    fn parse(spec: &str) -> Result<Self, String> {
        let mut url = url::Url::parse(spec).map_err(|e| format!("not a URL: {e}"))?;
        let mut ssl_mode = SslMode::Prefer;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "sslmode" => {
                    ssl_mode = SslMode::parse(&value).ok_or_else(|| {
                        format!(
                            "sslmode={value} is not one of disable, prefer, require, verify-ca, \
                             verify-full"
                        )
                    })?;
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(value.as_ref())),
                "sslcert" | "sslkey" | "sslpassword" => {
                    return Err(format!(
                        "{key} (TLS client certificates) is not supported; authenticate with a \
                         password"
                    ));
                }
                _ => kept.push((key.into_owned(), value.into_owned())),
            }
        }
        if matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
            return Err(
                "sslmode=verify-ca and verify-full need sslrootcert=<CA file (PEM)>".into(),
            );
        }
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        let mut config =
            tokio_postgres::Config::from_str(url.as_str()).map_err(|e| e.to_string())?;
        if config.get_hosts().is_empty() {
            return Err("no host (postgres://user@host:port/database)".into());
        }
        if config.get_dbname().is_none() {
            return Err("no database name after the host (postgres://user@host/database)".into());
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let label = label(&config);
        Ok(Self {
            config,
            ssl_mode,
            root_cert,
            label,
        })
    }

    /// The rustls configuration `ssl_mode` and `root_cert` ask for.
    pub fn tls_config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = self.root_cert.as_deref().map(load_roots).transpose()?;
        let verification = match (self.ssl_mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => ServerVerification::Full(Arc::new(roots)),
            // libpq's `require` with a root certificate behaves as `verify-ca`.
            (SslMode::VerifyCa | SslMode::Require, Some(roots)) => {
                ServerVerification::ChainOnly(Arc::new(roots))
            }
            // `prefer` / `require` without a CA: encrypted, not authenticated (libpq's meaning).
            _ => ServerVerification::SignatureOnly,
        };
        client_config(verification, &provider).map_err(|e| e.to_string())
    }
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject as _;
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("sslrootcert {shown}: cannot read it: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    add_pem_roots(&mut roots, certs).map_err(|e| match e {
        PemRootsError::Pem(e) => format!("sslrootcert {shown}: not PEM certificates: {e}"),
        PemRootsError::Unusable(e) => {
            format!("sslrootcert {shown}: not a usable CA certificate: {e}")
        }
        PemRootsError::Empty => format!("sslrootcert {shown}: holds no certificate"),
    })?;
    Ok(roots)
}

fn label(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => String::new(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres {host}:{port}/{}",
        config.get_dbname().unwrap_or_default()
    )
}

/// `spec` without its password, for messages.
fn redact(spec: &str) -> String {
    match url::Url::parse(spec) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => spec.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(spec: &str) -> PgLocation {
        match DirectoryLocation::parse(spec).unwrap() {
            DirectoryLocation::Postgres(pg) => *pg,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_default_is_the_state_dirs_sqlite_file() {
        let state = Path::new("/var/lib/wvpc");
        for spec in [None, Some(""), Some("  ")] {
            match DirectoryLocation::resolve(spec, state).unwrap() {
                DirectoryLocation::Sqlite(path) => assert_eq!(path, state.join("wvpc.db")),
                other => panic!("{other:?}"),
            }
        }
        match DirectoryLocation::parse("sqlite:/tmp/x.db").unwrap() {
            DirectoryLocation::Sqlite(path) => assert_eq!(path, Path::new("/tmp/x.db")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn libpq_tls_keys_become_rustls_settings_and_leave_the_url() {
        let loc = pg(
            "postgres://wvpc:pw@db.example:6543/wvpc?sslmode=verify-full\
             &sslrootcert=/etc/ca.pem&application_name=iris",
        );
        assert_eq!(loc.ssl_mode, SslMode::VerifyFull);
        assert_eq!(loc.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(loc.config.get_application_name(), Some("iris"));
        assert_eq!(loc.config.get_user(), Some("wvpc"));
        assert_eq!(loc.config.get_ports(), [6543]);
        assert_eq!(
            loc.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(loc.label, "postgres db.example:6543/wvpc");
        let plain = pg("postgresql://u@127.0.0.1/d?sslmode=disable");
        assert_eq!(
            plain.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        assert_eq!(pg("postgres://u@h/d").ssl_mode, SslMode::Prefer);
    }

    #[test]
    fn bad_locations_name_the_flag_and_the_problem() {
        for (spec, problem) in [
            ("mysql://h/d", "unknown scheme"),
            ("postgres://u@h/d?sslmode=sometimes", "sslmode=sometimes"),
            ("postgres://u@h/d?sslmode=verify-full", "need sslrootcert"),
            ("postgres://u@h/d?sslcert=/c.pem", "not supported"),
            ("postgres://u@h", "no database name"),
            ("sqlite:", "needs a file path"),
        ] {
            let err = DirectoryLocation::parse(spec).unwrap_err().to_string();
            assert!(err.starts_with("invalid --directory"), "{err}");
            assert!(err.contains(problem), "{spec}: {err}");
        }
        let err = DirectoryLocation::parse("postgres://u:secret@h/d?sslmode=x")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn a_missing_or_empty_root_cert_is_a_clear_error() {
        let loc = pg("postgres://u@h/d?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem");
        let err = loc.tls_config().unwrap_err();
        assert!(err.contains("sslrootcert /nonexistent/ca.pem"), "{err}");
    }
}
