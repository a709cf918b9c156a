//! What a proxyless gRPC client gets: gRPC's own xDS client (grpc-go, grpc-java, grpcio with an
//! `xds:///host:port` target; gRPC proposals A27 and later), as Istio serves it to nodes whose
//! metadata says `GENERATOR: grpc`.
//!
//! - LDS: one API listener per HTTP (and gRPC) port of every visible service, named as the
//!   client's target (`<host>:<port>`, and `<host>` for the service's first HTTP port), whose
//!   connection manager carries its route configuration inline: the virtual host the sidecar
//!   would route that port by (so a `VirtualService`'s matches, weights and retries hold; a
//!   route timeout becomes gRPC's `max_stream_duration`, a zero retry count no retry policy,
//!   both of which gRPC reads differently from Envoy), and the router as the only filter;
//! - CDS: the sidecar's EDS clusters; their mTLS only for a client with gRPC's xDS
//!   credentials (`ISTHMUS_XDS_CREDENTIALS`), rewritten to its certificate provider (gRPC does
//!   not speak SDS), else no transport socket; round robin where the
//!   sidecar would use least request or random (gRPC's core has neither), with circuit
//!   breakers;
//!
//! Services reached only through a peer (imported ones) are left out, and so are endpoints
//! that lead to a peer (`importAsLocal`): their path starts with an mTLS session whose SNI the
//! egress gateway routes by, which a plaintext client cannot open.
//! - EDS: the sidecar's endpoints, each locality weighted by its endpoints' weights (gRPC
//!   drops a locality without a weight; Envoy ignores the weight without locality-weighted
//!   balancing).
//!
//! gRPC subscribes to LDS and CDS resources by name and ignores the others, so every client
//! of a view gets the same resources. No RDS, no SDS.

use isthmus_proto::envoy::envoy::config::cluster::v3::{Cluster, cluster};
use isthmus_proto::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment;
use isthmus_proto::envoy::envoy::config::listener::v3::{ApiListener, Listener};
use isthmus_proto::envoy::envoy::config::route::v3::{
    RouteAction, RouteConfiguration, VirtualHost, route, route_action,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};

use isthmus_proto::envoy::google::protobuf::UInt32Value;

use super::listeners::router;
use super::{clusters, endpoints, pack, resources_of, routes, tls, visibility};
use crate::model::{MeshModel, ProxyNode, Service, Workload};
use crate::xds::resources::{CLUSTER, ENDPOINT, LISTENER, ProxySnapshot, ROUTE, TypeResources};

/// Everything a proxyless gRPC client of `workload` is sent.
pub fn proxyless_snapshot(
    model: &MeshModel,
    node: &ProxyNode,
    workload: &Workload,
) -> ProxySnapshot {
    let local: Vec<Service> = visibility::visible_services(model, workload)
        .into_iter()
        .filter(|s| s.imported_from.is_none())
        .map(|s| Service {
            endpoints: s
                .endpoints
                .iter()
                .filter(|e| e.via_peer.is_none())
                .cloned()
                .collect(),
            failover: Vec::new(),
            ..s.clone()
        })
        .collect();
    let visible: Vec<&Service> = local.iter().collect();
    let mut route = routes::outbound_routes(model, workload, &visible);
    for vh in &mut route.virtual_hosts {
        for r in &mut vh.routes {
            if let Some(route::Action::Route(action)) = &mut r.action {
                for_grpc(action);
            }
        }
    }
    let hosts: Vec<&str> = visible.iter().map(|s| s.key.hostname.as_str()).collect();
    let listeners: Vec<Listener> = route
        .virtual_hosts
        .iter()
        .flat_map(|vh| api_listeners(vh, &hosts))
        .collect();
    let clusters: Vec<Cluster> = clusters::outbound(model, &visible, &workload.namespace)
        .into_iter()
        .filter_map(|c| eds_for_grpc(c, node.xds_credentials))
        .collect();
    let mut endpoints = endpoints::outbound(model, workload, &visible);
    for assignment in &mut endpoints {
        weigh_localities(assignment);
    }
    ProxySnapshot::default()
        .with(LISTENER, resources_of(&listeners, |l| &l.name))
        .with(ROUTE, TypeResources::default())
        .with(CLUSTER, resources_of(&clusters, |c| &c.name))
        .with(ENDPOINT, resources_of(&endpoints, |e| &e.cluster_name))
}

