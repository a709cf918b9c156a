//! `networking.istio.io/v1`: `ServiceEntry`, `WorkloadEntry`, `VirtualService`,
//! `DestinationRule`, for the subset Isthmus implements.

use std::collections::BTreeMap;

#[cfg(feature = "crd")]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Validate;
use super::duration::IstioDuration;
use super::meta::{Unsupported, Validator, WorkloadSelector, is_dns_subdomain, is_host};
use super::route_policies::{self, CorsPolicy, HttpFaultInjection, HttpMirrorPolicy, Percent};

// ---------------------------------------------------------------------------------------------
// ServiceEntry and WorkloadEntry

/// `ServiceEntry.workloadSelector`: Istio's `networking.v1alpha3.WorkloadSelector`, whose
/// field is `labels` (the policies' selector, `type.v1beta1.WorkloadSelector`, says
/// `matchLabels`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntryWorkloadSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

resource!(
    /// Services (and their endpoints) outside Kubernetes: the registry of local mode.
    ServiceEntry,
    ServiceEntrySpec
);

#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "networking.istio.io",
        version = "v1",
        kind = "ServiceEntry",
        plural = "serviceentries",
        shortname = "se",
        namespaced,
        root = "KubeServiceEntry",
        doc = "A service in the mesh registry: hosts, ports, and endpoints (inline or selected WorkloadEntries)."
    )
)]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub location: Location,
    #[serde(default)]
    pub resolution: Resolution,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntrySpec>,
    #[serde(default)]
    pub workload_selector: Option<EntryWorkloadSelector>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub number: u32,
    #[serde(default)]
    pub protocol: Option<String>,
    pub name: String,
    #[serde(default)]
    pub target_port: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    #[default]
    MeshExternal,
    MeshInternal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    #[default]
    None,
    Static,
    Dns,
    DnsRoundRobin,
}

resource!(
    /// One workload (a VM, a process in local mode) that `ServiceEntry` selectors pick up.
    WorkloadEntry,
    WorkloadEntrySpec
);

#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "networking.istio.io",
        version = "v1",
        kind = "WorkloadEntry",
        plural = "workloadentries",
        shortname = "we",
        namespaced,
        root = "KubeWorkloadEntry",
        doc = "A workload outside Kubernetes: its address, labels, service account and locality."
    )
)]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    #[serde(default)]
    pub address: Option<String>,
    /// Port name (of the service) to the workload's port.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub network: Option<String>,
    /// `region/zone/subzone`.
    #[serde(default)]
    pub locality: Option<String>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub service_account: Option<String>,
}

const KNOWN_PROTOCOLS: &[&str] = &["HTTP", "HTTP2", "GRPC", "TCP", "TLS", "HTTPS"];

/// Istio's protocols that it carries as opaque TCP unless a protocol filter is enabled (and
/// `GRPC-WEB`, routed as gRPC): accepted, and carried the same way here.
const OPAQUE_PROTOCOLS: &[&str] = &["MONGO", "REDIS", "MYSQL", "GRPC-WEB"];

/// Istio's protocols that Isthmus does not carry.
const UNSUPPORTED_PROTOCOLS: &[&str] = &["UDP", "HTTP_PROXY"];

/// `spec.hosts`: at least one, each a valid host name.
fn validate_hosts(v: &mut Validator, hosts: &[String]) {
    v.check(
        !hosts.is_empty(),
        "spec.hosts",
        "at least one host is required",
    );
    for (i, host) in hosts.iter().enumerate() {
        v.check(
            is_host(host),
            format!("spec.hosts[{i}]"),
            format!("{host:?} is not a valid host"),
        );
    }
}

/// RFC 9110's token: a header or cookie name.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Trial division: only called on numbers up to Maglev's bound.
fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d: &u64| d.saturating_mul(*d) <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// `10.96.0.10` or `10.96.0.0/16` (IPv4 or IPv6).
pub fn is_ip_or_cidr(text: &str) -> bool {
    let (ip, len) = match text.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (text, None),
    };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    len.is_none_or(|l| l.parse::<u8>().is_ok_and(|l| l <= max))
}

fn validate_port(v: &mut Validator, path: &str, number: u32) {
    v.check(
        (1..=65535).contains(&number),
        path,
        format!("port {number} is not in 1-65535"),
    );
}

