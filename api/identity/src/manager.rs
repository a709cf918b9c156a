//! Keeps a workload's certificate fresh: requests one at start, renews it at half its lifetime
//! (with jitter so a fleet does not renew in lock-step), retries failures with exponential
//! backoff, and keeps presenting the still-valid certificate while renewal fails.
//!
//! Used by `isthmus-proxy` (against `isthmusd` over gRPC) and by `isthmusd` itself (against its
//! own CA in-process), through [`CertificateSource`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_runtime::backoff::{Backoff, Jitter};
use rand::Rng;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::UnixTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::bundle::{TrustBundle, TrustBundles};
use super::cert::format_time;
use super::credentials::{CredentialCell, WorkloadCertificate};
use super::csr::generate_csr;
use super::pem::certs_from_pem;
use super::spiffe::SpiffeId;
use super::verify::{Usage, verify_svid};

/// A signed chain as a CA returns it.
#[derive(Debug, Clone)]
pub struct IssuedChain {
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// Roots of the local trust domain.
    pub roots: Vec<CertificateDer<'static>>,
}

impl IssuedChain {
    /// From the PEM lists a CA answers with (one certificate or more per entry).
    pub fn from_pem(chain: &[String], roots: &[String]) -> Result<Self, IssueError> {
        let parse = |pems: &[String], what: &str| {
            certs_from_pem(pems.concat().as_bytes(), what)
                .map_err(|e| IssueError::InvalidResponse(e.to_string()))
        };
        Ok(Self {
            chain: parse(chain, "cert_chain")?,
            roots: parse(roots, "roots")?,
        })
    }
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the CA refused the request ({code}): {message}")]
    Refused { code: String, message: String },
    #[error("the CA is unreachable: {0}")]
    Unavailable(String),
    #[error("the CA's answer is unusable: {0}")]
    InvalidResponse(String),
    #[error("local failure: {0}")]
    Local(String),
}

/// Something that signs CSRs: the CA over gRPC, or the CA itself in-process.
pub trait CertificateSource: Send + Sync + 'static {
    fn issue(
        &self,
        csr_pem: String,
        ttl: Duration,
    ) -> impl Future<Output = Result<IssuedChain, IssueError>> + Send;
}

/// Timing of requests and renewals.
#[derive(Debug, Clone)]
pub struct CertManagerConfig {
    /// Lifetime asked of the CA.
    pub ttl: Duration,
    /// Fraction of the lifetime after which renewal starts.
    pub renew_fraction: f64,
    /// Up to this fraction of the lifetime is taken off the renewal time at random.
    pub jitter_fraction: f64,
    /// The retry step after a failed request; it doubles with each failure, up to
    /// `max_backoff`, and each wait is 50-100 % of it (the whole step when `jitter_fraction`
    /// is 0).
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for CertManagerConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
            renew_fraction: 0.5,
            jitter_fraction: 0.05,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Handle on a running certificate manager. The renewal task stops when every handle and
/// subscription is dropped.
#[derive(Debug, Clone)]
pub struct CertManager {
    current: watch::Receiver<Option<Arc<WorkloadCertificate>>>,
    cell: Arc<CredentialCell>,
}

impl CertManager {
    /// Starts fetching and renewing the certificate of `id` from `source`.
    pub fn spawn<S: CertificateSource>(
        id: SpiffeId,
        source: S,
        config: CertManagerConfig,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = watch::channel(None);
        let cell = Arc::new(CredentialCell::new());
        let task = tokio::spawn(run(id, source, config, tx, cell.clone()));
        (Self { current: rx, cell }, task)
    }

    /// Waits for the first certificate.
    pub async fn ready(&mut self) -> Option<Arc<WorkloadCertificate>> {
        self.current
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|c| c.clone())
    }

    /// The certificate in use, if one was obtained yet.
    pub fn current(&self) -> Option<Arc<WorkloadCertificate>> {
        self.current.borrow().clone()
    }

    /// Notified on every new certificate.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<WorkloadCertificate>>> {
        self.current.clone()
    }

    /// What TLS configurations present: always the newest certificate.
    pub fn resolver(&self) -> Arc<CredentialCell> {
        self.cell.clone()
    }
}

