//! What a proxy needs to label its telemetry, as Envoy metadata (which any Envoy accepts and
//! ignores): `filter_metadata["isthmus.telemetry"]` holds one field, `facts`, a JSON object
//! with sorted keys. (A protobuf `Struct` is a map, encoded in no fixed order: the resources'
//! content-hash versions would change at every generation. One key with one string is
//! deterministic.)
//!
//! - every listener of a node: the node's own `mesh`, `workload`, `namespace`, `app`,
//!   `principal`, and `meshes` (trust domain -> mesh name, ours and the peers'), so that the
//!   server side names the caller's mesh from its verified identity; a federation gateway's
//!   also say `gateway` (`ingress` / `egress`);
//! - clusters: the `service` (`host`, `name`, `namespace`, as Istio's `istio.services`) and the
//!   `mesh` whose workloads serve it (a peer's for an imported service);
//! - federation gateways' filter chains and tunnel clusters: the `peer`, and the `tunnel`
//!   service host a cluster carries.

use std::collections::HashMap;

use isthmus_proto::envoy::envoy::config::cluster::v3::Cluster;
use isthmus_proto::envoy::envoy::config::core::v3::Metadata;
use isthmus_proto::envoy::envoy::config::listener::v3::Listener;
use isthmus_proto::envoy::google::protobuf::{Struct, Value, value::Kind};
use serde_json::{Map, Value as Json, json};

use crate::model::{MeshModel, Service, Workload};

/// The metadata key of Isthmus's telemetry facts.
pub const TELEMETRY_KEY: &str = "isthmus.telemetry";
/// The one field under it: the facts as a JSON object.
pub const FACTS_FIELD: &str = "facts";

/// A federation gateway's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewaySide {
    Ingress,
    Egress,
}

/// Labels every listener of a sidecar with who the node is.
pub fn label_sidecar_listeners(model: &MeshModel, workload: &Workload, listeners: &mut [Listener]) {
    let facts = node_facts(model, workload, None);
    for l in listeners {
        l.metadata = Some(metadata(&facts));
    }
}

/// Labels a gateway's listener with who the node is and which side it is.
pub fn label_gateway_listener(
    model: &MeshModel,
    workload: &Workload,
    side: GatewaySide,
    listener: &mut Listener,
) {
    listener.metadata = Some(metadata(&node_facts(model, workload, Some(side))));
}

/// The `peer` and the `tunnel` service host (each when given) of a gateway's chain or cluster.
pub fn gateway_metadata(peer: Option<&str>, service: Option<&str>) -> Metadata {
    let mut facts = Map::new();
    if let Some(peer) = peer {
        facts.insert("peer".into(), json!(peer));
    }
    if let Some(service) = service {
        facts.insert("tunnel".into(), json!(service));
    }
    metadata(&Json::Object(facts))
}

/// Labels clusters named `outbound|<port>|<subset>|<host>` with their service and its mesh,
/// and `inbound|<port>||` with the first service `workload` serves on that port.
pub fn label_clusters(model: &MeshModel, workload: Option<&Workload>, clusters: &mut [Cluster]) {
    for c in clusters {
        let mut parts = c.name.splitn(4, '|');
        let service: Option<&Service> = match (parts.next(), parts.next(), parts.nth(1)) {
            (Some("outbound"), Some(_), Some(host)) => model.service_of_host(host),
            (Some("inbound"), Some(port), _) => match (workload, port.parse::<u32>()) {
                (Some(w), Ok(port)) => served_on(model, w, port),
                _ => None,
            },
            _ => None,
        };
        if let Some(service) = service {
            c.metadata = Some(metadata(&service_facts(model, service)));
        }
    }
}

/// The first service `workload` is an endpoint of on `port`.
fn served_on<'m>(model: &'m MeshModel, workload: &Workload, port: u32) -> Option<&'m Service> {
    model
        .services_of_workload
        .get(&(workload.namespace.clone(), workload.name.clone()))
        .into_iter()
        .flatten()
        .filter_map(|key| model.services.get(key))
        .find(|s| {
            s.endpoints.iter().any(|e| {
                e.workload_entry.as_deref() == Some(workload.name.as_str())
                    && s.ports
                        .iter()
                        .any(|p| e.ports.get(&p.name).copied().unwrap_or(p.number) == port)
            })
        })
}

/// A service as Istio's labels name it, and its mesh (an imported service's is its peer's).
fn service_facts(model: &MeshModel, service: &Service) -> Json {
    let (name, namespace) = service_name(service);
    let mesh = service
        .imported_from
        .clone()
        .unwrap_or_else(|| model.mesh_id());
    json!({
        "service": {"host": service.key.hostname, "name": name, "namespace": namespace},
        "mesh": mesh,
    })
}

