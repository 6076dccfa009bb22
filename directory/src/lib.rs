//! The control plane: accounts with their VPC services, tunnels, API tokens and deployed
//! scripts, kept in an embedded SQLite file (`<state>/wvpc.db`) that every process using the
//! same state directory shares (`wvpc dev`, `wvpc directory`, CLI commands), or in a
//! PostgreSQL database that every node of a cluster shares (`--directory postgres://…`,
//! [`Directory::open_spec`]; the storage boundary is [`store`]). A store starts with one
//! local account; a [`Directory`] acts for one account at a time.
//!
//! - [`Directory`] opens the file and does the CRUD: [`Directory::create_service`],
//!   [`Directory::list_services`], [`Directory::service`], [`Directory::replace_service`],
//!   [`Directory::delete_service`]; tunnels with [`Directory::create_tunnel`] and friends, and
//!   [`Directory::authorize_tunnel`] for connector registration.
//! - [`cluster`] is the cluster registry: which iris node holds which live tunnel connection
//!   ([`connections`]), under node leases on the store's clock (SQLite or PostgreSQL), with a
//!   change feed; `wvpc tunnel info` reads it.
//! - [`Service`] is the service object in Cloudflare's JSON shape; [`ServiceInput`] is the raw
//!   create/replace body, checked by [`validation`] which reports every problem with its field
//!   path.
//! - The data plane reads a service through [`Service::tunnel_id`], [`Service::target`]
//!   (hostname + resolver socket addresses, or ipv4/ipv6), [`Service::http_port`],
//!   [`Service::https_port`], [`Service::tcp_port`] and [`Service::cert_verification_mode`];
//!   [`Directory::revision`] tells caches when anything changed, and
//!   [`Directory::route_snapshot`] reads every service in one consistent transaction.
//! - Virtual networks and the IP routes inside them (private networks reached by
//!   `vpc_networks` bindings) live in [`teamnet`].
//! - Accounts and bearer API tokens with roles live in [`tokens`], account subdomains in
//!   [`subdomain`]; deployed scripts, their versions and the deploy-time check of their
//!   bindings in [`scripts`], of their module in [`component`], of their routes in [`routes`].
//! - Runtimes read every deployed script with [`Directory::deployment_snapshot`] and module
//!   bytes with [`Directory::module_by_etag`] ([`deployments`]).
//! - [`api`] serves all of it over HTTP in the Cloudflare v4 shape, and [`api::client`] is
//!   the client the CLI uses.

#![forbid(unsafe_code)]

/// Runs each test body once per backend: `fn name(state) { … }` becomes the tests
/// `name::sqlite` and `name::postgres` (skipped, with the harness's message, where
/// PostgreSQL is not installed), each with a fresh [`database::tests::TempState`].
#[cfg(test)]
macro_rules! both_backends {
    ($(#[test] fn $name:ident($state:ident) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports, reason = "not every test body uses every import")]
            use super::*;

            #[allow(clippy::needless_pass_by_value, reason = "each test owns its store")]
            fn run($state: crate::database::tests::TempState) $body

            #[test]
            fn sqlite() {
                run(crate::database::tests::TempState::new());
            }

            #[test]
            fn postgres() {
                if let Some(state) = crate::database::tests::TempState::postgres() {
                    run(state);
                }
            }
        }
    )*};
}

pub mod api;
pub mod cluster;
pub mod component;
pub mod connections;
mod database;
pub mod deployments;
mod error;
pub mod network_routes;
pub mod routes;
pub mod runtimes;
pub mod scripts;
pub mod service;
pub mod service_input;
mod services;
mod snapshot;
pub mod store;
pub mod subdomain;
pub mod tail;
pub mod teamnet;
pub mod tokens;
pub mod tunnel;
pub mod validation;

pub use cluster::{ClusterConnection, ClusterRegistry, Lease, RegistryError};
pub use component::ComponentRefusal;
pub use connections::LiveConnection;
pub use database::{DB_FILE_NAME, Directory, WRITE_LOCK_WAIT};
pub use deployments::{DeployedScript, DeploymentSnapshot};
pub use error::DirectoryError;
pub use routes::{RouteConflict, ScriptRoute};
pub use runtimes::{RUNTIME_TTL, RuntimeNode};
pub use scripts::{
    BindingRefusal, BindingRequest, BindingTarget, DeletedScript, MAX_VERSIONS_PER_SCRIPT, Script,
    ScriptBinding, ScriptUpload, ScriptVersion, ServiceRef,
};
pub use service::{
    AppProtocol, CertVerificationMode, DEFAULT_DNS_PORT, DEFAULT_HTTP_PORT, DEFAULT_HTTPS_PORT,
    Host, Network, ResolverAddrError, ResolverNetwork, Service, ServiceKind, ServiceTarget,
    ServiceType, TlsSettings, parse_resolver_addr,
};
pub use service_input::{
    HostInput, NetworkInput, ResolverNetworkInput, ServiceInput, TlsSettingsInput,
};
pub use services::SERVICE_LIMIT;
pub use snapshot::{RouteSnapshot, TunnelKey};
pub use store::changes::{Changes, SAFETY_POLL, SQLITE_POLL};
pub use store::location::{DirectoryLocation, LocationError, PgLocation, SslMode};
pub use store::postgres::{PgStore, STORE_WAIT};
pub use teamnet::{RouteFilter, RouteInput, TeamnetRoute, VirtualNetwork, VirtualNetworkInput};
pub use tokens::{Account, ApiToken, Role};
pub use tunnel::{Tunnel, TunnelAuthError};
pub use validation::{Problem, ServiceSpec, ValidationError};
pub use wvpc_tunnel::Credentials;
