//! The bodies of the fuzz targets `yaml_config` and `admission_review` of `fuzz/` (cargo-fuzz,
//! libFuzzer), here so that the stable test `tests/e2e/fuzz_regressions.rs` replays the saved
//! inputs through the same code. They panic only on a bug.

use std::path::Path;
use std::sync::Arc;

use isthmus_identity::TrustDomain;

use crate::config::directory::load_text;
use crate::model::MeshModel;

/// The input as one YAML file of a configuration directory: every document validated into a
/// snapshot, or every problem located; a valid snapshot is then built into the mesh model, as
/// the pipeline does.
pub fn yaml_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match load_text(text, Path::new("fuzz.yaml")) {
        Ok(snapshot) => {
            let trust_domain = TrustDomain::new("cluster.local").expect("a valid trust domain");
            let _ = MeshModel::build(Arc::new(snapshot), &trust_domain, "istio-system");
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without a reason");
            for e in errors {
                assert!(!e.reason.is_empty(), "an error without a reason: {e}");
            }
        }
    }
}

/// The input as the body of a request to the webhooks: parsed as an `AdmissionReview` (or
/// refused with a reason), then answered by `/inject` and `/validate`. An injection's patch must
/// apply to the pod sent and give a pod that is not injected again.
pub fn admission_review(data: &[u8]) {
    use crate::admission::handlers;
    use crate::admission::inject::{InjectSettings, Injection, inject_pod};
    use crate::admission::review::{Review, to_body};

    let review = match Review::parse(data) {
        Ok(review) => review,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "refused without a reason");
            return;
        }
    };
    let trust_domain = TrustDomain::new("cluster.local").expect("a valid trust domain");
    let settings = InjectSettings::new(trust_domain, "isthmus-system");
    let _ = to_body(handlers::validate(&review));
    let response = handlers::inject(&review, &settings);
    let (Some(patch), Some(pod)) = (&response.patch, &review.object) else {
        let _ = to_body(response);
        return;
    };
    let patch: json_patch::Patch = serde_json::from_slice(patch).expect("the patch is JSON Patch");
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).expect("the patch applies to the pod sent");
    assert!(
        matches!(
            inject_pod(&patched, review.namespace(), &settings),
            Ok(Injection::Skipped(_))
        ),
        "an injected pod is injected again"
    );
    let _ = to_body(response);
}
