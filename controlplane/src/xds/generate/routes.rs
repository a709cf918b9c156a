//! The outbound route configuration: a virtual host per HTTP (service, port), its routes from
//! the service's `VirtualService`, or one default route to the service.
//!
//! Istio's semantics carried over: a `VirtualService` replaces the default route (a request
//! matching none of its routes gets 404); an HTTP route's `match` list is an OR, each entry one
//! Envoy route; `match.port`, `sourceLabels` and `sourceNamespace` are decided here, for this
//! proxy; timeouts are off unless set; two retries on connection failures and 503 by default.

use std::collections::BTreeSet;
use std::time::Duration;

use isthmus_api::networking::{
    Destination, Headers, HttpMatchRequest, HttpRetry, HttpRoute, StringMatch,
};
use isthmus_proto::envoy::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, data_source, header_value_option,
};
use isthmus_proto::envoy::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, header_matcher,
    query_parameter_matcher, redirect_action, retry_policy, route, route_action, route_match,
    weighted_cluster,
};
use isthmus_proto::envoy::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use isthmus_proto::envoy::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher,
};
use isthmus_proto::envoy::google::protobuf::{BoolValue, UInt32Value};

use base64::Engine;

use super::names::{OUTBOUND_ROUTE, outbound_cluster};
use super::{consistent_hash, route_policies};
use super::{duration, pack};
use crate::model::ingress::exported_to;
use crate::model::{MeshModel, Port, Service, Workload};

const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

pub fn outbound_routes(
    model: &MeshModel,
    workload: &Workload,
    services: &[&Service],
) -> RouteConfiguration {
    let mut virtual_hosts = Vec::new();
    for service in services {
        let mut first_http = true;
        for port in service.ports.iter().filter(|p| p.protocol.is_http()) {
            let host = &service.key.hostname;
            // The virtual addresses too, for captured requests whose authority is the VIP.
            let vips = service.addresses.iter().filter(|a| !a.contains('/'));
            let names: Vec<&String> = std::iter::once(host).chain(vips).collect();
            let mut domains: Vec<String> = names
                .iter()
                .map(|name| format!("{name}:{}", port.number))
                .collect();
            if first_http {
                domains.extend(names.iter().map(|name| (*name).clone()));
                first_http = false;
            }
            let exported = model.routes.get(host).filter(|(key, vs)| {
                exported_to(&vs.export_to, &key.namespace, &workload.namespace)
            });
            let routes = match exported {
                Some((_, vs)) => vs
                    .http
                    .iter()
                    .flat_map(|r| http_route(model, workload, Scope::new(host, port.number), r))
                    .collect(),
                None => vec![default_route(model, service, port)],
            };
            virtual_hosts.push(VirtualHost {
                name: format!("{host}:{}", port.number),
                domains,
                routes,
                ..Default::default()
            });
        }
    }
    RouteConfiguration {
        name: OUTBOUND_ROUTE.into(),
        virtual_hosts,
        // Routes may name clusters the proxy does not have (a service not visible to it):
        // those requests fail with 503 instead of the whole configuration being rejected.
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

fn default_route(model: &MeshModel, service: &Service, port: &Port) -> Route {
    Route {
        name: "default".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(outbound_cluster(
                port.number,
                None,
                &service.key.hostname,
            ))),
            timeout: Some(duration(Duration::ZERO)),
            retry_policy: Some(retry_policy(None)),
            hash_policy: consistent_hash::route_policy(
                model,
                &Destination {
                    host: service.key.hostname.clone(),
                    subset: None,
                    port: None,
                },
                port.number,
            ),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Where routes are served: a sidecar's virtual host of a service port, or a gateway's port
/// (no service: `host` empty). A destination without a port takes this port when it names
/// this host, else its service's only port.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scope<'a> {
    pub host: &'a str,
    pub port: u32,
}

impl<'a> Scope<'a> {
    pub fn new(host: &'a str, port: u32) -> Self {
        Self { host, port }
    }
}

/// Envoy routes for one `VirtualService` HTTP route, as this proxy sees it in `scope`.
pub(super) fn http_route(
    model: &MeshModel,
    workload: &Workload,
    scope: Scope<'_>,
    r: &HttpRoute,
) -> Vec<Route> {
    let matches: Vec<Option<&HttpMatchRequest>> = if r.matches.is_empty() {
        vec![None]
    } else {
        r.matches
            .iter()
            .filter(|m| applies(m, workload, scope.port))
            .map(Some)
            .collect()
    };
    let action = action(model, scope, r);
    let (req_add, req_remove, resp_add, resp_remove) = header_edits(r.headers.as_ref());
    matches
        .into_iter()
        .map(|m| Route {
            name: r.name.clone().unwrap_or_default(),
            r#match: Some(route_match(m)),
            action: Some(action.clone()),
            request_headers_to_add: req_add.clone(),
            request_headers_to_remove: req_remove.clone(),
            response_headers_to_add: resp_add.clone(),
            response_headers_to_remove: resp_remove.clone(),
            typed_per_filter_config: route_policies::per_filter(
                r.fault.as_ref(),
                r.cors_policy.as_ref(),
            ),
            ..Default::default()
        })
        .collect()
}

/// The parts of a match decided by who is asking and on which port.
fn applies(m: &HttpMatchRequest, workload: &Workload, port: u32) -> bool {
    m.port.is_none_or(|p| p == port)
        && m.source_labels
            .iter()
            .all(|(k, v)| workload.labels.get(k) == Some(v))
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| *ns == workload.namespace)
}

pub(super) fn string_matcher(m: &StringMatch, ignore_case: bool) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(match m {
            StringMatch::Exact(s) => string_matcher::MatchPattern::Exact(s.clone()),
            StringMatch::Prefix(s) => string_matcher::MatchPattern::Prefix(s.clone()),
            StringMatch::Regex(s) => string_matcher::MatchPattern::SafeRegex(regex(s)),
        }),
        ignore_case,
    }
}

