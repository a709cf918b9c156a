//! A throw-away certificate authority for tests (feature `test-util`): mints roots,
//! intermediates and workload certificates with any validity, including broken ones.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{
    IssuedChain, SpiffeId, TrustBundle, TrustDomain, WorkloadCertificate, pem::cert_to_pem, profile,
};

/// A CA (root or intermediate) of one trust domain.
#[derive(Debug)]
pub struct TestCa {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    /// This CA's certificate, then its parents' up to and including the root.
    chain: Vec<CertificateDer<'static>>,
}

#[allow(clippy::unwrap_used)]
impl TestCa {
    /// A self-signed root for `trust_domain`, valid from an hour ago for ten years.
    pub fn new(trust_domain: &str) -> Self {
        let td = TrustDomain::new(trust_domain).unwrap();
        let params = ca_params(&td, "root", hours_ago(1), years_from_now(10));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            trust_domain: td,
            issuer: Issuer::new(params, key),
            chain: vec![cert.der().clone()],
        }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Self {
        self.intermediate_with_validity(name, hours_ago(1), years_from_now(5))
    }

    /// An intermediate CA with the given validity (to build expired chains).
    pub fn intermediate_with_validity(
        &self,
        name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Self {
        let params = ca_params(&self.trust_domain, name, not_before, not_after);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Self {
            trust_domain: self.trust_domain.clone(),
            issuer: Issuer::new(params, key),
            chain,
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificate at the top of this CA's chain.
    pub fn root(&self) -> &CertificateDer<'static> {
        self.chain.last().unwrap()
    }

    pub fn root_pem(&self) -> String {
        cert_to_pem(self.root())
    }

    /// This CA's own certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// This CA's private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The bundle of this CA's trust domain, holding its root.
    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::new(self.trust_domain.clone(), vec![self.root().clone()]).unwrap()
    }

    /// A workload certificate for `id`, valid from a minute ago for an hour.
    pub fn issue(&self, id: &SpiffeId) -> WorkloadCertificate {
        self.issue_with_validity(
            id,
            minutes_ago(1),
            SystemTime::now() + Duration::from_secs(3600),
        )
    }

    /// A workload certificate with the given validity.
    pub fn issue_with_validity(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> WorkloadCertificate {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = leaf_params(&id.to_string(), not_before, not_after);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        WorkloadCertificate::new(
            self.leaf_chain(cert.der().clone()),
            key,
            vec![self.root().clone()],
        )
        .unwrap()
    }

    /// A certificate whose URI SAN is `uri`, verbatim (to build invalid SVIDs).
    pub fn issue_raw(
        &self,
        uri: Option<&str>,
        is_ca: bool,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = leaf_params("spiffe://placeholder", minutes_ago(1), years_from_now(1));
        params.subject_alt_names = uri
            .map(|u| vec![SanType::URI(u.try_into().unwrap())])
            .unwrap_or_default();
        if is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (self.leaf_chain(cert.der().clone()), key)
    }

    /// Signs a CSR for the identity it asks for, the way a well-behaved CA would.
    pub fn sign_csr(&self, csr_pem: &str, ttl: Duration) -> IssuedChain {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        let uri = match csr.params.subject_alt_names.first() {
            Some(SanType::URI(uri)) => uri.to_string(),
            other => panic!("CSR without URI SAN: {other:?}"),
        };
        self.sign(csr, &uri, ttl)
    }

    /// Signs a CSR's key for `id`, whatever the CSR asked (a misbehaving CA).
    pub fn sign_csr_as(&self, csr_pem: &str, id: &SpiffeId, ttl: Duration) -> IssuedChain {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        self.sign(csr, &id.to_string(), ttl)
    }

    fn sign(
        &self,
        mut csr: CertificateSigningRequestParams,
        uri: &str,
        ttl: Duration,
    ) -> IssuedChain {
        csr.params = leaf_params(uri, minutes_ago(1), SystemTime::now() + ttl);
        let cert = csr.signed_by(&self.issuer).unwrap();
        IssuedChain {
            chain: self.leaf_chain(cert.der().clone()),
            roots: vec![self.root().clone()],
        }
    }

    /// The leaf followed by every CA certificate below the root.
    fn leaf_chain(&self, leaf: CertificateDer<'static>) -> Vec<CertificateDer<'static>> {
        let mut chain = vec![leaf];
        chain.extend(self.chain[..self.chain.len() - 1].iter().cloned());
        chain
    }
}

fn ca_params(
    td: &TrustDomain,
    name: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> CertificateParams {
    profile::ca_cert_params(td, &format!("test {name} CA"), not_before, not_after)
}

#[allow(clippy::unwrap_used)]
fn leaf_params(uri: &str, not_before: SystemTime, not_after: SystemTime) -> CertificateParams {
    profile::workload_cert_params(uri, not_before, not_after).unwrap()
}

pub fn minutes_ago(m: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(60 * m)
}

pub fn hours_ago(h: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600 * h)
}

pub fn years_from_now(y: u64) -> SystemTime {
    SystemTime::now() + Duration::from_secs(365 * 24 * 3600 * y)
}
