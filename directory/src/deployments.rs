//! What runtimes serve: every deployed script of every account as its active version, read in
//! one transaction ([`Directory::deployment_snapshot`]), and module bytes by content hash
//! ([`Directory::module_by_etag`]) so that a runtime fetches and compiles each module once.

use std::collections::HashMap;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::database::{Directory, read_revision};
use crate::error::DirectoryError;
use crate::scripts::{ScriptBinding, from_json};
use crate::store::params;

/// Everything runtimes serve, read in one consistent transaction, across ALL accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentSnapshot {
    /// The revision it was read at ([`Directory::revision`]).
    pub revision: u64,
    /// Every script, by account id then name.
    pub scripts: Vec<DeployedScript>,
}

/// One script as served: its account's subdomain, its active version, its routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployedScript {
    /// The owning account.
    pub account_id: String,
    /// The account's subdomain: the default host is `<name>.<subdomain>.<workers domain>`.
    pub subdomain: String,
    /// The script's name.
    pub name: String,
    /// The active version.
    pub version_id: Uuid,
    /// Its number.
    pub version_number: u64,
    /// SHA-256 of its module, hex ([`Directory::module_by_etag`]).
    pub etag: String,
    /// Name of the module part.
    pub main_module: String,
    /// Verified bindings of the version.
    pub bindings: Vec<ScriptBinding>,
    /// `limits` of the version, as uploaded.
    pub limits: Map<String, Value>,
    /// Normalized route patterns ([`crate::routes`]), in upload order.
    pub routes: Vec<String>,
    /// Whether the default host serves the script.
    pub workers_dev: bool,
}

impl Directory {
    /// Reads the revision and every deployed script in one read transaction, so the snapshot
    /// never mixes two commits.
    pub fn deployment_snapshot(&self) -> Result<DeploymentSnapshot, DirectoryError> {
        self.read_consistent(|tx| {
            let revision = read_revision(tx)?;
            let mut routes: HashMap<(String, String), Vec<String>> = HashMap::new();
            let rows = tx.query_map(
                "SELECT account_id, script, pattern FROM script_routes
                 ORDER BY account_id, script, position",
                params![],
                |row| Ok((row.get::<String>(0)?, row.get(1)?, row.get(2)?)),
            )?;
            for row in rows {
                let (account, script, pattern) = row;
                routes.entry((account, script)).or_default().push(pattern);
            }
            let rows = tx.query_map(
                "SELECT s.account_id, a.subdomain, s.name, v.version_id, v.number, v.etag,
                        v.main_module, v.bindings, v.limits, s.workers_dev
                 FROM scripts s
                 JOIN accounts a ON a.account_id = s.account_id
                 JOIN script_versions v ON v.version_id = s.active_version
                 ORDER BY s.account_id, s.name",
                params![],
                |row| {
                    Ok((
                        row.get::<String>(0)?,
                        row.get::<String>(1)?,
                        row.get::<String>(2)?,
                        row.get::<String>(3)?,
                        row.get::<i64>(4)?,
                        row.get::<String>(5)?,
                        row.get::<String>(6)?,
                        row.get::<String>(7)?,
                        row.get::<String>(8)?,
                        row.get::<bool>(9)?,
                    ))
                },
            )?;
            let mut scripts = Vec::new();
            for row in rows {
                let (
                    account_id,
                    subdomain,
                    name,
                    version_id,
                    number,
                    etag,
                    main_module,
                    bindings,
                    limits,
                    workers_dev,
                ) = row;
                let routes = routes
                    .remove(&(account_id.clone(), name.clone()))
                    .unwrap_or_default();
                scripts.push(DeployedScript {
                    bindings: from_json(&format!("bindings of script {name:?}"), &bindings)?,
                    limits: from_json(&format!("limits of script {name:?}"), &limits)?,
                    version_id: crate::tunnel::parse_uuid("script version id", &version_id)?,
                    version_number: u64::try_from(number).unwrap_or(0),
                    account_id,
                    subdomain,
                    name,
                    etag,
                    main_module,
                    routes,
                    workers_dev,
                });
            }
            Ok(DeploymentSnapshot { revision, scripts })
        })
    }

