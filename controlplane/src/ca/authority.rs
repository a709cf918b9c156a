//! Signing workload certificates. The CA never copies what a CSR asks for: it checks the request
//! against the identity the caller is entitled to, then builds the certificate from the mesh's
//! own profile with only the CSR's public key taken over.

use std::time::{Duration, SystemTime};

use isthmus_identity::pem::cert_to_pem;
use isthmus_identity::{SpiffeId, TrustDomain, profile};
use rcgen::{CertificateSigningRequestParams, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;

use super::material::CaMaterial;

/// A CSR larger than this is refused before parsing.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Certificates start this long before issuance, to absorb clock skew between hosts.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Lifetimes of issued certificates.
#[derive(Debug, Clone, Copy)]
pub struct TtlPolicy {
    pub default: Duration,
    pub max: Duration,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        Self {
            default: Duration::from_secs(24 * 3600),
            max: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// Why a CSR was not signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the CSR is larger than {MAX_CSR_BYTES} bytes")]
    TooLarge,
    #[error("malformed CSR: {0}")]
    Malformed(String),
    #[error("the CSR's signature does not verify with its own public key")]
    BadSignature,
    #[error("the CSR has no URI SAN: it must ask for the caller's SPIFFE ID")]
    NoIdentity,
    #[error("the CSR's URI SAN is not a valid SPIFFE ID: {0}")]
    BadIdentity(String),
    #[error("the CSR asks for trust domain {requested}; this CA signs only for {local}")]
    ForeignTrustDomain {
        requested: TrustDomain,
        local: TrustDomain,
    },
    #[error("the CSR asks for {requested}, but the caller is entitled only to {entitled}")]
    IdentityMismatch {
        requested: SpiffeId,
        entitled: SpiffeId,
    },
    #[error("the CSR asks for names beyond the caller's SPIFFE ID: {0}")]
    ExtraNames(String),
    #[error("the CSR asks for a CA certificate; workloads get leaf certificates only")]
    CaRequested,
    #[error("requested lifetime {requested_s}s exceeds the maximum {max_s}s")]
    TtlTooLong { requested_s: u64, max_s: u64 },
    #[error("requested lifetime {0}s is negative")]
    NegativeTtl(i64),
    #[error("signing failed: {0}")]
    Internal(String),
}

impl SignError {
    /// A short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge => "csr_too_large",
            Self::Malformed(_) => "malformed_csr",
            Self::BadSignature => "bad_csr_signature",
            Self::NoIdentity => "no_identity",
            Self::BadIdentity(_) => "bad_identity",
            Self::ForeignTrustDomain { .. } => "wrong_trust_domain",
            Self::IdentityMismatch { .. } => "identity_mismatch",
            Self::ExtraNames(_) => "extra_names",
            Self::CaRequested => "ca_requested",
            Self::TtlTooLong { .. } => "ttl_too_long",
            Self::NegativeTtl(_) => "bad_ttl",
            Self::Internal(_) => "internal",
        }
    }

    /// The gRPC status this refusal is reported with.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::TooLarge
            | Self::Malformed(_)
            | Self::BadSignature
            | Self::NoIdentity
            | Self::BadIdentity(_)
            | Self::TtlTooLong { .. }
            | Self::NegativeTtl(_) => Code::InvalidArgument,
            Self::ForeignTrustDomain { .. }
            | Self::IdentityMismatch { .. }
            | Self::ExtraNames(_)
            | Self::CaRequested => Code::PermissionDenied,
            Self::Internal(_) => Code::Internal,
        }
    }
}

/// A signed chain, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf first, then intermediates (no root).
    pub chain: Vec<String>,
    pub roots: Vec<String>,
    pub spiffe_id: SpiffeId,
}

