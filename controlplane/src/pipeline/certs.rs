//! Certificates `isthmusd` issues for the proxies it configures over SDS (a stock Envoy cannot
//! send a CSR). One per workload identity, renewed at half-life; the key never leaves
//! `isthmusd` except inside the proxy's own SDS secret.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_api::identity::pem::{certs_from_pem, to_pem};
use isthmus_api::identity::{CertInfo, SpiffeId, generate_csr};
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
        // Half-life from the certificate's own validity (it is backdated a little).
        let renew_at = issued
            .chain
            .first()
            .and_then(|pem| certs_from_pem(pem.as_bytes(), "issued").ok())
            .and_then(|certs| certs.first().and_then(|c| CertInfo::parse(c).ok()))
            .map_or(now + Duration::from_secs(600), |info| {
                info.not_before + info.lifetime() / 2
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
