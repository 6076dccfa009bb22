//! Why a directory operation failed.

use std::path::PathBuf;

use uuid::Uuid;

use crate::validation::ValidationError;

/// A failed directory operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The state directory could not be created.
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database file could not be opened or set up.
    #[error("cannot open directory database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The file was written by a newer wvpc.
    #[error(
        "directory database schema version {found} is newer than this wvpc supports ({supported}); \
         upgrade wvpc or use another --state directory"
    )]
    SchemaTooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// A query failed.
    #[error("directory database error: {0}")]
    Sqlite(rusqlite::Error),
    /// PostgreSQL refused a statement.
    #[error("directory database error: {0}")]
    Postgres(tokio_postgres::Error),
    /// The store cannot be reached or did not answer in time (connection refused, closed,
    /// timed out): nothing was changed, and trying again later may work.
    #[error("directory unavailable: {store}: {reason}")]
    Unavailable {
        /// Which store (`postgres host:port/database`).
        store: String,
        /// What went wrong.
        reason: String,
    },
    /// `--directory` / `WVPC_DIRECTORY` cannot be used.
    #[error(transparent)]
    Location(#[from] crate::store::location::LocationError),
    /// Another connection held the database's write lock for longer than a writer waits
    /// ([`crate::WRITE_LOCK_WAIT`]): nothing was changed, and trying again later may work.
    #[error("directory busy: {reason}")]
    Busy {
        /// What was busy and what to do.
        reason: String,
    },
    /// A stored row cannot be read back (edited by hand, or a bug).
    #[error("directory database holds an unreadable {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The service input broke one or more rules.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No such service in the account.
    #[error("no VPC service {0} in this account")]
    ServiceNotFound(Uuid),
    /// The account already has the maximum number of services.
    #[error("this account already has {limit} VPC services, the maximum; delete one first")]
    ServiceLimit {
        /// The limit.
        limit: usize,
    },
    /// No such tunnel in the account.
    #[error("no tunnel {0:?} in this account")]
    TunnelNotFound(String),
    /// A tunnel name is already used in the account.
    #[error("a tunnel named {0:?} already exists in this account; pick another name")]
    TunnelNameTaken(String),
    /// A tunnel name breaks the naming rules.
    #[error("invalid tunnel name {name:?}: {reason}")]
    InvalidTunnelName {
        /// The name given.
        name: String,
        /// What is wrong and what to do.
        reason: &'static str,
    },
    /// The tunnel cannot be deleted while services or network routes use it.
    #[error("tunnel {name:?} ({id}) is used by {}", tunnel_users(services, routes))]
    TunnelInUse {
        /// The tunnel's id.
        id: Uuid,
        /// The tunnel's name.
        name: String,
        /// `(service_id, name)` of every service that references it.
        services: Vec<(Uuid, String)>,
        /// `(route_id, network)` of every network route through it.
        routes: Vec<(Uuid, String)>,
    },
    /// A virtual network or route input broke one or more rules (each with its field).
    #[error(
        "invalid {what}: {}",
        problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    InvalidNetworkInput {
        /// `virtual network` or `route`.
        what: &'static str,
        /// Every problem found.
        problems: Vec<crate::validation::Problem>,
    },
    /// No such virtual network in the account.
    #[error("no virtual network {0:?} in this account (`wvpc vnet list` shows them)")]
    VirtualNetworkNotFound(String),
    /// A virtual network name is already used in the account.
    #[error("a virtual network named {0:?} already exists in this account; pick another name")]
    VirtualNetworkNameTaken(String),
    /// The virtual network cannot be deleted while something uses it.
    #[error("virtual network {name:?} ({id}) cannot be deleted: {}", users.join("; "))]
    VirtualNetworkInUse {
        /// Its id.
        id: Uuid,
        /// Its name.
        name: String,
        /// What uses it, each with what to do.
        users: Vec<String>,
    },
    /// No such network route in the account.
    #[error("no route {0:?} in this account (`wvpc route ip list` shows them)")]
    RouteNotFound(String),
    /// The network is already routed in that virtual network.
    #[error(
        "network: {network} is already routed in virtual network {vnet_name:?} by route \
         {route_id} through tunnel {tunnel_name:?} ({tunnel_id}); delete that route first, or \
         route a longer or shorter prefix (nested prefixes are allowed: the longest match wins)"
    )]
    RouteExists {
        /// The network.
        network: String,
        /// The virtual network's name.
        vnet_name: String,
        /// The existing route.
        route_id: Uuid,
        /// Its tunnel's name.
        tunnel_name: String,
        /// Its tunnel.
        tunnel_id: Uuid,
    },
    /// Deleting or changing the route would leave VPC services of its virtual network with an
    /// address no route of their tunnel covers.
    #[error(
        "route {network} is needed by VPC service(s) {} in its virtual network; add another \
         route of the same tunnel covering them, or update the services first",
        services.join(", ")
    )]
    RouteInUse {
        /// The route's network.
        network: String,
        /// `"name" (addresses)` of each service that needs it.
        services: Vec<String>,
    },
    /// A tunnel of another account was named.
    #[error(
        "{field}: tunnel {tunnel_id} belongs to another account; use a tunnel of this account \
         (`wvpc tunnel list`)"
    )]
    ForeignTunnel {
        /// The field that named it.
        field: &'static str,
        /// The tunnel.
        tunnel_id: Uuid,
    },
    /// One or more bindings of a script upload were refused (each says why).
    #[error(
        "the script's bindings were refused:{}",
        .0.iter().map(|r| format!("\n  {r}")).collect::<String>()
    )]
    BindingsRefused(Vec<crate::scripts::BindingRefusal>),
    /// No such script in the account.
    #[error("no script {0:?} in this account")]
    ScriptNotFound(String),
    /// A script name breaks the naming rules.
    #[error("invalid script name {0:?}: use 1 to 63 letters, digits, '-' or '_'")]
    InvalidScriptName(String),
    /// A subdomain is not a valid DNS label.
    #[error("invalid subdomain {subdomain:?}: {problem}")]
    InvalidSubdomain {
        /// The subdomain given.
        subdomain: String,
        /// What is wrong.
        problem: String,
    },
    /// Another account holds the subdomain.
    #[error("the subdomain {0:?} is taken by another account; pick another")]
    SubdomainTaken(String),
    /// The module is not a component a runtime can serve; the previous version stays active.
    #[error("{0}")]
    InvalidComponent(crate::component::ComponentRefusal),
    /// Route patterns of an upload are held by other scripts.
    #[error(
        "the script's routes are taken:{}",
        .0.iter().map(|c| format!("\n  {c}")).collect::<String>()
    )]
    RoutesTaken(Vec<crate::routes::RouteConflict>),
    /// The upload breaks rules its parser checks (routes, limits); one message per problem,
    /// field path first.
    #[error(
        "invalid script upload:{}",
        .0.iter().map(|p| format!("\n  {p}")).collect::<String>()
    )]
    InvalidUpload(Vec<String>),
    /// No such version of the script.
    #[error(
        "script {script:?} has no version {version}; `wvpc deployments list {script}` shows them"
    )]
    VersionNotFound {
        /// The script.
        script: String,
        /// The version asked for.
        version: Uuid,
    },
}

