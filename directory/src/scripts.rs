//! Deployed scripts: the wasm module, its `vpc_service` bindings, and the check made at deploy
//! time that every binding names a service of the account that the deploying token may bind.
//!
//! Bindings may name their service by id or by name; names are resolved to ids here, inside
//! the same write transaction that stores the script, so what is stored is always a set of
//! existing, permitted service ids.

use std::fmt;

use rusqlite::{OptionalExtension, Row, Transaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::database::{Directory, now_rfc3339};
use crate::error::DirectoryError;
use crate::tokens::{ApiToken, Role};

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

/// One requested binding of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRequest {
    /// Name the script uses (`env.API`).
    pub binding: String,
    /// The service it should reach.
    pub service: ServiceRef,
}

/// A stored, verified binding (`{type:"vpc_service", name, service_id}` in the API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptBinding {
    /// Always `vpc_service`.
    #[serde(rename = "type")]
    pub binding_type: String,
    /// Name the script uses.
    pub name: String,
    /// The bound service.
    pub service_id: Uuid,
}

/// A deployed script (without its module bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    /// The script's name.
    pub id: String,
    /// SHA-256 of the module, hex.
    pub etag: String,
    /// Module size in bytes.
    pub size: usize,
    /// Name of the module part (`main_module` of the metadata).
    pub main_module: String,
    /// Verified bindings.
    pub bindings: Vec<ScriptBinding>,
    /// First upload, RFC 3339 UTC.
    pub created_on: String,
    /// Last upload, RFC 3339 UTC.
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
}

impl BindingRefusal {
    /// Whether the refusal is about permission (HTTP 403) rather than a wrong request (400).
    pub fn is_permission(&self) -> bool {
        matches!(
            self,
            BindingRefusal::ForeignService { .. } | BindingRefusal::NotPermitted { .. }
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
        }
    }
}

impl Directory {
    /// Verifies every binding for `token` (all refusals at once) and stores the script,
    /// replacing an earlier upload of the same name. The token must act for this directory's
    /// account (the API checks that before it gets here).
    pub fn deploy_script(
        &self,
        token: &ApiToken,
        name: &str,
        main_module: &str,
        module: &[u8],
        bindings: &[BindingRequest],
    ) -> Result<Script, DirectoryError> {
        check_script_name(name)?;
        let etag: String = Sha256::digest(module)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let script = self.write(|tx| {
            let verified = verify_bindings(tx, self.account_id(), token, bindings)?;
            let now = now_rfc3339();
            let created_on: Option<String> = tx
                .query_row(
                    "SELECT created_on FROM scripts WHERE account_id = ?1 AND name = ?2",
                    [self.account_id(), name],
                    |row| row.get(0),
                )
                .optional()?;
            let script = Script {
                id: name.to_owned(),
                etag,
                size: module.len(),
                main_module: main_module.to_owned(),
                bindings: verified,
                created_on: created_on.unwrap_or_else(|| now.clone()),
                modified_on: now,
            };
            let bindings_json =
                serde_json::to_string(&script.bindings).map_err(|err| DirectoryError::Corrupt {
                    what: "script bindings".into(),
                    detail: err.to_string(),
                })?;
            tx.execute(
                "INSERT INTO scripts (account_id, name, main_module, module, bindings, etag,
                                      created_on, modified_on)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (account_id, name) DO UPDATE SET main_module = ?3, module = ?4,
                   bindings = ?5, etag = ?6, modified_on = ?8",
                rusqlite::params![
                    self.account_id(),
                    name,
                    script.main_module,
                    module,
                    bindings_json,
                    script.etag,
                    script.created_on,
                    script.modified_on
                ],
            )?;
            Ok(script)
        })?;
        tracing::debug!(
            script = name,
            bindings = script.bindings.len(),
            "script deployed"
        );
        Ok(script)
    }

    /// The account's scripts, by name.
    pub fn list_scripts(&self) -> Result<Vec<Script>, DirectoryError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {SCRIPT_COLUMNS} FROM scripts WHERE account_id = ?1 ORDER BY name"
            ))?;
            let rows = stmt.query_map([self.account_id()], script_from_row)?;
            rows.map(|row| row?).collect()
        })
    }

    /// One script, if the account has it.
    pub fn script(&self, name: &str) -> Result<Option<Script>, DirectoryError> {
        self.read(|conn| {
            conn.query_row(
                &format!(
                    "SELECT {SCRIPT_COLUMNS} FROM scripts WHERE account_id = ?1 AND name = ?2"
                ),
                [self.account_id(), name],
                script_from_row,
            )
            .optional()?
            .transpose()
        })
    }

    /// A script's module bytes.
    pub fn script_module(&self, name: &str) -> Result<Option<Vec<u8>>, DirectoryError> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT module FROM scripts WHERE account_id = ?1 AND name = ?2",
                    [self.account_id(), name],
                    |row| row.get(0),
                )
                .optional()?)
        })
    }

    /// Deletes a script.
    pub fn delete_script(&self, name: &str) -> Result<(), DirectoryError> {
        self.write(|tx| {
            let deleted = tx.execute(
                "DELETE FROM scripts WHERE account_id = ?1 AND name = ?2",
                [self.account_id(), name],
            )?;
            if deleted == 0 {
                return Err(DirectoryError::ScriptNotFound(name.to_owned()));
            }
            Ok(())
        })
    }
}

const SCRIPT_COLUMNS: &str =
    "name, etag, length(module), main_module, bindings, created_on, modified_on";

fn script_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Script, DirectoryError>> {
    let name: String = row.get(0)?;
    let bindings: String = row.get(4)?;
    let size: i64 = row.get(2)?;
    let bindings = match serde_json::from_str(&bindings) {
        Ok(b) => b,
        Err(err) => {
            return Ok(Err(DirectoryError::Corrupt {
                what: format!("bindings of script {name:?}"),
                detail: err.to_string(),
            }));
        }
    };
    Ok(Ok(Script {
        id: name,
        etag: row.get(1)?,
        size: usize::try_from(size).unwrap_or(0),
        main_module: row.get(3)?,
        bindings,
        created_on: row.get(5)?,
        modified_on: row.get(6)?,
    }))
}

/// Resolves and checks every binding; all refusals at once.
fn verify_bindings(
    tx: &Transaction<'_>,
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
        let (service_id, service_name) = match &request.service {
            ServiceRef::Id(id) => {
                let owner: Option<(String, String)> = tx
                    .query_row(
                        "SELECT account_id, name FROM services WHERE service_id = ?1",
                        [id.to_string()],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
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
                let mut stmt = tx.prepare_cached(
                    "SELECT service_id FROM services WHERE account_id = ?1 AND name = ?2
                     ORDER BY created_at, service_id",
                )?;
                let ids = stmt
                    .query_map([account, name.as_str()], |row| row.get::<_, String>(0))?
                    .map(|id| crate::tunnel::parse_uuid("service id", &id?))
                    .collect::<Result<Vec<Uuid>, DirectoryError>>()?;
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
        verified.push(ScriptBinding {
            binding_type: "vpc_service".into(),
            name: binding,
            service_id,
        });
    }
    if refusals.is_empty() {
        Ok(verified)
    } else {
        Err(DirectoryError::BindingsRefused(refusals))
    }
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