fn regex(s: &str) -> RegexMatcher {
    RegexMatcher {
        regex: s.to_owned(),
        ..Default::default()
    }
}

/// A header's match; `None`: the header has to be present.
fn header(name: &str, m: Option<&StringMatch>, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_ascii_lowercase(),
        header_match_specifier: Some(match m {
            Some(m) => header_matcher::HeaderMatchSpecifier::StringMatch(string_matcher(m, false)),
            None => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
        }),
        invert_match: invert,
        ..Default::default()
    }
}

fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let Some(m) = m else {
        return RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        };
    };
    let path_specifier = Some(match &m.uri {
        None => route_match::PathSpecifier::Prefix("/".into()),
        Some(StringMatch::Exact(p)) => route_match::PathSpecifier::Path(p.clone()),
        Some(StringMatch::Prefix(p)) => route_match::PathSpecifier::Prefix(p.clone()),
        Some(StringMatch::Regex(p)) => route_match::PathSpecifier::SafeRegex(regex(p)),
    });
    let mut headers: Vec<HeaderMatcher> = [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ]
    .into_iter()
    .filter_map(|(name, sm)| sm.as_ref().map(|sm| header(name, Some(sm), false)))
    .collect();
    headers.extend(
        m.headers
            .iter()
            .map(|(k, v)| header(k, v.string_match().as_ref(), false)),
    );
    headers.extend(
        m.without_headers
            .iter()
            .map(|(k, v)| header(k, v.string_match().as_ref(), true)),
    );
    RouteMatch {
        path_specifier,
        case_sensitive: m.ignore_uri_case.then_some(BoolValue { value: false }),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|(k, v)| QueryParameterMatcher {
                name: k.clone(),
                query_parameter_match_specifier: Some(match v.string_match() {
                    Some(m) => query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                        string_matcher(&m, false),
                    ),
                    None => {
                        query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true)
                    }
                }),
            })
            .collect(),
        ..Default::default()
    }
}

/// The cluster a destination names, as seen from a virtual host on `port` of `service`.
pub(super) fn destination_cluster(model: &MeshModel, scope: Scope<'_>, d: &Destination) -> String {
    let number = d.port.as_ref().map(|p| p.number).unwrap_or_else(|| {
        if d.host == scope.host {
            return scope.port;
        }
        match model.service_of_host(&d.host).map(|s| s.ports.as_slice()) {
            Some([only]) => only.number,
            _ => scope.port,
        }
    });
    outbound_cluster(number, d.subset.as_deref(), &d.host)
}

