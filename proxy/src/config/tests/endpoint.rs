//! `ClusterLoadAssignment` -> `LoadAssignment`.

use isthmus_proto::envoy::envoy::config::core::v3::{
    Address, HealthStatus, Locality as EnvoyLocality, SocketAddress, address, socket_address,
};
use isthmus_proto::envoy::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    cluster_load_assignment, lb_endpoint,
};
use isthmus_proto::envoy::envoy::r#type::v3::FractionalPercent;
use isthmus_proto::envoy::google::protobuf::UInt32Value;

use super::{Expect, Table, run};
use crate::config::endpoint::{Endpoint, LoadAssignment, Locality, LocalityGroup, convert};

fn socket(host: &str, port: u32) -> SocketAddress {
    SocketAddress {
        address: host.into(),
        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
        ..SocketAddress::default()
    }
}

fn at(socket: SocketAddress) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(socket)),
            }),
            ..EnvoyEndpoint::default()
        })),
        ..LbEndpoint::default()
    }
}

fn endpoint(host: &str, port: u32) -> LbEndpoint {
    at(socket(host, port))
}

fn group(priority: u32, zone: &str, endpoints: Vec<LbEndpoint>) -> LocalityLbEndpoints {
    LocalityLbEndpoints {
        locality: Some(EnvoyLocality {
            region: "eu".into(),
            zone: zone.into(),
            sub_zone: String::new(),
        }),
        lb_endpoints: endpoints,
        priority,
        ..LocalityLbEndpoints::default()
    }
}

fn assignment(groups: Vec<LocalityLbEndpoints>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: "reviews".into(),
        endpoints: groups,
        ..ClusterLoadAssignment::default()
    }
}

fn one(endpoint: LbEndpoint) -> ClusterLoadAssignment {
    assignment(vec![group(0, "a", vec![endpoint])])
}

#[test]
fn assignments_convert_to_their_model() {
    let table: Table<ClusterLoadAssignment, LoadAssignment> = vec![
        (
            "localities by priority, weights and health, Envoy's overprovisioning",
            assignment(vec![
                LocalityLbEndpoints {
                    load_balancing_weight: Some(UInt32Value { value: 3 }),
                    ..group(
                        0,
                        "a",
                        vec![
                            LbEndpoint {
                                load_balancing_weight: Some(UInt32Value { value: 5 }),
                                ..endpoint("10.0.0.1", 9080)
                            },
                            LbEndpoint {
                                health_status: HealthStatus::Unhealthy as i32,
                                ..endpoint("10.0.0.2", 9080)
                            },
                        ],
                    )
                },
                group(1, "b", vec![endpoint("10.0.1.1", 9080)]),
            ]),
            Expect::Model(LoadAssignment {
                cluster_name: "reviews".into(),
                groups: vec![
                    LocalityGroup {
                        locality: Locality {
                            region: "eu".into(),
                            zone: "a".into(),
                            sub_zone: String::new(),
                        },
                        priority: 0,
                        weight: Some(3),
                        endpoints: vec![
                            Endpoint {
                                host: "10.0.0.1".into(),
                                port: 9080,
                                weight: 5,
                                healthy: true,
                            },
                            Endpoint {
                                host: "10.0.0.2".into(),
                                port: 9080,
                                weight: 1,
                                healthy: false,
                            },
                        ],
                    },
                    LocalityGroup {
                        locality: Locality {
                            region: "eu".into(),
                            zone: "b".into(),
                            sub_zone: String::new(),
                        },
                        priority: 1,
                        weight: None,
                        endpoints: vec![Endpoint {
                            host: "10.0.1.1".into(),
                            port: 9080,
                            weight: 1,
                            healthy: true,
                        }],
                    },
                ],
                overprovisioning: 140,
            }),
        ),
        (
            "an overprovisioning factor of its own",
            ClusterLoadAssignment {
                policy: Some(cluster_load_assignment::Policy {
                    overprovisioning_factor: Some(UInt32Value { value: 200 }),
                    ..Default::default()
                }),
                ..one(endpoint("10.0.0.1", 80))
            },
            Expect::Holds(|a| a.overprovisioning == 200),
        ),
        (
            "a DNS name (for DNS clusters; a static cluster refuses it)",
            one(endpoint("db.example", 5432)),
            Expect::Holds(|a| a.groups[0].endpoints[0].host == "db.example"),
        ),
        (
            "draining endpoints are not healthy",
            one(LbEndpoint {
                health_status: HealthStatus::Draining as i32,
                ..endpoint("10.0.0.1", 80)
            }),
            Expect::Holds(|a| !a.groups[0].endpoints[0].healthy),
        ),
    ];
    run(table, convert);
}

#[test]
fn assignments_outside_the_profile_are_rejected_at_their_path() {
    let table: Table<ClusterLoadAssignment, LoadAssignment> = vec![
        (
            "an endpoint of weight zero",
            one(LbEndpoint {
                load_balancing_weight: Some(UInt32Value { value: 0 }),
                ..endpoint("10.0.0.1", 80)
            }),
            Expect::Rejected("endpoints[0].lb_endpoints[0].load_balancing_weight"),
        ),
        (
            "a named endpoint",
            one(LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::EndpointName("e".into())),
                ..LbEndpoint::default()
            }),
            Expect::Rejected("endpoints[0].lb_endpoints[0].endpoint"),
        ),
        (
            "a port over 65535",
            one(endpoint("10.0.0.1", 70_000)),
            Expect::Rejected(
                "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value",
            ),
        ),
        (
            "an empty address",
            one(endpoint("", 80)),
            Expect::Rejected(
                "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address",
            ),
        ),
        (
            "UDP",
            one(at(SocketAddress {
                protocol: socket_address::Protocol::Udp as i32,
                ..socket("10.0.0.1", 53)
            })),
            Expect::Rejected(
                "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.protocol",
            ),
        ),
        (
            "a named port",
            one(at(SocketAddress {
                port_specifier: Some(socket_address::PortSpecifier::NamedPort("http".into())),
                ..socket("10.0.0.1", 0)
            })),
            Expect::Rejected(
                "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value",
            ),
        ),
        (
            "drop overloads",
            ClusterLoadAssignment {
                policy: Some(cluster_load_assignment::Policy {
                    drop_overloads: vec![cluster_load_assignment::policy::DropOverload {
                        category: "throttle".into(),
                        drop_percentage: Some(FractionalPercent::default()),
                    }],
                    ..Default::default()
                }),
                ..one(endpoint("10.0.0.1", 80))
            },
            Expect::Rejected("policy.drop_overloads"),
        ),
        (
            "a locality's metadata",
            assignment(vec![LocalityLbEndpoints {
                metadata: Some(Default::default()),
                ..group(0, "a", vec![endpoint("10.0.0.1", 80)])
            }]),
            Expect::Rejected("endpoints[0].metadata"),
        ),
    ];
    run(table, convert);
}
