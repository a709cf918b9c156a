//! The contract between the control plane and the proxy, over every example mesh: what
//! `isthmusd` generates for any node, `isthmus-proxy` accepts whole, with zero rejected fields,
//! and every name a resource references (routes, endpoints, secrets) is among what it was sent.
//!
//! Everything runs in this process and in memory: the examples' configuration → the model (with
//! what each peer exports, as discovery would deliver it) → `proxy_snapshot` per node → the
//! proxy's delta-ADS state machine (`xds/state.rs`: every resource through `config::convert`).
//! The nodes are every workload of every mesh as a sidecar in both interception modes and as a
//! gateway, plus the exact node ids and metadata `isthmusctl up` gives its proxies. The test
//! with processes, real TLS and a real Envoy is `e2e/envoy.rs`; this one covers every node of
//! every example in milliseconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use isthmus_controlplane::config::{ConfigSnapshot, load_dir};
use isthmus_controlplane::federation::crossings::{MeshConfig, federated_models};
use isthmus_controlplane::model::{DEFAULT_ROOT_NAMESPACE, MeshModel, ProxyNode};
use isthmus_controlplane::xds::generate::{ProxySecrets, proxy_snapshot};
use isthmus_controlplane::xds::resources::ProxySnapshot;
use isthmus_federation::imports::ImportDecision;
use isthmus_identity::TrustDomain;
use isthmus_identity::testing::TestCa;
use isthmus_proto::envoy::envoy::config::core::v3::Node;
use isthmus_proto::envoy::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use isthmus_proxy::config::XdsType;
use isthmus_proxy::xds::state::AdsState;
use isthmusctl::runner::offline::mesh_configs;
use isthmusctl::runner::plan::plan;
use isthmusctl::runner::read_description;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// One mesh of an example, ready to generate for: its model and the nodes to generate for.
struct Mesh {
    label: String,
    trust_domain: TrustDomain,
    model: MeshModel,
    /// Node id -> metadata, as proxies send them.
    nodes: BTreeMap<String, BTreeMap<String, String>>,
}

/// `examples/config`: one mesh's configuration directory, as `isthmusd --config-dir` reads it.
fn config_directory() -> Vec<Mesh> {
    let dir = examples().join("config");
    let snapshot = load_dir(&dir).unwrap_or_else(|e| panic!("{}: {e:?}", dir.display()));
    let meshes = [mesh_config("config", "cluster.local", snapshot)];
    with_models("examples/config", &meshes, |_| BTreeMap::new())
}

/// `examples/two-meshes`: an `isthmusctl up` description, rendered as the runner renders it.
fn two_meshes() -> Vec<Mesh> {
    let dir = examples().join("two-meshes");
    let description = read_description(&dir).unwrap_or_else(|e| panic!("{e:?}"));
    let meshes = mesh_configs(&description).unwrap_or_else(|e| panic!("{e:#}"));
    let plan = plan(&description, 0);
    with_models("examples/two-meshes", &meshes, |index| {
        // The runner's own node ids and metadata for this mesh's sidecars and gateways.
        let mesh = &plan.meshes[index];
        let mut nodes = BTreeMap::new();
        for w in &mesh.workloads {
            let metadata = w
                .metadata()
                .iter()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            nodes.insert(w.node_id(), metadata);
        }
        for g in &mesh.gateways {
            nodes.insert(g.node_id(), BTreeMap::new());
        }
        nodes
    })
}

fn mesh_config(name: &str, trust_domain: &str, snapshot: ConfigSnapshot) -> MeshConfig {
    MeshConfig {
        name: name.to_owned(),
        trust_domain: TrustDomain::new(trust_domain).expect("trust domain"),
        config: Arc::new(snapshot),
    }
}

