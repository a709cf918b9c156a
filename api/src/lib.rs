//! # isthmus-api
//!
//! The vocabulary every Isthmus part shares:
//!
//! - [`identity`]: SPIFFE IDs, X.509 SVID inspection and verification, trust bundles bound to
//!   their trust domain, rustls configurations for mesh mTLS, and the certificate manager that
//!   renews a workload's certificate at half-life;
//! - [`ca_client`]: the gRPC client of the mesh CA (`isthmus.ca.v1.CertificateService`);
//! - [`channel`]: gRPC channels to `isthmusd` over mesh TLS (or plaintext on loopback);
//! - [`resources`]: the configuration API (Istio and Maistra kinds), validated at the edge with
//!   field paths;
//! - [`envoy`]: Envoy's xDS v3 types, re-exported from `envoy-types`;
//! - [`metrics_format`]: metrics exposition negotiated by `Accept` (OpenMetrics or the classic
//!   Prometheus text format), shared by the proxies and `isthmusd`;
//! - [`proto`]: code generated from the workspace's `proto/` folder;
//! - [`supervised`]: processes started by `isthmusctl up` stop with it.
//!
//! With the `test-util` feature, [`testing`] offers a throw-away CA for tests.

pub mod ca_client;
pub mod channel;
pub mod identity;
pub mod metrics_format;
pub mod proto;
pub mod resources;
pub mod supervised;

/// Envoy's xDS v3 types (protobuf messages and gRPC services), from the `envoy-types` crate.
pub use envoy_types::pb as envoy;
#[cfg(feature = "test-util")]
pub mod testing;
