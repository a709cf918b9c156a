//! Kubernetes mode (`isthmusd --config-source kubernetes`): the real kube-rs client and
//! runtime against the cluster's API server.
//!
//! - [`source`]: one reflector per kind read; every change rebuilds the
//!   [`crate::config::ConfigSnapshot`] the directory source would build, so the same
//!   snapshot -> model -> xDS pipeline runs. A bad object is skipped and reported by kind,
//!   namespace, name and field path; the others apply.
//! - [`registry`]: core `Service`, `EndpointSlice` and `Pod` objects converted into the
//!   cluster part of the snapshot (services, endpoints, workloads), as Istio's Kubernetes
//!   registry does.
//! - [`leader`]: a `coordination.k8s.io/v1` `Lease`; only its holder writes status.
//! - [`status_writer`]: Maistra's status of the federation resources, through the `status`
//!   subresource.
//! - [`webhook_bundle`]: the mesh root as the `caBundle` of the admission webhook
//!   configurations, kept by the Lease holder.
//! - [`root_publisher`]: the mesh root `ConfigMap` in every namespace of the mesh, kept by the
//!   Lease holder.
//! - [`access`]: every API call's RBAC need, checked against the manifests.
//!
//! No API server runs on the project's machines: the tests drive this code against the test
//! double in `tests/support/test_api_server.rs`.

pub mod access;
pub mod credentials;
pub mod leader;
pub mod registry;
pub mod root_publisher;
pub mod source;
pub mod status_writer;
pub mod webhook_bundle;
