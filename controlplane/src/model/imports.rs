//! Services imported from peers, added to the registry.
//!
//! For each usable peer with an `ImportedServiceSet` of the same name (in the control plane's
//! namespace), the names the peer offers (its catalog, as discovery last heard it) go through
//! the set's rules (`isthmus_federation::imports`). An imported service:
//!
//! - is named `<name>.<namespace>.svc.<peer>-imports.local` (or by `domainSuffix`), in the
//!   namespace of its local name, with the peer's ports;
//! - has as endpoints the local egress gateway of the peer (`ServiceMeshPeer.spec.gateways
//!   .egress`: the service `<name>.<control plane namespace>.svc.cluster.local`), its first
//!   port standing for every service port: traffic to the peer leaves through it;
//! - is never exported (`imported_from`).
//!
//! `importAsLocal` adds the gateway's endpoints to the local service of that name instead,
//! with the set's `locality` on them, so they serve as a failover locality.

use std::collections::BTreeMap;
use std::sync::Arc;

use isthmus_api::federation::{ImportedServiceSet, ImportedServiceSetSpec};
use isthmus_api::networking::{Location, Resolution};
use isthmus_federation::discovery::Catalog;
use isthmus_federation::imports::{self, ImportDecision};
use isthmus_federation::names::ServiceName;
use isthmus_identity::SpiffeId;

use super::peers::Peer;
use super::registry::{
    Endpoint, Locality, ModelWarning, Port, Protocol, RemoteService, Service, ServiceKey,
    ServiceSource,
};
use crate::config::{ConfigSnapshot, ResourceKey};

/// The mesh's own domain, for `importAsLocal` and gateway services.
pub const LOCAL_DOMAIN: &str = "cluster.local";

/// Peer name to the catalog it exports to us, as discovery last heard it.
pub type RemoteCatalogs = BTreeMap<String, Arc<Catalog>>;

/// One name a peer offers, and what the import rules made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportEntry {
    /// The host the peer exports it as (`…svc.<us>-exports.local`).
    pub exported_host: String,
    pub offered: ServiceName,
    pub decision: ImportDecision,
}

/// Adds what is imported to `services`; returns, per peer, every offered name with its fate.
pub fn add_imports(
    config: &ConfigSnapshot,
    root_namespace: &str,
    peers: &[Peer],
    catalogs: &RemoteCatalogs,
    services: &mut BTreeMap<ServiceKey, Service>,
    warnings: &mut Vec<ModelWarning>,
) -> BTreeMap<String, Vec<ImportEntry>> {
    let mut result = BTreeMap::new();
    for (key, set) in config.of_type::<ImportedServiceSet>() {
        let peer = (key.namespace == root_namespace)
            .then(|| peers.iter().find(|p| p.name == key.name))
            .flatten();
        let Some(peer) = peer else {
            warnings.push(ModelWarning {
                resource: key.clone(),
                message: if key.namespace == root_namespace {
                    format!(
                        "ignored: no usable ServiceMeshPeer {root_namespace}/{} (the set shares its peer's name)",
                        key.name
                    )
                } else {
                    format!(
                        "ignored: federation resources count only in the control plane's namespace {root_namespace:?}"
                    )
                },
            });
            continue;
        };
        let Some(catalog) = catalogs.get(&peer.name) else {
            result.insert(peer.name.clone(), Vec::new());
            continue;
        };
        let entries = import_from(peer, key, &set.spec, catalog, services, warnings);
        result.insert(peer.name.clone(), entries);
    }
    result
}

