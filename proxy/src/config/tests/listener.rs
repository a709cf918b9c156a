//! `Listener` -> `Listener`.

use std::time::Duration;

use isthmus_proto::envoy::envoy::config::core::v3::HeaderValueOption;
use isthmus_proto::envoy::envoy::config::core::v3::{
    Address, SocketAddress, address, socket_address,
};
use isthmus_proto::envoy::envoy::config::listener::v3::{
    Filter, FilterChain as EnvoyChain, FilterChainMatch, Listener as EnvoyListener, ListenerFilter,
    filter, listener_filter,
};
use isthmus_proto::envoy::envoy::config::route::v3::RouteConfiguration;
use isthmus_proto::envoy::envoy::extensions::filters::http::router::v3::Router;
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy as EnvoyTcpProxy, tcp_proxy,
};
use isthmus_proto::envoy::google::protobuf::{Any, BoolValue, UInt32Value};

use super::{Expect, Table, ads, not_ads, pack, run};
use crate::config::listener::{
    ChainMatch, Codec, Direction, FilterChain, ForwardClientCert, HttpManager, Listener,
    RouteSource, TcpProxy, Terminal, convert,
};

/// A path inside the first chain's HTTP connection manager.
macro_rules! hcm {
    ($rest:literal) => {
        concat!(
            "filter_chains[0].filters[0].typed_config(HttpConnectionManager).",
            $rest
        )
    };
}

/// A path inside the first chain's TCP proxy.
macro_rules! tcp {
    ($rest:literal) => {
        concat!("filter_chains[0].filters[0].typed_config(TcpProxy).", $rest)
    };
}

fn address(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    })
}

fn router() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(
            &Router::default(),
        ))),
        ..HttpFilter::default()
    }
}

fn hcm() -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: "in".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: ads(),
            route_config_name: "r".into(),
        })),
        http_filters: vec![router()],
        ..HttpConnectionManager::default()
    }
}

fn tcp(cluster: &str) -> EnvoyTcpProxy {
    EnvoyTcpProxy {
        stat_prefix: "tcp".into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..EnvoyTcpProxy::default()
    }
}

fn tunnelling(hostname: &str) -> EnvoyTcpProxy {
    EnvoyTcpProxy {
        tunneling_config: Some(tcp_proxy::TunnelingConfig {
            hostname: hostname.into(),
            ..tcp_proxy::TunnelingConfig::default()
        }),
        ..tcp("peer")
    }
}

fn chain_of(terminal: Any) -> EnvoyChain {
    EnvoyChain {
        filters: vec![Filter {
            name: String::new(),
            config_type: Some(filter::ConfigType::TypedConfig(terminal)),
        }],
        ..EnvoyChain::default()
    }
}

fn listener(chains: Vec<EnvoyChain>) -> EnvoyListener {
    EnvoyListener {
        name: "l".into(),
        address: address("127.0.0.1", 15001),
        filter_chains: chains,
        ..EnvoyListener::default()
    }
}

fn http(manager: HttpConnectionManager) -> EnvoyListener {
    listener(vec![chain_of(pack(&manager))])
}

fn tcp_listener(proxy: EnvoyTcpProxy) -> EnvoyListener {
    listener(vec![chain_of(pack(&proxy))])
}

fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector".into(),
            value: Vec::new(),
        })),
        ..ListenerFilter::default()
    }
}

fn by_sni(inspector: bool) -> EnvoyListener {
    EnvoyListener {
        listener_filters: if inspector {
            vec![tls_inspector()]
        } else {
            vec![]
        },
        filter_chains: vec![EnvoyChain {
            filter_chain_match: Some(FilterChainMatch {
                server_names: vec!["Reviews.Local".into()],
                destination_port: Some(UInt32Value { value: 9080 }),
                ..FilterChainMatch::default()
            }),
            ..chain_of(pack(&tcp("reviews")))
        }],
        ..listener(vec![])
    }
}

