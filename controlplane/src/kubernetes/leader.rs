//! Leader election on a `coordination.k8s.io/v1` `Lease`: of the `isthmusd` replicas, only the
//! holder writes status back to the API server.
//!
//! [`elect`] returns a `watch` of "we are the leader" and the future that keeps it true. Every
//! `renew_every` the future reads the Lease and
//!
//! - creates it, held by us, if there is none (`409 AlreadyExists`: another replica created it
//!   first; read again at once);
//! - takes it if it has no holder or has expired, by a replace carrying the `resourceVersion`
//!   read, so of two replicas taking it at once one gets `409 Conflict` and stays a follower.
//!   Expiry is timed on the local clock, as client-go times it: from when this replica first
//!   saw the Lease's current `resourceVersion`, `leaseDurationSeconds` without a change (every
//!   renewal changes it). Comparing the holder's `renewTime` with our clock would let a skew
//!   between the replicas' clocks make two leaders;
//! - renews it (`renewTime`) if we hold it;
//! - else follows.
//!
//! The watch is `true` only while the last successful write of the Lease by us started less than
//! `duration - min(renew_every, duration / 2)` ago: a leader whose renewals fail (API server
//! unreachable, each call bounded by `renew_every`) steps down before its Lease can expire and
//! another replica take it, so there are never two writers. When the future is dropped the
//! sender goes with it; the status writer stops writing when the watch closes. The Lease is not
//! released on drop: another replica takes over once it expires.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

/// The Lease and who we are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// The Lease's name ([`DEFAULT_LEASE_NAME`]).
    pub name: String,
    /// Its namespace (the control plane's).
    pub namespace: String,
    /// Our `holderIdentity`: the pod name.
    pub holder: String,
    /// `leaseDurationSeconds` (whole seconds, at least 1).
    pub duration: Duration,
    /// How often the Lease is read and renewed (also each API call's timeout).
    pub renew_every: Duration,
}

/// The status writers' Lease.
pub const DEFAULT_LEASE_NAME: &str = "isthmusd-status";

/// `leaseDurationSeconds` by default.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(15);

impl LeaseSettings {
    /// The defaults: [`DEFAULT_LEASE_NAME`], [`DEFAULT_DURATION`], renewed every third of it.
    pub fn new(namespace: impl Into<String>, holder: impl Into<String>) -> Self {
        Self {
            name: DEFAULT_LEASE_NAME.to_owned(),
            namespace: namespace.into(),
            holder: holder.into(),
            duration: DEFAULT_DURATION,
            renew_every: DEFAULT_DURATION / 3,
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// How long after a successful write (counted from when it started) we stop calling
    /// ourselves the leader.
    fn leadership(&self) -> Duration {
        let duration = Duration::from_secs(self.duration.as_secs().max(1));
        duration.saturating_sub(self.renew_every.min(duration / 2))
    }
}

/// What one round found.
#[derive(Debug)]
enum Round {
    /// We hold the Lease: written by us at the round's start.
    Held,
    /// Someone else holds it (or won the race to it).
    Follower { holder: Option<String> },
    /// Read again now (the Lease was created or changed under us).
    Again,
}

/// Starts an election: `true` on the watch while we hold the Lease (see the module's
/// documentation). The future runs until dropped.
pub fn elect(
    client: kube::Client,
    settings: LeaseSettings,
) -> (
    watch::Receiver<bool>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = watch::channel(false);
    let task = async move {
        let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
        // Until when we are the leader (None: we are not).
        let mut leader_until: Option<Instant> = None;
        let mut last_holder: Option<String> = None;
        let mut observed: Option<Observed> = None;
        let mut again = 0u32;
        loop {
            let started = Instant::now();
            let round = tokio::time::timeout(
                settings.renew_every,
                round(
                    &api,
                    &settings,
                    leader_until.is_some_and(|t| t > started),
                    &mut observed,
                ),
            )
            .await;
            match round {
                Ok(Ok(Round::Held)) => {
                    leader_until = Some(started + settings.leadership());
                    last_holder = Some(settings.holder.clone());
                }
                Ok(Ok(Round::Follower { holder })) => {
                    leader_until = None;
                    if holder != last_holder {
                        tracing::info!(
                            lease = %settings.name,
                            holder = holder.as_deref().unwrap_or("<none>"),
                            "status lease held by another replica"
                        );
                        last_holder = holder;
                    }
                }
                Ok(Ok(Round::Again)) => {
                    // A few at once (a race), then the usual pace.
                    again += 1;
                    if again <= 3 {
                        continue;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = %settings.name, error = %e, "status lease: API call failed");
                }
                Err(_) => {
                    tracing::warn!(
                        lease = %settings.name,
                        timeout = ?settings.renew_every,
                        "status lease: API call timed out"
                    );
                }
            }
            again = 0;
            publish(
                &tx,
                &settings,
                leader_until.is_some_and(|t| t > Instant::now()),
            );
            // Sleep until the next round, stepping down on time if leadership lapses meanwhile.
            let next = started + settings.renew_every;
            if let Some(until) = leader_until.filter(|&until| until < next) {
                tokio::time::sleep_until(until).await;
                publish(&tx, &settings, false);
            }
            tokio::time::sleep_until(next).await;
        }
    };
    (rx, task)
}

/// Waits until `leader` says we lead; `false` if the election stopped first (its watch closed).
/// For the tasks that act only while leading (`webhook_bundle.rs`, `root_publisher.rs`).
pub async fn until_leading(leader: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *leader.borrow_and_update() {
            return true;
        }
        if leader.changed().await.is_err() {
            return false;
        }
    }
}

fn publish(tx: &watch::Sender<bool>, settings: &LeaseSettings, leader: bool) {
    tx.send_if_modified(|current| {
        if *current == leader {
            return false;
        }
        *current = leader;
        if leader {
            tracing::info!(lease = %settings.name, holder = %settings.holder, "became the status leader");
        } else {
            tracing::warn!(lease = %settings.name, holder = %settings.holder, "no longer the status leader");
        }
        true
    });
}

/// One read and, if we may, one write of the Lease. `leading`: we hold it as far as we know
/// (keeps `acquireTime`).
async fn round(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    leading: bool,
    observed: &mut Option<Observed>,
) -> Result<Round, kube::Error> {
    let now = Timestamp::now();
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.holder.clone()),
                lease_duration_seconds: Some(settings.duration_seconds()),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Round::Held),
            Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(Round::Again),
            Err(e) => Err(e),
        };
    };
    let since = Observed::since(observed, lease.metadata.resource_version.clone());
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let ours = holder.as_deref() == Some(settings.holder.as_str());
    if !ours && holder.is_some() && !expired(spec, since, Instant::now()) {
        return Ok(Round::Follower { holder });
    }
    if !ours || !leading {
        spec.acquire_time = Some(MicroTime(now));
    }
    if !ours {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        tracing::info!(
            lease = %settings.name,
            previous = holder.as_deref().unwrap_or("<none>"),
            "taking the status lease"
        );
    }
    spec.holder_identity = Some(settings.holder.clone());
    spec.lease_duration_seconds = Some(settings.duration_seconds());
    spec.renew_time = Some(MicroTime(now));
    // `metadata.resourceVersion` is the one read: a write since is a 409.
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(Round::Held),
        Err(kube::Error::Api(status)) if status.is_conflict() => {
            if ours {
                Ok(Round::Again)
            } else {
                Ok(Round::Follower { holder })
            }
        }
        Err(e) => Err(e),
    }
}