    /// Module bytes by content hash (any account); None if unknown.
    pub fn module_by_etag(&self, etag: &str) -> Result<Option<Vec<u8>>, DirectoryError> {
        self.read(|conn| {
            conn.query_opt(
                "SELECT module FROM modules WHERE etag = ?1",
                [etag],
                |row| row.get(0),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::component::fixtures;
    use crate::routes::ScriptRoute;
    use crate::scripts::{BindingRequest, ScriptUpload, ServiceRef};
    use crate::service_input::{HostInput, ServiceInput};
    use crate::tokens::Role;

    both_backends! {
    #[test]
    fn the_snapshot_holds_every_accounts_active_versions_with_routes(state) {
        let dir = state.open();
        assert_eq!(
            dir.deployment_snapshot().unwrap(),
            DeploymentSnapshot {
                revision: dir.revision().unwrap(),
                scripts: vec![]
            }
        );
        let (tunnel, _) = dir.create_tunnel("office").unwrap();
        let service = dir
            .create_service(&ServiceInput::http(
                "api",
                HostInput::hostname("api.internal", tunnel.id),
            ))
            .unwrap();
        let (token, _) = dir.create_token("ci", Role::Bind, None).unwrap();
        let mut upload = ScriptUpload::new("worker.wasm", fixtures::handler());
        upload.bindings = vec![BindingRequest {
            binding: "API".into(),
            target: crate::BindingTarget::Service(ServiceRef::Name("api".into())),
        }];
        upload.routes = vec![
            ScriptRoute {
                pattern: "api.example.com/*".into(),
                zone_name: Some("example.com".into()),
                custom_domain: false,
            },
            ScriptRoute {
                pattern: "shop.example.com/*".into(),
                zone_name: None,
                custom_domain: true,
            },
        ];
        upload.limits = json!({ "cpu_ms": 50 }).as_object().unwrap().clone();
        let first = dir.deploy_script(&token, "proxy", &upload).unwrap();
        // Version 2 has other limits and module name; rolling back to 1 brings its limits
        // back and keeps the script's routes.
        let mut again = upload.clone();
        again.main_module = "w.wasm".into();
        again.limits = Map::new();
        let second = dir.deploy_script(&token, "proxy", &again).unwrap();
        dir.activate_version("proxy", first.version_id).unwrap();

        let other = dir.create_account("Team B").unwrap();
        let other_dir = dir.for_account(&other.id).unwrap().unwrap();
        let (their_token, _) = other_dir.create_token("t", Role::Bind, None).unwrap();
        let mut theirs = ScriptUpload::new("w.wasm", fixtures::handler());
        theirs.workers_dev = false;
        let their_script = other_dir
            .deploy_script(&their_token, "proxy", &theirs)
            .unwrap();

        let snapshot = dir.deployment_snapshot().unwrap();
        assert_eq!(snapshot.revision, dir.revision().unwrap());
        let mut expected = vec![
            DeployedScript {
                account_id: dir.account_id().to_owned(),
                subdomain: "local".into(),
                name: "proxy".into(),
                version_id: first.version_id,
                version_number: 1,
                etag: first.etag.clone(),
                main_module: "worker.wasm".into(),
                bindings: vec![ScriptBinding::service("API", service.service_id)],
                limits: upload.limits.clone(),
                routes: vec!["api.example.com/*".into(), "shop.example.com/*".into()],
                workers_dev: true,
            },
            DeployedScript {
                account_id: other.id.clone(),
                subdomain: "team-b".into(),
                name: "proxy".into(),
                version_id: their_script.version_id,
                version_number: 1,
                etag: their_script.etag.clone(),
                main_module: "w.wasm".into(),
                bindings: vec![],
                limits: Map::new(),
                routes: vec![],
                workers_dev: false,
            },
        ];
        expected.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        assert_eq!(snapshot.scripts, expected);
        assert_ne!(second.version_id, first.version_id);
        assert_eq!(
            dir.module_by_etag(&first.etag).unwrap(),
            Some(fixtures::handler())
        );
        assert_eq!(dir.module_by_etag("0").unwrap(), None);

        // A subdomain change and a delete show in the next snapshot, at a newer revision.
        other_dir.set_subdomain("blue").unwrap();
        dir.delete_script("proxy").unwrap();
        let next = dir.deployment_snapshot().unwrap();
        assert!(next.revision > snapshot.revision);
        assert_eq!(
            next.scripts
                .iter()
                .map(|s| (s.subdomain.as_str(), s.name.as_str()))
                .collect::<Vec<_>>(),
            [("blue", "proxy")]
        );
    }
    }
}
