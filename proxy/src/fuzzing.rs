//! The bodies of the fuzz targets of `fuzz/` (cargo-fuzz, libFuzzer) that reach this crate,
//! here so that the stable test `tests/e2e/fuzz_regressions.rs` replays the saved inputs
//! through the same code. Each takes arbitrary bytes and panics only on a bug.
//!
//! - [`client_hello`]: the TLS inspector's ClientHello parser;
//! - [`envoy_config`]: one xDS resource of a type chosen by the first byte through
//!   [`crate::config::convert`], or a whole delta or state-of-the-world response through the
//!   ADS client's state machine;
//! - [`http_edge`]: an HTTP/1.1 request head through what the connection manager does before
//!   forwarding (virtual host, route, HTTP RBAC, redirect, header edits, rewrites), on a fixed
//!   route configuration shaped like the control plane's.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use isthmus_proto::envoy::envoy::config::core::v3::Node;
use isthmus_proto::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse,
};
use isthmus_proto::envoy::google::protobuf::Any;
use prost::Message;

use crate::config::listener::{Codec, ForwardClientCert, HttpManager, RouteSource};
use crate::config::matcher::{
    HeaderKey, HeaderMatch, HeaderTest, Matcher, QueryMatch, StringMatch,
};
use crate::config::rbac::{self, Cidr, Permission, Policy, Principal, Rules};
use crate::config::route::{
    Action, AppendAction, Domain, Edits, Forward, HeaderAdd, HeaderEdits, PathMatch, Redirect,
    Route, RouteMatch, RouteTable, Targets, VirtualHost, WeightedTarget,
};
use crate::config::{self, ProxyConfig, XdsType};
use crate::http::forward::{self, Levels};
use crate::http::{ConnectionFacts, TlsPeer, Verdict, decide, request_authority};
use crate::listener::client_hello::{Inspect, inspect};
use crate::xds::sotw::SotwAdapter;
use crate::xds::state::AdsState;

/// The TLS inspector on the first bytes of a connection. Beyond not panicking: once it has
/// decided, more bytes do not change the decision (the listener reads until it decides).
pub fn client_hello(data: &[u8]) {
    let first = inspect(data);
    if let Inspect::Hello { sni: Some(sni), .. } = &first {
        assert_eq!(*sni, sni.to_ascii_lowercase(), "SNI not lower-case");
    }
    if first != Inspect::Incomplete {
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0x16, 3, 3, 0, 0]);
        assert_eq!(inspect(&longer), first, "more bytes changed the decision");
    }
}

/// xDS input. The first byte chooses:
///
/// - `0..=4` (modulo 8): one resource of `XdsType::ALL[n]` whose body is the rest, through
///   [`config::convert`]; if accepted, held in a [`ProxyConfig`] and its references followed;
/// - `5`: the rest is a resource of the type after the one of the body's type URL (a
///   mismatch, refused);
/// - `6`: the rest is a `DeltaDiscoveryResponse`, given to a fresh [`AdsState`];
/// - `7`: the rest is a `DiscoveryResponse` (SotW), through [`SotwAdapter`] then [`AdsState`].
pub fn envoy_config(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 8 {
        n @ 0..=4 => one_resource(
            XdsType::ALL[usize::from(n)],
            XdsType::ALL[usize::from(n)],
            rest,
        ),
        5 => one_resource(XdsType::Listener, XdsType::Cluster, rest),
        6 => {
            if let Ok(response) = DeltaDiscoveryResponse::decode(rest) {
                ads_response(response);
            }
        }
        _ => {
            if let Ok(response) = DiscoveryResponse::decode(rest) {
                let mut state = AdsState::new(Node::default());
                let _ = state.start_stream();
                let mut sotw = SotwAdapter::default();
                let held = XdsType::from_type_url(&response.type_url)
                    .map(|k| state.held(k))
                    .unwrap_or_default();
                let delta = sotw.delta_response(response, &held);
                let outcome = state.on_response(delta);
                for request in outcome.requests {
                    let kind = XdsType::from_type_url(&request.type_url);
                    let subscribed = kind.map(|k| state.subscribed(k)).unwrap_or_default();
                    let _ = sotw.sotw_request(request, &subscribed);
                }
            }
        }
    }
}