impl Validate for ServiceEntry {
    fn validate(&self, v: &mut Validator) {
        let s = &self.spec;
        validate_hosts(v, &s.hosts);
        for (i, address) in s.addresses.iter().enumerate() {
            v.check(
                is_ip_or_cidr(address),
                format!("spec.addresses[{i}]"),
                format!("{address:?} is not an IP address or CIDR range"),
            );
        }
        for (i, port) in s.ports.iter().enumerate() {
            validate_port(v, &format!("spec.ports[{i}].number"), port.number);
            if let Some(target) = port.target_port {
                validate_port(v, &format!("spec.ports[{i}].targetPort"), target);
            }
            if let Some(p) = &port.protocol {
                let upper = p.to_ascii_uppercase();
                if UNSUPPORTED_PROTOCOLS.contains(&upper.as_str()) {
                    v.check(
                        false,
                        format!("spec.ports[{i}].protocol"),
                        format!("{p} is not supported by Isthmus"),
                    );
                } else {
                    v.check(
                        KNOWN_PROTOCOLS.contains(&upper.as_str())
                            || OPAQUE_PROTOCOLS.contains(&upper.as_str()),
                        format!("spec.ports[{i}].protocol"),
                        format!(
                            "{p:?} is not one of {}, {}",
                            KNOWN_PROTOCOLS.join(", "),
                            OPAQUE_PROTOCOLS.join(", ")
                        ),
                    );
                }
            }
        }
        v.check(
            s.workload_selector.is_none() || s.endpoints.is_empty(),
            "spec.workloadSelector",
            "workloadSelector and endpoints cannot both be set",
        );
        for (i, e) in s.endpoints.iter().enumerate() {
            validate_workload(v, &format!("spec.endpoints[{i}]"), e);
            if s.resolution == Resolution::Static {
                v.check(
                    e.address.is_some(),
                    format!("spec.endpoints[{i}].address"),
                    "required with resolution STATIC",
                );
            }
        }
    }
}

impl Validate for WorkloadEntry {
    fn validate(&self, v: &mut Validator) {
        validate_workload(v, "spec", &self.spec);
    }
}

fn validate_workload(v: &mut Validator, path: &str, w: &WorkloadEntrySpec) {
    for (name, port) in &w.ports {
        validate_port(v, &format!("{path}.ports.{name}"), *port);
    }
    if let Some(locality) = &w.locality {
        v.check(
            locality.split('/').count() <= 3 && !locality.split('/').any(str::is_empty),
            format!("{path}.locality"),
            format!("{locality:?} is not region[/zone[/subzone]]"),
        );
    }
    if let Some(weight) = w.weight {
        v.check(weight > 0, format!("{path}.weight"), "must be positive");
    }
    if let Some(sa) = &w.service_account {
        v.check(
            super::meta::is_dns_subdomain(sa),
            format!("{path}.serviceAccount"),
            format!("{sa:?} is not a valid service account name"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// VirtualService

resource!(
    /// Routing rules for hosts: HTTP and TCP routes.
    VirtualService,
    VirtualServiceSpec
);

#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "networking.istio.io",
        version = "v1",
        kind = "VirtualService",
        plural = "virtualservices",
        shortname = "vs",
        namespaced,
        root = "KubeVirtualService",
        doc = "HTTP routing for hosts: matches, weighted destinations, redirects, retries, timeouts."
    )
)]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    /// Routes of TLS traffic by its SNI, unterminated (a gateway's `PASSTHROUGH` servers).
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    #[serde(default)]
    pub export_to: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    #[serde(default)]
    pub redirect: Option<HttpRedirect>,
    #[serde(default)]
    pub direct_response: Option<HttpDirectResponse>,
    #[serde(default)]
    pub rewrite: Option<HttpRewrite>,
    #[serde(default)]
    pub timeout: Option<IstioDuration>,
    #[serde(default)]
    pub retries: Option<HttpRetry>,
    #[serde(default)]
    pub headers: Option<Headers>,
    /// The `VirtualService` (without hosts) whose HTTP routes take this route's place, each
    /// match within this route's (Istio's delegation, one level).
    #[serde(default)]
    pub delegate: Option<Delegate>,
    #[serde(default)]
    pub fault: Option<HttpFaultInjection>,
    /// A copy of each request (`mirrorPercentage` of them) to this destination.
    #[serde(default)]
    pub mirror: Option<Destination>,
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    /// Istio's deprecated integer form of `mirrorPercentage`.
    #[serde(default)]
    pub mirror_percent: Option<u32>,
    #[serde(default)]
    pub cors_policy: Option<CorsPolicy>,
}

impl HttpRoute {
    /// Every mirror of the route with its share: `mirror` (with `mirrorPercentage`, or the
    /// deprecated `mirrorPercent`; all requests when neither is set), then `mirrors`.
    pub fn all_mirrors(&self) -> Vec<(&Destination, Percent)> {
        let single = self.mirror.as_ref().map(|d| {
            let share = self.mirror_percentage.unwrap_or(Percent {
                value: self.mirror_percent.map_or(100.0, f64::from),
            });
            (d, share)
        });
        single
            .into_iter()
            .chain(self.mirrors.iter().map(|m| {
                (
                    &m.destination,
                    m.percentage.unwrap_or(Percent { value: 100.0 }),
                )
            }))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub authority: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, ValueMatch>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub query_params: BTreeMap<String, ValueMatch>,
    #[serde(default)]
    pub ignore_uri_case: bool,
    #[serde(default)]
    pub without_headers: BTreeMap<String, ValueMatch>,
    #[serde(default)]
    pub source_namespace: Option<String>,
    #[serde(default)]
    pub stat_prefix: Option<Unsupported>,
}

/// `exact`, `prefix` or `regex` (RE2 syntax): exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// A header's or query parameter's match: at most one of `exact`, `prefix` or `regex`; none
/// (`{}`) matches when the header or parameter is present, as in Istio.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

impl ValueMatch {
    /// The value's match; `None` when presence is enough.
    pub fn string_match(&self) -> Option<StringMatch> {
        let Self {
            exact,
            prefix,
            regex,
        } = self.clone();
        exact
            .map(StringMatch::Exact)
            .or(prefix.map(StringMatch::Prefix))
            .or(regex.map(StringMatch::Regex))
    }

