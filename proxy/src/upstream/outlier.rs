//! Outlier detection by consecutive errors (Envoy's `consecutive_5xx` and
//! `consecutive_gateway_failure`): a host that fails that many times in a row is ejected for
//! `base_ejection_time` times the number of its ejections (capped at `max_ejection_time`), at
//! most `max_ejection_percent` of a cluster at once (but always at least one host). A host's
//! record outlives configuration changes: an EDS update does not forgive it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use tokio::time::Instant;

use super::breakers::ClusterLoad;
use crate::config::cluster::Outlier;

/// What one request or connection attempt to a host came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx other than 502, 503, 504.
    ServerError,
    /// 502, 503, 504, or no response at all (connect failure, reset, timeout).
    GatewayError,
}

/// The error record of one host.
#[derive(Debug, Default)]
pub struct HostHealth {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    times_ejected: AtomicU32,
    /// Milliseconds since the process's epoch until which the host is ejected (0: never).
    ejected_until: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl HostHealth {
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms()
    }

    /// Records `outcome`; says whether the host should be ejected now (the caller checks the
    /// cluster's ejection cap and then calls [`Self::eject`]).
    pub fn record(&self, outcome: Outcome, outlier: &Outlier) -> bool {
        match outcome {
            Outcome::Success => {
                self.consecutive_5xx.store(0, Ordering::Relaxed);
                self.consecutive_gateway.store(0, Ordering::Relaxed);
                false
            }
            Outcome::ServerError | Outcome::GatewayError => {
                let fives = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                let gateway = if outcome == Outcome::GatewayError {
                    self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    self.consecutive_gateway.store(0, Ordering::Relaxed);
                    0
                };
                let roll = || rand::rng().random_range(0..100u32);
                (fives >= outlier.consecutive_5xx && roll() < outlier.enforcing_consecutive_5xx)
                    || (gateway >= outlier.consecutive_gateway_failure
                        && roll() < outlier.enforcing_consecutive_gateway_failure)
            }
        }
    }

    pub fn eject(&self, outlier: &Outlier) {
        let times = self.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = outlier
            .base_ejection_time
            .saturating_mul(times)
            .min(outlier.max_ejection_time.max(outlier.base_ejection_time));
        let until =
            now_ms().saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        self.ejected_until.store(until, Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
    }

    /// Time left in the current ejection.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }
}

/// Every host's record, by cluster and address, and every cluster's open requests, kept across
/// configuration changes.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    hosts: Mutex<HashMap<(String, String, u16), Arc<HostHealth>>>,
    loads: Mutex<HashMap<String, Arc<ClusterLoad>>>,
}

impl HealthRegistry {
    /// The circuit breaker counters of `cluster`, kept across configuration changes.
    pub fn load(&self, cluster: &str) -> Arc<ClusterLoad> {
        self.loads
            .lock()
            .entry(cluster.to_owned())
            .or_default()
            .clone()
    }

    pub fn get(&self, cluster: &str, host: &str, port: u16) -> Arc<HostHealth> {
        self.hosts
            .lock()
            .entry((cluster.to_owned(), host.to_owned(), port))
            .or_default()
            .clone()
    }

    /// Forgets hosts no cluster uses any more, and clusters that are gone.
    pub fn retain(
        &self,
        keep: impl Fn(&(String, String, u16)) -> bool,
        clusters: impl Fn(&str) -> bool,
    ) {
        self.hosts.lock().retain(|k, _| keep(k));
        self.loads.lock().retain(|k, _| clusters(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlier() -> Outlier {
        Outlier {
            consecutive_5xx: 3,
            enforcing_consecutive_5xx: 100,
            consecutive_gateway_failure: 2,
            enforcing_consecutive_gateway_failure: 100,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }

    #[test]
    fn consecutive_errors_eject_and_a_success_forgives() {
        let o = outlier();
        let h = HostHealth::default();
        assert!(!h.record(Outcome::ServerError, &o));
        assert!(!h.record(Outcome::ServerError, &o));
        assert!(
            !h.record(Outcome::Success, &o),
            "a success resets the count"
        );
        assert!(!h.record(Outcome::ServerError, &o));
        assert!(!h.record(Outcome::ServerError, &o));
        assert!(h.record(Outcome::ServerError, &o), "the third in a row");
        let g = HostHealth::default();
        assert!(!g.record(Outcome::GatewayError, &o));
        assert!(
            g.record(Outcome::GatewayError, &o),
            "gateway errors have their own threshold"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_last_longer_each_time() {
        let o = outlier();
        let h = HostHealth::default();
        let _ = epoch();
        h.eject(&o);
        assert!(h.is_ejected());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(!h.is_ejected(), "back after the base ejection time");
        h.eject(&o);
        assert_eq!(h.ejected_for(), Some(Duration::from_secs(60)));
    }
}
