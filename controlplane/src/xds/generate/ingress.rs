//! Ingress gateways (`router` nodes whose workload a `Gateway`'s selector picks), in Envoy's
//! terms: one listener per server port, on the workload's address, named as Istio names them
//! (`0.0.0.0_<port>`).
//!
//! - `HTTP` servers share one filter chain and the route configuration `http.<port>`: a
//!   virtual host per host of the bound `VirtualService`s that a server accepts, with the
//!   `VirtualService`'s HTTP routes (or, for `tls.httpsRedirect`, one redirect to `https`).
//! - `HTTPS` servers each get a filter chain matched on their hosts as SNI, terminating TLS
//!   with the server's certificate files (`MUTUAL`: the client's certificate verified against
//!   `caCertificates` and `subjectAltNames`), and the route configuration
//!   `https.<port>.<server>`.
//! - `TLS` servers in `PASSTHROUGH` mode get a filter chain per `tls` route match of a bound
//!   `VirtualService`, matched on its `sniHosts`, proxying the unterminated bytes to the
//!   route's destinations.
//!
//! Requests leave through the same outbound clusters a sidecar of the gateway's namespace has
//! (mTLS to mesh workloads, the egress gateway for imported services): the snapshot adds the
//! workload's outbound view.

use std::collections::{BTreeMap, BTreeSet};

use isthmus_api::gateway::{ServerProtocol, ServerTlsMode, TlsProtocolVersion, split_host};
use isthmus_api::networking::{RouteDestination, TlsRoute};
use isthmus_proto::envoy::envoy::config::core::v3::{
    DataSource, TrafficDirection, TransportSocket, data_source, transport_socket,
};
use isthmus_proto::envoy::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, filter,
};
use isthmus_proto::envoy::envoy::config::route::v3::{
    RedirectAction, Route, RouteConfiguration, RouteMatch, VirtualHost, redirect_action, route,
    route_match,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds, http_connection_manager,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy,
};
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, TlsCertificate,
    TlsParameters, common_tls_context, tls_parameters::TlsProtocol,
};
use isthmus_proto::envoy::google::protobuf::BoolValue;

use super::endpoints::socket;
use super::listeners::{hcm_filter, router, tls_inspector};
use super::routes::{Scope, destination_cluster, http_route};
use super::tls::ads;
use super::tls_origination::san_matcher;
use super::{pack, route_policies, tracing};
use crate::model::ingress::{IngressServer, servers_of};
use crate::model::{MeshModel, Workload};

/// What an ingress gateway serves.
#[derive(Debug, Default)]
pub struct Ingress {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
}

impl Ingress {
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }
}

/// The listeners and routes of the `Gateway` servers `workload` serves.
pub fn ingress(model: &MeshModel, workload: &Workload) -> Ingress {
    let mut by_port: BTreeMap<u32, Vec<IngressServer<'_>>> = BTreeMap::new();
    for server in servers_of(model, workload) {
        // Servers Isthmus cannot serve were refused at validation; skip defensively.
        if server.server.port.server_protocol().is_ok() {
            by_port
                .entry(server.server.port.number)
                .or_default()
                .push(server);
        }
    }
    let tracing = tracing::hcm_tracing(model, workload);
    let mut out = Ingress::default();
    for (port, servers) in by_port {
        let http: Vec<&IngressServer<'_>> = servers
            .iter()
            .filter(|s| s.server.port.server_protocol() == Ok(ServerProtocol::Http))
            .collect();
        let mut chains = Vec::new();
        let mut listener_filters = Vec::new();
        if !http.is_empty() {
            // Servers of other protocols on an HTTP port were refused by validation when in
            // one `Gateway`; across `Gateway`s, HTTP wins the port, as in Istio.
            let name = format!("http.{port}");
            out.routes
                .push(route_configuration(model, workload, port, &name, &http));
            chains.push(FilterChain {
                filters: vec![ingress_hcm(port, &name, tracing.as_ref())],
                ..Default::default()
            });
        } else {
            listener_filters.push(tls_inspector());
            let mut seen: BTreeSet<Vec<String>> = BTreeSet::new();
            for server in &servers {
                match server.server.tls_mode() {
                    Some(ServerTlsMode::Passthrough) => {
                        for (names, filter) in passthrough(model, workload, port, server) {
                            if seen.insert(names.clone()) {
                                chains.push(sni_chain(names, None, filter));
                            }
                        }
                    }
                    Some(mode) => {
                        let names = sni_names(server);
                        if !seen.insert(names.clone()) {
                            continue;
                        }
                        let route_name = format!("https.{port}.{}", server.id());
                        out.routes.push(route_configuration(
                            model,
                            workload,
                            port,
                            &route_name,
                            &[server],
                        ));
                        chains.push(sni_chain(
                            names,
                            Some(terminate(server, mode)),
                            ingress_hcm(port, &route_name, tracing.as_ref()),
                        ));
                    }
                    None => {}
                }
            }
        }
        if chains.is_empty() {
            continue;
        }
        out.listeners.push(Listener {
            name: format!("0.0.0.0_{port}"),
            address: Some(socket(&workload.address, port)),
            listener_filters,
            filter_chains: chains,
            traffic_direction: TrafficDirection::Outbound as i32,
            ..Default::default()
        });
    }
    out
}