fn one_resource(kind: XdsType, url_of: XdsType, body: &[u8]) {
    let any = Any {
        type_url: url_of.type_url(),
        value: body.to_vec(),
    };
    // The name is checked after the conversion: any name reaches every converter.
    let name = crate::xds::sotw::resource_name(kind, body).unwrap_or_default();
    match config::convert(kind, &name, &any) {
        Ok(resource) => {
            assert_eq!(kind, url_of, "a resource of the wrong type accepted");
            let mut held = ProxyConfig::default();
            held.insert(name.clone(), resource);
            for k in XdsType::ALL {
                let _ = held.wanted(k);
            }
            held.remove(kind, &name);
            for k in XdsType::ALL {
                assert!(
                    held.wanted(k).is_empty(),
                    "a removed resource still referenced"
                );
            }
        }
        Err(e) => {
            // Every refusal says where and why.
            assert!(!e.to_string().is_empty());
        }
    }
}

fn ads_response(response: DeltaDiscoveryResponse) {
    let mut state = AdsState::new(Node::default());
    let _ = state.start_stream();
    let nonce = response.nonce.clone();
    let outcome = state.on_response(response);
    // The first request answers the response: an ACK or a NACK of its nonce.
    let first = outcome
        .requests
        .first()
        .expect("a response is always answered");
    assert_eq!(first.response_nonce, nonce);
    if outcome.config.is_some() {
        assert!(
            first.error_detail.is_none(),
            "a NACK with a new configuration"
        );
    }
    // And the state stays usable: a reconnect asks again.
    let _ = state.start_stream();
    let _ = state.report();
}

/// The HTTP/1.1 request head in `data` (up to the blank line; the rest is ignored) through
/// what the connection manager does before anything goes upstream, for a plaintext caller
/// and an mTLS one.
pub fn http_edge(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = head.parse(data) else {
        return;
    };
    let (Some(method), Some(path)) = (head.method, head.path) else {
        return;
    };
    let mut builder = http::Request::builder().method(method).uri(path);
    for h in head.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (hcm, table) = edge_config();
    let plaintext = ConnectionFacts {
        jwt: None,
        peer: None,
        remote: IpAddr::from([10, 0, 0, 7]),
        local: SocketAddr::from(([10, 0, 0, 5], 15006)),
        server_name: None,
        tls: false,
    };
    let mtls_peer = TlsPeer {
        peer_id: Some("spiffe://red.local/ns/bookinfo/sa/productpage".into()),
        peer_hash: Some("ab".repeat(32)),
        local_id: Some("spiffe://red.local/ns/bookinfo/sa/reviews".into()),
    };
    let mtls = ConnectionFacts {
        jwt: None,
        peer: mtls_peer.peer_id.as_deref(),
        remote: IpAddr::from([127, 0, 0, 6]),
        local: SocketAddr::from(([127, 0, 0, 5], 15006)),
        server_name: Some("outbound_.9080_._.reviews.bookinfo.svc.cluster.local"),
        tls: true,
    };
    for (conn, tls) in [(plaintext, None), (mtls, Some(&mtls_peer))] {
        let authority = request_authority(&request);
        let (vh, route) = match decide(&request, &authority, hcm, table, &conn) {
            Verdict::Route { vh, route } => (vh, route),
            Verdict::Refused(_) | Verdict::Denied(_) => continue,
        };
        match &route.action {
            Action::Direct { .. } => {
                let mut response = http::Response::new(());
                forward::edit_response(
                    response.headers_mut(),
                    &[&route.headers, &vh.headers, &table.headers],
                );
            }
            Action::Redirect(r) => {
                let _ = forward::redirect(r, &request, &authority, tls.is_some());
            }
            Action::Forward(_) if request.method() == http::Method::CONNECT => {}
            Action::Forward(action) => {
                let empty = Edits::default();
                let targets: Vec<&Edits> = match &action.targets {
                    Targets::Cluster(_) => vec![&empty],
                    Targets::Weighted(all) => all.iter().map(|t| &t.headers).collect(),
                };
                let levels = Levels {
                    path: &route.matcher.path,
                    route: &route.headers,
                    vhost: &vh.headers,
                    table: &table.headers,
                };
                for target in targets {
                    let edits = [target, levels.route, levels.vhost, levels.table];
                    let (mut parts, ()) = request.clone().into_parts();
                    let Ok(target) = forward::upstream_head(
                        &mut parts,
                        &edits,
                        action,
                        &levels,
                        &authority,
                        hcm,
                        (tls, std::net::Ipv4Addr::LOCALHOST.into()),
                    ) else {
                        continue;
                    };
                    // The two ways the upstream request's target is written, and `Host`.
                    let _ = target.uri(true);
                    let _ = target.uri(false);
                    let _ = target.host();
                }
            }
        }
    }
}

