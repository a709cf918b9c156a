//! Certificates `isthmusd` issues for the proxies it configures over SDS (a stock Envoy cannot
//! send a CSR). One per workload identity, renewed at half-life; the key never leaves
//! `isthmusd` except inside the proxy's own SDS secret.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_identity::pem::{certs_from_pem, to_pem};
use isthmus_identity::{CertInfo, SpiffeId, generate_csr};
use zeroize::Zeroizing;

use crate::ca::Authority;

#[derive(Debug, Clone)]
pub struct IssuedCredential {
    pub chain_pem: String,
    pub key_pem: Zeroizing<String>,
    pub renew_at: SystemTime,
}

#[derive(Debug)]
pub struct ProxyCertificates {
    authority: Arc<Authority>,
    issued: HashMap<SpiffeId, IssuedCredential>,
}

impl ProxyCertificates {
    pub fn new(authority: Arc<Authority>) -> Self {
        Self {
            authority,
            issued: HashMap::new(),
        }
    }

    /// The credential of `id`, issued now if there is none or it is due for renewal.
    pub fn get(&mut self, id: &SpiffeId, now: SystemTime) -> Result<IssuedCredential, String> {
        if let Some(c) = self.issued.get(id)
            && c.renew_at > now
        {
            return Ok(c.clone());
        }
        let request = generate_csr(id).map_err(|e| e.to_string())?;
        let issued = self
            .authority
            .sign(&request.csr_pem, id, 0)
            .map_err(|e| format!("cannot issue a certificate for {id}: {e}"))?;
        // Half of the lifetime left from now: the certificate is back-dated (5 minutes) for
        // clock skew, and counting that would make a short-lived one due at once, every second.
        let renew_at = issued
            .chain
            .first()
            .and_then(|pem| certs_from_pem(pem.as_bytes(), "issued").ok())
            .and_then(|certs| certs.first().and_then(|c| CertInfo::parse(c).ok()))
            .map_or(now + Duration::from_secs(600), |info| {
                let start = info.not_before.max(now);
                start + info.not_after.duration_since(start).unwrap_or_default() / 2
            });
        let credential = IssuedCredential {
            chain_pem: issued.chain.concat(),
            key_pem: Zeroizing::new(to_pem("PRIVATE KEY", request.key.secret_der())),
            renew_at: renew_at.max(now + Duration::from_secs(1)),
        };
        self.issued.insert(id.clone(), credential.clone());
        Ok(credential)
    }

    /// When the next certificate is due.
    pub fn next_renewal(&self) -> Option<SystemTime> {
        self.issued.values().map(|c| c.renew_at).min()
    }

    /// Forgets identities no proxy uses any more.
    pub fn retain(&mut self, in_use: impl Fn(&SpiffeId) -> bool) {
        self.issued.retain(|id, _| in_use(id));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use isthmus_identity::SpiffeId;
    use isthmus_identity::testing::TestCa;

    use super::*;
    use crate::ca::authority::{TtlPolicy, signing_with};

    fn authority(ttl: Duration) -> Arc<Authority> {
        let policy = TtlPolicy {
            default: ttl,
            ..TtlPolicy::default()
        };
        Arc::new(signing_with(&TestCa::new("red.local"), policy))
    }

    #[test]
    fn short_lived_certificates_renew_at_half_their_remaining_life_not_at_once() {
        let mut certs = ProxyCertificates::new(authority(Duration::from_secs(20)));
        let id = SpiffeId::parse("spiffe://red.local/ns/shop/sa/client").unwrap();
        let now = SystemTime::now();
        let first = certs.get(&id, now).unwrap();
        let due = first.renew_at.duration_since(now).unwrap();
        assert!(
            due >= Duration::from_secs(9) && due <= Duration::from_secs(11),
            "a 20 s certificate is renewed after about 10 s, not {due:?}"
        );
        // Until then the same credential is served; after, a new one.
        let again = certs.get(&id, now + Duration::from_secs(5)).unwrap();
        assert_eq!(again.chain_pem, first.chain_pem);
        let renewed = certs.get(&id, now + Duration::from_secs(11)).unwrap();
        assert_ne!(renewed.chain_pem, first.chain_pem);
    }
}