fn import_from(
    peer: &Peer,
    set: &ResourceKey,
    spec: &ImportedServiceSetSpec,
    catalog: &Catalog,
    services: &mut BTreeMap<ServiceKey, Service>,
    warnings: &mut Vec<ModelWarning>,
) -> Vec<ImportEntry> {
    let offered: Vec<(ServiceName, String)> = catalog
        .services()
        .map(|s| (ServiceName::new(&s.namespace, &s.name), s.hostname.clone()))
        .collect();
    let names: Vec<ServiceName> = offered.iter().map(|(n, _)| n.clone()).collect();
    let decisions = imports::evaluate(&peer.name, spec, &names, LOCAL_DOMAIN);
    let gateway = gateway_endpoints(peer, &set.namespace, services, set, warnings);
    let mut entries = Vec::new();
    for ((name, exported_host), (_, decision)) in offered.into_iter().zip(decisions) {
        if let ImportDecision::Imported {
            as_name,
            host,
            as_local,
            locality,
            ..
        } = &decision
            && let Some(remote) = catalog.get(&exported_host)
        {
            let ports: Vec<Port> = remote
                .ports
                .iter()
                .map(|p| Port {
                    name: p.name.clone(),
                    number: p.number,
                    protocol: Protocol::from_name(&p.protocol).unwrap_or(Protocol::Tcp),
                    target_port: None,
                })
                .collect();
            let locality = locality.as_ref().map(|l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                subzone: l.subzone.clone(),
            });
            // The caller's session is with the peer's workload, not the gateway: the endpoint
            // stands for the peer's identity.
            let identity = remote
                .identities
                .first()
                .and_then(|id| SpiffeId::parse(id).ok());
            let endpoints: Vec<Endpoint> = gateway
                .iter()
                .map(|e| Endpoint {
                    ports: Arc::new(ports.iter().map(|p| (p.name.clone(), e.port)).collect()),
                    locality: locality.clone().unwrap_or_default(),
                    identity: identity.clone(),
                    via_peer: Some(peer.name.clone()),
                    ..e.endpoint.clone()
                })
                .collect();
            let remote_service = RemoteService {
                peer: peer.name.clone(),
                exported_host: exported_host.clone(),
                identities: remote.identities.clone(),
            };
            let key = ServiceKey {
                namespace: as_name.namespace.clone(),
                hostname: host.clone(),
            };
            match services.get_mut(&key) {
                Some(local) if *as_local && local.imported_from.is_none() => {
                    local.endpoints.extend(endpoints);
                    local.failover.push(remote_service);
                }
                Some(existing) => warnings.push(ModelWarning {
                    resource: set.clone(),
                    message: format!(
                        "{exported_host} from peer {} is not imported: host {host} is already declared by {}",
                        peer.name, existing.source
                    ),
                }),
                None => {
                    services.insert(
                        key.clone(),
                        Service {
                            key,
                            addresses: Vec::new(),
                            ports,
                            location: Location::MeshInternal,
                            resolution: Resolution::Static,
                            endpoints,
                            export_to: vec!["*".into()],
                            source: ServiceSource::Config(set.clone()),
                            imported_from: Some(peer.name.clone()),
                            remote: Some(remote_service),
                            failover: Vec::new(),
                        },
                    );
                }
            }
        }
        entries.push(ImportEntry {
            exported_host,
            offered: name,
            decision,
        });
    }
    entries
}

/// `host:port` of the endpoints of `peer`'s local egress gateway, if it names one.
pub fn egress_addresses(
    peer: &Peer,
    namespace: &str,
    services: &BTreeMap<ServiceKey, Service>,
) -> Vec<String> {
    egress_gateway(peer, namespace, services)
        .map(|(_, endpoints)| {
            endpoints
                .iter()
                .map(|e| format!("{}:{}", e.endpoint.address, e.port))
                .collect()
        })
        .unwrap_or_default()
}

struct GatewayEndpoint {
    endpoint: Endpoint,
    port: u32,
}

/// The host of `peer`'s local egress gateway service and its endpoints, each with the port
/// traffic goes to (the service's first); `Err` says why there is none.
fn egress_gateway(
    peer: &Peer,
    namespace: &str,
    services: &BTreeMap<ServiceKey, Service>,
) -> Result<(String, Vec<GatewayEndpoint>), String> {
    let Some(name) = &peer.egress_gateway else {
        return Err(format!(
            "ServiceMeshPeer {} names no egress gateway (spec.gateways.egress): its imports have no endpoints",
            peer.name
        ));
    };
    let host = format!("{name}.{namespace}.svc.{LOCAL_DOMAIN}");
    let key = ServiceKey {
        namespace: namespace.to_owned(),
        hostname: host.clone(),
    };
    let Some(gateway) = services.get(&key) else {
        return Err(format!(
            "egress gateway service {host} of ServiceMeshPeer {} is not declared: its imports have no endpoints",
            peer.name
        ));
    };
    let endpoints = match gateway.ports.first() {
        Some(port) => gateway
            .endpoints
            .iter()
            .map(|e| GatewayEndpoint {
                port: e.port_for(port),
                endpoint: e.clone(),
            })
            .collect(),
        None => Vec::new(),
    };
    Ok((host, endpoints))
}

/// [`egress_gateway`]'s endpoints, or none with a warning on `set`.
fn gateway_endpoints(
    peer: &Peer,
    namespace: &str,
    services: &BTreeMap<ServiceKey, Service>,
    set: &ResourceKey,
    warnings: &mut Vec<ModelWarning>,
) -> Vec<GatewayEndpoint> {
    match egress_gateway(peer, namespace, services) {
        Ok((_, endpoints)) => endpoints,
        Err(message) => {
            warnings.push(ModelWarning {
                resource: set.clone(),
                message,
            });
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use isthmus_federation::exports::NotExportable;
    use isthmus_identity::TrustDomain;
    use isthmus_identity::testing::TestCa;
    use isthmus_proto::federation::{ExportedService, ServicePort};

    use super::*;
    use crate::config::load_text;
    use crate::model::MeshModel;
    use crate::model::federation::local_services;

    fn config(root_pem: &str) -> String {
        let root: String = root_pem.lines().map(|l| format!("    {l}\n")).collect();
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: egress-green, namespace: istio-system}}
spec:
  hosts: [egress-green.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 15443, name: tls}}]
  endpoints: [{{address: 10.0.0.9, ports: {{tls: 15444}}, serviceAccount: egress}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http}}]
  endpoints: [{{address: 10.0.0.1, locality: eu/a}}]
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
  remote: {{addresses: [green.example]}}
  gateways: {{egress: {{name: egress-green}}}}
  security: {{trustDomain: green.local, certificateChain: {{kind: ConfigMap, name: green-root}}}}
