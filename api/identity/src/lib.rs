//! # isthmus-identity
//!
//! Workload identity, shared by the proxy, `isthmusd` and `isthmusctl`. The private modules'
//! items are re-exported at the root:
//!
//! - `spiffe`: SPIFFE IDs and trust domains ([`SpiffeId`], [`TrustDomain`]);
//! - `cert`: decoding X.509 SVIDs ([`CertInfo`]);
//! - `bundle`: trust bundles, each bound to its trust domain ([`TrustBundle`],
//!   [`TrustBundles`]);
//! - `verify`: path building against the bundle of the claimed trust domain only
//!   ([`verify_svid`]);
//! - `tls`: rustls client and server configurations for mesh mTLS ([`SpiffeVerifier`],
//!   [`PeerPolicy`]), session resumption where the configuration allows it
//!   ([`enable_server_resumption`], [`enable_client_resumption`], [`verified_peer`]);
//! - `sessions`: the client's store of TLS 1.3 session tickets;
//! - `credentials`: a workload's own key, chain and roots, and the cell that hands the current
//!   ones to every new handshake ([`WorkloadCertificate`], [`CredentialCell`]);
//! - `csr`: a workload's key pair and certificate signing request ([`generate_csr`]);
//! - `manager`: the certificate manager that renews a workload's certificate at half-life
//!   and retries failures with backoff ([`CertManager`]).
//!
//! And public modules:
//!
//! - [`pem`]: reading certificates and keys from PEM, errors naming the origin;
//! - [`profile`]: the X.509 profile of workload and mesh CA certificates;
//! - [`ca_client`]: the gRPC client of the mesh CA, a [`CertificateSource`];
//! - [`channel`]: gRPC channels to `isthmusd` over mesh TLS, loopback plaintext, or TLS inside
//!   TLS through a federation egress gateway;
//! - [`testing`] (feature `test-util`): a throw-away CA for tests.

mod bundle;
mod cert;
mod credentials;
mod csr;
mod manager;
pub mod pem;
pub mod profile;
mod sessions;
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
    PeerPolicy, SharedBundles, SpiffeVerifier, client_config, enable_client_resumption,
    enable_server_resumption, peer_identity, provider, server_config, shared_bundles,
    verified_peer, verify_error_of,
};
pub use verify::{Usage, VerifyError, check_still_valid, verify_svid};