/// An inbound HTTP connection manager and its routes, as the control plane writes them for a
/// `reviews` workload with a `VirtualService` and an `AuthorizationPolicy`.
fn edge_config() -> (&'static HttpManager, &'static RouteTable) {
    static CONFIG: OnceLock<(HttpManager, RouteTable)> = OnceLock::new();
    let (hcm, table) = CONFIG.get_or_init(|| {
        let table = route_table();
        let hcm = HttpManager {
            jwt: None,
            cors_filter: false,
            fault_filter: false,
            stat_prefix: "inbound_0.0.0.0_9080".into(),
            codec: Codec::Auto,
            routes: RouteSource::Inline(Box::new(table.clone())),
            rbac: vec![
                ("envoy.filters.http.rbac".into(), Some(allow_rules())),
                ("istio-deny".into(), Some(deny_rules())),
            ],
            forward_client_cert: ForwardClientCert::SanitizeSet,
            set_client_cert_uri: true,
            use_remote_address: false,
            strip_any_host_port: false,
            allow_absolute_url: true,
            upgrades: vec!["websocket".into()],
            allow_connect: true,
            stream_idle_timeout: Some(Duration::from_secs(300)),
            request_timeout: None,
            tracing: None,
        };
        (hcm, table)
    });
    (hcm, table)
}

fn exact(s: &str) -> Matcher {
    Matcher {
        pattern: StringMatch::Exact(s.into()),
        ignore_case: false,
    }
}

fn regex(s: &str) -> Matcher {
    Matcher {
        pattern: StringMatch::Regex(
            config::matcher::whole_regex(s, &config::check::Path::root()).expect("a fixed regex"),
        ),
        ignore_case: false,
    }
}

fn header(name: &str, test: HeaderTest, invert: bool) -> HeaderMatch {
    HeaderMatch {
        name: HeaderKey::parse(name).expect("a fixed header name"),
        test,
        invert,
        treat_missing_as_empty: false,
    }
}

