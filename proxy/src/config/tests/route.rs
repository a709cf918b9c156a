//! `RouteConfiguration` -> `RouteTable`.

use std::collections::HashMap;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, StatusCode};
use isthmus_proto::envoy::envoy::config::core::v3::{
    DataSource, HeaderValue as EnvoyHeader, HeaderValueOption, data_source,
};
use isthmus_proto::envoy::envoy::config::route::v3::retry_policy::RetryHostPredicate;
use isthmus_proto::envoy::envoy::config::route::v3::{
    CorsPolicy, DirectResponseAction, HeaderMatcher, RedirectAction, RetryPolicy,
    Route as EnvoyRoute, RouteAction, RouteConfiguration, RouteMatch as EnvoyMatch,
    VirtualHost as EnvoyVirtualHost, WeightedCluster, header_matcher, redirect_action,
    retry_policy, route, route_action, route_match, weighted_cluster,
};
use isthmus_proto::envoy::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use isthmus_proto::envoy::envoy::r#type::matcher::v3::RegexMatcher;
use isthmus_proto::envoy::google::protobuf::{Any, UInt32Value};

use super::{Expect, Table, pack, run};
use crate::config::matcher::{HeaderKey, HeaderMatch, HeaderTest, Matcher, StringMatch};
use crate::config::route::{
    Action, AppendAction, Domain, Edits, Forward, HeaderAdd, HeaderEdits, PREVIOUS_HOSTS,
    PathMatch, Redirect, Retry, Route, RouteMatch, RouteTable, Targets, WeightedTarget, convert,
};
// The model of `config` with one route.
use crate::upstream::testing::table;

fn to_cluster(cluster: &str) -> RouteAction {
    RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.into())),
        ..RouteAction::default()
    }
}

/// A route on every path with `action`.
fn route_doing(action: route::Action) -> EnvoyRoute {
    EnvoyRoute {
        r#match: Some(EnvoyMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..EnvoyMatch::default()
        }),
        action: Some(action),
        ..EnvoyRoute::default()
    }
}

fn forwarding(action: RouteAction) -> EnvoyRoute {
    route_doing(route::Action::Route(action))
}

/// A configuration `r` of one virtual host (`*`) with `routes`.
fn config(routes: Vec<EnvoyRoute>) -> RouteConfiguration {
    RouteConfiguration {
        name: "r".into(),
        virtual_hosts: vec![EnvoyVirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes,
            ..EnvoyVirtualHost::default()
        }],
        ..RouteConfiguration::default()
    }
}

fn one(route: EnvoyRoute) -> RouteConfiguration {
    config(vec![route])
}

fn with_vhost(edit: impl FnOnce(&mut EnvoyVirtualHost)) -> RouteConfiguration {
    let mut c = one(forwarding(to_cluster("backend")));
    edit(&mut c.virtual_hosts[0]);
    c
}

fn add(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(EnvoyHeader {
            key: key.into(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        ..HeaderValueOption::default()
    }
}

fn everything(action: Action) -> Route {
    Route {
        policies: Default::default(),
        name: String::new(),
        matcher: RouteMatch {
            path: PathMatch::Prefix("/".into()),
            case_sensitive: true,
            headers: vec![],
            query: vec![],
            grpc: false,
        },
        action,
        headers: Edits::default(),
        rbac: HashMap::new(),
    }
}

fn forward(targets: Targets) -> Forward {
    Forward {
        hash: Vec::new(),
        mirrors: Vec::new(),
        targets,
        timeout: Some(Duration::from_secs(15)),
        idle_timeout: None,
        retry: None,
        prefix_rewrite: None,
        host_rewrite: None,
        terminate_connect: false,
    }
}

fn first(t: &RouteTable) -> &Route {
    &t.virtual_hosts[0].routes[0]
}

fn forward_of(t: &RouteTable) -> &Forward {
    match &first(t).action {
        Action::Forward(f) => f,
        other => panic!("not a forward: {other:?}"),
    }
}

fn redirect_of(t: &RouteTable) -> &Redirect {
    match &first(t).action {
        Action::Redirect(r) => r,
        other => panic!("not a redirect: {other:?}"),
    }
}

fn retry_of(t: &RouteTable) -> &Retry {
    forward_of(t).retry.as_ref().expect("a retry policy")
}

fn redirecting(r: RedirectAction) -> RouteConfiguration {
    one(route_doing(route::Action::Redirect(r)))
}

fn direct(status: u32, body: Option<&str>) -> RouteConfiguration {
    one(route_doing(route::Action::DirectResponse(
        DirectResponseAction {
            status,
            body: body.map(|b| DataSource {
                specifier: Some(data_source::Specifier::InlineString(b.into())),
                ..DataSource::default()
            }),
            ..DirectResponseAction::default()
        },
    )))
}

fn retrying(policy: RetryPolicy) -> RouteConfiguration {
    one(forwarding(RouteAction {
        retry_policy: Some(policy),
        ..to_cluster("backend")
    }))
}

fn weighted(clusters: Vec<weighted_cluster::ClusterWeight>) -> RouteConfiguration {
    one(forwarding(RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(
            WeightedCluster {
                clusters,
                ..WeightedCluster::default()
            },
        )),
        ..RouteAction::default()
    }))
}

