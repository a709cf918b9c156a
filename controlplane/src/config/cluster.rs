//! The Kubernetes service registry's part of a snapshot: `Service`s with the endpoints of
//! their `EndpointSlice`s, and `Pod`s as workloads, already converted from the API's objects
//! (by `crate::kubernetes::registry`) into plain values. The model turns them into services
//! and workloads beside those of `ServiceEntry` and `WorkloadEntry`. Empty in directory mode.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Services, pods and TLS `Secret`s of the cluster, by (namespace, name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub services: BTreeMap<(String, String), ClusterService>,
    pub pods: BTreeMap<(String, String), ClusterPod>,
    /// `Secret`s with a certificate or roots in them, for `credentialName`.
    pub credentials: BTreeMap<(String, String), Arc<TlsCredential>>,
}

impl ClusterState {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.pods.is_empty() && self.credentials.is_empty()
    }

    /// What `credentialName` names for a proxy in `namespace`: the `Secret`'s certificate
    /// and key, and the roots of the `Secret` `<name>-cacert`, or else its own (Istio's
    /// order: cert-manager writes the issuer's CA into `ca.crt`, which must not replace the
    /// clients' roots given separately).
    pub fn credential(&self, namespace: &str, name: &str) -> Option<TlsCredential> {
        let get = |n: &str| self.credentials.get(&(namespace.to_owned(), n.to_owned()));
        let own = get(name);
        let roots = get(&format!("{name}-cacert"))
            .and_then(|c| c.roots.clone())
            .or_else(|| own.and_then(|c| c.roots.clone()));
        if own.is_none() && roots.is_none() {
            return None;
        }
        Some(TlsCredential {
            certificate_chain: own.and_then(|c| c.certificate_chain.clone()),
            private_key: own.and_then(|c| c.private_key.clone()),
            roots,
        })
    }
}

/// The TLS material of one `Secret` (`kubernetes.io/tls`'s `tls.crt`, `tls.key`, `ca.crt`, or
/// Istio's generic `cert`, `key`, `cacert`), as PEM.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsCredential {
    pub certificate_chain: Option<Vec<u8>>,
    pub private_key: Option<zeroize::Zeroizing<Vec<u8>>>,
    pub roots: Option<Vec<u8>>,
}

/// A private key is never printed (`/debug/config` shows the snapshot).
impl std::fmt::Debug for TlsCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCredential")
            .field(
                "certificate_chain",
                &self.certificate_chain.as_ref().map(Vec::len),
            )
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .field("roots", &self.roots.as_ref().map(Vec::len))
            .finish()
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