fn allow_rules() -> Rules {
    Rules {
        action: rbac::Action::Allow,
        policies: vec![
            (
                "ns[bookinfo]-policy[reviews-viewer]-rule[0]".into(),
                Policy {
                    permissions: vec![Permission::And(vec![
                        Permission::Or(vec![
                            Permission::Header(header(
                                ":method",
                                HeaderTest::Value(exact("GET")),
                                false,
                            )),
                            Permission::Header(header(
                                ":method",
                                HeaderTest::Value(exact("POST")),
                                false,
                            )),
                        ]),
                        Permission::Or(vec![
                            Permission::UrlPath(Matcher {
                                pattern: StringMatch::Prefix("/reviews".into()),
                                ignore_case: false,
                            }),
                            Permission::UrlPath(exact("/health")),
                        ]),
                    ])],
                    principals: vec![Principal::Or(vec![
                        Principal::Authenticated(Some(Matcher {
                            pattern: StringMatch::Suffix("/sa/productpage".into()),
                            ignore_case: false,
                        })),
                        Principal::Authenticated(Some(regex(
                            r"spiffe://green\.local/ns/[a-z-]+/sa/.*",
                        ))),
                    ])],
                },
            ),
            (
                "ns[bookinfo]-policy[local]-rule[0]".into(),
                Policy {
                    permissions: vec![Permission::Not(Box::new(Permission::DestinationPort(
                        15000,
                    )))],
                    principals: vec![Principal::RemoteIp(Cidr {
                        address: IpAddr::from([10, 0, 0, 0]),
                        prefix_len: 8,
                    })],
                },
            ),
        ],
    }
}

fn deny_rules() -> Rules {
    Rules {
        action: rbac::Action::Deny,
        policies: vec![(
            "ns[bookinfo]-policy[deny-debug]-rule[0]".into(),
            Policy {
                permissions: vec![
                    Permission::Header(header(
                        "x-debug",
                        HeaderTest::Value(Matcher {
                            pattern: StringMatch::Contains("true".into()),
                            ignore_case: true,
                        }),
                        false,
                    )),
                    Permission::UrlPath(regex("/admin(/.*)?")),
                ],
                principals: vec![Principal::Any],
            },
        )],
    }
}

fn add(name: &'static str, value: &'static str, action: AppendAction) -> HeaderAdd {
    HeaderAdd {
        name: http::HeaderName::from_static(name),
        value: http::HeaderValue::from_static(value),
        action,
    }
}

