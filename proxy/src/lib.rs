//! # isthmus-proxy
//!
//! The Isthmus data plane, one binary for every role (sidecar, ingress, egress, federation
//! gateway). Today it bootstraps the workload's identity (a certificate from `isthmusd` with
//! its bootstrap token, renewed at half-life) and takes its configuration from `isthmusd` over
//! delta ADS:
//!
//! - [`config`]: Envoy xDS v3 resources converted into a validated model (the profile in
//!   `docs/xds-profile.md`); anything outside it is refused with its field path;
//! - [`xds`]: the delta-ADS client (ACK/NACK, subscriptions that follow what listeners and
//!   clusters reference, reconnect with backoff, readiness);
//! - [`admin`]: the admin port (`/ready`, `/certs`, `/listeners`, `/clusters`, `/config_dump`);
//! - [`bootstrap`]: flags and start-up.
//!
//! The data path (listeners, routing, mTLS) builds on this configuration.

pub mod admin;
pub mod authz;
pub mod bootstrap;
pub mod config;
pub mod drain;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod runtime;
pub mod tcp;
pub mod transport;
pub mod tunnel;
pub mod upstream;
pub mod weighted;
pub mod xds;
