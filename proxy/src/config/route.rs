//! `RouteConfiguration` (RDS): virtual hosts by authority, routes in order (first match wins),
//! and what a matched route does — forward to a cluster or a weighted split, redirect, or answer
//! directly — with timeouts, retries and header edits.

use std::collections::HashMap;
use std::time::Duration;

use http::StatusCode;
use http::uri::{Authority, PathAndQuery, Scheme};
use isthmus_proto::envoy::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, data_source, header_value_option,
};
use isthmus_proto::envoy::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, RetryPolicy as EnvoyRetry, Route as EnvoyRoute,
    RouteAction, RouteConfiguration, RouteMatch as EnvoyMatch, VirtualHost as EnvoyVirtualHost,
    WeightedCluster, redirect_action, retry_policy::retry_host_predicate, route, route_action,
    route_match, weighted_cluster,
};
use isthmus_proto::envoy::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use isthmus_proto::envoy::google::protobuf::Any;
use regex::Regex;

use super::check::{Checked, Invalid, Path, each, reject_set, required};
use super::decode::{duration, opt_duration, short_type, typed, u32_or};
use super::matcher::{self, HeaderMatch, QueryMatch};
use super::rbac::{self, Rules};
use super::route_policies::{self, Cors, Fault, Mirror};

/// The largest direct response body accepted (Envoy's default limit).
const MAX_DIRECT_BODY: usize = 4096;
/// Envoy's default route timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    pub headers: Edits,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<Domain>,
    pub routes: Vec<Route>,
    pub headers: Edits,
    /// Per HTTP filter (by name): the RBAC rules that replace the filter's own here.
    pub rbac: HashMap<String, Option<Rules>>,
    /// Fault injection and CORS for the virtual host's routes that set none of their own.
    pub policies: RoutePolicies,
}

/// What the fault and CORS filters do on a route (or a virtual host), when the connection
/// manager has those filters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoutePolicies {
    pub fault: Option<Fault>,
    pub cors: Option<Cors>,
}

/// How a virtual host's domain matches the authority (port included or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    Any,
    Exact(String),
    /// `*.example.com`: the part after `*`.
    Suffix(String),
    /// `example.*`: the part before `*`.
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    pub headers: Edits,
    pub rbac: HashMap<String, Option<Rules>>,
    pub policies: RoutePolicies,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
    /// A prefix that ends at a `/` boundary (or the end of the path).
    SeparatedPrefix(String),
    /// `connect_matcher`: CONNECT requests only (no other matcher matches them).
    Connect,
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Prefix(a), Self::Prefix(b))
            | (Self::Exact(a), Self::Exact(b))
            | (Self::SeparatedPrefix(a), Self::SeparatedPrefix(b)) => a == b,
            (Self::Regex(a), Self::Regex(b)) => a.as_str() == b.as_str(),
            (Self::Connect, Self::Connect) => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    /// Only gRPC requests (content-type application/grpc*).
    pub grpc: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    Direct {
        status: StatusCode,
        body: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub targets: Targets,
    /// `None`: no timeout (Envoy's `0s`).
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub retry: Option<Retry>,
    /// Replaces the matched prefix; checked to be path characters, so that the rewritten path
    /// is always a path.
    pub prefix_rewrite: Option<String>,
    /// `host_rewrite_literal`: the authority sent upstream instead of the request's.
    pub host_rewrite: Option<Authority>,
    /// A CONNECT request is terminated here and its payload sent as TCP to the cluster
    /// (`upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]`).
    pub terminate_connect: bool,
    /// Copies of the requests to other clusters (`request_mirror_policies`).
    pub mirrors: Vec<Mirror>,
    /// What a consistent-hash cluster hashes the request on (`hash_policy`), in order.
    pub hash: Vec<HashKey>,
}

