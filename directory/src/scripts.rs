//! Deployed scripts and their versions: every successful upload stores a new version (the
//! module, its verified `vpc_service` bindings and its limits) and makes it the active one;
//! [`Directory::activate_version`] rolls back. Module bytes are stored once per content hash
//! (the etag) and shared by the versions that use them; a module no version references any
//! more is deleted. Routes and `workers_dev` belong to the script, not to a version.
//!
//! Bindings may name their service by id or by name; names are resolved to ids here, inside
//! the same write transaction that stores the version, so what is stored is always a set of
//! existing, permitted service ids.

use std::fmt;

use crate::store::{Dialect, Row, Tx, params};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::database::{Directory, now_rfc3339};
use crate::error::DirectoryError;
use crate::routes::{RouteConflict, ScriptRoute};
use crate::tokens::{ApiToken, Role};
use wvpc_schemas::NetworkTarget;

/// Longest script name accepted.
pub const MAX_SCRIPT_NAME_LEN: usize = 63;

/// How a binding names its service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceRef {
    /// `service_id`.
    Id(Uuid),
    /// `service`: the service's name, unique in the account.
    Name(String),
}

/// What a requested binding reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingTarget {
    /// `vpc_service`: one VPC service.
    Service(ServiceRef),
    /// `vpc_network`: a tunnel (`tunnel_id`) or a virtual network (`network_id`).
    Network(NetworkTarget),
}

/// One requested binding of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRequest {
    /// Name the script uses (`env.API`).
    pub binding: String,
    /// What it should reach.
    pub target: BindingTarget,
}

/// `type` of a stored binding to a VPC service.
pub const VPC_SERVICE: &str = "vpc_service";
/// `type` of a stored binding to a network.
pub const VPC_NETWORK: &str = "vpc_network";

/// A stored, verified binding: `{type:"vpc_service", name, service_id}` or
/// `{type:"vpc_network", name, tunnel_id | network_id}` in the API; only the set fields are
/// serialized, and rows stored before network bindings (always `service_id`) read the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptBinding {
    /// [`VPC_SERVICE`] or [`VPC_NETWORK`].
    #[serde(rename = "type")]
    pub binding_type: String,
    /// Name the script uses.
    pub name: String,
    /// The bound service (`vpc_service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<Uuid>,
    /// The bound tunnel (`vpc_network` by `tunnel_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_id: Option<Uuid>,
    /// The bound network (`vpc_network` by `network_id`: `cf1:network` or
    /// `cf1:vnet:<uuid>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_id: Option<String>,
}

impl ScriptBinding {
    /// A binding to a VPC service.
    pub fn service(name: impl Into<String>, service_id: Uuid) -> Self {
        Self {
            binding_type: VPC_SERVICE.into(),
            name: name.into(),
            service_id: Some(service_id),
            tunnel_id: None,
            network_id: None,
        }
    }

    /// A binding to a network (by `tunnel_id` for [`NetworkTarget::Tunnel`], else by
    /// `network_id`).
    pub fn network(name: impl Into<String>, target: NetworkTarget) -> Self {
        Self {
            binding_type: VPC_NETWORK.into(),
            name: name.into(),
            service_id: None,
            tunnel_id: target.tunnel_id(),
            network_id: target.network_id(),
        }
    }

    /// What a `vpc_network` binding reaches; `None` for a service binding (or a stored
    /// `network_id` that no longer parses).
    pub fn network_target(&self) -> Option<NetworkTarget> {
        if let Some(tunnel) = self.tunnel_id {
            return Some(NetworkTarget::Tunnel(tunnel));
        }
        NetworkTarget::parse_network_id(self.network_id.as_deref()?).ok()
    }
}

/// A deployed script as its active version (without the module bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    /// The script's name.
    pub id: String,
    /// SHA-256 of the active version's module, hex.
    pub etag: String,
    /// Module size in bytes.
    pub size: usize,
    /// Name of the module part (`main_module` of the metadata).
    pub main_module: String,
    /// Verified bindings of the active version.
    pub bindings: Vec<ScriptBinding>,
    /// The active version.
    pub version_id: Uuid,
    /// Its number (1, 2, 3… per script).
    pub version_number: u64,
    /// `limits` of the active version.
    pub limits: Map<String, Value>,
    /// The script's routes, in upload order.
    pub routes: Vec<ScriptRoute>,
    /// Whether the script is served on `<script>.<subdomain>.<workers domain>`.
    pub workers_dev: bool,
    /// First upload, RFC 3339 UTC.
    pub created_on: String,
    /// Last upload or rollback, RFC 3339 UTC.
    pub modified_on: String,
}

/// Why one binding of an upload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingRefusal {
    /// No service with this id exists anywhere.
    UnknownService {
        /// The binding.
        binding: String,
        /// The id it names.
        service_id: Uuid,
    },
    /// The service belongs to another account.
    ForeignService {
        /// The binding.
        binding: String,
        /// The id it names.
        service_id: Uuid,
        /// The deploying account.
        account_id: String,
    },
    /// The token may not bind the service.
    NotPermitted {
        /// The binding.
        binding: String,
        /// The service.
        service_id: Uuid,
        /// The service's name.
        service_name: String,
        /// The token's name.
        token_name: String,
        /// The token's role.
        role: Role,
    },
    /// No service of the account has this name.
    UnknownName {
        /// The binding.
        binding: String,
        /// The name it gives.
        name: String,
        /// The deploying account.
        account_id: String,
    },
    /// Several services of the account have this name.
    AmbiguousName {
        /// The binding.
        binding: String,
        /// The name it gives.
        name: String,
        /// The services that carry it.
        service_ids: Vec<Uuid>,
    },
    /// Two bindings share a name.
    DuplicateBinding {
        /// The binding name.
        binding: String,
    },
    /// A `vpc_network` binding names a tunnel that does not exist.
    UnknownTunnel {
        /// The binding.
        binding: String,
        /// The tunnel it names.
        tunnel_id: Uuid,
    },
    /// A `vpc_network` binding names another account's tunnel or virtual network.
    ForeignNetwork {
        /// The binding.
        binding: String,
        /// What it names: `tunnel <id>` or `virtual network <id>`.
        what: String,
        /// The deploying account.
        account_id: String,
    },
    /// A `vpc_network` binding names a virtual network that does not exist.
    UnknownNetwork {
        /// The binding.
        binding: String,
        /// The `network_id` it gives.
        network_id: String,
    },
    /// The token's role may not bind the network.
    NetworkNotPermitted {
        /// The binding.
        binding: String,
        /// `tunnel_id` or `network_id`.
        field: &'static str,
        /// The token's name.
        token_name: String,
        /// The token's role.
        role: Role,
        /// The role the binding needs.
        needed: Role,
    },
}

