//! The model's side of federation: its services as export rules see them, and what each
//! `ExportedServiceSet` offers its peer (the rules themselves are `isthmus_federation`'s).
//!
//! - A service's rule name is `<name>` of a `<name>.<namespace>.svc.<domain>` host, else the
//!   name of the `ServiceEntry` that declared it; its labels are that `ServiceEntry`'s.
//! - Never exported: `MESH_EXTERNAL` services, and services whose `exportTo` hides them from
//!   the control plane's namespace (Maistra exports only what that namespace can see).
//! - Federation resources count only in the control plane's namespace, and an
//!   `ExportedServiceSet` only with a `ServiceMeshPeer` of the same name; others are ignored,
//!   each with a warning saying why.

use std::collections::BTreeMap;
use std::sync::Arc;

use isthmus_federation::discovery::exporter::ExportPeer;
use isthmus_federation::discovery::{Catalog, Exports};
use isthmus_proto::federation::{ExportedService, ServicePort};

use isthmus_api::federation::{ExportedServiceSet, ExportedServiceSetSpec};
use isthmus_api::networking::Location;
use isthmus_api::{Kind, Resource};
use isthmus_federation::exports::{self, ExportDecision, LocalService, NotExportable};
use isthmus_federation::names::ServiceName;

use super::{MeshModel, ModelWarning, Service, ServiceSource};
use crate::config::ResourceKey;

/// What one peer is offered: every local service with its decision.
pub type Offer = Vec<(ServiceName, ExportDecision)>;

/// The rule name of a service.
pub fn rule_name(service: &Service) -> ServiceName {
    let ns = &service.key.namespace;
    let from_host = service
        .key
        .hostname
        .split_once('.')
        .filter(|(_, rest)| rest.starts_with(&format!("{ns}.svc.")))
        .map(|(name, _)| name);
    ServiceName::new(ns, from_host.unwrap_or(service.source.name()))
}

fn visible_to(service: &Service, namespace: &str) -> bool {
    service.export_to.is_empty()
        || service.export_to.iter().any(|to| {
            to == "*" || to == namespace || (to == "." && service.key.namespace == namespace)
        })
}

/// The model's services as export rules see them.
pub fn local_services(model: &MeshModel) -> Vec<LocalService> {
    model
        .services
        .values()
        .map(|service| {
            let labels = match &service.source {
                ServiceSource::Config(key) => match model.config.get(key) {
                    Some(Resource::ServiceEntry(entry)) => entry.metadata.labels.clone(),
                    _ => BTreeMap::new(),
                },
                ServiceSource::Kubernetes { labels, .. } => labels.clone(),
            };
            let not_exportable = if let Some(peer) = &service.imported_from {
                Some(NotExportable::ImportedFrom(peer.clone()))
            } else if service.location == Location::MeshExternal {
                Some(NotExportable::MeshExternal)
            } else if !visible_to(service, &model.root_namespace) {
                Some(NotExportable::NotVisible)
            } else {
                None
            };
            LocalService {
                name: rule_name(service),
                host: service.key.hostname.clone(),
                labels,
                not_exportable,
            }
        })
        .collect()
}

/// What each peer is offered, by peer name, and the federation resources that were ignored.
pub fn offers(model: &MeshModel) -> (BTreeMap<String, Offer>, Vec<ModelWarning>) {
    let mut warnings = Vec::new();
    let peers: Vec<&str> = model
        .config
        .of_kind(Kind::ServiceMeshPeer)
        .filter(|(key, _)| key.namespace == model.root_namespace)
        .map(|(key, _)| key.name.as_str())
        .collect();
    let services = local_services(model);
    let mut offers = BTreeMap::new();
    for (key, set) in model.config.of_type::<ExportedServiceSet>() {
        if let Some(reason) = ignored(key, &model.root_namespace, &peers) {
            warnings.push(ModelWarning {
                resource: key.clone(),
                message: reason,
            });
            continue;
        }
        let spec: &ExportedServiceSetSpec = &set.spec;
        offers.insert(
            key.name.clone(),
            exports::evaluate(&key.name, spec, &services),
        );
    }
    (offers, warnings)
}

