//! `wvpc edge ca export|import`: the tunnel edge's TLS identity in the state directory
//! (`<state>/edge/`), which `wvpc dev` serves to connectors.
//!
//! Stock cloudflared verifies the edge against the CA given with `--cacert`, for the names
//! `quic.cftunnel.com`, `h2.cftunnel.com` and `probe.cftunnel.com`; `export` prints or writes
//! that CA, `import` makes the edge use a certificate issued by the operator's own CA instead
//! of the generated one.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use wvpc_tunnel::EdgeIdentity;

/// `wvpc edge …`
#[derive(Debug, clap::Subcommand)]
pub enum EdgeCommand {
    /// The CA connectors trust the edge with (`cloudflared --cacert`)
    #[command(subcommand)]
    Ca(CaCommand),
}

/// `wvpc edge ca …`
#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Print the edge CA certificate (PEM), or write it to a file; generates the edge
    /// identity first if the state directory has none
    Export {
        /// Write the PEM here instead of printing it
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Use your own CA: issue a new edge certificate signed by it (the CA key is used once and
    /// not stored); restart the edge afterwards
    Import {
        /// The CA certificate (PEM)
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The CA private key (PKCS#8 PEM)
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
}

/// Where the edge identity of a state directory lives.
pub fn identity_dir(state: &Path) -> PathBuf {
    wvpc_platform::state::edge_identity_dir(state)
}

/// Runs an edge subcommand.
pub fn run(command: EdgeCommand, state: &Path, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let dir = identity_dir(state);
    match command {
        EdgeCommand::Ca(CaCommand::Export { out: None }) => {
            let identity = load(&dir)?;
            write!(out, "{}", identity.ca_pem())?;
        }
        EdgeCommand::Ca(CaCommand::Export { out: Some(path) }) => {
            let identity = load(&dir)?;
            std::fs::write(&path, identity.ca_pem())
                .with_context(|| format!("cannot write the edge CA to {}", path.display()))?;
            writeln!(out, "✅ Wrote the edge CA to {}", path.display())?;
            writeln!(
                out,
                "Connectors trust the edge with: cloudflared tunnel --cacert {} …",
                path.display()
            )?;
        }
        EdgeCommand::Ca(CaCommand::Import { cert, key }) => {
            let (cert_pem, key_pem) = read_ca_files(&cert, &key, "CA")?;
            EdgeIdentity::issue_from_ca(&dir, &cert_pem, &key_pem).with_context(|| {
                format!(
                    "the edge identity in {} was left unchanged ({} with {})",
                    dir.display(),
                    cert.display(),
                    key.display()
                )
            })?;
            writeln!(
                out,
                "✅ The edge certificate in {} is now issued by {}",
                dir.display(),
                cert.display()
            )?;
            writeln!(
                out,
                "Restart the edge; connectors keep using --cacert {}",
                cert.display()
            )?;
        }
    }
    Ok(())
}

fn load(dir: &Path) -> anyhow::Result<EdgeIdentity> {
    EdgeIdentity::load_or_create(dir)
        .with_context(|| format!("loading the edge TLS identity in {}", dir.display()))
}

/// Reads a CA certificate and its key (PEM) given to an `import` command; `ca` names the CA
/// in the error ("CA", "relay CA").
pub(super) fn read_ca_files(cert: &Path, key: &Path, ca: &str) -> anyhow::Result<(String, String)> {
    let read = |path: &Path, what: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the {ca} {what} {}", path.display()))
    };
    Ok((read(cert, "certificate")?, read(key, "key")?))
}
