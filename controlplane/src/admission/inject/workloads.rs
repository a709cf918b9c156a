//! The pods inside workload kinds, for `isthmusctl kube-inject`: a `Pod` itself, the pod
//! template of a `Deployment`, `StatefulSet`, `DaemonSet`, `ReplicaSet` or `Job`
//! (`spec.template`) and of a `CronJob` (`spec.jobTemplate.spec.template`), and those inside a
//! `v1` `List` (what `kubectl get -o yaml` prints). Other kinds pass through unchanged.

use serde_json::Value;

use super::{InjectError, InjectSettings, Injection, inject_pod};

/// Where a kind keeps its pod: the path of keys to the pod (empty: the object is the pod).
fn pod_path(api_version: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (api_version, kind) {
        ("v1", "Pod") => Some(&[]),
        ("apps/v1", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch/v1", "Job")
        | ("v1", "ReplicationController") => Some(&["spec", "template"]),
        ("batch/v1", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// What became of one document.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Its pod was injected: the whole document, changed.
    Injected(Value),
    /// It has a pod that is left alone, and why.
    Skipped(super::SkipReason),
    /// Not a kind with a pod.
    NotAWorkload,
}

/// Injects the pod of `document` (any Kubernetes object as JSON), the way the webhook would
/// when the pod is created in the document's namespace (`default` when it names none).
pub fn inject_document(
    document: &Value,
    settings: &InjectSettings,
) -> Result<Outcome, InjectError> {
    let api_version = document
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = document.get("kind").and_then(Value::as_str).unwrap_or("");
    if (api_version, kind) == ("v1", "List") {
        return inject_list(document, settings);
    }
    let Some(path) = pod_path(api_version, kind) else {
        return Ok(Outcome::NotAWorkload);
    };
    let namespace = document
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let mut pod = document;
    for key in path {
        pod = pod.get(*key).ok_or_else(|| {
            InjectError::new(path.join("."), format!("a {kind} needs its pod template"))
        })?;
    }
    let prefix = path.join(".");
    let within = |e: InjectError| {
        if prefix.is_empty() {
            e
        } else if e.path.is_empty() {
            InjectError::new(prefix.clone(), e.reason)
        } else {
            InjectError::new(format!("{prefix}.{}", e.path), e.reason)
        }
    };
    match inject_pod(pod, namespace, settings).map_err(within)? {
        Injection::Skipped(reason) => Ok(Outcome::Skipped(reason)),
        Injection::Injected(injected) => {
            let mut out = document.clone();
            let mut slot = &mut out;
            for key in path {
                slot = slot
                    .get_mut(*key)
                    .ok_or_else(|| InjectError::new(prefix.clone(), "missing"))?;
            }
            *slot = injected;
            Ok(Outcome::Injected(out))
        }
    }
}

/// A `List`: each item as a document of its own; injected if any item was.
fn inject_list(list: &Value, settings: &InjectSettings) -> Result<Outcome, InjectError> {
    let Some(items) = list.get("items").and_then(Value::as_array) else {
        return Ok(Outcome::NotAWorkload);
    };
    let mut out = list.clone();
    let mut injected = false;
    for (i, item) in items.iter().enumerate() {
        let outcome = inject_document(item, settings).map_err(|e| {
            let path = if e.path.is_empty() {
                format!("items[{i}]")
            } else {
                format!("items[{i}].{}", e.path)
            };
            InjectError::new(path, e.reason)
        })?;
        if let (Outcome::Injected(item), Some(slot)) =
            (outcome, out.pointer_mut(&format!("/items/{i}")))
        {
            *slot = item;
            injected = true;
        }
    }
    Ok(if injected {
        Outcome::Injected(out)
    } else {
        Outcome::NotAWorkload
    })
}
