//! Kubernetes admission: the sidecar injector and the configuration validator that `isthmusd`
//! serves as webhooks on 15017 (TLS, a certificate from the mesh CA), and that
//! `isthmusctl kube-inject` runs offline.
//!
//! - [`inject`]: which pods get a sidecar (Istio's rules) and what they get, on JSON values so
//!   that fields this build does not know pass through untouched;
//! - [`validate`]: the same validation as the directory source, for `create`/`update` of the
//!   kinds `isthmusd` reads;
//! - [`review`]: `admission.k8s.io/v1` `AdmissionReview` in and out (kube-rs's types), the
//!   patch as RFC 6902 JSON Patch made by the `json-patch` crate;
//! - [`serving_cert`]: the webhook's DNS-named certificate, issued by the mesh CA and renewed;
//! - [`server`]: the HTTPS server (`/inject`, `/validate`).

pub mod handlers;
pub mod inject;
pub mod review;
pub mod server;
pub mod serving_cert;
pub mod validate;
