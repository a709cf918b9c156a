//! The body of the fuzz target `yaml_config` of `fuzz/` (cargo-fuzz, libFuzzer), here so that
//! the stable test `tests/e2e/fuzz_regressions.rs` replays the saved inputs through the same
//! code. It panics only on a bug.

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