impl BindingRefusal {
    /// Whether the refusal is about permission (HTTP 403) rather than a wrong request (400).
    pub fn is_permission(&self) -> bool {
        matches!(
            self,
            BindingRefusal::ForeignService { .. }
                | BindingRefusal::NotPermitted { .. }
                | BindingRefusal::ForeignNetwork { .. }
                | BindingRefusal::NetworkNotPermitted { .. }
        )
    }
}

impl fmt::Display for BindingRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindingRefusal::UnknownService {
                binding,
                service_id,
            } => write!(
                f,
                "binding {binding:?}: VPC service {service_id} does not exist; create it first \
                 or fix the service_id (`wvpc service list` shows the account's services)"
            ),
            BindingRefusal::ForeignService {
                binding,
                service_id,
                account_id,
            } => write!(
                f,
                "binding {binding:?}: VPC service {service_id} belongs to another account, not \
                 to account {account_id}; a script can bind only services of its own account"
            ),
            BindingRefusal::NotPermitted {
                binding,
                service_id,
                service_name,
                token_name,
                role,
            } => {
                let why = if *role >= Role::Bind {
                    "its bind permission is limited to other services"
                } else {
                    "binding needs the bind or admin role"
                };
                write!(
                    f,
                    "binding {binding:?}: the API token {token_name:?} (role {role}) may not bind \
                     VPC service {service_id} ({service_name:?}): missing permission bind on \
                     this service ({why})"
                )
            }
            BindingRefusal::UnknownName {
                binding,
                name,
                account_id,
            } => write!(
                f,
                "binding {binding:?}: no VPC service named {name:?} in account {account_id} \
                 (`wvpc service list` shows the account's services)"
            ),
            BindingRefusal::AmbiguousName {
                binding,
                name,
                service_ids,
            } => write!(
                f,
                "binding {binding:?}: {} VPC services are named {name:?} ({}); bind by \
                 service_id instead",
                service_ids.len(),
                service_ids
                    .iter()
                    .map(Uuid::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            BindingRefusal::DuplicateBinding { binding } => {
                write!(f, "binding {binding:?} is declared more than once")
            }
            BindingRefusal::UnknownTunnel { binding, tunnel_id } => write!(
                f,
                "binding {binding:?}: tunnel_id: tunnel {tunnel_id} does not exist; create it \
                 first or fix the tunnel_id (`wvpc tunnel list` shows the account's tunnels)"
            ),
            BindingRefusal::ForeignNetwork {
                binding,
                what,
                account_id,
            } => write!(
                f,
                "binding {binding:?}: {what} belongs to another account, not to account \
                 {account_id}; a script can bind only networks of its own account"
            ),
            BindingRefusal::UnknownNetwork {
                binding,
                network_id,
            } => write!(
                f,
                "binding {binding:?}: network_id: {network_id:?} names no virtual network of \
                 this account; use \"cf1:network\" for the default one or an id that `wvpc vnet \
                 list` prints"
            ),
            BindingRefusal::NetworkNotPermitted {
                binding,
                field,
                token_name,
                role,
                needed,
            } => write!(
                f,
                "binding {binding:?}: a vpc_network binding by {field} needs the {needed} role; \
                 the API token {token_name:?} has the {role} role (deploy with a token created \
                 by `wvpc token create --role {needed}`)"
            ),
        }
    }
}

/// Most versions kept per script; older ones (never the active one) are dropped on upload.
pub const MAX_VERSIONS_PER_SCRIPT: usize = 50;

/// An upload: the module and what its metadata says.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptUpload {
    /// Name of the module part (`main_module`).
    pub main_module: String,
    /// The wasm component.
    pub module: Vec<u8>,
    /// Requested bindings.
    pub bindings: Vec<BindingRequest>,
    /// Routes, normalized ([`crate::routes`]); they replace the script's routes.
    pub routes: Vec<ScriptRoute>,
    /// Whether the script is served on its default host `<script>.<subdomain>.<domain>`.
    pub workers_dev: bool,
    /// `limits`: names to non-negative integers (and `isolation` to `"instance"` or
    /// `"request"`), interpreted by the runtimes.
    pub limits: Map<String, Value>,
}

impl ScriptUpload {
    /// `module` named `main_module`, without bindings, routes or limits, on its default host.
    pub fn new(main_module: impl Into<String>, module: Vec<u8>) -> Self {
        Self {
            main_module: main_module.into(),
            module,
            bindings: Vec::new(),
            routes: Vec::new(),
            workers_dev: true,
            limits: Map::new(),
        }
    }
}

/// One version of a script: what one successful upload stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptVersion {
    /// The version's id.
    pub id: Uuid,
    /// 1, 2, 3… per script, in upload order.
    pub number: u64,
    /// SHA-256 of the module, hex.
    pub etag: String,
    /// Module size in bytes.
    pub size: usize,
    /// Name of the module part.
    pub main_module: String,
    /// Verified bindings.
    pub bindings: Vec<ScriptBinding>,
    /// `limits` as uploaded.
    pub limits: Map<String, Value>,
    /// Name of the API token that uploaded it; `None` for uploads from before versions.
    pub author: Option<String>,
    /// Upload time, RFC 3339 UTC.
    pub created_on: String,
    /// Whether this is the version being served.
    pub active: bool,
}

/// What [`Directory::delete_script`] removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedScript {
    /// The script's name.
    pub id: String,
    /// How many versions it had.
    pub versions: u64,
    /// Its route patterns.
    pub routes: Vec<String>,
}

/// What every stored upload passes first: the script's name, the upload's fields and its
/// module ([`crate::component::check`]); then the module's etag and the limits as stored.
fn checked_upload(name: &str, upload: &ScriptUpload) -> Result<(String, String), DirectoryError> {
    check_script_name(name)?;
    let problems = upload_problems(upload);
    if !problems.is_empty() {
        return Err(DirectoryError::InvalidUpload(problems));
    }
    crate::component::check(&upload.module).map_err(DirectoryError::InvalidComponent)?;
    Ok((
        sha256_hex(&upload.module),
        to_json("script limits", &upload.limits)?,
    ))
}

