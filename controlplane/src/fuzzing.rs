//! The bodies of the fuzz targets `yaml_config` and `admission_review` of `fuzz/` (cargo-fuzz,
//! libFuzzer), here so that the stable test `tests/e2e/fuzz_regressions.rs` replays the saved
//! inputs through the same code. They panic only on a bug.

use std::path::Path;
use std::sync::Arc;

use isthmus_identity::TrustDomain;

use crate::config::directory::{load_text, parse_text};
use crate::config::loader::read_again;
use crate::model::MeshModel;

/// The input as one YAML file of a configuration directory: every document validated into a
/// snapshot, or every problem located; a valid snapshot is then built into the mesh model, as
/// the pipeline does.
pub fn yaml_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A reload after an earlier version of the file (the input without its last line, then
    // without its first document) keeps unchanged documents: it must give exactly what a
    // whole-file parse gives, errors and their lines included.
    let file = Path::new("fuzz.yaml");
    let whole = parse_text(text, file);
    let without_last_line = text
        .trim_end_matches('\n')
        .rsplit_once('\n')
        .map_or("", |(a, _)| a);
    let without_first_document = text.split_once("\n---").map_or("", |(_, b)| b);
    for before in [without_last_line, without_first_document, text] {
        let again = read_again(file, before.as_bytes(), data);
        assert!(
            again == whole,
            "read again after {before:?}: {again:?}\nwhole: {whole:?}"
        );
    }
    match load_text(text, file) {
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
