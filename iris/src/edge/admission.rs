//! Registration flood control: token buckets per connector source address (checked before
//! the QUIC handshake, so a flood costs the edge almost nothing) and per tunnel (checked
//! before the credentials, so guessing secrets is slow). A refused attempt is logged with
//! its reason; connectors retry with backoff.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use uuid::Uuid;

/// Token-bucket limits of the edge's admission.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionLimits {
    /// New connections one source IP may open at once.
    pub source_burst: f64,
    /// New connections per second one source IP may open, sustained.
    pub source_per_second: f64,
    /// Registration attempts one tunnel may make at once.
    pub tunnel_burst: f64,
    /// Registration attempts per second one tunnel may make, sustained.
    pub tunnel_per_second: f64,
}

impl Default for AdmissionLimits {
    /// Room for many HA connectors behind one NAT restarting together (4 connections each),
    /// far below what a flood sends.
    fn default() -> Self {
        Self {
            source_burst: 64.0,
            source_per_second: 16.0,
            tunnel_burst: 32.0,
            tunnel_per_second: 8.0,
        }
    }
}

/// Buckets most tracked before idle ones are dropped.
const MAX_BUCKETS: usize = 65_536;

struct Buckets<K> {
    burst: f64,
    per_second: f64,
    map: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq + Copy> Buckets<K> {
    fn new(burst: f64, per_second: f64) -> Self {
        Self {
            burst,
            per_second,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn take(&self, key: K) -> bool {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_BUCKETS {
            // Full buckets are indistinguishable from absent ones: forget them.
            let (burst, rate) = (self.burst, self.per_second);
            map.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = map.entry(key).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The edge's admission control.
pub(crate) struct Admission {
    sources: Buckets<IpAddr>,
    tunnels: Buckets<Uuid>,
}

impl Admission {
    pub(crate) fn new(limits: AdmissionLimits) -> Self {
        Self {
            sources: Buckets::new(limits.source_burst, limits.source_per_second),
            tunnels: Buckets::new(limits.tunnel_burst, limits.tunnel_per_second),
        }
    }

    /// Whether a new connection from `ip` may start its handshake.
    pub(crate) fn admit_source(&self, ip: IpAddr) -> bool {
        self.sources.take(ip)
    }

    /// Whether a registration for `tunnel` may be checked now.
    pub(crate) fn admit_tunnel(&self, tunnel: Uuid) -> bool {
        self.tunnels.take(tunnel)
    }
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(AdmissionLimits::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_refused_per_key() {
        let admission = Admission::new(AdmissionLimits {
            source_burst: 3.0,
            source_per_second: 0.001,
            tunnel_burst: 2.0,
            tunnel_per_second: 0.001,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!((0..3).all(|_| admission.admit_source(a)));
        assert!(!admission.admit_source(a));
        assert!(
            admission.admit_source(b),
            "another source has its own bucket"
        );
        let t = Uuid::new_v4();
        assert!(admission.admit_tunnel(t) && admission.admit_tunnel(t));
        assert!(!admission.admit_tunnel(t));
        assert!(admission.admit_tunnel(Uuid::new_v4()));
    }
}
