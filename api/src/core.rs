//! Core Kubernetes kinds a mesh configuration refers to: `ConfigMap` (a peer's root
//! certificate, `ServiceMeshPeer.spec.security.certificateChain`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Validate;
use super::meta::{ObjectMeta, Validator};

/// The key of a peer's root certificate in its `ConfigMap`, as in Maistra.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";

/// `v1 ConfigMap`: string data only (`binaryData` is refused at its path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMap {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    #[serde(default)]
    pub immutable: Option<bool>,
}

impl Validate for ConfigMap {
    fn validate(&self, v: &mut Validator) {
        for key in self.data.keys() {
            v.check(
                !key.is_empty()
                    && key.len() <= 253
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
                format!("data.{key}"),
                "a key is alphanumerics, '-', '_' or '.'",
            );
        }
    }
}
