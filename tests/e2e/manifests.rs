//! The generated CRDs are current, valid Kubernetes objects with structural schemas, and the
//! examples validate against them (and against Isthmus's own parser).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use isthmus_e2e::{isthmusctl, sh};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn examples() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(workspace().join("examples/config"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn manifests_check_names_a_stale_crd() {
    // (That the checked-in files are current is a unit test of `isthmus-api`.)
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap();
    let out = isthmusctl(&["manifests", "crds", "--out", out_dir]);
    assert!(out.status.success());
    let out = isthmusctl(&["manifests", "crds", "--out", out_dir, "--check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let edited = dir.path().join("virtualservices.networking.istio.io.yaml");
    let text = std::fs::read_to_string(&edited).unwrap();
    std::fs::write(
        &edited,
        text.replace("plural: virtualservices", "plural: vses"),
    )
    .unwrap();
    let out = isthmusctl(&["manifests", "crds", "--out", out_dir, "--check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is stale: virtualservices.networking.istio.io.yaml"),
        "{stderr}"
    );
}

#[test]
fn crds_pass_kubernetes_validate() {
    let text = sh(
        &workspace(),
        "kubernetes-validate --strict --quiet manifests/crds/*.networking.istio.io.yaml \
         manifests/crds/*.security.istio.io.yaml manifests/crds/*.federation.maistra.io.yaml",
    )
    .unwrap();
    assert!(!text.contains("ERROR") && !text.contains("FAIL"), "{text}");
}

#[test]
fn examples_validate_against_the_crd_schemas() {
    let files = examples().join(" ");
    let text = sh(
        &workspace(),
        &format!("python3 tests/crds/validate.py manifests/crds {files}"),
    )
    .unwrap();
    assert!(
        text.contains("9 CRD schemas checked for structure"),
        "{text}"
    );
    assert!(!text.contains("FAIL"), "{text}");
}

#[test]
fn examples_are_valid_isthmus_configuration() {
    let dir = workspace().join("examples/config");
    let out = isthmusctl(&["config", "validate", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("valid (11 resources"), "{stdout}");
}
