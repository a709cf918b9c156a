//! # isthmus-controlplane
//!
//! The control plane, `isthmusd` (the thin binary `src/bin/isthmusd.rs` parses flags and calls
//! [`daemon`]); `isthmusctl` (its own crate, `controlplane/isthmusctl/`) reads the mesh through
//! this library:
//!
//! - [`ca`]: the mesh certificate authority — signing material (generated root or plugged-in
//!   `cacerts`), the rules for what a caller may get signed, the gRPC certificate service;
//! - [`config`]: config sources — the YAML directory, validated whole and applied atomically;
//! - [`model`]: the mesh model built from a snapshot: services, workloads, routes, policies;
//! - [`pipeline`]: config -> model -> per-proxy snapshots (debounced), with proxy certificates;
//! - [`admission`]: the Kubernetes admission webhooks (sidecar injection, validation) and the
//!   injector `isthmusctl kube-inject` runs offline;
//! - [`auth`]: who a caller is (bootstrap tokens in local mode, `TokenReview` in Kubernetes mode);
//! - [`kubernetes`]: Kubernetes mode's source, status writer, lease and webhook bookkeeping;
//! - [`private_files`]: the state directory's private files (0700 directory, atomic 0600 writes);
//! - [`xds`]: the xDS protocol (ADS, state-of-the-world and delta) over per-proxy snapshots;
//! - [`server`]: TLS accept loop for gRPC, the debug/metrics HTTP port;
//! - [`daemon`]: `isthmusd`'s start-up and shutdown;
//! - [`federation`]: discovery importers per peer, federation status, what crosses between
//!   meshes from configuration alone;
//! - [`telemetry`]: `isthmusd`'s metrics of xDS and federation (the CA's are in [`ca`]).
//!
//! `fuzzing` (hidden) holds the body of the `yaml_config` fuzz target.

pub mod admission;
pub mod auth;
pub mod ca;
pub mod config;
pub mod daemon;
pub mod federation;
#[doc(hidden)]
pub mod fuzzing;
pub mod jwks;
pub mod kubernetes;
pub mod model;
pub mod pipeline;
pub mod private_files;
pub mod server;
pub mod telemetry;
pub mod xds;