fn weight(name: &str, weight: u32) -> weighted_cluster::ClusterWeight {
    weighted_cluster::ClusterWeight {
        name: name.into(),
        weight: Some(UInt32Value { value: weight }),
        ..weighted_cluster::ClusterWeight::default()
    }
}

fn matching_header(name: &str) -> RouteConfiguration {
    let mut r = forwarding(to_cluster("backend"));
    if let Some(m) = &mut r.r#match {
        m.headers = vec![HeaderMatcher {
            name: name.into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::ExactMatch(
                "GET".into(),
            )),
            ..HeaderMatcher::default()
        }];
    }
    one(r)
}

fn predicate(name: &str, config: Option<Any>) -> RetryHostPredicate {
    RetryHostPredicate {
        name: name.into(),
        config_type: config.map(retry_policy::retry_host_predicate::ConfigType::TypedConfig),
    }
}

fn avoiding(predicates: Vec<RetryHostPredicate>) -> RouteConfiguration {
    retrying(RetryPolicy {
        retry_on: "connect-failure".into(),
        retry_host_predicate: predicates,
        host_selection_retry_max_attempts: 5,
        ..RetryPolicy::default()
    })
}

#[test]
fn routes_convert_to_their_typed_model() {
    let table: Table<RouteConfiguration, RouteTable> = vec![
        (
            "a forward to one cluster, with Envoy's default timeout",
            one(forwarding(to_cluster("backend"))),
            Expect::Model(table(everything(Action::Forward(forward(
                Targets::Cluster("backend".into()),
            ))))),
        ),
        (
            "header edits keep typed, lower-case names and typed values",
            one(EnvoyRoute {
                request_headers_to_add: vec![HeaderValueOption {
                    append_action: 1, // ADD_IF_ABSENT
                    ..add("X-Added", "yes")
                }],
                request_headers_to_remove: vec!["X-Drop".into()],
                response_headers_to_add: vec![add("x-served-by", "isthmus")],
                ..forwarding(to_cluster("backend"))
            }),
            Expect::Model(table(Route {
                headers: Edits {
                    request: HeaderEdits {
                        add: vec![HeaderAdd {
                            name: HeaderName::from_static("x-added"),
                            value: HeaderValue::from_static("yes"),
                            action: AppendAction::AddIfAbsent,
                        }],
                        remove: vec![HeaderName::from_static("x-drop")],
                    },
                    response: HeaderEdits {
                        add: vec![HeaderAdd {
                            name: HeaderName::from_static("x-served-by"),
                            value: HeaderValue::from_static("isthmus"),
                            action: AppendAction::AppendIfExistsOrAdd,
                        }],
                        remove: vec![],
                    },
                },
                ..everything(Action::Forward(forward(Targets::Cluster("backend".into()))))
            })),
        ),
        (
            "a direct response keeps a typed status",
            direct(418, Some("short and stout")),
            Expect::Model(table(everything(Action::Direct {
                status: StatusCode::IM_A_TEAPOT,
                body: Some("short and stout".into()),
            }))),
        ),
        (
            "a redirect keeps a typed scheme, authority and status",
            redirecting(RedirectAction {
                host_redirect: "www.example.com:8443".into(),
                response_code: 4, // PERMANENT_REDIRECT
                scheme_rewrite_specifier: Some(
                    redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true),
                ),
                path_rewrite_specifier: Some(redirect_action::PathRewriteSpecifier::PathRedirect(
                    "/moved?x=1#top".into(),
                )),
                strip_query: true,
                ..RedirectAction::default()
            }),
            Expect::Model(table(everything(Action::Redirect(Redirect {
                scheme: Some(Scheme::HTTPS),
                host: Some(Authority::from_static("www.example.com:8443")),
                port: None,
                path: Some("/moved?x=1#top".into()),
                prefix_rewrite: None,
                strip_query: true,
                status: StatusCode::PERMANENT_REDIRECT,
            })))),
        ),
        (
            "a scheme redirect is lower case",
            redirecting(RedirectAction {
                scheme_rewrite_specifier: Some(
                    redirect_action::SchemeRewriteSpecifier::SchemeRedirect("HTTP".into()),
                ),
                ..RedirectAction::default()
            }),
            Expect::Holds(|t| {
                let r = redirect_of(t);
                r.scheme == Some(Scheme::HTTP) && r.status == StatusCode::MOVED_PERMANENTLY
            }),
        ),
        (
            "a host rewrite is an authority; a prefix rewrite is kept",
            one(forwarding(RouteAction {
                host_rewrite_specifier: Some(
                    route_action::HostRewriteSpecifier::HostRewriteLiteral(
                        "reviews-api.bookinfo:9080".into(),
                    ),
                ),
                prefix_rewrite: "/v2/".into(),
                timeout: Some(isthmus_proto::envoy::google::protobuf::Duration {
                    seconds: 0,
                    nanos: 0,
                }),
                ..to_cluster("backend")
            })),
            Expect::Holds(|t| {
                let f = forward_of(t);
                f.host_rewrite == Some(Authority::from_static("reviews-api.bookinfo:9080"))
                    && f.prefix_rewrite.as_deref() == Some("/v2/")
                    && f.timeout.is_none()
            }),
        ),
        (
            "weighted clusters keep their weights and their own edits",
            weighted(vec![
                weighted_cluster::ClusterWeight {
                    request_headers_to_add: vec![add("x-subset", "v1")],
                    ..weight("v1", 90)
                },
                weight("v2", 10),
            ]),
            Expect::Holds(|t| {
                let Targets::Weighted(targets) = &forward_of(t).targets else {
                    return false;
                };
                targets
                    == &vec![
                        WeightedTarget {
                            cluster: "v1".into(),
                            weight: 90,
                            headers: Edits {
                                request: HeaderEdits {
                                    add: vec![HeaderAdd {
                                        name: HeaderName::from_static("x-subset"),
                                        value: HeaderValue::from_static("v1"),
                                        action: AppendAction::AppendIfExistsOrAdd,
                                    }],
                                    remove: vec![],
                                },
                                response: HeaderEdits::default(),
                            },
                        },
                        WeightedTarget {
                            cluster: "v2".into(),
                            weight: 10,
                            headers: Edits::default(),
                        },
                    ]
            }),
        ),
        (
            "a retry policy: conditions, typed retriable codes, back-off",
            retrying(RetryPolicy {
                retry_on: "5xx, retriable-status-codes,unavailable".into(),
                num_retries: Some(UInt32Value { value: 3 }),
                retriable_status_codes: vec![409, 503],
                ..RetryPolicy::default()
            }),
            Expect::Holds(|t| {
                let r = retry_of(t);
                r.on.server_error
                    && r.on.retriable_status_codes
                    && r.on.grpc.unavailable
                    && !r.on.gateway_error
                    && r.num_retries == 3
                    && r.retriable_status_codes
                        == [StatusCode::CONFLICT, StatusCode::SERVICE_UNAVAILABLE]
                    && r.base_interval == Duration::from_millis(25)
                    && r.max_interval == Duration::from_millis(250)
                    && !r.avoid_previous_hosts
            }),
        ),
        (
            "previous_hosts, without a config",
            avoiding(vec![predicate(PREVIOUS_HOSTS, None)]),
            Expect::Holds(|t| retry_of(t).avoid_previous_hosts),
        ),
        (
            "previous_hosts, with its typed config",
            avoiding(vec![predicate(
                PREVIOUS_HOSTS,
                Some(pack(&PreviousHostsPredicate {})),
            )]),
            Expect::Holds(|t| retry_of(t).avoid_previous_hosts),
        ),
        (
            "header matchers read typed names and the request line's pseudo-headers",
            matching_header(":Method"),
            Expect::Holds(|t| {
                first(t).matcher.headers
                    == [HeaderMatch {
                        name: HeaderKey::Method,
                        test: HeaderTest::Value(Matcher {
                            pattern: StringMatch::Exact("GET".into()),
                            ignore_case: false,
                        }),
                        invert: false,
                        treat_missing_as_empty: false,
                    }]
            }),
        ),
        (
            "a header matcher on a regular header",
            matching_header("X-Version"),
            Expect::Holds(|t| {
                first(t).matcher.headers[0].name
                    == HeaderKey::Name(HeaderName::from_static("x-version"))
            }),
        ),
        (
            "a regex path is compiled once, to match whole paths",
            one(EnvoyRoute {
                r#match: Some(EnvoyMatch {
                    path_specifier: Some(route_match::PathSpecifier::SafeRegex(RegexMatcher {
                        regex: "/api/v[0-9]+".into(),
                        ..RegexMatcher::default()
                    })),
                    ..EnvoyMatch::default()
                }),
                ..forwarding(to_cluster("backend"))
            }),
            Expect::Holds(|t| match &first(t).matcher.path {
                PathMatch::Regex(r) => r.is_match("/api/v2") && !r.is_match("/api/v2/x"),
                _ => false,
            }),
        ),
        (
            "domains: wildcards at either end, lower case",
            with_vhost(|vh| {
                vh.domains = vec!["*.Example.com".into(), "api.*".into(), "Exact:80".into()]
            }),
            Expect::Holds(|t| {
                t.virtual_hosts[0].domains
                    == [
                        Domain::Suffix(".example.com".into()),
                        Domain::Prefix("api.".into()),
                        Domain::Exact("exact:80".into()),
                    ]
            }),
        ),
    ];
    run(table, convert);
}

