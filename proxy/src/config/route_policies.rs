//! A route's fault injection and CORS policy (the per-route configuration of Envoy's
//! `envoy.filters.http.fault` and `envoy.filters.http.cors`) and its mirrors (the route
//! action's `request_mirror_policies`), converted into the model or refused at their path.

use std::time::Duration;

use http::{HeaderValue, StatusCode};
use isthmus_proto::envoy::envoy::config::core::v3::RuntimeFractionalPercent;
use isthmus_proto::envoy::envoy::config::route::v3::route_action::RequestMirrorPolicy;
use isthmus_proto::envoy::envoy::extensions::filters::common::fault::v3::{
    FaultDelay as EnvoyDelay, fault_delay,
};
use isthmus_proto::envoy::envoy::extensions::filters::http::cors::v3::{
    Cors as CorsFilter, CorsPolicy,
};
use isthmus_proto::envoy::envoy::extensions::filters::http::fault::v3::{
    FaultAbort as EnvoyAbort, HttpFault, fault_abort,
};
use isthmus_proto::envoy::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use isthmus_proto::envoy::google::protobuf::Any;

use super::check::{Checked, Invalid, Path, reject_set, required};
use super::decode::{duration, typed};
use super::matcher::{self, Matcher};

pub const FAULT_TYPE: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
pub const CORS_FILTER_TYPE: &str = "envoy.extensions.filters.http.cors.v3.Cors";
pub const CORS_POLICY_TYPE: &str = "envoy.extensions.filters.http.cors.v3.CorsPolicy";

/// A share of requests, in parts per million.
pub type PerMillion = u32;

/// Delay, then abort, a share of the route's requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub delay: Option<(Duration, PerMillion)>,
    pub abort: Option<(Abort, PerMillion)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    Http(StatusCode),
    /// A gRPC status, answered as a trailers-only gRPC response.
    Grpc(u32),
}

/// A route's CORS policy (Envoy's CORS filter per route).
#[derive(Debug, Clone, PartialEq)]
pub struct Cors {
    pub origins: Vec<Matcher>,
    pub allow_methods: Option<HeaderValue>,
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
    pub allow_credentials: bool,
    /// A preflight from an origin not allowed goes on to the upstream (else: 200 here).
    pub forward_not_matching_preflights: bool,
}

/// A copy of the route's requests to `cluster`, its answer ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub cluster: String,
    pub share: PerMillion,
}

const MILLION: u64 = 1_000_000;

fn fraction(f: FractionalPercent, path: &Path) -> Checked<PerMillion> {
    let FractionalPercent {
        numerator,
        denominator,
    } = f;
    let scale: u64 = match fractional_percent::DenominatorType::try_from(denominator) {
        Ok(fractional_percent::DenominatorType::Hundred) => 10_000,
        Ok(fractional_percent::DenominatorType::TenThousand) => 100,
        Ok(fractional_percent::DenominatorType::Million) => 1,
        Err(_) => {
            return Err(Invalid::new(
                &path.field("denominator"),
                "unknown denominator",
            ));
        }
    };
    // Envoy: a numerator above the denominator means all.
    Ok((u64::from(numerator) * scale).min(MILLION) as PerMillion)
}

/// Envoy's default when unset: all requests.
fn share(f: Option<FractionalPercent>, path: &Path) -> Checked<PerMillion> {
    f.map_or(Ok(MILLION as PerMillion), |f| fraction(f, path))
}

/// Envoy's fault filter: a fault without a percentage applies to no request.
fn fault_share(f: Option<FractionalPercent>, path: &Path) -> Checked<PerMillion> {
    f.map_or(Ok(0), |f| fraction(f, path))
}

fn runtime_share(f: Option<RuntimeFractionalPercent>, path: &Path) -> Checked<PerMillion> {
    let Some(RuntimeFractionalPercent {
        default_value,
        runtime_key: _,
    }) = f
    else {
        return Ok(MILLION as PerMillion);
    };
    share(default_value, &path.field("default_value"))
}

/// The fault filter's own configuration: empty (faults are per route).
pub fn fault_filter(any: &Any, path: &Path) -> Checked<()> {
    let fault: HttpFault = typed(any, path)?;
    if fault != HttpFault::default() {
        return Err(Invalid::new(
            path,
            "only an empty fault filter (faults are configured per route)",
        ));
    }
    Ok(())
}

/// The CORS filter's own configuration (always empty in v3).
pub fn cors_filter(any: &Any, path: &Path) -> Checked<()> {
    let CorsFilter {} = typed(any, path)?;
    Ok(())
}

