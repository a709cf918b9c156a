#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use super::*;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/two-meshes")
}

/// A description folder with one mesh folder `m` holding `files`.
fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("m")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("m").join(name), text).unwrap();
    }
    dir
}

const MESH: &str = "apiVersion: local.isthmus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {trustDomain: m.local}\n";

fn errors(dir: &Path) -> String {
    let errors = read_description(dir).unwrap_err();
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_bundled_example_has_two_meshes_and_their_workloads() {
    let d = read_description(&example()).unwrap();
    let names: Vec<(&str, &str)> = d
        .meshes
        .iter()
        .map(|m| (m.name.as_str(), m.trust_domain.as_str()))
        .collect();
    assert_eq!(names, [("green", "green.local"), ("red", "red.local")]);
    let red = &d.meshes[1];
    let client = red.workloads.iter().find(|w| w.name == "client").unwrap();
    assert!(client.command.is_empty());
    assert!(client.ports.is_empty());
    assert_eq!(client.labels.get("app").map(String::as_str), Some("client"));
    assert_eq!(client.outbound_port, DEFAULT_OUTBOUND_PORT);
    // The local kinds are taken out of the standard documents.
    let kinds: Vec<&str> = red
        .files
        .iter()
        .flat_map(|f| &f.documents)
        .filter_map(|d| d["kind"].as_str())
        .collect();
    assert!(
        !kinds.contains(&"Workload") && !kinds.contains(&"Mesh"),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"ServiceMeshPeer"), "{kinds:?}");
}

#[test]
fn a_folder_without_a_mesh_is_refused_with_its_name() {
    let dir = folder(&[(
        "a.yaml",
        "apiVersion: local.isthmus.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec: {}\n",
    )]);
    let said = errors(dir.path());
    assert!(said.contains("/m: no `kind: Mesh`"), "{said}");
}

#[test]
fn an_empty_folder_describes_no_mesh() {
    let dir = tempfile::tempdir().unwrap();
    assert!(errors(dir.path()).contains("no mesh here"));
}

#[test]
fn unknown_local_kinds_and_fields_name_file_line_and_field() {
    let dir = folder(&[
        ("mesh.yaml", MESH),
        (
            "w.yaml",
            "apiVersion: local.isthmus.dev/v1alpha1\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n---\napiVersion: local.isthmus.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec: {ports: [http, http]}\n",
        ),
    ]);
    let said = errors(dir.path());
    assert!(said.contains("w.yaml:1 (document 1): kind: local.isthmus.dev/v1alpha1 has kinds Mesh and Workload, not Gateway"), "{said}");
    assert!(
        said.contains("w.yaml:6 (document 2): spec.ports[1]"),
        "{said}"
    );
}

#[test]
fn standard_documents_are_validated_with_their_field_paths() {
    let dir = folder(&[
        ("mesh.yaml", MESH),
        (
            "se.yaml",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s, namespace: a}\nspec: {hosts: [s.a.svc.cluster.local], ports: [{number: 0, name: http}]}\n",
        ),
    ]);
    let said = errors(dir.path());
    assert!(
        said.contains("se.yaml:1") && said.contains("spec.ports[0].number"),
        "{said}"
    );
}

#[test]
fn meshes_sharing_a_trust_domain_are_refused() {
    let dir = folder(&[("mesh.yaml", MESH)]);
    std::fs::create_dir(dir.path().join("n")).unwrap();
    std::fs::write(
        dir.path().join("n/mesh.yaml"),
        MESH.replace("name: m}", "name: other}"),
    )
    .unwrap();
    let said = errors(dir.path());
    assert!(said.contains("share a name or trust domain"), "{said}");
}

#[test]
fn an_ingress_workload_is_a_gateway_without_command_or_ports() {
    let workload = |spec: &str| {
        format!(
            "{MESH}---\napiVersion: local.isthmus.dev/v1alpha1\nkind: Workload\nmetadata: {{name: edge, namespace: istio-system}}\nspec: {spec}\n"
        )
    };
    let dir = folder(&[(
        "m.yaml",
        &workload("{role: ingress, labels: {istio: ingressgateway}}"),
    )]);
    let d = read_description(dir.path()).unwrap();
    let edge = &d.meshes[0].workloads[0];
    assert!(edge.ingress);
    assert_eq!(
        edge.labels.get("istio").map(String::as_str),
        Some("ingressgateway")
    );
    let dir = folder(&[("m.yaml", &workload("{role: egress}"))]);
    let text = errors(dir.path());
    assert!(
        text.contains("spec.role") && text.contains("sidecar or ingress"),
        "{text}"
    );
    let dir = folder(&[(
        "m.yaml",
        &workload("{role: ingress, command: [isthmusctl, echo]}"),
    )]);
    let text = errors(dir.path());
    assert!(text.contains("runs no command"), "{text}");
}
