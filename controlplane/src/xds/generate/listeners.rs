//! A sidecar's explicit listeners: inbound (one per port of its workload, on the
//! `WorkloadEntry` address, with mTLS per `PeerAuthentication` and RBAC per
//! `AuthorizationPolicy`; HTTP ports route by RDS `inbound|<port>`) and one outbound HTTP
//! listener for its application. `capture.rs` arranges the same chains for iptables capture.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use isthmus_proto::envoy::envoy::config::cluster::v3::{Cluster, cluster};
use isthmus_proto::envoy::envoy::config::core::v3::TrafficDirection;
use isthmus_proto::envoy::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LocalityLbEndpoints,
};
use isthmus_proto::envoy::envoy::config::endpoint::v3::{
    Endpoint as EnvoyEndpoint, LbEndpoint, lb_endpoint,
};
use isthmus_proto::envoy::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use isthmus_proto::envoy::envoy::config::rbac::v3::{Rbac, rbac};
use isthmus_proto::envoy::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use isthmus_proto::envoy::envoy::extensions::filters::http::rbac::v3::{
    Rbac as HttpRbac, RbacPerRoute,
};
use isthmus_proto::envoy::envoy::extensions::filters::http::router::v3::Router;
use isthmus_proto::envoy::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use isthmus_proto::envoy::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use isthmus_proto::envoy::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy,
};
use isthmus_proto::envoy::google::protobuf::{Any, BoolValue};

use super::capture::sni_chain;
use super::clusters::protocol_options;
use super::endpoints::socket;
use super::l4_routes::port_routes;
use super::names::{
    OUTBOUND_LISTENER, OUTBOUND_ROUTE, RBAC_ALLOW_FILTER, RBAC_DENY_FILTER, inbound_cluster,
    inbound_listener, inbound_route,
};
use super::rbac::{Layer, rbac_rules};
use super::tls::{ads, downstream_mtls};
use super::{duration, pack};
use crate::model::{InboundMtls, MeshModel, Protocol, ProxyNode, Workload};

/// A port the workload serves, and how.
struct InboundPort {
    number: u32,
    protocol: Protocol,
    /// The service port's name, for `APP_PORTS`.
    name: String,
}

/// The ports on which services reach `workload`: its endpoint ports in every service of its
/// namespace that selects it. The first service to name a port decides its protocol.
fn inbound_ports(model: &MeshModel, workload: &Workload) -> Vec<InboundPort> {
    let mut ports: BTreeMap<u32, InboundPort> = BTreeMap::new();
    let selecting = model
        .services_of_workload
        .get(&(workload.namespace.clone(), workload.name.clone()))
        .into_iter()
        .flatten()
        .filter_map(|key| model.services.get(key));
    for service in selecting {
        for endpoint in &service.endpoints {
            if endpoint.workload_entry.as_deref() != Some(workload.name.as_str()) {
                continue;
            }
            for port in &service.ports {
                let number = endpoint
                    .ports
                    .get(&port.name)
                    .copied()
                    .unwrap_or(port.number);
                ports.entry(number).or_insert_with(|| InboundPort {
                    number,
                    protocol: port.protocol,
                    name: port.name.clone(),
                });
            }
        }
    }
    ports.into_values().collect()
}

/// What the workload serves on one port: the filter chains (mTLS per `PeerAuthentication`,
/// RBAC, then HTTP or TCP to the application). They become a listener of their own (explicit
/// mode) or chains of the capture listener matched on this destination port.
pub struct InboundChains {
    pub port: u32,
    pub chains: Vec<FilterChain>,
    /// The chains tell TLS from plaintext: the TLS inspector must run.
    pub inspect_tls: bool,
}

/// A workload's inbound side: per-port chains, the clusters to the application, the routes.
pub struct Inbound {
    pub ports: Vec<InboundChains>,
    pub clusters: Vec<Cluster>,
    pub routes: Vec<RouteConfiguration>,
}

