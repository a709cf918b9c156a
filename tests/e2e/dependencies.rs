//! The crate graph keeps its seams: the data plane compiles no Kubernetes crates.
//!
//! `cargo tree` is the judge, so a dependency added anywhere below `isthmus-proxy` (directly, or
//! through `isthmus-identity`, `isthmus-proto`, `isthmus-runtime`) fails here by name.

use std::process::Command;

/// Crates that only the control plane and `isthmusctl` may compile.
const KUBERNETES_CRATES: &[&str] = &[
    "kube",
    "kube-core",
    "kube-client",
    "k8s-openapi",
    "schemars",
];

fn tree(package: &str) -> Vec<String> {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let out = Command::new(cargo)
        .args([
            "tree",
            "--locked",
            "-p",
            package,
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .args(["--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn the_proxy_compiles_no_kubernetes_crate() {
    let crates = tree("isthmus-proxy");
    assert!(
        crates.iter().any(|c| c == "isthmus-identity"),
        "the tree was read: {crates:?}"
    );
    let found: Vec<&String> = crates
        .iter()
        .filter(|c| KUBERNETES_CRATES.contains(&c.as_str()))
        .collect();
    assert!(found.is_empty(), "isthmus-proxy depends on {found:?}");
}

#[test]
fn the_control_plane_is_where_the_crds_are() {
    // The check above must be able to fail: the same query finds kube under isthmusctl.
    let crates = tree("isthmusctl");
    assert!(
        crates.iter().any(|c| c == "kube"),
        "isthmusctl builds the CRDs with kube"
    );
}
