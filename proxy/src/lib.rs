//! # isthmus-proxy
//!
//! The Isthmus data plane, one binary for every role (sidecar, ingress, egress, federation
//! gateway): it bootstraps the workload's identity (a certificate from `isthmusd` with its
//! bootstrap token, renewed at half-life), takes its configuration from `isthmusd` over ADS,
//! and serves the data path that configuration describes.
//!
//! - [`app`]: the proxy as a value: bind everything, serve until shutdown, drain;
//! - [`bootstrap`]: options (flags) and start-up: the identity and the xDS channel;
//! - [`xds`]: the ADS client (delta, or state of the world): ACK/NACK, subscriptions that
//!   follow what listeners and clusters reference, reconnect with backoff, readiness;
//! - [`config`]: Envoy xDS v3 resources converted into a validated model (the profile in
//!   `docs/xds-profile.md`); anything outside it is refused with its field path;
//! - [`runtime`]: what the data path reads, built once per configuration change;
//! - [`listener`]: binding, accepting, filter chain choice, TLS termination, network RBAC;
//! - [`authz`]: RBAC rules (`AuthorizationPolicy`) evaluated on the verified peer identity;
//! - [`http`]: the HTTP connection manager: routing, HTTP RBAC, forwarding over pooled
//!   connections;
//! - [`tcp`]: the TCP proxy; [`tunnel`]: its upstream as an HTTP/2 CONNECT stream;
//! - [`upstream`]: clusters at run time: endpoints, load balancing, circuit breakers, outlier
//!   detection, connecting;
//! - [`weighted`]: weighted choice (weighted clusters, hosts, priority levels);
//! - [`transport`]: TLS configurations from SDS secrets and the boxed byte stream;
//! - [`drain`]: graceful drain on SIGTERM;
//! - [`metrics`]: the proxy's own counters and gauges;
//! - [`admin`]: the admin port (`/ready`, `/certs`, `/listeners`, `/clusters`, `/config_dump`,
//!   `/stats/prometheus`);
//! - [`status`]: the status port (Istio's 15020, `--status-addr`): `/healthz/ready` and the
//!   application probes the sidecar injector rewrote (`/app-health/...`, `--app-probers`).
//!
//! `fuzzing` (hidden) holds the bodies of the fuzz targets that reach this crate.

pub mod admin;
pub mod app;
pub mod authz;
pub mod bootstrap;
pub mod capture;
pub mod config;
pub mod dns;
pub mod drain;
#[doc(hidden)]
pub mod fuzzing;
pub mod hashing;
pub mod hex;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod runtime;
pub mod status;
pub mod tcp;
pub mod telemetry;
pub mod transport;
pub mod tunnel;
pub mod upstream;
pub mod weighted;
pub mod xds;