impl Directory {
    /// Checks the module ([`crate::component::check`]), verifies every binding for `token`
    /// (all refusals at once) and that no other script holds one of the routes, then stores a
    /// new version and makes it the active one; the upload's routes and `workers_dev` replace
    /// the script's. Nothing changes when anything is refused. The token must act for this
    /// directory's account (the API checks that before it gets here).
    pub fn deploy_script(
        &self,
        token: &ApiToken,
        name: &str,
        upload: &ScriptUpload,
    ) -> Result<Script, DirectoryError> {
        let (etag, limits) = checked_upload(name, upload)?;
        let account = self.account_id();
        let script = self.write(|tx| {
            let bindings = verify_bindings(tx, account, token, &upload.bindings)?;
            check_routes_free(tx, account, name, &upload.routes)?;
            let now = now_rfc3339();
            let version_id = Uuid::new_v4().to_string();
            let exists = script_exists(tx, account, name)?;
            if exists {
                tx.execute(
                    "UPDATE scripts SET active_version = ?3, workers_dev = ?4, modified_on = ?5
                     WHERE account_id = ?1 AND name = ?2",
                    params![account, name, version_id, upload.workers_dev, now],
                )?;
            } else {
                tx.execute(
                    "INSERT INTO scripts (account_id, name, active_version, workers_dev,
                                          created_on, modified_on)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                    params![account, name, version_id, upload.workers_dev, now],
                )?;
            }
            let stored = StoredVersion {
                id: &version_id,
                etag: &etag,
                bindings: &bindings,
                limits: &limits,
                now: &now,
            };
            insert_version(tx, account, name, token, upload, &stored)?;
            replace_routes(tx, account, name, &upload.routes)?;
            prune_versions(tx, account, name)?;
            collect_modules(tx)?;
            read_script(tx, account, name)?.ok_or_else(|| DirectoryError::Corrupt {
                what: format!("script {name:?}"),
                detail: "not readable right after it was stored".into(),
            })
        })?;
        tracing::debug!(
            script = name,
            version = script.version_number,
            bindings = script.bindings.len(),
            routes = script.routes.len(),
            "script deployed"
        );
        Ok(script)
    }

    /// Stores a new version of the existing script `name` without serving it (Cloudflare's
    /// version upload; `POST …/deployments` makes it active): the module is checked and the
    /// bindings verified for `token` as in [`Self::deploy_script`]. The script's routes and
    /// `workers_dev` stay as they are, and so does the version being served.
    pub fn upload_version(
        &self,
        token: &ApiToken,
        name: &str,
        upload: &ScriptUpload,
    ) -> Result<ScriptVersion, DirectoryError> {
        let (etag, limits) = checked_upload(name, upload)?;
        let account = self.account_id();
        let version = self.write(|tx| {
            if !script_exists(tx, account, name)? {
                return Err(DirectoryError::ScriptNotFound(name.to_owned()));
            }
            let bindings = verify_bindings(tx, account, token, &upload.bindings)?;
            let now = now_rfc3339();
            let version_id = Uuid::new_v4().to_string();
            let stored = StoredVersion {
                id: &version_id,
                etag: &etag,
                bindings: &bindings,
                limits: &limits,
                now: &now,
            };
            insert_version(tx, account, name, token, upload, &stored)?;
            prune_versions(tx, account, name)?;
            collect_modules(tx)?;
            tx.query_one(
                &format!("SELECT {VERSION_COLUMNS} WHERE v.version_id = ?1"),
                [version_id],
                version_from_row,
            )
        })?;
        tracing::debug!(
            script = name,
            version = version.number,
            "script version uploaded"
        );
        Ok(version)
    }

    /// Whether script `name` is served on its default host `<script>.<subdomain>.<domain>`
    /// (Cloudflare's workers.dev switch); the script as it is then.
    pub fn set_workers_dev(&self, name: &str, enabled: bool) -> Result<Script, DirectoryError> {
        let account = self.account_id();
        self.write(|tx| {
            let updated = tx.execute(
                "UPDATE scripts SET workers_dev = ?3, modified_on = ?4
                 WHERE account_id = ?1 AND name = ?2",
                params![account, name, enabled, now_rfc3339()],
            )?;
            if updated == 0 {
                return Err(DirectoryError::ScriptNotFound(name.to_owned()));
            }
            read_script(tx, account, name)?
                .ok_or_else(|| DirectoryError::ScriptNotFound(name.into()))
        })
    }

    /// Replaces the routes of script `name` (normalized, as [`crate::routes`] parses them);
    /// refused when another script holds one. The script as it is then.
    pub fn set_routes(&self, name: &str, routes: &[ScriptRoute]) -> Result<Script, DirectoryError> {
        let mut check = ScriptUpload::new("", Vec::new());
        check.routes = routes.to_vec();
        let problems = upload_problems(&check);
        if !problems.is_empty() {
            return Err(DirectoryError::InvalidUpload(problems));
        }
        let account = self.account_id();
        self.write(|tx| {
            if !script_exists(tx, account, name)? {
                return Err(DirectoryError::ScriptNotFound(name.to_owned()));
            }
            check_routes_free(tx, account, name, routes)?;
            replace_routes(tx, account, name, routes)?;
            tx.execute(
                "UPDATE scripts SET modified_on = ?3 WHERE account_id = ?1 AND name = ?2",
                params![account, name, now_rfc3339()],
            )?;
            read_script(tx, account, name)?
                .ok_or_else(|| DirectoryError::ScriptNotFound(name.into()))
        })
    }

    /// The account's scripts, by name, each as its active version.
    pub fn list_scripts(&self) -> Result<Vec<Script>, DirectoryError> {
        self.read_consistent(|tx| {
            let names: Vec<String> = tx.query_map(
                "SELECT name FROM scripts WHERE account_id = ?1 ORDER BY name",
                [self.account_id()],
                |row| row.get(0),
            )?;
            let mut scripts = Vec::with_capacity(names.len());
            for name in names {
                scripts.extend(read_script(tx, self.account_id(), &name)?);
            }
            Ok(scripts)
        })
    }

    /// One script (its active version), if the account has it.
    pub fn script(&self, name: &str) -> Result<Option<Script>, DirectoryError> {
        self.read_consistent(|tx| read_script(tx, self.account_id(), name))
    }

    /// The module bytes of a script's active version.
    pub fn script_module(&self, name: &str) -> Result<Option<Vec<u8>>, DirectoryError> {
        self.read(|conn| {
            conn.query_opt(
                "SELECT m.module FROM scripts s
                     JOIN script_versions v ON v.version_id = s.active_version
                     JOIN modules m ON m.etag = v.etag
                     WHERE s.account_id = ?1 AND s.name = ?2",
                [self.account_id(), name],
                |row| row.get(0),
            )
        })
    }

    /// A script's versions, newest first, the active one marked.
    pub fn script_versions(&self, name: &str) -> Result<Vec<ScriptVersion>, DirectoryError> {
        self.read_consistent(|tx| {
            let exists = script_exists(tx, self.account_id(), name)?;
            if !exists {
                return Err(DirectoryError::ScriptNotFound(name.to_owned()));
            }
            tx.query_map(
                &format!(
                    "SELECT {VERSION_COLUMNS} WHERE v.account_id = ?1 AND v.script = ?2
                     ORDER BY v.number DESC"
                ),
                [self.account_id(), name],
                version_from_row,
            )
        })
    }

    /// Makes `version` the active version of script `name` (a rollback, or forward again).
    /// Routes and `workers_dev` belong to the script and stay as they are.
    pub fn activate_version(
        &self,
        name: &str,
        version: Uuid,
    ) -> Result<ScriptVersion, DirectoryError> {
        let account = self.account_id();
        let activated = self.write(|tx| {
            let exists = script_exists(tx, account, name)?;
            if !exists {
                return Err(DirectoryError::ScriptNotFound(name.to_owned()));
            }
            let updated = tx.execute(
                "UPDATE scripts SET active_version = ?3, modified_on = ?4
                 WHERE account_id = ?1 AND name = ?2 AND EXISTS (
                   SELECT 1 FROM script_versions
                   WHERE version_id = ?3 AND account_id = ?1 AND script = ?2)",
                params![account, name, version.to_string(), now_rfc3339()],
            )?;
            if updated == 0 {
                return Err(DirectoryError::VersionNotFound {
                    script: name.to_owned(),
                    version,
                });
            }
            tx.query_one(
                &format!("SELECT {VERSION_COLUMNS} WHERE v.version_id = ?1"),
                [version.to_string()],
                version_from_row,
            )
        })?;
        tracing::debug!(
            script = name,
            version = activated.number,
            "script version activated"
        );
        Ok(activated)
    }

    /// Deletes a script with its versions and routes; modules no other version uses go too.
    pub fn delete_script(&self, name: &str) -> Result<DeletedScript, DirectoryError> {
        let account = self.account_id();
        self.write(|tx| {
            let routes: Vec<String> = tx.query_map(
                "SELECT pattern FROM script_routes WHERE account_id = ?1 AND script = ?2
                 ORDER BY position",
                [account, name],
                |row| row.get(0),
            )?;
            tx.execute(
                "DELETE FROM script_routes WHERE account_id = ?1 AND script = ?2",
                [account, name],
            )?;
            let versions = tx.execute(
                "DELETE FROM script_versions WHERE account_id = ?1 AND script = ?2",
                [account, name],
            )?;
            let deleted = tx.execute(
                "DELETE FROM scripts WHERE account_id = ?1 AND name = ?2",
                [account, name],
            )?;
            if deleted == 0 {
                return Err(DirectoryError::ScriptNotFound(name.to_owned()));
            }
            collect_modules(tx)?;
            Ok(DeletedScript {
                id: name.to_owned(),
                versions: u64::try_from(versions).unwrap_or(u64::MAX),
                routes,
            })
        })
    }
}

