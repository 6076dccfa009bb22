//! Live script output for `wvpc tail`: [`TailHub`] is a [`ScriptOutput`] that prints every
//! line as [`PrefixedOutput`] does and also publishes it, and every request's outcome, as a
//! [`TailEvent`] to the live subscribers of that script.
//!
//! Subscribers are per (account, script): a subscriber only ever sees its own script's
//! events. With nobody subscribed, publishing costs one atomic load; with subscribers to
//! other scripts, a read lock and a hash lookup. Events are built only for a script that has
//! a subscriber.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::script_output::{
    PrefixedOutput, RequestOutcome, RequestSummary, ScriptLine, ScriptOutput, ScriptStream,
};

/// Events buffered per script for a slow subscriber; beyond that it misses the oldest and
/// its next `recv` reports how many (`RecvError::Lagged`).
pub const TAIL_BUFFER: usize = 1024;

/// One event of a script, as `wvpc tail` shows it. Serialized as one flat JSON object:
/// `{"timestamp_ms":…,"account_id":…,"script":…,"version":…,"request_id":…,"type":"output",
/// "stream":"stdout","text":…}` or `{…,"type":"request","method":"GET","url":…,"status":200,
/// "outcome":"ok"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailEvent {
    /// When it happened, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The account that owns the script.
    pub account_id: String,
    /// The script's name.
    pub script: String,
    /// The version that ran.
    pub version: String,
    /// The request it belongs to (`wvpc-request-id`).
    pub request_id: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: TailEventKind,
}

/// What a [`TailEvent`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TailEventKind {
    /// A line the script printed.
    Output {
        /// Stdout or stderr.
        stream: ScriptStream,
        /// The line, without its line ending.
        text: String,
    },
    /// A request the script served, once its response head was ready.
    Request {
        /// The request method.
        method: String,
        /// `http://<host><path and query>` as the runtime received it.
        url: String,
        /// The response status.
        status: u16,
        /// How it ended.
        outcome: RequestOutcome,
    },
}

type Channels = HashMap<String, HashMap<String, broadcast::Sender<TailEvent>>>;

/// The live subscribers of every script, and the output sink that feeds them.
pub struct TailHub {
    print: Arc<dyn ScriptOutput>,
    /// account → script → channel.
    channels: RwLock<Channels>,
    /// Channels in `channels`: zero means nobody listens, checked without a lock.
    open: AtomicUsize,
}

impl Default for TailHub {
    /// A hub that prints lines with [`PrefixedOutput`].
    fn default() -> Self {
        Self::new(Arc::new(PrefixedOutput))
    }
}

impl TailHub {
    /// A hub that also hands every line and request to `print` (e.g. [`PrefixedOutput`]).
    pub fn new(print: Arc<dyn ScriptOutput>) -> Self {
        Self {
            print,
            channels: RwLock::new(HashMap::new()),
            open: AtomicUsize::new(0),
        }
    }

    /// Follows script `script` of account `account_id` from now on, whether or not it is
    /// deployed yet. Dropping the receiver ends the subscription.
    pub fn subscribe(&self, account_id: &str, script: &str) -> broadcast::Receiver<TailEvent> {
        let mut channels = self.channels.write().unwrap_or_else(|p| p.into_inner());
        prune(&mut channels);
        let receiver = channels
            .entry(account_id.to_owned())
            .or_default()
            .entry(script.to_owned())
            .or_insert_with(|| broadcast::channel(TAIL_BUFFER).0)
            .subscribe();
        self.open.store(count(&channels), Ordering::Release);
        receiver
    }

    /// Live subscribers of `script` of `account_id`.
    pub fn subscribers(&self, account_id: &str, script: &str) -> usize {
        let channels = self.channels.read().unwrap_or_else(|p| p.into_inner());
        channels
            .get(account_id)
            .and_then(|scripts| scripts.get(script))
            .map_or(0, broadcast::Sender::receiver_count)
    }

