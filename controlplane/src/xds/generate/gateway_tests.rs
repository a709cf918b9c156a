//! The federation gateways' configuration, from a model with a peer on each side.

use std::path::Path;
use std::sync::Arc;

use isthmus_federation::discovery::Catalog;
use isthmus_identity::testing::TestCa;
use isthmus_identity::{SpiffeId, TrustDomain};
use isthmus_proto::envoy::envoy::config::listener::v3::{FilterChain, Listener, filter};
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, UpstreamTlsContext, common_tls_context,
};
use isthmus_proto::federation::{ExportedService, ServicePort};
use prost::Message;

use super::gateways::gateway;
use crate::config::load_text;
use crate::model::MeshModel;
use crate::model::imports::RemoteCatalogs;

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

/// Red: an egress gateway for green, an ingress gateway for green, `reviews` exported to green,
/// green's `ratings` imported.
fn model(peer_root: &str) -> MeshModel {
    let text = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: gateways, namespace: istio-system}}
spec:
  hosts: [egress-green.istio-system.svc.cluster.local, ingress-green.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 15443, name: tls}}]
  workloadSelector: {{labels: {{app: gateway}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: gateway, namespace: istio-system}}
spec: {{address: 10.0.0.2, labels: {{app: gateway}}, serviceAccount: gateway, ports: {{tls: 15444}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http}}]
  endpoints: [{{address: 10.0.0.7, ports: {{http: 19080}}, serviceAccount: reviews}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: green-root, namespace: istio-system}}
data:
  root-cert.pem: |
{root}---
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {{name: green, namespace: istio-system}}
spec:
  remote: {{addresses: [192.0.2.1], servicePort: 15443, discoveryPort: 8188}}
  gateways: {{ingress: {{name: ingress-green}}, egress: {{name: egress-green}}}}
  security:
    trustDomain: green.local
    clientID: green.local/ns/istio-system/sa/egress-red
    certificateChain: {{kind: ConfigMap, name: green-root}}
---
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata: {{name: green, namespace: istio-system}}
spec:
  exportRules: [{{type: NameSelector, nameSelector: {{namespace: '*', name: reviews}}}}]
---
apiVersion: federation.maistra.io/v1
kind: ImportedServiceSet
metadata: {{name: green, namespace: istio-system}}
spec:
  importRules: [{{type: NameSelector, nameSelector: {{namespace: bookinfo, name: ratings}}}}]
",
        root = indent(peer_root)
    );
    let snapshot = load_text(&text, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e:?}"));
    let catalogs: RemoteCatalogs = [(
        "green".to_owned(),
        Arc::new(Catalog::new([ExportedService {
            hostname: "ratings.bookinfo.svc.red-exports.local".into(),
            name: "ratings".into(),
            namespace: "bookinfo".into(),
            ports: vec![ServicePort {
                number: 9080,
                name: "http".into(),
                protocol: "HTTP".into(),
            }],
            identities: vec!["spiffe://green.local/ns/bookinfo/sa/ratings".into()],
        }])),
    )]
    .into();
    let mut model = MeshModel::build_with_imports(
        Arc::new(snapshot),
        &catalogs,
        &TrustDomain::new("red.local").unwrap(),
        "istio-system",
    );
    model.discovery_address = Some("127.0.0.1:8188".into());
    model
}

fn typed<M: Message + Default>(chain: &FilterChain) -> M {
    let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
        panic!("{chain:?}")
    };
    M::decode(any.value.as_slice()).unwrap()
}

#[test]
fn the_egress_gateway_tunnels_each_imported_service_port_and_discovery_by_sni() {
    let ca = TestCa::new("green.local");
    let model = model(&ca.root_pem());
    let workload = &model.workloads[&("istio-system".to_owned(), "gateway".to_owned())];
    let gw = gateway(&model, workload);
    let egress = listener(&gw, "federation-egress");
    assert!(
        format!("{:?}", egress.address).contains("15444"),
        "the gateway service's port for this workload"
    );
    let chains: Vec<(Vec<String>, String, String)> = egress
        .filter_chains
        .iter()
        .map(|c| {
            let tcp: TcpProxy = typed(c);
            let names = c.filter_chain_match.as_ref().unwrap().server_names.clone();
            let cluster = format!("{:?}", tcp.cluster_specifier);
            (names, tcp.tunneling_config.unwrap().hostname, cluster)
        })
        .collect();
    assert_eq!(chains.len(), 2, "{chains:?}");
    assert_eq!(
        chains[0].0,
        ["outbound_.9080_._.ratings.bookinfo.svc.green-imports.local"]
    );
    assert_eq!(chains[0].1, "ratings.bookinfo.svc.red-exports.local:9080");
    assert_eq!(chains[1].0, ["discovery.green.federation.local"]);
    assert_eq!(chains[1].1, "discovery.federation.local:8188");

    let cluster = gw
        .clusters
        .iter()
        .find(|c| c.name == "federation|green|9080|ratings.bookinfo.svc.red-exports.local")
        .unwrap();
    assert!(format!("{:?}", cluster.load_assignment).contains("192.0.2.1"));
    let socket = cluster.transport_socket.as_ref().unwrap();
    let Some(
        isthmus_proto::envoy::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
            any,
        ),
    ) = &socket.config_type
    else {
        panic!()
    };
    let tls = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
    assert_eq!(tls.sni, "ratings.bookinfo.svc.red-exports.local");
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) = &tls
        .common_tls_context
        .as_ref()
        .unwrap()
        .validation_context_type
    else {
        panic!()
    };
    assert_eq!(
        v.validation_context_sds_secret_config
            .as_ref()
            .unwrap()
            .name,
        "ROOTCA/green.local",
        "the peer is verified against its own root alone"
    );
}

