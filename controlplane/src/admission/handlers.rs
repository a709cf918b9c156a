//! What each webhook answers to one review, without the transport: [`inject`] for `/inject`,
//! [`validate`] for `/validate`. Both allow what they do not handle: a webhook configured more
//! broadly than intended must not block the cluster.

use kube::core::admission::{AdmissionResponse, Operation};

use super::inject::{InjectSettings, Injection, inject_pod};
use super::review::Review;
use super::validate::check_object;

/// The injector's answer: `CREATE` of a `v1` `Pod` that Istio's rules select gets the sidecar as
/// a JSON Patch; anything else is allowed unchanged. A pod that cannot be injected (a malformed
/// annotation, a volume name taken) is refused with the field at fault, as istiod does.
pub fn inject(review: &Review, settings: &InjectSettings) -> AdmissionResponse {
    let kind = &review.request.kind;
    let is_pod = kind.group.is_empty() && kind.version == "v1" && kind.kind == "Pod";
    let (true, Operation::Create, Some(pod)) =
        (is_pod, &review.request.operation, review.object.as_ref())
    else {
        return review.allow();
    };
    match inject_pod(pod, review.namespace(), settings) {
        Ok(Injection::Skipped(reason)) => {
            tracing::debug!(namespace = review.namespace(), %reason, "pod not injected");
            review.allow()
        }
        Ok(Injection::Injected(injected)) => {
            let patch = super::inject::patch::patch(pod, &injected);
            match review.allow().with_patch(patch) {
                Ok(response) => response,
                Err(e) => review.deny(format!("isthmus sidecar injection: {e}")),
            }
        }
        Err(e) => review.deny(format!("isthmus sidecar injection: pod {e}")),
    }
}

/// The validator's answer: `CREATE`/`UPDATE` of a configuration kind is refused with every
/// problem at its field path when it fails validation; an update that leaves `spec` as it was,
/// or of an object being deleted, is allowed.
pub fn validate(review: &Review) -> AdmissionResponse {
    let subresource = review.request.sub_resource.as_deref().unwrap_or("");
    let (true, "", Some(object)) = (
        review.creates_or_updates(),
        subresource,
        review.object.as_ref(),
    ) else {
        return review.allow();
    };
    // An object already stored (created while the webhook was down, or valid under an older
    // release) must stay updatable where its configuration does not change: finalizers, labels,
    // deletion.
    if review.request.operation == Operation::Update {
        let deleting = object.pointer("/metadata/deletionTimestamp").is_some();
        let old_spec = review.old_object.as_ref().and_then(|old| old.get("spec"));
        if deleting || (old_spec.is_some() && old_spec == object.get("spec")) {
            return review.allow();
        }
    }
    match check_object(object, review.namespace()) {
        Ok(()) => review.allow(),
        Err(message) => review.deny(message),
    }
}
