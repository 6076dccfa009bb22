//! `wvpc relay ca export|import`: the cluster's relay CA in the state directory
//! (`<state>/relay/`), which signs the certificate each iris node presents to the others on
//! its relay listener (`wvpc iris --relay-listen`). Every node of a cluster must hold the same
//! CA: generate it on one node (first start, or `export`, which creates it when missing) and
//! `import` it on the others.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use wvpc_iris::relay::RelayCa;
use wvpc_iris::relay::identity::{CA_FILE, CA_KEY_FILE};

/// `wvpc relay …`
#[derive(Debug, clap::Subcommand)]
pub enum RelayCommand {
    /// The CA every iris node of the cluster shares for node-to-node relays
    #[command(subcommand)]
    Ca(RelayCaCommand),
}

/// `wvpc relay ca …`
#[derive(Debug, clap::Subcommand)]
pub enum RelayCaCommand {
    /// Write the relay CA certificate and key (ca.pem, ca-key.pem) to a directory, to import
    /// on the other nodes; generates the CA first if the state directory has none. The key is
    /// a secret: whoever holds it can relay into the cluster
    Export {
        /// Directory to write ca.pem and ca-key.pem into (created if missing)
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
    /// Use this relay CA (certificate and its PKCS#8 key); restart the node afterwards
    Import {
        /// The CA certificate (PEM)
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The CA private key (PKCS#8 PEM)
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
}

/// Runs a relay subcommand.
pub fn run(
    command: RelayCommand,
    state: &Path,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let dir = wvpc_platform::state::relay_dir(state);
    match command {
        RelayCommand::Ca(RelayCaCommand::Export { out_dir }) => {
            let ca = RelayCa::load_or_create(&dir)
                .with_context(|| format!("loading the relay CA in {}", dir.display()))?;
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("cannot create {}", out_dir.display()))?;
            let cert = out_dir.join(CA_FILE);
            let key = out_dir.join(CA_KEY_FILE);
            std::fs::write(&cert, ca.cert_pem())
                .with_context(|| format!("cannot write {}", cert.display()))?;
            write_secret(&key, ca.key_pem())
                .with_context(|| format!("cannot write {}", key.display()))?;
            writeln!(
                out,
                "✅ Wrote the relay CA to {} and its key to {}",
                cert.display(),
                key.display()
            )?;
            writeln!(
                out,
                "On every other node: wvpc relay ca import --cert {} --key {}",
                cert.display(),
                key.display()
            )?;
        }
        RelayCommand::Ca(RelayCaCommand::Import { cert, key }) => {
            let (cert_pem, key_pem) = super::edge::read_ca_files(&cert, &key, "relay CA")?;
            RelayCa::import(&dir, &cert_pem, &key_pem).with_context(|| {
                format!(
                    "the relay CA in {} was left unchanged ({} with {})",
                    dir.display(),
                    cert.display(),
                    key.display()
                )
            })?;
            writeln!(
                out,
                "✅ The relay CA in {} is now {}",
                dir.display(),
                cert.display()
            )?;
            writeln!(out, "Restart iris to issue its relay certificate from it")?;
        }
    }
    Ok(())
}

/// Writes a secret file readable by its owner only.
fn write_secret(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents.as_bytes())
}
