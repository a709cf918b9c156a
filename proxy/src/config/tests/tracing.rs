//! `HttpConnectionManager.tracing` -> `Tracing`.

use isthmus_proto::envoy::envoy::config::core::v3::{
    Address, GrpcService, HeaderValue, HttpService, SocketAddress, address, grpc_service,
    socket_address,
};
use isthmus_proto::envoy::envoy::config::listener::v3::{
    Filter, FilterChain, Listener as EnvoyListener, filter,
};
use isthmus_proto::envoy::envoy::config::trace::v3::{
    OpenTelemetryConfig, ZipkinConfig, tracing as trace,
};
use isthmus_proto::envoy::envoy::extensions::filters::http::router::v3::Router;
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as EnvoyTracing;
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use isthmus_proto::envoy::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use isthmus_proto::envoy::envoy::r#type::v3::Percent;
use isthmus_proto::envoy::google::protobuf::BoolValue;

use super::{Expect, Table, ads, pack, run};
use crate::config::listener::{self, Terminal};
use crate::config::tracing::{DEFAULT_SERVICE_NAME, Tracing, convert};

fn otel(cluster: &str, service_name: &str) -> OpenTelemetryConfig {
    OpenTelemetryConfig {
        grpc_service: Some(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: cluster.into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        service_name: service_name.into(),
        ..Default::default()
    }
}

fn provider(config: &OpenTelemetryConfig) -> Option<trace::Http> {
    Some(trace::Http {
        name: "envoy.tracers.opentelemetry".into(),
        config_type: Some(trace::http::ConfigType::TypedConfig(pack(config))),
    })
}

fn literal(tag: &str, value: &str) -> CustomTag {
    CustomTag {
        tag: tag.into(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal {
            value: value.into(),
        })),
    }
}

/// What `isthmusd` sends: 12.5 % random sampling, the mesh tag, the OTLP cluster.
fn istio_like() -> EnvoyTracing {
    EnvoyTracing {
        random_sampling: Some(Percent { value: 12.5 }),
        custom_tags: vec![
            literal("isthmus.mesh", "red"),
            literal("isthmus.workload", "ratings-v1"),
        ],
        provider: provider(&otel("isthmus-otlp", "ratings.bookinfo")),
        ..Default::default()
    }
}

fn with(edit: impl FnOnce(&mut EnvoyTracing)) -> EnvoyTracing {
    let mut t = istio_like();
    edit(&mut t);
    t
}

fn with_otel(edit: impl FnOnce(&mut OpenTelemetryConfig)) -> EnvoyTracing {
    let mut config = otel("isthmus-otlp", "ratings.bookinfo");
    edit(&mut config);
    with(|t| t.provider = provider(&config))
}

/// A path inside the provider's OpenTelemetry configuration.
macro_rules! otel {
    ($rest:literal) => {
        concat!("provider.typed_config(OpenTelemetryConfig).", $rest)
    };
}

#[test]
fn tracing_converts_to_its_model() {
    let table: Table<EnvoyTracing, Option<Tracing>> = vec![
        (
            "isthmusd's tracing",
            istio_like(),
            Expect::Model(Some(Tracing {
                sampling: 0.125,
                collector_cluster: "isthmus-otlp".into(),
                service_name: "ratings.bookinfo".into(),
                tags: vec![
                    ("isthmus.mesh".into(), "red".into()),
                    ("isthmus.workload".into(), "ratings-v1".into()),
                ],
            })),
        ),
        (
            "no provider: no tracing",
            with(|t| t.provider = None),
            Expect::Model(None),
        ),
        (
            "unset sampling is Envoy's 100 %",
            with(|t| t.random_sampling = None),
            Expect::Holds(|t| t.as_ref().is_some_and(|t| t.sampling == 1.0)),
        ),
        (
            "overall sampling caps random sampling",
            with(|t| t.overall_sampling = Some(Percent { value: 50.0 })),
            Expect::Holds(|t| t.as_ref().is_some_and(|t| t.sampling == 0.0625)),
        ),
        (
            "zero sampling: only requests that come sampled",
            with(|t| t.random_sampling = Some(Percent { value: 0.0 })),
            Expect::Holds(|t| t.as_ref().is_some_and(|t| t.sampling == 0.0)),
        ),
        (
            "no service name: Envoy's unknown_service",
            with_otel(|c| c.service_name.clear()),
            Expect::Holds(|t| {
                t.as_ref()
                    .is_some_and(|t| t.service_name == DEFAULT_SERVICE_NAME)
            }),
        ),
        (
            "an environment tag takes its default when the variable is unset",
            with(|t| {
                t.custom_tags = vec![CustomTag {
                    tag: "zone".into(),
                    r#type: Some(custom_tag::Type::Environment(custom_tag::Environment {
                        name: "ISTHMUS_TEST_SURELY_UNSET_VARIABLE".into(),
                        default_value: "eu".into(),
                    })),
                }]
            }),
            Expect::Holds(|t| {
                t.as_ref()
                    .is_some_and(|t| t.tags == [("zone".to_owned(), "eu".to_owned())])
            }),
        ),
        (
            "spawn_upstream_span false is the default",
            with(|t| t.spawn_upstream_span = Some(BoolValue { value: false })),
            Expect::Holds(|t| t.is_some()),
        ),
        (
            "tuning accepted",
            with_otel(|c| {
                c.max_cache_size =
                    Some(isthmus_proto::envoy::google::protobuf::UInt32Value { value: 2048 });
                c.set_instrumentation_scope = Some(BoolValue { value: true });
            }),
            Expect::Holds(|t| t.is_some()),
        ),
    ];
    run(table, convert);
}

