//! Verifying a peer's certificate chain as an X.509 SVID.
//!
//! The leaf's SPIFFE ID names a trust domain; only that trust domain's bundle is offered to path
//! building. That is what keeps a peer mesh's root from vouching for anyone outside its own
//! trust domain.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, UnixTime};

use super::bundle::TrustBundles;
use super::cert::{CertError, PeerCert, format_time, validity_unless_self_issued};
use super::spiffe::{SpiffeId, TrustDomain};

/// Why a peer's certificate was not accepted. Carried inside the rustls error, so a caller can
/// tell exactly why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("peer certificate: {0}")]
    Cert(#[from] CertError),
    #[error("peer certificate for {id} is a CA certificate; a workload identity must be a leaf")]
    LeafIsCa { id: SpiffeId },
    #[error("peer identity {id}: no trust bundle for trust domain {trust_domain}")]
    UnknownTrustDomain {
        id: SpiffeId,
        trust_domain: TrustDomain,
    },
    #[error("peer certificate for {id} expired at {not_after}")]
    Expired { id: SpiffeId, not_after: String },
    #[error("peer certificate for {id} is not valid before {not_before}")]
    NotYetValid { id: SpiffeId, not_before: String },
    #[error(
        "peer certificate for {id} does not chain to a root of trust domain {trust_domain}: {reason}"
    )]
    UntrustedChain {
        id: SpiffeId,
        trust_domain: TrustDomain,
        reason: String,
    },
    #[error("peer identity {actual} is not the expected {expected}")]
    UnexpectedIdentity { actual: SpiffeId, expected: String },
}

/// Which way the peer's certificate is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// We are the server; the peer is a client.
    ClientAuth,
    /// We are the client; the peer is a server.
    ServerAuth,
}

/// Verifies `end_entity` (with `intermediates`) against the bundle of the trust domain it
/// claims, at time `now`, and returns the verified SPIFFE ID.
pub fn verify_svid(
    bundles: &TrustBundles,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: Usage,
) -> Result<SpiffeId, VerifyError> {
    let PeerCert { id, is_ca, .. } = PeerCert::parse(end_entity)?;
    if is_ca {
        return Err(VerifyError::LeafIsCa { id });
    }
    let Some(bundle) = bundles.get(id.trust_domain()) else {
        return Err(VerifyError::UnknownTrustDomain {
            trust_domain: id.trust_domain().clone(),
            id,
        });
    };
    let ee = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| CertError::Malformed(format!("{e:?}")))?;
    let eku = match usage {
        Usage::ClientAuth => webpki::KeyUsage::client_auth(),
        Usage::ServerAuth => webpki::KeyUsage::server_auth(),
    };
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        bundle.anchors(),
        intermediates,
        now,
        eku,
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::CertExpired { not_after, .. } => VerifyError::Expired {
            id: id.clone(),
            not_after: format_unix(not_after),
        },
        webpki::Error::CertNotValidYet { not_before, .. } => VerifyError::NotYetValid {
            id: id.clone(),
            not_before: format_unix(not_before),
        },
        other => VerifyError::UntrustedChain {
            id: id.clone(),
            trust_domain: id.trust_domain().clone(),
            reason: describe_webpki_error(&other),
        },
    })?;
    Ok(id)
}

/// Checks a chain verified earlier once more at `now`, and returns its SPIFFE ID. A resumed TLS
/// session carries the chain its first handshake verified, and resuming skips verification; of
/// what that verification decided, only the validity periods can change while the bundles and
/// the policy stay the same. `chain` is the leaf first, then the certificates the peer sent
/// with it. Self-issued ones among those are skipped: a peer may send its root along, and path
/// building ends at the bundle's copy of a root, whatever the dates of the copy sent.
pub fn check_still_valid(
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<SpiffeId, VerifyError> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(CertError::Malformed("no certificate".to_owned()).into());
    };
    let leaf = PeerCert::parse(leaf)?;
    let in_force = |(not_before, not_after): (SystemTime, SystemTime)| {
        if now > not_after {
            Err(VerifyError::Expired {
                id: leaf.id.clone(),
                not_after: format_time(not_after),
            })
        } else if now < not_before {
            Err(VerifyError::NotYetValid {
                id: leaf.id.clone(),
                not_before: format_time(not_before),
            })
        } else {
            Ok(())
        }
    };
    in_force((leaf.not_before, leaf.not_after))?;
    for der in intermediates {
        if let Some(period) = validity_unless_self_issued(der)? {
            in_force(period)?;
        }
    }
    Ok(leaf.id)
}

fn format_unix(t: UnixTime) -> String {
    format_time(UNIX_EPOCH + Duration::from_secs(t.as_secs()))
}

fn describe_webpki_error(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => "issuer unknown to this trust domain's roots".to_owned(),
        webpki::Error::InvalidSignatureForPublicKey => "bad signature".to_owned(),
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            "extended key usage does not allow this use".to_owned()
        }
        other => format!("{other:?}"),
    }
}
