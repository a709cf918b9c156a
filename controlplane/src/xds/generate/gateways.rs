//! Federation gateways (`router` nodes whose workload is an endpoint of a peer's
//! `spec.gateways.egress` or `.ingress` service), in Envoy's terms, so that any Envoy-like
//! proxy can serve them. `docs/federation.md` describes the tunnel.
//!
//! Egress (toward one peer), listener `federation-egress` on the gateway's port:
//! - the TLS inspector reads the SNI of the caller's end-to-end session
//!   (`outbound_.<port>_._.<imported host>`, set by the calling sidecar);
//! - one filter chain per imported service port, matched on that SNI only: a `tcp_proxy` whose
//!   `tunneling_config` opens an HTTP/2 CONNECT stream to `<exported host>:<port>` over mTLS to
//!   the peer's ingress (`remote.addresses:servicePort`, the peer verified against its own root
//!   alone, SNI = the exported host). Anything else finds no chain and is closed.
//! - discovery (SNI `discovery.<peer>.federation.local`) is for this control plane alone: that
//!   chain terminates an outer mTLS session that must present `isthmusd`'s identity, and
//!   tunnels what it carries (the control plane's own session with the peer's).
//!
//! Ingress (from one peer), listener `federation-ingress` on the gateway's port:
//! - one filter chain per peer, matched on the exported hosts as SNI; mTLS verified against
//!   that peer's root alone and limited to its `clientID`;
//! - an HTTP connection manager accepting CONNECT only for `<exported host>:<port>` of what is
//!   exported to that peer, each terminated and sent as TCP to the local service's endpoints
//!   (the workloads' sidecars, which terminate the caller's end-to-end session); any other
//!   authority gets 404 before a byte reaches a workload.

use std::net::IpAddr;
use std::time::Duration;

use isthmus_proto::envoy::envoy::config::cluster::v3::{Cluster, cluster};
use isthmus_proto::envoy::envoy::config::core::v3::TrafficDirection;
use isthmus_proto::envoy::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use isthmus_proto::envoy::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, filter,
};
use isthmus_proto::envoy::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy,
};

use super::clusters::protocol_options;
use super::endpoints::socket;
use super::listeners::{hcm_filter, router, tls_inspector};
use super::names::{
    DISCOVERY_AUTHORITY, FEDERATION_DISCOVERY_CLUSTER, FEDERATION_EGRESS_LISTENER,
    FEDERATION_INGRESS_LISTENER, discovery_sni, federation_egress_cluster,
    federation_ingress_cluster, imported_sni, peer_root_secret,
};
use super::telemetry::{GatewaySide, gateway_metadata, label_gateway_listener};
use super::tls::{downstream_mtls_for, downstream_peer_mtls, upstream_peer_mtls};
use super::{duration, pack};
use crate::model::imports::LOCAL_DOMAIN;
use crate::model::peers::Peer;
use crate::model::{MeshModel, Protocol, Service, Workload};

/// What a gateway node serves: its listeners and clusters.
#[derive(Debug, Default)]
pub struct Gateway {
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
}

/// The port of `service` that `workload` serves on (its first port), if it is an endpoint.
fn gateway_port(service: &Service, workload: &Workload) -> Option<u32> {
    let port = service.ports.first()?;
    service
        .endpoints
        .iter()
        .find(|e| {
            e.workload_entry.as_deref() == Some(workload.name.as_str())
                || (e.workload_entry.is_none() && e.address == workload.address)
        })
        .map(|e| e.port_for(port))
}

fn gateway_service<'m>(model: &'m MeshModel, name: &str) -> Option<&'m Service> {
    model.service_of_host(&format!(
        "{name}.{}.svc.{LOCAL_DOMAIN}",
        model.root_namespace
    ))
}

