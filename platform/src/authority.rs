//! [`DirectoryAuthority`]: connector registrations checked against the directory's tunnels,
//! from memory.
//!
//! The edge checks credentials on its single RPC thread, so a directory read there would stall
//! every other registration (and SQLite may wait up to its busy timeout for a lock). The
//! authority keeps every tunnel's credentials in memory, refreshed by the route watcher
//! ([`crate::live_routes`]) with each directory revision. A tunnel it does not know (created
//! since the last refresh, or truly unknown) is looked up once on a blocking thread; if the
//! directory cannot be read, the connector is told to retry, never that its tunnel is
//! unknown (a connector stops for good on that answer).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use uuid::Uuid;
use wvpc_directory::{Directory, TunnelAuthError, TunnelKey};
use wvpc_iris::edge::{AuthCheck, AuthFailure, TunnelAuthority, check_credentials};

/// Tunnel credentials by tunnel id.
type Keys = HashMap<Uuid, TunnelKey>;

/// Checks registrations against the directory's tunnels (see the module docs).
pub struct DirectoryAuthority {
    directory: Arc<Directory>,
    keys: RwLock<Arc<Keys>>,
    /// Where a lookup of an unknown tunnel runs (the process's tokio runtime, not the edge's
    /// RPC thread).
    blocking: tokio::runtime::Handle,
}

impl std::fmt::Debug for DirectoryAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryAuthority")
            .field("tunnels", &self.current().len())
            .finish_non_exhaustive()
    }
}

impl DirectoryAuthority {
    /// An authority over `directory` that knows `keys` until the next [`refresh`]; slow
    /// lookups run on the current tokio runtime.
    ///
    /// [`refresh`]: DirectoryAuthority::refresh
    pub fn new(directory: Arc<Directory>, keys: Vec<TunnelKey>) -> Self {
        Self {
            directory,
            keys: RwLock::new(Arc::new(index(keys))),
            blocking: tokio::runtime::Handle::current(),
        }
    }

    /// Replaces the known credentials with those of a newer directory revision; returns the
    /// tunnels that were known before and are gone now (deleted).
    pub fn refresh(&self, keys: Vec<TunnelKey>) -> Vec<Uuid> {
        let new = Arc::new(index(keys));
        let old = std::mem::replace(
            &mut *self
                .keys
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            new.clone(),
        );
        old.keys()
            .filter(|id| !new.contains_key(id))
            .copied()
            .collect()
    }

    fn current(&self) -> Arc<Keys> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn index(keys: Vec<TunnelKey>) -> Keys {
    keys.into_iter().map(|k| (k.tunnel_id, k)).collect()
}

impl TunnelAuthority for DirectoryAuthority {
    fn authorize(&self, tunnel_id: Uuid, account_tag: &str, secret: &[u8]) -> AuthCheck {
        if let Some(known) = self.current().get(&tunnel_id) {
            return Box::pin(std::future::ready(check_credentials(
                tunnel_id,
                &known.account_tag,
                &known.secret,
                account_tag,
                secret,
            )));
        }
        let directory = self.directory.clone();
        let account_tag = account_tag.to_owned();
        let secret = secret.to_vec();
        let lookup = self
            .blocking
            .spawn_blocking(move || directory.authorize_tunnel(tunnel_id, &account_tag, &secret));
        Box::pin(async move {
            match lookup.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(TunnelAuthError::UnknownTunnel(id))) => Err(AuthFailure::UnknownTunnel(id)),
                Ok(Err(TunnelAuthError::WrongAccount(id))) => Err(AuthFailure::WrongAccount(id)),
                Ok(Err(TunnelAuthError::WrongSecret(id))) => Err(AuthFailure::WrongSecret(id)),
                Ok(Err(TunnelAuthError::Store(err))) => {
                    tracing::error!(%tunnel_id, error = %err, "directory unavailable while authorizing a tunnel");
                    Err(AuthFailure::Unavailable(
                        "the directory cannot be read".into(),
                    ))
                }
                Err(join) => {
                    tracing::error!(%tunnel_id, error = %join, "tunnel lookup task failed");
                    Err(AuthFailure::Unavailable("the tunnel lookup failed".into()))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempState(std::path::PathBuf);

    impl Drop for TempState {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn directory() -> (TempState, Arc<Directory>) {
        let dir = std::env::temp_dir().join(format!("wvpc-authority-{}", Uuid::new_v4()));
        let directory = Directory::open(&dir).expect("open directory");
        (TempState(dir), Arc::new(directory))
    }

    /// A fault: the tables a lookup reads are gone, so every read fails.
    fn break_directory(directory: &Directory) {
        rusqlite::Connection::open(directory.path())
            .unwrap()
            .execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE services; DROP TABLE tunnels;")
            .unwrap();
    }

    #[tokio::test]
    async fn known_tunnels_are_checked_from_memory_and_new_ones_in_the_directory() {
        let (_state, directory) = directory();
        let (tunnel, credentials) = directory.create_tunnel("office").unwrap();
        let authority = DirectoryAuthority::new(directory.clone(), Vec::new());
        let account = credentials.account_tag.clone();
        // Not in memory yet: found in the directory.
        assert_eq!(
            authority
                .authorize(tunnel.id, &account, &credentials.tunnel_secret)
                .await,
            Ok(())
        );
        assert_eq!(
            authority.authorize(tunnel.id, &account, b"wrong").await,
            Err(AuthFailure::WrongSecret(tunnel.id))
        );
        let stranger = Uuid::new_v4();
        assert_eq!(
            authority.authorize(stranger, &account, b"x").await,
            Err(AuthFailure::UnknownTunnel(stranger))
        );
        // In memory: answered even when the directory can no longer be read.
        assert!(
            authority
                .refresh(directory.route_snapshot().unwrap().tunnels)
                .is_empty()
        );
        break_directory(&directory);
        assert_eq!(
            authority
                .authorize(tunnel.id, &account, &credentials.tunnel_secret)
                .await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn a_refresh_names_the_tunnels_that_were_deleted() {
        let (_state, directory) = directory();
        let (kept, _) = directory.create_tunnel("kept").unwrap();
        let (deleted, _) = directory.create_tunnel("deleted").unwrap();
        let authority = DirectoryAuthority::new(
            directory.clone(),
            directory.route_snapshot().unwrap().tunnels,
        );
        directory.delete_tunnel(deleted.id).unwrap();
        let gone = authority.refresh(directory.route_snapshot().unwrap().tunnels);
        assert_eq!(gone, vec![deleted.id]);
        assert!(authority.current().contains_key(&kept.id));
    }

    #[tokio::test]
    async fn an_unreadable_directory_is_a_retryable_refusal_never_an_unknown_tunnel() {
        let (_state, directory) = directory();
        let authority = DirectoryAuthority::new(directory.clone(), Vec::new());
        break_directory(&directory);
        let failure = authority
            .authorize(Uuid::new_v4(), "acct", b"secret")
            .await
            .unwrap_err();
        assert!(
            matches!(failure, AuthFailure::Unavailable(_)),
            "{failure:?}"
        );
        assert!(failure.is_retryable());
    }
}
