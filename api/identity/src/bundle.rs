//! Trust bundles: the roots of one trust domain, and the set of bundles a workload trusts.
//!
//! A bundle is bound to its trust domain. Verification picks the anchors by the trust domain the
//! presented certificate claims, so a peer mesh's root can vouch only for that peer's identities:
//! never for the local trust domain, never for a third mesh.

use std::collections::BTreeMap;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::TrustAnchor;

use super::cert::{CertError, CertInfo};
use super::pem::{PemError, certs_from_pem, certs_to_pem};
use super::spiffe::TrustDomain;

/// A trust bundle that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("trust bundle for {trust_domain} has no roots")]
    Empty { trust_domain: TrustDomain },
    #[error("trust bundle for {trust_domain}, root {index}: {source}")]
    BadRoot {
        trust_domain: TrustDomain,
        index: usize,
        #[source]
        source: CertError,
    },
    #[error("trust bundle for {trust_domain}, root {index} ({subject}): not a CA certificate")]
    NotCa {
        trust_domain: TrustDomain,
        index: usize,
        subject: String,
    },
    #[error(
        "trust bundle for {trust_domain}, root {index}: not usable as a trust anchor: {reason}"
    )]
    NotAnAnchor {
        trust_domain: TrustDomain,
        index: usize,
        reason: String,
    },
    #[error(
        "a peer's trust bundle claims the local trust domain {trust_domain}; a peer's root can never vouch for local identities"
    )]
    PeerClaimsLocalTrustDomain { trust_domain: TrustDomain },
    #[error(transparent)]
    Pem(#[from] PemError),
}

/// The root certificates of one trust domain.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// Checks that every root is a CA certificate usable as a trust anchor.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty { trust_domain });
        }
        let mut anchors = Vec::with_capacity(roots.len());
        for (index, root) in roots.iter().enumerate() {
            let info = CertInfo::parse(root).map_err(|source| BundleError::BadRoot {
                trust_domain: trust_domain.clone(),
                index,
                source,
            })?;
            if !info.is_ca {
                return Err(BundleError::NotCa {
                    trust_domain,
                    index,
                    subject: info.subject,
                });
            }
            let anchor = webpki::anchor_from_trusted_cert(root)
                .map_err(|e| BundleError::NotAnAnchor {
                    trust_domain: trust_domain.clone(),
                    index,
                    reason: format!("{e:?}"),
                })?
                .to_owned();
            anchors.push(anchor);
        }
        Ok(Self {
            trust_domain,
            roots,
            anchors,
        })
    }

    /// A bundle from PEM text; `origin` names where it came from in errors.
    pub fn from_pem(
        trust_domain: TrustDomain,
        pem: &[u8],
        origin: &str,
    ) -> Result<Self, BundleError> {
        Self::new(trust_domain, certs_from_pem(pem, origin)?)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// The roots as PEM text.
    pub fn to_pem(&self) -> String {
        certs_to_pem(&self.roots)
    }
}

/// Every trust bundle a workload trusts: its own mesh's, and one per federated peer mesh.
#[derive(Debug, Clone)]
pub struct TrustBundles {
    local: TrustBundle,
    peers: BTreeMap<TrustDomain, TrustBundle>,
}

impl TrustBundles {
    pub fn new(local: TrustBundle) -> Self {
        Self {
            local,
            peers: BTreeMap::new(),
        }
    }

    /// Adds or replaces a peer mesh's bundle. A peer bundle for the local trust domain is refused.
    pub fn with_peer(mut self, bundle: TrustBundle) -> Result<Self, BundleError> {
        self.insert_peer(bundle)?;
        Ok(self)
    }

    /// Adds or replaces a peer mesh's bundle. A peer bundle for the local trust domain is refused.
    pub fn insert_peer(&mut self, bundle: TrustBundle) -> Result<(), BundleError> {
        if bundle.trust_domain == self.local.trust_domain {
            return Err(BundleError::PeerClaimsLocalTrustDomain {
                trust_domain: bundle.trust_domain,
            });
        }
        self.peers.insert(bundle.trust_domain.clone(), bundle);
        Ok(())
    }

    /// Stops trusting a peer mesh.
    pub fn remove_peer(&mut self, trust_domain: &TrustDomain) -> Option<TrustBundle> {
        self.peers.remove(trust_domain)
    }

    pub fn local(&self) -> &TrustBundle {
        &self.local
    }

    /// Replaces the local bundle (root rotation: the new bundle usually holds old and new roots).
    pub fn set_local(&mut self, bundle: TrustBundle) {
        self.local = bundle;
    }

    /// The bundle that may vouch for identities of `trust_domain`.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&TrustBundle> {
        if *trust_domain == self.local.trust_domain {
            Some(&self.local)
        } else {
            self.peers.get(trust_domain)
        }
    }

    /// All bundles, the local one first.
    pub fn iter(&self) -> impl Iterator<Item = &TrustBundle> {
        std::iter::once(&self.local).chain(self.peers.values())
    }
}