#[test]
fn invalid_values_are_rejected_at_their_path() {
    let table: Table<RouteConfiguration, RouteTable> = vec![
        (
            "a request header name that is not one",
            one(EnvoyRoute {
                request_headers_to_add: vec![add("bad name", "v")],
                ..forwarding(to_cluster("backend"))
            }),
            Expect::Rejected("virtual_hosts[0].routes[0].request_headers_to_add[0].header.key"),
        ),
        (
            "a response header value with a line break",
            one(EnvoyRoute {
                response_headers_to_add: vec![add("x-ok", "a\nb")],
                ..forwarding(to_cluster("backend"))
            }),
            Expect::Rejected("virtual_hosts[0].routes[0].response_headers_to_add[0].header.value"),
        ),
        (
            "a raw header value that is not UTF-8",
            one(EnvoyRoute {
                request_headers_to_add: vec![HeaderValueOption {
                    header: Some(EnvoyHeader {
                        key: "x-raw".into(),
                        value: String::new(),
                        raw_value: vec![0xff, 0xfe],
                    }),
                    ..HeaderValueOption::default()
                }],
                ..forwarding(to_cluster("backend"))
            }),
            Expect::Rejected(
                "virtual_hosts[0].routes[0].request_headers_to_add[0].header.raw_value",
            ),
        ),
        (
            "a pseudo-header is not added",
            one(EnvoyRoute {
                request_headers_to_add: vec![add(":authority", "elsewhere")],
                ..forwarding(to_cluster("backend"))
            }),
            Expect::Rejected("virtual_hosts[0].routes[0].request_headers_to_add[0].header.key"),
        ),
        (
            "a header to remove that is not a header name",
            with_vhost(|vh| vh.response_headers_to_remove = vec!["ok".into(), "no\tway".into()]),
            Expect::Rejected("virtual_hosts[0].response_headers_to_remove[1]"),
        ),
        (
            "the configuration's own edits",
            RouteConfiguration {
                request_headers_to_remove: vec!["x(y)".into()],
                ..one(forwarding(to_cluster("backend")))
            },
            Expect::Rejected("request_headers_to_remove[0]"),
        ),
        (
            "a weighted cluster's edits",
            weighted(vec![weighted_cluster::ClusterWeight {
                request_headers_to_add: vec![add("x y", "v")],
                ..weight("v1", 1)
            }]),
            Expect::Rejected(
                "virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0].request_headers_to_add[0].header.key",
            ),
        ),
        (
            "weights that add up to zero",
            weighted(vec![weight("v1", 0), weight("v2", 0)]),
            Expect::Rejected("virtual_hosts[0].routes[0].route.weighted_clusters.clusters"),
        ),
        (
            "a direct response status above 599",
            direct(600, None),
            Expect::Rejected("virtual_hosts[0].routes[0].direct_response.status"),
        ),
        (
            "a direct response status below 200",
            direct(101, None),
            Expect::Rejected("virtual_hosts[0].routes[0].direct_response.status"),
        ),
        (
            "a direct response body over 4 KiB",
            direct(200, Some(&"x".repeat(4097))),
            Expect::Rejected("virtual_hosts[0].routes[0].direct_response.body"),
        ),
        (
            "a host rewrite that is not an authority",
            one(forwarding(RouteAction {
                host_rewrite_specifier: Some(
                    route_action::HostRewriteSpecifier::HostRewriteLiteral("two words".into()),
                ),
                ..to_cluster("backend")
            })),
            Expect::Rejected("virtual_hosts[0].routes[0].route.host_rewrite_literal"),
        ),
        (
            "a host rewrite with user info",
            one(forwarding(RouteAction {
                host_rewrite_specifier: Some(
                    route_action::HostRewriteSpecifier::HostRewriteLiteral("me@host".into()),
                ),
                ..to_cluster("backend")
            })),
            Expect::Rejected("virtual_hosts[0].routes[0].route.host_rewrite_literal"),
        ),
        (
            "a prefix rewrite a path may not hold",
            one(forwarding(RouteAction {
                prefix_rewrite: "/a b/".into(),
                ..to_cluster("backend")
            })),
            Expect::Rejected("virtual_hosts[0].routes[0].route.prefix_rewrite"),
        ),
        (
            "a redirect host that is not an authority",
            redirecting(RedirectAction {
                host_redirect: "a b".into(),
                ..RedirectAction::default()
            }),
            Expect::Rejected("virtual_hosts[0].routes[0].redirect.host_redirect"),
        ),
        (
            "a redirect scheme that is not one",
            redirecting(RedirectAction {
                scheme_rewrite_specifier: Some(
                    redirect_action::SchemeRewriteSpecifier::SchemeRedirect("ht tp".into()),
                ),
                ..RedirectAction::default()
            }),
            Expect::Rejected("virtual_hosts[0].routes[0].redirect.scheme_redirect"),
        ),
        (
            "a redirect path that cannot be in Location",
            redirecting(RedirectAction {
                path_rewrite_specifier: Some(redirect_action::PathRewriteSpecifier::PathRedirect(
                    "/a\r\nSet-Cookie: x".into(),
                )),
                ..RedirectAction::default()
            }),
            Expect::Rejected("virtual_hosts[0].routes[0].redirect.path_redirect"),
        ),
        (
            "a redirect prefix that cannot be in Location",
            redirecting(RedirectAction {
                path_rewrite_specifier: Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(
                    "/\u{7f}".into(),
                )),
                ..RedirectAction::default()
            }),
            Expect::Rejected("virtual_hosts[0].routes[0].redirect.prefix_rewrite"),
        ),
        (
            "an unknown redirect code",
            redirecting(RedirectAction {
                response_code: 9,
                ..RedirectAction::default()
            }),
            Expect::Rejected("virtual_hosts[0].routes[0].redirect.response_code"),
        ),
        (
            "a redirect port over 65535",
            redirecting(RedirectAction {
                port_redirect: 70_000,
                ..RedirectAction::default()
            }),
            Expect::Rejected("virtual_hosts[0].routes[0].redirect.port_redirect"),
        ),
        (
            "a retriable status code that is not an HTTP status",
            retrying(RetryPolicy {
                retry_on: "retriable-status-codes".into(),
                retriable_status_codes: vec![503, 700],
                ..RetryPolicy::default()
            }),
            Expect::Rejected(
                "virtual_hosts[0].routes[0].route.retry_policy.retriable_status_codes",
            ),
        ),
        (
            "a retry condition this proxy does not implement",
            retrying(RetryPolicy {
                retry_on: "5xx,http3-post-connect-failure".into(),
                ..RetryPolicy::default()
            }),
            Expect::Rejected("virtual_hosts[0].routes[0].route.retry_policy.retry_on"),
        ),
        (
            "a zero back-off",
            retrying(RetryPolicy {
                retry_on: "5xx".into(),
                retry_back_off: Some(retry_policy::RetryBackOff {
                    base_interval: Some(isthmus_proto::envoy::google::protobuf::Duration {
                        seconds: 0,
                        nanos: 0,
                    }),
                    max_interval: None,
                }),
                ..RetryPolicy::default()
            }),
            Expect::Rejected(
                "virtual_hosts[0].routes[0].route.retry_policy.retry_back_off.base_interval",
            ),
        ),
        (
            "a retry host predicate other than previous_hosts",
            avoiding(vec![predicate(
                "envoy.retry_host_predicates.omit_canary_hosts",
                None,
            )]),
            Expect::Rejected(
                "virtual_hosts[0].routes[0].route.retry_policy.retry_host_predicate[0].name",
            ),
        ),
        (
            "previous_hosts with a config of another type",
            avoiding(vec![predicate(
                PREVIOUS_HOSTS,
                Some(Any {
                    type_url: "type.googleapis.com/google.protobuf.Empty".into(),
                    value: Vec::new(),
                }),
            )]),
            Expect::Rejected(
                "virtual_hosts[0].routes[0].route.retry_policy.retry_host_predicate[0].typed_config",
            ),
        ),
        (
            "a header matcher on a name that is not a header's",
            matching_header("x version"),
            Expect::Rejected("virtual_hosts[0].routes[0].match.headers[0].name"),
        ),
        (
            "a header matcher on a pseudo-header matchers do not see",
            matching_header(":status"),
            Expect::Rejected("virtual_hosts[0].routes[0].match.headers[0].name"),
        ),
        (
            "a regex that does not compile",
            one(EnvoyRoute {
                r#match: Some(EnvoyMatch {
                    path_specifier: Some(route_match::PathSpecifier::SafeRegex(RegexMatcher {
                        regex: "(".into(),
                        ..RegexMatcher::default()
                    })),
                    ..EnvoyMatch::default()
                }),
                ..forwarding(to_cluster("backend"))
            }),
            Expect::Rejected("virtual_hosts[0].routes[0].match.safe_regex.regex"),
        ),
        (
            "a route without an action",
            one(EnvoyRoute {
                action: None,
                ..forwarding(to_cluster("backend"))
            }),
            Expect::Rejected("virtual_hosts[0].routes[0].action"),
        ),
        (
            "a route without a cluster",
            one(forwarding(to_cluster(""))),
            Expect::Rejected("virtual_hosts[0].routes[0].route"),
        ),
        (
            "a virtual host without domains",
            with_vhost(|vh| vh.domains.clear()),
            Expect::Rejected("virtual_hosts[0].domains"),
        ),
        (
            "a wildcard inside a domain",
            with_vhost(|vh| vh.domains = vec!["a.*.example".into()]),
            Expect::Rejected("virtual_hosts[0].domains[0]"),
        ),
        (
            "a field outside the profile",
            with_vhost(|vh| vh.cors = Some(CorsPolicy::default())),
            Expect::Rejected("virtual_hosts[0].cors"),
        ),
        (
            "a configuration without a name",
            RouteConfiguration {
                name: String::new(),
                ..one(forwarding(to_cluster("backend")))
            },
            Expect::Rejected("name"),
        ),
    ];
    run(table, convert);
}
