//! Kubernetes mode: a proxy proves who it is with its pod's service-account token, projected
//! for the audience [`AUDIENCE`]. `isthmusd` asks the API server about the token with an
//! `authentication.k8s.io/v1` `TokenReview` and accepts it only if the API server
//! authenticated it for that audience as `system:serviceaccount:<ns>:<sa>`; the identity is
//! then `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
//!
//! Positive answers are cached for [`CACHE_TTL`] (at most [`CACHE_CAPACITY`] tokens, keyed by
//! the token's SHA-256, never the token itself), so that a fleet renewing its certificates does
//! not send one review per request to a shared API server. The price: a token the API server
//! stops accepting (its pod deleted) stays accepted here until its entry expires. Refusals and
//! API server failures are never cached.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use isthmus_identity::{SpiffeId, TrustDomain};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{AuthError, Authenticator};

/// The audience a proxy's service-account token must be issued for (the `audience` of its
/// projected token volume).
pub const AUDIENCE: &str = "isthmus-ca";

/// How long a positive review is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// At most this many cached reviews; when full (after dropping the expired ones), a new
/// result is not cached.
pub const CACHE_CAPACITY: usize = 4096;

/// How long one review may take before the caller is told the CA is unavailable.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// The username prefix of Kubernetes service accounts.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Most reviews in flight at once: the API server is shared (its flow control also carries our
/// watches and the status lease), and any pod can send tokens. Callers beyond it are told to
/// retry (`UNAVAILABLE`) rather than queued.
pub const MAX_REVIEWS_IN_FLIGHT: usize = 64;

/// Longest API server message passed on to a caller.
const MAX_REASON: usize = 256;

/// Authenticates callers by Kubernetes `TokenReview` (see the module documentation).
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    trust_domain: TrustDomain,
    cache: Arc<Mutex<ReviewCache>>,
    timeout: Duration,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cache = self.cache.lock();
        f.debug_struct("TokenReviewAuthenticator")
            .field("trust_domain", &self.trust_domain)
            .field("audience", &AUDIENCE)
            .field("cached", &cache.entries.len())
            .field("ttl", &cache.ttl)
            .field("capacity", &cache.capacity)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TokenReviewAuthenticator {
    /// Reviews tokens through `client`; identities are in `trust_domain`.
    pub fn new(client: kube::Client, trust_domain: TrustDomain) -> Self {
        Self {
            client,
            trust_domain,
            cache: Arc::new(Mutex::new(ReviewCache::new(CACHE_TTL, CACHE_CAPACITY))),
            timeout: REVIEW_TIMEOUT,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_REVIEWS_IN_FLIGHT)),
        }
    }

    /// Other cache limits than [`CACHE_TTL`] and [`CACHE_CAPACITY`] (a zero TTL or capacity
    /// turns the cache off). Drops what is cached.
    pub fn with_cache(self, ttl: Duration, capacity: usize) -> Self {
        Self {
            cache: Arc::new(Mutex::new(ReviewCache::new(ttl, capacity))),
            ..self
        }
    }

    /// Another limit than [`REVIEW_TIMEOUT`] on one review.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// The identity `token` belongs to: from the cache, or by a `TokenReview`.
    pub async fn review(&self, token: &str) -> Result<SpiffeId, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(id) = self.cache.lock().get(&key, Instant::now()) {
            return Ok(id);
        }
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let _permit = self.in_flight.try_acquire().map_err(|_| {
            AuthError::ApiServer(format!(
                "{MAX_REVIEWS_IN_FLIGHT} token reviews already in flight; retry"
            ))
        })?;
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let response =
            tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &request))
                .await
                .map_err(|_| {
                    AuthError::ApiServer(format!("TokenReview timed out after {:?}", self.timeout))
                })?
                .map_err(|e| AuthError::ApiServer(format!("TokenReview: {e}")))?;
        let status = response.status.ok_or_else(|| {
            AuthError::ApiServer("the TokenReview response has no status".to_owned())
        })?;
        let id = evaluate(&status, &self.trust_domain)?;
        self.cache.lock().insert(key, id.clone(), Instant::now());
        Ok(id)
    }
}