fn terminal(l: &Listener) -> &Terminal {
    &l.chains[0].terminal
}

fn tcp_of(l: &Listener) -> &TcpProxy {
    match terminal(l) {
        Terminal::Tcp(t) => t,
        Terminal::Http(_) => panic!("not a TCP proxy"),
    }
}

#[test]
fn listeners_convert_to_their_model() {
    let table: Table<EnvoyListener, Listener> = vec![
        (
            "an HTTP listener with its routes over RDS",
            http(hcm()),
            Expect::Model(Listener {
                telemetry: None,
                name: "l".into(),
                address: "127.0.0.1:15001".parse().unwrap(),
                direction: Direction::Unspecified,
                tls_inspector: false,
                tls_inspector_disabled: None,
                original_dst: false,
                chains: vec![FilterChain {
                    peer: None,
                    name: String::new(),
                    matcher: ChainMatch::default(),
                    tls: None,
                    rbac: vec![],
                    terminal: Terminal::Http(Box::new(HttpManager {
                        jwt: None,
                        cors_filter: false,
                        fault_filter: false,
                        stat_prefix: "in".into(),
                        codec: Codec::Auto,
                        routes: RouteSource::Rds("r".into()),
                        rbac: vec![],
                        forward_client_cert: ForwardClientCert::Sanitize,
                        set_client_cert_uri: false,
                        use_remote_address: false,
                        strip_any_host_port: false,
                        allow_absolute_url: false,
                        upgrades: vec![],
                        allow_connect: false,
                        stream_idle_timeout: None,
                        request_timeout: None,
                        tracing: None,
                    })),
                }],
                default_chain: None,
            }),
        ),
        (
            "upgrades: websocket proxied, CONNECT routed",
            http(HttpConnectionManager {
                upgrade_configs: vec![
                    http_connection_manager::UpgradeConfig {
                        upgrade_type: "WebSocket".into(),
                        ..Default::default()
                    },
                    http_connection_manager::UpgradeConfig {
                        upgrade_type: "CONNECT".into(),
                        ..Default::default()
                    },
                    http_connection_manager::UpgradeConfig {
                        upgrade_type: "h2c".into(),
                        enabled: Some(BoolValue { value: false }),
                        ..Default::default()
                    },
                ],
                ..hcm()
            }),
            Expect::Holds(|l| match terminal(l) {
                Terminal::Http(h) => h.upgrades == ["websocket"] && h.allow_connect,
                Terminal::Tcp(_) => false,
            }),
        ),
        (
            "a TCP proxy with Envoy's default idle timeout",
            tcp_listener(tcp("db")),
            Expect::Holds(|l| {
                tcp_of(l)
                    == &TcpProxy {
                        stat_prefix: "tcp".into(),
                        clusters: vec![("db".into(), 1)],
                        idle_timeout: Some(Duration::from_secs(3600)),
                        tunnel: None,
                    }
            }),
        ),
        (
            "a TCP proxy through a CONNECT tunnel to an authority",
            tcp_listener(tunnelling("outbound_.15443_._.ingress.green.mesh:15443")),
            Expect::Holds(|l| {
                tcp_of(l).tunnel.as_deref() == Some("outbound_.15443_._.ingress.green.mesh:15443")
            }),
        ),
        (
            "chains by SNI and port, with the TLS inspector",
            by_sni(true),
            Expect::Holds(|l| {
                l.tls_inspector
                    && l.chains[0].matcher.server_names == ["reviews.local"]
                    && l.chains[0].matcher.destination_port == Some(9080)
            }),
        ),
        (
            "a TLS inspector disabled except on two ports",
            inspector_disabled(not_match(or_match(vec![port(443), port(8443)]))),
            Expect::Holds(|l| {
                let off = l.tls_inspector_disabled.as_ref().unwrap();
                l.tls_inspector && !off.matches(443) && !off.matches(8443) && off.matches(3306)
            }),
        ),
        (
            "a TLS inspector disabled on a port range, and on any port",
            inspector_disabled(and_match(vec![
                range(1000, 2000),
                Predicate {
                    rule: Some(Rule::AnyMatch(true)),
                },
            ])),
            Expect::Holds(|l| {
                let off = l.tls_inspector_disabled.as_ref().unwrap();
                off.matches(1000) && off.matches(1999) && !off.matches(2000) && !off.matches(999)
            }),
        ),
    ];
    run(table, convert);
}