fn tunnel_users(services: &[(Uuid, String)], routes: &[(Uuid, String)]) -> String {
    let mut users = Vec::new();
    if !services.is_empty() {
        users.push(format!(
            "{} VPC service(s): {}; delete them or point them at another tunnel first",
            services.len(),
            services
                .iter()
                .map(|(id, name)| format!("{name:?} ({id})"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !routes.is_empty() {
        users.push(format!(
            "{} network route(s): {}; delete them first (`wvpc route ip delete CIDR`)",
            routes.len(),
            routes
                .iter()
                .map(|(id, network)| format!("{network} ({id})"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    users.join("; ")
}

impl From<rusqlite::Error> for DirectoryError {
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as Code;
        match err.sqlite_error_code() {
            Some(Code::DatabaseBusy | Code::DatabaseLocked) => DirectoryError::Busy {
                reason: format!(
                    "another connection holds the database's write lock (waited {}s: a backup, \
                     a migration or a stuck writer?); nothing was changed, retry shortly",
                    crate::WRITE_LOCK_WAIT.as_secs()
                ),
            },
            _ => DirectoryError::Sqlite(err),
        }
    }
}

impl DirectoryError {
    /// Whether the failure is the directory being unavailable for now (busy, or its store
    /// unreachable), so the same request may succeed later; every other error would fail
    /// again.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            DirectoryError::Busy { .. } | DirectoryError::Unavailable { .. }
        )
    }
}
