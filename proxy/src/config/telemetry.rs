//! The telemetry facts the control plane puts in Envoy metadata (`isthmus.telemetry.facts`, a
//! JSON object), converted once per resource: who this node is, which mesh each
//! trust domain is, which service and mesh a cluster leads to, which peer a federation
//! gateway's chain or tunnel serves. Metadata is advisory: a missing or odd field leaves its
//! label `unknown`, it never refuses a resource (as in Envoy, where metadata is opaque).

use std::collections::HashMap;
use std::sync::Arc;

use isthmus_proto::envoy::envoy::config::core::v3::Metadata;
use isthmus_proto::envoy::google::protobuf::value::Kind;

use crate::telemetry::labels::{self, Label, Service, Workload};
use crate::telemetry::peer_metadata::OwnHeaders;

pub const TELEMETRY_KEY: &str = "isthmus.telemetry";
/// The one field under it: the facts, a JSON object (deterministic, where a `Struct` is not).
pub const FACTS_FIELD: &str = "facts";

/// Which side of a federation a gateway listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewaySide {
    Ingress,
    Egress,
}

impl GatewaySide {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// Who the node behind a listener is (`isthmus.telemetry` on the listener).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    /// This workload as a side of a call (its principal, mesh, app).
    pub me: Arc<Workload>,
    /// Trust domain -> mesh name.
    pub meshes: HashMap<String, Label>,
    pub gateway: Option<GatewaySide>,
    /// What this side tells peers (metadata exchange).
    pub headers: OwnHeaders,
}

impl PartialEq for OwnHeaders {
    fn eq(&self, other: &Self) -> bool {
        self.metadata == other.metadata && self.id == other.id
    }
}

impl NodeFacts {
    /// The mesh of a SPIFFE ID's trust domain: its name when known, else the trust domain.
    pub fn mesh_of(&self, spiffe_id: &str) -> Label {
        let td = spiffe_id
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        if td.is_empty() {
            return labels::unknown();
        }
        self.meshes
            .get(td)
            .cloned()
            .unwrap_or_else(|| Arc::from(td))
    }
}

/// What a cluster leads to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    /// The service (as Istio's `istio.services` names it).
    pub service: Option<Arc<Service>>,
    /// The mesh whose workloads serve it.
    pub mesh: Option<Label>,
    /// A federation gateway's tunnel or chain: the peer.
    pub peer: Option<Label>,
    /// A federation gateway's cluster: the service host it carries.
    pub gateway_service: Option<Label>,
}

/// The node facts of a listener's metadata, if it has them.
pub fn node_facts(metadata: Option<&Metadata>) -> Option<Arc<NodeFacts>> {
    let facts: NodeJson = serde_json::from_str(facts_text(metadata)?).ok()?;
    let text = |v: Option<String>| {
        v.filter(|s| !s.is_empty())
            .map(|s| Arc::from(s.as_str()))
            .unwrap_or_else(labels::unknown)
    };
    let me = Workload {
        workload: text(facts.workload),
        namespace: text(facts.namespace),
        principal: text(facts.principal),
        app: text(facts.app),
        mesh: text(facts.mesh),
    };
    let gateway = match facts.gateway.as_deref() {
        Some("ingress") => Some(GatewaySide::Ingress),
        Some("egress") => Some(GatewaySide::Egress),
        _ => None,
    };
    let headers = OwnHeaders::new(
        &format!("{}.{}", me.workload, me.namespace),
        &me.workload,
        &me.namespace,
        &me.app,
        &me.mesh,
    );
    Some(Arc::new(NodeFacts {
        me: Arc::new(me),
        meshes: facts
            .meshes
            .into_iter()
            .map(|(td, mesh)| (td, Arc::from(mesh.as_str())))
            .collect(),
        gateway,
        headers,
    }))
}

/// The facts of a cluster's (or a filter chain's) metadata.
pub fn cluster_facts(metadata: Option<&Metadata>) -> ClusterFacts {
    let Some(facts) =
        facts_text(metadata).and_then(|t| serde_json::from_str::<ClusterJson>(t).ok())
    else {
        return ClusterFacts::default();
    };
    let label = |v: Option<String>| v.filter(|s| !s.is_empty()).map(|s| Arc::from(s.as_str()));
    ClusterFacts {
        service: facts.service.and_then(|s| {
            Some(Arc::new(Service {
                host: label(Some(s.host))?,
                name: label(s.name).unwrap_or_else(labels::unknown),
                namespace: label(s.namespace).unwrap_or_else(labels::unknown),
            }))
        }),
        mesh: label(facts.mesh),
        peer: label(facts.peer),
        gateway_service: label(facts.tunnel),
    }
}

