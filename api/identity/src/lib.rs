//! # isthmus-identity
//!
//! Workload identity, shared by the proxy, `isthmusd` and `isthmusctl`:
//!
//! - SPIFFE IDs and trust domains ([`SpiffeId`], [`TrustDomain`]);
//! - X.509 SVIDs: decoding ([`CertInfo`]), path building against the bundle of the claimed
//!   trust domain only ([`verify_svid`]), trust bundles ([`TrustBundles`]);
//! - rustls client and server configurations for mesh mTLS ([`SpiffeVerifier`], [`PeerPolicy`]);
//! - the certificate manager that renews a workload's certificate at half-life
//!   ([`CertManager`]) and its gRPC client of the mesh CA ([`ca_client`]);
//! - gRPC channels to `isthmusd` over mesh TLS, loopback plaintext, or TLS inside TLS through a
//!   federation egress gateway ([`channel`]).
//!
//! With the `test-util` feature, [`testing`] offers a throw-away CA for tests.

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

pub mod ca_client;
pub mod channel;
#[cfg(feature = "test-util")]
pub mod testing;

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
