//! What every resource shares: object metadata, label selectors, the marker for Istio fields
//! Isthmus does not implement, and validation errors carrying the field path.

use std::collections::BTreeMap;
use std::fmt;

#[cfg(feature = "crd")]
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// Kubernetes object metadata, the subset a mesh configuration uses. Other metadata fields that
/// `kubectl get -o yaml` emits are accepted and ignored (they are server-side bookkeeping).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `matchLabels` / `matchExpressions`, as in Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector. An empty selector matches everything.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    SelectorOperator::In => value.is_some_and(|v| r.values.contains(v)),
                    SelectorOperator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// Istio's workload selector: `matchLabels` only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A field of the Istio or Maistra API that Isthmus does not implement. Its presence in input is
/// an error at its path ("spec.http[0].mirror: not supported by Isthmus"), never silently
/// ignored; its absence (or `null`) is fine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Unsupported;

/// The `status` of the federation kinds in their CRDs: written by `isthmusd` (Maistra's
/// shapes, with conditions) through the `status` subresource, never read as configuration, so
/// its schema keeps every field.
#[cfg(feature = "crd")]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WrittenStatus(pub serde_json::Map<String, serde_json::Value>);

#[cfg(feature = "crd")]
impl JsonSchema for WrittenStatus {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WrittenStatus".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Written by isthmusd through the status subresource.",
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

/// In a CRD, an unsupported field keeps whatever it holds (no pruning by the API server), so
/// that Isthmus sees it and rejects it by path instead of it vanishing silently.
#[cfg(feature = "crd")]
impl JsonSchema for Unsupported {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Unsupported".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Not supported by Isthmus: setting it is an error.",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

impl<'de> Deserialize<'de> for Unsupported {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("not supported by Isthmus"))
    }
}

/// One problem in a resource, at a field path such as `spec.http[0].route[1].weight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Collects validation errors while walking a resource.
#[derive(Debug, Default)]
pub struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem at `path`.
    pub fn error(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            reason: reason.into(),
        });
    }

    /// Records `reason` at `path` unless `ok`.
    pub fn check(&mut self, ok: bool, path: impl Into<String>, reason: impl Into<String>) {
        if !ok {
            self.error(path, reason);
        }
    }

    pub fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

/// Whether `s` is a DNS-1123 label (what Kubernetes requires of most names).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 subdomain: dot-separated labels, at most 253 bytes.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Whether `s` is a host name as Istio accepts it: an optional leading `*` label, then labels.
pub fn is_host(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    let rest = s.strip_prefix("*.").unwrap_or(s);
    !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}
