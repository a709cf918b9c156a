#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde_json::Value;

use super::*;
use crate::runner::read_description;
use isthmus_controlplane::config::load_text;

fn example() -> Description {
    read_description(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/two-meshes"))
        .unwrap()
}

fn roots() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("red.local".to_owned(), "RED ROOT\n".to_owned()),
        ("green.local".to_owned(), "GREEN ROOT\n".to_owned()),
    ])
}

/// Every document rendered for mesh `index`.
fn rendered(d: &Description, index: usize) -> (Vec<Value>, Vec<Warning>) {
    let (files, warnings) = render(d, &plan(d, 40), index, &roots());
    let combined: String = files.iter().map(|f| f.text.as_str()).collect();
    load_text(&combined, Path::new("rendered")).unwrap();
    let docs = files
        .iter()
        .flat_map(|f| isthmus_controlplane::config::yaml::documents(&f.text).unwrap())
        .map(|d| d.value)
        .collect();
    (docs, warnings)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn every_workload_and_gateway_gets_its_own_address_in_the_runs_block() {
    let p = plan(&example(), 40);
    let (green, red) = (&p.meshes[0], &p.meshes[1]);
    let gateways: Vec<(&str, &str, String)> = green
        .gateways
        .iter()
        .map(|g| (g.name.as_str(), g.direction, g.address.to_string()))
        .collect();
    assert_eq!(
        gateways,
        [
            ("ingress-red", "ingress", "127.40.1.2".to_owned()),
            ("egress-red", "egress", "127.40.1.3".to_owned())
        ]
    );
    let client = red
        .workloads
        .iter()
        .find(|w| w.workload.name == "client")
        .unwrap();
    assert_eq!(client.address.to_string(), "127.40.2.100");
    assert_eq!(client.outbound().to_string(), "127.40.2.100:15001");
    assert_eq!(
        client.node_id(),
        "sidecar~127.40.2.100~client.shop~shop.svc.cluster.local"
    );
    let mut addresses: Vec<_> = p
        .meshes
        .iter()
        .flat_map(|m| {
            m.workloads
                .iter()
                .map(|w| w.address)
                .chain(m.gateways.iter().map(|g| g.address))
        })
        .collect();
    let n = addresses.len();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), n, "addresses are distinct");
}

#[test]
fn a_workloads_command_gets_its_address_and_ports() {
    let p = plan(&example(), 40);
    let frontend = p.meshes[1]
        .workloads
        .iter()
        .find(|w| w.workload.name == "frontend")
        .unwrap();
    assert_eq!(
        frontend.command(),
        [
            "isthmusctl",
            "echo",
            "--listen",
            "127.40.2.101:18080",
            "--name",
            "frontend-red"
        ]
    );
    assert_eq!(frontend.env()["HTTP_PROXY"], "http://127.40.2.101:15001");
    assert!(
        frontend
            .metadata()
            .contains(&"APP_PORTS=http=18080".to_owned())
    );
}

#[test]
fn a_peer_that_is_another_mesh_points_at_its_ingress_gateway_with_its_root() {
    let d = example();
    let (red, warnings) = rendered(&d, 1);
    assert!(warnings.is_empty(), "{warnings:?}");
    let peer = find(&red, "ServiceMeshPeer", "green");
    // Green's gateway for red is `ingress-red`, the first of green's gateways.
    assert_eq!(
        peer["spec"]["remote"],
        serde_json::json!({"addresses": ["127.40.1.2"]})
    );
    assert_eq!(peer["spec"]["security"]["trustDomain"], "green.local");
    let root = find(&red, "ConfigMap", "green-ca-root-cert");
    assert_eq!(root["data"]["root-cert.pem"], "GREEN ROOT\n");
    let gateway = red
        .iter()
        .find(|d| d["kind"] == "WorkloadEntry" && d["metadata"]["name"] == "egress-green")
        .unwrap();
    assert_eq!(
        gateway["spec"]["serviceAccount"],
        "egress-green-service-account"
    );
    assert_eq!(gateway["spec"]["ports"]["tls-federation"], 15443);
    let client = find(&red, "WorkloadEntry", "client");
    assert!(client["spec"].get("ports").is_none(), "{client}");
}

#[test]
fn a_root_configmap_the_folder_defines_is_kept() {
    let mut d = example();
    let red = &mut d.meshes[1];
    red.files[0].documents.push(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "green-ca-root-cert", "namespace": "istio-system"},
        "data": {"root-cert.pem": "MY OWN\n"},
    }));
    let (docs, _) = rendered(&d, 1);
    let maps: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ConfigMap").collect();
    assert_eq!(maps.len(), 1, "{maps:?}");
    assert_eq!(maps[0]["data"]["root-cert.pem"], "MY OWN\n");
}

#[test]
fn a_peer_that_is_no_mesh_here_is_left_as_written_with_a_warning() {
    let mut d = example();
    d.meshes.remove(0);
    let p = plan(&d, 40);
    let (files, warnings) = render(&d, &p, 0, &roots());
    let text: String = files.iter().map(|f| f.text.as_str()).collect();
    assert!(text.contains("ingress-red.green.example"), "remote kept");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("no mesh here has trust domain \"green.local\"")),
        "{warnings:?}"
    );
}
