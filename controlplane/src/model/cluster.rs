//! Services and workloads of the Kubernetes registry ([`crate::config::cluster`]), as Istio
//! builds them:
//!
//! - a `Service` is `<name>.<namespace>.svc.cluster.local`, its cluster IPs the addresses by
//!   which captured traffic is recognised;
//! - a port's protocol is its `appProtocol` (`kubernetes.io/h2c` is HTTP/2), else the prefix
//!   of its name (`http-web` is HTTP), else TCP;
//! - endpoints are the ready addresses of its `EndpointSlice`s; when none is ready, the
//!   serving ones that are terminating (kube-proxy's rule, so a rollout's last pods still
//!   answer); an address in two slices (while the controller moves it) is one endpoint;
//! - an endpoint's identity is its `targetRef` Pod's service account,
//!   `spiffe://<td>/ns/<namespace>/sa/<serviceAccountName>`, and its labels the Pod's; an
//!   address without a Pod has no mesh identity;
//! - a `Pod` with an IP is a workload, named as the Pod (the sidecar's node id names it).

use std::collections::BTreeMap;

use isthmus_api::networking::{Location, Resolution};
use isthmus_identity::{SpiffeId, TrustDomain};

use super::registry::{Endpoint, Locality, Port, Protocol, Service, ServiceKey, ServiceSource};
use super::workload::Workload;
use crate::config::cluster::{ClusterService, ClusterServicePort, ClusterState};

/// Kubernetes' cluster domain, as Istio assumes it.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// Every `Service` of `cluster` as a mesh service.
pub fn services(cluster: &ClusterState, td: &TrustDomain) -> Vec<Service> {
    cluster
        .services
        .values()
        .map(|s| service(s, cluster, td))
        .collect()
}

fn service(s: &ClusterService, cluster: &ClusterState, td: &TrustDomain) -> Service {
    let ports: Vec<Port> = s.ports.iter().map(port).collect();
    let any_ready = s.endpoints.iter().any(|e| e.ready);
    // An address can be in two slices while the controller moves it: it is one endpoint.
    let mut seen = std::collections::HashSet::new();
    let endpoints = s
        .endpoints
        .iter()
        .filter(|e| {
            if any_ready {
                e.ready
            } else {
                e.serving && e.terminating
            }
        })
        .filter(|e| seen.insert(e.address.as_str()))
        .map(|e| {
            let pod = e
                .pod
                .as_ref()
                .and_then(|p| cluster.pods.get(&(s.namespace.clone(), p.clone())));
            Endpoint {
                address: e.address.clone(),
                ports: e.ports.clone(),
                labels: pod.map(|p| p.labels.clone()).unwrap_or_default(),
                locality: Locality {
                    zone: e.zone.clone().unwrap_or_default(),
                    ..Locality::default()
                },
                weight: 1,
                identity: pod
                    .and_then(|p| SpiffeId::workload(td, &p.namespace, &p.service_account).ok()),
                network: None,
                workload_entry: pod.map(|p| p.name.clone()),
                via_peer: None,
            }
        })
        .collect();
    Service {
        key: ServiceKey {
            namespace: s.namespace.clone(),
            hostname: format!("{}.{}.{CLUSTER_DOMAIN}", s.name, s.namespace),
        },
        addresses: s.cluster_ips.clone(),
        ports,
        location: Location::MeshInternal,
        resolution: Resolution::Static,
        endpoints,
        export_to: vec!["*".to_owned()],
        source: ServiceSource::Kubernetes {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            labels: s.labels.clone(),
        },
        imported_from: None,
        remote: None,
        failover: Vec::new(),
    }
}

fn port(p: &ClusterServicePort) -> Port {
    let protocol = p
        .app_protocol
        .as_deref()
        .and_then(app_protocol)
        .or_else(|| Protocol::from_name(p.name.split('-').next().unwrap_or_default()))
        .unwrap_or(Protocol::Tcp);
    Port {
        name: p.name.clone(),
        number: p.port,
        protocol,
        target_port: p.target_port,
    }
}

/// `appProtocol`: Istio's protocol names, and the Kubernetes-defined ones.
fn app_protocol(value: &str) -> Option<Protocol> {
    match value {
        "kubernetes.io/h2c" => Some(Protocol::Http2),
        "kubernetes.io/ws" => Some(Protocol::Http),
        // WebSocket over TLS: the bytes are TLS, carried opaque.
        "kubernetes.io/wss" => Some(Protocol::Https),
        other => Protocol::from_name(other),
    }
}