/// One part of a request's hash (Envoy's `hash_policy`).
#[derive(Debug, Clone, PartialEq)]
pub enum HashKey {
    Header(http::HeaderName),
    /// A cookie's value; with a TTL, a request without the cookie gets one (on its response).
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: String,
    },
    SourceIp,
    QueryParameter(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    Cluster(String),
    Weighted(Vec<WeightedTarget>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct WeightedTarget {
    pub cluster: String,
    pub weight: u32,
    pub headers: Edits,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<StatusCode>,
    pub base_interval: Duration,
    pub max_interval: Duration,
    /// `retry_host_predicate` `previous_hosts`: a retry goes to a host not tried yet, when
    /// there is one (`host_selection_retry_max_attempts` is checked, and needs no count here).
    pub avoid_previous_hosts: bool,
}

/// The one retry host predicate this proxy implements.
pub const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

/// Envoy's `retry_on` conditions that this proxy implements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, or no response (reset, connect failure).
    pub server_error: bool,
    /// `gateway-error`: 502, 503, 504.
    pub gateway_error: bool,
    /// `reset`: no response at all.
    pub reset: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `retriable-status-codes`: the codes listed.
    pub retriable_status_codes: bool,
    /// `refused-stream`: an HTTP/2 REFUSED_STREAM reset.
    pub refused_stream: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// gRPC statuses (from `grpc-status` in the response headers): `cancelled`,
    /// `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`.
    pub grpc: GrpcRetryOn,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrpcRetryOn {
    pub cancelled: bool,
    pub deadline_exceeded: bool,
    pub internal: bool,
    pub resource_exhausted: bool,
    pub unavailable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// Lower case.
    pub scheme: Option<Scheme>,
    pub host: Option<Authority>,
    pub port: Option<u16>,
    /// `path_redirect`: the whole path (and query, if it has one); checked to fit `Location`.
    pub path: Option<String>,
    /// `prefix_rewrite`; checked to fit `Location`.
    pub prefix_rewrite: Option<String>,
    pub strip_query: bool,
    /// 301, 302, 303, 307 or 308.
    pub status: StatusCode,
}

/// Header edits of one level (configuration, virtual host, route, weighted cluster).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    pub request: HeaderEdits,
    pub response: HeaderEdits,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    pub add: Vec<HeaderAdd>,
    pub remove: Vec<http::HeaderName>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderAdd {
    pub name: http::HeaderName,
    pub value: http::HeaderValue,
    pub action: AppendAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

pub fn convert(rc: RouteConfiguration, path: &Path) -> Checked<RouteTable> {
    let RouteConfiguration {
        name,
        virtual_hosts,
        vhds,
        internal_only_headers,
        response_headers_to_add,
        response_headers_to_remove,
        request_headers_to_add,
        request_headers_to_remove,
        most_specific_header_mutations_wins,
        validate_clusters: _,
        max_direct_response_body_size_bytes,
        cluster_specifier_plugins,
        request_mirror_policies,
        ignore_port_in_host_matching,
        vhost_header,
        ignore_path_parameters_in_path_matching,
        typed_per_filter_config,
        metadata: _,
        route_specifiers,
    } = rc;
    reject_set!(path; vhds, internal_only_headers, most_specific_header_mutations_wins,
        max_direct_response_body_size_bytes, cluster_specifier_plugins, request_mirror_policies,
        ignore_port_in_host_matching, vhost_header, ignore_path_parameters_in_path_matching,
        typed_per_filter_config, route_specifiers);
    if name.is_empty() {
        return Err(Invalid::required(&path.field("name")));
    }
    Ok(RouteTable {
        virtual_hosts: each(virtual_hosts, path, "virtual_hosts", virtual_host)?,
        headers: edits(
            (request_headers_to_add, request_headers_to_remove),
            (response_headers_to_add, response_headers_to_remove),
            path,
        )?,
        name,
    })
}

fn virtual_host(vh: EnvoyVirtualHost, path: &Path) -> Checked<VirtualHost> {
    #[allow(deprecated)]
    let EnvoyVirtualHost {
        name,
        domains,
        routes,
        matcher,
        require_tls,
        virtual_clusters,
        rate_limits,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        cors,
        typed_per_filter_config,
        include_request_attempt_count,
        include_attempt_count_in_response,
        retry_policy,
        retry_policy_typed_config,
        hedge_policy,
        include_is_timeout_retry_header,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        request_mirror_policies,
        metadata: _,
        route_specifiers,
    } = vh;
    reject_set!(path; matcher, require_tls, virtual_clusters, rate_limits, cors,
        include_request_attempt_count, include_attempt_count_in_response, retry_policy,
        retry_policy_typed_config, hedge_policy, include_is_timeout_retry_header,
        per_request_buffer_limit_bytes, request_body_buffer_limit, request_mirror_policies,
        route_specifiers);
    if domains.is_empty() {
        return Err(Invalid::required(&path.field("domains")));
    }
    let domains = each(domains, path, "domains", domain)?;
    let routes = each(routes, path, "routes", self::route)?;
    let (headers, rbac, policies) = level(
        (request_headers_to_add, request_headers_to_remove),
        (response_headers_to_add, response_headers_to_remove),
        typed_per_filter_config,
        path,
    )?;
    Ok(VirtualHost {
        name,
        domains,
        routes,
        headers,
        rbac,
        policies,
    })
}

fn domain(d: String, path: &Path) -> Checked<Domain> {
    let d = d.to_ascii_lowercase();
    if d == "*" {
        return Ok(Domain::Any);
    }
    match (d.strip_prefix('*'), d.strip_suffix('*')) {
        (Some(rest), _) if !rest.contains('*') && !rest.is_empty() => {
            Ok(Domain::Suffix(rest.to_owned()))
        }
        (_, Some(rest)) if !rest.contains('*') && !rest.is_empty() => {
            Ok(Domain::Prefix(rest.to_owned()))
        }
        _ if d.contains('*') => Err(Invalid::new(
            path,
            "a wildcard only at the start or the end",
        )),
        _ if d.is_empty() => Err(Invalid::required(path)),
        _ => Ok(Domain::Exact(d)),
    }
}

/// What a virtual host and a route both carry, in this order: the header edits of their level,
/// their RBAC overrides per filter, and their fault and CORS (`typed_per_filter_config`).
fn level(
    request: (Vec<HeaderValueOption>, Vec<String>),
    response: (Vec<HeaderValueOption>, Vec<String>),
    typed_per_filter_config: HashMap<String, Any>,
    path: &Path,
) -> Checked<(Edits, HashMap<String, Option<Rules>>, RoutePolicies)> {
    let (rbac, policies) = per_filter(
        typed_per_filter_config,
        &path.field("typed_per_filter_config"),
    )?;
    Ok((edits(request, response, path)?, rbac, policies))
}

/// RBAC overrides per filter name, and the fault and CORS filters' settings; anything else per
/// filter is outside the profile.
fn per_filter(
    configs: HashMap<String, Any>,
    path: &Path,
) -> Checked<(HashMap<String, Option<Rules>>, RoutePolicies)> {
    let mut rbac = HashMap::new();
    let mut policies = RoutePolicies::default();
    // In name order, so that an error names the same filter every time.
    let mut configs: Vec<(String, Any)> = configs.into_iter().collect();
    configs.sort_by(|a, b| a.0.cmp(&b.0));
    for (filter, any) in configs {
        let path = path.key(&filter).typed("typed_config", short_type(&any));
        match any.type_url.rsplit('/').next().unwrap_or_default() {
            "envoy.extensions.filters.http.rbac.v3.RBACPerRoute" => {
                rbac.insert(filter, rbac::per_route(&any, &path)?);
            }
            route_policies::FAULT_TYPE => {
                policies.fault = Some(route_policies::fault(&any, &path)?);
            }
            route_policies::CORS_POLICY_TYPE => {
                policies.cors = Some(route_policies::cors(&any, &path)?);
            }
            _ => {
                return Err(Invalid::new(
                    &path,
                    "only RBACPerRoute, HTTPFault or CorsPolicy",
                ));
            }
        }
    }
    Ok((rbac, policies))
}

fn route(r: EnvoyRoute, path: &Path) -> Checked<Route> {
    let EnvoyRoute {
        name,
        r#match,
        metadata: _,
        decorator,
        typed_per_filter_config,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        tracing,
        per_request_buffer_limit_bytes,
        stat_prefix: _,
        request_body_buffer_limit,
        route_specifiers,
        action,
    } = r;
    reject_set!(path; decorator, tracing, per_request_buffer_limit_bytes, request_body_buffer_limit, route_specifiers);
    let matcher = route_match(
        required(r#match, &path.field("match"))?,
        &path.field("match"),
    )?;
    let action = self::action(required(action, &path.field("action"))?, path)?;
    let (headers, rbac, policies) = level(
        (request_headers_to_add, request_headers_to_remove),
        (response_headers_to_add, response_headers_to_remove),
        typed_per_filter_config,
        path,
    )?;
    Ok(Route {
        name,
        matcher,
        action,
        headers,
        rbac,
        policies,
    })
}

fn route_match(m: EnvoyMatch, path: &Path) -> Checked<RouteMatch> {
    let EnvoyMatch {
        case_sensitive,
        runtime_fraction,
        headers,
        query_parameters,
        cookies,
        grpc,
        tls_context,
        dynamic_metadata,
        filter_state,
        path_specifier,
    } = m;
    reject_set!(path; runtime_fraction, cookies, tls_context, dynamic_metadata, filter_state);
    let case_sensitive = case_sensitive.is_none_or(|b| b.value);
    let path_match = match required(path_specifier, path)? {
        route_match::PathSpecifier::Prefix(p) => PathMatch::Prefix(p),
        route_match::PathSpecifier::Path(p) => PathMatch::Exact(p),
        route_match::PathSpecifier::PathSeparatedPrefix(p) => PathMatch::SeparatedPrefix(p),
        route_match::PathSpecifier::SafeRegex(r) => {
            PathMatch::Regex(matcher::regex(r, &path.field("safe_regex"))?)
        }
        route_match::PathSpecifier::ConnectMatcher(_) => PathMatch::Connect,
        _ => {
            return Err(Invalid::new(
                path,
                "only prefix, path, path_separated_prefix, safe_regex or connect_matcher",
            ));
        }
    };
    Ok(RouteMatch {
        path: path_match,
        case_sensitive,
        headers: each(headers, path, "headers", matcher::header)?,
        query: each(query_parameters, path, "query_parameters", matcher::query)?,
        grpc: grpc.is_some(),
    })
}

fn action(a: route::Action, path: &Path) -> Checked<Action> {
    match a {
        route::Action::Route(r) => forward(r, &path.field("route")).map(Action::Forward),
        route::Action::Redirect(r) => redirect(r, &path.field("redirect")).map(Action::Redirect),
        route::Action::DirectResponse(d) => direct(d, &path.field("direct_response")),
        _ => Err(Invalid::new(
            path,
            "only route, redirect or direct_response",
        )),
    }
}

fn forward(r: RouteAction, path: &Path) -> Checked<Forward> {
    #[allow(deprecated)]
    let RouteAction {
        cluster_not_found_response_code,
        metadata_match,
        prefix_rewrite,
        regex_rewrite,
        path_rewrite_policy,
        path_rewrite,
        append_x_forwarded_host,
        timeout,
        idle_timeout,
        flush_timeout,
        early_data_policy,
        retry_policy,
        retry_policy_typed_config,
        request_mirror_policies,
        priority,
        rate_limits,
        include_vh_rate_limits,
        hash_policy,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
        cluster_specifier,
        host_rewrite_specifier,
    } = r;
    reject_set!(path; cluster_not_found_response_code, metadata_match, regex_rewrite, path_rewrite_policy,
        path_rewrite, append_x_forwarded_host, flush_timeout, early_data_policy, retry_policy_typed_config,
        priority, rate_limits, include_vh_rate_limits, cors,
        max_grpc_timeout, grpc_timeout_offset, internal_redirect_policy,
        internal_redirect_action, max_internal_redirects, hedge_policy, max_stream_duration);
    let targets = match required(cluster_specifier, path)? {
        route_action::ClusterSpecifier::Cluster(c) if !c.is_empty() => Targets::Cluster(c),
        route_action::ClusterSpecifier::WeightedClusters(w) => {
            weighted(w, &path.field("weighted_clusters"))?
        }
        _ => return Err(Invalid::new(path, "only cluster or weighted_clusters")),
    };
    let timeout = match opt_duration(timeout, &path.field("timeout"))? {
        None => Some(DEFAULT_TIMEOUT),
        Some(Duration::ZERO) => None,
        Some(t) => Some(t),
    };
    let host_rewrite = match host_rewrite_specifier {
        None => None,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => {
            Some(authority(h, &path.field("host_rewrite_literal"))?)
        }
        Some(_) => return Err(Invalid::new(path, "only host_rewrite_literal")),
    };
    let prefix_rewrite = match prefix_rewrite.as_str() {
        "" => None,
        _ => Some(path_chars(prefix_rewrite, &path.field("prefix_rewrite"))?),
    };
    Ok(Forward {
        targets,
        timeout,
        idle_timeout: opt_duration(idle_timeout, &path.field("idle_timeout"))?,
        retry: retry_policy
            .map(|r| retry(r, &path.field("retry_policy")))
            .transpose()?,
        prefix_rewrite,
        host_rewrite,
        terminate_connect: connect_upgrade(upgrade_configs, &path.field("upgrade_configs"))?,
        mirrors: each(
            request_mirror_policies,
            path,
            "request_mirror_policies",
            route_policies::mirror,
        )?,
        hash: each(hash_policy, path, "hash_policy", hash_key)?,
    })
}

fn hash_key(p: route_action::HashPolicy, path: &Path) -> Checked<HashKey> {
    use route_action::hash_policy::PolicySpecifier;
    let route_action::HashPolicy {
        policy_specifier,
        terminal,
    } = p;
    reject_set!(path; terminal);
    Ok(match required(policy_specifier, path)? {
        PolicySpecifier::Header(h) => {
            let path = path.field("header");
            let regex_rewrite = h.regex_rewrite;
            reject_set!(path; regex_rewrite);
            HashKey::Header(
                http::HeaderName::try_from(h.header_name.as_str()).map_err(|_| {
                    Invalid::new(
                        &path.field("header_name"),
                        format!("{:?} is not a header name", h.header_name),
                    )
                })?,
            )
        }
        PolicySpecifier::Cookie(c) => {
            let path = path.field("cookie");
            let attributes = c.attributes;
            reject_set!(path; attributes);
            if c.name.is_empty()
                || !c
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"=;,\"".contains(&b))
            {
                return Err(Invalid::new(
                    &path.field("name"),
                    format!("{:?} is not a cookie name", c.name),
                ));
            }
            HashKey::Cookie {
                name: c.name,
                ttl: c
                    .ttl
                    .map(|t| duration(&t, &path.field("ttl")))
                    .transpose()?,
                path: c.path,
            }
        }
        PolicySpecifier::ConnectionProperties(c) if c.source_ip => HashKey::SourceIp,
        PolicySpecifier::QueryParameter(q) if !q.name.is_empty() => HashKey::QueryParameter(q.name),
        _ => {
            return Err(Invalid::new(
                path,
                "only header, cookie, connection_properties.source_ip or query_parameter",
            ));
        }
    })
}

/// Route-level upgrades: only CONNECT terminated here (with `connect_config`).
fn connect_upgrade(upgrades: Vec<route_action::UpgradeConfig>, path: &Path) -> Checked<bool> {
    let mut terminate = false;
    for (i, upgrade) in upgrades.into_iter().enumerate() {
        let path = path.index(i);
        let route_action::UpgradeConfig {
            upgrade_type,
            enabled,
            connect_config,
        } = upgrade;
        if !upgrade_type.eq_ignore_ascii_case("CONNECT") || connect_config.is_none() {
            return Err(Invalid::new(
                &path,
                "only upgrade_type CONNECT with connect_config (terminated here)",
            ));
        }
        if let Some(c) = connect_config {
            let route_action::upgrade_config::ConnectConfig {
                proxy_protocol_config,
                allow_post,
            } = c;
            reject_set!(path.field("connect_config"); proxy_protocol_config, allow_post);
        }
        terminate = enabled.is_none_or(|e| e.value);
    }
    Ok(terminate)
}

fn weighted(w: WeightedCluster, path: &Path) -> Checked<Targets> {
    #[allow(deprecated)]
    let WeightedCluster {
        clusters,
        total_weight,
        runtime_key_prefix,
        random_value_specifier,
    } = w;
    reject_set!(path; total_weight, runtime_key_prefix, random_value_specifier);
    let targets = each(clusters, path, "clusters", |c, path| {
        let weighted_cluster::ClusterWeight {
            name,
            cluster_header,
            weight,
            metadata_match,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            typed_per_filter_config,
            host_rewrite_specifier,
        } = c;
        reject_set!(path; cluster_header, metadata_match, typed_per_filter_config, host_rewrite_specifier);
        if name.is_empty() {
            return Err(Invalid::required(&path.field("name")));
        }
        Ok(WeightedTarget {
            cluster: name,
            weight: u32_or(weight, 0),
            headers: edits(
                (request_headers_to_add, request_headers_to_remove),
                (response_headers_to_add, response_headers_to_remove),
                path,
            )?,
        })
    })?;
    let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    if total == 0 {
        return Err(Invalid::new(
            &path.field("clusters"),
            "the weights add up to zero",
        ));
    }
    Ok(Targets::Weighted(targets))
}

fn retry(r: EnvoyRetry, path: &Path) -> Checked<Retry> {
    let EnvoyRetry {
        retry_on,
        num_retries,
        per_try_timeout,
        per_try_idle_timeout,
        retry_priority,
        retry_host_predicate,
        retry_options_predicates,
        host_selection_retry_max_attempts,
        retriable_status_codes,
        retry_back_off,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
        refresh_cluster_on_retry,
    } = r;
    reject_set!(path; per_try_idle_timeout, retry_priority, retry_options_predicates,
        rate_limited_retry_back_off, retriable_headers, retriable_request_headers,
        refresh_cluster_on_retry);
    let mut avoid_previous_hosts = false;
    for (i, predicate) in retry_host_predicate.into_iter().enumerate() {
        let path = path.field("retry_host_predicate").index(i);
        if predicate.name != PREVIOUS_HOSTS {
            return Err(Invalid::new(
                &path.field("name"),
                format!(
                    "{:?} is not supported by isthmus-proxy (only {PREVIOUS_HOSTS})",
                    predicate.name
                ),
            ));
        }
        if let Some(retry_host_predicate::ConfigType::TypedConfig(any)) = &predicate.config_type {
            typed::<PreviousHostsPredicate>(any, &path.field("typed_config"))?;
        }
        avoid_previous_hosts = true;
    }
    if host_selection_retry_max_attempts < 0 {
        return Err(Invalid::new(
            &path.field("host_selection_retry_max_attempts"),
            format!("{host_selection_retry_max_attempts} is not a count"),
        ));
    }
    let mut on = RetryOn::default();
    for condition in retry_on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match condition {
            "5xx" => on.server_error = true,
            "gateway-error" => on.gateway_error = true,
            "reset" | "reset-before-request" => on.reset = true,
            "connect-failure" => on.connect_failure = true,
            "retriable-status-codes" => on.retriable_status_codes = true,
            "refused-stream" => on.refused_stream = true,
            "retriable-4xx" => on.retriable_4xx = true,
            "cancelled" => on.grpc.cancelled = true,
            "deadline-exceeded" => on.grpc.deadline_exceeded = true,
            "internal" => on.grpc.internal = true,
            "resource-exhausted" => on.grpc.resource_exhausted = true,
            "unavailable" => on.grpc.unavailable = true,
            other => {
                return Err(Invalid::new(
                    &path.field("retry_on"),
                    format!("{other:?} is not supported by isthmus-proxy"),
                ));
            }
        }
    }
    let codes = retriable_status_codes
        .into_iter()
        .map(|c| {
            u16::try_from(c)
                .ok()
                .filter(|c| (100..600).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| {
                    Invalid::new(
                        &path.field("retriable_status_codes"),
                        format!("{c} is not an HTTP status"),
                    )
                })
        })
        .collect::<Checked<_>>()?;
    let (mut base, mut max) = (Duration::from_millis(25), None);
    if let Some(b) = retry_back_off {
        let path = path.field("retry_back_off");
        base = duration(
            &required(b.base_interval, &path.field("base_interval"))?,
            &path,
        )?;
        max = opt_duration(b.max_interval, &path.field("max_interval"))?;
    }
    if base.is_zero() {
        return Err(Invalid::new(
            &path.field("retry_back_off").field("base_interval"),
            "must be positive",
        ));
    }
    Ok(Retry {
        on,
        num_retries: u32_or(num_retries, 1),
        per_try_timeout: opt_duration(per_try_timeout, &path.field("per_try_timeout"))?
            .filter(|d| !d.is_zero()),
        retriable_status_codes: codes,
        base_interval: base,
        max_interval: max.unwrap_or(base * 10),
        avoid_previous_hosts,
    })
}

fn redirect(r: RedirectAction, path: &Path) -> Checked<Redirect> {
    let RedirectAction {
        host_redirect,
        port_redirect,
        response_code,
        strip_query,
        scheme_rewrite_specifier,
        path_rewrite_specifier,
    } = r;
    let status = match response_code {
        0 => StatusCode::MOVED_PERMANENTLY,
        1 => StatusCode::FOUND,
        2 => StatusCode::SEE_OTHER,
        3 => StatusCode::TEMPORARY_REDIRECT,
        4 => StatusCode::PERMANENT_REDIRECT,
        other => {
            return Err(Invalid::new(
                &path.field("response_code"),
                format!("unknown code {other}"),
            ));
        }
    };
    let scheme = match scheme_rewrite_specifier {
        None => None,
        Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true)) => Some(Scheme::HTTPS),
        Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(false)) => None,
        Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s)) => {
            let lower = s.to_ascii_lowercase();
            Some(lower.parse::<Scheme>().map_err(|_| {
                Invalid::new(
                    &path.field("scheme_redirect"),
                    format!("{s:?} is not a URI scheme"),
                )
            })?)
        }
    };
    let (mut redirect_path, mut prefix) = (None, None);
    match path_rewrite_specifier {
        None => {}
        Some(redirect_action::PathRewriteSpecifier::PathRedirect(p)) => {
            redirect_path = Some(location_part(p, &path.field("path_redirect"))?);
        }
        Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(p)) => {
            prefix = Some(location_part(p, &path.field("prefix_rewrite"))?);
        }
        Some(_) => return Err(Invalid::new(path, "only path_redirect or prefix_rewrite")),
    }
    let host = match host_redirect.as_str() {
        "" => None,
        _ => Some(authority(host_redirect, &path.field("host_redirect"))?),
    };
    Ok(Redirect {
        scheme,
        host,
        port: match port_redirect {
            0 => None,
            p => Some(
                u16::try_from(p)
                    .map_err(|_| Invalid::new(&path.field("port_redirect"), "not a port"))?,
            ),
        },
        path: redirect_path,
        prefix_rewrite: prefix,
        strip_query,
        status,
    })
}