    fn count(&self) -> usize {
        [&self.exact, &self.prefix, &self.regex]
            .iter()
            .filter(|m| m.is_some())
            .count()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    pub number: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub redirect_code: Option<u32>,
    #[serde(default)]
    pub derive_port: Option<Unsupported>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    pub status: u32,
    #[serde(default)]
    pub body: Option<HttpBody>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum HttpBody {
    String(String),
    /// Base64, as Istio's `bytes`.
    Bytes(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub uri_regex_rewrite: Option<Unsupported>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Unset or 0: no retries (Istio's reading of the field).
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub per_try_timeout: Option<IstioDuration>,
    /// Envoy retry policies, comma-separated (`5xx,gateway-error,connect-failure,...`).
    #[serde(default)]
    pub retry_on: Option<String>,
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub source_namespace: Option<String>,
}

/// Where a delegated route's routes are: a `VirtualService` without hosts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    pub name: String,
    /// The parent's namespace when unset.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// A route of TLS connections by their SNI (the TLS is not terminated).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    /// The SNIs this match takes (`*` wildcards as in hosts).
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    #[serde(default)]
    pub destination_subnets: Option<Unsupported>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub source_namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<u32>,
}

/// Envoy's retry-on policies Istio passes through.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

impl Validate for VirtualService {
    fn validate(&self, v: &mut Validator) {
        let s = &self.spec;
        if s.hosts.is_empty() {
            // A delegate (child) `VirtualService`, which a parent's `delegate` names: HTTP
            // routes only, and no further delegation (Istio's one level).
            for (i, route) in s.http.iter().enumerate() {
                v.check(
                    route.delegate.is_none(),
                    format!("spec.http[{i}].delegate"),
                    "a delegate VirtualService (no hosts) cannot delegate again",
                );
            }
            v.check(
                s.tcp.is_empty() && s.tls.is_empty(),
                "spec",
                "a delegate VirtualService (no hosts) has HTTP routes only",
            );
        } else {
            validate_hosts(v, &s.hosts);
        }
        v.check(
            !s.http.is_empty() || !s.tcp.is_empty() || !s.tls.is_empty(),
            "spec",
            "at least one http, tls or tcp route is required",
        );
        for (i, route) in s.tls.iter().enumerate() {
            validate_tls_route(v, &format!("spec.tls[{i}]"), route, &s.hosts);
        }
        for (i, route) in s.http.iter().enumerate() {
            validate_http_route(v, &format!("spec.http[{i}]"), route);
        }
        for (i, route) in s.tcp.iter().enumerate() {
            validate_l4_destinations(v, &format!("spec.tcp[{i}].route"), &route.route);
        }
    }
}

/// Istio's rules: a TLS route needs a match with SNI hosts, each within the
/// `VirtualService`'s hosts, and destinations.
fn validate_tls_route(v: &mut Validator, path: &str, route: &TlsRoute, hosts: &[String]) {
    v.check(
        !route.matches.is_empty(),
        format!("{path}.match"),
        "at least one match (with sniHosts) is required",
    );
    for (i, m) in route.matches.iter().enumerate() {
        let path = format!("{path}.match[{i}]");
        v.check(
            !m.sni_hosts.is_empty(),
            format!("{path}.sniHosts"),
            "at least one SNI host is required",
        );
        for (j, sni) in m.sni_hosts.iter().enumerate() {
            let path = format!("{path}.sniHosts[{j}]");
            if !is_host(sni) {
                v.error(path, format!("{sni:?} is not a valid host"));
            } else if !hosts.iter().any(|h| crate::gateway::host_covers(h, sni)) {
                v.error(
                    path,
                    format!("{sni:?} is not within the VirtualService's hosts"),
                );
            }
        }
        if let Some(port) = m.port {
            validate_port(v, &format!("{path}.port"), port);
        }
    }
    validate_l4_destinations(v, &format!("{path}.route"), &route.route);
}

/// A TCP or TLS route's destinations (`path` is the route's `route`): at least one, weights
/// that add up, valid destinations.
fn validate_l4_destinations(v: &mut Validator, path: &str, destinations: &[RouteDestination]) {
    v.check(
        !destinations.is_empty(),
        path,
        "at least one destination is required",
    );
    let weights: Vec<_> = destinations.iter().map(|r| r.weight).collect();
    validate_weights(v, path, &weights);
    for (j, r) in destinations.iter().enumerate() {
        validate_destination(v, &format!("{path}[{j}].destination"), &r.destination);
    }
}

pub(crate) fn validate_value_match(v: &mut Validator, path: &str, m: &ValueMatch) {
    v.check(
        m.count() <= 1,
        path,
        "at most one of exact, prefix or regex",
    );
    if let Some(sm) = m.string_match() {
        validate_string_match(v, path, &sm);
    }
}

fn validate_http_route(v: &mut Validator, path: &str, r: &HttpRoute) {
    if let Some(fault) = &r.fault {
        route_policies::validate_fault(v, &format!("{path}.fault"), fault);
    }
    if let Some(cors) = &r.cors_policy {
        route_policies::validate_cors(v, &format!("{path}.corsPolicy"), cors);
    }
    if let Some(mirror) = &r.mirror {
        validate_destination(v, &format!("{path}.mirror"), mirror);
    }
    route_policies::validate_mirror_percent(
        v,
        &format!("{path}.mirrorPercentage"),
        r.mirror_percentage,
    );
    if let Some(p) = r.mirror_percent {
        v.check(
            p <= 100,
            format!("{path}.mirrorPercent"),
            format!("{p} is more than 100"),
        );
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        validate_destination(
            v,
            &format!("{path}.mirrors[{i}].destination"),
            &m.destination,
        );
        route_policies::validate_mirror_percent(
            v,
            &format!("{path}.mirrors[{i}].percentage"),
            m.percentage,
        );
    }
    let actions = [
        !r.route.is_empty(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
        r.delegate.is_some(),
    ];
    v.check(
        actions.iter().filter(|a| **a).count() == 1,
        path,
        "exactly one of route, redirect, directResponse or delegate is required",
    );
    if let Some(d) = &r.delegate {
        v.check(
            super::meta::is_dns_subdomain(&d.name),
            format!("{path}.delegate.name"),
            format!("{:?} is not a VirtualService name", d.name),
        );
        if let Some(ns) = &d.namespace {
            v.check(
                super::meta::is_dns_label(ns),
                format!("{path}.delegate.namespace"),
                format!("{ns:?} is not a namespace"),
            );
        }
    }
    for (i, m) in r.matches.iter().enumerate() {
        let mpath = format!("{path}.match[{i}]");
        let named = [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ];
        for (name, sm) in named {
            if let Some(sm) = sm {
                validate_string_match(v, &format!("{mpath}.{name}"), sm);
            }
        }
        for (field, map) in [
            ("headers", &m.headers),
            ("queryParams", &m.query_params),
            ("withoutHeaders", &m.without_headers),
        ] {
            for (key, m) in map {
                validate_value_match(v, &format!("{mpath}.{field}.{key}"), m);
            }
        }
        if let Some(port) = m.port {
            validate_port(v, &format!("{mpath}.port"), port);
        }
    }
    let weights: Vec<_> = r.route.iter().map(|d| d.weight).collect();
    validate_weights(v, &format!("{path}.route"), &weights);
    for (i, d) in r.route.iter().enumerate() {
        validate_destination(v, &format!("{path}.route[{i}].destination"), &d.destination);
    }
    if let Some(code) = r
        .redirect
        .as_ref()
        .and_then(|redirect| redirect.redirect_code)
    {
        v.check(
            matches!(code, 301 | 302 | 303 | 307 | 308),
            format!("{path}.redirect.redirectCode"),
            format!("{code} is not a redirect status (301, 302, 303, 307, 308)"),
        );
    }
    if let Some(direct) = &r.direct_response {
        v.check(
            (200..=599).contains(&direct.status),
            format!("{path}.directResponse.status"),
            format!("{} is not an HTTP status", direct.status),
        );
    }
    if let Some(on) = r
        .retries
        .as_ref()
        .and_then(|retries| retries.retry_on.as_ref())
    {
        for policy in on.split(',').map(str::trim) {
            v.check(
                RETRY_ON.contains(&policy) || policy.parse::<u16>().is_ok(),
                format!("{path}.retries.retryOn"),
                format!("{policy:?} is not a retry policy"),
            );
        }
    }
}

fn validate_string_match(v: &mut Validator, path: &str, m: &StringMatch) {
    if let StringMatch::Regex(re) = m
        && let Err(e) = regex::Regex::new(re)
    {
        v.error(
            format!("{path}.regex"),
            format!("invalid regular expression: {e}"),
        );
    }
}

/// Weights: all set or (for a single destination) none; each at most 100; the sum 100.
fn validate_weights(v: &mut Validator, path: &str, weights: &[Option<u32>]) {
    if weights.len() <= 1 && weights.iter().all(Option::is_none) {
        return;
    }
    if weights.iter().any(Option::is_none) {
        v.error(
            path,
            "every destination needs a weight when there are several",
        );
        return;
    }
    let sum: u64 = weights
        .iter()
        .map(|w| u64::from(w.unwrap_or_default()))
        .sum();
    v.check(
        sum == 100,
        path,
        format!("weights add up to {sum}, not 100"),
    );
}

fn validate_destination(v: &mut Validator, path: &str, d: &Destination) {
    v.check(
        is_host(&d.host) && d.host != "*",
        format!("{path}.host"),
        format!("{:?} is not a valid host", d.host),
    );
    if let Some(port) = d.port {
        validate_port(v, &format!("{path}.port.number"), port.number);
    }
}

// ---------------------------------------------------------------------------------------------
// DestinationRule

resource!(
    /// What happens to traffic for a host after routing: subsets, load balancing, outlier
    /// detection, connection pool, TLS origination, locality failover.
    DestinationRule,
    DestinationRuleSpec
);

#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "networking.istio.io",
        version = "v1",
        kind = "DestinationRule",
        plural = "destinationrules",
        shortname = "dr",
        namespaced,
        root = "KubeDestinationRule",
        doc = "Traffic policy for a host: subsets, load balancing, connection pool, outlier detection, TLS."
    )
)]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    pub host: String,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    #[serde(default)]
    pub tunnel: Option<Unsupported>,
    #[serde(default)]
    pub proxy_protocol: Option<Unsupported>,
}

/// `trafficPolicy.portLevelSettings[]`: the policy of one port of the service, in place of the
/// rule's (Istio: a port's settings do not inherit; what they leave unset is the default).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    #[serde(default)]
    pub port: Option<PortSelector>,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
}