impl Authenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, bearer: String) -> Result<SpiffeId, AuthError> {
        self.review(&bearer).await
    }
}

/// The identity a review's status grants, or why it grants none.
pub fn evaluate(
    status: &TokenReviewStatus,
    trust_domain: &TrustDomain,
) -> Result<SpiffeId, AuthError> {
    if status.authenticated != Some(true) {
        let reason = status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or("not authenticated");
        return Err(AuthError::Rejected {
            reason: bounded(reason),
        });
    }
    // The review asked for our audience and must say the token is bound to it. No audiences
    // means the token is valid for the API server's own audience only (an authenticator that
    // ignores audiences answers so): a token any pod holds for the API server is not a CA
    // credential.
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return Err(AuthError::WrongAudience {
            audiences: bounded(&audiences.join(", ")),
        });
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    let not_service_account = || AuthError::NotServiceAccount {
        username: bounded(username),
    };
    let (namespace, service_account) = service_account(username).ok_or_else(not_service_account)?;
    SpiffeId::workload(trust_domain, namespace, service_account).map_err(|_| not_service_account())
}

/// The namespace and name of a service account's username, `system:serviceaccount:<ns>:<sa>`.
pub fn service_account(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
    let (namespace, name) = rest.split_once(':')?;
    let valid = |part: &str| !part.is_empty() && !part.contains(':');
    (valid(namespace) && valid(name)).then_some((namespace, name))
}

/// At most [`MAX_REASON`] characters of an API server's text.
fn bounded(text: &str) -> String {
    text.chars().take(MAX_REASON).collect()
}

/// Positive reviews by the token's SHA-256, each until it expires.
#[derive(Debug)]
struct ReviewCache {
    entries: HashMap<[u8; 32], (SpiffeId, Instant)>,
    ttl: Duration,
    capacity: usize,
}

