//! The validating webhook: `create` and `update` of a kind `isthmusd` reads is refused when the
//! object fails the validation the directory source applies (`config::directory::check_document`),
//! with every problem at its field path. Objects of other kinds, deletions and the `status`
//! subresource (written by `isthmusd` itself) are allowed.

use std::path::PathBuf;

use isthmus_api::Kind;
use serde_json::{Map, Value};

use crate::config::SourceRef;
use crate::config::directory::check_document;

/// Why an object is refused: every problem, `Kind namespace/name: path: reason`, joined.
pub fn check_object(object: &Value, namespace: &str) -> Result<(), String> {
    let Value::Object(map) = object else {
        return Err("the object is not a JSON object".to_owned());
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
    if !is_config_kind(api_version, kind) {
        return Ok(());
    }
    let document = document(map, namespace);
    let name = document
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let source = SourceRef {
        file: PathBuf::from(format!("{kind} {namespace}/{name}")),
        document: 0,
        line: 0,
    };
    let Err(errors) = check_document(document, &source) else {
        return Ok(());
    };
    let problems: Vec<String> = errors
        .iter()
        .map(|e| match &e.path {
            Some(path) if !path.is_empty() && path != "." => format!("{path}: {}", e.reason),
            _ => e.reason.clone(),
        })
        .collect();
    Err(format!(
        "{kind} {namespace}/{name}: {}",
        problems.join("; ")
    ))
}

/// Whether `apiVersion`/`kind` is one of the configuration kinds `isthmusd` reads (not
/// `ConfigMap`s, which are data).
pub fn is_config_kind(api_version: &str, kind: &str) -> bool {
    let group = api_version.split_once('/').map_or("", |(group, _)| group);
    !group.is_empty()
        && Kind::ALL
            .iter()
            .any(|(k, g, n)| *k != Kind::ConfigMap && *g == group && *n == kind)
}

/// The document a user applied: type, identifying metadata and `spec`. The server's
/// bookkeeping (`uid`, `managedFields`, …) and `status` are not configuration. An object
/// created with `generateName` is checked under that prefix plus a placeholder.
fn document(map: &Map<String, Value>, namespace: &str) -> Value {
    let mut document = Map::new();
    for key in ["apiVersion", "kind", "spec"] {
        if let Some(value) = map.get(key) {
            document.insert(key.into(), value.clone());
        }
    }
    let meta = map.get("metadata").and_then(Value::as_object);
    let mut metadata = Map::new();
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            let prefix = meta?.get("generateName")?.as_str()?;
            Some(format!("{prefix}x"))
        });
    if let Some(name) = name {
        metadata.insert("name".into(), Value::String(name));
    }
    metadata.insert("namespace".into(), Value::String(namespace.to_owned()));
    for key in ["labels", "annotations"] {
        if let Some(value) = meta.and_then(|m| m.get(key)) {
            metadata.insert(key.into(), value.clone());
        }
    }
    document.insert("metadata".into(), Value::Object(metadata));
    Value::Object(document)
}
