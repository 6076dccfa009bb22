//! The last hour of traffic of one service or script, in 10-second slots: requests,
//! failures by category and code, latency and DNS time counted into the buckets of
//! [`crate::buckets::LATENCY_SECONDS`]. Only slots with traffic are kept, so an idle service
//! costs a few bytes and a busy one at most 360 slots.
//!
//! Prometheus keeps history itself; this is what the status page and `wvpc service metrics`
//! show without one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use wvpc_errors::{Category, ErrorCode, ProxyError};

use crate::buckets::LATENCY_SECONDS;
use crate::status::{
    CategoryCounts, ChartPoint, CodeCount, Quantiles, TrafficStatus, WindowSummary, quantile_ms,
    sort_codes,
};

/// The length of a slot.
pub const SLOT: Duration = Duration::from_secs(10);
/// Slots kept: one hour.
const SLOTS_KEPT: u64 = 360;
const SLOTS_PER_MINUTE: u64 = 6;

/// How a request or connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was served (for a service: the stream reached the origin; for a script: it
    /// answered without an exception or a limit).
    Success,
    /// It failed with `code`, filed under `category`.
    Failed(ErrorCode, Category),
}

impl Outcome {
    /// The outcome of a failure with `err` (NXDOMAIN is the client's fault).
    pub fn failed(err: &ProxyError) -> Self {
        Self::Failed(err.code, err.category())
    }
}

impl From<&ProxyError> for Outcome {
    fn from(err: &ProxyError) -> Self {
        Self::failed(err)
    }
}

/// The process's clock for slots: slot `n` starts `n * SLOT` after the first use.
struct Epoch {
    instant: Instant,
    wall: SystemTime,
}

fn epoch() -> &'static Epoch {
    static EPOCH: OnceLock<Epoch> = OnceLock::new();
    EPOCH.get_or_init(|| Epoch {
        instant: Instant::now(),
        wall: SystemTime::now(),
    })
}

fn slot_of(at: Instant) -> u64 {
    (at.saturating_duration_since(epoch().instant).as_millis() / SLOT.as_millis()) as u64
}

/// Counts per latency bucket, the last one for `+Inf`.
#[derive(Debug, Clone, Copy, Default)]
struct Sketch([u64; LATENCY_SECONDS.len() + 1]);

impl Sketch {
    fn add(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        let i = LATENCY_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_SECONDS.len());
        self.0[i] += 1;
    }

    fn merge(&mut self, other: &Sketch) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    fn quantile_ms(&self, q: f64) -> Option<f64> {
        quantile_ms(&self.0, q)
    }

    fn quantiles(&self) -> Quantiles {
        Quantiles::from_counts(&self.0)
    }
}

#[derive(Debug, Clone, Default)]
struct Slot {
    index: u64,
    requests: u64,
    failures: [u64; 3],
    codes: Vec<(ErrorCode, Category, u64)>,
    latency: Sketch,
    dns: Sketch,
    dns_hits: u64,
}

impl Slot {
    fn merge(&mut self, other: &Slot) {
        self.requests += other.requests;
        for (a, b) in self.failures.iter_mut().zip(other.failures) {
            *a += b;
        }
        for (code, category, n) in &other.codes {
            self.count_code(*code, *category, *n);
        }
        self.latency.merge(&other.latency);
        self.dns.merge(&other.dns);
        self.dns_hits += other.dns_hits;
    }

    fn count_code(&mut self, code: ErrorCode, category: Category, n: u64) {
        match self
            .codes
            .iter_mut()
            .find(|(c, cat, _)| *c == code && *cat == category)
        {
            Some((_, _, count)) => *count += n,
            None => self.codes.push((code, category, n)),
        }
    }

    fn errors(&self) -> u64 {
        self.failures.iter().sum()
    }
}

#[derive(Debug, Default)]
struct Slots {
    slots: VecDeque<Slot>,
    total_requests: u64,
    total_errors: u64,
}

/// The last hour of one service's or script's traffic.
#[derive(Debug, Default)]
pub struct Recent {
    inner: Mutex<Slots>,
}

impl Recent {
    /// Counts a request or connection that ended now, with its latency if it got that far.
    pub fn record(&self, outcome: Outcome, latency: Option<Duration>) {
        self.record_at(Instant::now(), outcome, latency);
    }

    /// Counts a DNS lookup that went through the tunnel and took `took`.
    pub fn record_dns_lookup(&self, took: Duration) {
        self.with_slot(Instant::now(), |slot| slot.dns.add(took));
    }

    /// Counts a DNS answer taken from the cache.
    pub fn record_dns_hit(&self) {
        self.with_slot(Instant::now(), |slot| slot.dns_hits += 1);
    }

    fn record_at(&self, at: Instant, outcome: Outcome, latency: Option<Duration>) {
        self.with_inner(|inner| {
            inner.total_requests += 1;
            if matches!(outcome, Outcome::Failed(..)) {
                inner.total_errors += 1;
            }
        });
        self.with_slot(at, |slot| {
            slot.requests += 1;
            if let Outcome::Failed(code, category) = outcome {
                slot.failures[category.index()] += 1;
                slot.count_code(code, category, 1);
            }
            if let Some(took) = latency {
                slot.latency.add(took);
            }
        });
    }

