//! A `VirtualService` route's fault injection, mirrors and CORS, as Istio writes them for
//! Envoy: the fault and CORS filters in the outbound connection manager (CORS first), each
//! route's settings as the filters' per-route configuration, mirrors on the route action.

use std::collections::HashMap;

use isthmus_api::route_policies::{CorsPolicy, HttpFaultInjection, Percent, UnmatchedPreflights};
use isthmus_proto::envoy::envoy::config::core::v3::RuntimeFractionalPercent;
use isthmus_proto::envoy::envoy::config::route::v3::route_action::RequestMirrorPolicy;
use isthmus_proto::envoy::envoy::extensions::filters::common::fault::v3::{
    FaultDelay, fault_delay,
};
use isthmus_proto::envoy::envoy::extensions::filters::http::cors::v3::{
    Cors, CorsPolicy as EnvoyCors,
};
use isthmus_proto::envoy::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use isthmus_proto::envoy::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use isthmus_proto::envoy::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use isthmus_proto::envoy::google::protobuf::{Any, BoolValue};

use super::{duration, pack};

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// The CORS and fault filters of an outbound connection manager, before the router.
pub fn http_filters() -> [HttpFilter; 2] {
    let filter = |name: &str, config: Any| HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    };
    [
        filter(CORS_FILTER, pack(&Cors::default())),
        filter(FAULT_FILTER, pack(&HttpFault::default())),
    ]
}

fn per_million(share: Percent) -> Option<FractionalPercent> {
    Some(FractionalPercent {
        numerator: share.per_million(),
        denominator: fractional_percent::DenominatorType::Million as i32,
    })
}

/// The route's per-filter configuration: its fault and its CORS policy.
pub fn per_filter(
    fault: Option<&HttpFaultInjection>,
    cors: Option<&CorsPolicy>,
) -> HashMap<String, Any> {
    let mut configs = HashMap::new();
    if let Some(fault) = fault {
        configs.insert(FAULT_FILTER.to_owned(), pack(&envoy_fault(fault)));
    }
    if let Some(cors) = cors {
        configs.insert(CORS_FILTER.to_owned(), pack(&envoy_cors(cors)));
    }
    configs
}

fn envoy_fault(fault: &HttpFaultInjection) -> HttpFault {
    HttpFault {
        delay: fault.delay.as_ref().and_then(|d| {
            Some(FaultDelay {
                fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                    d.fixed_delay?.0,
                ))),
                percentage: per_million(d.share()),
            })
        }),
        abort: fault.abort.as_ref().and_then(|a| {
            let error = match (a.http_status, a.grpc_code()) {
                (Some(status), _) => fault_abort::ErrorType::HttpStatus(status),
                (None, Some(code)) => fault_abort::ErrorType::GrpcStatus(code),
                (None, None) => return None,
            };
            Some(FaultAbort {
                error_type: Some(error),
                percentage: per_million(a.share()),
                ..Default::default()
            })
        }),
        ..Default::default()
    }
}

fn envoy_cors(cors: &CorsPolicy) -> EnvoyCors {
    let exact = |origin: &String| StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(origin.clone())),
        ignore_case: false,
    };
    let origins = cors
        .allow_origins
        .iter()
        .filter_map(|m| m.string_match())
        .map(|m| super::routes::string_matcher(&m, false))
        .chain(cors.allow_origin.iter().map(exact))
        .collect();
    EnvoyCors {
        allow_origin_string_match: origins,
        allow_methods: cors.allow_methods.join(","),
        allow_headers: cors.allow_headers.join(","),
        expose_headers: cors.expose_headers.join(","),
        max_age: cors
            .max_age
            .map(|d| d.0.as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: cors.allow_credentials.map(|value| BoolValue { value }),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: per_million(Percent { value: 100.0 }),
            runtime_key: String::new(),
        }),
        forward_not_matching_preflights: Some(BoolValue {
            value: cors.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        }),
        ..Default::default()
    }
}

/// A mirror of the route: a copy of `share` of the requests to `cluster`.
pub fn mirror(cluster: String, share: Percent) -> RequestMirrorPolicy {
    RequestMirrorPolicy {
        cluster,
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: per_million(share),
            runtime_key: String::new(),
        }),
        ..Default::default()
    }
}