fn direct(d: DirectResponseAction, path: &Path) -> Checked<Action> {
    let DirectResponseAction {
        status,
        body,
        body_format,
    } = d;
    reject_set!(path; body_format);
    let status = u16::try_from(status)
        .ok()
        .filter(|s| (200..600).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            Invalid::new(
                &path.field("status"),
                format!("{status} is not an HTTP status"),
            )
        })?;
    let body = body
        .map(|b| inline_text(b, &path.field("body")))
        .transpose()?;
    Ok(Action::Direct { status, body })
}

fn inline_text(source: DataSource, path: &Path) -> Checked<String> {
    let DataSource {
        watched_directory,
        specifier,
    } = source;
    reject_set!(path; watched_directory);
    let bytes = match specifier {
        Some(data_source::Specifier::InlineString(s)) => s.into_bytes(),
        Some(data_source::Specifier::InlineBytes(b)) => b,
        _ => return Err(Invalid::new(path, "only inline_string or inline_bytes")),
    };
    if bytes.len() > MAX_DIRECT_BODY {
        return Err(Invalid::new(
            path,
            format!("longer than {MAX_DIRECT_BODY} bytes"),
        ));
    }
    String::from_utf8(bytes).map_err(|_| Invalid::new(path, "not UTF-8"))
}