    fn with_inner<T>(&self, f: impl FnOnce(&mut Slots) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn with_slot(&self, at: Instant, f: impl FnOnce(&mut Slot)) {
        let index = slot_of(at);
        self.with_inner(|inner| {
            let slots = &mut inner.slots;
            if slots.back().is_none_or(|last| last.index < index) {
                slots.push_back(Slot {
                    index,
                    ..Slot::default()
                });
                while slots
                    .front()
                    .is_some_and(|first| first.index + SLOTS_KEPT <= index)
                {
                    slots.pop_front();
                }
            }
            // A late record (its slot already passed) counts in the newest slot.
            if let Some(last) = slots.back_mut() {
                f(last);
            }
        });
    }

    /// Whether nothing happened in the last hour.
    pub fn is_idle(&self) -> bool {
        let now = slot_of(Instant::now());
        self.with_inner(|inner| {
            inner
                .slots
                .back()
                .is_none_or(|last| last.index + SLOTS_KEPT <= now)
        })
    }

    /// The report of this service or script: one summary per window, and both charts.
    pub fn status(&self, id: String, name: Option<String>, windows: &[u32]) -> TrafficStatus {
        self.status_at(Instant::now(), id, name, windows)
    }

    fn status_at(
        &self,
        now: Instant,
        id: String,
        name: Option<String>,
        windows: &[u32],
    ) -> TrafficStatus {
        let current = slot_of(now);
        let uptime = now.saturating_duration_since(epoch().instant);
        let (slots, total_requests, total_errors) = self.with_inner(|inner| {
            (
                inner.slots.iter().cloned().collect::<Vec<_>>(),
                inner.total_requests,
                inner.total_errors,
            )
        });
        let windows = windows
            .iter()
            .map(|minutes| summary(&slots, current, uptime, *minutes))
            .collect();
        TrafficStatus {
            id,
            name,
            account: None,
            total_requests,
            total_errors,
            windows,
            chart_5m: chart(&slots, current, 1, 30),
            chart_60m: chart(&slots, current, SLOTS_PER_MINUTE, 60),
        }
    }
}

/// The slots in the last `count` slots up to `current`, merged.
fn merged(slots: &[Slot], current: u64, count: u64) -> Slot {
    let first = (current + 1).saturating_sub(count);
    let mut all = Slot::default();
    for slot in slots
        .iter()
        .filter(|s| s.index >= first && s.index <= current)
    {
        all.merge(slot);
    }
    all
}

fn summary(slots: &[Slot], current: u64, uptime: Duration, minutes: u32) -> WindowSummary {
    let all = merged(slots, current, u64::from(minutes) * SLOTS_PER_MINUTE);
    let span = Duration::from_secs(u64::from(minutes) * 60)
        .min(uptime)
        .max(Duration::from_secs(1));
    let errors = CategoryCounts {
        bad_upstream: all.failures[Category::BadUpstream.index()],
        client: all.failures[Category::Client.index()],
        internal: all.failures[Category::Internal.index()],
    };
    let mut codes: Vec<CodeCount> = all
        .codes
        .iter()
        .map(|(code, category, count)| CodeCount {
            code: code.wire_name().to_owned(),
            category: category.label().to_owned(),
            count: *count,
        })
        .collect();
    sort_codes(&mut codes);
    WindowSummary {
        minutes,
        requests: all.requests,
        rate_per_second: all.requests as f64 / span.as_secs_f64(),
        error_rate: if all.requests == 0 {
            0.0
        } else {
            errors.total() as f64 / all.requests as f64
        },
        errors,
        latency_ms: all.latency.quantiles(),
        latency_counts: all.latency.0.to_vec(),
        dns_ms: all.dns.quantiles(),
        dns_counts: all.dns.0.to_vec(),
        dns_cache_hits: all.dns_hits,
        dns_cache_misses: all.dns.count(),
        codes,
    }
}

/// `points` points of `per_point` slots each, the last one ending with `current`. Points
/// from before the process started (it is younger than the chart) are empty.
fn chart(slots: &[Slot], current: u64, per_point: u64, points: u64) -> Vec<ChartPoint> {
    let last_start = current - current % per_point;
    let started = epoch()
        .wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (0..points)
        .rev()
        .map(|back| {
            // Slots before slot 0 are before the start, not slot 0 again.
            let start = i128::from(last_start) - i128::from(back * per_point);
            let point = match u64::try_from(start) {
                Ok(start) => merged(slots, start + per_point - 1, per_point),
                Err(_) => Slot::default(),
            };
            let at = i128::from(started) + start * i128::from(SLOT.as_secs());
            ChartPoint {
                at: u64::try_from(at).unwrap_or(0),
                requests: point.requests,
                errors: point.errors(),
                latency_p50_ms: point.latency.quantile_ms(0.5),
                latency_p99_ms: point.latency.quantile_ms(0.99),
            }
        })
        .collect()
}

/// [`Recent`] per key (a service id, a script name), created on first use.
#[derive(Debug, Default)]
pub struct RecentMap {
    entries: RwLock<HashMap<String, Arc<Recent>>>,
}

impl RecentMap {
    /// The entry for `key` (created if new).
    pub fn get(&self, key: &str) -> Arc<Recent> {
        if let Some(found) = self
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return found.clone();
        }
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// Every entry with traffic in the last hour, by key (idle ones are dropped).
    pub fn active(&self) -> Vec<(String, Arc<Recent>)> {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, recent| !recent.is_idle());
        let mut all: Vec<_> = entries
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn summaries_count_requests_failures_and_codes_per_window() {
        let recent = Recent::default();
        let start = epoch().instant + Duration::from_secs(3600 * 5);
        // 70 minutes ago: outside both windows; 30 minutes ago: in the hour only.
        recent.record_at(start, Outcome::Success, ms(1));
        let half_hour = start + Duration::from_secs(40 * 60);
        recent.record_at(
            half_hour,
            Outcome::Failed(ErrorCode::ConnectionRefused, Category::BadUpstream),
            None,
        );
        let now = start + Duration::from_secs(70 * 60);
        for _ in 0..8 {
            recent.record_at(now, Outcome::Success, ms(4));
        }
        recent.record_at(
            now,
            Outcome::Failed(ErrorCode::DnsError, Category::Client),
            None,
        );
        recent.record_at(
            now,
            Outcome::Failed(ErrorCode::DnsError, Category::Client),
            None,
        );
        let status = recent.status_at(now, "svc".into(), None, &[5, 60]);
        assert_eq!(status.total_requests, 12);
        assert_eq!(status.total_errors, 3);
        let five = status.window(5).unwrap();
        assert_eq!(five.requests, 10);
        assert_eq!(five.errors.client, 2);
        assert_eq!(five.errors.bad_upstream, 0);
        assert!((five.error_rate - 0.2).abs() < 1e-9);
        assert_eq!(five.codes.len(), 1);
        assert_eq!(five.codes[0].code, "dns_error");
        assert_eq!(five.codes[0].category, "client");
        // 4 ms falls in the (2.5 ms, 5 ms] bucket.
        let p50 = five.latency_ms.p50.unwrap();
        assert!(p50 > 2.5 && p50 <= 5.0, "{p50}");
        let hour = status.window(60).unwrap();
        assert_eq!(hour.requests, 11, "the first request is 70 minutes old");
        assert_eq!(hour.errors.bad_upstream, 1);
        assert_eq!(hour.codes[0].code, "dns_error");
        assert_eq!(hour.codes[1].code, "connection_refused");
        // The charts end with the current slot / minute.
        assert_eq!(status.chart_5m.len(), 30);
        assert_eq!(status.chart_5m.last().unwrap().requests, 10);
        assert_eq!(status.chart_5m.last().unwrap().errors, 2);
        assert_eq!(status.chart_60m.len(), 60);
        assert_eq!(status.chart_60m.last().unwrap().requests, 10);
        let total: u64 = status.chart_60m.iter().map(|p| p.requests).sum();
        assert_eq!(total, 11);
    }

