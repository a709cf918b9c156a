//! # isthmus-controlplane
//!
//! The control plane behind `isthmusd` and `isthmusctl`:
//!
//! - [`ca`]: the mesh certificate authority — signing material (generated root or plugged-in
//!   `cacerts`), the rules for what a caller may get signed, the gRPC certificate service;
//! - [`config`]: config sources — the YAML directory, validated whole and applied atomically;
//! - [`model`]: the mesh model built from a snapshot: services, workloads, routes, policies;
//! - [`pipeline`]: config -> model -> per-proxy snapshots (debounced), with proxy certificates;
//! - [`auth`]: who a caller is (bootstrap tokens in local mode);
//! - [`xds`]: the xDS protocol (ADS, state-of-the-world and delta) over per-proxy snapshots;
//! - [`server`]: TLS accept loop for gRPC, the debug/metrics HTTP port;
//! - [`daemon`]: `isthmusd`'s start-up and shutdown;
//! - [`runner`]: the local runner behind `isthmusctl up` and `isthmusctl demo`;
//! - [`cli`]: `isthmusctl`'s commands.
//!
//! The binaries in `src/bin` only parse flags and call into this library.

pub mod auth;
pub mod ca;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod federation;
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod pipeline;
pub mod runner;
pub mod server;
pub mod xds;