/// The federation gateway `workload` is, for every peer naming it; empty when it is none.
pub fn gateway(model: &MeshModel, workload: &Workload) -> Gateway {
    let mut out = Gateway::default();
    let mut egress_chains = Vec::new();
    let mut egress_port = None;
    let mut ingress_chains = Vec::new();
    let mut ingress_port = None;
    // The port `workload` serves as the gateway named, if it is one of its endpoints.
    let port_as = |gateway: Option<&str>| {
        gateway
            .and_then(|g| gateway_service(model, g))
            .and_then(|s| gateway_port(s, workload))
    };
    for peer in &model.peers {
        if let Some(port) = port_as(peer.egress_gateway.as_deref()) {
            egress_port.get_or_insert(port);
            egress(model, peer, &mut egress_chains, &mut out.clusters);
        }
        if let Some(port) = port_as(peer.ingress_gateway.as_deref()) {
            ingress_port.get_or_insert(port);
            if let Some(chain) = ingress(model, peer, &mut out.clusters) {
                ingress_chains.push(chain);
            }
        }
    }
    for (name, port, chains) in [
        (FEDERATION_EGRESS_LISTENER, egress_port, egress_chains),
        (FEDERATION_INGRESS_LISTENER, ingress_port, ingress_chains),
    ] {
        // A listener needs a chain: with nothing to carry, nothing listens.
        if let Some(port) = port
            && !chains.is_empty()
        {
            let mut listener = Listener {
                name: name.into(),
                address: Some(socket(&workload.address, port)),
                listener_filters: vec![tls_inspector()],
                filter_chains: chains,
                traffic_direction: TrafficDirection::Outbound as i32,
                ..Default::default()
            };
            let side = if name == FEDERATION_EGRESS_LISTENER {
                GatewaySide::Egress
            } else {
                GatewaySide::Ingress
            };
            label_gateway_listener(model, workload, side, &mut listener);
            out.listeners.push(listener);
        }
    }
    out.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    out.clusters.dedup_by(|a, b| a.name == b.name);
    out
}

/// Egress chains and tunnel clusters for what is imported from `peer`, and for discovery.
fn egress(
    model: &MeshModel,
    peer: &Peer,
    chains: &mut Vec<FilterChain>,
    clusters: &mut Vec<Cluster>,
) {
    // Imported services, and local services the peer's copies join (`importAsLocal`).
    let routed = model.services.values().flat_map(|service| {
        service
            .remote
            .iter()
            .chain(&service.failover)
            .filter(|r| r.peer == peer.name)
            .map(move |r| (service, r))
    });
    for (service, remote) in routed {
        for port in &service.ports {
            let cluster = federation_egress_cluster(&peer.name, port.number, &remote.exported_host);
            chains.push(tunnel_chain(
                &peer.name,
                &imported_sni(port.number, &service.key.hostname),
                &cluster,
                &format!("{}:{}", remote.exported_host, port.number),
            ));
            clusters.push(tunnel_cluster(&cluster, peer, &remote.exported_host));
        }
    }
    // This control plane's discovery stream to the peer's, for this control plane only: its
    // session to the peer is wrapped in an mTLS session with the gateway, which must present
    // the control plane's identity (the end-to-end session inside hides the caller's).
    let Some(control_plane) = &model.control_plane_identity else {
        return;
    };
    let cluster = federation_egress_cluster(&peer.name, peer.discovery_port, DISCOVERY_AUTHORITY);
    let mut chain = tunnel_chain(
        &peer.name,
        &discovery_sni(&peer.name),
        &cluster,
        &format!("{DISCOVERY_AUTHORITY}:{}", peer.discovery_port),
    );
    chain.transport_socket = Some(downstream_mtls_for(&[control_plane.to_string()]));
    chains.push(chain);
    clusters.push(tunnel_cluster(&cluster, peer, DISCOVERY_AUTHORITY));
}

/// A chain for connections whose SNI is `server_name`: tunnelled to `authority` over `cluster`.
fn tunnel_chain(peer: &str, server_name: &str, cluster: &str, authority: &str) -> FilterChain {
    FilterChain {
        name: format!("{peer}|{server_name}"),
        metadata: Some(gateway_metadata(Some(peer), None)),
        filter_chain_match: Some(FilterChainMatch {
            server_names: vec![server_name.to_owned()],
            ..Default::default()
        }),
        filters: vec![Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack(&TcpProxy {
                stat_prefix: cluster.to_owned(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned())),
                tunneling_config: Some(tcp_proxy::TunnelingConfig {
                    hostname: authority.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }))),
        }],
        ..Default::default()
    }
}

/// HTTP/2 over mTLS to the peer's ingress, the peer verified against its own root alone.
fn tunnel_cluster(name: &str, peer: &Peer, sni: &str) -> Cluster {
    let mut c = static_cluster(name, &peer.service_addresses);
    c.metadata = Some(gateway_metadata(Some(&peer.name), Some(sni)));
    c.transport_socket = Some(upstream_peer_mtls(
        sni,
        &peer_root_secret(peer.trust_domain.as_str()),
    ));
    c.typed_extension_protocol_options = protocol_options(Protocol::Http2, None);
    c
}