/// A TLS server certificate for DNS names and its private key, PEM.
pub struct IssuedServer {
    /// Leaf first, then intermediates (no root).
    pub chain: Vec<String>,
    pub key_pem: zeroize::Zeroizing<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for IssuedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedServer")
            .field("chain", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The mesh's signing authority.
#[derive(Debug)]
pub struct Authority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the signing CA and intermediates, appended to every leaf.
    chain_tail: Vec<String>,
    roots: Vec<String>,
    ca_not_after: SystemTime,
    ttl: TtlPolicy,
}

impl Authority {
    pub fn new(
        trust_domain: TrustDomain,
        material: CaMaterial,
        ttl: TtlPolicy,
    ) -> Result<Self, SignError> {
        let mut chain_tail = Vec::new();
        // A self-signed root signs directly; its certificate is the root, not part of the chain.
        if !material.roots.contains(&material.cert) {
            chain_tail.push(cert_to_pem(&material.cert));
        }
        chain_tail.extend(material.intermediates.iter().map(|c| cert_to_pem(c)));
        let roots = material.roots.iter().map(|c| cert_to_pem(c)).collect();
        let issuer = Issuer::from_ca_cert_der(&material.cert, material.key)
            .map_err(|e| SignError::Internal(format!("CA certificate: {e}")))?;
        Ok(Self {
            trust_domain,
            issuer,
            chain_tail,
            roots,
            ca_not_after: material.not_after,
            ttl,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The trust domain's roots, PEM.
    pub fn roots_pem(&self) -> &[String] {
        &self.roots
    }

    /// Signs `csr_pem` if it asks for exactly `entitled` and nothing more. `requested_ttl_s` of
    /// 0 means the default lifetime.
    pub fn sign(
        &self,
        csr_pem: &str,
        entitled: &SpiffeId,
        requested_ttl_s: i64,
    ) -> Result<Issued, SignError> {
        let ttl = self.ttl_for(requested_ttl_s)?;
        let mut csr = parse_csr(csr_pem)?;
        let requested = requested_identity(&csr)?;
        if requested.trust_domain() != &self.trust_domain {
            return Err(SignError::ForeignTrustDomain {
                requested: requested.trust_domain().clone(),
                local: self.trust_domain.clone(),
            });
        }
        if &requested != entitled {
            return Err(SignError::IdentityMismatch {
                requested,
                entitled: entitled.clone(),
            });
        }
        if matches!(csr.params.is_ca, IsCa::Ca(_)) {
            return Err(SignError::CaRequested);
        }
        let now = SystemTime::now();
        let not_after = (now + ttl).min(self.ca_not_after);
        csr.params =
            profile::workload_cert_params(&entitled.to_string(), now - BACKDATE, not_after)
                .map_err(|e| SignError::Internal(e.to_string()))?;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| SignError::Internal(e.to_string()))?;
        let mut chain = Vec::with_capacity(1 + self.chain_tail.len());
        chain.push(cert_to_pem(cert.der()));
        chain.extend(self.chain_tail.iter().cloned());
        Ok(Issued {
            chain,
            roots: self.roots.clone(),
            spiffe_id: entitled.clone(),
        })
    }

    /// Issues `isthmusd`'s own TLS server certificate for `dns_names` (the admission webhook's),
    /// with a key generated here that never leaves the process; the default lifetime.
    pub fn issue_dns_server(&self, dns_names: &[String]) -> Result<IssuedServer, SignError> {
        let internal = |e: rcgen::Error| SignError::Internal(e.to_string());
        let key = KeyPair::generate().map_err(internal)?;
        let now = SystemTime::now();
        let not_after = (now + self.ttl.default).min(self.ca_not_after);
        let params = profile::dns_server_cert_params(dns_names, now - BACKDATE, not_after)
            .map_err(internal)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(internal)?;
        let mut chain = Vec::with_capacity(1 + self.chain_tail.len());
        chain.push(cert_to_pem(cert.der()));
        chain.extend(self.chain_tail.iter().cloned());
        Ok(IssuedServer {
            chain,
            key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
            not_before: now,
            not_after,
        })
    }

    fn ttl_for(&self, requested_s: i64) -> Result<Duration, SignError> {
        let requested_s =
            u64::try_from(requested_s).map_err(|_| SignError::NegativeTtl(requested_s))?;
        if requested_s == 0 {
            return Ok(self.ttl.default);
        }
        if requested_s > self.ttl.max.as_secs() {
            return Err(SignError::TtlTooLong {
                requested_s,
                max_s: self.ttl.max.as_secs(),
            });
        }
        Ok(Duration::from_secs(requested_s))
    }
}

fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, SignError> {
    if csr_pem.len() > MAX_CSR_BYTES {
        return Err(SignError::TooLarge);
    }
    if csr_pem.trim().is_empty() {
        return Err(SignError::Malformed("empty".into()));
    }
    let der =
        CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                SignError::Malformed("no PEM CERTIFICATE REQUEST block".into())
            }
            other => SignError::Malformed(format!("bad PEM: {other}")),
        })?;
    // rcgen parses the request and verifies its self-signature.
    CertificateSigningRequestParams::from_der(&der).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => SignError::BadSignature,
        rcgen::Error::UnsupportedExtension => {
            SignError::Malformed("it carries an extension this CA does not accept".into())
        }
        rcgen::Error::UnsupportedSignatureAlgorithm => {
            SignError::Malformed("unsupported signature algorithm".into())
        }
        other => SignError::Malformed(other.to_string()),
    })
}

