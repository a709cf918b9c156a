//! `security.istio.io/v1`: `PeerAuthentication` and `AuthorizationPolicy`.

use std::collections::BTreeMap;

#[cfg(feature = "crd")]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Validate;
use super::meta::{Unsupported, Validator, WorkloadSelector};

resource!(
    /// Whether workloads accept plaintext (PERMISSIVE) or only mTLS (STRICT).
    PeerAuthentication,
    PeerAuthenticationSpec
);

#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "security.istio.io",
        version = "v1",
        kind = "PeerAuthentication",
        plural = "peerauthentications",
        shortname = "pa",
        namespaced,
        root = "KubePeerAuthentication",
        doc = "Whether workloads accept plaintext (PERMISSIVE) or only mutual TLS (STRICT)."
    )
)]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent (namespace, then mesh) policy.
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl Validate for PeerAuthentication {
    fn validate(&self, v: &mut Validator) {
        v.check(
            self.spec.port_level_mtls.is_empty() || self.spec.selector.is_some(),
            "spec.portLevelMtls",
            "requires a workload selector",
        );
        for port in self.spec.port_level_mtls.keys() {
            v.check(
                (1..=65535).contains(port),
                format!("spec.portLevelMtls.{port}"),
                format!("port {port} is not in 1-65535"),
            );
        }
    }
}

resource!(
    /// ALLOW / DENY rules on the verified caller (principal, namespace, IP) and the request
    /// (host, port, method, path).
    AuthorizationPolicy,
    AuthorizationPolicySpec
);

#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "security.istio.io",
        version = "v1",
        kind = "AuthorizationPolicy",
        plural = "authorizationpolicies",
        shortname = "ap",
        namespaced,
        root = "KubeAuthorizationPolicy",
        doc = "ALLOW and DENY rules on the verified caller and the request."
    )
)]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub target_ref: Option<Unsupported>,
    #[serde(default)]
    pub target_refs: Option<Unsupported>,
    #[serde(default)]
    pub provider: Option<Unsupported>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

impl Action {
    /// The name as written in YAML.
    pub fn name(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
            Self::Custom => "CUSTOM",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub from: Vec<From>,
    #[serde(default)]
    pub to: Vec<To>,
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub request_principals: Option<Unsupported>,
    #[serde(default)]
    pub not_request_principals: Option<Unsupported>,
    #[serde(default)]
    pub remote_ip_blocks: Option<Unsupported>,
    #[serde(default)]
    pub not_remote_ip_blocks: Option<Unsupported>,
    #[serde(default)]
    pub service_accounts: Option<Unsupported>,
    #[serde(default)]
    pub not_service_accounts: Option<Unsupported>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    pub operation: Operation,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// Condition keys Isthmus evaluates (Istio's names); `request.headers[<name>]` too.
const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// Istio's other condition keys (whole, or a prefix ending in `[` or `.`): valid Istio that
/// Isthmus does not evaluate yet.
const ISTIO_CONDITION_KEYS: &[&str] = &[
    "remote.ip",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[",
    "request.regex.headers[",
    "experimental.envoy.filters.",
];

/// Why `key` is refused, or `None` when Isthmus evaluates it.
fn condition_key_problem(key: &str) -> Option<String> {
    let evaluated = CONDITION_KEYS.contains(&key)
        || (key.starts_with("request.headers[") && key.ends_with(']'));
    if evaluated {
        return None;
    }
    let istio = ISTIO_CONDITION_KEYS.iter().any(|k| {
        if k.ends_with('[') {
            key.starts_with(k) && key.ends_with(']') && key.len() > k.len() + 1
        } else if k.ends_with('.') {
            key.starts_with(k) && key.len() > k.len()
        } else {
            key == *k
        }
    });
    Some(if istio {
        format!("{key} is not supported by Isthmus")
    } else {
        format!("{key:?} is not an Istio condition key")
    })
}

impl Validate for AuthorizationPolicy {
    fn validate(&self, v: &mut Validator) {
        let s = &self.spec;
        v.check(
            matches!(s.action, Action::Allow | Action::Deny),
            "spec.action",
            format!(
                "{} is not supported by Isthmus (ALLOW and DENY are)",
                s.action.name()
            ),
        );
        for (i, rule) in s.rules.iter().enumerate() {
            for (j, to) in rule.to.iter().enumerate() {
                let op = &to.operation;
                for (field, ports) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                    for (k, port) in ports.iter().enumerate() {
                        v.check(
                            port.parse::<u16>().is_ok_and(|p| p > 0),
                            format!("spec.rules[{i}].to[{j}].operation.{field}[{k}]"),
                            format!("{port:?} is not a port number"),
                        );
                    }
                }
            }
            for (j, cond) in rule.when.iter().enumerate() {
                if let Some(problem) = condition_key_problem(&cond.key) {
                    v.check(false, format!("spec.rules[{i}].when[{j}].key"), problem);
                }
                v.check(
                    !cond.values.is_empty() || !cond.not_values.is_empty(),
                    format!("spec.rules[{i}].when[{j}]"),
                    "values or notValues is required",
                );
            }
        }
    }
}
