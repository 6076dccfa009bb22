//! [`PlatformError`]: why a part of the platform could not start.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a component could not be assembled or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// The directory could not be opened or read.
    #[error(transparent)]
    Directory(#[from] wvpc_directory::DirectoryError),
    /// The cluster registry could not be opened.
    #[error("opening the cluster registry: {0}")]
    Registry(#[from] wvpc_directory::RegistryError),
    /// The edge's TLS identity could not be loaded or created.
    #[error("loading the edge TLS identity in {}: {source}", dir.display())]
    EdgeIdentity {
        /// The identity directory.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: wvpc_tunnel::identity::IdentityError,
    },
    /// The relay CA or this node's relay certificate could not be loaded or created.
    #[error("the relay TLS identity in {}: {source}", dir.display())]
    RelayIdentity {
        /// The relay directory (`<state>/relay`).
        dir: PathBuf,
        /// What failed.
        #[source]
        source: wvpc_iris::relay::RelayIdentityError,
    },
    /// The relay address to advertise to peers is unusable.
    #[error(
        "the relay listener's address {addr} cannot be dialled by other nodes; set --relay-advertise to the IP:PORT they reach it at"
    )]
    RelayAdvertise {
        /// The address that would have been advertised.
        addr: SocketAddr,
    },
    /// A listener could not be bound.
    #[error("{what}: cannot listen on {addr}: {source}")]
    Listen {
        /// Which listener (`--edge-listen`, …).
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The bind failure.
        #[source]
        source: std::io::Error,
    },
    /// The tunnel edge could not start.
    #[error("starting the tunnel edge on {addr} (UDP): {source}")]
    Edge {
        /// The edge address.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: wvpc_iris::edge::EdgeError,
    },
    /// The script could not be loaded.
    #[error("loading script {script:?}: {source}")]
    Script {
        /// The script's name.
        script: String,
        /// What failed.
        #[source]
        source: wvpc_runtime::RuntimeError,
    },
    /// The script's bindings name services the directory does not have.
    #[error("the script's bindings are invalid:\n  {}", .0.join("\n  "))]
    Bindings(Vec<String>),
    /// Any other I/O failure while starting.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}