/// When this replica first saw the Lease's current `resourceVersion`.
#[derive(Debug)]
struct Observed {
    resource_version: Option<String>,
    at: Instant,
}

impl Observed {
    /// The local time the Lease at `resource_version` was first seen (now, if it changed).
    fn since(observed: &mut Option<Observed>, resource_version: Option<String>) -> Instant {
        match observed {
            Some(o) if o.resource_version.is_some() && o.resource_version == resource_version => {
                o.at
            }
            _ => {
                let at = Instant::now();
                *observed = Some(Observed {
                    resource_version,
                    at,
                });
                at
            }
        }
    }
}

/// Whether a held Lease has expired: unchanged for `leaseDurationSeconds` since `seen` (by our
/// clock, at `now`). A Lease without a renewal time or a duration is expired.
fn expired(spec: &LeaseSpec, seen: Instant, now: Instant) -> bool {
    let (Some(_), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return true;
    };
    let duration = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    now.saturating_duration_since(seen) >= duration
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    fn spec(renewed_hours_ago: i64, duration: i32) -> LeaseSpec {
        let now = Timestamp::now();
        LeaseSpec {
            holder_identity: Some("other".into()),
            renew_time: Some(MicroTime(
                now.checked_sub(SignedDuration::from_hours(renewed_hours_ago))
                    .unwrap(),
            )),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_expires_after_its_duration_unchanged_by_our_clock_whatever_its_renew_time() {
        let seen = Instant::now();
        // A holder whose clock is hours behind ours still holds a Lease it keeps renewing.
        assert!(!expired(&spec(5, 15), seen, seen + Duration::from_secs(1)));
        assert!(expired(&spec(0, 15), seen, seen + Duration::from_secs(15)));
        assert!(expired(&LeaseSpec::default(), seen, seen));
    }

    #[test]
    fn the_observation_restarts_when_the_lease_changes() {
        let mut observed = None;
        let first = Observed::since(&mut observed, Some("1".into()));
        assert_eq!(Observed::since(&mut observed, Some("1".into())), first);
        std::thread::sleep(Duration::from_millis(2));
        assert!(Observed::since(&mut observed, Some("2".into())) > first);
    }

    #[test]
    fn leadership_ends_before_the_lease_does() {
        let mut settings = LeaseSettings::new("ns", "me");
        assert_eq!(settings.duration_seconds(), 15);
        assert_eq!(settings.leadership(), Duration::from_secs(10));
        settings.duration = Duration::from_secs(2);
        settings.renew_every = Duration::from_secs(5);
        assert_eq!(settings.leadership(), Duration::from_secs(1));
        settings.duration = Duration::from_millis(10);
        assert_eq!(settings.duration_seconds(), 1);
    }
}
