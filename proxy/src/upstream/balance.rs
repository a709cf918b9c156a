//! Load balancing over a cluster's hosts: weighted round robin, weighted random, and least
//! request by the power of two choices (two random hosts, the one with fewer requests open).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

use super::Host;
use crate::config::cluster::LbPolicy;

#[derive(Debug)]
pub struct Balancer {
    policy: LbPolicy,
    /// Running count of picks, for round robin.
    cursor: AtomicU64,
}

impl Balancer {
    pub fn new(policy: LbPolicy) -> Self {
        Self {
            policy,
            cursor: AtomicU64::new(0),
        }
    }

    /// For a consistent hash: the host with the highest weighted score for `hash`
    /// (rendezvous hashing: a host that goes moves only its own requests); else [`Self::pick`].
    pub fn pick_hashed(&self, hosts: &[Arc<Host>], hash: Option<u64>) -> Option<Arc<Host>> {
        let (LbPolicy::ConsistentHash, Some(hash)) = (self.policy, hash) else {
            return self.pick(hosts);
        };
        hosts
            .iter()
            .map(|h| (rendezvous_score(hash, h), h))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, h)| h.clone())
    }

    /// One of `hosts` (the usable ones, which change as hosts are ejected and come back).
    pub fn pick(&self, hosts: &[Arc<Host>]) -> Option<Arc<Host>> {
        let total_weight: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
        match hosts {
            [] => None,
            [only] => Some(only.clone()),
            _ => Some(match self.policy {
                LbPolicy::RoundRobin => {
                    let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % total_weight.max(1);
                    weighted(hosts, slot)
                }
                LbPolicy::Random | LbPolicy::ConsistentHash => {
                    weighted(hosts, rand::rng().random_range(0..total_weight.max(1)))
                }
                LbPolicy::LeastRequest => {
                    let mut rng = rand::rng();
                    let a = weighted(hosts, rng.random_range(0..total_weight.max(1)));
                    let b = weighted(hosts, rng.random_range(0..total_weight.max(1)));
                    if b.active.load(Ordering::Relaxed) < a.active.load(Ordering::Relaxed) {
                        b
                    } else {
                        a
                    }
                }
            }),
        }
    }
}

/// Weighted rendezvous score of `host` for `hash`: `-w / ln(u)`, `u` uniform in (0, 1) from
/// the hash of the request and the host's address.
fn rendezvous_score(hash: u64, host: &Host) -> f64 {
    let key = crate::hashing::fnv1a(format!("{}:{}", host.host, host.port).as_bytes());
    let mixed = crate::hashing::mix(hash ^ key);
    // In (0, 1): never 0 (ln) nor 1 (a zero denominator).
    let u = ((mixed >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(host.weight.max(1)) / u.ln()
}

/// The host that covers `slot` of the cumulative weights (the last one past them).
fn weighted(hosts: &[Arc<Host>], slot: u64) -> Arc<Host> {
    let i = crate::weighted::pick(hosts.iter().map(|h| u64::from(h.weight)), slot)
        .unwrap_or(hosts.len() - 1);
    hosts[i].clone()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn hosts(weights: &[u32]) -> Vec<Arc<Host>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(Host {
                    host: format!("10.0.0.{i}"),
                    port: 80,
                    weight: *w,
                    eds_healthy: true,
                    active: AtomicUsize::new(0),
                    health: Arc::default(),
                })
            })
            .collect()
    }

    #[test]
    fn round_robin_follows_the_weights_exactly() {
        let hosts = hosts(&[1, 3]);
        let b = Balancer::new(LbPolicy::RoundRobin);
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..400 {
            *counts
                .entry(b.pick(&hosts).unwrap().host.clone())
                .or_default() += 1;
        }
        assert_eq!(counts["10.0.0.0"], 100);
        assert_eq!(counts["10.0.0.1"], 300);
    }

    #[test]
    fn least_request_avoids_the_busy_host() {
        let hosts = hosts(&[1, 1]);
        hosts[0].active.store(50, Ordering::Relaxed);
        let b = Balancer::new(LbPolicy::LeastRequest);
        let busy = (0..1000)
            .filter(|_| b.pick(&hosts).unwrap().host == "10.0.0.0")
            .count();
        // Only when both choices land on the busy host: about a quarter.
        assert!(busy < 350, "{busy}");
        assert!(b.pick(&[]).is_none());
    }

    #[test]
    fn a_consistent_hash_keeps_keys_and_moves_only_a_gone_hosts_keys() {
        let all = hosts(&[1, 1, 1, 1]);
        let b = Balancer::new(LbPolicy::ConsistentHash);
        let pick =
            |hosts: &[Arc<Host>], key: u64| b.pick_hashed(hosts, Some(key)).unwrap().host.clone();
        let before: Vec<String> = (0..1000)
            .map(|k| pick(&all, crate::hashing::mix(k)))
            .collect();
        // The same key, the same host; the keys spread over every host.
        for k in 0..1000 {
            assert_eq!(pick(&all, crate::hashing::mix(k)), before[k as usize]);
        }
        let mut counts: HashMap<&String, usize> = HashMap::new();
        for h in &before {
            *counts.entry(h).or_default() += 1;
        }
        assert!(
            counts.len() == 4 && counts.values().all(|c| (150..350).contains(c)),
            "{counts:?}"
        );
        // Without host 0, only its keys move.
        let rest: Vec<Arc<Host>> = all[1..].to_vec();
        for k in 0..1000u64 {
            let now = pick(&rest, crate::hashing::mix(k));
            if before[k as usize] != "10.0.0.0" {
                assert_eq!(now, before[k as usize], "key {k} moved");
            }
        }
        // No key: placed at random, never refused.
        assert!(b.pick_hashed(&all, None).is_some());
    }
}
