//! Accounts and API tokens: bearer secrets scoped to one account with a role, stored only as
//! SHA-256 digests.
//!
//! A token is `wvpc_` + 32 random bytes (base64url), far too much entropy to guess, so one
//! unsalted SHA-256 is enough to make a stolen database useless for calling the API. The
//! digest is looked up by index and then compared again in constant time.

use std::fmt;

use crate::store::{Row, params};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::database::{Directory, now_rfc3339};
use crate::error::DirectoryError;
use crate::tunnel::parse_uuid;

/// Prefix of every token, so that leaked tokens are recognisable (secret scanners).
pub const TOKEN_PREFIX: &str = "wvpc_";

/// What a token may do. Each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// List and read services, tunnels and scripts.
    Read,
    /// Read, plus deploy scripts that bind services.
    Bind,
    /// Everything: create, replace and delete services and tunnels.
    Admin,
}

impl Role {
    /// `read`, `bind` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Bind => "bind",
            Role::Admin => "admin",
        }
    }

    /// Parses `read`, `bind` or `admin`.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "bind" => Some(Role::Bind),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API token as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// The token's id.
    pub id: Uuid,
    /// The account it acts for.
    pub account_id: String,
    /// A label for people.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Services a `bind` token may bind; `None`: every service of the account.
    pub services: Option<Vec<Uuid>>,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
}

impl ApiToken {
    /// Whether the token may bind `service_id` (its role and its service scope).
    pub fn may_bind(&self, service_id: Uuid) -> bool {
        self.role >= Role::Bind
            && (self.role == Role::Admin
                || self
                    .services
                    .as_ref()
                    .is_none_or(|scope| scope.contains(&service_id)))
    }
}

/// An account (tenant): owns tunnels, services, tokens and scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// 32 hex characters.
    pub id: String,
    /// A label for people.
    pub name: String,
    /// The DNS label of the account's scripts: `<script>.<subdomain>.<workers domain>`.
    pub subdomain: String,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
}

impl Directory {
    /// Creates another account, with a subdomain derived from `name` (see [`crate::subdomain`]).
    pub fn create_account(&self, name: &str) -> Result<Account, DirectoryError> {
        self.create_account_with_subdomain(name, None)
    }

    /// Creates another account with `subdomain`, or one derived from `name` when `None`;
    /// refuses an invalid or taken subdomain.
    pub fn create_account_with_subdomain(
        &self,
        name: &str,
        subdomain: Option<&str>,
    ) -> Result<Account, DirectoryError> {
        if let Some(problem) = subdomain.and_then(crate::subdomain::subdomain_problem) {
            return Err(DirectoryError::InvalidSubdomain {
                subdomain: subdomain.unwrap_or_default().to_owned(),
                problem,
            });
        }
        let mut bytes = [0u8; 16];
        rand::fill(&mut bytes);
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.write(|tx| {
            let subdomain = match subdomain {
                Some(subdomain) => {
                    let holder: Option<String> = tx.query_opt(
                        "SELECT account_id FROM accounts WHERE subdomain = ?1",
                        [subdomain],
                        |row| row.get(0),
                    )?;
                    if holder.is_some() {
                        return Err(DirectoryError::SubdomainTaken(subdomain.to_owned()));
                    }
                    subdomain.to_owned()
                }
                None => crate::subdomain::derive_unique(tx, name, &id)?,
            };
            let account = Account {
                id,
                name: name.to_owned(),
                subdomain,
                created_at: now_rfc3339(),
            };
            tx.execute(
                "INSERT INTO accounts (account_id, name, created_at, subdomain)
                 VALUES (?1, ?2, ?3, ?4)",
                [
                    &account.id,
                    &account.name,
                    &account.created_at,
                    &account.subdomain,
                ],
            )?;
            crate::teamnet::create_default_network(tx, &account.id)?;
            Ok(account)
        })
    }

    /// Every account, oldest first.
    pub fn list_accounts(&self) -> Result<Vec<Account>, DirectoryError> {
        self.read(|conn| {
            let rows = conn.query_map(
                "SELECT account_id, name, created_at, subdomain FROM accounts
                 ORDER BY created_at, account_id",
                params![],
                |row| {
                    Ok(Account {
                        id: row.get(0)?,
                        name: row.get(1)?,
                        created_at: row.get(2)?,
                        subdomain: row.get(3)?,
                    })
                },
            )?;
            Ok(rows)
        })
    }

