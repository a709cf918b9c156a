//! # isthmusctl
//!
//! The operator CLI, as a library behind the thin binary `src/main.rs`:
//!
//! - [`cli`]: the subcommands (`up`, `demo`, `status`, `doctor`, `federation`, `config`,
//!   `token`, `cert`, `bootstrap`, `manifests`, `echo`);
//! - [`runner`]: the local runner behind `isthmusctl up` and `isthmusctl demo`;
//! - [`echo_proto`]: the gRPC echo service of `isthmusctl echo`, generated from
//!   `proto/isthmus/echo/v1/echo.proto` (only this crate and the tests compile it).
//!
//! It reads the mesh through `isthmus-controlplane`'s library (configuration loading, model,
//! offline generation) and talks to running daemons over their ports.

pub mod cli;
pub mod runner;

/// `isthmus.echo.v1`: the gRPC echo service of `isthmusctl echo`.
pub mod echo_proto {
    #![allow(
        missing_docs,
        missing_debug_implementations,
        clippy::all,
        clippy::pedantic
    )]
    tonic::include_proto!("isthmus.echo.v1");
}
