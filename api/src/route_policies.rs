//! The policies an HTTP route of a `VirtualService` carries besides its destinations: fault
//! injection (`fault`), mirroring (`mirror`, `mirrorPercentage`, `mirrors`) and CORS
//! (`corsPolicy`), with their validation.

#[cfg(feature = "crd")]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::IstioDuration;
use super::meta::{Unsupported, Validator};
use super::networking::{Destination, ValueMatch};

/// Istio's `Percent`: 0 to 100, fractions allowed.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

impl Percent {
    /// Parts per million (Envoy's finest `FractionalPercent`).
    pub fn per_million(self) -> u32 {
        (self.value.clamp(0.0, 100.0) * 10_000.0).round() as u32
    }
}

/// `fault`: delay or abort a share of the requests, on the caller's side.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(default)]
    pub fixed_delay: Option<IstioDuration>,
    /// Not supported (by Istio either): refused by validation, so that a delay holding only
    /// it is not also told it lacks `fixedDelay`.
    #[serde(default)]
    pub exponential_delay: Option<IstioDuration>,
    /// Unset (and no `percent`): no request, as in Istio.
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// Istio's deprecated integer percentage, read when `percentage` is unset.
    #[serde(default)]
    pub percent: Option<u32>,
}

impl FaultDelay {
    pub fn share(&self) -> Percent {
        self.percentage.unwrap_or(Percent {
            value: self.percent.map_or(0.0, f64::from),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    #[serde(default)]
    pub http_status: Option<u32>,
    /// A gRPC status by name (`UNAVAILABLE`) or number.
    #[serde(default)]
    pub grpc_status: Option<String>,
    #[serde(default)]
    pub http2_error: Option<Unsupported>,
    /// Unset: no request, as in Istio.
    #[serde(default)]
    pub percentage: Option<Percent>,
}

impl FaultAbort {
    pub fn share(&self) -> Percent {
        self.percentage.unwrap_or_default()
    }

    /// The gRPC status code of `grpcStatus`, by name or number.
    pub fn grpc_code(&self) -> Option<u32> {
        let status = self.grpc_status.as_deref()?;
        status.parse().ok().or_else(|| {
            GRPC_CODES
                .iter()
                .position(|name| *name == status)
                .map(|i| i as u32)
        })
    }
}

/// gRPC's status names, by code.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// `mirrors[]`: a copy of the request to another destination, its answer ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    pub destination: Destination,
    /// Unset: every request.
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// `corsPolicy`: the CORS answers the caller's sidecar gives for the route.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    #[serde(default)]
    pub allow_origins: Vec<ValueMatch>,
    /// Istio's deprecated exact origins.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<IstioDuration>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    #[serde(default)]
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// What happens to a preflight whose origin the policy does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Istio's default: forwarded.
    #[default]
    Unspecified,
    Forward,
    /// Answered here, without CORS headers.
    Ignore,
}

fn validate_percent(v: &mut Validator, path: &str, percent: Option<Percent>) {
    if let Some(p) = percent {
        v.check(
            (0.0..=100.0).contains(&p.value),
            format!("{path}.value"),
            format!("{} is not a percentage from 0 to 100", p.value),
        );
    }
}

pub fn validate_fault(v: &mut Validator, path: &str, fault: &HttpFaultInjection) {
    v.check(
        fault.delay.is_some() || fault.abort.is_some(),
        path,
        "a delay or an abort is required",
    );
    if let Some(delay) = &fault.delay {
        let path = format!("{path}.delay");
        if delay.exponential_delay.is_some() {
            v.error(
                format!("{path}.exponentialDelay"),
                "not supported by Isthmus",
            );
        } else {
            v.check(
                delay.fixed_delay.is_some(),
                format!("{path}.fixedDelay"),
                "is required",
            );
        }
        validate_percent(v, &format!("{path}.percentage"), delay.percentage);
        if let Some(p) = delay.percent {
            v.check(
                p <= 100,
                format!("{path}.percent"),
                format!("{p} is more than 100"),
            );
        }
    }
    if let Some(abort) = &fault.abort {
        let path = format!("{path}.abort");
        match (abort.http_status, &abort.grpc_status) {
            (Some(status), None) => v.check(
                (200..=599).contains(&status),
                format!("{path}.httpStatus"),
                format!("{status} is not an HTTP status from 200 to 599"),
            ),
            (None, Some(name)) => v.check(
                abort.grpc_code().is_some_and(|c| c > 0 && c <= 16),
                format!("{path}.grpcStatus"),
                format!("{name:?} is not a gRPC error status"),
            ),
            _ => v.error(&path, "exactly one of httpStatus or grpcStatus is required"),
        }
        validate_percent(v, &format!("{path}.percentage"), abort.percentage);
    }
}

pub fn validate_cors(v: &mut Validator, path: &str, cors: &CorsPolicy) {
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        let path = format!("{path}.allowOrigins[{i}]");
        v.check(
            origin.string_match().is_some(),
            &path,
            "one of exact, prefix or regex is required",
        );
        super::networking::validate_value_match(v, &path, origin);
    }
}

pub fn validate_mirror_percent(v: &mut Validator, path: &str, percent: Option<Percent>) {
    validate_percent(v, path, percent);
}
