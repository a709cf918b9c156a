//! The mesh model: what the configuration means, independent of where it came from (YAML
//! directory or Kubernetes) and of how it is delivered (xDS). Built by pure functions from a
//! [`crate::config::ConfigSnapshot`]; per-proxy xDS resources will be computed from it.

pub mod registry;

pub use registry::{
    Endpoint, Locality, ModelWarning, Port, Protocol, Service, ServiceKey, build_registry,
};
