//! The HTTP connection manager's `tracing` (issue 19): Envoy's OpenTelemetry tracer sending
//! OTLP/gRPC to a cluster, its sampling percentages and literal span tags, converted into
//! [`Tracing`]. What the proxy does with it lives in `telemetry/trace`.
//!
//! The profile: provider `envoy.tracers.opentelemetry` with `grpc_service.envoy_grpc`
//! (`cluster_name`) and `service_name`; `random_sampling` and `overall_sampling` (their product
//! is the share of requests without a sampling decision that start a sampled trace);
//! `custom_tags` that are literals or environment variables (read at conversion). Refused:
//! HTTP export, resource detectors and samplers, tags taken from request headers or metadata,
//! `client_sampling` (no `x-client-trace-id` forcing), `verbose`, `spawn_upstream_span`,
//! `operation` (span names are the proxy's: the route's authority, `<host>:<port>/*`) and
//! `no_context_propagation`.

use isthmus_proto::envoy::envoy::config::core::v3::{GrpcService, grpc_service};
use isthmus_proto::envoy::envoy::config::trace::v3::{OpenTelemetryConfig, tracing as trace};
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as EnvoyTracing;
use isthmus_proto::envoy::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use isthmus_proto::envoy::envoy::r#type::v3::Percent;
use isthmus_proto::envoy::google::protobuf::BoolValue;

use super::check::{Checked, Invalid, Path, reject_set, required};
use super::decode::{short_type, typed};

/// Envoy's name of the OpenTelemetry tracer.
pub const OPENTELEMETRY: &str = "envoy.tracers.opentelemetry";
/// Envoy's `service.name` when the configuration names none.
pub const DEFAULT_SERVICE_NAME: &str = "unknown_service:isthmus-proxy";

/// How an HTTP connection manager traces its requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// Share (0 to 1) of requests arriving without a sampling decision that start a sampled
    /// trace; a request that carries a decision keeps it.
    pub sampling: f64,
    /// The cluster the spans go to (OTLP/gRPC), by name.
    pub collector_cluster: String,
    /// The spans' `service.name` resource attribute.
    pub service_name: String,
    /// Attributes every span of this manager carries, in order, names unique.
    pub tags: Vec<(String, String)>,
}

/// `tracing` of an HTTP connection manager; `None` when it names no provider (Envoy: no
/// tracing then).
pub fn convert(tracing: EnvoyTracing, path: &Path) -> Checked<Option<Tracing>> {
    let EnvoyTracing {
        client_sampling,
        random_sampling,
        overall_sampling,
        verbose,
        max_path_tag_length: _,
        custom_tags,
        provider,
        spawn_upstream_span,
        operation,
        upstream_operation,
        no_context_propagation,
    } = tracing;
    reject_set!(path; client_sampling, verbose, operation, upstream_operation,
        no_context_propagation);
    if spawn_upstream_span.is_some_and(|b| b.value) {
        return Err(Invalid::new(
            &path.field("spawn_upstream_span"),
            "not supported by isthmus-proxy: one span per proxy and request",
        ));
    }
    let random = percent(random_sampling, &path.field("random_sampling"))?;
    let overall = percent(overall_sampling, &path.field("overall_sampling"))?;
    let tags = tags(custom_tags, path)?;
    let Some(provider) = provider else {
        return Ok(None);
    };
    let path = path.field("provider");
    let trace::Http { name, config_type } = provider;
    if name != OPENTELEMETRY {
        return Err(Invalid::new(
            &path.field("name"),
            format!("{name:?}: only {OPENTELEMETRY}"),
        ));
    }
    let trace::http::ConfigType::TypedConfig(any) =
        required(config_type, &path.field("typed_config"))?;
    let path = path.typed("typed_config", short_type(&any));
    let (collector_cluster, service_name) = opentelemetry(typed(&any, &path)?, &path)?;
    Ok(Some(Tracing {
        sampling: random * overall,
        collector_cluster,
        service_name,
        tags,
    }))
}