fn edits(
    request: (Vec<HeaderValueOption>, Vec<String>),
    response: (Vec<HeaderValueOption>, Vec<String>),
    path: &Path,
) -> Checked<Edits> {
    Ok(Edits {
        request: one_direction(request.0, request.1, path, "request")?,
        response: one_direction(response.0, response.1, path, "response")?,
    })
}

fn one_direction(
    add: Vec<HeaderValueOption>,
    remove: Vec<String>,
    path: &Path,
    direction: &str,
) -> Checked<HeaderEdits> {
    let add_path = path.field(&format!("{direction}_headers_to_add"));
    let add = add
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let path = add_path.index(i);
            #[allow(deprecated)]
            let HeaderValueOption {
                header,
                append,
                append_action,
                keep_empty_value,
            } = o;
            reject_set!(path; append, keep_empty_value);
            let HeaderValue {
                key,
                value,
                raw_value,
            } = required(header, &path.field("header"))?;
            let value = if raw_value.is_empty() {
                value
            } else {
                String::from_utf8(raw_value).map_err(|_| {
                    Invalid::new(&path.field("header").field("raw_value"), "not UTF-8")
                })?
            };
            let name = header_name(&key, &path.field("header").field("key"))?;
            let value = http::HeaderValue::from_str(&value).map_err(|_| {
                Invalid::new(
                    &path.field("header").field("value"),
                    "not a valid header value",
                )
            })?;
            use header_value_option::HeaderAppendAction as A;
            let action = match A::try_from(append_action) {
                Ok(A::AppendIfExistsOrAdd) => AppendAction::AppendIfExistsOrAdd,
                Ok(A::AddIfAbsent) => AppendAction::AddIfAbsent,
                Ok(A::OverwriteIfExistsOrAdd) => AppendAction::OverwriteIfExistsOrAdd,
                Ok(A::OverwriteIfExists) => AppendAction::OverwriteIfExists,
                Err(_) => return Err(Invalid::new(&path.field("append_action"), "unknown action")),
            };
            Ok(HeaderAdd {
                name,
                value,
                action,
            })
        })
        .collect::<Checked<_>>()?;
    let remove_path = path.field(&format!("{direction}_headers_to_remove"));
    let remove = remove
        .iter()
        .enumerate()
        .map(|(i, name)| header_name(name, &remove_path.index(i)))
        .collect::<Checked<_>>()?;
    Ok(HeaderEdits { add, remove })
}