/// A virtual host accepting CONNECT to `domain`, terminated and sent to `cluster`.
fn connect_host(domain: &str, cluster: &str) -> VirtualHost {
    VirtualHost {
        name: domain.to_owned(),
        domains: vec![domain.to_owned()],
        routes: vec![Route {
            name: "connect".into(),
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::ConnectMatcher(
                    route_match::ConnectMatcher::default(),
                )),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                    cluster.to_owned(),
                )),
                timeout: Some(duration(Duration::ZERO)),
                upgrade_configs: vec![route_action::UpgradeConfig {
                    upgrade_type: "CONNECT".into(),
                    connect_config: Some(route_action::upgrade_config::ConnectConfig::default()),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The ingress chain for `peer`, and the clusters of the local services exported to it.
fn ingress(model: &MeshModel, peer: &Peer, clusters: &mut Vec<Cluster>) -> Option<FilterChain> {
    let exports = crate::model::federation::discovery_exports(model);
    let empty = Default::default();
    let catalog = exports.catalogs.get(&peer.name).unwrap_or(&empty);
    let (offers, _) = crate::model::federation::offers(model);
    let offer = offers
        .get(&peer.name)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let locals = crate::model::federation::local_services(model);
    let mut virtual_hosts = Vec::new();
    let mut server_names = Vec::new();
    for (local, (_, decision)) in locals.iter().zip(offer) {
        let isthmus_federation::exports::ExportDecision::Exported { host, .. } = decision else {
            continue;
        };
        let (Some(service), Some(exported)) =
            (model.service_of_host(&local.host), catalog.get(host))
        else {
            continue;
        };
        server_names.push(host.clone());
        for port in &service.ports {
            let name = federation_ingress_cluster(port.number, &service.key.hostname);
            // Local endpoints only: what leads to a peer never serves a peer (no transit).
            let endpoints: Vec<String> = service
                .endpoints
                .iter()
                .filter(|e| e.via_peer.is_none())
                .map(|e| format!("{}:{}", e.address, e.port_for(port)))
                .collect();
            let mut cluster = static_cluster(&name, &endpoints);
            cluster.metadata = Some(gateway_metadata(None, Some(&service.key.hostname)));
            clusters.push(cluster);
            virtual_hosts.push(connect_host(
                &format!("{}:{}", exported.hostname, port.number),
                &name,
            ));
        }
    }
    // The peer's control plane watching our exports (any port: the name decides; Envoy
    // matches a domain without a port only against an authority without one, so the port
    // wildcard too).
    if let Some(address) = &model.discovery_address {
        server_names.push(DISCOVERY_AUTHORITY.to_owned());
        let mut discovery_host = connect_host(DISCOVERY_AUTHORITY, FEDERATION_DISCOVERY_CLUSTER);
        discovery_host
            .domains
            .push(format!("{DISCOVERY_AUTHORITY}:*"));
        virtual_hosts.push(discovery_host);
        let mut discovery =
            static_cluster(FEDERATION_DISCOVERY_CLUSTER, std::slice::from_ref(address));
        discovery.metadata = Some(gateway_metadata(None, Some(DISCOVERY_AUTHORITY)));
        clusters.push(discovery);
    }
    if server_names.is_empty() {
        return None;
    }
    let client_ids: Vec<String> = peer.client_id.iter().map(ToString::to_string).collect();
    let hcm = HttpConnectionManager {
        stat_prefix: format!("federation_ingress_{}", peer.name),
        codec_type: http_connection_manager::CodecType::Http2 as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            RouteConfiguration {
                name: format!("federation-ingress|{}", peer.name),
                virtual_hosts,
                ..Default::default()
            },
        )),
        http_filters: vec![router()],
        upgrade_configs: vec![http_connection_manager::UpgradeConfig {
            upgrade_type: "CONNECT".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    Some(FilterChain {
        name: format!("federation-ingress|{}", peer.name),
        metadata: Some(gateway_metadata(Some(&peer.name), None)),
        filter_chain_match: Some(FilterChainMatch {
            server_names,
            ..Default::default()
        }),
        filters: vec![hcm_filter(&hcm)],
        transport_socket: Some(downstream_peer_mtls(
            &peer_root_secret(peer.trust_domain.as_str()),
            &client_ids,
        )),
        ..Default::default()
    })
}

/// A cluster of fixed `host:port` endpoints (STRICT_DNS when any host is a name).
fn static_cluster(name: &str, endpoints: &[String]) -> Cluster {
    let parsed: Vec<(&str, u32)> = endpoints
        .iter()
        .filter_map(|e| {
            let (host, port) = e.rsplit_once(':')?;
            Some((
                host.trim_matches(|c| c == '[' || c == ']'),
                port.parse().ok()?,
            ))
        })
        .collect();
    let by_name = parsed.iter().any(|(h, _)| h.parse::<IpAddr>().is_err());
    let kind = if by_name {
        cluster::DiscoveryType::StrictDns
    } else {
        cluster::DiscoveryType::Static
    };
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: Some(duration(Duration::from_secs(10))),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: parsed
                    .iter()
                    .map(|(host, port)| LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                            EnvoyEndpoint {
                                address: Some(socket(host, *port)),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}
