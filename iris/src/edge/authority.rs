//! Who may register a tunnel connection: the [`TunnelAuthority`] seam, and
//! [`CredentialsAuthority`], an in-memory implementation over minted tunnel credentials.

use std::collections::HashMap;
use std::sync::RwLock;

use uuid::Uuid;
use wvpc_tunnel::Credentials;

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No tunnel with this id exists.
    #[error("unknown tunnel {0}")]
    UnknownTunnel(Uuid),
    /// The tunnel exists but belongs to another account.
    #[error("tunnel {0} does not belong to the account in the credentials")]
    WrongAccount(Uuid),
    /// The secret does not match the tunnel's.
    #[error("wrong secret for tunnel {0}")]
    WrongSecret(Uuid),
}

/// Checks the credentials a connector presents in `registerConnection`.
pub trait TunnelAuthority: Send + Sync + 'static {
    /// `Ok` when `(account_tag, secret)` are the credentials of `tunnel_id`.
    fn authorize(
        &self,
        tunnel_id: Uuid,
        account_tag: &str,
        secret: &[u8],
    ) -> Result<(), AuthFailure>;
}

/// Tunnel credentials held in memory (the dev setup and tests; a deployment backs the trait
/// with the directory).
#[derive(Debug, Default)]
pub struct CredentialsAuthority {
    tunnels: RwLock<HashMap<Uuid, Credentials>>,
}

impl CredentialsAuthority {
    /// An authority that knows no tunnel.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a tunnel's credentials.
    pub fn insert(&self, credentials: Credentials) {
        self.tunnels
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(credentials.tunnel_id, credentials);
    }

    /// Forgets a tunnel; its connectors can no longer register (live ones stay connected).
    pub fn remove(&self, tunnel_id: Uuid) {
        self.tunnels
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&tunnel_id);
    }
}

impl TunnelAuthority for CredentialsAuthority {
    fn authorize(
        &self,
        tunnel_id: Uuid,
        account_tag: &str,
        secret: &[u8],
    ) -> Result<(), AuthFailure> {
        let tunnels = self
            .tunnels
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = tunnels
            .get(&tunnel_id)
            .ok_or(AuthFailure::UnknownTunnel(tunnel_id))?;
        if known.account_tag != account_tag {
            return Err(AuthFailure::WrongAccount(tunnel_id));
        }
        if !constant_time_eq(&known.tunnel_secret, secret) {
            return Err(AuthFailure::WrongSecret(tunnel_id));
        }
        Ok(())
    }
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_checked_field_by_field() {
        let authority = CredentialsAuthority::new();
        let creds = Credentials::mint("acct", Uuid::new_v4());
        authority.insert(creds.clone());
        let id = creds.tunnel_id;
        assert_eq!(
            authority.authorize(id, "acct", &creds.tunnel_secret),
            Ok(())
        );
        assert_eq!(
            authority.authorize(id, "other", &creds.tunnel_secret),
            Err(AuthFailure::WrongAccount(id))
        );
        assert_eq!(
            authority.authorize(id, "acct", b"nope"),
            Err(AuthFailure::WrongSecret(id))
        );
        let stranger = Uuid::new_v4();
        assert_eq!(
            authority.authorize(stranger, "acct", b"x"),
            Err(AuthFailure::UnknownTunnel(stranger))
        );
        authority.remove(id);
        assert_eq!(
            authority.authorize(id, "acct", &creds.tunnel_secret),
            Err(AuthFailure::UnknownTunnel(id))
        );
    }
}