type Predicate =
    isthmus_proto::envoy::envoy::config::listener::v3::ListenerFilterChainMatchPredicate;
use isthmus_proto::envoy::envoy::config::listener::v3::listener_filter_chain_match_predicate::{
    MatchSet, Rule,
};

fn range(start: i32, end: i32) -> Predicate {
    Predicate {
        rule: Some(Rule::DestinationPortRange(
            isthmus_proto::envoy::envoy::r#type::v3::Int32Range { start, end },
        )),
    }
}

fn port(p: i32) -> Predicate {
    range(p, p + 1)
}

fn not_match(p: Predicate) -> Predicate {
    Predicate {
        rule: Some(Rule::NotMatch(Box::new(p))),
    }
}

fn or_match(rules: Vec<Predicate>) -> Predicate {
    Predicate {
        rule: Some(Rule::OrMatch(MatchSet { rules })),
    }
}

fn and_match(rules: Vec<Predicate>) -> Predicate {
    Predicate {
        rule: Some(Rule::AndMatch(MatchSet { rules })),
    }
}

/// [`by_sni`] with its TLS inspector disabled where `predicate` holds.
fn inspector_disabled(predicate: Predicate) -> EnvoyListener {
    let mut l = by_sni(true);
    l.listener_filters[0].filter_disabled = Some(predicate);
    l
}

/// `n` nested `not_match`es around one port.
fn nested(n: usize) -> Predicate {
    (0..n).fold(port(443), |p, _| not_match(p))
}