fn requested_identity(csr: &CertificateSigningRequestParams) -> Result<SpiffeId, SignError> {
    let mut uris = Vec::new();
    let mut others = Vec::new();
    for san in &csr.params.subject_alt_names {
        match san {
            SanType::URI(uri) => uris.push(uri.as_str().to_owned()),
            SanType::DnsName(name) => others.push(format!("DNS:{}", name.as_str())),
            SanType::IpAddress(ip) => others.push(format!("IP:{ip}")),
            SanType::Rfc822Name(mail) => others.push(format!("email:{}", mail.as_str())),
            other => others.push(format!("{other:?}")),
        }
    }
    if !others.is_empty() {
        return Err(SignError::ExtraNames(others.join(", ")));
    }
    match uris.as_slice() {
        [] => Err(SignError::NoIdentity),
        [uri] => SpiffeId::parse(uri).map_err(|e| SignError::BadIdentity(e.to_string())),
        many => Err(SignError::ExtraNames(many.join(", "))),
    }
}

/// An authority signing with `ca` (its own certificate, no intermediates, its root), for tests.
#[cfg(test)]
pub(crate) fn signing_with(ca: &isthmus_identity::testing::TestCa, ttl: TtlPolicy) -> Authority {
    let material = CaMaterial {
        key: KeyPair::from_pem(&ca.key_pem()).expect("the test CA's key"),
        cert: ca.cert().clone(),
        intermediates: Vec::new(),
        roots: vec![ca.root().clone()],
        not_after: isthmus_identity::CertInfo::parse(ca.cert())
            .expect("the test CA's certificate")
            .not_after,
        origin: "test".into(),
    };
    Authority::new(ca.trust_domain().clone(), material, ttl).expect("an authority")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use isthmus_identity::pem::certs_from_pem;
    use isthmus_identity::testing::{TestCa, hours_ago};
    use isthmus_identity::{CertInfo, SpiffeId, TrustBundles, Usage, generate_csr, verify_svid};
    use rcgen::KeyPair;
    use rustls_pki_types::UnixTime;

    use super::*;

    const WEB: &str = "spiffe://red.local/ns/app/sa/web";

    fn authority(ca: &TestCa) -> Authority {
        signing_with(ca, TtlPolicy::default())
    }

    fn sign(
        authority: &Authority,
        asked: &str,
        entitled: &str,
        ttl: i64,
    ) -> Result<Issued, SignError> {
        let csr = generate_csr(&SpiffeId::parse(asked).unwrap()).unwrap();
        authority.sign(&csr.csr_pem, &SpiffeId::parse(entitled).unwrap(), ttl)
    }

    fn leaf(issued: &Issued) -> CertInfo {
        CertInfo::parse(&certs_from_pem(issued.chain[0].as_bytes(), "leaf").unwrap()[0]).unwrap()
    }

    #[test]
    fn signs_through_an_intermediate_and_the_chain_verifies() {
        let root = TestCa::new("red.local");
        let intermediate = root.intermediate("signing");
        let issued = sign(&authority(&intermediate), WEB, WEB, 0).unwrap();
        assert_eq!(issued.chain.len(), 2, "leaf + signing CA");
        let chain = certs_from_pem(issued.chain.concat().as_bytes(), "chain").unwrap();
        let id = verify_svid(
            &TrustBundles::new(root.bundle()),
            &chain[0],
            &chain[1..],
            UnixTime::now(),
            Usage::ClientAuth,
        )
        .unwrap();
        assert_eq!(id.to_string(), WEB);
        // Default lifetime 24 h, back-dated 5 minutes.
        let info = leaf(&issued);
        assert_eq!(info.lifetime(), Duration::from_secs(24 * 3600 + 300));
        assert!(!info.is_ca);
    }

    #[test]
    fn a_self_signed_root_is_not_repeated_in_the_chain() {
        let root = TestCa::new("red.local");
        let issued = sign(&authority(&root), WEB, WEB, 3600).unwrap();
        assert_eq!(issued.chain.len(), 1);
        assert_eq!(leaf(&issued).lifetime(), Duration::from_secs(3600 + 300));
    }

    #[test]
    fn lifetime_never_outlasts_the_signing_ca() {
        let root = TestCa::new("red.local");
        let soon = SystemTime::now() + Duration::from_secs(3600);
        let short_ca = root.intermediate_with_validity("short", hours_ago(1), soon);
        let issued = sign(&authority(&short_ca), WEB, WEB, 0).unwrap();
        let not_after = leaf(&issued).not_after;
        assert!(not_after <= soon, "leaf outlives its CA");
    }

    #[test]
    fn refusals_name_the_reason_and_status() {
        let root = TestCa::new("red.local");
        let a = authority(&root);
        let cases: Vec<(Result<Issued, SignError>, &str, tonic::Code)> = vec![
            (
                sign(&a, "spiffe://red.local/ns/app/sa/db", WEB, 0),
                "identity_mismatch",
                tonic::Code::PermissionDenied,
            ),
            (
                sign(&a, "spiffe://blue.local/ns/app/sa/web", WEB, 0),
                "wrong_trust_domain",
                tonic::Code::PermissionDenied,
            ),
            (
                sign(&a, WEB, WEB, -5),
                "bad_ttl",
                tonic::Code::InvalidArgument,
            ),
            (
                sign(&a, WEB, WEB, 91 * 24 * 3600),
                "ttl_too_long",
                tonic::Code::InvalidArgument,
            ),
            (
                a.sign(
                    "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n",
                    &SpiffeId::parse(WEB).unwrap(),
                    0,
                ),
                "malformed_csr",
                tonic::Code::InvalidArgument,
            ),
        ];
        for (result, reason, code) in cases {
            let err = result.expect_err(reason);
            assert_eq!(err.reason(), reason, "{err}");
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn extra_names_in_the_csr_are_refused() {
        let root = TestCa::new("red.local");
        let key = KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["evil.example.com".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI(WEB.try_into().unwrap()));
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let err = authority(&root)
            .sign(&csr, &SpiffeId::parse(WEB).unwrap(), 0)
            .unwrap_err();
        assert_eq!(err.reason(), "extra_names");
        assert!(err.to_string().contains("DNS:evil.example.com"), "{err}");
    }
}
