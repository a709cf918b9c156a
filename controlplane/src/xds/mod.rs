//! The xDS server: Envoy's aggregated discovery service (ADS), state-of-the-world and delta.
//!
//! The protocol is handled by pure per-stream state machines ([`sotw`], [`delta`]) over a
//! per-proxy [`resources::ProxySnapshot`]; the gRPC glue feeds them requests and snapshot
//! changes.

pub mod cache;
pub mod delta;
pub mod delta_response;
pub mod dump;
pub mod generate;
pub mod grpc;
pub mod known;
pub mod resources;
pub mod server;
pub mod sotw;
pub mod status;
pub mod streams;

#[cfg(test)]
mod tests;
