//! Generating a workload's key pair and its certificate signing request.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::spiffe::SpiffeId;

/// A fresh ECDSA P-256 key and a PKCS#10 request for `id` signed with it.
#[derive(Debug)]
pub struct KeyAndCsr {
    pub key: PrivateKeyDer<'static>,
    pub csr_pem: String,
}

/// Key or request generation failed (a crypto-library failure, not bad input).
#[derive(Debug, thiserror::Error)]
#[error("cannot generate a key and CSR: {0}")]
pub struct CsrError(String);

/// Generates a key pair and a CSR whose only SAN is the URI `id`.
pub fn generate_csr(id: &SpiffeId) -> Result<KeyAndCsr, CsrError> {
    let err = |e: rcgen::Error| CsrError(e.to_string());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().map_err(err)?)];
    let csr_pem = params
        .serialize_request(&key)
        .map_err(err)?
        .pem()
        .map_err(err)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(KeyAndCsr { key, csr_pem })
}
