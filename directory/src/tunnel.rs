//! Tunnels: named, per-account records holding the secret a connector proves it knows when it
//! registers (cloudflared credentials), and the check iris runs on each registration.

use crate::store::{Row, Tx, params};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wvpc_tunnel::Credentials;

use crate::database::{Directory, now_rfc3339};
use crate::error::DirectoryError;

/// Longest tunnel name accepted.
pub const MAX_TUNNEL_NAME_LEN: usize = 255;

/// A tunnel as listed (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    /// The tunnel's UUID (`TunnelID` in cloudflared credentials).
    pub id: Uuid,
    /// Name, unique in the account.
    pub name: String,
    /// Account the tunnel belongs to (`AccountTag`).
    pub account_tag: String,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
}

/// Why a connector's registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum TunnelAuthError {
    /// No tunnel with that id.
    #[error("unknown tunnel {0}")]
    UnknownTunnel(Uuid),
    /// The tunnel exists but belongs to another account than the credentials say.
    #[error("tunnel {0} does not belong to the account in the credentials")]
    WrongAccount(Uuid),
    /// The secret does not match.
    #[error("wrong secret for tunnel {0}")]
    WrongSecret(Uuid),
    /// The directory could not be read.
    #[error("cannot check tunnel credentials: {0}")]
    Store(#[from] DirectoryError),
}

const TUNNEL_COLUMNS: &str = "tunnel_id, name, account_id, created_at";