/// Columns of a [`ScriptVersion`], with the `FROM` clause (alias `v`); add a `WHERE`.
const VERSION_COLUMNS: &str = "v.version_id, v.number, v.etag, length(m.module), v.main_module,
    v.bindings, v.limits, v.author, v.created_on, v.version_id = s.active_version
    FROM script_versions v
    JOIN scripts s ON s.account_id = v.account_id AND s.name = v.script
    JOIN modules m ON m.etag = v.etag";

fn version_from_row(row: &Row) -> Result<ScriptVersion, DirectoryError> {
    let id: String = row.get(0)?;
    let number: i64 = row.get(1)?;
    let size: i64 = row.get(3)?;
    let bindings: String = row.get(5)?;
    let limits: String = row.get(6)?;
    Ok(ScriptVersion {
        id: crate::tunnel::parse_uuid("script version id", &id)?,
        number: u64::try_from(number).unwrap_or(0),
        etag: row.get(2)?,
        size: usize::try_from(size).unwrap_or(0),
        main_module: row.get(4)?,
        bindings: from_json(&format!("bindings of script version {id}"), &bindings)?,
        limits: from_json(&format!("limits of script version {id}"), &limits)?,
        author: row.get(7)?,
        created_on: row.get(8)?,
        active: row.get(9)?,
    })
}

/// The script `name` of `account` as its active version, with its routes.
fn read_script(conn: &Tx<'_>, account: &str, name: &str) -> Result<Option<Script>, DirectoryError> {
    let row = conn.query_opt(
        "SELECT v.version_id, v.number, v.etag, length(m.module), v.main_module, v.bindings,
                    v.limits, s.workers_dev, s.created_on, s.modified_on
             FROM scripts s
             JOIN script_versions v ON v.version_id = s.active_version
             JOIN modules m ON m.etag = v.etag
             WHERE s.account_id = ?1 AND s.name = ?2",
        [account, name],
        |row| {
            Ok((
                row.get::<String>(0)?,
                row.get::<i64>(1)?,
                row.get::<String>(2)?,
                row.get::<i64>(3)?,
                row.get::<String>(4)?,
                row.get::<String>(5)?,
                row.get::<String>(6)?,
                row.get::<bool>(7)?,
                row.get::<String>(8)?,
                row.get::<String>(9)?,
            ))
        },
    )?;
    let Some((
        version_id,
        number,
        etag,
        size,
        main_module,
        bindings,
        limits,
        workers_dev,
        created_on,
        modified_on,
    )) = row
    else {
        return Ok(None);
    };
    let routes = conn.query_map(
        "SELECT pattern, zone_name, custom_domain FROM script_routes
         WHERE account_id = ?1 AND script = ?2 ORDER BY position",
        [account, name],
        |row| {
            Ok(ScriptRoute {
                pattern: row.get(0)?,
                zone_name: row.get(1)?,
                custom_domain: row.get(2)?,
            })
        },
    )?;
    Ok(Some(Script {
        id: name.to_owned(),
        etag,
        size: usize::try_from(size).unwrap_or(0),
        main_module,
        bindings: from_json(&format!("bindings of script {name:?}"), &bindings)?,
        version_id: crate::tunnel::parse_uuid("script version id", &version_id)?,
        version_number: u64::try_from(number).unwrap_or(0),
        limits: from_json(&format!("limits of script {name:?}"), &limits)?,
        routes,
        workers_dev,
        created_on,
        modified_on,
    }))
}

/// What one upload stores as a version, computed before the transaction.
struct StoredVersion<'a> {
    id: &'a str,
    etag: &'a str,
    /// The verified bindings.
    bindings: &'a [ScriptBinding],
    /// `limits`, as JSON text.
    limits: &'a str,
    now: &'a str,
}

