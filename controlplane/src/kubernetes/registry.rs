//! Core Kubernetes objects converted into the snapshot's [`ClusterState`]: `Service`s, the
//! endpoints of their `EndpointSlice`s (matched by the `kubernetes.io/service-name` label) and
//! `Pod`s. Only what the mesh uses is kept; an object that cannot be meshed (a UDP-only or
//! `ExternalName` service, a pod without an IP or finished) is left out.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

use crate::config::cluster::{
    ClusterEndpoint, ClusterPod, ClusterService, ClusterServicePort, ClusterState,
};

/// A `Pod` as the reflector stores it: only what makes it a workload is decoded (every other
/// field of the API's `Pod` is skipped while parsing). A cluster's pods are its most numerous
/// objects, and the full type costs kilobytes each even when empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PodSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

/// The part of `spec` the mesh reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// The part of `status` the mesh reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(rename = "podIP", default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
}

impl k8s_openapi::Resource for Pod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for Pod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A TCP port number (1–65535).
fn port_number(n: i32) -> Option<u32> {
    u32::try_from(n).ok().filter(|p| (1..=65535).contains(p))
}

/// The label that ties an `EndpointSlice` to its `Service`.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The cluster registry of these objects.
pub fn cluster_state<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> ClusterState {
    let mut state = ClusterState::default();
    for service in services {
        if let Some(s) = cluster_service(service) {
            state
                .services
                .insert((s.namespace.clone(), s.name.clone()), s);
        }
    }
    // Slices in a stable order (namespace, name), so that endpoint order does not depend on
    // the order events arrived in.
    let mut slices: Vec<&EndpointSlice> = slices.into_iter().collect();
    slices.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    for slice in slices {
        let (Some(namespace), Some(service)) = (
            slice.metadata.namespace.as_ref(),
            slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL)),
        ) else {
            continue;
        };
        if let Some(s) = state
            .services
            .get_mut(&(namespace.clone(), service.clone()))
        {
            s.endpoints.extend(slice_endpoints(slice));
        }
    }
    for pod in pods {
        if let Some(p) = cluster_pod(pod) {
            state.pods.insert((p.namespace.clone(), p.name.clone()), p);
        }
    }
    state
}

/// A `Service` with its TCP ports; `None` for `ExternalName` services and services without a
/// name or namespace.
pub fn cluster_service(service: &Service) -> Option<ClusterService> {
    let namespace = service.metadata.namespace.clone()?;
    let name = service.metadata.name.clone()?;
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let cluster_ips = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| !ip.is_empty() && ip != "None")
        .collect();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some(ClusterServicePort {
                name: p.name.clone().unwrap_or_default(),
                port: port_number(p.port)?,
                app_protocol: p.app_protocol.clone(),
                target_port: match &p.target_port {
                    Some(IntOrString::Int(n)) => port_number(*n),
                    _ => None,
                },
            })
        })
        .collect();
    Some(ClusterService {
        namespace,
        name,
        labels: service.metadata.labels.clone().unwrap_or_default(),
        cluster_ips,
        ports,
        endpoints: Vec::new(),
    })
}

/// Every IP address of a slice, with the slice's TCP ports by name and its conditions.
pub fn slice_endpoints(slice: &EndpointSlice) -> Vec<ClusterEndpoint> {
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return Vec::new();
    }
    // One map for the slice, shared by its endpoints.
    let ports: std::sync::Arc<BTreeMap<String, u32>> = std::sync::Arc::new(
        slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| Some((p.name.clone().unwrap_or_default(), port_number(p.port?)?)))
            .collect(),
    );
    let namespace = slice.metadata.namespace.as_deref();
    let mut out = Vec::new();
    for endpoint in &slice.endpoints {
        let conditions = endpoint.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        let pod = endpoint
            .target_ref
            .as_ref()
            .filter(|r| {
                r.kind.as_deref() == Some("Pod")
                    && r.namespace
                        .as_deref()
                        .is_none_or(|ns| Some(ns) == namespace)
            })
            .and_then(|r| r.name.clone());
        // An address the API server should never hold (it validates them) is left out rather
        // than handed to proxies.
        for address in endpoint
            .addresses
            .iter()
            .filter(|a| a.parse::<IpAddr>().is_ok())
        {
            out.push(ClusterEndpoint {
                address: address.clone(),
                ports: ports.clone(),
                ready,
                serving,
                terminating,
                pod: pod.clone(),
                zone: endpoint.zone.clone(),
            });
        }
    }
    out
}