fn with_models(
    example: &str,
    meshes: &[MeshConfig],
    planned: impl Fn(usize) -> BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<Mesh> {
    federated_models(meshes, DEFAULT_ROOT_NAMESPACE)
        .into_iter()
        .zip(meshes)
        .enumerate()
        .map(|(index, ((model, _), mesh))| {
            let mut nodes = planned(index);
            for w in model.workloads.values() {
                let host = format!("{}.{ns}~{ns}.svc.cluster.local", w.name, ns = w.namespace);
                let plain = BTreeMap::new();
                let captured = BTreeMap::from([("INTERCEPTION_MODE".into(), "REDIRECT".into())]);
                nodes.insert(format!("sidecar~{}~{host}", w.address), plain.clone());
                // The same workload under iptables capture: a distinct node id, same workload.
                nodes.insert(format!("sidecar~127.255.0.1~{host}"), captured);
                nodes.insert(format!("router~{}~{host}", w.address), plain);
            }
            Mesh {
                label: format!("{example} mesh {:?}", mesh.name),
                trust_domain: mesh.trust_domain.clone(),
                model,
                nodes,
            }
        })
        .collect()
}

/// The proxy's verdict on a snapshot: every rejection, and every referenced name not sent.
fn proxy_verdict(node_id: &str, snapshot: &ProxySnapshot) -> Vec<String> {
    let mut state = AdsState::new(Node {
        id: node_id.to_owned(),
        ..Node::default()
    });
    let _ = state.start_stream();
    let mut problems = Vec::new();
    // Wildcards first, then what they reference, as a stream delivers them.
    let order = [
        XdsType::Cluster,
        XdsType::Endpoint,
        XdsType::Listener,
        XdsType::Route,
        XdsType::Secret,
    ];
    for (round, kind) in order.into_iter().enumerate() {
        let type_url = kind.type_url();
        let resources: Vec<Resource> = snapshot
            .get(&type_url)
            .map(|items| {
                items
                    .items()
                    .map(|r| Resource {
                        name: r.name.to_string(),
                        version: r.version.to_string(),
                        resource: Some(r.body()),
                        ..Resource::default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let outcome = state.on_response(DeltaDiscoveryResponse {
            system_version_info: "1".into(),
            resources,
            type_url: type_url.clone(),
            nonce: format!("n{round}"),
            ..DeltaDiscoveryResponse::default()
        });
        if let Some(nack) = outcome
            .requests
            .iter()
            .find_map(|r| r.error_detail.as_ref())
        {
            problems.push(format!("{} NACK: {}", kind.short(), nack.message));
        }
    }
    for kind in [XdsType::Route, XdsType::Endpoint, XdsType::Secret] {
        let missing: Vec<String> = state
            .subscribed(kind)
            .difference(&state.held(kind))
            .cloned()
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{} referenced but not sent: {missing:?}",
                kind.short()
            ));
        }
    }
    if !state.ready() {
        problems.push(format!("not ready, waiting for {:?}", state.waiting_for()));
    }
    problems
}

fn check(meshes: Vec<Mesh>) -> usize {
    let cas: BTreeMap<String, TestCa> = meshes
        .iter()
        .map(|m| {
            let td = m.trust_domain.to_string();
            (td.clone(), TestCa::new(&td))
        })
        .collect();
    let mut checked = 0;
    let mut failures = Vec::new();
    for mesh in &meshes {
        assert!(
            !mesh.nodes.is_empty(),
            "{}: no node to generate for",
            mesh.label
        );
        let local_ca = &cas[&mesh.trust_domain.to_string()];
        for (id, metadata) in &mesh.nodes {
            let node = ProxyNode::from_metadata(id, metadata)
                .unwrap_or_else(|e| panic!("{}: {e}", mesh.label));
            let workload = isthmus_controlplane::xds::generate::workload_of(&mesh.model, &node)
                .unwrap_or_else(|e| panic!("{}: {e}", mesh.label));
            let certificate = local_ca.issue(&workload.identity);
            // The local roots first, then each peer's, as the pipeline sends them.
            let mut bundles = vec![(mesh.trust_domain.to_string(), local_ca.root_pem())];
            bundles.extend(mesh.model.peers.iter().map(|p| {
                let td = p.trust_domain.to_string();
                let roots = cas.get(&td).map_or_else(|| p.roots_pem(), TestCa::root_pem);
                (td, roots)
            }));
            let secrets = ProxySecrets {
                certificate_chain_pem: certificate.chain_pem(),
                private_key_pem: certificate.key_pem().to_owned().into(),
                bundles,
            };
            let snapshot = proxy_snapshot(&mesh.model, &node, &secrets)
                .unwrap_or_else(|e| panic!("{}: {e}", mesh.label));
            for problem in proxy_verdict(id, &snapshot) {
                failures.push(format!("{} node {id}: {problem}", mesh.label));
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "the proxy refused what isthmusd generated:\n{}",
        failures.join("\n")
    );
    checked
}

#[test]
fn every_node_of_examples_config_gets_configuration_the_proxy_accepts_whole() {
    let checked = check(config_directory());
    assert!(checked >= 6, "only {checked} nodes");
}

#[test]
fn every_node_of_examples_two_meshes_gets_configuration_the_proxy_accepts_whole() {
    let meshes = two_meshes();
    // The imports are part of what is checked: red imports green's services (one as local).
    let imported: usize = meshes
        .iter()
        .map(|m| {
            m.model
                .imports
                .values()
                .flatten()
                .filter(|entry| matches!(entry.decision, ImportDecision::Imported { .. }))
                .count()
        })
        .sum();
    assert!(imported >= 2, "only {imported} imported services");
    let checked = check(meshes);
    assert!(checked >= 10, "only {checked} nodes");
}

#[test]
fn the_contract_check_fails_on_a_field_the_proxy_refuses() {
    // The check above can fail: a listener with a field outside the profile is reported.
    use isthmus_proto::envoy::envoy::config::listener::v3::Listener;
    use prost::Message;
    let listener = Listener {
        name: "bad".into(),
        freebind: Some(isthmus_proto::envoy::google::protobuf::BoolValue { value: true }),
        ..Listener::default()
    };
    let snapshot = ProxySnapshot::default().with(
        &XdsType::Listener.type_url(),
        isthmus_controlplane::xds::resources::TypeResources::new([(
            "bad".to_owned(),
            isthmus_proto::envoy::google::protobuf::Any {
                type_url: XdsType::Listener.type_url(),
                value: listener.encode_to_vec(),
            },
        )]),
    );
    let problems = proxy_verdict("sidecar~127.0.0.1~x.ns~ns.svc.cluster.local", &snapshot);
    assert!(
        problems.iter().any(|p| p.starts_with("LDS NACK")),
        "{problems:?}"
    );
}