/// The SNIs an HTTPS server's chain matches: its hosts' names; none (any SNI, and clients
/// that send none) when one of them is `*`.
fn sni_names(server: &IngressServer<'_>) -> Vec<String> {
    let names: BTreeSet<String> = server
        .server
        .hosts
        .iter()
        .map(|h| split_host(h).1.to_ascii_lowercase())
        .collect();
    if names.contains("*") {
        Vec::new()
    } else {
        names.into_iter().collect()
    }
}

fn sni_chain(names: Vec<String>, tls: Option<TransportSocket>, filter: Filter) -> FilterChain {
    FilterChain {
        filter_chain_match: (!names.is_empty()).then(|| FilterChainMatch {
            server_names: names,
            ..Default::default()
        }),
        transport_socket: tls,
        filters: vec![filter],
        ..Default::default()
    }
}

/// The route configuration `name` of `servers` on `port`: a virtual host per accepted host of
/// each bound `VirtualService` (the first one to claim a host has it).
fn route_configuration(
    model: &MeshModel,
    workload: &Workload,
    port: u32,
    name: &str,
    servers: &[&IngressServer<'_>],
) -> RouteConfiguration {
    let mut virtual_hosts: Vec<VirtualHost> = Vec::new();
    let mut claimed = BTreeSet::new();
    for server in servers {
        let redirect = server.server.tls.as_ref().is_some_and(|t| {
            t.https_redirect && server.server.port.server_protocol() == Ok(ServerProtocol::Http)
        });
        for (_, part, hosts) in server.routes(model) {
            for host in hosts {
                let host = host.to_ascii_lowercase();
                if !claimed.insert(host.clone()) {
                    continue;
                }
                let routes = if redirect {
                    vec![https_redirect()]
                } else {
                    part.http
                        .iter()
                        .flat_map(|r| http_route(model, workload, Scope::new("", port), r))
                        .collect()
                };
                let mut domains = vec![host.clone()];
                if host != "*" {
                    domains.push(format!("{host}:{port}"));
                }
                virtual_hosts.push(VirtualHost {
                    name: format!("{host}:{port}"),
                    domains,
                    routes,
                    ..Default::default()
                });
            }
        }
    }
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts,
        // A destination the gateway has no cluster for answers 503, as on sidecars.
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

/// `tls.httpsRedirect`: every request is sent to `https` with a 301.
fn https_redirect() -> Route {
    Route {
        name: "https-redirect".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Redirect(RedirectAction {
            scheme_rewrite_specifier: Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(
                true,
            )),
            response_code: redirect_action::RedirectResponseCode::MovedPermanently as i32,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The HTTP connection manager of an ingress port: the edge of the mesh, so the caller's
/// address is the remote one (`use_remote_address`), as Istio's gateways set it.
fn ingress_hcm(
    port: u32,
    route_name: &str,
    tracing: Option<&http_connection_manager::Tracing>,
) -> Filter {
    let hcm = HttpConnectionManager {
        stat_prefix: format!("outbound_0.0.0.0_{port}"),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_name.to_owned(),
        })),
        http_filters: route_policies::http_filters()
            .into_iter()
            .chain([router()])
            .collect(),
        use_remote_address: Some(BoolValue { value: true }),
        tracing: tracing.cloned(),
        ..Default::default()
    };
    hcm_filter(&hcm)
}

/// TLS terminated with the server's certificate files; `MUTUAL` verifies the client.
fn terminate(server: &IngressServer<'_>, mode: ServerTlsMode) -> TransportSocket {
    let tls = server.server.tls.clone().unwrap_or_default();
    let file = |path: &Option<String>| DataSource {
        specifier: path.clone().map(data_source::Specifier::Filename),
        ..Default::default()
    };
    let validation = (mode == ServerTlsMode::Mutual).then(|| {
        common_tls_context::ValidationContextType::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(file(&tls.ca_certificates)),
            match_typed_subject_alt_names: tls
                .subject_alt_names
                .iter()
                .map(|san| san_matcher(san))
                .collect(),
            ..Default::default()
        })
    });
    let version = |v: Option<TlsProtocolVersion>| match v {
        None | Some(TlsProtocolVersion::Auto) => TlsProtocol::TlsAuto as i32,
        Some(TlsProtocolVersion::V1_2) => TlsProtocol::TlSv12 as i32,
        Some(TlsProtocolVersion::V1_3) => TlsProtocol::TlSv13 as i32,
    };
    let tls_params = (tls.min_protocol_version.is_some() || tls.max_protocol_version.is_some())
        .then(|| TlsParameters {
            tls_minimum_protocol_version: version(tls.min_protocol_version),
            tls_maximum_protocol_version: version(tls.max_protocol_version),
            ..Default::default()
        });
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![TlsCertificate {
                certificate_chain: Some(file(&tls.server_certificate)),
                private_key: Some(file(&tls.private_key)),
                ..Default::default()
            }],
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            tls_params,
            validation_context_type: validation,
            ..Default::default()
        }),
        require_client_certificate: (mode == ServerTlsMode::Mutual)
            .then_some(BoolValue { value: true }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
    }
}