---
apiVersion: federation.maistra.io/v1
kind: ImportedServiceSet
metadata: {{name: green, namespace: istio-system}}
spec:
  locality: {{region: green}}
  importRules:
  - type: NameSelector
    importAsLocal: true
    nameSelector: {{namespace: bookinfo, name: reviews, alias: {{namespace: bookinfo, name: reviews}}}}
  - type: NameSelector
    nameSelector: {{namespace: bookinfo, name: ratings}}
"
        )
    }

    fn offered(name: &str) -> ExportedService {
        ExportedService {
            hostname: format!("{name}.bookinfo.svc.red-exports.local"),
            name: name.into(),
            namespace: "bookinfo".into(),
            ports: vec![ServicePort {
                number: 9080,
                name: "http".into(),
                protocol: "HTTP".into(),
            }],
            identities: vec![format!("spiffe://green.local/ns/bookinfo/sa/{name}")],
        }
    }

    #[test]
    fn imported_services_leave_through_the_egress_gateway_and_are_never_exported_onward() {
        let ca = TestCa::new("green.local");
        let snapshot = load_text(&config(&ca.root_pem()), Path::new("t.yaml"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let catalogs: RemoteCatalogs = [(
            "green".to_owned(),
            Arc::new(Catalog::new([
                offered("ratings"),
                offered("reviews"),
                offered("details"),
            ])),
        )]
        .into();
        let model = MeshModel::build_with_imports(
            Arc::new(snapshot),
            &catalogs,
            &TrustDomain::new("red.local").unwrap(),
            "istio-system",
        );
        assert_eq!(model.peers.len(), 1, "{:?}", model.warnings);
        let ratings = model
            .service_of_host("ratings.bookinfo.svc.green-imports.local")
            .unwrap_or_else(|| panic!("{:?}", model.services.keys()));
        assert_eq!(ratings.imported_from.as_deref(), Some("green"));
        assert_eq!(ratings.ports[0].protocol, Protocol::Http);
        let endpoint = &ratings.endpoints[0];
        assert_eq!(
            (endpoint.address.as_str(), endpoint.ports["http"]),
            ("10.0.0.9", 15444),
            "the gateway's address and port"
        );
        assert_eq!(endpoint.locality.region, "green");

        // importAsLocal: the gateway joins the local service as another locality.
        let reviews = model
            .service_of_host("reviews.bookinfo.svc.cluster.local")
            .unwrap();
        let regions: Vec<&str> = reviews
            .endpoints
            .iter()
            .map(|e| e.locality.region.as_str())
            .collect();
        assert_eq!(regions, ["eu", "green"]);

        // Offered but not selected: recorded, not added.
        let fates: Vec<(String, bool)> = model.imports["green"]
            .iter()
            .map(|e| {
                (
                    e.offered.name.clone(),
                    matches!(e.decision, ImportDecision::Imported { .. }),
                )
            })
            .collect();
        assert!(fates.contains(&("details".into(), false)), "{fates:?}");
        assert!(
            model
                .service_of_host("details.bookinfo.svc.green-imports.local")
                .is_none()
        );

        // No transitive federation.
        let local = local_services(&model);
        let ratings = local
            .iter()
            .find(|s| s.host == "ratings.bookinfo.svc.green-imports.local")
            .unwrap();
        assert_eq!(
            ratings.not_exportable,
            Some(NotExportable::ImportedFrom("green".into()))
        );
    }

    #[test]
    fn a_peer_without_a_usable_root_is_left_out_with_the_reason() {
        let ca = TestCa::new("green.local");
        let peer = "ServiceMeshPeer istio-system/green: ignored:";
        for (text, expected) in [
            (
                config(&ca.root_pem())
                    .replace("{name: green-root, namespace", "{name: other, namespace"),
                format!(
                    "{peer} spec.security.certificateChain: no ConfigMap istio-system/green-root"
                ),
            ),
            (
                config("not a certificate"),
                format!(
                    "{peer} ConfigMap istio-system/green-root key root-cert.pem: no PEM CERTIFICATE block found"
                ),
            ),
            (
                config(&ca.root_pem())
                    .replace("trustDomain: green.local", "trustDomain: red.local"),
                format!(
                    "{peer} spec.security.trustDomain red.local is this mesh's own trust domain"
                ),
            ),
        ] {
            let snapshot =
                load_text(&text, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e:?}"));
            let model = MeshModel::build(
                Arc::new(snapshot),
                &TrustDomain::new("red.local").unwrap(),
                "istio-system",
            );
            assert!(model.peers.is_empty());
            let warnings: Vec<String> = model
                .warnings
                .iter()
                .map(|w| format!("{}: {}", w.resource, w.message))
                .collect();
            assert!(warnings.contains(&expected), "{warnings:?}");
            assert!(
                warnings.iter().any(|w| w.starts_with(
                    "ImportedServiceSet istio-system/green: ignored: no usable ServiceMeshPeer"
                )),
                "{warnings:?}"
            );
        }
    }
}
