//! `Cluster` -> `Cluster`.

use std::collections::HashMap;
use std::time::Duration;

use isthmus_proto::envoy::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster as EnvoyCluster, OutlierDetection, circuit_breakers, cluster,
};
use isthmus_proto::envoy::envoy::config::core::v3::{
    Address, Http2ProtocolOptions, SocketAddress, TransportSocket, address, socket_address,
    transport_socket,
};
use isthmus_proto::envoy::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use isthmus_proto::envoy::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use isthmus_proto::envoy::envoy::r#type::v3::Percent;
use isthmus_proto::envoy::google::protobuf::{DoubleValue, UInt32Value};

use super::{Expect, Table, ads, not_ads, pack, run};
use crate::config::cluster::{
    Cluster, Discovery, HttpVersion, LbPolicy, Limits, Outlier, RetryBudget, UpstreamProtocol,
    convert,
};

fn of_type(t: cluster::DiscoveryType) -> Option<cluster::ClusterDiscoveryType> {
    Some(cluster::ClusterDiscoveryType::Type(t as i32))
}

fn eds(name: &str) -> EnvoyCluster {
    EnvoyCluster {
        name: name.into(),
        cluster_discovery_type: of_type(cluster::DiscoveryType::Eds),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: ads(),
            service_name: String::new(),
        }),
        ..EnvoyCluster::default()
    }
}

fn assignment(host: &str) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: "s".into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: host.into(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(8080)),
                            ..SocketAddress::default()
                        })),
                    }),
                    ..EnvoyEndpoint::default()
                })),
                ..LbEndpoint::default()
            }],
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    }
}

fn with_endpoints(t: cluster::DiscoveryType, host: &str) -> EnvoyCluster {
    EnvoyCluster {
        name: "s".into(),
        cluster_discovery_type: of_type(t),
        load_assignment: Some(assignment(host)),
        ..EnvoyCluster::default()
    }
}

fn http2() -> HashMap<String, isthmus_proto::envoy::google::protobuf::Any> {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions {
                                max_concurrent_streams: Some(UInt32Value { value: 100 }),
                                ..Http2ProtocolOptions::default()
                            },
                        ),
                    ),
                },
            ),
        ),
        ..HttpProtocolOptions::default()
    };
    HashMap::from([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        pack(&options),
    )])
}

fn tls(sni: &str) -> Option<TransportSocket> {
    Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(
            &UpstreamTlsContext {
                sni: sni.into(),
                common_tls_context: Some(Default::default()),
                ..UpstreamTlsContext::default()
            },
        ))),
    })
}

fn thresholds(t: circuit_breakers::Thresholds) -> Option<CircuitBreakers> {
    Some(CircuitBreakers {
        thresholds: vec![t],
        ..CircuitBreakers::default()
    })
}

