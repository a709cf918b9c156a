//! Code generated from the `.proto` files in the workspace's `proto/` folder.

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

/// `isthmus.echo.v1`: the gRPC echo service of `isthmusctl echo`.
pub mod echo {
    #![allow(
        missing_docs,
        missing_debug_implementations,
        clippy::all,
        clippy::pedantic
    )]
    tonic::include_proto!("isthmus.echo.v1");
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
