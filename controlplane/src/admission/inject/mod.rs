//! Sidecar injection: [`inject_pod`] decides by Istio's rules ([`policy`]) whether a pod gets
//! the sidecar, and adds it ([`template`]) with its probes rewritten ([`probes`]). The webhook
//! sends the difference as a JSON Patch; `isthmusctl kube-inject` writes the result, also into
//! the pod templates of workload kinds ([`workloads`]).
//!
//! Everything works on the pod as JSON, never through a typed round trip: a field newer than
//! this build's Kubernetes types passes through unchanged instead of being dropped by a patch.

pub mod dns_capture;
pub mod patch;
pub mod policy;
pub mod probes;
pub mod settings;
pub mod template;
pub mod workloads;

use serde_json::{Map, Value};

pub use policy::{Decision, SkipReason};
pub use settings::InjectSettings;

/// The annotation recording an injection: what was added, as JSON.
pub const STATUS_ANNOTATION: &str = "sidecar.isthmus.io/status";
/// The sidecar's container name.
pub const PROXY_CONTAINER: &str = "isthmus-proxy";
/// The init container that installs the capture rules.
pub const INIT_CONTAINER: &str = "isthmus-init";

/// What [`inject_pod`] made of a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Injection {
    /// The pod with its sidecar.
    Injected(Value),
    /// Left as it is, and why.
    Skipped(SkipReason),
}

/// A pod that cannot be injected: the field (path from the pod) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct InjectError {
    pub path: String,
    pub reason: String,
}

impl InjectError {
    pub(crate) fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Injects `pod` (a `v1` `Pod` as JSON) created in `namespace`, unless Istio's rules say not
/// to. Injecting an injected pod changes nothing.
pub fn inject_pod(
    pod: &Value,
    namespace: &str,
    settings: &InjectSettings,
) -> Result<Injection, InjectError> {
    let Value::Object(object) = pod else {
        return Err(InjectError::new("", "a pod must be a JSON object"));
    };
    let metadata = optional_object(object, "metadata", "metadata")?;
    let spec = optional_object(object, "spec", "spec")?
        .ok_or_else(|| InjectError::new("spec", "required"))?;
    if let Decision::Skip(reason) = policy::decide(metadata, spec, namespace, settings) {
        return Ok(Injection::Skipped(reason));
    }
    let mut injected = object.clone();
    template::add_sidecar(&mut injected, settings)?;
    Ok(Injection::Injected(Value::Object(injected)))
}

/// `object[key]` as a mapping; absent or `null` is `None`, anything else an error at `path`.
pub(crate) fn optional_object<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, InjectError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(InjectError::new(path, "must be a mapping")),
    }
}

/// A string-to-string map (`labels`, `annotations`) of `metadata`, if any.
pub(crate) fn string_map<'a>(
    metadata: Option<&'a Map<String, Value>>,
    key: &str,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    metadata
        .and_then(|m| m.get(key))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
}

/// One label or annotation of `metadata`.
pub(crate) fn meta_value<'a>(
    metadata: Option<&'a Map<String, Value>>,
    key: &str,
    name: &str,
) -> Option<&'a str> {
    string_map(metadata, key)
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests;