/// Every `Pod` of `cluster` with an IP, as a workload, by (namespace, name).
pub fn workloads(cluster: &ClusterState, td: &TrustDomain) -> BTreeMap<(String, String), Workload> {
    cluster
        .pods
        .values()
        .filter_map(|p| {
            let identity = SpiffeId::workload(td, &p.namespace, &p.service_account).ok()?;
            Some((
                (p.namespace.clone(), p.name.clone()),
                Workload {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    address: p.ip.clone(),
                    labels: p.labels.clone(),
                    service_account: p.service_account.clone(),
                    identity,
                    locality: Locality::default(),
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::config::cluster::{ClusterEndpoint, ClusterPod};

    fn td() -> TrustDomain {
        TrustDomain::new("green.local").unwrap()
    }

    fn endpoint(address: &str, pod: &str, ready: bool, terminating: bool) -> ClusterEndpoint {
        ClusterEndpoint {
            address: address.into(),
            ports: Arc::new(BTreeMap::from([("http".to_owned(), 8080)])),
            ready,
            serving: ready || terminating,
            terminating,
            pod: Some(pod.into()),
            zone: Some("z1".into()),
        }
    }

    fn cluster(endpoints: Vec<ClusterEndpoint>) -> ClusterState {
        let mut state = ClusterState::default();
        for (name, sa) in [("ratings-1", "ratings"), ("ratings-2", "ratings-old")] {
            state.pods.insert(
                ("bookinfo".into(), name.into()),
                ClusterPod {
                    namespace: "bookinfo".into(),
                    name: name.into(),
                    ip: "10.0.0.1".into(),
                    labels: Arc::new(BTreeMap::from([("app".to_owned(), "ratings".to_owned())])),
                    service_account: sa.into(),
                },
            );
        }
        state.services.insert(
            ("bookinfo".into(), "ratings".into()),
            ClusterService {
                namespace: "bookinfo".into(),
                name: "ratings".into(),
                labels: BTreeMap::new(),
                cluster_ips: vec!["10.96.0.10".into()],
                ports: vec![
                    ClusterServicePort {
                        name: "web".into(),
                        port: 9080,
                        app_protocol: Some("http".into()),
                        target_port: None,
                    },
                    ClusterServicePort {
                        name: "grpc-api".into(),
                        port: 9090,
                        app_protocol: None,
                        target_port: Some(9091),
                    },
                    ClusterServicePort {
                        name: "h2".into(),
                        port: 9000,
                        app_protocol: Some("kubernetes.io/h2c".into()),
                        target_port: None,
                    },
                    ClusterServicePort {
                        name: "db".into(),
                        port: 5432,
                        app_protocol: None,
                        target_port: None,
                    },
                ],
                endpoints,
            },
        );
        state
    }

    #[test]
    fn a_service_is_its_cluster_name_with_protocols_from_app_protocol_or_port_name() {
        let state = cluster(vec![endpoint("10.0.0.1", "ratings-1", true, false)]);
        let services = services(&state, &td());
        let s = &services[0];
        assert_eq!(s.key.hostname, "ratings.bookinfo.svc.cluster.local");
        assert_eq!(s.addresses, vec!["10.96.0.10"]);
        let protocols: Vec<_> = s.ports.iter().map(|p| p.protocol).collect();
        assert_eq!(
            protocols,
            [
                Protocol::Http,
                Protocol::Grpc,
                Protocol::Http2,
                Protocol::Tcp
            ]
        );
        assert_eq!(s.ports[1].target_port, Some(9091));
        assert_eq!(s.to_string_source(), "Service bookinfo/ratings");
    }

    #[test]
    fn endpoints_take_their_identity_and_labels_from_the_target_pod() {
        let mut no_pod = endpoint("10.0.0.9", "gone", true, false);
        no_pod.pod = None;
        let state = cluster(vec![endpoint("10.0.0.1", "ratings-1", true, false), no_pod]);
        let s = &services(&state, &td())[0];
        assert_eq!(
            s.endpoints[0]
                .identity
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("spiffe://green.local/ns/bookinfo/sa/ratings")
        );
        assert_eq!(s.endpoints[0].labels["app"], "ratings");
        assert_eq!(s.endpoints[0].workload_entry.as_deref(), Some("ratings-1"));
        assert_eq!(s.endpoints[0].locality.zone, "z1");
        assert_eq!(s.endpoints[0].ports["http"], 8080);
        assert!(
            s.endpoints[1].identity.is_none(),
            "no Pod, no mesh identity"
        );
    }

    #[test]
    fn ready_endpoints_win_and_terminating_ones_serve_only_when_nothing_is_ready() {
        let state = cluster(vec![
            endpoint("10.0.0.1", "ratings-1", true, false),
            endpoint("10.0.0.2", "ratings-2", false, true),
            endpoint("10.0.0.3", "ratings-2", false, false),
        ]);
        let addresses: Vec<_> = services(&state, &td())[0]
            .endpoints
            .iter()
            .map(|e| e.address.clone())
            .collect();
        assert_eq!(addresses, ["10.0.0.1"]);

        let state = cluster(vec![
            endpoint("10.0.0.2", "ratings-2", false, true),
            endpoint("10.0.0.3", "ratings-2", false, false),
        ]);
        let s = &services(&state, &td())[0];
        let addresses: Vec<_> = s.endpoints.iter().map(|e| e.address.clone()).collect();
        assert_eq!(
            addresses,
            ["10.0.0.2"],
            "serving and terminating, as a last resort"
        );
        assert_eq!(
            s.endpoints[0]
                .identity
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("spiffe://green.local/ns/bookinfo/sa/ratings-old")
        );
    }

    #[test]
    fn pods_are_workloads_named_as_the_pod() {
        let state = cluster(Vec::new());
        let workloads = workloads(&state, &td());
        let w = &workloads[&("bookinfo".to_owned(), "ratings-2".to_owned())];
        assert_eq!(w.address, "10.0.0.1");
        assert_eq!(
            w.identity.to_string(),
            "spiffe://green.local/ns/bookinfo/sa/ratings-old"
        );
    }

    /// The configuration of `yaml` beside the cluster's `ratings` Service (one ready pod).
    fn with_ratings(yaml: &str) -> crate::config::ConfigSnapshot {
        crate::config::load_text(yaml, std::path::Path::new("test.yaml"))
            .unwrap()
            .with_cluster(Arc::new(cluster(vec![endpoint(
                "10.0.0.1",
                "ratings-1",
                true,
                false,
            )])))
    }

    #[test]
    fn service_entries_and_workload_entries_work_beside_kubernetes_services() {
        let snapshot = with_ratings(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger, namespace: bookinfo}
spec:
  hosts: [ledger.example.internal]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: ledger}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ledger-vm, namespace: bookinfo}
spec: {address: 192.0.2.7, labels: {app: ledger}, serviceAccount: ledger}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow, namespace: bookinfo}
spec:
  hosts: [ratings.bookinfo.svc.cluster.local]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 192.0.2.9}]
",
        );
        let (services, warnings) = super::super::registry::build_registry(&snapshot, &td());
        let hosts: Vec<_> = services.keys().map(|k| k.hostname.as_str()).collect();
        assert_eq!(
            hosts,
            [
                "ledger.example.internal",
                "ratings.bookinfo.svc.cluster.local"
            ]
        );
        let ratings = services
            .values()
            .find(|s| s.key.hostname.starts_with("ratings"))
            .unwrap();
        assert_eq!(
            ratings.to_string_source(),
            "Service bookinfo/ratings",
            "the Kubernetes Service wins over a ServiceEntry of the same host"
        );
        assert!(
            warnings.iter().any(|w| w.resource.name == "shadow"),
            "{warnings:?}"
        );

        // From another namespace, a ServiceEntry cannot take a Kubernetes Service's host.
        let foreign = with_ratings(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: takeover, namespace: aaa}
spec:
  hosts: [ratings.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http}]
  endpoints: [{address: 192.0.2.66, serviceAccount: thief}]
",
        );
        let (services, warnings) = super::super::registry::build_registry(&foreign, &td());
        assert_eq!(services.len(), 1, "{services:?}");
        assert_eq!(services.keys().next().unwrap().namespace, "bookinfo");
        assert!(
            warnings
                .iter()
                .any(|w| w.resource.name == "takeover" && w.message.contains("namespace bookinfo")),
            "{warnings:?}"
        );
        let workloads = crate::model::workload::build_workloads(&snapshot, &td());
        assert!(workloads.contains_key(&("bookinfo".to_owned(), "ledger-vm".to_owned())));
        assert!(workloads.contains_key(&("bookinfo".to_owned(), "ratings-1".to_owned())));
    }
}