    /// Sends the event `kind()` describes to the script's subscribers, building it only if
    /// there are any.
    fn publish(
        &self,
        account_id: &str,
        script: &str,
        version: &str,
        request_id: &str,
        kind: impl FnOnce() -> TailEventKind,
    ) {
        if self.open.load(Ordering::Acquire) == 0 {
            return;
        }
        let stale = {
            let channels = self.channels.read().unwrap_or_else(|p| p.into_inner());
            let Some(sender) = channels.get(account_id).and_then(|s| s.get(script)) else {
                return;
            };
            if sender.receiver_count() > 0 {
                let event = TailEvent {
                    timestamp_ms: now_ms(),
                    account_id: account_id.to_owned(),
                    script: script.to_owned(),
                    version: version.to_owned(),
                    request_id: request_id.to_owned(),
                    kind: kind(),
                };
                // Every subscriber may have left since the count: nothing to do then.
                let _ = sender.send(event);
                false
            } else {
                true
            }
        };
        // The last subscriber left: drop its channel unless another thread holds the lock.
        if stale && let Ok(mut channels) = self.channels.try_write() {
            prune(&mut channels);
            self.open.store(count(&channels), Ordering::Release);
        }
    }
}

impl ScriptOutput for TailHub {
    fn line(&self, line: ScriptLine<'_>) {
        self.print.line(line);
        self.publish(
            line.account_id,
            line.script,
            line.version,
            line.request_id,
            || TailEventKind::Output {
                stream: line.stream,
                text: line.text.to_owned(),
            },
        );
    }

    fn request(&self, request: &RequestSummary<'_>) {
        self.print.request(request);
        self.publish(
            request.account_id,
            request.script,
            request.version,
            request.request_id,
            || TailEventKind::Request {
                method: request.method.to_owned(),
                url: format!("http://{}{}", request.host, request.path_and_query),
                status: request.status,
                outcome: request.outcome,
            },
        );
    }
}

/// Drops the channels nobody listens to.
fn prune(channels: &mut Channels) {
    channels.retain(|_, scripts| {
        scripts.retain(|_, sender| sender.receiver_count() > 0);
        !scripts.is_empty()
    });
}

fn count(channels: &Channels) -> usize {
    channels.values().map(HashMap::len).sum()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prints nothing.
    struct Silent;

    impl ScriptOutput for Silent {
        fn line(&self, _: ScriptLine<'_>) {}
    }

    fn line<'a>(account_id: &'a str, script: &'a str, text: &'a str) -> ScriptLine<'a> {
        ScriptLine {
            account_id,
            script,
            version: "v1",
            request_id: "r1",
            stream: ScriptStream::Stderr,
            text,
        }
    }

    #[test]
    fn a_subscriber_gets_its_scripts_lines_only() {
        let hub = TailHub::new(Arc::new(Silent));
        // Nobody listens: nothing is kept.
        hub.line(line("a", "proxy", "lost"));
        let mut proxy = hub.subscribe("a", "proxy");
        hub.line(line("b", "proxy", "other account"));
        hub.line(line("a", "other", "other script"));
        hub.line(line("a", "proxy", "mine"));
        let event = proxy.try_recv().expect("one event");
        assert_eq!(
            event.kind,
            TailEventKind::Output {
                stream: ScriptStream::Stderr,
                text: "mine".into()
            }
        );
        assert_eq!(
            (event.account_id.as_str(), event.script.as_str()),
            ("a", "proxy")
        );
        assert!(proxy.try_recv().is_err(), "only its own script's lines");
        assert_eq!(hub.subscribers("a", "proxy"), 1);

        // The last subscriber leaves: the channel goes at the next event.
        drop(proxy);
        hub.line(line("a", "proxy", "after"));
        assert_eq!(hub.open.load(Ordering::Acquire), 0);
    }

    #[test]
    fn events_serialize_as_flat_json_lines() {
        let event = TailEvent {
            timestamp_ms: 1_700_000_000_000,
            account_id: "a".into(),
            script: "proxy".into(),
            version: "v1".into(),
            request_id: "r1".into(),
            kind: TailEventKind::Request {
                method: "GET".into(),
                url: "http://proxy.a.workers.localhost/x".into(),
                status: 503,
                outcome: RequestOutcome::ExceededCpu,
            },
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(
            json,
            r#"{"timestamp_ms":1700000000000,"account_id":"a","script":"proxy","version":"v1","request_id":"r1","type":"request","method":"GET","url":"http://proxy.a.workers.localhost/x","status":503,"outcome":"exceeded_cpu"}"#
        );
        assert_eq!(serde_json::from_str::<TailEvent>(&json).unwrap(), event);
        let line = TailEvent {
            kind: TailEventKind::Output {
                stream: ScriptStream::Stdout,
                text: "hi".into(),
            },
            ..event
        };
        let json = serde_json::to_string(&line).unwrap();
        assert!(
            json.ends_with(r#""type":"output","stream":"stdout","text":"hi"}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<TailEvent>(&json).unwrap(), line);
    }
}