/// A `PASSTHROUGH` server's chains: for each match of each bound `tls` route that applies on
/// `port`, its SNI hosts (those the server accepts) and a TCP proxy to the route.
fn passthrough(
    model: &MeshModel,
    workload: &Workload,
    port: u32,
    server: &IngressServer<'_>,
) -> Vec<(Vec<String>, Filter)> {
    let mut out = Vec::new();
    for (key, part, _) in server.routes(model) {
        for route in &part.tls {
            let filter = tcp_to(model, port, route);
            for m in &route.matches {
                let applies = m.port.is_none_or(|p| p == port)
                    && m.source_labels
                        .iter()
                        .all(|(k, v)| workload.labels.get(k) == Some(v))
                    && m.source_namespace
                        .as_ref()
                        .is_none_or(|ns| *ns == workload.namespace);
                if !applies {
                    continue;
                }
                let names: BTreeSet<String> = m
                    .sni_hosts
                    .iter()
                    .filter(|sni| {
                        server
                            .server
                            .accepts(server.gateway_namespace, &key.namespace, sni)
                    })
                    .map(|sni| sni.to_ascii_lowercase())
                    .collect();
                if !names.is_empty() {
                    out.push((names.into_iter().collect(), filter.clone()));
                }
            }
        }
    }
    out
}

/// A TCP proxy to a `tls` route's destinations (weighted when several).
fn tcp_to(model: &MeshModel, port: u32, route: &TlsRoute) -> Filter {
    let cluster =
        |d: &RouteDestination| destination_cluster(model, Scope::new("", port), &d.destination);
    let specifier = match route.route.as_slice() {
        [only] => tcp_proxy::ClusterSpecifier::Cluster(cluster(only)),
        many => tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
            clusters: many
                .iter()
                .filter(|d| d.weight.unwrap_or(100) > 0)
                .map(|d| tcp_proxy::weighted_cluster::ClusterWeight {
                    name: cluster(d),
                    weight: d.weight.unwrap_or(100),
                    ..Default::default()
                })
                .collect(),
        }),
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack(&TcpProxy {
            stat_prefix: format!("outbound_0.0.0.0_{port}"),
            cluster_specifier: Some(specifier),
            ..Default::default()
        }))),
    }
}