pub fn fault(any: &Any, path: &Path) -> Checked<Fault> {
    let HttpFault {
        delay,
        abort,
        upstream_cluster,
        headers,
        downstream_nodes,
        max_active_faults,
        response_rate_limit,
        delay_percent_runtime: _,
        abort_percent_runtime: _,
        delay_duration_runtime: _,
        abort_http_status_runtime: _,
        max_active_faults_runtime: _,
        response_rate_limit_percent_runtime: _,
        abort_grpc_status_runtime: _,
        disable_downstream_cluster_stats: _,
        filter_metadata,
    } = typed(any, path)?;
    reject_set!(path; upstream_cluster, headers, downstream_nodes, max_active_faults,
        response_rate_limit, filter_metadata);
    let delay = delay
        .map(|d| fault_delay(d, &path.field("delay")))
        .transpose()?;
    let abort = abort
        .map(|a| fault_abort(a, &path.field("abort")))
        .transpose()?;
    if delay.is_none() && abort.is_none() {
        return Err(Invalid::new(path, "a delay or an abort is required"));
    }
    Ok(Fault { delay, abort })
}

fn fault_delay(d: EnvoyDelay, path: &Path) -> Checked<(Duration, PerMillion)> {
    let EnvoyDelay {
        fault_delay_secifier,
        percentage,
    } = d;
    let fixed = match required(fault_delay_secifier, path)? {
        fault_delay::FaultDelaySecifier::FixedDelay(d) => duration(&d, &path.field("fixed_delay"))?,
        fault_delay::FaultDelaySecifier::HeaderDelay(_) => {
            return Err(Invalid::unsupported(&path.field("header_delay")));
        }
    };
    Ok((fixed, fault_share(percentage, &path.field("percentage"))?))
}

fn fault_abort(a: EnvoyAbort, path: &Path) -> Checked<(Abort, PerMillion)> {
    let EnvoyAbort {
        error_type,
        percentage,
        response_body,
    } = a;
    reject_set!(path; response_body);
    let abort = match required(error_type, path)? {
        fault_abort::ErrorType::HttpStatus(status) => {
            let status = u16::try_from(status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| {
                    Invalid::new(
                        &path.field("http_status"),
                        format!("{status} is not 200-599"),
                    )
                })?;
            Abort::Http(status)
        }
        fault_abort::ErrorType::GrpcStatus(code) if code <= 16 => Abort::Grpc(code),
        fault_abort::ErrorType::GrpcStatus(code) => {
            return Err(Invalid::new(
                &path.field("grpc_status"),
                format!("{code} is not a gRPC status"),
            ));
        }
        fault_abort::ErrorType::HeaderAbort(_) => {
            return Err(Invalid::unsupported(&path.field("header_abort")));
        }
    };
    Ok((abort, fault_share(percentage, &path.field("percentage"))?))
}

fn header_value(text: String, path: &Path) -> Checked<Option<HeaderValue>> {
    if text.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&text)
        .map(Some)
        .map_err(|_| Invalid::new(path, format!("{text:?} is not a header value")))
}

pub fn cors(any: &Any, path: &Path) -> Checked<Cors> {
    let CorsPolicy {
        allow_origin_string_match,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials,
        filter_enabled,
        shadow_enabled,
        allow_private_network_access,
        forward_not_matching_preflights,
    } = typed(any, path)?;
    reject_set!(path; shadow_enabled, allow_private_network_access);
    if runtime_share(filter_enabled, &path.field("filter_enabled"))? != MILLION as PerMillion {
        return Err(Invalid::new(
            &path.field("filter_enabled"),
            "only enabled for all requests",
        ));
    }
    let origins_path = path.field("allow_origin_string_match");
    let origins = allow_origin_string_match
        .into_iter()
        .enumerate()
        .map(|(i, m)| matcher::string(Some(m), &origins_path.index(i)))
        .collect::<Checked<Vec<_>>>()?;
    if !max_age.is_empty() && max_age.parse::<u64>().is_err() {
        return Err(Invalid::new(
            &path.field("max_age"),
            format!("{max_age:?} is not a number of seconds"),
        ));
    }
    Ok(Cors {
        origins,
        allow_methods: header_value(allow_methods, &path.field("allow_methods"))?,
        allow_headers: header_value(allow_headers, &path.field("allow_headers"))?,
        expose_headers: header_value(expose_headers, &path.field("expose_headers"))?,
        max_age: header_value(max_age, &path.field("max_age"))?,
        allow_credentials: allow_credentials.is_some_and(|b| b.value),
        forward_not_matching_preflights: forward_not_matching_preflights.is_none_or(|b| b.value),
    })
}

pub fn mirror(policy: RequestMirrorPolicy, path: &Path) -> Checked<Mirror> {
    let RequestMirrorPolicy {
        cluster,
        cluster_header,
        runtime_fraction,
        trace_sampled: _,
        disable_shadow_host_suffix_append,
        request_headers_mutations,
        host_rewrite_literal,
    } = policy;
    reject_set!(path; cluster_header, disable_shadow_host_suffix_append,
        request_headers_mutations, host_rewrite_literal);
    if cluster.is_empty() {
        return Err(Invalid::required(&path.field("cluster")));
    }
    Ok(Mirror {
        cluster,
        share: runtime_share(runtime_fraction, &path.field("runtime_fraction"))?,
    })
}