/// The TLS inspector listener filter (SNI, ALPN, TLS or not).
pub(super) fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// The TLS inspector for `ports` only: on other ports a connection's first bytes are not
/// awaited (a server-first protocol there would wait for the inspector's timeout).
pub(super) fn tls_inspector_on(ports: &std::collections::BTreeSet<u32>) -> ListenerFilter {
    use isthmus_proto::envoy::envoy::config::listener::v3::ListenerFilterChainMatchPredicate as Predicate;
    use isthmus_proto::envoy::envoy::config::listener::v3::listener_filter_chain_match_predicate::{
        MatchSet, Rule,
    };
    use isthmus_proto::envoy::envoy::r#type::v3::Int32Range;
    let on_port = |port: u32| Predicate {
        rule: Some(Rule::DestinationPortRange(Int32Range {
            start: i32::try_from(port).unwrap_or(i32::MAX),
            end: i32::try_from(port + 1).unwrap_or(i32::MAX),
        })),
    };
    // Envoy's `or_match` takes two rules or more.
    let on_any = match ports.iter().collect::<Vec<_>>().as_slice() {
        [only] => on_port(**only),
        many => Predicate {
            rule: Some(Rule::OrMatch(MatchSet {
                rules: many.iter().map(|p| on_port(**p)).collect(),
            })),
        },
    };
    ListenerFilter {
        filter_disabled: Some(Predicate {
            rule: Some(Rule::NotMatch(Box::new(on_any))),
        }),
        ..tls_inspector()
    }
}

/// Explicit mode: one listener per port, bound on the workload's address.
pub fn inbound_listeners(workload: &Workload, inbound: &Inbound) -> Vec<Listener> {
    inbound
        .ports
        .iter()
        .map(|port| Listener {
            name: inbound_listener(&workload.address, port.port),
            address: Some(socket(&workload.address, port.port)),
            filter_chains: port.chains.clone(),
            listener_filters: if port.inspect_tls {
                vec![tls_inspector()]
            } else {
                Vec::new()
            },
            traffic_direction: TrafficDirection::Inbound as i32,
            ..Default::default()
        })
        .collect()
}

/// The inbound chains of every port of the workload, the clusters to the application behind
/// them, and their routes.
pub fn inbound(model: &MeshModel, node: &ProxyNode, workload: &Workload) -> Inbound {
    let mtls = model.mtls_policy(workload);
    let policies = model.authorization_policies(workload);
    let jwt_rules = model.jwt_rules(workload);
    let issuers: Vec<&str> = jwt_rules.iter().map(|r| r.issuer.as_str()).collect();
    let tracing = super::tracing::hcm_tracing(model, workload);
    let mut ports = Vec::new();
    let mut clusters = Vec::new();
    let mut routes = Vec::new();
    for port in inbound_ports(model, workload) {
        let cluster_name = inbound_cluster(port.number);
        let app_port = node
            .app_ports
            .get(&port.name)
            .or_else(|| node.app_ports.get(&port.number.to_string()))
            .copied()
            .unwrap_or(port.number);
        clusters.push(app_cluster(
            &cluster_name,
            &node.app_address,
            app_port,
            port.protocol,
        ));
        let filters = if port.protocol.is_http() {
            let rules = rbac_rules(&policies, Layer::Http, &issuers);
            routes.push(inbound_routes(port.number, &cluster_name, rules));
            vec![inbound_http(
                port.number,
                tracing.as_ref(),
                super::jwt::jwt_filter(&jwt_rules, &model.jwks),
            )]
        } else {
            let mut filters = network_rbac_filters(
                &rbac_rules(&policies, Layer::Tcp, &issuers),
                &format!("inbound_{}.", port.number),
            );
            filters.push(tcp_proxy(port.number, &cluster_name));
            filters
        };
        let alpn: &[&str] = if port.protocol.is_http() {
            &["h2", "http/1.1"]
        } else {
            &[]
        };
        let tls_chain = || FilterChain {
            name: "mtls".into(),
            filter_chain_match: Some(FilterChainMatch {
                transport_protocol: "tls".into(),
                ..Default::default()
            }),
            filters: filters.clone(),
            transport_socket: Some(downstream_mtls(alpn)),
            ..Default::default()
        };
        let plain_chain = |matching: bool| FilterChain {
            name: "plaintext".into(),
            filter_chain_match: matching.then(|| FilterChainMatch {
                transport_protocol: "raw_buffer".into(),
                ..Default::default()
            }),
            filters: filters.clone(),
            ..Default::default()
        };
        let mode = mtls.for_port(port.number);
        // STRICT has no chain for plaintext: such a connection matches nothing and is closed
        // before a byte reaches the application.
        let filter_chains = match mode {
            InboundMtls::Strict => vec![tls_chain()],
            InboundMtls::Permissive => vec![tls_chain(), plain_chain(true)],
            InboundMtls::Disable => vec![plain_chain(false)],
        };
        ports.push(InboundChains {
            port: port.number,
            chains: filter_chains,
            inspect_tls: mode != InboundMtls::Disable,
        });
    }
    Inbound {
        ports,
        clusters,
        routes,
    }
}