#[test]
fn clusters_convert_to_their_model() {
    let table: Table<EnvoyCluster, Cluster> = vec![
        (
            "an EDS cluster with Envoy's defaults",
            eds("outbound|9080||reviews"),
            Expect::Model(Cluster {
                keepalive: None,
                telemetry: Default::default(),
                name: "outbound|9080||reviews".into(),
                discovery: Discovery::Eds {
                    service_name: "outbound|9080||reviews".into(),
                },
                connect_timeout: Duration::from_secs(5),
                lb: LbPolicy::RoundRobin,
                limits: Limits::default(),
                outlier: None,
                panic_threshold: 50.0,
                locality_weighted: false,
                protocol: UpstreamProtocol {
                    http: None,
                    idle_timeout: None,
                    max_requests_per_connection: None,
                    max_concurrent_streams: None,
                },
                tls: None,
            }),
        ),
        (
            "a static cluster of IP addresses",
            with_endpoints(cluster::DiscoveryType::Static, "10.0.0.1"),
            Expect::Holds(
                |c| matches!(&c.discovery, Discovery::Static(a) if a.groups[0].endpoints[0].host == "10.0.0.1"),
            ),
        ),
        (
            "a strict DNS cluster of names",
            with_endpoints(cluster::DiscoveryType::StrictDns, "db.example"),
            Expect::Holds(|c| matches!(&c.discovery, Discovery::Dns { strict: true, .. })),
        ),
        (
            "an ORIGINAL_DST cluster",
            EnvoyCluster {
                name: "PassthroughCluster".into(),
                cluster_discovery_type: of_type(cluster::DiscoveryType::OriginalDst),
                lb_policy: cluster::LbPolicy::ClusterProvided as i32,
                ..EnvoyCluster::default()
            },
            Expect::Holds(|c| c.discovery == Discovery::OriginalDst),
        ),
        (
            "HTTP/2 upstream, least request, TLS with SNI",
            EnvoyCluster {
                lb_policy: cluster::LbPolicy::LeastRequest as i32,
                typed_extension_protocol_options: http2(),
                transport_socket: tls("reviews.bookinfo.svc.cluster.local"),
                ..eds("c")
            },
            Expect::Holds(|c| {
                c.lb == LbPolicy::LeastRequest
                    && c.protocol.http == Some(HttpVersion::Http2)
                    && c.protocol.max_concurrent_streams == Some(100)
                    && c.tls
                        .as_ref()
                        .is_some_and(|t| t.sni == "reviews.bookinfo.svc.cluster.local")
            }),
        ),
        (
            "circuit breakers with a retry budget",
            EnvoyCluster {
                circuit_breakers: thresholds(circuit_breakers::Thresholds {
                    max_requests: Some(UInt32Value { value: 10 }),
                    retry_budget: Some(circuit_breakers::thresholds::RetryBudget {
                        budget_percent: Some(Percent { value: 25.0 }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..eds("c")
            },
            Expect::Holds(|c| {
                c.limits
                    == Limits {
                        max_requests: 10,
                        retry_budget: Some(RetryBudget {
                            percent: 25.0,
                            min_concurrency: 3,
                        }),
                        ..Limits::default()
                    }
            }),
        ),
        (
            "outlier detection with Envoy's defaults",
            EnvoyCluster {
                outlier_detection: Some(OutlierDetection {
                    consecutive_5xx: Some(UInt32Value { value: 3 }),
                    ..OutlierDetection::default()
                }),
                ..eds("c")
            },
            Expect::Holds(|c| {
                c.outlier
                    == Some(Outlier {
                        consecutive_5xx: 3,
                        enforcing_consecutive_5xx: 100,
                        consecutive_gateway_failure: 5,
                        enforcing_consecutive_gateway_failure: 0,
                        interval: Duration::from_secs(10),
                        base_ejection_time: Duration::from_secs(30),
                        max_ejection_time: Duration::from_secs(300),
                        max_ejection_percent: 10,
                    })
            }),
        ),
    ];
    run(table, convert);
}

#[test]
fn clusters_outside_the_profile_are_rejected_at_their_path() {
    let table: Table<EnvoyCluster, Cluster> = vec![
        (
            "a cluster without a name",
            eds(""),
            Expect::Rejected("name"),
        ),
        (
            "EDS not over ADS",
            EnvoyCluster {
                eds_cluster_config: Some(cluster::EdsClusterConfig {
                    eds_config: not_ads(),
                    service_name: String::new(),
                }),
                ..eds("c")
            },
            Expect::Rejected("eds_cluster_config.eds_config.config_source_specifier"),
        ),
        (
            "a static cluster of names",
            with_endpoints(cluster::DiscoveryType::Static, "db.example"),
            Expect::Rejected("load_assignment.endpoints[0].lb_endpoints[0]"),
        ),
        (
            "ORIGINAL_DST without CLUSTER_PROVIDED",
            EnvoyCluster {
                name: "p".into(),
                cluster_discovery_type: of_type(cluster::DiscoveryType::OriginalDst),
                ..EnvoyCluster::default()
            },
            Expect::Rejected("lb_policy"),
        ),
        (
            "a balancer from load_balancing_policy",
            EnvoyCluster {
                lb_policy: cluster::LbPolicy::LoadBalancingPolicyConfig as i32,
                ..eds("c")
            },
            Expect::Rejected("lb_policy"),
        ),
        (
            "a ring hash balancer is a consistent hash",
            EnvoyCluster {
                lb_policy: cluster::LbPolicy::RingHash as i32,
                lb_config: Some(cluster::LbConfig::RingHashLbConfig(
                    cluster::RingHashLbConfig::default(),
                )),
                ..eds("c")
            },
            Expect::Holds(|c| c.lb == LbPolicy::ConsistentHash),
        ),
        (
            "a ring size for a balancer that has no ring",
            EnvoyCluster {
                lb_config: Some(cluster::LbConfig::RingHashLbConfig(
                    cluster::RingHashLbConfig::default(),
                )),
                ..eds("c")
            },
            Expect::Rejected("lb_config"),
        ),
        (
            "a panic threshold over 100 %",
            EnvoyCluster {
                common_lb_config: Some(cluster::CommonLbConfig {
                    healthy_panic_threshold: Some(Percent { value: 120.0 }),
                    ..Default::default()
                }),
                ..eds("c")
            },
            Expect::Rejected("common_lb_config.healthy_panic_threshold"),
        ),
        (
            "a retry budget over 100 %",
            EnvoyCluster {
                circuit_breakers: thresholds(circuit_breakers::Thresholds {
                    retry_budget: Some(circuit_breakers::thresholds::RetryBudget {
                        budget_percent: Some(Percent { value: 150.0 }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..eds("c")
            },
            Expect::Rejected("circuit_breakers.thresholds[0].retry_budget.budget_percent"),
        ),
        (
            "thresholds of the HIGH priority",
            EnvoyCluster {
                circuit_breakers: thresholds(circuit_breakers::Thresholds {
                    priority: 1,
                    ..Default::default()
                }),
                ..eds("c")
            },
            Expect::Rejected("circuit_breakers.thresholds[0].priority"),
        ),
        (
            "an ejection cap over 100 %",
            EnvoyCluster {
                outlier_detection: Some(OutlierDetection {
                    max_ejection_percent: Some(UInt32Value { value: 101 }),
                    ..OutlierDetection::default()
                }),
                ..eds("c")
            },
            Expect::Rejected("outlier_detection.max_ejection_percent"),
        ),
        (
            "success-rate ejection",
            EnvoyCluster {
                outlier_detection: Some(OutlierDetection {
                    success_rate_stdev_factor: Some(UInt32Value { value: 1900 }),
                    ..OutlierDetection::default()
                }),
                ..eds("c")
            },
            Expect::Rejected("outlier_detection.success_rate_stdev_factor"),
        ),
        (
            "protocol options of another extension",
            EnvoyCluster {
                typed_extension_protocol_options: HashMap::from([(
                    "envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions".into(),
                    pack(&DoubleValue { value: 1.0 }),
                )]),
                ..eds("c")
            },
            Expect::Rejected(
                "typed_extension_protocol_options[\"envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions\"]",
            ),
        ),
        (
            "an SNI that is not a DNS name or an IP address",
            EnvoyCluster {
                transport_socket: tls("bad sni!"),
                ..eds("c")
            },
            Expect::Rejected("transport_socket.typed_config(UpstreamTlsContext).sni"),
        ),
        (
            "a field outside the profile",
            EnvoyCluster {
                cleanup_interval: Some(isthmus_proto::envoy::google::protobuf::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                ..eds("c")
            },
            Expect::Rejected("cleanup_interval"),
        ),
    ];
    run(table, convert);
}