/// The gateway's listener `name`.
fn listener<'g>(gw: &'g super::gateways::Gateway, name: &str) -> &'g Listener {
    gw.listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no {name} listener: {:?}", gw.listeners))
}

fn downstream_tls(chain: &FilterChain) -> Option<DownstreamTlsContext> {
    let Some(
        isthmus_proto::envoy::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
            any,
        ),
    ) = &chain.transport_socket.as_ref()?.config_type
    else {
        panic!("{chain:?}")
    };
    Some(DownstreamTlsContext::decode(any.value.as_slice()).unwrap())
}

#[test]
fn the_egress_gateway_carries_discovery_for_the_control_plane_identity_only() {
    let ca = TestCa::new("green.local");
    let mut model = model(&ca.root_pem());
    model.control_plane_identity =
        Some(SpiffeId::parse("spiffe://red.local/ns/cp/sa/isthmusd").unwrap());
    let workload = &model.workloads[&("istio-system".to_owned(), "gateway".to_owned())];
    let gw = gateway(&model, workload);
    let egress = listener(&gw, "federation-egress");
    let discovery = egress
        .filter_chains
        .iter()
        .find(|c| {
            c.filter_chain_match.as_ref().unwrap().server_names
                == ["discovery.green.federation.local"]
        })
        .unwrap();
    let tls = downstream_tls(discovery).expect("discovery callers must authenticate");
    assert!(tls.require_client_certificate.unwrap().value);
    let text = format!("{tls:?}");
    assert!(
        text.contains("spiffe://red.local/ns/cp/sa/isthmusd") && text.contains("\"ROOTCA\""),
        "the local control plane's identity, verified against the local bundle: {text}"
    );
    // Service traffic stays the caller's end-to-end session, untouched.
    let ratings = egress
        .filter_chains
        .iter()
        .find(|c| c.name.contains("ratings"))
        .unwrap();
    assert!(downstream_tls(ratings).is_none());
    // Without a known control plane identity nobody's discovery is carried.
    model.control_plane_identity = None;
    let gw = gateway(&model, workload);
    let egress = listener(&gw, "federation-egress");
    assert!(
        egress
            .filter_chains
            .iter()
            .all(|c| !c.name.contains("discovery")),
        "{egress:?}"
    );
}

#[test]
fn the_ingress_gateway_admits_the_peers_client_id_to_what_is_exported_only() {
    let ca = TestCa::new("green.local");
    let model = model(&ca.root_pem());
    let workload = &model.workloads[&("istio-system".to_owned(), "gateway".to_owned())];
    let gw = gateway(&model, workload);
    let ingress = listener(&gw, "federation-ingress");
    let [chain] = ingress.filter_chains.as_slice() else {
        panic!("one chain per peer: {ingress:?}")
    };
    assert_eq!(
        chain.filter_chain_match.as_ref().unwrap().server_names,
        [
            "reviews.bookinfo.svc.green-exports.local",
            "discovery.federation.local"
        ]
    );
    let tls = downstream_tls(chain).expect("the peer's mTLS");
    assert!(tls.require_client_certificate.unwrap().value);
    let text = format!("{tls:?}");
    assert!(
        text.contains("spiffe://green.local/ns/istio-system/sa/egress-red")
            && text.contains("ROOTCA/green.local"),
        "{text}"
    );
    let hcm: HttpConnectionManager = typed(chain);
    let Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)) = hcm.route_specifier
    else {
        panic!()
    };
    let domains: Vec<&str> = routes
        .virtual_hosts
        .iter()
        .flat_map(|v| v.domains.iter().map(String::as_str))
        .collect();
    assert_eq!(
        domains,
        [
            "reviews.bookinfo.svc.green-exports.local:9080",
            "discovery.federation.local",
            // Any port, also for Envoy, which matches a port-less domain only without one.
            "discovery.federation.local:*"
        ]
    );
    let reviews = gw
        .clusters
        .iter()
        .find(|c| c.name == "inbound-federation|9080||reviews.bookinfo.svc.cluster.local")
        .unwrap();
    let endpoints = format!("{:?}", reviews.load_assignment);
    assert!(
        endpoints.contains("10.0.0.7") && endpoints.contains("19080"),
        "{endpoints}"
    );
    assert!(
        reviews.transport_socket.is_none(),
        "the payload is already the caller's TLS"
    );
}