#[test]
fn tracing_outside_the_profile_is_rejected_at_its_path() {
    let table: Table<EnvoyTracing, Option<Tracing>> = vec![
        (
            "x-client-trace-id forcing",
            with(|t| t.client_sampling = Some(Percent { value: 100.0 })),
            Expect::Rejected("client_sampling"),
        ),
        (
            "verbose spans",
            with(|t| t.verbose = true),
            Expect::Rejected("verbose"),
        ),
        (
            "a span per upstream request",
            with(|t| t.spawn_upstream_span = Some(BoolValue { value: true })),
            Expect::Rejected("spawn_upstream_span"),
        ),
        (
            "an operation name format",
            with(|t| t.operation = "%REQ(:PATH)%".into()),
            Expect::Rejected("operation"),
        ),
        (
            "no context propagation",
            with(|t| t.no_context_propagation = true),
            Expect::Rejected("no_context_propagation"),
        ),
        (
            "a percentage above 100",
            with(|t| t.random_sampling = Some(Percent { value: 100.5 })),
            Expect::Rejected("random_sampling.value"),
        ),
        (
            "a negative percentage",
            with(|t| t.overall_sampling = Some(Percent { value: -1.0 })),
            Expect::Rejected("overall_sampling.value"),
        ),
        (
            "NaN",
            with(|t| t.random_sampling = Some(Percent { value: f64::NAN })),
            Expect::Rejected("random_sampling.value"),
        ),
        (
            "a tag from a request header",
            with(|t| {
                t.custom_tags.push(CustomTag {
                    tag: "user".into(),
                    r#type: Some(custom_tag::Type::RequestHeader(custom_tag::Header {
                        name: "x-user".into(),
                        default_value: String::new(),
                    })),
                })
            }),
            Expect::Rejected("custom_tags[2].request_header"),
        ),
        (
            "a tag from metadata",
            with(|t| {
                t.custom_tags = vec![CustomTag {
                    tag: "m".into(),
                    r#type: Some(custom_tag::Type::Metadata(Default::default())),
                }]
            }),
            Expect::Rejected("custom_tags[0].metadata"),
        ),
        (
            "a formatted tag",
            with(|t| {
                t.custom_tags = vec![CustomTag {
                    tag: "f".into(),
                    r#type: Some(custom_tag::Type::Value("%REQ(:PATH)%".into())),
                }]
            }),
            Expect::Rejected("custom_tags[0].value"),
        ),
        (
            "a tag twice",
            with(|t| t.custom_tags.push(literal("isthmus.mesh", "green"))),
            Expect::Rejected("custom_tags[2].tag"),
        ),
        (
            "a tag without a name",
            with(|t| t.custom_tags = vec![literal("", "x")]),
            Expect::Rejected("custom_tags[0].tag"),
        ),
        (
            "a tag without a value kind",
            with(|t| {
                t.custom_tags = vec![CustomTag {
                    tag: "t".into(),
                    r#type: None,
                }]
            }),
            Expect::Rejected("custom_tags[0].literal"),
        ),
        (
            "another tracer by name",
            with(|t| {
                t.provider = Some(trace::Http {
                    name: "envoy.tracers.zipkin".into(),
                    config_type: Some(trace::http::ConfigType::TypedConfig(pack(
                        &ZipkinConfig::default(),
                    ))),
                })
            }),
            Expect::Rejected("provider.name"),
        ),
        (
            "another tracer's configuration",
            with(|t| {
                t.provider = Some(trace::Http {
                    name: "envoy.tracers.opentelemetry".into(),
                    config_type: Some(trace::http::ConfigType::TypedConfig(pack(
                        &ZipkinConfig::default(),
                    ))),
                })
            }),
            Expect::Rejected("provider.typed_config(ZipkinConfig)"),
        ),
        (
            "a provider without configuration",
            with(|t| {
                t.provider = Some(trace::Http {
                    name: "envoy.tracers.opentelemetry".into(),
                    config_type: None,
                })
            }),
            Expect::Rejected("provider.typed_config"),
        ),
        (
            "OTLP over HTTP",
            with_otel(|c| {
                c.grpc_service = None;
                c.http_service = Some(HttpService::default());
            }),
            Expect::Rejected(otel!("http_service")),
        ),
        (
            "no collector",
            with_otel(|c| c.grpc_service = None),
            Expect::Rejected(otel!("grpc_service")),
        ),
        (
            "a collector cluster without a name",
            with_otel(|c| *c = otel("", "x")),
            Expect::Rejected(otel!("grpc_service.envoy_grpc.cluster_name")),
        ),
        (
            "Google gRPC",
            with_otel(|c| {
                c.grpc_service = Some(GrpcService {
                    target_specifier: Some(grpc_service::TargetSpecifier::GoogleGrpc(
                        Default::default(),
                    )),
                    ..Default::default()
                })
            }),
            Expect::Rejected(otel!("grpc_service.google_grpc")),
        ),
        (
            "gRPC metadata",
            with_otel(|c| {
                if let Some(g) = c.grpc_service.as_mut() {
                    g.initial_metadata = vec![HeaderValue {
                        key: "authorization".into(),
                        value: "secret".into(),
                        ..Default::default()
                    }];
                }
            }),
            Expect::Rejected(otel!("grpc_service.initial_metadata")),
        ),
        (
            "an authority",
            with_otel(|c| {
                if let Some(GrpcService {
                    target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(g)),
                    ..
                }) = c.grpc_service.as_mut()
                {
                    g.authority = "collector".into();
                }
            }),
            Expect::Rejected(otel!("grpc_service.envoy_grpc.authority")),
        ),
        (
            "a sampler extension",
            with_otel(|c| c.sampler = Some(Default::default())),
            Expect::Rejected(otel!("sampler")),
        ),
        (
            "resource detectors",
            with_otel(|c| c.resource_detectors = vec![Default::default()]),
            Expect::Rejected(otel!("resource_detectors")),
        ),
        (
            "no service.name attribute",
            with_otel(|c| c.set_service_name_resource_attribute = Some(BoolValue { value: false })),
            Expect::Rejected(otel!("set_service_name_resource_attribute")),
        ),
    ];
    run(table, convert);
}