impl ReviewCache {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            ttl,
            capacity,
        }
    }

    fn get(&self, key: &[u8; 32], now: Instant) -> Option<SpiffeId> {
        self.entries
            .get(key)
            .filter(|(_, expires)| now < *expires)
            .map(|(id, _)| id.clone())
    }

    fn insert(&mut self, key: [u8; 32], id: SpiffeId, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        self.entries.retain(|_, (_, expires)| now < *expires);
        if self.entries.len() < self.capacity || self.entries.contains_key(&key) {
            self.entries.insert(key, (id, now + self.ttl));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("red.local").unwrap()
    }

    fn status(
        authenticated: bool,
        username: &str,
        audiences: Option<&[&str]>,
    ) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: audiences.map(|a| a.iter().map(|s| (*s).to_owned()).collect()),
            user: Some(UserInfo {
                username: Some(username.to_owned()),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    #[test]
    fn service_account_usernames() {
        assert_eq!(
            service_account("system:serviceaccount:bookinfo:ratings"),
            Some(("bookinfo", "ratings"))
        );
        for not in [
            "",
            "kubernetes-admin",
            "system:serviceaccount:",
            "system:serviceaccount:bookinfo",
            "system:serviceaccount:bookinfo:",
            "system:serviceaccount::ratings",
            "system:serviceaccount:a:b:c",
            "system:serviceaccounts:bookinfo:ratings",
            "System:serviceaccount:bookinfo:ratings",
            "system:node:worker-1",
            "xsystem:serviceaccount:bookinfo:ratings",
        ] {
            assert_eq!(service_account(not), None, "{not:?}");
        }
    }

    #[test]
    fn authenticated_service_account_gets_its_workload_identity() {
        let id = evaluate(
            &status(
                true,
                "system:serviceaccount:bookinfo:ratings",
                Some(&[AUDIENCE]),
            ),
            &td(),
        )
        .unwrap();
        assert_eq!(id.to_string(), "spiffe://red.local/ns/bookinfo/sa/ratings");
        // A review that reports no audiences: the token is the API server's, not ours.
        assert!(matches!(
            evaluate(&status(true, "system:serviceaccount:a:b", None), &td()),
            Err(AuthError::WrongAudience { .. })
        ));
    }

    #[test]
    fn refusals_carry_their_reason() {
        let mut rejected = status(false, "", None);
        rejected.user = None;
        rejected.error = Some("invalid bearer token".to_owned());
        match evaluate(&rejected, &td()) {
            Err(e @ AuthError::Rejected { .. }) => {
                assert!(e.to_string().contains("invalid bearer token"), "{e}");
                assert_eq!(e.reason(), "token_rejected");
                assert_eq!(e.code(), tonic::Code::Unauthenticated);
            }
            other => panic!("{other:?}"),
        }
        rejected.error = None;
        rejected.authenticated = None;
        assert!(matches!(
            evaluate(&rejected, &td()),
            Err(AuthError::Rejected { .. })
        ));

        let other_audience = status(
            true,
            "system:serviceaccount:a:b",
            Some(&["https://kubernetes.default.svc"]),
        );
        match evaluate(&other_audience, &td()) {
            Err(e @ AuthError::WrongAudience { .. }) => {
                assert!(e.to_string().contains("kubernetes.default.svc"), "{e}");
                assert_eq!(e.reason(), "wrong_audience");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            evaluate(&status(true, "system:serviceaccount:a:b", Some(&[])), &td()),
            Err(AuthError::WrongAudience { .. })
        ));

        for username in [
            "kubernetes-admin",
            "system:serviceaccount:a:b:c",
            // Valid by the username rules, but not a SPIFFE path segment.
            "system:serviceaccount:a/b:c",
            "system:serviceaccount:a:%zz",
        ] {
            match evaluate(&status(true, username, Some(&[AUDIENCE])), &td()) {
                Err(e @ AuthError::NotServiceAccount { .. }) => {
                    assert!(e.to_string().contains(username), "{e}");
                    assert_eq!(e.reason(), "not_service_account");
                }
                other => panic!("{username}: {other:?}"),
            }
        }
        let mut no_user = status(true, "", Some(&[AUDIENCE]));
        no_user.user = None;
        assert!(matches!(
            evaluate(&no_user, &td()),
            Err(AuthError::NotServiceAccount { .. })
        ));
    }

    #[test]
    fn long_reasons_are_bounded() {
        let mut rejected = status(false, "", None);
        rejected.error = Some("x".repeat(100_000));
        let message = evaluate(&rejected, &td()).unwrap_err().to_string();
        assert!(message.len() < 1000, "{}", message.len());
    }

    #[test]
    fn api_server_failures_are_unavailable() {
        let e = AuthError::ApiServer("connection refused".to_owned());
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert_eq!(e.reason(), "token_review_failed");
    }

    #[test]
    fn cache_expires_and_is_bounded() {
        let id = |n: u8| SpiffeId::workload(&td(), "ns", &format!("sa{n}")).unwrap();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut cache = ReviewCache::new(ttl, 2);
        cache.insert([1; 32], id(1), t0);
        assert_eq!(cache.get(&[1; 32], t0), Some(id(1)));
        assert_eq!(
            cache.get(&[1; 32], t0 + ttl - Duration::from_millis(1)),
            Some(id(1))
        );
        assert_eq!(cache.get(&[1; 32], t0 + ttl), None);
        assert_eq!(cache.get(&[2; 32], t0), None);

        // Full: a third token is not cached, a known one is refreshed.
        cache.insert([2; 32], id(2), t0);
        cache.insert([3; 32], id(3), t0);
        assert_eq!(cache.get(&[3; 32], t0), None);
        cache.insert([1; 32], id(1), t0 + Duration::from_secs(30));
        assert_eq!(cache.get(&[1; 32], t0 + ttl), Some(id(1)));
        assert_eq!(cache.entries.len(), 2);

        // Expired entries make room.
        let later = t0 + ttl + Duration::from_secs(1);
        cache.insert([3; 32], id(3), later);
        assert_eq!(cache.get(&[3; 32], later), Some(id(3)));
        assert_eq!(cache.get(&[2; 32], later), None);
        assert_eq!(cache.entries.len(), 2);

        let mut off = ReviewCache::new(Duration::ZERO, 10);
        off.insert([1; 32], id(1), t0);
        assert_eq!(off.get(&[1; 32], t0), None);
        let mut off = ReviewCache::new(ttl, 0);
        off.insert([1; 32], id(1), t0);
        assert_eq!(off.get(&[1; 32], t0), None);
    }
}