    /// Creates a token for this directory's account; returns it with its secret, which is
    /// not stored and cannot be shown again.
    pub fn create_token(
        &self,
        name: &str,
        role: Role,
        services: Option<Vec<Uuid>>,
    ) -> Result<(ApiToken, String), DirectoryError> {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        let secret = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let token = ApiToken {
            id: Uuid::new_v4(),
            account_id: self.account_id().to_owned(),
            name: name.to_owned(),
            role,
            services,
            created_at: now_rfc3339(),
        };
        let scope = token
            .services
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|err| DirectoryError::Corrupt {
                what: "token scope".into(),
                detail: err.to_string(),
            })?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO api_tokens
                   (token_id, account_id, name, role, services, secret_sha256, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    token.id.to_string(),
                    token.account_id,
                    token.name,
                    token.role.as_str(),
                    scope,
                    digest(&secret).to_vec(),
                    token.created_at
                ],
            )?;
            Ok(())
        })?;
        tracing::debug!(token_id = %token.id, role = %role, "API token created");
        Ok((token, secret))
    }

    /// The token whose secret is `bearer`, in any account; `None` when none matches.
    pub fn authenticate(&self, bearer: &str) -> Result<Option<ApiToken>, DirectoryError> {
        let wanted = digest(bearer);
        let found = self.read(|conn| {
            conn.query_opt(
                "SELECT token_id, account_id, name, role, services, created_at, secret_sha256
                 FROM api_tokens WHERE secret_sha256 = ?1",
                [wanted.to_vec()],
                |row| Ok((RawToken::from_row(row)?, row.get::<Vec<u8>>(6)?)),
            )
        })?;
        let Some((raw, stored)) = found else {
            return Ok(None);
        };
        if !constant_time_eq(&stored, &wanted) {
            return Ok(None);
        }
        raw.into_token().map(Some)
    }

    /// This account's tokens, oldest first.
    pub fn list_tokens(&self) -> Result<Vec<ApiToken>, DirectoryError> {
        self.read(|conn| {
            let rows = conn.query_map(
                "SELECT token_id, account_id, name, role, services, created_at FROM api_tokens
                 WHERE account_id = ?1 ORDER BY created_at, token_id",
                [self.account_id()],
                RawToken::from_row,
            )?;
            rows.into_iter().map(|row| row.into_token()).collect()
        })
    }

    /// Revokes a token of this account; `false` when there was none with this id.
    pub fn delete_token(&self, id: Uuid) -> Result<bool, DirectoryError> {
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM api_tokens WHERE token_id = ?1 AND account_id = ?2",
                [id.to_string(), self.account_id().to_owned()],
            )? > 0)
        })
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares without an early exit, so timing does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct RawToken {
    id: String,
    account_id: String,
    name: String,
    role: String,
    services: Option<String>,
    created_at: String,
}

impl RawToken {
    fn from_row(row: &Row) -> Result<Self, DirectoryError> {
        Ok(Self {
            id: row.get(0)?,
            account_id: row.get(1)?,
            name: row.get(2)?,
            role: row.get(3)?,
            services: row.get(4)?,
            created_at: row.get(5)?,
        })
    }

    fn into_token(self) -> Result<ApiToken, DirectoryError> {
        let corrupt = |detail: String| DirectoryError::Corrupt {
            what: format!("API token {}", self.id),
            detail,
        };
        let role =
            Role::parse(&self.role).ok_or_else(|| corrupt(format!("role {:?}", self.role)))?;
        let services = self
            .services
            .as_deref()
            .map(serde_json::from_str::<Vec<Uuid>>)
            .transpose()
            .map_err(|err| corrupt(format!("service scope: {err}")))?;
        Ok(ApiToken {
            id: parse_uuid("token id", &self.id)?,
            account_id: self.account_id,
            name: self.name,
            role,
            services,
            created_at: self.created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    both_backends! {
    #[test]
    fn a_token_authenticates_only_with_its_exact_secret(state) {
        let dir = state.open();
        let (token, secret) = dir.create_token("ci", Role::Bind, None).unwrap();
        assert!(
            secret.starts_with(TOKEN_PREFIX) && secret.len() > 40,
            "{secret}"
        );
        assert_eq!(dir.authenticate(&secret).unwrap(), Some(token.clone()));
        assert_eq!(dir.authenticate(&format!("{secret}x")).unwrap(), None);
        assert_eq!(dir.authenticate("").unwrap(), None);
        // Only the digest is stored.
        let stored: Vec<u8> = dir
            .read(|tx| tx.query_one("SELECT secret_sha256 FROM api_tokens", params![], |r| r.get(0)))
            .unwrap();
        assert_eq!(stored, digest(&secret).to_vec());
        assert!(dir.delete_token(token.id).unwrap());
        assert_eq!(dir.authenticate(&secret).unwrap(), None);
    }
    }

    #[test]
    fn roles_include_the_ones_below_and_scopes_limit_binding() {
        let service = Uuid::new_v4();
        let other = Uuid::new_v4();
        let token = |role, services| ApiToken {
            id: Uuid::new_v4(),
            account_id: String::new(),
            name: String::new(),
            role,
            services,
            created_at: String::new(),
        };
        assert!(!token(Role::Read, None).may_bind(service));
        assert!(token(Role::Bind, None).may_bind(service));
        assert!(token(Role::Bind, Some(vec![service])).may_bind(service));
        assert!(!token(Role::Bind, Some(vec![service])).may_bind(other));
        assert!(token(Role::Admin, Some(vec![])).may_bind(other));
        assert!(Role::Admin > Role::Bind && Role::Bind > Role::Read);
    }

    both_backends! {
    #[test]
    fn accounts_are_separate_views(state) {
        let dir = state.open();
        let other = dir.create_account("other").unwrap();
        let view = dir.for_account(&other.id).unwrap().expect("account exists");
        assert_eq!(view.account_id(), other.id);
        assert!(dir.for_account("0".repeat(32).as_str()).unwrap().is_none());
        let (token, _) = view.create_token("t", Role::Read, None).unwrap();
        assert_eq!(token.account_id, other.id);
        assert!(dir.list_tokens().unwrap().is_empty());
        assert_eq!(view.list_tokens().unwrap(), vec![token]);
        let ids: Vec<String> = dir
            .list_accounts()
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(ids, vec![dir.account_id().to_owned(), other.id]);
    }
    }
}