async fn run<S: CertificateSource>(
    id: SpiffeId,
    source: S,
    config: CertManagerConfig,
    tx: watch::Sender<Option<Arc<WorkloadCertificate>>>,
    cell: Arc<CredentialCell>,
) {
    // Jittered (50-100 % of the step) so a fleet does not retry in lock-step after a CA
    // restart; without jitter when the renewal jitter is off too (tests).
    let jitter = if config.jitter_fraction > 0.0 {
        Jitter::Equal
    } else {
        Jitter::None
    };
    let mut backoff = Backoff::new(config.initial_backoff, config.max_backoff).with_jitter(jitter);
    loop {
        let wait = match fetch(&id, &source, config.ttl).await {
            Ok(cert) => {
                let wait = renewal_delay(&cert, SystemTime::now(), &config);
                tracing::info!(
                    identity = %id,
                    serial = %cert.leaf().serial,
                    expires = %format_time(cert.not_after()),
                    renew_in_s = wait.as_secs(),
                    "workload certificate issued"
                );
                cell.store(&cert);
                tx.send_replace(Some(Arc::new(cert)));
                backoff.reset();
                wait
            }
            Err(error) => {
                let still_valid = tx
                    .borrow()
                    .as_ref()
                    .is_some_and(|c| c.leaf().is_valid_at(SystemTime::now()));
                let wait = backoff.next_delay();
                tracing::warn!(
                    identity = %id, %error, still_valid, retry_in_ms = wait.as_millis() as u64,
                    "certificate request failed; keeping the current certificate"
                );
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = tx.closed() => return,
        }
    }
}

async fn fetch<S: CertificateSource>(
    id: &SpiffeId,
    source: &S,
    ttl: Duration,
) -> Result<WorkloadCertificate, IssueError> {
    let request = generate_csr(id).map_err(|e| IssueError::Local(e.to_string()))?;
    let issued = source.issue(request.csr_pem, ttl).await?;
    let bad = |m: String| IssueError::InvalidResponse(m);
    let cert = WorkloadCertificate::new(issued.chain, request.key, issued.roots)
        .map_err(|e| bad(e.to_string()))?;
    if cert.spiffe_id() != id {
        return Err(bad(format!(
            "issued for {}, asked for {id}",
            cert.spiffe_id()
        )));
    }
    // The chain must verify against the roots the CA claims, or peers would reject it.
    let bundle = TrustBundle::new(id.trust_domain().clone(), cert.roots().to_vec())
        .map_err(|e| bad(e.to_string()))?;
    verify_svid(
        &TrustBundles::new(bundle),
        &cert.chain()[0],
        &cert.chain()[1..],
        UnixTime::now(),
        Usage::ClientAuth,
    )
    .map_err(|e| bad(e.to_string()))?;
    Ok(cert)
}

/// Renewal is never scheduled sooner than this, whatever the certificate says: a CA handing out
/// nearly expired certificates must not turn the manager into a busy loop.
const MIN_RENEWAL_DELAY: Duration = Duration::from_secs(1);

/// Time from `now` (when `cert` was received) until its renewal is due. The lifetime counts from
/// receipt, not from `not_before`: CAs back-date certificates for clock skew (ours by 5 minutes),
/// and counting that would make short-lived certificates due at once.
fn renewal_delay(
    cert: &WorkloadCertificate,
    now: SystemTime,
    config: &CertManagerConfig,
) -> Duration {
    let leaf = cert.leaf();
    let start = leaf.not_before.max(now);
    let remaining = leaf
        .not_after
        .duration_since(start)
        .unwrap_or_default()
        .as_secs_f64();
    let jitter = if config.jitter_fraction > 0.0 {
        rand::rng().random_range(0.0..config.jitter_fraction)
    } else {
        0.0
    };
    let due = Duration::from_secs_f64((remaining * (config.renew_fraction - jitter)).max(0.0));
    (start + due)
        .duration_since(now)
        .unwrap_or_default()
        .max(MIN_RENEWAL_DELAY)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::testing::TestCa;

    #[derive(Clone)]
    struct FakeCa {
        ca: Arc<TestCa>,
        calls: Arc<AtomicUsize>,
        failing: Arc<AtomicBool>,
    }

    impl CertificateSource for FakeCa {
        async fn issue(&self, csr_pem: String, ttl: Duration) -> Result<IssuedChain, IssueError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                return Err(IssueError::Unavailable("connection refused".into()));
            }
            Ok(self.ca.sign_csr(&csr_pem, ttl))
        }
    }

    fn setup() -> (FakeCa, SpiffeId) {
        let ca = FakeCa {
            ca: Arc::new(TestCa::new("red.local")),
            calls: Arc::default(),
            failing: Arc::default(),
        };
        (ca, SpiffeId::parse("spiffe://red.local/ns/a/sa/b").unwrap())
    }

    fn config() -> CertManagerConfig {
        CertManagerConfig {
            ttl: Duration::from_secs(3600),
            jitter_fraction: 0.0,
            ..CertManagerConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_half_life() {
        let (ca, id) = setup();
        let (mut manager, _task) = CertManager::spawn(id.clone(), ca.clone(), config());
        let first = manager.ready().await.unwrap();
        assert_eq!(first.spiffe_id(), &id);
        assert!(!manager.resolver().is_empty());
        assert_eq!(ca.calls.load(Ordering::SeqCst), 1);

        // Just before half-life (the cert is back-dated a minute): no renewal yet.
        tokio::time::sleep(Duration::from_secs(1700)).await;
        assert_eq!(ca.calls.load(Ordering::SeqCst), 1);
        let mut updates = manager.subscribe();
        updates.mark_unchanged();
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert_eq!(ca.calls.load(Ordering::SeqCst), 2);
        assert!(updates.has_changed().unwrap());
        assert_ne!(
            manager.current().unwrap().leaf().serial,
            first.leaf().serial
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_valid_certificate_and_backs_off_when_renewal_fails() {
        let (ca, id) = setup();
        let (mut manager, _task) = CertManager::spawn(id, ca.clone(), config());
        let first = manager.ready().await.unwrap();
        ca.failing.store(true, Ordering::SeqCst);

        // Renewal falls due (about 30 min in) and fails; the valid certificate stays in use.
        tokio::time::sleep(Duration::from_secs(1800)).await;
        let at_due = ca.calls.load(Ordering::SeqCst);
        assert!(at_due >= 2, "renewal was not attempted");
        assert_eq!(
            manager.current().unwrap().leaf().serial,
            first.leaf().serial
        );
        // Retries back off exponentially to the 60 s cap: over ten minutes, about ten attempts,
        // not hundreds.
        tokio::time::sleep(Duration::from_secs(600)).await;
        let retries = ca.calls.load(Ordering::SeqCst) - at_due;
        assert!((9..=16).contains(&retries), "{retries} retries in 600 s");
        assert_eq!(
            manager.current().unwrap().leaf().serial,
            first.leaf().serial
        );

        ca.failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_ne!(
            manager.current().unwrap().leaf().serial,
            first.leaf().serial
        );
    }

    #[tokio::test(start_paused = true)]
    async fn first_request_retries_until_the_ca_answers() {
        let (ca, id) = setup();
        ca.failing.store(true, Ordering::SeqCst);
        let (mut manager, _task) = CertManager::spawn(id, ca.clone(), config());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(manager.current().is_none());
        ca.failing.store(false, Ordering::SeqCst);
        assert!(manager.ready().await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn back_dated_short_lived_certificates_renew_at_half_life_not_at_once() {
        let (ca, id) = setup();
        // The fake CA back-dates by a minute; a 60 s certificate is due 30 s after receipt.
        let config = CertManagerConfig {
            ttl: Duration::from_secs(60),
            ..config()
        };
        let (mut manager, _task) = CertManager::spawn(id, ca.clone(), config);
        manager.ready().await.unwrap();
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(ca.calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(ca.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_already_expired_answer_does_not_cause_a_busy_loop() {
        let (ca, id) = setup();
        let config = CertManagerConfig {
            ttl: Duration::ZERO,
            ..config()
        };
        let (mut manager, _task) = CertManager::spawn(id, ca.clone(), config);
        manager.ready().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        let calls = ca.calls.load(Ordering::SeqCst);
        assert!(calls <= 12, "{calls} requests in 10 s");
    }

    #[tokio::test(start_paused = true)]
    async fn stops_when_the_last_handle_is_dropped() {
        let (ca, id) = setup();
        let (mut manager, task) = CertManager::spawn(id, ca, config());
        manager.ready().await.unwrap();
        drop(manager);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_a_certificate_for_another_identity() {
        struct Liar(TestCa);
        impl CertificateSource for Liar {
            async fn issue(&self, csr: String, ttl: Duration) -> Result<IssuedChain, IssueError> {
                let other = SpiffeId::parse("spiffe://red.local/ns/x/sa/admin").unwrap();
                Ok(self.0.sign_csr_as(&csr, &other, ttl))
            }
        }
        let (_, id) = setup();
        let err = fetch(
            &id,
            &Liar(TestCa::new("red.local")),
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, IssueError::InvalidResponse(_)), "{err}");
        assert!(
            err.to_string()
                .contains("issued for spiffe://red.local/ns/x/sa/admin"),
            "{err}"
        );
    }
}