fn action(model: &MeshModel, scope: Scope<'_>, r: &HttpRoute) -> route::Action {
    if let Some(redirect) = &r.redirect {
        use redirect_action::RedirectResponseCode as Code;
        let code = match redirect.redirect_code.unwrap_or(301) {
            302 => Code::Found,
            303 => Code::SeeOther,
            307 => Code::TemporaryRedirect,
            308 => Code::PermanentRedirect,
            _ => Code::MovedPermanently,
        };
        return route::Action::Redirect(RedirectAction {
            host_redirect: redirect.authority.clone().unwrap_or_default(),
            port_redirect: redirect.port.unwrap_or_default(),
            scheme_rewrite_specifier: redirect
                .scheme
                .clone()
                .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier: redirect
                .uri
                .clone()
                .map(redirect_action::PathRewriteSpecifier::PathRedirect),
            response_code: code as i32,
            ..Default::default()
        });
    }
    if let Some(direct) = &r.direct_response {
        use isthmus_api::networking::HttpBody;
        let body = direct.body.as_ref().map(|b| DataSource {
            specifier: Some(match b {
                HttpBody::String(s) => data_source::Specifier::InlineString(s.clone()),
                HttpBody::Bytes(b) => data_source::Specifier::InlineBytes(
                    base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .unwrap_or_else(|_| b.clone().into_bytes()),
                ),
            }),
            ..Default::default()
        });
        return route::Action::DirectResponse(DirectResponseAction {
            status: direct.status,
            body,
            ..Default::default()
        });
    }
    let cluster_specifier = match r.route.as_slice() {
        [only] if only.headers.is_none() => route_action::ClusterSpecifier::Cluster(
            destination_cluster(model, scope, &only.destination),
        ),
        destinations => {
            // Several destinations of the same cluster (subsets aside) are merged by Envoy's
            // rules only if names differ; Istio forbids duplicates, so do we (validation).
            let clusters = destinations
                .iter()
                .map(|d| {
                    let (req_add, req_remove, resp_add, resp_remove) =
                        header_edits(d.headers.as_ref());
                    weighted_cluster::ClusterWeight {
                        name: destination_cluster(model, scope, &d.destination),
                        weight: Some(UInt32Value {
                            value: d.weight.unwrap_or(100),
                        }),
                        request_headers_to_add: req_add,
                        request_headers_to_remove: req_remove,
                        response_headers_to_add: resp_add,
                        response_headers_to_remove: resp_remove,
                        ..Default::default()
                    }
                })
                .filter(|c| c.weight.as_ref().is_some_and(|w| w.value > 0))
                .collect();
            route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters,
                ..Default::default()
            })
        }
    };
    let rewrite = r.rewrite.as_ref();
    let mirrors = r
        .all_mirrors()
        .into_iter()
        .map(|(d, share)| route_policies::mirror(destination_cluster(model, scope, d), share))
        .collect();
    // Affinity toward the route's destination (the first, when weighted: Istio's choice).
    let hash_policy = r
        .route
        .first()
        .map(|d| consistent_hash::route_policy(model, &d.destination, scope.port))
        .unwrap_or_default();
    route::Action::Route(RouteAction {
        cluster_specifier: Some(cluster_specifier),
        request_mirror_policies: mirrors,
        hash_policy,
        prefix_rewrite: rewrite.and_then(|w| w.uri.clone()).unwrap_or_default(),
        host_rewrite_specifier: rewrite
            .and_then(|w| w.authority.clone())
            .map(route_action::HostRewriteSpecifier::HostRewriteLiteral),
        timeout: Some(duration(r.timeout.as_ref().map_or(Duration::ZERO, |t| t.0))),
        // Istio: `attempts: 0` (or unset) is no retry policy at all, so that a `perTryTimeout`
        // never cuts the one attempt.
        retry_policy: match &r.retries {
            Some(retries) if retries.attempts == 0 => None,
            retries => Some(retry_policy(retries.as_ref())),
        },
        ..Default::default()
    })
}

/// As Istio does for every retry policy: a retry goes to another host than the ones the
/// request already tried (up to 5 picks), so that one endpoint going away costs no request.
fn avoiding_previous_hosts(policy: RetryPolicy) -> RetryPolicy {
    RetryPolicy {
        retry_host_predicate: vec![retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                pack(&PreviousHostsPredicate {}),
            )),
        }],
        host_selection_retry_max_attempts: 5,
        ..policy
    }
}

fn retry_policy(retries: Option<&HttpRetry>) -> RetryPolicy {
    let Some(r) = retries else {
        return avoiding_previous_hosts(RetryPolicy {
            retry_on: DEFAULT_RETRY_ON.into(),
            num_retries: Some(UInt32Value { value: 2 }),
            retriable_status_codes: vec![503],
            ..Default::default()
        });
    };
    let on = r.retry_on.as_deref().unwrap_or(DEFAULT_RETRY_ON);
    // Istio lets status codes stand in the list; Envoy wants them apart.
    let (codes, policies): (Vec<&str>, Vec<&str>) = on
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .partition(|p| p.parse::<u16>().is_ok());
    let mut policies: BTreeSet<&str> = policies.into_iter().collect();
    if !codes.is_empty() {
        policies.insert("retriable-status-codes");
    }
    let mut codes: Vec<u32> = codes.iter().filter_map(|c| c.parse().ok()).collect();
    if codes.is_empty() && policies.contains("retriable-status-codes") {
        codes.push(503);
    }
    avoiding_previous_hosts(RetryPolicy {
        retry_on: policies.into_iter().collect::<Vec<_>>().join(","),
        num_retries: Some(UInt32Value { value: r.attempts }),
        per_try_timeout: r.per_try_timeout.as_ref().map(|d| duration(d.0)),
        retriable_status_codes: codes,
        ..Default::default()
    })
}

type HeaderEdits = (
    Vec<HeaderValueOption>,
    Vec<String>,
    Vec<HeaderValueOption>,
    Vec<String>,
);

fn header_edits(headers: Option<&Headers>) -> HeaderEdits {
    let ops = |o: Option<&isthmus_api::networking::HeaderOperations>| {
        let Some(o) = o else {
            return (Vec::new(), Vec::new());
        };
        let option = |(k, v): (&String, &String), action| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.to_ascii_lowercase(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        };
        let add = o
            .set
            .iter()
            .map(|kv| {
                option(
                    kv,
                    header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd,
                )
            })
            .chain(o.add.iter().map(|kv| {
                option(
                    kv,
                    header_value_option::HeaderAppendAction::AppendIfExistsOrAdd,
                )
            }))
            .collect();
        (
            add,
            o.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
        )
    };
    let (req_add, req_remove) = ops(headers.and_then(|h| h.request.as_ref()));
    let (resp_add, resp_remove) = ops(headers.and_then(|h| h.response.as_ref()));
    (req_add, req_remove, resp_add, resp_remove)
}
