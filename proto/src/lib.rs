//! # isthmus-proto
//!
//! Protocol code, generated, with no logic of its own:
//!
//! - [`ca`]: `isthmus.ca.v1`, workload certificate issuance (`isthmus/ca/v1/ca.proto`);
//! - [`federation`]: `isthmus.federation.v1`, discovery between the control planes of peer
//!   meshes (`isthmus/federation/v1/discovery.proto`);
//! - [`envoy`]: Envoy's xDS v3 types (protobuf messages and gRPC services), from `envoy-types`.
//!
//! `build.rs` compiles the `.proto` files with `protox` (no system `protoc`) and
//! `tonic-prost-build`.

/// Envoy's xDS v3 types (protobuf messages and gRPC services), from the `envoy-types` crate.
pub use envoy_types::pb as envoy;

/// `isthmus.ca.v1`: workload certificate issuance.
pub mod ca {
    #![allow(
        missing_docs,
        missing_debug_implementations,
        clippy::all,
        clippy::pedantic
    )]
    tonic::include_proto!("isthmus.ca.v1");
}

/// `isthmus.federation.v1`: discovery between the control planes of peer meshes.
pub mod federation {
    #![allow(
        missing_docs,
        missing_debug_implementations,
        clippy::all,
        clippy::pedantic
    )]
    tonic::include_proto!("isthmus.federation.v1");
}
