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
//! With `INTERCEPTION_MODE=REDIRECT` (iptables capture) the same inbound chains and outbound
//! routes sit behind two capture listeners instead (`capture.rs`).
//!
//! Names follow Istio's so that people who read Envoy config dumps of Istio feel at home.

mod capture;
mod clusters;
mod consistent_hash;
mod credentials;
mod dns;
mod endpoints;
#[cfg(test)]
mod gateway_tests;
mod gateways;
mod ingress;
#[cfg(test)]
mod ingress_tests;
mod jwt;
#[cfg(test)]
mod l4_route_tests;
mod l4_routes;
mod listeners;
mod names;
mod proxyless;
mod rbac;
mod rbac_jwt;
mod route_policies;
mod routes;
mod secrets;
mod telemetry;
#[cfg(test)]
mod tests;
mod tls;
mod tls_origination;
mod tracing;
mod visibility;

use isthmus_proto::dns::{NAME_TABLE_RESOURCE, NAME_TABLE_TYPE};
use isthmus_proto::envoy::google::protobuf::{Any, Duration};
use prost::{Message, Name};

use super::resources::{CLUSTER, ENDPOINT, LISTENER, ProxySnapshot, ROUTE, SECRET, TypeResources};
use crate::model::{Interception, MeshModel, NodeError, NodeRole, ProxyNode, Workload};

pub use names::{ROOT_CA_SECRET, WORKLOAD_SECRET, discovery_sni};
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

/// What proxies that look alike get for their outbound traffic: it depends only on the
/// workload's namespace (visibility), labels (`sourceLabels`, failover labels) and locality
/// (endpoint priorities), so it is computed once per [`ViewKey`] and shared.
#[derive(Debug, Clone, Default)]
pub struct OutboundView {
    clusters: TypeResources,
    endpoints: TypeResources,
    routes: TypeResources,
    /// The DNS proxy's name table.
    names: TypeResources,
    /// The `credentialName` secrets the clusters name (the namespace's `Secret`s).
    secrets: TypeResources,
}

/// Workloads with equal keys get the same [`OutboundView`].
pub type ViewKey = (
    String,
    crate::model::registry::Labels,
    crate::model::Locality,
);

pub fn view_key(workload: &Workload) -> ViewKey {
    (
        workload.namespace.clone(),
        workload.labels.clone(),
        workload.locality.clone(),
    )
}

/// The outbound clusters, endpoints and routes of a workload.
pub fn outbound_view(model: &MeshModel, workload: &Workload) -> OutboundView {
    let visible = visibility::visible_services(model, workload);
    let route = routes::outbound_routes(model, workload, &visible);
    let mut clusters = clusters::outbound(model, &visible, &workload.namespace);
    telemetry::label_clusters(model, None, &mut clusters);
    let credential_names = visible
        .iter()
        .filter_map(|s| model.destination_rules.get(&s.key.hostname))
        .flat_map(|(_, rule)| rule.credential_names())
        .cloned()
        .collect();
    let secrets = credentials::secrets(model, &workload.namespace, &credential_names);
    OutboundView {
        clusters: TypeResources::new(clusters.iter().map(|c| (c.name.clone(), pack(c)))),
        endpoints: TypeResources::new(
            endpoints::outbound(model, workload, &visible)
                .iter()
                .map(|e| (e.cluster_name.clone(), pack(e))),
        ),
        routes: TypeResources::new([(route.name.clone(), pack(&route))]),
        names: TypeResources::new([(
            NAME_TABLE_RESOURCE.to_owned(),
            pack(&dns::name_table(&visible)),
        )]),
        secrets: resources_of(&secrets, |s| &s.name),
    }
}

/// Everything `node` should be sent.
pub fn proxy_snapshot(
    model: &MeshModel,
    node: &ProxyNode,
    secrets: &ProxySecrets,
) -> Result<ProxySnapshot, GenerateError> {
    let workload = workload_of(model, node)?;
    let view = outbound_view(model, workload);
    Ok(proxy_snapshot_with_view(
        model, node, workload, &view, secrets,
    ))
}

