//! Which pods get a sidecar, with Istio's rules. Namespaces are selected by the webhook
//! configuration's `namespaceSelector` (`istio-injection=enabled`, `isthmus.io/inject=enabled`,
//! or any namespace without a label for a pod labelled `sidecar.istio.io/inject: "true"`), as
//! istiod relies on its own; the injector then refuses what no selector can express:
//! - the control plane's namespace and `kube-system`/`kube-public`;
//! - `hostNetwork` pods (capture would rewrite the node's own rules);
//! - pods that opt out with the label (or the older annotation) `sidecar.istio.io/inject: "false"`;
//! - pods already injected (the status annotation, or a container of ours).

use std::fmt;

use serde_json::{Map, Value};

use super::{INIT_CONTAINER, InjectSettings, PROXY_CONTAINER, STATUS_ANNOTATION, meta_value};

/// The label (and, deprecated, annotation) a pod opts in or out with.
pub const INJECT_LABEL: &str = "sidecar.istio.io/inject";

/// Namespaces never injected besides the control plane's.
const SYSTEM_NAMESPACES: [&str; 2] = ["kube-system", "kube-public"];

/// Whether to inject a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Inject,
    Skip(SkipReason),
}

/// Why a pod is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The control plane's or a Kubernetes system namespace.
    ExcludedNamespace(String),
    HostNetwork,
    /// `sidecar.istio.io/inject: "false"`.
    OptedOut,
    AlreadyInjected,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ExcludedNamespace(ns) => write!(f, "namespace {ns} is never injected"),
            Self::HostNetwork => f.write_str("hostNetwork pods are never injected"),
            Self::OptedOut => write!(f, "{INJECT_LABEL} is \"false\""),
            Self::AlreadyInjected => f.write_str("already injected"),
        }
    }
}

/// Decides for a pod in `namespace` from its metadata and spec.
pub fn decide(
    metadata: Option<&Map<String, Value>>,
    spec: &Map<String, Value>,
    namespace: &str,
    settings: &InjectSettings,
) -> Decision {
    if namespace == settings.control_plane_namespace || SYSTEM_NAMESPACES.contains(&namespace) {
        return Decision::Skip(SkipReason::ExcludedNamespace(namespace.to_owned()));
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Decision::Skip(SkipReason::HostNetwork);
    }
    if is_injected(metadata, spec) {
        return Decision::Skip(SkipReason::AlreadyInjected);
    }
    // The label wins over the annotation, as in Istio.
    let opt = meta_value(metadata, "labels", INJECT_LABEL)
        .or_else(|| meta_value(metadata, "annotations", INJECT_LABEL));
    if opt.is_some_and(is_false) {
        return Decision::Skip(SkipReason::OptedOut);
    }
    Decision::Inject
}

/// Istio reads the label with Go's `strconv.ParseBool`-like leniency for "false".
fn is_false(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "false" | "f" | "0" | "n" | "no" | "off"
    )
}

fn is_injected(metadata: Option<&Map<String, Value>>, spec: &Map<String, Value>) -> bool {
    if meta_value(metadata, "annotations", STATUS_ANNOTATION).is_some() {
        return true;
    }
    ["containers", "initContainers"].iter().any(|list| {
        spec.get(*list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name")?.as_str())
            .any(|name| name == PROXY_CONTAINER || name == INIT_CONTAINER)
    })
}