impl TrafficPolicy {
    /// This policy's settings for `port`, if it has some.
    fn port_settings(&self, port: u32) -> Option<&PortTrafficPolicy> {
        self.port_level_settings
            .iter()
            .find(|s| s.port.is_some_and(|p| p.number == port))
    }

    /// `merged` with a port's settings in place of all four of its settings.
    fn with_port_settings(mut merged: TrafficPolicy, settings: &PortTrafficPolicy) -> Self {
        merged.load_balancer = settings.load_balancer.clone();
        merged.connection_pool = settings.connection_pool.clone();
        merged.outlier_detection = settings.outlier_detection.clone();
        merged.tls = settings.tls.clone();
        merged
    }

    /// This policy with the settings of `port` in place, when it has some.
    fn for_port(&self, port: u32) -> TrafficPolicy {
        let merged = TrafficPolicy {
            port_level_settings: Vec::new(),
            ..self.clone()
        };
        match self.port_settings(port) {
            Some(settings) => Self::with_port_settings(merged, settings),
            None => merged,
        }
    }
}

impl DestinationRuleSpec {
    /// Every `credentialName` of the rule's TLS settings (rule, ports, subsets).
    pub fn credential_names(&self) -> impl Iterator<Item = &String> {
        fn of_tls(tls: Option<&ClientTlsSettings>) -> Option<&String> {
            tls?.credential_name.as_ref()
        }
        self.traffic_policy
            .iter()
            .chain(
                self.subsets
                    .iter()
                    .filter_map(|s| s.traffic_policy.as_ref()),
            )
            .flat_map(|policy| {
                of_tls(policy.tls.as_ref()).into_iter().chain(
                    policy
                        .port_level_settings
                        .iter()
                        .filter_map(|p| of_tls(p.tls.as_ref())),
                )
            })
    }