/// A running `Pod` with an IP.
pub fn cluster_pod(pod: &Pod) -> Option<ClusterPod> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip = status
        .pod_ip
        .clone()
        .filter(|ip| ip.parse::<IpAddr>().is_ok())?;
    Some(ClusterPod {
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone()?,
        ip,
        labels: std::sync::Arc::new(pod.metadata.labels.clone().unwrap_or_default()),
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|sa| !sa.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const SERVICE: &str = "
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  selector: {app: ratings}
  ports:
  - {name: http, port: 9080, targetPort: 8080}
  - {name: grpc, port: 9090, targetPort: grpc, appProtocol: grpc}
  - {name: dns, port: 53, protocol: UDP}
";

    const SLICE: &str = "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ratings-abc
  namespace: bookinfo
  labels: {kubernetes.io/service-name: ratings}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: grpc, port: 9091}]
endpoints:
- addresses: [10.1.0.5]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: ratings-v1-xyz, namespace: bookinfo}
  zone: zone-a
- addresses: [10.1.0.6]
  conditions: {ready: false, serving: true, terminating: true}
";

    const POD: &str = "
apiVersion: v1
kind: Pod
metadata: {name: ratings-v1-xyz, namespace: bookinfo, labels: {app: ratings, version: v1}}
spec:
  serviceAccountName: bookinfo-ratings
  containers: [{name: app, image: ratings}]
status: {phase: Running, podIP: 10.1.0.5}
";

    #[test]
    fn services_slices_and_pods_become_the_cluster_registry() {
        let service: Service = parse(SERVICE);
        let slice: EndpointSlice = parse(SLICE);
        let pod: Pod = parse(POD);
        let state = cluster_state([&service], [&slice], [&pod]);
        let s = &state.services[&("bookinfo".to_owned(), "ratings".to_owned())];
        assert_eq!(s.cluster_ips, ["10.96.0.10"]);
        let ports: Vec<_> = s.ports.iter().map(|p| (p.name.as_str(), p.port)).collect();
        assert_eq!(ports, [("http", 9080), ("grpc", 9090)], "UDP is not meshed");
        assert_eq!(s.ports[0].target_port, Some(8080));
        assert_eq!(
            s.ports[1].target_port, None,
            "a named target port is the slice's"
        );
        assert_eq!(s.ports[1].app_protocol.as_deref(), Some("grpc"));
        assert_eq!(s.endpoints.len(), 2);
        assert_eq!(s.endpoints[0].pod.as_deref(), Some("ratings-v1-xyz"));
        assert_eq!(s.endpoints[0].ports["grpc"], 9091);
        assert_eq!(s.endpoints[0].zone.as_deref(), Some("zone-a"));
        assert!(s.endpoints[1].terminating && s.endpoints[1].serving && !s.endpoints[1].ready);
        let p = &state.pods[&("bookinfo".to_owned(), "ratings-v1-xyz".to_owned())];
        assert_eq!(
            (p.ip.as_str(), p.service_account.as_str()),
            ("10.1.0.5", "bookinfo-ratings")
        );
    }

    #[test]
    fn what_cannot_be_meshed_is_left_out() {
        let external: Service = parse(
            "metadata: {name: db, namespace: shop}\nspec: {type: ExternalName, externalName: db.example.com}",
        );
        assert!(cluster_service(&external).is_none());
        let pending: Pod = parse("metadata: {name: p, namespace: shop}\nstatus: {phase: Pending}");
        assert!(cluster_pod(&pending).is_none(), "no IP yet");
        let done: Pod = parse(
            "metadata: {name: p, namespace: shop}\nstatus: {phase: Succeeded, podIP: 10.0.0.1}",
        );
        assert!(cluster_pod(&done).is_none());
        let defaulted: Pod = parse(
            "metadata: {name: p, namespace: shop}\nstatus: {phase: Running, podIP: 10.0.0.1}",
        );
        assert_eq!(cluster_pod(&defaulted).unwrap().service_account, "default");
        let fqdn: EndpointSlice = parse(
            "metadata: {name: s, namespace: shop, labels: {kubernetes.io/service-name: db}}\naddressType: FQDN\nendpoints: [{addresses: [db.example.com]}]",
        );
        assert!(slice_endpoints(&fqdn).is_empty());
        let odd: EndpointSlice = parse(
            "metadata: {name: s, namespace: shop}\naddressType: IPv4\nports: [{name: http, port: 70000}, {name: ok, port: 80}]\nendpoints: [{addresses: [not-an-ip, 10.0.0.1]}]",
        );
        let endpoints = slice_endpoints(&odd);
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].ports.keys().collect::<Vec<_>>(), ["ok"]);
        let bad_ip: Pod =
            parse("metadata: {name: p, namespace: shop}\nstatus: {phase: Running, podIP: 'x; rm'}");
        assert!(cluster_pod(&bad_ip).is_none());
    }
}