pub(super) fn router() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(
            &Router::default(),
        ))),
        ..Default::default()
    }
}

/// WebSocket upgrades are proxied (as Istio configures every HTTP connection manager).
fn websocket() -> Vec<http_connection_manager::UpgradeConfig> {
    vec![http_connection_manager::UpgradeConfig {
        upgrade_type: "websocket".into(),
        ..Default::default()
    }]
}

pub(super) fn hcm_filter(hcm: &HttpConnectionManager) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack(hcm))),
    }
}

/// The inbound HTTP filters: the JWT filter (with `RequestAuthentication`s), RBAC DENY, RBAC
/// ALLOW, router. The policies themselves live in the inbound route configuration (RDS,
/// per-route config), so a policy change applies to the next request on connections that are
/// already open, without draining listeners.
fn inbound_http(port: u32, tracing: Option<&Tracing>, jwt: Option<HttpFilter>) -> Filter {
    hcm_filter(&HttpConnectionManager {
        stat_prefix: format!("inbound_{port}"),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: inbound_route(port),
        })),
        http_filters: policy_filters(jwt).into_iter().chain([router()]).collect(),
        upgrade_configs: websocket(),
        tracing: tracing.cloned(),
        // The application sees who called it (x-forwarded-client-cert, URI = SPIFFE ID).
        forward_client_cert_details: http_connection_manager::ForwardClientCertDetails::SanitizeSet
            as i32,
        set_current_client_cert_details: Some(
            http_connection_manager::SetCurrentClientCertDetails {
                uri: true,
                ..Default::default()
            },
        ),
        ..Default::default()
    })
}

/// The HTTP filters that enforce a workload's `RequestAuthentication` (`jwt`, when it has
/// one) and `AuthorizationPolicy`s: JWT, then RBAC DENY and ALLOW, empty here and configured
/// per virtual host by [`rbac_per_filter`] (so a policy change needs no listener change).
pub(super) fn policy_filters(jwt: Option<HttpFilter>) -> Vec<HttpFilter> {
    let rbac = |name: &str| HttpFilter {
        name: name.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(
            &HttpRbac::default(),
        ))),
        ..Default::default()
    };
    jwt.into_iter()
        .chain([rbac(RBAC_DENY_FILTER), rbac(RBAC_ALLOW_FILTER)])
        .collect()
}

/// `AuthorizationPolicy` at the connection layer: a network RBAC filter per configuration.
pub(super) fn network_rbac_filters(rules: &[Rbac], stat_prefix: &str) -> Vec<Filter> {
    rules
        .iter()
        .map(|rules| Filter {
            name: "envoy.filters.network.rbac".into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack(&NetworkRbac {
                rules: Some(rules.clone()),
                stat_prefix: stat_prefix.to_owned(),
                ..Default::default()
            }))),
        })
        .collect()
}

/// The per-filter configuration of [`policy_filters`]' RBAC filters for `rules`.
pub(super) fn rbac_per_filter(rules: Vec<Rbac>) -> HashMap<String, Any> {
    let mut per_filter = HashMap::new();
    for rules in rules {
        let filter = if rules.action == rbac::Action::Deny as i32 {
            RBAC_DENY_FILTER
        } else {
            RBAC_ALLOW_FILTER
        };
        let config = RbacPerRoute {
            rbac: Some(HttpRbac {
                rules: Some(rules),
                ..Default::default()
            }),
        };
        per_filter.insert(filter.to_owned(), pack(&config));
    }
    per_filter
}