    /// The traffic policy of `port` of the host, or of one of its subsets, as Istio merges it:
    /// the rule's policy with its settings for the port; then each setting the subset's
    /// policy gives replaces the rule's, and the subset's settings for the port replace all.
    pub fn policy_for(&self, subset: Option<&str>, port: u32) -> Option<TrafficPolicy> {
        let top = self.traffic_policy.as_ref().map(|p| p.for_port(port));
        let Some(own) = subset
            .and_then(|name| self.subsets.iter().find(|s| s.name == name))
            .and_then(|s| s.traffic_policy.as_ref())
        else {
            return top;
        };
        let mut merged = top.unwrap_or_default();
        if own.load_balancer.is_some() {
            merged.load_balancer = own.load_balancer.clone();
        }
        if own.connection_pool.is_some() {
            merged.connection_pool = own.connection_pool.clone();
        }
        if own.outlier_detection.is_some() {
            merged.outlier_detection = own.outlier_detection.clone();
        }
        if own.tls.is_some() {
            merged.tls = own.tls.clone();
        }
        Some(match own.port_settings(port) {
            Some(settings) => TrafficPolicy::with_port_settings(merged, settings),
            None => merged,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    #[serde(default)]
    pub simple: Option<SimpleLb>,
    #[serde(default)]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Session affinity: requests with the same key go to the same host while it stays.
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHashLb>,
    #[serde(default)]
    pub warmup_duration_secs: Option<Unsupported>,
    #[serde(default)]
    pub warmup: Option<Unsupported>,
}

/// `loadBalancer.consistentHash`: one hash key (a header, a cookie, the source IP or a query
/// parameter) and the ring's size.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    #[serde(default)]
    pub http_header_name: Option<String>,
    #[serde(default)]
    pub http_cookie: Option<HashCookie>,
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    #[serde(default)]
    pub ring_hash: Option<RingHash>,
    /// Maglev's table: consistent hashing too; `isthmus-proxy` hashes the same way for both.
    #[serde(default)]
    pub maglev: Option<MaglevHash>,
    /// Istio's deprecated form of `ringHash.minimumRingSize`.
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HashCookie {
    pub name: String,
    #[serde(default)]
    pub path: Option<String>,
    /// With a TTL, a request without the cookie gets one (set on its response).
    #[serde(default)]
    pub ttl: Option<IstioDuration>,
    #[serde(default)]
    pub attributes: Option<Unsupported>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaglevHash {
    #[serde(default)]
    pub table_size: Option<u64>,
}

impl ConsistentHashLb {
    /// How many hash keys are set (Istio wants exactly one).
    fn keys(&self) -> usize {
        [
            self.http_header_name.is_some(),
            self.http_cookie.is_some(),
            self.use_source_ip == Some(true),
            self.http_query_parameter_name.is_some(),
        ]
        .iter()
        .filter(|k| **k)
        .count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    Unspecified,
    RoundRobin,
    LeastRequest,
    /// Istio's deprecated alias of `LEAST_REQUEST`.
    LeastConn,
    Random,
    Passthrough,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    #[serde(default)]
    pub failover_priority: Vec<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Shares of traffic by locality, for callers of a locality (`from`): no failover then.
    #[serde(default)]
    pub distribute: Vec<LocalityDistribute>,
}

/// Callers in `from` (`region/zone/subzone`, `*` for the rest) send `to`'s shares (percent,
/// adding up to 100) to those localities.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

/// Whether a locality (`region`, `zone`, `subzone`) is within `pattern`: `region/zone/subzone`
/// with `*` for "the rest", and a shorter pattern for all below it (Istio's matching).
pub fn locality_matches(locality: [&str; 3], pattern: &str) -> bool {
    for (i, segment) in pattern.split('/').enumerate() {
        if segment == "*" {
            return true;
        }
        if i >= 3 || locality[i] != segment {
            return false;
        }
    }
    true
}

/// A locality pattern: up to three non-empty `/`-separated parts, `*` only as the last.
fn is_locality_pattern(pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('/').collect();
    parts.len() <= 3
        && parts.iter().all(|p| !p.is_empty())
        && parts
            .iter()
            .enumerate()
            .all(|(i, p)| !p.contains('*') || (*p == "*" && i == parts.len() - 1))
}

fn validate_locality_lb(v: &mut Validator, path: &str, setting: &LocalityLbSetting) {
    if setting.distribute.is_empty() {
        return;
    }
    v.check(
        setting.failover.is_empty() && setting.failover_priority.is_empty(),
        format!("{path}.distribute"),
        "distribute and failover (or failoverPriority) cannot both be set",
    );
    for (i, d) in setting.distribute.iter().enumerate() {
        let path = format!("{path}.distribute[{i}]");
        v.check(
            is_locality_pattern(&d.from),
            format!("{path}.from"),
            format!(
                "{:?} is not a locality (region/zone/subzone, * last)",
                d.from
            ),
        );
        for locality in d.to.keys() {
            v.check(
                is_locality_pattern(locality),
                format!("{path}.to"),
                format!("{locality:?} is not a locality (region/zone/subzone, * last)"),
            );
        }
        let total: u64 = d.to.values().map(|w| u64::from(*w)).sum();
        v.check(
            total == 100,
            format!("{path}.to"),
            format!("the shares add up to {total}, not 100"),
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    #[serde(default)]
    pub http: Option<HttpSettings>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub connect_timeout: Option<IstioDuration>,
    #[serde(default)]
    pub idle_timeout: Option<IstioDuration>,
    /// TCP keepalive on the connections to the service.
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[serde(default)]
    pub max_connection_duration: Option<Unsupported>,
}

/// `connectionPool.tcp.tcpKeepalive`: what the system does not set is its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Unanswered probes before the connection is dropped.
    #[serde(default)]
    pub probes: Option<u32>,
    /// Idle time before the first probe.
    #[serde(default)]
    pub time: Option<IstioDuration>,
    /// Time between probes.
    #[serde(default)]
    pub interval: Option<IstioDuration>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(default)]
    pub http1_max_pending_requests: Option<u32>,
    #[serde(default)]
    pub http2_max_requests: Option<u32>,
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub idle_timeout: Option<IstioDuration>,
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
    /// `UPGRADE`: HTTP/1.1 requests go to the service over HTTP/2.
    #[serde(default)]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    #[serde(default)]
    pub use_client_protocol: Option<Unsupported>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// The mesh's default, which is `DO_NOT_UPGRADE` (Istio's).
    #[default]
    Default,
    DoNotUpgrade,
    Upgrade,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default)]
    pub interval: Option<IstioDuration>,
    #[serde(default)]
    pub base_ejection_time: Option<IstioDuration>,
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
    #[serde(default)]
    pub min_health_percent: Option<u32>,
    /// Istio's deprecated form: gateway errors (502, 503, 504; connection failures on TCP),
    /// read when neither `consecutive5xxErrors` nor `consecutiveGatewayErrors` is set.
    #[serde(default)]
    pub consecutive_errors: Option<u32>,
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<Unsupported>,
    #[serde(default)]
    pub split_external_local_origin_errors: Option<Unsupported>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    #[serde(default)]
    pub mode: TlsMode,
    /// The SNI of a `SIMPLE` or `MUTUAL` origination; the rule's host when unset.
    #[serde(default)]
    pub sni: Option<String>,
    /// The server's certificate must carry one of these (DNS names; `spiffe://` URIs); unset:
    /// the SNI.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// `MUTUAL`: the certificate chain the proxy presents, a PEM file on the proxy's machine.
    #[serde(default)]
    pub client_certificate: Option<String>,
    /// `MUTUAL`: its private key, a PEM file on the proxy's machine.
    #[serde(default)]
    pub private_key: Option<String>,
    /// The roots the server's chain must verify against, a PEM file on the proxy's machine;
    /// unset: the system's roots.
    #[serde(default)]
    pub ca_certificates: Option<String>,
    /// Kubernetes mode: the `Secret` (in the client workload's namespace) holding the client
    /// certificate and key (`MUTUAL`) and the server's roots (`ca.crt`/`cacert`, or the
    /// `Secret` `<name>-cacert`), in place of the file fields.
    #[serde(default)]
    pub credential_name: Option<String>,
    /// Skips verifying the server's certificate (and its name): Istio's escape hatch.
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
    #[serde(default)]
    pub ca_crl: Option<Unsupported>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    #[default]
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

impl Validate for DestinationRule {
    fn validate(&self, v: &mut Validator) {
        let s = &self.spec;
        v.check(
            is_host(&s.host),
            "spec.host",
            format!("{:?} is not a valid host", s.host),
        );
        let mut seen = std::collections::BTreeSet::new();
        for (i, subset) in s.subsets.iter().enumerate() {
            v.check(
                !subset.name.is_empty(),
                format!("spec.subsets[{i}].name"),
                "is required",
            );
            v.check(
                seen.insert(subset.name.as_str()),
                format!("spec.subsets[{i}].name"),
                format!("duplicate subset {:?}", subset.name),
            );
        }
        if let Some(policy) = &s.traffic_policy {
            validate_traffic_policy(v, "spec.trafficPolicy", policy, &s.host);
        }
        for (i, subset) in s.subsets.iter().enumerate() {
            if let Some(policy) = &subset.traffic_policy {
                let path = format!("spec.subsets[{i}].trafficPolicy");
                validate_traffic_policy(v, &path, policy, &s.host);
            }
        }
    }
}

fn validate_traffic_policy(v: &mut Validator, path: &str, policy: &TrafficPolicy, host: &str) {
    validate_policy_settings(
        v,
        path,
        policy.load_balancer.as_ref(),
        policy.outlier_detection.as_ref(),
        policy.tls.as_ref(),
        host,
    );
    let mut ports = std::collections::BTreeSet::new();
    for (i, settings) in policy.port_level_settings.iter().enumerate() {
        let path = format!("{path}.portLevelSettings[{i}]");
        match settings.port {
            None => v.error(format!("{path}.port"), "is required"),
            Some(port) => {
                validate_port(v, &format!("{path}.port.number"), port.number);
                v.check(
                    ports.insert(port.number),
                    format!("{path}.port.number"),
                    format!("port {} has settings already", port.number),
                );
            }
        }
        validate_policy_settings(
            v,
            &path,
            settings.load_balancer.as_ref(),
            settings.outlier_detection.as_ref(),
            settings.tls.as_ref(),
            host,
        );
    }
}

/// The checks a policy and a port's settings share.
fn validate_policy_settings(
    v: &mut Validator,
    path: &str,
    lb: Option<&LoadBalancerSettings>,
    od: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
    host: &str,
) {
    if let Some(lb) = lb {
        if let Some(setting) = &lb.locality_lb_setting {
            validate_locality_lb(
                v,
                &format!("{path}.loadBalancer.localityLbSetting"),
                setting,
            );
        }
        v.check(
            lb.simple != Some(SimpleLb::Passthrough),
            format!("{path}.loadBalancer.simple"),
            "PASSTHROUGH is not supported by Isthmus",
        );
        if let Some(hash) = &lb.consistent_hash {
            let path = format!("{path}.loadBalancer.consistentHash");
            v.check(
                lb.simple.is_none(),
                &path,
                "simple or consistentHash, not both",
            );
            // Without a key, requests spread as with no affinity (Envoy's reading).
            v.check(
                hash.keys() <= 1,
                &path,
                "at most one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
            );
            v.check(
                hash.ring_hash.is_none() || hash.maglev.is_none(),
                &path,
                "ringHash or maglev, not both",
            );
            if let Some(cookie) = &hash.http_cookie {
                v.check(
                    is_token(&cookie.name),
                    format!("{path}.httpCookie.name"),
                    format!("{:?} is not a cookie name", cookie.name),
                );
                if let Some(p) = &cookie.path {
                    v.check(
                        p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic() && b != b';'),
                        format!("{path}.httpCookie.path"),
                        format!("{p:?} is not a cookie path"),
                    );
                }
            }
            if let Some(name) = &hash.http_header_name {
                v.check(
                    is_token(name),
                    format!("{path}.httpHeaderName"),
                    format!("{name:?} is not a header name"),
                );
            }
            if let Some(name) = &hash.http_query_parameter_name {
                v.check(
                    !name.is_empty(),
                    format!("{path}.httpQueryParameterName"),
                    "an empty parameter name",
                );
            }
            // Envoy's bounds: a prime Maglev table of at most 5000011 entries, a ring of at
            // most 8M.
            if let Some(size) = hash.maglev.and_then(|m| m.table_size) {
                v.check(
                    size <= 5_000_011 && is_prime(size),
                    format!("{path}.maglev.tableSize"),
                    format!("{size} is not a prime number up to 5000011"),
                );
            }
            let ring = hash
                .ring_hash
                .and_then(|r| r.minimum_ring_size)
                .or(hash.minimum_ring_size);
            if let Some(size) = ring {
                v.check(
                    size <= 8_388_608,
                    format!("{path}.ringHash.minimumRingSize"),
                    format!("{size} is more than 8388608"),
                );
            }
        }
    }
    if let Some(od) = od {
        for (name, value) in [
            ("maxEjectionPercent", od.max_ejection_percent),
            ("minHealthPercent", od.min_health_percent),
        ] {
            if let Some(p) = value {
                v.check(
                    p <= 100,
                    format!("{path}.outlierDetection.{name}"),
                    format!("{p} is more than 100"),
                );
            }
        }
    }
    if let Some(tls) = tls {
        validate_client_tls(v, &format!("{path}.tls"), tls, host);
    }
}

/// Istio's rules for a `DestinationRule`'s TLS: `MUTUAL` presents a certificate and key; the
/// file fields belong to `SIMPLE` and `MUTUAL`, not to `ISTIO_MUTUAL` (the mesh's own).
fn validate_client_tls(v: &mut Validator, path: &str, tls: &ClientTlsSettings, host: &str) {
    let files = [
        ("clientCertificate", &tls.client_certificate),
        ("privateKey", &tls.private_key),
        ("caCertificates", &tls.ca_certificates),
    ];
    for (name, file) in files {
        v.check(
            file.as_ref().is_none_or(|f| !f.trim().is_empty()),
            format!("{path}.{name}"),
            "an empty file name",
        );
        v.check(
            tls.mode != TlsMode::IstioMutual || file.is_none(),
            format!("{path}.{name}"),
            "not with ISTIO_MUTUAL, which uses the mesh's own certificates",
        );
    }
    if let Some(name) = &tls.credential_name {
        v.check(
            is_dns_subdomain(name),
            format!("{path}.credentialName"),
            format!("{name:?} is not a Secret name"),
        );
        v.check(
            matches!(tls.mode, TlsMode::Simple | TlsMode::Mutual),
            format!("{path}.credentialName"),
            "only with SIMPLE or MUTUAL",
        );
        for (name, file) in files {
            v.check(
                file.is_none(),
                format!("{path}.{name}"),
                "not with credentialName, whose Secret holds it",
            );
        }
    } else if tls.mode == TlsMode::Mutual {
        v.check(
            tls.client_certificate.is_some(),
            format!("{path}.clientCertificate"),
            "MUTUAL needs a client certificate (or credentialName)",
        );
        v.check(
            tls.private_key.is_some(),
            format!("{path}.privateKey"),
            "MUTUAL needs a private key (or credentialName)",
        );
    }
    if let Some(sni) = &tls.sni {
        v.check(
            is_sni(sni),
            format!("{path}.sni"),
            format!("{sni:?} is not a name a TLS client can send"),
        );
    }
    let originates = matches!(tls.mode, TlsMode::Simple | TlsMode::Mutual);
    if originates && tls.sni.is_none() {
        // The host is the SNI, and without subjectAltNames the name the server is checked for.
        let checked_some_other_way =
            !tls.subject_alt_names.is_empty() || tls.insecure_skip_verify == Some(true);
        if host.starts_with('*') {
            v.check(
                checked_some_other_way,
                format!("{path}.sni"),
                "a wildcard host with SIMPLE or MUTUAL needs sni or subjectAltNames: taking the SNI from each request is not supported by Isthmus",
            );
        } else {
            v.check(
                is_sni(host),
                "spec.host",
                format!("{host:?} is not a name a TLS client can send as SNI: set tls.sni"),
            );
        }
    }
}

/// A DNS name a TLS client can send (rustls' rules: no numeric last label, no wildcard).
fn is_sni(name: &str) -> bool {
    !name.contains('*')
        && name.parse::<std::net::IpAddr>().is_err()
        && rustls_pki_types::DnsName::try_from(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::is_ip_or_cidr;

    #[test]
    fn service_entry_addresses_are_ips_or_cidr_ranges() {
        for good in [
            "10.96.0.10",
            "10.96.0.0/16",
            "fd00::1",
            "fd00::/64",
            "0.0.0.0/0",
        ] {
            assert!(is_ip_or_cidr(good), "{good}");
        }
        for bad in [
            "",
            "reviews",
            "10.96.0.0/33",
            "fd00::/129",
            "10.96.0.0/",
            "10.96/16",
        ] {
            assert!(!is_ip_or_cidr(bad), "{bad}");
        }
    }
}

#[cfg(test)]
mod locality_tests {
    use super::{is_locality_pattern, locality_matches};

    #[test]
    fn locality_patterns_match_as_istio_reads_them() {
        let here = ["us-west", "zone1", "sub1"];
        for (pattern, matches) in [
            ("*", true),
            ("us-west", true),
            ("us-west/*", true),
            ("us-west/zone1/*", true),
            ("us-west/zone1/sub1", true),
            ("us-west/zone2/*", false),
            ("us-east/*", false),
            ("us-west/zone1/sub2", false),
        ] {
            assert_eq!(locality_matches(here, pattern), matches, "{pattern}");
        }
        for (pattern, ok) in [
            ("us-west/zone1/*", true),
            ("*", true),
            ("us-*/zone1", false),
            ("*/zone1", false),
            ("a/b/c/d", false),
            ("a//b", false),
        ] {
            assert_eq!(is_locality_pattern(pattern), ok, "{pattern}");
        }
    }
}