/// The API listeners of one virtual host: its `host:port` name, and the bare host when the
/// virtual host answers to it (the first HTTP port).
fn api_listeners(vh: &VirtualHost, hosts: &[&str]) -> Vec<Listener> {
    let mut names = vec![vh.name.clone()];
    if let Some((host, _port)) = vh.name.rsplit_once(':')
        && hosts.contains(&host)
        && vh.domains.iter().any(|d| d == host)
    {
        names.push(host.to_owned());
    }
    names
        .into_iter()
        .map(|name| {
            let hcm = HttpConnectionManager {
                stat_prefix: name.clone(),
                route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
                    RouteConfiguration {
                        name: name.clone(),
                        virtual_hosts: vec![vh.clone()],
                        ..Default::default()
                    },
                )),
                http_filters: vec![router()],
                ..Default::default()
            };
            Listener {
                name,
                api_listener: Some(ApiListener {
                    api_listener: Some(pack(&hcm)),
                }),
                ..Default::default()
            }
        })
        .collect()
}

/// An EDS cluster as a gRPC client uses it; other kinds (DNS, original destination) and TLS
/// origination to servers outside the mesh are left out, and a route to them fails as to a cluster that does not exist. With xDS credentials,
/// the sidecar's mTLS becomes gRPC's (A29): certificates and roots from the bootstrap's
/// `default` certificate provider, the same peer identities; without, no transport socket.
fn eds_for_grpc(mut c: Cluster, xds_credentials: bool) -> Option<Cluster> {
    let eds = matches!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(t)) if t == cluster::DiscoveryType::Eds as i32
    );
    // TLS origination to a server outside the mesh reads files gRPC cannot be given: such a
    // cluster is left out rather than reached in plaintext.
    let originates = c
        .transport_socket
        .as_ref()
        .is_some_and(|s| !tls::is_mesh_mtls(s));
    if !eds || originates {
        return None;
    }
    c.transport_socket = if xds_credentials {
        c.transport_socket.as_ref().and_then(tls::for_grpc)
    } else {
        None
    };
    c.transport_socket_matches.clear();
    c.typed_extension_protocol_options.clear();
    if c.lb_policy != cluster::LbPolicy::RingHash as i32 {
        c.lb_policy = cluster::LbPolicy::RoundRobin as i32;
        c.lb_config = None;
    }
    Some(c)
}

/// What gRPC reads differently from Envoy in a route: the timeout is `max_stream_duration`
/// (A31: `timeout` is ignored), and a retry policy with no retries is refused (A44) where
/// Envoy reads it as "no retries".
fn for_grpc(action: &mut RouteAction) {
    if let Some(timeout) = action.timeout.filter(|t| t.seconds > 0 || t.nanos > 0) {
        action.max_stream_duration = Some(route_action::MaxStreamDuration {
            max_stream_duration: Some(timeout),
            ..Default::default()
        });
    }
    if action
        .retry_policy
        .as_ref()
        .is_some_and(|p| p.num_retries.is_some_and(|n| n.value == 0))
    {
        action.retry_policy = None;
    }
}

/// Gives every locality without a weight the sum of its endpoints' weights (1 each unless
/// set).
fn weigh_localities(assignment: &mut ClusterLoadAssignment) {
    for locality in &mut assignment.endpoints {
        if locality.load_balancing_weight.is_some() {
            continue;
        }
        let weight: u32 = locality
            .lb_endpoints
            .iter()
            .map(|e| e.load_balancing_weight.map_or(1, |w| w.value.max(1)))
            .fold(0u32, u32::saturating_add);
        if weight > 0 {
            locality.load_balancing_weight = Some(UInt32Value { value: weight });
        }
    }
}
