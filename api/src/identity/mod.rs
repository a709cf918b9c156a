//! Workload identity: SPIFFE IDs, X.509 SVIDs, trust bundles bound to their trust domain, mTLS
//! configuration, and the manager that keeps a workload's certificate fresh.

mod bundle;
mod cert;
mod credentials;
mod csr;
mod manager;
pub mod pem;
pub mod profile;
mod spiffe;
mod tls;
mod verify;

pub use bundle::{BundleError, TrustBundle, TrustBundles};
pub use cert::{CertError, CertInfo, format_time};
pub use credentials::{CredentialCell, CredentialError, WorkloadCertificate};
pub use csr::{CsrError, KeyAndCsr, generate_csr};
pub use manager::{CertManager, CertManagerConfig, CertificateSource, IssueError, IssuedChain};
pub use spiffe::{SpiffeId, SpiffeIdError, SpiffeIdErrorKind, TrustDomain};
pub use tls::{
    PeerPolicy, SharedBundles, SpiffeVerifier, client_config, peer_identity, provider,
    server_config, shared_bundles, verify_error_of,
};
pub use verify::{Usage, VerifyError, verify_svid};
