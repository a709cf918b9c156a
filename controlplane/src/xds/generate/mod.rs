//! The pure function from the mesh model and one proxy to that proxy's xDS resources:
//! listeners, routes, clusters, endpoints and secrets, scoped to what the proxy needs.
//!
//! The shape of a sidecar (local mode, explicit listeners):
//! - one inbound listener per port of its workload, on the `WorkloadEntry` address, enforcing
//!   the workload's `PeerAuthentication` and `AuthorizationPolicy`, to the application;
//! - one outbound HTTP listener (the application's HTTP proxy) whose routes (RDS `outbound`)
//!   are the visible services' virtual hosts and `VirtualService` routes;
//! - clusters `outbound|<port>|<subset>|<host>` with their `DestinationRule` policy, mTLS to
//!   the endpoints' SPIFFE identities, endpoints by EDS;
//! - secrets `default` (its certificate) and `ROOTCA` (one trust bundle per trust domain).
//!
//! Names follow Istio's so that people who read Envoy config dumps of Istio feel at home.

mod clusters;
mod endpoints;
mod listeners;
mod names;
mod rbac;
mod routes;
mod secrets;
#[cfg(test)]
mod tests;
mod tls;
mod visibility;

use isthmus_api::envoy::google::protobuf::{Any, Duration};
use prost::{Message, Name};

use super::resources::{CLUSTER, ENDPOINT, LISTENER, ProxySnapshot, ROUTE, SECRET, TypeResources};
use crate::model::{MeshModel, NodeError, ProxyNode, Workload};

pub use names::{ROOT_CA_SECRET, WORKLOAD_SECRET};
pub use secrets::ProxySecrets;

/// Why a proxy gets no configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(
        "node {node}: no WorkloadEntry {namespace}/{workload} (with an address) in the configuration"
    )]
    UnknownWorkload {
        node: String,
        namespace: String,
        workload: String,
    },
}

/// Finds the workload a proxy speaks for.
pub fn workload_of<'m>(
    model: &'m MeshModel,
    node: &ProxyNode,
) -> Result<&'m Workload, GenerateError> {
    model
        .workloads
        .get(&(node.namespace.clone(), node.workload.clone()))
        .ok_or_else(|| GenerateError::UnknownWorkload {
            node: node.id.clone(),
            namespace: node.namespace.clone(),
            workload: node.workload.clone(),
        })
}

/// Everything `node` should be sent.
pub fn proxy_snapshot(
    model: &MeshModel,
    node: &ProxyNode,
    secrets: &ProxySecrets,
) -> Result<ProxySnapshot, GenerateError> {
    let workload = workload_of(model, node)?;
    let visible = visibility::visible_services(model, workload);
    let (inbound_listeners, inbound_clusters, inbound_routes) =
        listeners::inbound(model, node, workload);
    let outbound_listener = listeners::outbound(node);
    let route = routes::outbound_routes(model, workload, &visible);
    let clusters = clusters::outbound(model, &visible);
    let endpoints = endpoints::outbound(model, workload, &visible);
    let named = |items: Vec<(String, Any)>| TypeResources::new(items);
    Ok(ProxySnapshot::default()
        .with(
            LISTENER,
            named(
                inbound_listeners
                    .into_iter()
                    .chain([outbound_listener])
                    .map(|l| (l.name.clone(), pack(&l)))
                    .collect(),
            ),
        )
        .with(
            ROUTE,
            named(
                inbound_routes
                    .iter()
                    .chain([&route])
                    .map(|r| (r.name.clone(), pack(r)))
                    .collect(),
            ),
        )
        .with(
            CLUSTER,
            named(
                inbound_clusters
                    .iter()
                    .chain(clusters.iter())
                    .map(|c| (c.name.clone(), pack(c)))
                    .collect(),
            ),
        )
        .with(
            ENDPOINT,
            named(
                endpoints
                    .iter()
                    .map(|e| (e.cluster_name.clone(), pack(e)))
                    .collect(),
            ),
        )
        .with(
            SECRET,
            named(
                secrets
                    .to_envoy(model)
                    .iter()
                    .map(|s| (s.name.clone(), pack(s)))
                    .collect(),
            ),
        ))
}

/// A message as `Any`, with its type URL.
pub(crate) fn pack<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

pub(crate) fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