/// The collector's cluster and the service name.
fn opentelemetry(config: OpenTelemetryConfig, path: &Path) -> Checked<(String, String)> {
    let OpenTelemetryConfig {
        grpc_service,
        http_service,
        exporter,
        service_name,
        resource_detectors,
        sampler,
        max_cache_size: _,
        set_telemetry_sdk_resource_attributes,
        set_service_name_resource_attribute,
        set_instrumentation_scope,
    } = config;
    reject_set!(path; http_service, exporter, resource_detectors, sampler);
    for (field, value) in [
        (
            "set_telemetry_sdk_resource_attributes",
            set_telemetry_sdk_resource_attributes,
        ),
        (
            "set_service_name_resource_attribute",
            set_service_name_resource_attribute,
        ),
        ("set_instrumentation_scope", set_instrumentation_scope),
    ] {
        if value == Some(BoolValue { value: false }) {
            return Err(Invalid::unsupported(&path.field(field)));
        }
    }
    let cluster = collector(grpc_service, &path.field("grpc_service"))?;
    let service_name = if service_name.is_empty() {
        DEFAULT_SERVICE_NAME.to_owned()
    } else {
        service_name
    };
    Ok((cluster, service_name))
}

/// `grpc_service.envoy_grpc.cluster_name`.
fn collector(service: Option<GrpcService>, path: &Path) -> Checked<String> {
    let GrpcService {
        timeout: _,
        initial_metadata,
        retry_policy,
        target_specifier,
    } = required(service, path)?;
    reject_set!(path; initial_metadata, retry_policy);
    match required(target_specifier, &path.field("envoy_grpc"))? {
        grpc_service::TargetSpecifier::EnvoyGrpc(grpc) => {
            let path = path.field("envoy_grpc");
            let grpc_service::EnvoyGrpc {
                cluster_name,
                authority,
                retry_policy,
                max_receive_message_length: _,
                skip_envoy_headers: _,
            } = grpc;
            reject_set!(path; authority, retry_policy);
            if cluster_name.is_empty() {
                return Err(Invalid::required(&path.field("cluster_name")));
            }
            Ok(cluster_name)
        }
        grpc_service::TargetSpecifier::GoogleGrpc(_) => {
            Err(Invalid::unsupported(&path.field("google_grpc")))
        }
    }
}

/// A percentage as a share from 0 to 1; Envoy's default, 100 %, when unset.
fn percent(value: Option<Percent>, path: &Path) -> Checked<f64> {
    match value {
        None => Ok(1.0),
        Some(Percent { value }) if (0.0..=100.0).contains(&value) => Ok(value / 100.0),
        Some(Percent { value }) => Err(Invalid::new(
            &path.field("value"),
            format!("{value} is not a percentage from 0 to 100"),
        )),
    }
}

/// Literal and environment tags, names unique.
fn tags(custom_tags: Vec<CustomTag>, path: &Path) -> Checked<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(custom_tags.len());
    for (i, CustomTag { tag, r#type }) in custom_tags.into_iter().enumerate() {
        let path = path.field("custom_tags").index(i);
        if tag.is_empty() {
            return Err(Invalid::required(&path.field("tag")));
        }
        if out.iter().any(|(t, _)| *t == tag) {
            return Err(Invalid::new(
                &path.field("tag"),
                format!("{tag:?} is already a tag of this connection manager"),
            ));
        }
        let value = match required(r#type, &path.field("literal"))? {
            custom_tag::Type::Literal(custom_tag::Literal { value }) => value,
            custom_tag::Type::Environment(custom_tag::Environment {
                name,
                default_value,
            }) => {
                if name.is_empty() {
                    return Err(Invalid::required(&path.field("environment").field("name")));
                }
                std::env::var(&name).unwrap_or(default_value)
            }
            custom_tag::Type::RequestHeader(_) => {
                return Err(Invalid::unsupported(&path.field("request_header")));
            }
            custom_tag::Type::Metadata(_) => {
                return Err(Invalid::unsupported(&path.field("metadata")));
            }
            custom_tag::Type::Value(_) => {
                return Err(Invalid::unsupported(&path.field("value")));
            }
        };
        out.push((tag, value));
    }
    Ok(out)
}
