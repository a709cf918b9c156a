//! Digests of what TLS is built from, field by field: the pool keys its connections by them
//! (`upstream::ClusterKey`) and [`super::tls_cache`] finds a configuration again by them.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::secret::Secret;

/// How a certificate counts in a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateBy {
    /// Its SPIFFE identity: a renewed certificate of the same identity hashes the same.
    Identity,
    /// Its chain: a renewed certificate hashes differently.
    Content,
}

/// The content of a secret: the certificate (by `by`; a credential's plain certificate always
/// by its chain), or each trust domain with its roots (trust withdrawn must end what it
/// allowed); a missing secret hashes as such.
pub fn secret(secret: Option<&Arc<Secret>>, by: CertificateBy) -> [u8; 32] {
    let mut h = Sha256::new();
    match secret.map(|s| &**s) {
        None => field(&mut h, b"missing"),
        Some(Secret::Certificate(cert)) => match by {
            CertificateBy::Identity => {
                field(&mut h, b"certificate");
                field(&mut h, cert.spiffe_id().to_string().as_bytes());
            }
            CertificateBy::Content => {
                field(&mut h, b"certificate chain");
                for der in cert.chain() {
                    field(&mut h, der);
                }
            }
        },
        Some(Secret::PlainCertificate(cert)) => {
            field(&mut h, b"plain certificate");
            for der in cert.chain() {
                field(&mut h, der);
            }
        }
        Some(Secret::Roots(roots)) => {
            field(&mut h, b"roots");
            for der in roots.certificates() {
                field(&mut h, der);
            }
        }
        Some(Secret::TrustBundles(bundles)) => {
            field(&mut h, b"bundles");
            for bundle in bundles {
                field(&mut h, bundle.trust_domain().as_str().as_bytes());
                field(&mut h, &(bundle.roots().len() as u64).to_be_bytes());
                for der in bundle.roots() {
                    field(&mut h, der);
                }
            }
        }
    }
    h.finalize().into()
}

/// One length-prefixed field of a digest: no two different settings hash the same bytes.
pub fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}