/// Stores the upload's module (once per etag) and a new version of script `name` numbered
/// after its newest one.
fn insert_version(
    tx: &Tx<'_>,
    account: &str,
    name: &str,
    token: &ApiToken,
    upload: &ScriptUpload,
    version: &StoredVersion<'_>,
) -> Result<(), DirectoryError> {
    let bindings = to_json("script bindings", &version.bindings)?;
    tx.execute(
        "INSERT INTO modules (etag, module) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        params![version.etag, upload.module],
    )?;
    tx.execute(
        "INSERT INTO script_versions (version_id, account_id, script, number, etag,
           main_module, bindings, limits, author, created_on)
         SELECT ?1, ?2, ?3, COALESCE(MAX(number), 0) + 1, ?4, ?5, ?6, ?7, ?8, ?9
         FROM script_versions WHERE account_id = ?2 AND script = ?3",
        params![
            version.id,
            account,
            name,
            version.etag,
            upload.main_module,
            bindings,
            version.limits,
            token.name,
            version.now
        ],
    )?;
    Ok(())
}

/// Makes `routes` the routes of script `name` (they were checked free).
fn replace_routes(
    tx: &Tx<'_>,
    account: &str,
    name: &str,
    routes: &[ScriptRoute],
) -> Result<(), DirectoryError> {
    tx.execute(
        "DELETE FROM script_routes WHERE account_id = ?1 AND script = ?2",
        [account, name],
    )?;
    for (position, route) in routes.iter().enumerate() {
        tx.execute(
            "INSERT INTO script_routes (pattern, account_id, script, position, zone_name,
                                        custom_domain)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                route.pattern,
                account,
                name,
                i64::try_from(position).unwrap_or(i64::MAX),
                route.zone_name,
                route.custom_domain
            ],
        )?;
    }
    Ok(())
}

/// Refuses routes that another script (of any account) holds.
fn check_routes_free(
    tx: &Tx<'_>,
    account: &str,
    name: &str,
    routes: &[ScriptRoute],
) -> Result<(), DirectoryError> {
    let mut conflicts = Vec::new();
    for (index, route) in routes.iter().enumerate() {
        let holder: Option<(String, String)> = tx.query_opt(
            "SELECT account_id, script FROM script_routes WHERE pattern = ?1",
            [&route.pattern],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        match holder {
            Some((holder_account, holder_script))
                if holder_account != account || holder_script != name =>
            {
                conflicts.push(RouteConflict {
                    index,
                    pattern: route.pattern.clone(),
                    holder: (holder_account == account).then_some(holder_script),
                });
            }
            _ => {}
        }
    }
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(DirectoryError::RoutesTaken(conflicts))
    }
}

/// Drops the oldest versions beyond [`MAX_VERSIONS_PER_SCRIPT`], never the active one.
fn prune_versions(tx: &Tx<'_>, account: &str, name: &str) -> Result<(), DirectoryError> {
    // "No limit" is spelled differently; the rest is the same SQL.
    let no_limit = match tx.dialect() {
        Dialect::Sqlite => "LIMIT -1",
        Dialect::Postgres => "LIMIT ALL",
    };
    tx.execute(
        &format!(
            "DELETE FROM script_versions WHERE version_id IN (
               SELECT v.version_id FROM script_versions v
               JOIN scripts s ON s.account_id = v.account_id AND s.name = v.script
               WHERE v.account_id = ?1 AND v.script = ?2 AND v.version_id <> s.active_version
               ORDER BY v.number DESC {no_limit} OFFSET ?3)"
        ),
        params![
            account,
            name,
            i64::try_from(MAX_VERSIONS_PER_SCRIPT - 1).unwrap_or(0)
        ],
    )?;
    Ok(())
}

/// Deletes modules that no version references any more.
fn collect_modules(tx: &Tx<'_>) -> Result<(), DirectoryError> {
    tx.execute(
        "DELETE FROM modules
         WHERE NOT EXISTS (SELECT 1 FROM script_versions v WHERE v.etag = modules.etag)",
        params![],
    )?;
    Ok(())
}

/// What a directly built [`ScriptUpload`] breaks that the API's parser would have refused.
fn upload_problems(upload: &ScriptUpload) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, route) in upload.routes.iter().enumerate() {
        match crate::routes::normalize_pattern(&route.pattern, false) {
            Ok(normalized) if normalized == route.pattern => {}
            Ok(normalized) => problems.push(format!(
                "metadata.routes[{i}].pattern: {:?} is not normalized (expected {normalized:?})",
                route.pattern
            )),
            Err(problem) => problems.push(format!("metadata.routes[{i}].pattern: {problem}")),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, route) in upload.routes.iter().enumerate() {
        if !seen.insert(route.pattern.as_str()) {
            problems.push(format!(
                "metadata.routes[{i}]: {:?} is given twice",
                route.pattern
            ));
        }
    }
    problems.extend(limits_problems(&upload.limits));
    problems
}

/// How `metadata.limits.isolation` may be set (the runtime's `Isolation`): one instance for
/// many requests of a version, or a fresh one per request.
const ISOLATION_MODES: [&str; 2] = ["instance", "request"];

/// `metadata.limits`: `isolation` one of [`ISOLATION_MODES`], every other value a
/// non-negative integer.
pub(crate) fn limits_problems(limits: &Map<String, Value>) -> Vec<String> {
    limits
        .iter()
        .filter_map(|(key, value)| {
            if key == "isolation" {
                let known = value.as_str().is_some_and(|v| ISOLATION_MODES.contains(&v));
                (!known).then(|| {
                    format!(
                        "metadata.limits.isolation: expected \"instance\" or \"request\", found {value}"
                    )
                })
            } else {
                value.as_u64().is_none().then(|| {
                    format!(
                        "metadata.limits.{key}: expected a non-negative integer, found {value}"
                    )
                })
            }
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn to_json<T: Serialize>(what: &str, value: &T) -> Result<String, DirectoryError> {
    serde_json::to_string(value).map_err(|err| DirectoryError::Corrupt {
        what: what.to_owned(),
        detail: err.to_string(),
    })
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    what: &str,
    text: &str,
) -> Result<T, DirectoryError> {
    serde_json::from_str(text).map_err(|err| DirectoryError::Corrupt {
        what: what.to_owned(),
        detail: err.to_string(),
    })
}

/// Schema 6: each script of the old table (module inline) becomes a script with one version,
/// number 1, its module stored once by content hash; then the old table is dropped by
/// migration 7.
pub(crate) fn migrate_to_versions(tx: &Tx<'_>) -> Result<(), DirectoryError> {
    /// A row of the table before versions.
    struct OldScript {
        account: String,
        name: String,
        main_module: String,
        module: Vec<u8>,
        bindings: String,
        created_on: String,
        modified_on: String,
    }
    let old: Vec<OldScript> = tx.query_map(
        "SELECT account_id, name, main_module, module, bindings, created_on, modified_on
         FROM scripts_before_versions",
        params![],
        |row| {
            Ok(OldScript {
                account: row.get(0)?,
                name: row.get(1)?,
                main_module: row.get(2)?,
                module: row.get(3)?,
                bindings: row.get(4)?,
                created_on: row.get(5)?,
                modified_on: row.get(6)?,
            })
        },
    )?;
    for script in old {
        let etag = sha256_hex(&script.module);
        let version_id = Uuid::new_v4().to_string();
        tx.execute(
            "INSERT INTO modules (etag, module) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![etag, script.module],
        )?;
        tx.execute(
            "INSERT INTO scripts (account_id, name, active_version, workers_dev, created_on,
                                  modified_on)
             VALUES (?1, ?2, ?3, 1, ?4, ?5)",
            [
                &script.account,
                &script.name,
                &version_id,
                &script.created_on,
                &script.modified_on,
            ],
        )?;
        tx.execute(
            "INSERT INTO script_versions (version_id, account_id, script, number, etag,
               main_module, bindings, limits, author, created_on)
             VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, '{}', NULL, ?7)",
            [
                &version_id,
                &script.account,
                &script.name,
                &etag,
                &script.main_module,
                &script.bindings,
                &script.modified_on,
            ],
        )?;
    }
    Ok(())
}

