//! The mesh certificate authority: its signing material ([`material`]), the signing rules
//! ([`authority`]), the gRPC service workloads call ([`service`]) and its metrics.

pub mod authority;
pub mod local_source;
pub mod material;
pub mod metrics;
pub mod service;

pub use authority::{Authority, Issued, SignError, TtlPolicy};
pub use material::{CaLoadError, CaMaterial};