#[test]
fn listeners_outside_the_profile_are_rejected_at_their_path() {
    let table: Table<EnvoyListener, Listener> = vec![
        (
            "a filter_disabled without a rule",
            inspector_disabled(Predicate { rule: None }),
            Expect::Rejected("listener_filters[0].filter_disabled.rule"),
        ),
        (
            "an or_match of one rule",
            inspector_disabled(or_match(vec![port(443)])),
            Expect::Rejected("listener_filters[0].filter_disabled.or_match.rules"),
        ),
        (
            "an empty port range",
            inspector_disabled(range(443, 443)),
            Expect::Rejected("listener_filters[0].filter_disabled.destination_port_range.end"),
        ),
        (
            "a port range from a negative port",
            inspector_disabled(range(-1, 443)),
            Expect::Rejected("listener_filters[0].filter_disabled.destination_port_range.start"),
        ),
        (
            "any_match false",
            inspector_disabled(Predicate {
                rule: Some(Rule::AnyMatch(false)),
            }),
            Expect::Rejected("listener_filters[0].filter_disabled.any_match"),
        ),
        (
            "a predicate nested too deep",
            inspector_disabled(nested(40)),
            // Refused at level 16 (the root is level 0).
            Expect::Rejected(Box::leak(
                format!(
                    "listener_filters[0].filter_disabled{}",
                    ".not_match".repeat(16)
                )
                .into_boxed_str(),
            )),
        ),
        (
            "a tunnel hostname with a format operator",
            tcp_listener(tunnelling("%REQUESTED_SERVER_NAME%:443")),
            Expect::Rejected(tcp!("tunneling_config.hostname")),
        ),
        (
            "a tunnel hostname that is not an authority",
            tcp_listener(tunnelling("two words:443")),
            Expect::Rejected(tcp!("tunneling_config.hostname")),
        ),
        (
            "a tunnel hostname without a port",
            tcp_listener(tunnelling("ingress.green.mesh")),
            Expect::Rejected(tcp!("tunneling_config.hostname")),
        ),
        (
            "an inline route configuration with a bad header name",
            http(HttpConnectionManager {
                route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
                    RouteConfiguration {
                        name: "inline".into(),
                        request_headers_to_add: vec![HeaderValueOption {
                            header: Some(
                                isthmus_proto::envoy::envoy::config::core::v3::HeaderValue {
                                    key: "bad\u{0}name".into(),
                                    value: "v".into(),
                                    raw_value: Vec::new(),
                                },
                            ),
                            ..HeaderValueOption::default()
                        }],
                        ..RouteConfiguration::default()
                    },
                )),
                ..hcm()
            }),
            Expect::Rejected(hcm!("route_config.request_headers_to_add[0].header.key")),
        ),
        (
            "RDS not over ADS",
            http(HttpConnectionManager {
                route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                    config_source: not_ads(),
                    route_config_name: "r".into(),
                })),
                ..hcm()
            }),
            Expect::Rejected(hcm!("rds.config_source.config_source_specifier")),
        ),
        (
            "no router filter",
            http(HttpConnectionManager {
                http_filters: vec![],
                ..hcm()
            }),
            Expect::Rejected(hcm!("http_filters")),
        ),
        (
            "HTTP/3",
            http(HttpConnectionManager {
                codec_type: http_connection_manager::CodecType::Http3 as i32,
                ..hcm()
            }),
            Expect::Rejected(hcm!("codec_type")),
        ),
        (
            "an upgrade without a type",
            http(HttpConnectionManager {
                upgrade_configs: vec![http_connection_manager::UpgradeConfig::default()],
                ..hcm()
            }),
            Expect::Rejected(hcm!("upgrade_configs[0].upgrade_type")),
        ),
        (
            "a TCP proxy cluster of weight zero",
            tcp_listener(EnvoyTcpProxy {
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::WeightedClusters(
                    tcp_proxy::WeightedCluster {
                        clusters: vec![tcp_proxy::weighted_cluster::ClusterWeight {
                            name: "a".into(),
                            weight: 0,
                            ..Default::default()
                        }],
                    },
                )),
                ..tcp("unused")
            }),
            Expect::Rejected(tcp!("weighted_clusters.clusters[0]")),
        ),
        (
            "SNI chains without the TLS inspector",
            by_sni(false),
            Expect::Rejected("listener_filters"),
        ),
        (
            "a port over 65535 in a chain match",
            EnvoyListener {
                filter_chains: vec![EnvoyChain {
                    filter_chain_match: Some(FilterChainMatch {
                        destination_port: Some(UInt32Value { value: 70_000 }),
                        ..FilterChainMatch::default()
                    }),
                    ..chain_of(pack(&tcp("a")))
                }],
                ..listener(vec![])
            },
            Expect::Rejected("filter_chains[0].filter_chain_match.destination_port"),
        ),
        (
            "no filter chain",
            listener(vec![]),
            Expect::Rejected("filter_chains"),
        ),
        (
            "a listener address that is not an IP",
            EnvoyListener {
                address: address("localhost", 15001),
                ..http(hcm())
            },
            Expect::Rejected("address.socket_address.address"),
        ),
        (
            "a listener that does not bind",
            EnvoyListener {
                bind_to_port: Some(BoolValue { value: false }),
                ..http(hcm())
            },
            Expect::Rejected("bind_to_port"),
        ),
        (
            "a field outside the profile",
            EnvoyListener {
                transparent: Some(BoolValue { value: true }),
                ..http(hcm())
            },
            Expect::Rejected("transparent"),
        ),
        (
            "a listener without a name",
            EnvoyListener {
                name: String::new(),
                ..http(hcm())
            },
            Expect::Rejected("name"),
        ),
    ];
    run(table, convert);
}
