//! A workload's own credentials (key, certificate chain, the roots it was issued under) and the
//! cell that hands the current ones to every new TLS handshake.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::cert::{CertError, CertInfo};
use super::pem::{PemError, certs_to_pem};
use super::spiffe::SpiffeId;

/// Credentials that do not form a usable identity.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("empty certificate chain")]
    EmptyChain,
    #[error("leaf certificate: {0}")]
    Leaf(#[from] CertError),
    #[error("private key: {0}")]
    Key(String),
    #[error("the private key does not match the leaf certificate's public key")]
    KeyMismatch,
    #[error(transparent)]
    Pem(#[from] PemError),
}

/// A workload's certificate chain (leaf first), its private key, and the local roots.
pub struct WorkloadCertificate {
    id: SpiffeId,
    leaf: CertInfo,
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    certified: Arc<CertifiedKey>,
    key_pem: String,
}

impl WorkloadCertificate {
    /// Checks that the leaf carries a SPIFFE ID and that the key matches it.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CredentialError> {
        let leaf_der = chain.first().ok_or(CredentialError::EmptyChain)?;
        let leaf = CertInfo::parse(leaf_der)?;
        let id = leaf.spiffe_id()?;
        let key_pem = super::pem::to_pem(private_key_label(&key), key.secret_der());
        let provider = rustls::crypto::ring::default_provider();
        let certified =
            CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => CredentialError::KeyMismatch,
                other => CredentialError::Key(other.to_string()),
            })?;
        Ok(Self {
            id,
            leaf,
            chain,
            roots,
            certified: Arc::new(certified),
            key_pem,
        })
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }

    /// The decoded leaf certificate.
    pub fn leaf(&self) -> &CertInfo {
        &self.leaf
    }

    pub fn not_after(&self) -> SystemTime {
        self.leaf.not_after
    }

    /// Leaf first, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The roots of the local trust domain, as the CA sent them.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The chain as PEM text, leaf first.
    pub fn chain_pem(&self) -> String {
        certs_to_pem(&self.chain)
    }

    /// The private key as PEM text (for writing files with mode 0600, never for logs).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// What rustls signs handshakes with.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }
}

impl fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("id", &self.id.to_string())
            .field("serial", &self.leaf.serial)
            .field("not_after", &super::cert::format_time(self.leaf.not_after))
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn private_key_label(key: &PrivateKeyDer<'_>) -> &'static str {
    match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    }
}

/// The certificate every new handshake presents. Swapping it leaves established connections
/// alone: they keep the session they negotiated.
#[derive(Debug, Default)]
pub struct CredentialCell {
    current: ArcSwapOption<CertifiedKey>,
}

impl CredentialCell {
    pub fn new() -> Self {
        Self::default()
    }

    /// Presents `cert` from the next handshake on.
    pub fn store(&self, cert: &WorkloadCertificate) {
        self.current.store(Some(cert.certified_key()));
    }

    pub fn is_empty(&self) -> bool {
        self.current.load().is_none()
    }
}

impl rustls::server::ResolvesServerCert for CredentialCell {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl rustls::client::ResolvesClientCert for CredentialCell {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    fn has_certs(&self) -> bool {
        !self.is_empty()
    }
}