/// A service's name and namespace as Istio's labels show them: a Kubernetes-style host
/// (`<name>.<namespace>.svc.<domain>`, imported ones included) by its first two labels,
/// otherwise the host and the declaring namespace.
pub fn service_name(service: &Service) -> (String, String) {
    let host = &service.key.hostname;
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() >= 4 && labels[2] == "svc" {
        (labels[0].to_owned(), labels[1].to_owned())
    } else {
        (host.clone(), service.key.namespace.clone())
    }
}

/// The workload's name as Istio's `*_workload` labels show it: a Deployment's pod by its
/// Deployment (`reviews-v1-5d4f8b7c9-x2x7q` with `pod-template-hash: 5d4f8b7c9` is
/// `reviews-v1`), a StatefulSet's by its StatefulSet (`db-0` is `db`); otherwise its own name.
/// Pods come and go; their controller's name keeps the series count steady.
pub fn workload_name(workload: &Workload) -> String {
    let name = &workload.name;
    if let Some(hash) = workload.labels.get("pod-template-hash")
        && let Some(at) = name.find(&format!("-{hash}-"))
        && at > 0
    {
        return name[..at].to_owned();
    }
    if workload.labels.get("statefulset.kubernetes.io/pod-name") == Some(name)
        && let Some((set, ordinal)) = name.rsplit_once('-')
        && !set.is_empty()
        && !ordinal.is_empty()
        && ordinal.bytes().all(|b| b.is_ascii_digit())
    {
        return set.to_owned();
    }
    name.clone()
}

fn node_facts(model: &MeshModel, workload: &Workload, side: Option<GatewaySide>) -> Json {
    let app = workload
        .labels
        .get("app")
        .or_else(|| workload.labels.get("app.kubernetes.io/name"))
        .cloned()
        .unwrap_or_else(|| workload.name.clone());
    let meshes: Map<String, Json> = model
        .meshes_by_trust_domain()
        .into_iter()
        .map(|(td, mesh)| (td.to_string(), json!(mesh)))
        .collect();
    let mut facts = json!({
        "mesh": model.mesh_id(),
        "workload": workload_name(workload),
        "namespace": workload.namespace,
        "app": app,
        "principal": workload.identity.to_string(),
        "meshes": meshes,
    });
    if let (Some(side), Some(object)) = (side, facts.as_object_mut()) {
        let side = match side {
            GatewaySide::Ingress => "ingress",
            GatewaySide::Egress => "egress",
        };
        object.insert("gateway".into(), json!(side));
    }
    facts
}

/// `isthmus.telemetry: {facts: "<json>"}` (serde_json's objects keep their keys sorted).
fn metadata(facts: &Json) -> Metadata {
    let value = Value {
        kind: Some(Kind::StringValue(facts.to_string())),
    };
    Metadata {
        filter_metadata: HashMap::from([(
            TELEMETRY_KEY.to_owned(),
            Struct {
                fields: HashMap::from([(FACTS_FIELD.to_owned(), value)]),
            },
        )]),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use isthmus_identity::{SpiffeId, TrustDomain};

    use super::*;

    fn pod(name: &str, labels: &[(&str, &str)]) -> Workload {
        let td = TrustDomain::new("cluster.local").expect("td");
        Workload {
            namespace: "shop".into(),
            name: name.into(),
            address: "10.0.0.1".into(),
            labels: Arc::new(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            service_account: "default".into(),
            identity: SpiffeId::workload(&td, "shop", "default").expect("id"),
            locality: Default::default(),
        }
    }

    #[test]
    fn pods_are_named_by_their_controller() {
        let cases = [
            (
                "reviews-v1-5d4f8b7c9-x2x7q",
                vec![("pod-template-hash", "5d4f8b7c9")],
                "reviews-v1",
            ),
            (
                "db-0",
                vec![("statefulset.kubernetes.io/pod-name", "db-0")],
                "db",
            ),
            (
                "web-12",
                vec![("statefulset.kubernetes.io/pod-name", "web-12")],
                "web",
            ),
            // The label must agree with the name.
            (
                "reviews-abc",
                vec![("pod-template-hash", "5d4f8b7c9")],
                "reviews-abc",
            ),
            (
                "db-x",
                vec![("statefulset.kubernetes.io/pod-name", "db-x")],
                "db-x",
            ),
            ("ratings", vec![], "ratings"),
        ];
        for (name, labels, expected) in cases {
            assert_eq!(workload_name(&pod(name, &labels)), expected, "{name}");
        }
    }
}
