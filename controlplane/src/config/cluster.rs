//! The Kubernetes service registry's part of a snapshot: `Service`s with the endpoints of
//! their `EndpointSlice`s, and `Pod`s as workloads, already converted from the API's objects
//! (by `crate::kubernetes::registry`) into plain values. The model turns them into services
//! and workloads beside those of `ServiceEntry` and `WorkloadEntry`. Empty in directory mode.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Services and pods of the cluster, by (namespace, name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub services: BTreeMap<(String, String), ClusterService>,
    pub pods: BTreeMap<(String, String), ClusterPod>,
}

impl ClusterState {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.pods.is_empty()
    }
}

/// A core `Service`: `<name>.<namespace>.svc.cluster.local` in the mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterService {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.clusterIPs`; empty for a headless service.
    pub cluster_ips: Vec<String>,
    pub ports: Vec<ClusterServicePort>,
    /// From the service's `EndpointSlice`s, in slice then address order.
    pub endpoints: Vec<ClusterEndpoint>,
}

/// A TCP port of a `Service` (UDP and SCTP ports are not meshed, as in Istio).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterServicePort {
    pub name: String,
    pub port: u32,
    /// `appProtocol`, when set.
    pub app_protocol: Option<String>,
    /// A numeric `targetPort`; a named one is resolved per endpoint by the slices.
    pub target_port: Option<u32>,
}

/// One address of an `EndpointSlice`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterEndpoint {
    pub address: String,
    /// Service port name to the endpoint's port (the slice's ports, one map per slice).
    pub ports: Arc<BTreeMap<String, u32>>,
    /// `conditions.ready` (unset means ready).
    pub ready: bool,
    /// `conditions.serving` (unset: as `ready`).
    pub serving: bool,
    pub terminating: bool,
    /// The `targetRef` Pod's name, when the address is a Pod of the same namespace.
    pub pod: Option<String>,
    /// The endpoint's `zone`.
    pub zone: Option<String>,
}

/// A `Pod` with an IP: a workload of the mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterPod {
    pub namespace: String,
    pub name: String,
    pub ip: String,
    /// Shared with the workload and endpoints the pod becomes.
    pub labels: Arc<BTreeMap<String, String>>,
    /// `spec.serviceAccountName` (`default` when unset).
    pub service_account: String,
}