/// What discovery serves: each usable peer's catalog (the services exported to it, with
/// their ports and the identities of their endpoints) and the peers by trust domain.
pub fn discovery_exports(model: &MeshModel) -> Exports {
    let (offers, _) = offers(model);
    let services = local_services(model);
    let mut exports = Exports::default();
    for peer in &model.peers {
        exports.peers.insert(
            peer.trust_domain.to_string(),
            ExportPeer {
                name: peer.name.clone(),
                control_plane: peer.control_plane_id.clone(),
            },
        );
        let Some(offer) = offers.get(&peer.name) else {
            continue;
        };
        // `exports::evaluate` decides for the services in the order given.
        let exported = services.iter().zip(offer).filter_map(|(local, (_, d))| {
            let ExportDecision::Exported { as_name, host, .. } = d else {
                return None;
            };
            let service = model.service_of_host(&local.host)?;
            Some(ExportedService {
                hostname: host.clone(),
                name: as_name.name.clone(),
                namespace: as_name.namespace.clone(),
                ports: service
                    .ports
                    .iter()
                    .map(|p| ServicePort {
                        number: p.number,
                        name: p.name.clone(),
                        protocol: p.protocol.name().into(),
                    })
                    .collect(),
                identities: service
                    .endpoints
                    .iter()
                    .filter_map(|e| e.identity.as_ref().map(ToString::to_string))
                    .collect(),
            })
        });
        exports
            .catalogs
            .insert(peer.name.clone(), Arc::new(Catalog::new(exported)));
    }
    exports
}

/// Why an export or import set does not count, if it does not.
fn ignored(key: &ResourceKey, control_plane: &str, peers: &[&str]) -> Option<String> {
    if key.namespace != control_plane {
        return Some(format!(
            "ignored: federation resources count only in the control plane's namespace {control_plane:?}"
        ));
    }
    (!peers.contains(&key.name.as_str())).then(|| {
        format!(
            "ignored: no ServiceMeshPeer {control_plane}/{} (the set must share its peer's name)",
            key.name
        )
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use isthmus_identity::TrustDomain;

    use super::*;
    use crate::config::load_text;

    const CONFIG: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: bookinfo, labels: {export: 'true'}}
spec:
  hosts: [ratings.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: bookinfo, labels: {export: 'true'}}
spec:
  hosts: [private.bookinfo.local]
  location: MESH_INTERNAL
  exportTo: [.]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 127.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: bookinfo, labels: {export: 'true'}}
spec:
  hosts: [httpbin.org]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http}]
---
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {name: red, namespace: istio-system}
spec:
  remote: {addresses: [127.0.0.9]}
  security: {trustDomain: red.local, clientID: red.local/ns/istio-system/sa/egress}
---
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata: {name: red, namespace: istio-system}
spec:
  exportRules:
  - type: LabelSelector
    labelSelector: {namespace: bookinfo, selector: {matchLabels: {export: 'true'}}}
---
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata: {name: blue, namespace: istio-system}
spec:
  exportRules: [{type: NameSelector, nameSelector: {namespace: '*', name: '*'}}]
---
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata: {name: red, namespace: bookinfo}
spec:
  exportRules: [{type: NameSelector, nameSelector: {namespace: '*', name: '*'}}]
";

    fn model() -> MeshModel {
        let snapshot = load_text(CONFIG, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e:?}"));
        MeshModel::build(
            Arc::new(snapshot),
            &TrustDomain::new("green.local").unwrap(),
            "istio-system",
        )
    }

    #[test]
    fn the_models_services_are_offered_by_rule_with_the_reasons_for_the_others() {
        let (offers, warnings) = offers(&model());
        assert_eq!(offers.keys().collect::<Vec<_>>(), ["red"]);
        let decisions: BTreeMap<String, ExportDecision> = offers["red"]
            .iter()
            .map(|(name, d)| (name.to_string(), d.clone()))
            .collect();
        assert_eq!(
            decisions["bookinfo/ratings"],
            ExportDecision::Exported {
                as_name: ServiceName::new("bookinfo", "ratings"),
                host: "ratings.bookinfo.svc.red-exports.local".into(),
                rule: 0
            },
            "named from its host, labels from its ServiceEntry"
        );
        assert_eq!(
            decisions["bookinfo/private"],
            ExportDecision::Refused {
                rule: 0,
                reason: NotExportable::NotVisible
            },
            "exportTo: . hides it from istio-system"
        );
        assert_eq!(
            decisions["bookinfo/httpbin"],
            ExportDecision::Refused {
                rule: 0,
                reason: NotExportable::MeshExternal
            }
        );
        let reasons: Vec<String> = warnings
            .iter()
            .map(|w| format!("{}: {}", w.resource, w.message))
            .collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons.iter().any(|r| r.contains("istio-system/blue")
                && r.contains("no ServiceMeshPeer istio-system/blue")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("bookinfo/red") && r.contains("control plane's namespace")),
            "{reasons:?}"
        );
    }
}
