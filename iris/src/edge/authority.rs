//! Who may register a tunnel connection: the [`TunnelAuthority`] seam, and
//! [`CredentialsAuthority`], an in-memory implementation over minted tunnel credentials.
//!
//! The check is a future: it runs on the edge's single RPC thread, so an implementation
//! answers from memory and does any slow lookup (a directory read) elsewhere, never blocking
//! the registrations of other connectors.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;

use uuid::Uuid;
use wvpc_tunnel::Credentials;

/// How the `cause` of a retryable refusal for [`AuthFailure::Unavailable`] starts.
pub(crate) const UNAVAILABLE_CAUSE: &str = "cannot check the credentials now";

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
    /// The credentials could not be checked now (the directory is unreachable); the
    /// connector is told to retry, never that the tunnel is unknown.
    #[error("{UNAVAILABLE_CAUSE} ({0}); retry later")]
    Unavailable(String),
}

impl AuthFailure {
    /// Whether the connector should try again later (the failure is not about its
    /// credentials).
    pub fn is_retryable(&self) -> bool {
        matches!(self, AuthFailure::Unavailable(_))
    }
}

/// The outcome of a credentials check, once known.
pub type AuthCheck = Pin<Box<dyn Future<Output = Result<(), AuthFailure>> + Send + 'static>>;

/// Checks the credentials a connector presents in `registerConnection`.
pub trait TunnelAuthority: Send + Sync + 'static {
    /// `Ok` when `(account_tag, secret)` are the credentials of `tunnel_id`. Called on the
    /// edge's RPC thread: answer from memory, and move anything slow off it.
    fn authorize(&self, tunnel_id: Uuid, account_tag: &str, secret: &[u8]) -> AuthCheck;
}

/// Checks `(account_tag, secret)` against a tunnel's known credentials.
pub fn check_credentials(
    tunnel_id: Uuid,
    known_account: &str,
    known_secret: &[u8],
    account_tag: &str,
    secret: &[u8],
) -> Result<(), AuthFailure> {
    if known_account != account_tag {
        return Err(AuthFailure::WrongAccount(tunnel_id));
    }
    if !constant_time_eq(known_secret, secret) {
        return Err(AuthFailure::WrongSecret(tunnel_id));
    }
    Ok(())
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

impl CredentialsAuthority {
    fn check(&self, tunnel_id: Uuid, account_tag: &str, secret: &[u8]) -> Result<(), AuthFailure> {
        let tunnels = self
            .tunnels
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = tunnels
            .get(&tunnel_id)
            .ok_or(AuthFailure::UnknownTunnel(tunnel_id))?;
        check_credentials(
            tunnel_id,
            &known.account_tag,
            &known.tunnel_secret,
            account_tag,
            secret,
        )
    }
}

impl TunnelAuthority for CredentialsAuthority {
    fn authorize(&self, tunnel_id: Uuid, account_tag: &str, secret: &[u8]) -> AuthCheck {
        Box::pin(std::future::ready(self.check(
            tunnel_id,
            account_tag,
            secret,
        )))
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
        assert_eq!(authority.check(id, "acct", &creds.tunnel_secret), Ok(()));
        assert_eq!(
            authority.check(id, "other", &creds.tunnel_secret),
            Err(AuthFailure::WrongAccount(id))
        );
        assert_eq!(
            authority.check(id, "acct", b"nope"),
            Err(AuthFailure::WrongSecret(id))
        );
        let stranger = Uuid::new_v4();
        assert_eq!(
            authority.check(stranger, "acct", b"x"),
            Err(AuthFailure::UnknownTunnel(stranger))
        );
        authority.remove(id);
        assert_eq!(
            authority.check(id, "acct", &creds.tunnel_secret),
            Err(AuthFailure::UnknownTunnel(id))
        );
    }
}