/// Everything `node` should be sent, given its (shared) outbound view.
pub fn proxy_snapshot_with_view(
    model: &MeshModel,
    node: &ProxyNode,
    workload: &Workload,
    view: &OutboundView,
    secrets: &ProxySecrets,
) -> ProxySnapshot {
    match node.role {
        NodeRole::Router => return gateway_snapshot(model, workload, view, secrets),
        NodeRole::Proxyless => return proxyless::proxyless_snapshot(model, node, workload),
        NodeRole::Sidecar => {}
    }
    let mut inbound = listeners::inbound(model, node, workload);
    telemetry::label_clusters(model, Some(workload), &mut inbound.clusters);
    let hcm_tracing = tracing::hcm_tracing(model, workload);
    let (mut listeners, mut local_clusters) = match node.interception {
        Interception::Explicit => {
            let mut listeners = listeners::inbound_listeners(workload, &inbound);
            listeners.push(listeners::outbound(node, hcm_tracing.as_ref()));
            listeners.extend(listeners::outbound_tcp(model, node, workload));
            (listeners, Vec::new())
        }
        Interception::Redirect => {
            let visible = visibility::visible_services(model, workload);
            let (outbound, passthrough) =
                capture::virtual_outbound(model, node, workload, &visible, hcm_tracing.as_ref());
            // A workload that serves nothing gets no inbound listener (a listener needs a
            // chain): redirected connections are refused by the kernel.
            let inbound = capture::virtual_inbound(&inbound);
            let listeners = if inbound.filter_chains.is_empty() {
                vec![outbound]
            } else {
                vec![inbound, outbound]
            };
            (listeners, vec![passthrough])
        }
    };
    // Traces (issue 19): the collector's cluster, which the HCMs' `tracing` names.
    local_clusters.extend(tracing::otlp_cluster(model));
    telemetry::label_sidecar_listeners(model, workload, &mut listeners);
    let listeners = TypeResources::new(listeners.iter().map(|l| (l.name.clone(), pack(l))));
    let inbound_routes =
        TypeResources::new(inbound.routes.iter().map(|r| (r.name.clone(), pack(r))));
    let inbound_clusters = TypeResources::new(
        inbound
            .clusters
            .iter()
            .chain(&local_clusters)
            .map(|c| (c.name.clone(), pack(c))),
    );
    let secrets = TypeResources::new(secrets.to_envoy().iter().map(|s| (s.name.clone(), pack(s))));
    ProxySnapshot::default()
        .with(LISTENER, listeners)
        .with(
            ROUTE,
            TypeResources::merge(&[&inbound_routes, &view.routes]),
        )
        .with(
            CLUSTER,
            TypeResources::merge(&[&inbound_clusters, &view.clusters]),
        )
        .with(ENDPOINT, view.endpoints.clone())
        .with(SECRET, TypeResources::merge(&[&secrets, &view.secrets]))
        .with(NAME_TABLE_TYPE, view.names.clone())
}

/// A gateway node: the federation gateways its workload is, and the ingress servers of the
/// `Gateway`s that select it (which send requests on through the workload's outbound view).
fn gateway_snapshot(
    model: &MeshModel,
    workload: &Workload,
    view: &OutboundView,
    secrets: &ProxySecrets,
) -> ProxySnapshot {
    let gateway = gateways::gateway(model, workload);
    let mut ingress = ingress::ingress(model, workload);
    telemetry::label_sidecar_listeners(model, workload, &mut ingress.listeners);
    let mut secrets = secrets.to_envoy();
    // A credential the outbound view (a `DestinationRule`) has already is sent once.
    secrets.extend(
        credentials::secrets(model, &workload.namespace, &ingress.credentials)
            .into_iter()
            .filter(|s| ingress.is_empty() || !view.secrets.contains(&s.name)),
    );
    let secrets = resources_of(&secrets, |s| &s.name);
    let listeners = TypeResources::new(
        gateway
            .listeners
            .iter()
            .chain(&ingress.listeners)
            .map(|l| (l.name.clone(), pack(l))),
    );
    let own_clusters =
        TypeResources::new(gateway.clusters.iter().map(|c| (c.name.clone(), pack(c))));
    let ingress_routes =
        TypeResources::new(ingress.routes.iter().map(|r| (r.name.clone(), pack(r))));
    // A federation-only gateway needs none of the mesh's clusters.
    let (clusters, endpoints, secrets) = if ingress.is_empty() {
        (own_clusters, TypeResources::default(), secrets)
    } else {
        (
            TypeResources::merge(&[&own_clusters, &view.clusters]),
            view.endpoints.clone(),
            TypeResources::merge(&[&secrets, &view.secrets]),
        )
    };
    ProxySnapshot::default()
        .with(LISTENER, listeners)
        .with(ROUTE, ingress_routes)
        .with(CLUSTER, clusters)
        .with(ENDPOINT, endpoints)
        .with(SECRET, secrets)
}

/// Named messages as one type's resources.
fn resources_of<M: Message + Name>(messages: &[M], name: impl Fn(&M) -> &String) -> TypeResources {
    TypeResources::new(messages.iter().map(|m| (name(m).clone(), pack(m))))
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