/// The inbound route configuration of an HTTP port: everything to the application, with the
/// workload's authorization policies.
fn inbound_routes(port: u32, cluster: &str, rules: Vec<Rbac>) -> RouteConfiguration {
    let per_filter = rbac_per_filter(rules);
    let route = Route {
        name: "default".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_owned())),
            timeout: Some(duration(Duration::ZERO)),
            ..Default::default()
        })),
        ..Default::default()
    };
    RouteConfiguration {
        name: inbound_route(port),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{port}"),
            domains: vec!["*".into()],
            routes: vec![route],
            typed_per_filter_config: per_filter,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn tcp_proxy(port: u32, cluster: &str) -> Filter {
    tcp_proxy_to(&format!("inbound_{port}"), cluster)
}

pub(super) fn tcp_proxy_to(stat_prefix: &str, cluster: &str) -> Filter {
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack(&TcpProxy {
            stat_prefix: stat_prefix.to_owned(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned())),
            ..Default::default()
        }))),
    }
}

fn app_cluster(name: &str, address: &str, port: u32, protocol: Protocol) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration(Duration::from_secs(10))),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                        address: Some(socket(address, port)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options: protocol_options(protocol, None),
        ..Default::default()
    }
}

/// The application's HTTP proxy: every visible HTTP service, routed by RDS.
pub fn outbound(node: &ProxyNode, tracing: Option<&Tracing>) -> Listener {
    Listener {
        name: OUTBOUND_LISTENER.into(),
        address: Some(socket(&node.outbound_address, node.outbound_port)),
        filter_chains: vec![FilterChain {
            filters: vec![outbound_http(tracing)],
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// Explicit mode's local ports for TCP services (`OUTBOUND_TCP_PORTS`): each a listener on
/// `OUTBOUND_ADDRESS:<local port>` for the service port, with its L4 routes (`l4_routes.rs`).
pub fn outbound_tcp(model: &MeshModel, node: &ProxyNode, workload: &Workload) -> Vec<Listener> {
    node.outbound_tcp_ports
        .iter()
        .map(|((host, port), local)| {
            let cluster = super::names::outbound_cluster(*port, None, host);
            let service = model.service_of_host(host);
            let service_port = service.and_then(|s| s.ports.iter().find(|p| p.number == *port));
            let (by_sni, default) = match (service, service_port) {
                (Some(service), Some(service_port)) => {
                    let routes = port_routes(model, workload, service, service_port, &cluster);
                    let default = routes.for_service(service);
                    (routes.by_sni, default)
                }
                _ => (Vec::new(), tcp_proxy_to(&cluster, &cluster)),
            };
            let inspects = !by_sni.is_empty();
            let listener_filters = if inspects {
                vec![tls_inspector()]
            } else {
                Vec::new()
            };
            // The chain without a match takes what no SNI chain does.
            let filter_chains = by_sni
                .into_iter()
                .map(|(name, filter)| {
                    sni_chain(
                        format!("{cluster}|sni:{name}"),
                        None,
                        Vec::new(),
                        &name,
                        filter,
                    )
                })
                .chain([FilterChain {
                    name: cluster.clone(),
                    filters: vec![default],
                    ..Default::default()
                }])
                .collect();
            Listener {
                name: format!("outbound_tcp_{local}"),
                address: Some(socket(&node.outbound_address, *local)),
                listener_filters,
                continue_on_listener_filters_timeout: inspects,
                filter_chains,
                traffic_direction: TrafficDirection::Outbound as i32,
                ..Default::default()
            }
        })
        .collect()
}

/// The outbound HTTP connection manager: routes of every visible HTTP service (RDS
/// `outbound`), by authority.
pub(super) fn outbound_http(tracing: Option<&Tracing>) -> Filter {
    let hcm = HttpConnectionManager {
        stat_prefix: "outbound_http".into(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: OUTBOUND_ROUTE.into(),
        })),
        http_filters: super::route_policies::http_filters()
            .into_iter()
            .chain([router()])
            .collect(),
        upgrade_configs: websocket(),
        tracing: tracing.cloned(),
        // Requests in absolute form (`GET http://svc:port/ HTTP/1.1`, as HTTP proxies get).
        http_protocol_options: Some(
            isthmus_proto::envoy::envoy::config::core::v3::Http1ProtocolOptions {
                allow_absolute_url: Some(BoolValue { value: true }),
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    hcm_filter(&hcm)
}