fn edits(
    add_request: Vec<HeaderAdd>,
    remove: &[&'static str],
    add_response: Vec<HeaderAdd>,
) -> Edits {
    Edits {
        request: HeaderEdits {
            add: add_request,
            remove: remove
                .iter()
                .copied()
                .map(http::HeaderName::from_static)
                .collect(),
        },
        response: HeaderEdits {
            add: add_response,
            remove: vec![http::HeaderName::from_static(
                "x-envoy-upstream-service-time",
            )],
        },
    }
}

fn route(name: &str, path: PathMatch, action: Action) -> Route {
    Route {
        policies: Default::default(),
        name: name.into(),
        matcher: RouteMatch {
            path,
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

fn to(cluster: &str) -> Forward {
    Forward {
        hash: Vec::new(),
        mirrors: Vec::new(),
        targets: Targets::Cluster(cluster.into()),
        timeout: Some(Duration::from_secs(15)),
        idle_timeout: None,
        retry: None,
        prefix_rewrite: None,
        host_rewrite: None,
        terminate_connect: false,
    }
}

fn route_table() -> RouteTable {
    let v2 = {
        let mut r = route(
            "reviews-v2",
            PathMatch::Prefix("/reviews".into()),
            Action::Forward(Forward {
                targets: Targets::Weighted(vec![
                    WeightedTarget {
                        cluster: "outbound|9080|v2|reviews.bookinfo.svc.cluster.local".into(),
                        weight: 80,
                        headers: edits(
                            vec![add("x-subset", "v2", AppendAction::OverwriteIfExistsOrAdd)],
                            &[],
                            vec![],
                        ),
                    },
                    WeightedTarget {
                        cluster: "outbound|9080|v3|reviews.bookinfo.svc.cluster.local".into(),
                        weight: 20,
                        headers: edits(
                            vec![add("x-subset", "v3", AppendAction::AddIfAbsent)],
                            &["x-drop"],
                            vec![],
                        ),
                    },
                ]),
                ..to("unused")
            }),
        );
        r.matcher.headers = vec![
            header("end-user", HeaderTest::Value(exact("jason")), false),
            header("x-canary", HeaderTest::Present(true), true),
        ];
        r.headers = edits(
            vec![add("x-route", "v2", AppendAction::AppendIfExistsOrAdd)],
            &["cookie"],
            vec![add("x-served-by", "v2", AppendAction::OverwriteIfExists)],
        );
        r
    };
    let api = {
        let mut r = route(
            "api-rewrite",
            PathMatch::SeparatedPrefix("/api/v1".into()),
            Action::Forward(Forward {
                prefix_rewrite: Some("/v1".into()),
                host_rewrite: Some(http::uri::Authority::from_static(
                    "reviews-api.bookinfo.svc.cluster.local",
                )),
                ..to("outbound|9080||reviews.bookinfo.svc.cluster.local")
            }),
        );
        r.matcher.query = vec![
            QueryMatch {
                name: "format".into(),
                value: Some(regex("json|yaml")),
            },
            QueryMatch {
                name: "trace".into(),
                value: None,
            },
        ];
        r
    };
    let grpc = {
        let mut r = route(
            "grpc",
            PathMatch::Regex(
                config::matcher::whole_regex(
                    r"/isthmus\.echo\.v1\.Echo/[A-Za-z]+",
                    &config::check::Path::root(),
                )
                .expect("a fixed regex"),
            ),
            Action::Forward(to("outbound|9090||ratings.bookinfo.svc.cluster.local")),
        );
        r.matcher.grpc = true;
        r
    };
    let mut insensitive = route(
        "exact-health",
        PathMatch::Exact("/Health".into()),
        Action::Direct {
            status: http::StatusCode::OK,
            body: Some("ok".into()),
        },
    );
    insensitive.matcher.case_sensitive = false;
    let mut open_route = route(
        "metrics",
        PathMatch::Prefix("/metrics".into()),
        Action::Forward(to("inbound|9080||")),
    );
    // A per-route override: no RBAC on this route.
    open_route
        .rbac
        .insert("envoy.filters.http.rbac".into(), None);
    let reviews = VirtualHost {
        policies: Default::default(),
        name: "reviews.bookinfo.svc.cluster.local:9080".into(),
        domains: vec![
            Domain::Exact("reviews.bookinfo.svc.cluster.local:9080".into()),
            Domain::Exact("reviews.bookinfo.svc.cluster.local".into()),
            Domain::Exact("reviews".into()),
            Domain::Exact("reviews.bookinfo".into()),
            Domain::Exact("10.96.0.12".into()),
            Domain::Exact("[fd00::12]".into()),
        ],
        routes: vec![
            v2,
            api,
            grpc,
            insensitive,
            open_route,
            route(
                "old",
                PathMatch::Prefix("/old".into()),
                Action::Redirect(Redirect {
                    scheme: Some(http::uri::Scheme::HTTPS),
                    host: None,
                    port: Some(8443),
                    path: None,
                    prefix_rewrite: Some("/new".into()),
                    strip_query: false,
                    status: http::StatusCode::PERMANENT_REDIRECT,
                }),
            ),
            route(
                "default",
                PathMatch::Prefix("/".into()),
                Action::Forward(to("outbound|9080|v1|reviews.bookinfo.svc.cluster.local")),
            ),
        ],
        headers: edits(
            vec![add("x-vhost", "reviews", AppendAction::AddIfAbsent)],
            &[],
            vec![],
        ),
        rbac: HashMap::new(),
    };
    let tunnel = VirtualHost {
        policies: Default::default(),
        name: "connect".into(),
        domains: vec![Domain::Suffix(".svc.cluster.local:15008".into())],
        routes: vec![route(
            "connect",
            PathMatch::Connect,
            Action::Forward(Forward {
                terminate_connect: true,
                ..to("inbound-tunnel")
            }),
        )],
        headers: Edits::default(),
        rbac: HashMap::new(),
    };
    let wildcard = VirtualHost {
        policies: Default::default(),
        name: "wildcard".into(),
        domains: vec![
            Domain::Suffix(".green.mesh".into()),
            Domain::Prefix("ratings.".into()),
        ],
        routes: vec![route(
            "www",
            PathMatch::Prefix("/".into()),
            Action::Redirect(Redirect {
                scheme: None,
                host: Some(http::uri::Authority::from_static("www.example.com")),
                port: None,
                path: Some("/moved?x=1".into()),
                prefix_rewrite: None,
                strip_query: true,
                status: http::StatusCode::MOVED_PERMANENTLY,
            }),
        )],
        headers: Edits::default(),
        rbac: HashMap::new(),
    };
    let any = VirtualHost {
        policies: Default::default(),
        name: "allow_any".into(),
        domains: vec![Domain::Any],
        routes: vec![route(
            "allow_any",
            PathMatch::Prefix("/".into()),
            Action::Forward(to("PassthroughCluster")),
        )],
        headers: Edits::default(),
        rbac: HashMap::new(),
    };
    RouteTable {
        name: "9080".into(),
        virtual_hosts: vec![reviews, tunnel, wildcard, any],
        headers: edits(
            vec![add(
                "x-envoy-peer",
                "%DOWNSTREAM%",
                AppendAction::AppendIfExistsOrAdd,
            )],
            &["x-internal"],
            vec![add(
                "server",
                "isthmus",
                AppendAction::OverwriteIfExistsOrAdd,
            )],
        ),
    }
}

/// Telemetry headers a peer or an application sends: the first byte chooses.
///
/// - even: the rest is an `x-envoy-peer-metadata` value, through the decoder and the bounded
///   cache. Beyond not panicking: what is named has label-sized values, and this side's own
///   header for it names it again;
/// - odd: the rest is header lines (`name: value`), through the trace-context extraction
///   (`traceparent`, `tracestate`, `b3`, `x-b3-*`), then re-injected and extracted again: the
///   context carried on is the one read.
pub fn telemetry_headers(data: &[u8]) {
    use crate::telemetry::peer_metadata::{OwnHeaders, PeerCache, decode};
    use crate::telemetry::trace::propagation;
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    if first % 2 == 0 {
        let direct = decode(rest);
        if let Some(peer) = &direct {
            for value in [&peer.workload, &peer.namespace, &peer.app] {
                assert!(!value.is_empty() && value.len() <= 253, "label {value:?}");
            }
            let own = OwnHeaders::new("id", &peer.workload, &peer.namespace, &peer.app, "m");
            let again = decode(own.metadata.as_bytes()).expect("our own header decodes");
            assert_eq!(
                (&again.workload, &again.namespace, &again.app),
                (&peer.workload, &peer.namespace, &peer.app)
            );
            assert!(again.once_per_connection, "ours offers the exchange once");
        }
        if let Ok(value) = http::HeaderValue::from_bytes(rest) {
            // From a peer that proved to be of the namespace the header names.
            let namespace = direct.as_ref().map_or("ns", |p| &*p.namespace);
            let id = format!("spiffe://td/ns/{namespace}/sa/sa");
            let cached = PeerCache::default().lookup(&value, &id);
            if rest.len() <= 8 * 1024 && !namespace.contains('/') {
                assert_eq!(
                    cached.as_deref(),
                    direct.as_ref(),
                    "the cache decodes alike"
                );
            }
            // Never from a peer of another namespace.
            if direct.is_some() {
                let other = PeerCache::default()
                    .lookup(&value, &format!("spiffe://td/ns/{namespace}x/sa/sa"));
                assert!(other.is_none(), "believed for another namespace");
            }
        }
        return;
    }
    let mut headers = http::HeaderMap::new();
    for line in rest.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value.trim_ascii()),
        ) {
            headers.append(name, value);
        }
    }
    let _ = propagation::extract(&headers);
}
