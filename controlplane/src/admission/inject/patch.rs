//! The webhook's answer as an RFC 6902 JSON Patch, made with the `json-patch` crate: the
//! difference between the pod as the API server sent it and the injected pod. `json_patch::diff`
//! compares lists index by index, so the containers inserted at the front of an existing
//! `initContainers` list are written as insertions at index 0 instead of a rewrite of every
//! existing init container, field by field: the patch says what injection did, and no more.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::Value;

/// The patch that turns `original` into `injected`.
pub fn patch(original: &Value, injected: &Value) -> Patch {
    let existing = original
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .filter(|list| !list.is_empty());
    let added = injected
        .pointer("/spec/initContainers")
        .and_then(Value::as_array);
    let (Some(existing), Some(added)) = (existing, added) else {
        return json_patch::diff(original, injected);
    };
    let Some(ours) = added.len().checked_sub(existing.len()) else {
        return json_patch::diff(original, injected);
    };
    if added[ours..] != existing[..] {
        return json_patch::diff(original, injected);
    }
    // Everything else by difference, then ours inserted at the front, last first.
    let mut rest = injected.clone();
    if let Some(list) = rest.pointer_mut("/spec/initContainers") {
        *list = Value::Array(existing.clone());
    }
    let mut patch = json_patch::diff(original, &rest);
    for container in added[..ours].iter().rev() {
        patch.0.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["spec", "initContainers", "0"]),
            value: container.clone(),
        }));
    }
    patch
}