impl Directory {
    /// Creates a tunnel with fresh credentials (random 32-byte secret).
    ///
    /// Names are unique per account, 1..=255 characters without control characters, and must
    /// not look like a UUID (commands accept "id or name").
    pub fn create_tunnel(&self, name: &str) -> Result<(Tunnel, Credentials), DirectoryError> {
        check_tunnel_name(name)?;
        let credentials = Credentials::mint(self.account_id(), Uuid::new_v4());
        let tunnel = Tunnel {
            id: credentials.tunnel_id,
            name: name.to_owned(),
            account_tag: self.account_id().to_owned(),
            created_at: now_rfc3339(),
        };
        self.write(|tx| {
            if find_by_name(tx, self.account_id(), name)?.is_some() {
                return Err(DirectoryError::TunnelNameTaken(name.to_owned()));
            }
            tx.execute(
                "INSERT INTO tunnels (tunnel_id, account_id, name, secret, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    tunnel.id.to_string(),
                    tunnel.account_tag,
                    tunnel.name,
                    credentials.tunnel_secret,
                    tunnel.created_at
                ],
            )?;
            Ok(())
        })?;
        tracing::debug!(tunnel_id = %tunnel.id, name, "tunnel created");
        Ok((tunnel, credentials))
    }

    /// Every tunnel of the account, oldest first.
    pub fn list_tunnels(&self) -> Result<Vec<Tunnel>, DirectoryError> {
        self.read(|tx| {
            tx.query_map(
                &format!(
                    "SELECT {TUNNEL_COLUMNS} FROM tunnels WHERE account_id = ?1
                     ORDER BY created_at, tunnel_id"
                ),
                params![self.account_id()],
                |row| RawTunnel::from_row(row)?.into_tunnel(),
            )
        })
    }

    /// The tunnel with this id, if it is in the account.
    pub fn tunnel(&self, id: Uuid) -> Result<Option<Tunnel>, DirectoryError> {
        self.read(|conn| find_by_id(conn, self.account_id(), id))
    }

    /// The tunnel with this name, if any.
    pub fn tunnel_by_name(&self, name: &str) -> Result<Option<Tunnel>, DirectoryError> {
        self.read(|conn| find_by_name(conn, self.account_id(), name))
    }

    /// The tunnel named by `id_or_name`: a UUID is taken as an id, anything else as a name.
    pub fn find_tunnel(&self, id_or_name: &str) -> Result<Option<Tunnel>, DirectoryError> {
        match Uuid::parse_str(id_or_name) {
            Ok(id) => self.tunnel(id),
            Err(_) => self.tunnel_by_name(id_or_name),
        }
    }

    /// The credentials of a tunnel (to print its token again).
    pub fn tunnel_credentials(&self, id: Uuid) -> Result<Option<Credentials>, DirectoryError> {
        self.read(|conn| {
            let secret: Option<Vec<u8>> = conn.query_opt(
                "SELECT secret FROM tunnels WHERE tunnel_id = ?1 AND account_id = ?2",
                params![id.to_string(), self.account_id()],
                |row| row.get(0),
            )?;
            Ok(secret.map(|tunnel_secret| Credentials {
                account_tag: self.account_id().to_owned(),
                tunnel_secret,
                tunnel_id: id,
                endpoint: String::new(),
            }))
        })
    }

    /// Deletes a tunnel; refused while services or network routes reference it (the error
    /// lists them: a route is not deleted behind the user's back, as cloudflared's `tunnel
    /// delete` also leaves that to `route ip delete`).
    pub fn delete_tunnel(&self, id: Uuid) -> Result<Tunnel, DirectoryError> {
        let tunnel = self.write(|tx| {
            let tunnel = find_by_id(tx, self.account_id(), id)?
                .ok_or_else(|| DirectoryError::TunnelNotFound(id.to_string()))?;
            let users = tx.query_map(
                "SELECT service_id, name FROM services WHERE tunnel_id = ?1
                 ORDER BY created_at, service_id",
                params![id.to_string()],
                |row| {
                    Ok((
                        parse_uuid("service id", &row.get::<String>(0)?)?,
                        row.get::<String>(1)?,
                    ))
                },
            )?;
            let routes = crate::teamnet::routes_of_tunnel(tx, id)?;
            if !users.is_empty() || !routes.is_empty() {
                return Err(DirectoryError::TunnelInUse {
                    id,
                    name: tunnel.name,
                    services: users,
                    routes,
                });
            }
            tx.execute(
                "DELETE FROM tunnels WHERE tunnel_id = ?1",
                params![id.to_string()],
            )?;
            Ok(tunnel)
        })?;
        tracing::debug!(tunnel_id = %id, name = tunnel.name, "tunnel deleted");
        Ok(tunnel)
    }

    /// Checks a connector's credentials: the tunnel exists, belongs to `account_tag`, and
    /// `secret` matches (compared in constant time).
    pub fn authorize_tunnel(
        &self,
        tunnel_id: Uuid,
        account_tag: &str,
        secret: &[u8],
    ) -> Result<(), TunnelAuthError> {
        let stored: Option<(String, Vec<u8>)> = self.read(|conn| {
            conn.query_opt(
                "SELECT account_id, secret FROM tunnels WHERE tunnel_id = ?1",
                params![tunnel_id.to_string()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
        })?;
        let Some((account, stored_secret)) = stored else {
            return Err(TunnelAuthError::UnknownTunnel(tunnel_id));
        };
        if account != account_tag {
            return Err(TunnelAuthError::WrongAccount(tunnel_id));
        }
        if !constant_time_eq(&stored_secret, secret) {
            return Err(TunnelAuthError::WrongSecret(tunnel_id));
        }
        Ok(())
    }
}

fn check_tunnel_name(name: &str) -> Result<(), DirectoryError> {
    let reason = if name.trim().is_empty() {
        Some("must not be empty; give the tunnel a name")
    } else if name.chars().count() > MAX_TUNNEL_NAME_LEN {
        Some("is longer than 255 characters")
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if name != name.trim() {
        Some("must not start or end with whitespace")
    } else if Uuid::parse_str(name).is_ok() {
        Some("must not be a UUID (commands take a tunnel id or name, so it would be ambiguous)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DirectoryError::InvalidTunnelName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn find_by_id(conn: &Tx<'_>, account: &str, id: Uuid) -> Result<Option<Tunnel>, DirectoryError> {
    conn.query_opt(
        &format!("SELECT {TUNNEL_COLUMNS} FROM tunnels WHERE tunnel_id = ?1 AND account_id = ?2"),
        [id.to_string(), account.to_owned()],
        RawTunnel::from_row,
    )?
    .map(RawTunnel::into_tunnel)
    .transpose()
}

fn find_by_name(
    conn: &Tx<'_>,
    account: &str,
    name: &str,
) -> Result<Option<Tunnel>, DirectoryError> {
    conn.query_opt(
        &format!("SELECT {TUNNEL_COLUMNS} FROM tunnels WHERE name = ?1 AND account_id = ?2"),
        [name, account],
        RawTunnel::from_row,
    )?
    .map(RawTunnel::into_tunnel)
    .transpose()
}

/// All tunnel ids of an account (for service validation).
pub(crate) fn tunnel_ids(conn: &Tx<'_>, account: &str) -> Result<Vec<Uuid>, DirectoryError> {
    conn.query_map(
        "SELECT tunnel_id FROM tunnels WHERE account_id = ?1",
        params![account],
        |row| parse_uuid("tunnel id", &row.get::<String>(0)?),
    )
}

pub(crate) fn parse_uuid(what: &str, text: &str) -> Result<Uuid, DirectoryError> {
    Uuid::parse_str(text).map_err(|_| DirectoryError::Corrupt {
        what: what.to_owned(),
        detail: format!("{text:?} is not a UUID"),
    })
}

struct RawTunnel {
    id: String,
    name: String,
    account_tag: String,
    created_at: String,
}

impl RawTunnel {
    fn from_row(row: &Row) -> Result<Self, DirectoryError> {
        Ok(Self {
            id: row.get(0)?,
            name: row.get(1)?,
            account_tag: row.get(2)?,
            created_at: row.get(3)?,
        })
    }

    fn into_tunnel(self) -> Result<Tunnel, DirectoryError> {
        Ok(Tunnel {
            id: parse_uuid("tunnel id", &self.id)?,
            name: self.name,
            account_tag: self.account_tag,
            created_at: self.created_at,
        })
    }
}

/// Compares secrets without an early exit, so timing does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_input::{HostInput, ServiceInput};

    both_backends! {
    #[test]
    fn create_list_find_and_credentials(state) {
        let dir = state.open();
        let (tunnel, creds) = dir.create_tunnel("home").unwrap();
        assert_eq!(creds.tunnel_id, tunnel.id);
        assert_eq!(creds.account_tag, dir.account_id());
        assert_eq!(tunnel.account_tag, dir.account_id());
        assert_eq!(creds.tunnel_secret.len(), 32);

        let (office, _) = dir.create_tunnel("office").unwrap();
        let listed = dir.list_tunnels().unwrap();
        assert_eq!(listed, vec![tunnel.clone(), office.clone()]);
        assert_eq!(dir.tunnel(tunnel.id).unwrap(), Some(tunnel.clone()));
        assert_eq!(dir.tunnel_by_name("office").unwrap(), Some(office.clone()));
        assert_eq!(
            dir.find_tunnel(&office.id.to_string()).unwrap(),
            Some(office)
        );
        assert_eq!(dir.find_tunnel("home").unwrap(), Some(tunnel.clone()));
        assert_eq!(dir.find_tunnel("nope").unwrap(), None);
        assert_eq!(dir.tunnel(Uuid::new_v4()).unwrap(), None);

        // The token printed again is the same one.
        let again = dir.tunnel_credentials(tunnel.id).unwrap().unwrap();
        assert_eq!(again.to_token(), creds.to_token());
    }
    }

    both_backends! {
    #[test]
    fn names_are_unique_and_well_formed(state) {
        let dir = state.open();
        dir.create_tunnel("home").unwrap();
        assert!(
            matches!(dir.create_tunnel("home"), Err(DirectoryError::TunnelNameTaken(n)) if n == "home")
        );
        for bad in [
            "",
            "  ",
            " home",
            "a\tb",
            &"x".repeat(256),
            "6f1c1c4e-8a0b-4b7e-9d5a-2f6f0e0c1a11",
        ] {
            let err = dir.create_tunnel(bad).unwrap_err();
            assert!(
                matches!(err, DirectoryError::InvalidTunnelName { .. }),
                "{bad:?}: {err}"
            );
        }
        assert!(dir.create_tunnel("my home lab").is_ok());
    }
    }

    both_backends! {
    #[test]
    fn authorization_checks_tunnel_account_and_secret(state) {
        let dir = state.open();
        let (tunnel, creds) = dir.create_tunnel("home").unwrap();
        dir.authorize_tunnel(tunnel.id, &creds.account_tag, &creds.tunnel_secret)
            .unwrap();

        let unknown = Uuid::new_v4();
        assert!(matches!(
            dir.authorize_tunnel(unknown, &creds.account_tag, &creds.tunnel_secret),
            Err(TunnelAuthError::UnknownTunnel(id)) if id == unknown
        ));
        assert!(matches!(
            dir.authorize_tunnel(
                tunnel.id,
                "0123456789abcdef0123456789abcdef",
                &creds.tunnel_secret
            ),
            Err(TunnelAuthError::WrongAccount(_))
        ));
        let mut wrong = creds.tunnel_secret.clone();
        wrong[31] ^= 1;
        assert!(matches!(
            dir.authorize_tunnel(tunnel.id, &creds.account_tag, &wrong),
            Err(TunnelAuthError::WrongSecret(_))
        ));
        assert!(matches!(
            dir.authorize_tunnel(tunnel.id, &creds.account_tag, &creds.tunnel_secret[..31]),
            Err(TunnelAuthError::WrongSecret(_))
        ));

        dir.delete_tunnel(tunnel.id).unwrap();
        assert!(matches!(
            dir.authorize_tunnel(tunnel.id, &creds.account_tag, &creds.tunnel_secret),
            Err(TunnelAuthError::UnknownTunnel(_))
        ));
    }
    }

    both_backends! {
    #[test]
    fn delete_is_refused_while_services_use_the_tunnel(state) {
        let dir = state.open();
        let (tunnel, _) = dir.create_tunnel("home").unwrap();
        let api = dir
            .create_service(&ServiceInput::http(
                "api",
                HostInput::hostname("api.internal", tunnel.id),
            ))
            .unwrap();
        let err = dir.delete_tunnel(tunnel.id).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, DirectoryError::TunnelInUse { services, .. } if services == &vec![(api.service_id, "api".to_owned())])
        );
        assert!(
            text.contains("\"api\"") && text.contains(&api.service_id.to_string()),
            "{text}"
        );
        assert!(
            dir.tunnel(tunnel.id).unwrap().is_some(),
            "the refused delete changed nothing"
        );

        dir.delete_service(api.service_id).unwrap();
        assert_eq!(dir.delete_tunnel(tunnel.id).unwrap().id, tunnel.id);
        assert!(dir.tunnel(tunnel.id).unwrap().is_none());
        assert!(matches!(
            dir.delete_tunnel(tunnel.id),
            Err(DirectoryError::TunnelNotFound(_))
        ));
    }
    }

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