#[test]
fn a_workload_that_is_no_peers_gateway_gets_nothing() {
    let ca = TestCa::new("green.local");
    let mut model = model(&ca.root_pem());
    model.peers.clear();
    let workload = &model.workloads[&("istio-system".to_owned(), "gateway".to_owned())];
    let gw = gateway(&model, workload);
    assert!(gw.listeners.is_empty() && gw.clusters.is_empty());
}

/// The telemetry facts of `metadata` (`isthmus.telemetry.facts`), flattened to strings:
/// `service.name`, `meshes` as `td=mesh,...`.
fn facts(
    metadata: Option<&isthmus_proto::envoy::envoy::config::core::v3::Metadata>,
    _key: &str,
) -> std::collections::BTreeMap<String, String> {
    use isthmus_proto::envoy::google::protobuf::value::Kind;
    let Some(s) = metadata.and_then(|m| m.filter_metadata.get("isthmus.telemetry")) else {
        return Default::default();
    };
    assert_eq!(s.fields.len(), 1, "one field: deterministic encoding");
    let Some(Kind::StringValue(text)) = s.fields.get("facts").and_then(|v| v.kind.clone()) else {
        panic!("facts is a string: {s:?}");
    };
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in json.as_object().expect("object") {
        match v {
            serde_json::Value::String(s) => {
                out.insert(k.clone(), s.clone());
            }
            serde_json::Value::Object(inner) if k == "meshes" => {
                let pairs: Vec<String> = inner
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect();
                out.insert(k.clone(), pairs.join(","));
            }
            serde_json::Value::Object(inner) => {
                for (ik, iv) in inner {
                    out.insert(
                        format!("{k}.{ik}"),
                        iv.as_str().unwrap_or_default().to_owned(),
                    );
                }
            }
            other => panic!("{k}: {other}"),
        }
    }
    out
}

#[test]
fn telemetry_metadata_names_meshes_services_and_peers() {
    let ca = TestCa::new("green.local");
    let mut model = model(&ca.root_pem());
    model.telemetry.mesh_id = Some("red".into());
    let workload = model
        .workloads
        .get(&("istio-system".to_owned(), "gateway".to_owned()))
        .expect("the gateway workload")
        .clone();
    let gw = gateway(&model, &workload);

    // The gateway's listeners: who it is, which side, and every mesh by trust domain.
    let egress = facts(
        listener(&gw, "federation-egress").metadata.as_ref(),
        "isthmus.telemetry",
    );
    assert_eq!(egress["gateway"], "egress");
    assert_eq!(egress["mesh"], "red");
    assert_eq!(egress["meshes"], "green.local=green,red.local=red");
    assert_eq!(
        egress["principal"],
        "spiffe://red.local/ns/istio-system/sa/gateway"
    );
    let ingress = facts(
        listener(&gw, "federation-ingress").metadata.as_ref(),
        "isthmus.telemetry",
    );
    assert_eq!(ingress["gateway"], "ingress");

    // Tunnels and ingress clusters: the peer and the service they carry.
    let tunnel = gw
        .clusters
        .iter()
        .find(|c| c.name == "federation|green|9080|ratings.bookinfo.svc.red-exports.local")
        .expect("the tunnel to green's ratings");
    let t = facts(tunnel.metadata.as_ref(), "isthmus.telemetry");
    assert_eq!(t["peer"], "green");
    assert_eq!(t["tunnel"], "ratings.bookinfo.svc.red-exports.local");
    let chain = listener(&gw, "federation-ingress")
        .filter_chains
        .first()
        .expect("a chain");
    assert_eq!(
        facts(chain.metadata.as_ref(), "isthmus.telemetry")["peer"],
        "green"
    );

    // A sidecar's cluster to the imported service: Istio's `services`, and green's mesh.
    let mut clusters = vec![
        isthmus_proto::envoy::envoy::config::cluster::v3::Cluster {
            name: "outbound|9080||ratings.bookinfo.svc.green-imports.local".into(),
            ..Default::default()
        },
        isthmus_proto::envoy::envoy::config::cluster::v3::Cluster {
            name: "outbound|9080||reviews.bookinfo.svc.cluster.local".into(),
            ..Default::default()
        },
        isthmus_proto::envoy::envoy::config::cluster::v3::Cluster {
            name: "PassthroughCluster".into(),
            ..Default::default()
        },
    ];
    super::telemetry::label_clusters(&model, None, &mut clusters);
    let imported = &clusters[0];
    assert_eq!(
        facts(imported.metadata.as_ref(), "isthmus.telemetry")["mesh"],
        "green"
    );
    let f = facts(imported.metadata.as_ref(), "isthmus.telemetry");
    assert_eq!(
        f["service.host"],
        "ratings.bookinfo.svc.green-imports.local"
    );
    assert_eq!(f["service.name"], "ratings");
    assert_eq!(f["service.namespace"], "bookinfo");
    assert_eq!(
        facts(clusters[1].metadata.as_ref(), "isthmus.telemetry")["mesh"],
        "red"
    );
    assert!(clusters[2].metadata.is_none(), "no service: no metadata");
}