/// `isthmus.telemetry.facts`: the JSON text of the facts.
fn facts_text(metadata: Option<&Metadata>) -> Option<&str> {
    let facts = metadata?.filter_metadata.get(TELEMETRY_KEY)?;
    match facts.fields.get(FACTS_FIELD)?.kind.as_ref()? {
        Kind::StringValue(text) if text.len() <= MAX_FACTS => Some(text),
        _ => None,
    }
}

/// Longer facts are not read.
const MAX_FACTS: usize = 64 * 1024;

#[derive(Debug, Default, serde::Deserialize)]
struct NodeJson {
    mesh: Option<String>,
    workload: Option<String>,
    namespace: Option<String>,
    app: Option<String>,
    principal: Option<String>,
    #[serde(default)]
    meshes: HashMap<String, String>,
    gateway: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct ClusterJson {
    service: Option<ServiceJson>,
    mesh: Option<String>,
    peer: Option<String>,
    tunnel: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct ServiceJson {
    host: String,
    name: Option<String>,
    namespace: Option<String>,
}

#[cfg(test)]
mod tests {
    use isthmus_proto::envoy::google::protobuf::{Struct, Value};

    use super::*;

    fn with_facts(json: &str) -> Metadata {
        Metadata {
            filter_metadata: HashMap::from([(
                TELEMETRY_KEY.to_owned(),
                Struct {
                    fields: HashMap::from([(
                        FACTS_FIELD.to_owned(),
                        Value {
                            kind: Some(Kind::StringValue(json.to_owned())),
                        },
                    )]),
                },
            )]),
            ..Default::default()
        }
    }

    #[test]
    fn a_listener_says_who_the_node_is_and_which_mesh_each_trust_domain_is() {
        let metadata = with_facts(
            r#"{"app":"web","gateway":"egress","mesh":"red","meshes":{"green.local":"green","red.local":"red"},"namespace":"shop","principal":"spiffe://red.local/ns/shop/sa/client","workload":"client"}"#,
        );
        let facts = node_facts(Some(&metadata)).expect("facts");
        assert_eq!(&*facts.me.app, "web");
        assert_eq!(&*facts.me.mesh, "red");
        assert_eq!(facts.gateway, Some(GatewaySide::Egress));
        assert_eq!(&*facts.mesh_of("spiffe://green.local/ns/a/sa/b"), "green");
        // An unknown trust domain is named as itself; no SPIFFE ID, unknown.
        assert_eq!(
            &*facts.mesh_of("spiffe://blue.local/ns/a/sa/b"),
            "blue.local"
        );
        assert_eq!(&*facts.mesh_of("not a spiffe id"), "unknown");
        assert!(node_facts(None).is_none());
        assert!(node_facts(Some(&Metadata::default())).is_none());
        assert!(node_facts(Some(&with_facts("not json"))).is_none());
    }

    #[test]
    fn a_cluster_says_its_service_and_mesh_and_odd_metadata_is_ignored() {
        let metadata = with_facts(
            r#"{"mesh":"green","service":{"host":"ratings.bookinfo.svc.green-imports.local","name":"ratings","namespace":"bookinfo"}}"#,
        );
        let facts = cluster_facts(Some(&metadata));
        let service = facts.service.expect("service");
        assert_eq!(&*service.name, "ratings");
        assert_eq!(&*service.namespace, "bookinfo");
        assert_eq!(facts.mesh.as_deref(), Some("green"));
        // Wrong types or shapes: nothing, not an error.
        for odd in [r#"{"service":"not an object"}"#, "[]", "{", r#"{"mesh":3}"#] {
            assert_eq!(
                cluster_facts(Some(&with_facts(odd))),
                ClusterFacts::default(),
                "{odd}"
            );
        }
        let tunnel = cluster_facts(Some(&with_facts(
            r#"{"peer":"green","tunnel":"a.b.svc.x"}"#,
        )));
        assert_eq!(tunnel.peer.as_deref(), Some("green"));
        assert_eq!(tunnel.gateway_service.as_deref(), Some("a.b.svc.x"));
    }
}
