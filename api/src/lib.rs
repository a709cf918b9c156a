//! # isthmus-api
//!
//! The vocabulary every Isthmus part shares:
//!
//! - [`identity`]: SPIFFE IDs, X.509 SVID inspection and verification, trust bundles bound to
//!   their trust domain, rustls configurations for mesh mTLS, and the certificate manager that
//!   renews a workload's certificate at half-life;
//! - [`ca_client`]: the gRPC client of the mesh CA (`isthmus.ca.v1.CertificateService`);
//! - [`resources`]: the configuration API (Istio and Maistra kinds), validated at the edge with
//!   field paths;
//! - [`proto`]: code generated from the workspace's `proto/` folder.
//!
//! With the `test-util` feature, [`testing`] offers a throw-away CA for tests.

pub mod ca_client;
pub mod identity;
pub mod proto;
pub mod resources;
#[cfg(feature = "test-util")]
pub mod testing;