    #[test]
    fn a_young_process_charts_its_first_slot_once() {
        let recent = Recent::default();
        let now = epoch().instant;
        recent.record_at(now, Outcome::Success, ms(3));
        recent.record_at(
            now,
            Outcome::Failed(ErrorCode::ConnectionRefused, Category::BadUpstream),
            None,
        );
        let status = recent.status_at(now, "svc".into(), None, &[5]);
        for chart in [&status.chart_5m, &status.chart_60m] {
            let requests: u64 = chart.iter().map(|p| p.requests).sum();
            let errors: u64 = chart.iter().map(|p| p.errors).sum();
            assert_eq!((requests, errors), (2, 1), "{chart:?}");
            assert_eq!(chart.last().unwrap().requests, 2);
            assert!(chart.windows(2).all(|w| w[0].at < w[1].at), "{chart:?}");
        }
    }

    #[test]
    fn old_slots_are_dropped_and_the_entry_goes_idle() {
        let recent = Recent::default();
        let start = epoch().instant + Duration::from_secs(3600 * 20);
        recent.record_at(start, Outcome::Success, None);
        let later = start + Duration::from_secs(2 * 3600);
        recent.record_at(later, Outcome::Success, None);
        assert_eq!(recent.inner.lock().unwrap().slots.len(), 1);
        let status = recent.status_at(later, "s".into(), None, &[60]);
        assert_eq!(status.window(60).unwrap().requests, 1);
        assert_eq!(status.total_requests, 2);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let mut sketch = Sketch::default();
        for _ in 0..99 {
            sketch.add(Duration::from_micros(700)); // (0.5 ms, 1 ms]
        }
        sketch.add(Duration::from_secs(500)); // +Inf
        let p50 = sketch.quantile_ms(0.5).unwrap();
        assert!(p50 > 0.5 && p50 <= 1.0, "{p50}");
        assert!(sketch.quantile_ms(0.99).unwrap() <= 1.0);
        assert_eq!(sketch.quantile_ms(1.0), Some(120_000.0));
        assert_eq!(Sketch::default().quantile_ms(0.5), None);
    }
}