/// A header name (any case; kept lower case, as HTTP/2 sends it).
fn header_name(name: &str, path: &Path) -> Checked<http::HeaderName> {
    http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| Invalid::new(path, format!("{name:?} is not a header name")))
}

/// An authority (`host` or `host:port`) as it goes into a URI and a `Host` header.
fn authority(value: String, path: &Path) -> Checked<Authority> {
    let parsed = value.parse::<Authority>().ok();
    parsed
        .filter(|a| !a.host().is_empty() && !a.as_str().contains('@'))
        .ok_or_else(|| Invalid::new(path, format!("{value:?} is not a host or host:port")))
}

/// A part of a redirect's `Location`: text a header value may hold.
fn location_part(value: String, path: &Path) -> Checked<String> {
    match http::HeaderValue::from_str(&value) {
        Ok(_) => Ok(value),
        Err(_) => Err(Invalid::new(
            path,
            format!("{value:?} cannot be part of a Location header"),
        )),
    }
}

/// A path prefix: only characters a path may hold, so that a path rewritten with it is one.
fn path_chars(value: String, path: &Path) -> Checked<String> {
    if PathAndQuery::try_from(value.as_str()).is_err() {
        return Err(Invalid::new(
            path,
            format!("{value:?} holds characters a path may not"),
        ));
    }
    Ok(value)
}
