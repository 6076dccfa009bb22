//! The change feed: tells a cache when the directory may have changed, so it reloads within
//! milliseconds of a commit instead of polling.
//!
//! SQLite has no notifications across processes, so there the feed is today's
//! [`SQLITE_POLL`]. PostgreSQL's feed is one `LISTEN wvpc_directory` connection per store
//! (every write transaction sends `pg_notify('wvpc_directory', revision)`, delivered at
//! commit), a [`SAFETY_POLL`] in case a notification is lost, and, when the listening
//! connection drops, a reconnect with backoff after which every waiter is woken to reload in
//! full (notifications sent while it was away are gone).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::watch;

use super::postgres::PgStore;

/// How often a SQLite directory's revision is looked at.
pub const SQLITE_POLL: Duration = Duration::from_millis(100);

/// How often a PostgreSQL directory's revision is looked at even without a notification.
pub const SAFETY_POLL: Duration = Duration::from_secs(5);

/// Longest pause between two attempts to reconnect the listening connection.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the listener has seen: the highest revision notified, and how many times it
/// (re)connected (each one asks for a full reload).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Feed {
    pub(crate) revision: u64,
    pub(crate) connects: u64,
}

/// A subscription to a directory's changes ([`crate::Directory::changes`]).
#[derive(Debug)]
pub struct Changes {
    notified: Option<watch::Receiver<Feed>>,
}

impl Changes {
    pub(crate) fn polling() -> Self {
        Self { notified: None }
    }

    pub(crate) fn notified(store: &Arc<PgStore>) -> Self {
        let rx = store.feed.get_or_init(|| start_listener(store)).clone();
        Self { notified: Some(rx) }
    }

    /// Waits until the directory may have changed: a commit was announced (revision at
    /// least the one returned, when known), the listener reconnected, or the poll interval
    /// passed. The caller then compares [`crate::Directory::revision`] with what it has.
    pub async fn changed(&mut self) -> Option<u64> {
        let Some(rx) = &mut self.notified else {
            tokio::time::sleep(SQLITE_POLL).await;
            return None;
        };
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    // The store is gone; keep the caller's loop slow.
                    tokio::time::sleep(SAFETY_POLL).await;
                    return None;
                }
                Some(rx.borrow_and_update().revision)
            }
            () = tokio::time::sleep(SAFETY_POLL) => None,
        }
    }
}

fn start_listener(store: &Arc<PgStore>) -> watch::Receiver<Feed> {
    let (tx, rx) = watch::channel(Feed::default());
    let config = store.connect_config().clone();
    let tls = store.tls().clone();
    let label = store.label().to_owned();
    // Runs until the store's runtime stops (the store is dropped).
    store
        .runtime()
        .spawn(listen(config, tls, Arc::new(tx), label));
    rx
}

async fn listen(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    feed: Arc<watch::Sender<Feed>>,
    label: String,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let notified = feed.clone();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                if let Ok(revision) = n.payload().parse::<u64>() {
                                    notified.send_if_modified(|f| {
                                        let newer = revision > f.revision;
                                        f.revision = f.revision.max(revision);
                                        newer
                                    });
                                }
                            }
                            Ok(_) => {}
                            Err(err) => return err.to_string(),
                        }
                    }
                    "connection closed".to_owned()
                });
                match client.batch_execute("LISTEN wvpc_directory").await {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        // Whatever was committed while nobody listened: reload in full.
                        feed.send_modify(|f| f.connects += 1);
                        tracing::debug!(store = label, "listening for directory changes");
                        let why = driver.await.unwrap_or_else(|e| e.to_string());
                        tracing::warn!(
                            store = label,
                            why,
                            "directory change feed lost; reconnecting"
                        );
                    }
                    Err(err) => {
                        driver.abort();
                        tracing::warn!(store = label, error = %err, "LISTEN failed");
                    }
                }
                drop(client);
            }
            Err(err) => {
                tracing::warn!(store = label, error = %err, "directory change feed cannot connect");
            }
        }
        if feed.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