/// Resolves and checks every binding; all refusals at once.
fn verify_bindings(
    tx: &Tx<'_>,
    account: &str,
    token: &ApiToken,
    bindings: &[BindingRequest],
) -> Result<Vec<ScriptBinding>, DirectoryError> {
    let mut refusals = Vec::new();
    let mut verified = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for request in bindings {
        if !seen.insert(request.binding.as_str()) {
            refusals.push(BindingRefusal::DuplicateBinding {
                binding: request.binding.clone(),
            });
            continue;
        }
        let binding = request.binding.clone();
        let service = match &request.target {
            BindingTarget::Service(service) => service,
            BindingTarget::Network(target) => {
                match verify_network(tx, account, token, &binding, *target)? {
                    Ok(verified_binding) => verified.push(verified_binding),
                    Err(refusal) => refusals.push(refusal),
                }
                continue;
            }
        };
        let (service_id, service_name) = match service {
            ServiceRef::Id(id) => {
                let owner: Option<(String, String)> = tx.query_opt(
                    "SELECT account_id, name FROM services WHERE service_id = ?1",
                    [id.to_string()],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?;
                match owner {
                    None => {
                        refusals.push(BindingRefusal::UnknownService {
                            binding,
                            service_id: *id,
                        });
                        continue;
                    }
                    Some((owner, _)) if owner != account => {
                        refusals.push(BindingRefusal::ForeignService {
                            binding,
                            service_id: *id,
                            account_id: account.to_owned(),
                        });
                        continue;
                    }
                    Some((_, name)) => (*id, name),
                }
            }
            ServiceRef::Name(name) => {
                let ids = tx.query_map(
                    "SELECT service_id FROM services WHERE account_id = ?1 AND name = ?2
                     ORDER BY created_at, service_id",
                    [account, name.as_str()],
                    |row| crate::tunnel::parse_uuid("service id", &row.get::<String>(0)?),
                )?;
                match ids.as_slice() {
                    [] => {
                        refusals.push(BindingRefusal::UnknownName {
                            binding,
                            name: name.clone(),
                            account_id: account.to_owned(),
                        });
                        continue;
                    }
                    [id] => (*id, name.clone()),
                    _ => {
                        refusals.push(BindingRefusal::AmbiguousName {
                            binding,
                            name: name.clone(),
                            service_ids: ids,
                        });
                        continue;
                    }
                }
            }
        };
        if !token.may_bind(service_id) {
            refusals.push(BindingRefusal::NotPermitted {
                binding,
                service_id,
                service_name,
                token_name: token.name.clone(),
                role: token.role,
            });
            continue;
        }
        verified.push(ScriptBinding::service(binding, service_id));
    }
    if refusals.is_empty() {
        Ok(verified)
    } else {
        Err(DirectoryError::BindingsRefused(refusals))
    }
}

/// Checks one `vpc_network` binding: a `tunnel_id` binding needs the admin role and a tunnel
/// of the account; a `network_id` binding the bind role and (for `cf1:vnet:<id>`) a virtual
/// network of the account. `Ok(Err(_))` is a refusal.
fn verify_network(
    tx: &Tx<'_>,
    account: &str,
    token: &ApiToken,
    binding: &str,
    target: NetworkTarget,
) -> Result<Result<ScriptBinding, BindingRefusal>, DirectoryError> {
    let (field, needed) = match target {
        NetworkTarget::Tunnel(_) => ("tunnel_id", Role::Admin),
        _ => ("network_id", Role::Bind),
    };
    if token.role < needed {
        return Ok(Err(BindingRefusal::NetworkNotPermitted {
            binding: binding.to_owned(),
            field,
            token_name: token.name.clone(),
            role: token.role,
            needed,
        }));
    }
    let foreign = |what: String| BindingRefusal::ForeignNetwork {
        binding: binding.to_owned(),
        what,
        account_id: account.to_owned(),
    };
    match target {
        NetworkTarget::Tunnel(id) => {
            let owner: Option<String> = tx.query_opt(
                "SELECT account_id FROM tunnels WHERE tunnel_id = ?1",
                params![id.to_string()],
                |row| row.get(0),
            )?;
            match owner {
                None => {
                    return Ok(Err(BindingRefusal::UnknownTunnel {
                        binding: binding.to_owned(),
                        tunnel_id: id,
                    }));
                }
                Some(owner) if owner != account => return Ok(Err(foreign(format!("tunnel {id}")))),
                Some(_) => {}
            }
        }
        NetworkTarget::AllNetworks => {}
        NetworkTarget::VirtualNetwork(id) => {
            let owner: Option<String> = tx.query_opt(
                "SELECT account_id FROM virtual_networks WHERE vnet_id = ?1",
                params![id.to_string()],
                |row| row.get(0),
            )?;
            match owner {
                None => {
                    return Ok(Err(BindingRefusal::UnknownNetwork {
                        binding: binding.to_owned(),
                        network_id: target.network_id().unwrap_or_default(),
                    }));
                }
                Some(owner) if owner != account => {
                    return Ok(Err(foreign(format!("virtual network {id}"))));
                }
                Some(_) => {}
            }
        }
    }
    Ok(Ok(ScriptBinding::network(binding, target)))
}

/// Whether `account` has a script called `name` (inside the caller's transaction).
fn script_exists(tx: &Tx<'_>, account: &str, name: &str) -> Result<bool, DirectoryError> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM scripts WHERE account_id = ?1 AND name = ?2",
            [account, name],
            |_| Ok(()),
        )?
        .is_some())
}

