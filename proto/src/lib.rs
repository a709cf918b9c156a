//! # isthmus-proto
//!
//! Protocol code, generated, with no logic of its own:
//!
//! - [`ca`]: `isthmus.ca.v1`, workload certificate issuance (`isthmus/ca/v1/ca.proto`);
//! - [`federation`]: `isthmus.federation.v1`, discovery between the control planes of peer
//!   meshes (`isthmus/federation/v1/discovery.proto`);
//! - [`dns`]: `isthmus.dns.v1`, the name table a sidecar's DNS proxy answers from
//!   (`isthmus/dns/v1/name_table.proto`), sent over ADS;
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

/// `isthmus.dns.v1`: the name table a sidecar's DNS proxy answers from.
pub mod dns {
    #![allow(
        missing_docs,
        missing_debug_implementations,
        clippy::all,
        clippy::pedantic
    )]
    tonic::include_proto!("isthmus.dns.v1");

    /// The ADS type of [`NameTable`].
    pub const NAME_TABLE_TYPE: &str = "type.googleapis.com/isthmus.dns.v1.NameTable";
    /// The one resource of that type a sidecar is sent.
    pub const NAME_TABLE_RESOURCE: &str = "name-table";

    impl prost::Name for NameTable {
        const NAME: &'static str = "NameTable";
        const PACKAGE: &'static str = "isthmus.dns.v1";

        fn type_url() -> String {
            NAME_TABLE_TYPE.to_owned()
        }
    }
}