/// The conversion runs inside the listener's, with the connection manager's path.
#[test]
fn a_connection_manager_carries_its_tracing() {
    let manager = |tracing: EnvoyTracing| EnvoyListener {
        name: "outbound_http".into(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(15001)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(
                    &HttpConnectionManager {
                        stat_prefix: "outbound_http".into(),
                        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                            config_source: ads(),
                            route_config_name: "outbound".into(),
                        })),
                        http_filters: vec![HttpFilter {
                            name: "envoy.filters.http.router".into(),
                            config_type: Some(http_filter::ConfigType::TypedConfig(pack(
                                &Router::default(),
                            ))),
                            ..Default::default()
                        }],
                        tracing: Some(tracing),
                        ..Default::default()
                    },
                ))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let l = listener::convert(manager(istio_like()), &crate::config::check::Path::root()).unwrap();
    let Terminal::Http(hcm) = &l.chains[0].terminal else {
        panic!("not HTTP");
    };
    let tracing = hcm.tracing.as_deref().unwrap();
    assert_eq!(tracing.collector_cluster, "isthmus-otlp");
    assert_eq!(tracing.sampling, 0.125);

    let e = listener::convert(
        manager(with(|t| t.verbose = true)),
        &crate::config::check::Path::root(),
    )
    .unwrap_err();
    assert_eq!(
        e.path.as_str(),
        "filter_chains[0].filters[0].typed_config(HttpConnectionManager).tracing.verbose"
    );
}