fn check_script_name(name: &str) -> Result<(), DirectoryError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SCRIPT_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(DirectoryError::InvalidScriptName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::fixtures;

    #[test]
    fn stored_bindings_show_only_their_target_and_old_rows_still_read() {
        let id = Uuid::new_v4();
        let old: Vec<ScriptBinding> = from_json(
            "old row",
            &format!(r#"[{{"type":"vpc_service","name":"API","service_id":"{id}"}}]"#),
        )
        .unwrap();
        assert_eq!(old, [ScriptBinding::service("API", id)]);
        assert_eq!(old[0].network_target(), None);
        assert_eq!(
            serde_json::to_value(&old[0]).unwrap(),
            serde_json::json!({ "type": "vpc_service", "name": "API", "service_id": id })
        );
        let tunnel = ScriptBinding::network("NET", NetworkTarget::Tunnel(id));
        assert_eq!(
            serde_json::to_value(&tunnel).unwrap(),
            serde_json::json!({ "type": "vpc_network", "name": "NET", "tunnel_id": id })
        );
        assert_eq!(tunnel.network_target(), Some(NetworkTarget::Tunnel(id)));
        let vnet = ScriptBinding::network("LAB", NetworkTarget::VirtualNetwork(id));
        assert_eq!(
            serde_json::to_value(&vnet).unwrap(),
            serde_json::json!({ "type": "vpc_network", "name": "LAB", "network_id": format!("cf1:vnet:{id}") })
        );
        assert_eq!(
            vnet.network_target(),
            Some(NetworkTarget::VirtualNetwork(id))
        );
    }

    fn upload(module: Vec<u8>) -> ScriptUpload {
        ScriptUpload::new("worker.wasm", module)
    }

    /// Distinct valid components (the export's patch version differs).
    fn module(n: u32) -> Vec<u8> {
        fixtures::component(&format!("wasi:http/incoming-handler@0.2.{n}"), &[])
    }

    fn route(pattern: &str) -> ScriptRoute {
        ScriptRoute {
            pattern: pattern.into(),
            zone_name: None,
            custom_domain: false,
        }
    }

    fn modules(dir: &Directory) -> i64 {
        dir.read(|tx| tx.query_one("SELECT COUNT(*) FROM modules", params![], |r| r.get(0)))
            .unwrap()
    }

    both_backends! {
    #[test]
    fn every_upload_is_a_version_and_the_newest_is_served(state) {
        let dir = state.open();
        let (token, _) = dir.create_token("ci", Role::Bind, None).unwrap();
        let first = dir
            .deploy_script(&token, "proxy", &upload(module(0)))
            .unwrap();
        assert_eq!(first.version_number, 1);
        assert_eq!(first.etag, sha256_hex(&module(0)));
        let mut second = upload(module(1));
        second.limits.insert("cpu_ms".into(), 50.into());
        let second = dir.deploy_script(&token, "proxy", &second).unwrap();
        assert_eq!(second.version_number, 2);
        assert_eq!(second.created_on, first.created_on);
        assert_eq!(second.limits["cpu_ms"], 50);
        assert_eq!(dir.script_module("proxy").unwrap(), Some(module(1)));

        let versions = dir.script_versions("proxy").unwrap();
        assert_eq!(
            versions
                .iter()
                .map(|v| (v.number, v.active, v.author.as_deref()))
                .collect::<Vec<_>>(),
            [(2, true, Some("ci")), (1, false, Some("ci"))]
        );
        assert_eq!(versions[1].id, first.version_id);
        assert_eq!(versions[1].etag, first.etag);

        // Rollback: the old module is served again; numbering goes on from the newest.
        let before = dir.revision().unwrap();
        let active = dir.activate_version("proxy", first.version_id).unwrap();
        assert!(active.active && active.number == 1);
        assert!(dir.revision().unwrap() > before);
        assert_eq!(dir.script_module("proxy").unwrap(), Some(module(0)));
        assert_eq!(dir.script("proxy").unwrap().unwrap().version_number, 1);
        let third = dir
            .deploy_script(&token, "proxy", &upload(module(2)))
            .unwrap();
        assert_eq!(third.version_number, 3);

        let missing = Uuid::new_v4();
        let err = dir.activate_version("proxy", missing).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "script \"proxy\" has no version {missing}; `wvpc deployments list proxy` shows \
                 them"
            )
        );
        assert!(matches!(
            dir.activate_version("nope", first.version_id),
            Err(DirectoryError::ScriptNotFound(_))
        ));
        // Another script's version is not this script's.
        let other = dir
            .deploy_script(&token, "other", &upload(module(0)))
            .unwrap();
        assert!(matches!(
            dir.activate_version("proxy", other.version_id),
            Err(DirectoryError::VersionNotFound { .. })
        ));
    }
    }

    both_backends! {
    #[test]
    fn modules_are_stored_once_per_content_and_collected_when_unused(state) {
        let dir = state.open();
        let (token, _) = dir.create_token("ci", Role::Bind, None).unwrap();
        dir.deploy_script(&token, "a", &upload(module(0))).unwrap();
        dir.deploy_script(&token, "a", &upload(module(0))).unwrap();
        dir.deploy_script(&token, "b", &upload(module(0))).unwrap();
        assert_eq!(modules(&dir), 1);
        dir.deploy_script(&token, "b", &upload(module(1))).unwrap();
        assert_eq!(modules(&dir), 2);
        let deleted = dir.delete_script("b").unwrap();
        assert_eq!(deleted.versions, 2);
        // module(0) is still used by "a".
        assert_eq!(modules(&dir), 1);
        assert!(
            dir.module_by_etag(&sha256_hex(&module(0)))
                .unwrap()
                .is_some()
        );
        assert!(
            dir.module_by_etag(&sha256_hex(&module(1)))
                .unwrap()
                .is_none()
        );
        dir.delete_script("a").unwrap();
        assert_eq!(modules(&dir), 0);
        assert!(matches!(
            dir.delete_script("a"),
            Err(DirectoryError::ScriptNotFound(_))
        ));
    }
    }

    both_backends! {
    #[test]
    fn at_most_fifty_versions_are_kept(state) {
        let dir = state.open();
        let (token, _) = dir.create_token("ci", Role::Bind, None).unwrap();
        let first = dir.deploy_script(&token, "s", &upload(module(0))).unwrap();
        for n in 1..55 {
            dir.deploy_script(&token, "s", &upload(module(n))).unwrap();
            if n == 30 {
                // Serve version 1 for a while; uploads then make the newest active again.
                dir.activate_version("s", first.version_id).unwrap();
            }
        }
        let versions = dir.script_versions("s").unwrap();
        assert_eq!(versions.len(), MAX_VERSIONS_PER_SCRIPT);
        assert_eq!(versions[0].number, 55);
        assert_eq!(versions[49].number, 6);
        assert_eq!(modules(&dir), 50);
    }
    }

    both_backends! {
    #[test]
    fn the_active_version_outlives_pruning(state) {
        let dir = state.open();
        let (token, _) = dir.create_token("ci", Role::Bind, None).unwrap();
        let mut ids = Vec::new();
        for n in 0..50 {
            ids.push(
                dir.deploy_script(&token, "s", &upload(module(n)))
                    .unwrap()
                    .version_id,
            );
        }
        // Roll back to version 1; a pruning pass at the limit drops nothing.
        dir.activate_version("s", ids[0]).unwrap();
        dir.write(|tx| prune_versions(tx, dir.account_id(), "s"))
            .unwrap();
        assert_eq!(dir.script_versions("s").unwrap().len(), 50);
        // One more version than allowed while version 1 is active: version 2 goes, 1 stays.
        dir.write(|tx| {
            tx.execute(
                "INSERT INTO script_versions (version_id, account_id, script, number, etag,
                   main_module, bindings, limits, author, created_on)
                 SELECT ?1, account_id, script, 51, etag, main_module, bindings, limits, author,
                        created_on
                 FROM script_versions WHERE version_id = ?2",
                [Uuid::new_v4().to_string(), ids[49].to_string()],
            )?;
            prune_versions(tx, dir.account_id(), "s")
        })
        .unwrap();
        let versions = dir.script_versions("s").unwrap();
        assert_eq!(versions.len(), 50);
        assert!(versions.iter().any(|v| v.id == ids[0] && v.active));
        assert!(!versions.iter().any(|v| v.id == ids[1]));
    }
    }

    both_backends! {
    #[test]
    fn routes_belong_to_one_script_and_are_replaced_by_the_next_upload(state) {
        let dir = state.open();
        let (token, _) = dir.create_token("ci", Role::Bind, None).unwrap();
        let mut with_routes = upload(module(0));
        with_routes.routes = vec![route("a.example.com/*"), route("b.example.com/")];
        let script = dir.deploy_script(&token, "one", &with_routes).unwrap();
        assert_eq!(script.routes, with_routes.routes);

        // Same account, other script.
        let mut clash = upload(module(0));
        clash.routes = vec![route("c.example.com/*"), route("b.example.com/")];
        let err = dir.deploy_script(&token, "two", &clash).unwrap_err();
        let DirectoryError::RoutesTaken(conflicts) = &err else {
            panic!("{err}");
        };
        assert_eq!(
            conflicts,
            &[RouteConflict {
                index: 1,
                pattern: "b.example.com/".into(),
                holder: Some("one".into())
            }]
        );
        assert!(dir.script("two").unwrap().is_none(), "nothing stored");

        // Another account sees no name.
        let other = dir.create_account("other").unwrap();
        let other = dir.for_account(&other.id).unwrap().unwrap();
        let (their_token, _) = other.create_token("t", Role::Bind, None).unwrap();
        let err = other
            .deploy_script(&their_token, "one", &with_routes)
            .unwrap_err();
        let DirectoryError::RoutesTaken(conflicts) = &err else {
            panic!("{err}");
        };
        assert_eq!(conflicts.len(), 2);
        assert!(conflicts.iter().all(|c| c.holder.is_none()));

        // The holder may keep its routes; an upload replaces them; a rollback keeps them.
        let first_version = script.version_id;
        let mut fewer = upload(module(1));
        fewer.routes = vec![route("b.example.com/")];
        fewer.workers_dev = false;
        let script = dir.deploy_script(&token, "one", &fewer).unwrap();
        assert_eq!(script.routes, fewer.routes);
        assert!(!script.workers_dev);
        dir.activate_version("one", first_version).unwrap();
        let script = dir.script("one").unwrap().unwrap();
        assert_eq!(script.routes, fewer.routes);
        assert!(!script.workers_dev);
        // a.example.com is free now.
        let mut taken_over = upload(module(0));
        taken_over.routes = vec![route("a.example.com/*")];
        dir.deploy_script(&token, "two", &taken_over).unwrap();

        // Deleting frees the patterns.
        let deleted = dir.delete_script("one").unwrap();
        assert_eq!(deleted.routes, ["b.example.com/"]);
        other
            .deploy_script(&their_token, "one", &{
                let mut u = upload(module(0));
                u.routes = vec![route("b.example.com/")];
                u
            })
            .unwrap();
    }
    }

    both_backends! {
    #[test]
    fn a_bad_module_or_upload_changes_nothing(state) {
        let dir = state.open();
        let (token, _) = dir.create_token("ci", Role::Bind, None).unwrap();
        let good = dir.deploy_script(&token, "s", &upload(module(0))).unwrap();
        let revision = dir.revision().unwrap();
        let err = dir
            .deploy_script(&token, "s", &upload(b"\0asm\x01\0\0\0".to_vec()))
            .unwrap_err();
        assert!(
            matches!(
                err,
                DirectoryError::InvalidComponent(crate::ComponentRefusal::CoreModule)
            ),
            "{err}"
        );
        let mut bad = upload(module(1));
        bad.routes = vec![route("HTTPS://x.com/*"), route("X.com/")];
        bad.limits.insert("cpu_ms".into(), (-1).into());
        bad.limits.insert("isolation".into(), "isolate".into());
        let err = dir.deploy_script(&token, "s", &bad).unwrap_err();
        let DirectoryError::InvalidUpload(problems) = err else {
            panic!("{err}")
        };
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems[0].starts_with("metadata.routes[0].pattern: \"HTTPS://x.com/*\" has a scheme")
        );
        assert_eq!(
            problems[1],
            "metadata.routes[1].pattern: \"X.com/\" is not normalized (expected \"x.com/\")"
        );
        assert_eq!(
            problems[2],
            "metadata.limits.cpu_ms: expected a non-negative integer, found -1"
        );
        assert_eq!(
            problems[3],
            "metadata.limits.isolation: expected \"instance\" or \"request\", found \"isolate\""
        );
        assert_eq!(dir.revision().unwrap(), revision);
        assert_eq!(dir.script("s").unwrap().unwrap(), good);
    }
    }
}
