//! Table-driven tests of per-proxy generation: YAML in, decoded Envoy resources out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use isthmus_identity::TrustDomain;
use isthmus_proto::envoy::envoy::config::cluster::v3::{Cluster, cluster};
use isthmus_proto::envoy::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use isthmus_proto::envoy::envoy::config::listener::v3::{Listener, listener_filter};
use isthmus_proto::envoy::envoy::config::rbac::v3::rbac;
use isthmus_proto::envoy::envoy::config::route::v3::{
    RouteConfiguration, header_matcher, query_parameter_matcher, route, route_action,
};
use isthmus_proto::envoy::envoy::extensions::filters::http::rbac::v3::RbacPerRoute;
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
    Secret, SpiffeCertValidatorConfig, UpstreamTlsContext, common_tls_context, secret,
    subject_alt_name_matcher,
};
use prost::Message;

use super::*;
use crate::config::load_text;
use crate::model::MeshModel;
use crate::xds::resources::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};

pub(super) const MESH: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http}, {number: 7000, name: tcp-data}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: other}
spec:
  hosts: [private.other.local]
  exportTo: [.]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.9}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin.org]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: shop}
spec: {address: 127.0.0.21, labels: {app: reviews, version: v1}, serviceAccount: reviews, locality: eu/a, ports: {http: 19080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2, namespace: shop}
spec: {address: 127.0.0.22, labels: {app: reviews, version: v2}, serviceAccount: reviews, locality: us/b}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 127.0.0.23, labels: {app: web}, serviceAccount: web, locality: eu/a}
";

fn node(workload: &str) -> ProxyNode {
    ProxyNode::from_metadata(
        &format!("sidecar~127.0.0.1~{workload}.shop~shop.svc.cluster.local"),
        &BTreeMap::from([("APP_PORTS".to_owned(), "http=8080".to_owned())]),
    )
    .unwrap()
}

pub(super) fn secrets() -> ProxySecrets {
    ProxySecrets {
        certificate_chain_pem: "CHAIN".into(),
        private_key_pem: "KEY".to_owned().into(),
        bundles: vec![
            ("red.local".into(), "RED ROOT".into()),
            ("green.local".into(), "GREEN ROOT".into()),
        ],
    }
}

pub(super) fn model(extra: &str) -> MeshModel {
    let yaml = format!("{MESH}{extra}");
    let snapshot = load_text(&yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e:?}"));
    MeshModel::build(
        Arc::new(snapshot),
        &TrustDomain::new("red.local").unwrap(),
        "istio-system",
    )
}

pub(super) fn snapshot_of(extra: &str, workload: &str) -> ProxySnapshot {
    proxy_snapshot(&model(extra), &node(workload), &secrets()).unwrap()
}

pub(super) fn decoded<M: Message + Default>(
    s: &ProxySnapshot,
    type_url: &str,
) -> BTreeMap<String, M> {
    s.get(type_url)
        .map(|t| {
            t.items()
                .map(|r| {
                    (
                        r.name.to_string(),
                        M::decode(r.body().value.as_slice()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn clusters(s: &ProxySnapshot) -> BTreeMap<String, Cluster> {
    decoded(s, CLUSTER)
}

fn upstream_tls(c: &Cluster) -> Option<UpstreamTlsContext> {
    let socket = c.transport_socket.as_ref()?;
    let Some(
        isthmus_proto::envoy::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
            any,
        ),
    ) = &socket.config_type
    else {
        return None;
    };
    Some(UpstreamTlsContext::decode(any.value.as_slice()).unwrap())
}

fn peer_sans(tls: &UpstreamTlsContext) -> Vec<String> {
    let common = tls.common_tls_context.as_ref().unwrap();
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) =
        &common.validation_context_type
    else {
        panic!("no combined validation context")
    };
    v.default_validation_context
        .as_ref()
        .unwrap()
        .match_typed_subject_alt_names
        .iter()
        .map(|m| format!("{:?}", m.matcher.as_ref().unwrap().match_pattern))
        .collect()
}

#[test]
fn clusters_per_port_and_subset_with_policy_and_scope() {
    const RULE: &str = "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.local
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 7, connectTimeout: 2s}, http: {http2MaxRequests: 9}}
    outlierDetection: {consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 50}
  subsets:
  - {name: v1, labels: {version: v1}}
";
    // (case, extra YAML, proxy, check)
    type Check = fn(&BTreeMap<String, Cluster>);
    let cases: &[(&str, &str, &str, Check)] = &[
        (
            "scope: exportTo '.' hides another namespace's service",
            "",
            "web",
            |c| {
                let names: Vec<&str> = c.keys().map(String::as_str).collect();
                assert!(
                    !names.iter().any(|n| n.contains("private.other.local")),
                    "{names:?}"
                );
                assert!(
                    names.contains(&"outbound|9080||reviews.shop.local"),
                    "{names:?}"
                );
                assert!(
                    names.contains(&"outbound|7000||reviews.shop.local"),
                    "{names:?}"
                );
                assert!(names.contains(&"outbound|443||httpbin.org"), "{names:?}");
            },
        ),
        (
            "defaults: least request, EDS, auto mTLS to the endpoints' identities",
            "",
            "web",
            |c| {
                let reviews = &c["outbound|9080||reviews.shop.local"];
                assert_eq!(reviews.lb_policy, cluster::LbPolicy::LeastRequest as i32);
                assert_eq!(
                    reviews.cluster_discovery_type,
                    Some(cluster::ClusterDiscoveryType::Type(
                        cluster::DiscoveryType::Eds as i32
                    ))
                );
                assert!(reviews.outlier_detection.is_none());
                let tls = upstream_tls(reviews).expect("mTLS");
                assert_eq!(tls.sni, "reviews.shop.local");
                assert_eq!(
                    peer_sans(&tls),
                    [r#"Some(Exact("spiffe://red.local/ns/shop/sa/reviews"))"#]
                );
                let limits = &reviews.circuit_breakers.as_ref().unwrap().thresholds[0];
                assert_eq!(limits.max_connections.as_ref().unwrap().value, u32::MAX);
            },
        ),
        (
            "external DNS service: STRICT_DNS, no mesh TLS",
            "",
            "web",
            |c| {
                let httpbin = &c["outbound|443||httpbin.org"];
                assert_eq!(
                    httpbin.cluster_discovery_type,
                    Some(cluster::ClusterDiscoveryType::Type(
                        cluster::DiscoveryType::StrictDns as i32
                    ))
                );
                assert!(upstream_tls(httpbin).is_none());
            },
        ),
        (
            "DestinationRule: LB, pool, outlier detection, subsets",
            RULE,
            "web",
            |c| {
                let reviews = &c["outbound|9080||reviews.shop.local"];
                assert_eq!(reviews.lb_policy, cluster::LbPolicy::RoundRobin as i32);
                assert_eq!(reviews.connect_timeout.as_ref().unwrap().seconds, 2);
                let limits = &reviews.circuit_breakers.as_ref().unwrap().thresholds[0];
                assert_eq!(limits.max_connections.as_ref().unwrap().value, 7);
                assert_eq!(limits.max_requests.as_ref().unwrap().value, 9);
                let od = reviews.outlier_detection.as_ref().unwrap();
                assert_eq!(od.consecutive_5xx.as_ref().unwrap().value, 3);
                assert_eq!(od.base_ejection_time.as_ref().unwrap().seconds, 30);
                assert_eq!(od.max_ejection_percent.as_ref().unwrap().value, 50);
                assert!(c.contains_key("outbound|9080|v1|reviews.shop.local"));
                assert!(c.contains_key("outbound|7000|v1|reviews.shop.local"));
            },
        ),
        (
            "tls DISABLE turns mTLS off",
            "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec: {host: reviews.shop.local, trafficPolicy: {tls: {mode: DISABLE}}}
",
            "web",
            |c| assert!(upstream_tls(&c["outbound|9080||reviews.shop.local"]).is_none()),
        ),
    ];
    for (case, extra, workload, check) in cases {
        let s = snapshot_of(extra, workload);
        eprintln!("case: {case}");
        check(&clusters(&s));
    }
}

fn outbound_routes(s: &ProxySnapshot) -> RouteConfiguration {
    decoded::<RouteConfiguration>(s, ROUTE)
        .remove("outbound")
        .unwrap()
}

fn vs(http: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews.shop.local]
  http:
{http}"
    )
}

fn cluster_of(r: &route::Action) -> String {
    match r {
        route::Action::Route(a) => match a.cluster_specifier.as_ref().unwrap() {
            route_action::ClusterSpecifier::Cluster(c) => c.clone(),
            route_action::ClusterSpecifier::WeightedClusters(w) => w
                .clusters
                .iter()
                .map(|c| format!("{}={}", c.name, c.weight.as_ref().unwrap().value))
                .collect::<Vec<_>>()
                .join(","),
            other => format!("{other:?}"),
        },
        other => format!("{other:?}"),
    }
}

#[test]
fn routes_from_virtual_services() {
    type Check = fn(&RouteConfiguration);
    let cases: Vec<(&str, String, Check)> = vec![
        ("no VirtualService: one default route per HTTP port", String::new(), |rc| {
            let vh = rc.virtual_hosts.iter().find(|v| v.name == "reviews.shop.local:9080").unwrap();
            assert_eq!(vh.domains, ["reviews.shop.local:9080", "reviews.shop.local"]);
            assert_eq!(vh.routes.len(), 1);
            let route::Action::Route(a) = vh.routes[0].action.as_ref().unwrap() else { panic!() };
            assert_eq!(a.timeout.as_ref().unwrap().seconds, 0, "no timeout by default (Istio)");
            let retry = a.retry_policy.as_ref().unwrap();
            assert_eq!(retry.num_retries.as_ref().unwrap().value, 2);
            assert!(!rc.virtual_hosts.iter().any(|v| v.name.starts_with("httpbin")), "TLS is not HTTP");
        }),
        (
            "an empty match is a presence match (Istio's `{}`), also inverted and on a query parameter",
            vs("  - match: [{headers: {x-canary: {}}, withoutHeaders: {x-legacy: {}}, queryParams: {debug: {}}}]
    route: [{destination: {host: reviews.shop.local, subset: v2}}]
"),
            |rc| {
                let vh = rc.virtual_hosts.iter().find(|v| v.name == "reviews.shop.local:9080").unwrap();
                let m = vh.routes[0].r#match.as_ref().unwrap();
                let present = Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true));
                assert_eq!((m.headers[0].name.as_str(), &m.headers[0].header_match_specifier, m.headers[0].invert_match), ("x-canary", &present, false));
                assert_eq!((m.headers[1].name.as_str(), &m.headers[1].header_match_specifier, m.headers[1].invert_match), ("x-legacy", &present, true));
                assert_eq!(
                    m.query_parameters[0].query_parameter_match_specifier,
                    Some(query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true))
                );
            },
        ),
        (
            "header match to a subset, then a weighted default",
            vs("  - match: [{headers: {X-Version: {exact: v2}}, uri: {prefix: /api}}, {queryParams: {v: {regex: '2.*'}}}]
    route: [{destination: {host: reviews.shop.local, subset: v2}}]
    timeout: 3s
    retries: {attempts: 4, retryOn: '5xx,503'}
  - route:
    - {destination: {host: reviews.shop.local, subset: v1}, weight: 90}
    - {destination: {host: reviews.shop.local, subset: v2}, weight: 10}
"),
            |rc| {
                let vh = rc.virtual_hosts.iter().find(|v| v.name == "reviews.shop.local:9080").unwrap();
                assert_eq!(vh.routes.len(), 3, "two matches (OR) and the default");
                let first = &vh.routes[0];
                let m = first.r#match.as_ref().unwrap();
                assert_eq!(m.headers[0].name, "x-version");
                assert!(format!("{:?}", m.path_specifier).contains("Prefix(\"/api\")"));
                assert_eq!(cluster_of(first.action.as_ref().unwrap()), "outbound|9080|v2|reviews.shop.local");
                let route::Action::Route(a) = first.action.as_ref().unwrap() else { panic!() };
                assert_eq!(a.timeout.as_ref().unwrap().seconds, 3);
                let retry = a.retry_policy.as_ref().unwrap();
                assert_eq!(retry.retry_on, "5xx,retriable-status-codes");
                assert_eq!(retry.retriable_status_codes, [503]);
                assert_eq!(retry.num_retries.as_ref().unwrap().value, 4);
                assert_eq!(vh.routes[1].r#match.as_ref().unwrap().query_parameters[0].name, "v");
                assert_eq!(
                    cluster_of(vh.routes[2].action.as_ref().unwrap()),
                    "outbound|9080|v1|reviews.shop.local=90,outbound|9080|v2|reviews.shop.local=10"
                );
            },
        ),
        (
            "redirect, direct response, header edits",
            vs("  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, redirectCode: 302}
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: short and stout}}
  - route: [{destination: {host: reviews.shop.local}}]
    headers: {request: {set: {X-Mesh: isthmus}, remove: [X-Debug]}, response: {add: {X-Served-By: reviews}}}
"),
            |rc| {
                let vh = rc.virtual_hosts.iter().find(|v| v.name == "reviews.shop.local:9080").unwrap();
                let route::Action::Redirect(r) = vh.routes[0].action.as_ref().unwrap() else { panic!() };
                assert_eq!(r.response_code, 1, "302 is FOUND");
                let route::Action::DirectResponse(d) = vh.routes[1].action.as_ref().unwrap() else { panic!() };
                assert_eq!(d.status, 418);
                let edit = &vh.routes[2];
                assert_eq!(edit.request_headers_to_add[0].header.as_ref().unwrap().key, "x-mesh");
                assert_eq!(edit.request_headers_to_remove, ["x-debug"]);
                assert_eq!(edit.response_headers_to_add[0].header.as_ref().unwrap().value, "reviews");
            },
        ),
        (
            "port and sourceLabels decide per proxy",
            vs("  - match: [{port: 7000}]
    route: [{destination: {host: reviews.shop.local, subset: v2}}]
  - match: [{sourceLabels: {app: other}}]
    route: [{destination: {host: reviews.shop.local, subset: v2}}]
  - match: [{sourceLabels: {app: web}}]
    route: [{destination: {host: reviews.shop.local, subset: v1}}]
"),
            |rc| {
                let vh = rc.virtual_hosts.iter().find(|v| v.name == "reviews.shop.local:9080").unwrap();
                assert_eq!(vh.routes.len(), 1, "only the web match applies to web on 9080");
                assert_eq!(cluster_of(vh.routes[0].action.as_ref().unwrap()), "outbound|9080|v1|reviews.shop.local");
            },
        ),
    ];
    for (case, extra, check) in &cases {
        eprintln!("case: {case}");
        check(&outbound_routes(&snapshot_of(extra, "web")));
    }
}

fn inbound_listener(s: &ProxySnapshot, port: u32) -> Listener {
    decoded::<Listener>(s, LISTENER)
        .into_values()
        .find(|l| l.name.ends_with(&format!("_{port}")) && l.name.starts_with("inbound"))
        .unwrap()
}

#[test]
fn inbound_listeners_follow_peer_authentication() {
    let pa = |ns: &str, spec: &str| {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p, namespace: {ns}}}\nspec: {spec}\n"
        )
    };
    // (case, policy, port, chains by transport protocol)
    let cases: Vec<(&str, String, u32, Vec<&str>)> = vec![
        (
            "default PERMISSIVE: TLS and plaintext",
            String::new(),
            19080,
            vec!["tls", "raw_buffer"],
        ),
        (
            "namespace STRICT: TLS only",
            pa("shop", "{mtls: {mode: STRICT}}"),
            19080,
            vec!["tls"],
        ),
        (
            "mesh STRICT from the root namespace",
            pa("istio-system", "{mtls: {mode: STRICT}}"),
            7000,
            vec!["tls"],
        ),
        (
            "DISABLE: plaintext only",
            pa("shop", "{mtls: {mode: DISABLE}}"),
            19080,
            vec![""],
        ),
        (
            "port-level PERMISSIVE under STRICT",
            pa(
                "shop",
                "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}, portLevelMtls: {7000: {mode: PERMISSIVE}}}",
            ),
            7000,
            vec!["tls", "raw_buffer"],
        ),
    ];
    for (case, policy, port, expected) in cases {
        let s = snapshot_of(&policy, "reviews-v1");
        let l = inbound_listener(&s, port);
        let got: Vec<String> = l
            .filter_chains
            .iter()
            .map(|c| {
                c.filter_chain_match
                    .as_ref()
                    .map(|m| m.transport_protocol.clone())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(got, expected, "{case}");
        let address = format!("{:?}", l.address);
        assert!(address.contains("127.0.0.21"), "{case}: {address}");
    }
    // The inbound cluster reaches the application on its APP_PORTS port.
    let s = snapshot_of("", "reviews-v1");
    let c = &clusters(&s)["inbound|19080||"];
    let la = c.load_assignment.as_ref().unwrap();
    let Some(lb_endpoint::HostIdentifier::Endpoint(e)) =
        &la.endpoints[0].lb_endpoints[0].host_identifier
    else {
        panic!()
    };
    assert!(format!("{:?}", e.address).contains("PortValue(8080)"));
    // A workload no service selects has no inbound listener.
    let s = snapshot_of("", "web");
    assert!(
        decoded::<Listener>(&s, LISTENER)
            .keys()
            .all(|n| !n.starts_with("inbound"))
    );
}

#[test]
fn authorization_policies_become_rbac_in_the_inbound_routes() {
    let ap = |name: &str, spec: &str| {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {spec}\n"
        )
    };
    let per_filter = |extra: &str| -> BTreeMap<String, (i32, usize)> {
        let s = snapshot_of(extra, "reviews-v1");
        let rc = decoded::<RouteConfiguration>(&s, ROUTE)
            .remove("inbound|19080")
            .unwrap();
        rc.virtual_hosts[0]
            .typed_per_filter_config
            .iter()
            .map(|(k, v)| {
                let rules = RbacPerRoute::decode(v.value.as_slice())
                    .unwrap()
                    .rbac
                    .unwrap()
                    .rules
                    .unwrap();
                (k.clone(), (rules.action, rules.policies.len()))
            })
            .collect()
    };
    let deny = rbac::Action::Deny as i32;
    let allow = rbac::Action::Allow as i32;
    // (case, policies, per RBAC filter: (action, number of policies))
    type Case<'a> = (&'a str, String, Vec<(&'a str, (i32, usize))>);
    let cases: Vec<Case<'_>> = vec![
        ("no policy: no RBAC", String::new(), vec![]),
        (
            "DENY with one rule",
            ap(
                "d",
                "{action: DENY, rules: [{from: [{source: {principals: [red.local/ns/shop/sa/web]}}]}]}",
            ),
            vec![(RBAC_DENY, (deny, 1))],
        ),
        (
            "DENY without rules never matches: no filter config",
            ap("d", "{action: DENY}"),
            vec![],
        ),
        (
            "ALLOW without rules denies everything",
            ap("a", "{action: ALLOW}"),
            vec![(RBAC_ALLOW, (allow, 0))],
        ),
        (
            "DENY and ALLOW together",
            ap(
                "d",
                "{action: DENY, rules: [{to: [{operation: {paths: [/admin*]}}]}]}",
            ) + &ap(
                "a",
                "{action: ALLOW, rules: [{from: [{source: {namespaces: [shop]}}]}, {to: [{operation: {methods: [GET]}}]}]}",
            ),
            vec![(RBAC_DENY, (deny, 1)), (RBAC_ALLOW, (allow, 2))],
        ),
        (
            "another workload's selector does not apply",
            ap(
                "d",
                "{selector: {matchLabels: {app: web}}, action: DENY, rules: [{}]}",
            ),
            vec![],
        ),
    ];
    for (case, extra, expected) in cases {
        let expected: BTreeMap<String, (i32, usize)> = expected
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(per_filter(&extra), expected, "{case}");
    }
}

const RBAC_DENY: &str = super::names::RBAC_DENY_FILTER;
const RBAC_ALLOW: &str = super::names::RBAC_ALLOW_FILTER;

#[test]
fn a_kubernetes_endpoint_serves_only_the_ports_its_slice_lists() {
    use crate::config::cluster::{
        ClusterEndpoint, ClusterPod, ClusterService, ClusterServicePort, ClusterState,
    };
    let endpoint = |address: &str, pod: &str, ports: &[(&str, u32)]| ClusterEndpoint {
        address: address.into(),
        ports: Arc::new(ports.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect()),
        ready: true,
        serving: true,
        terminating: false,
        pod: Some(pod.into()),
        zone: None,
    };
    let mut cluster = ClusterState::default();
    for (name, ip) in [("api-new", "10.1.0.1"), ("api-old", "10.1.0.2")] {
        cluster.pods.insert(
            ("shop".into(), name.into()),
            ClusterPod {
                namespace: "shop".into(),
                name: name.into(),
                ip: ip.into(),
                labels: Arc::default(),
                service_account: "api".into(),
            },
        );
    }
    let port = |name: &str, number| ClusterServicePort {
        name: name.into(),
        port: number,
        app_protocol: None,
        target_port: None,
    };
    cluster.services.insert(
        ("shop".into(), "api".into()),
        ClusterService {
            namespace: "shop".into(),
            name: "api".into(),
            labels: BTreeMap::new(),
            cluster_ips: vec!["10.96.0.7".into()],
            ports: vec![port("http", 80), port("http-metrics", 9090)],
            // The old pod has no container port named for metrics: its slice lists http only.
            endpoints: vec![
                endpoint(
                    "10.1.0.1",
                    "api-new",
                    &[("http", 8080), ("http-metrics", 9091)],
                ),
                endpoint("10.1.0.2", "api-old", &[("http", 8080)]),
            ],
        },
    );
    let snapshot = load_text(MESH, Path::new("t.yaml"))
        .unwrap()
        .with_cluster(Arc::new(cluster));
    let model = MeshModel::build(
        Arc::new(snapshot),
        &TrustDomain::new("red.local").unwrap(),
        "istio-system",
    );
    let s = proxy_snapshot(&model, &node("web"), &secrets()).unwrap();
    let all = decoded::<ClusterLoadAssignment>(&s, ENDPOINT);
    let http = format!("{:?}", all["outbound|80||api.shop.svc.cluster.local"]);
    assert!(
        http.contains("10.1.0.1") && http.contains("10.1.0.2"),
        "{http}"
    );
    let metrics = format!("{:?}", all["outbound|9090||api.shop.svc.cluster.local"]);
    assert!(
        metrics.contains("10.1.0.1") && metrics.contains("PortValue(9091)"),
        "{metrics}"
    );
    assert!(!metrics.contains("10.1.0.2"), "{metrics}");
}

#[test]
fn endpoints_get_locality_priorities_only_with_outlier_detection() {
    let eds = |extra: &str| -> Vec<(String, u32)> {
        let s = snapshot_of(extra, "web");
        let cla: ClusterLoadAssignment = decoded::<ClusterLoadAssignment>(&s, ENDPOINT)
            .remove("outbound|9080||reviews.shop.local")
            .unwrap();
        cla.endpoints
            .iter()
            .map(|l| (l.locality.as_ref().unwrap().region.clone(), l.priority))
            .collect()
    };
    assert_eq!(eds(""), [("eu".to_owned(), 0), ("us".to_owned(), 0)]);
    let rule = "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec: {host: reviews.shop.local, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1}}}
";
    // web is in eu/a: eu first, us next (priorities are contiguous from 0).
    assert_eq!(eds(rule), [("eu".to_owned(), 0), ("us".to_owned(), 1)]);
    // Subsets carry only their endpoints; ports come from the WorkloadEntry when named.
    let s = snapshot_of(
        "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec: {host: reviews.shop.local, subsets: [{name: v2, labels: {version: v2}}]}
",
        "web",
    );
    let all = decoded::<ClusterLoadAssignment>(&s, ENDPOINT);
    let v2 = &all["outbound|9080|v2|reviews.shop.local"];
    let text = format!("{v2:?}");
    assert!(
        text.contains("127.0.0.22") && !text.contains("127.0.0.21"),
        "{text}"
    );
    assert!(format!("{:?}", all["outbound|9080||reviews.shop.local"]).contains("PortValue(19080)"));
    assert!(
        !all.contains_key("outbound|443||httpbin.org"),
        "DNS clusters carry their own endpoints"
    );
}

#[test]
fn distribute_weighs_localities_for_the_callers_of_a_locality() {
    let rule = "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.local
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - {from: eu/*, to: {eu/a/*: 80, us/*: 20}}
";
    let weights = |workload: &str| -> Vec<(String, u32, u32)> {
        let s = snapshot_of(rule, workload);
        let cla: ClusterLoadAssignment = decoded::<ClusterLoadAssignment>(&s, ENDPOINT)
            .remove("outbound|9080||reviews.shop.local")
            .unwrap();
        cla.endpoints
            .iter()
            .map(|l| {
                (
                    l.locality.as_ref().unwrap().region.clone(),
                    l.load_balancing_weight.as_ref().unwrap().value,
                    l.priority,
                )
            })
            .collect()
    };
    // web is in eu/a: the rule's shares, one priority.
    assert_eq!(
        weights("web"),
        [("eu".to_owned(), 80, 0), ("us".to_owned(), 20, 0)]
    );
    // reviews-v2 is in us/b, which no rule takes: each locality weighs its endpoints.
    assert_eq!(
        weights("reviews-v2"),
        [("eu".to_owned(), 1, 0), ("us".to_owned(), 1, 0)]
    );
    let cluster = &clusters(&snapshot_of(rule, "web"))["outbound|9080||reviews.shop.local"];
    assert!(
        matches!(
            cluster
                .common_lb_config
                .as_ref()
                .and_then(|c| c.locality_config_specifier.as_ref()),
            Some(cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
        ),
        "{cluster:?}"
    );
}

#[test]
fn secrets_carry_the_certificate_and_one_bundle_per_trust_domain() {
    let s = snapshot_of("", "web");
    let sent = decoded::<Secret>(&s, SECRET);
    let Some(secret::Type::TlsCertificate(cert)) = &sent["default"].r#type else {
        panic!()
    };
    assert!(format!("{:?}", cert.certificate_chain).contains("InlineBytes"));
    let Some(secret::Type::ValidationContext(v)) = &sent["ROOTCA"].r#type else {
        panic!()
    };
    let custom = v.custom_validator_config.as_ref().unwrap();
    assert_eq!(custom.name, "envoy.tls.cert_validator.spiffe");
    let spiffe =
        SpiffeCertValidatorConfig::decode(custom.typed_config.as_ref().unwrap().value.as_slice())
            .unwrap();
    let domains: Vec<&str> = spiffe
        .trust_domains
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(domains, ["red.local", "green.local"]);

    // Before its certificate is issued, a proxy gets the bundles only.
    let mut none = secrets();
    none.certificate_chain_pem.clear();
    let s = proxy_snapshot(&model(""), &node("web"), &none).unwrap();
    assert_eq!(
        decoded::<Secret>(&s, SECRET).keys().collect::<Vec<_>>(),
        ["ROOTCA", "ROOTCA/green.local"],
        "the bundles, and each peer's alone (for federation gateways)"
    );
}

#[test]
fn an_endpoint_change_changes_only_endpoint_versions() {
    let before = snapshot_of("", "web");
    let again = snapshot_of("", "web");
    assert_eq!(before, again, "generation is deterministic");
    let moved = MESH.replace("address: 127.0.0.22", "address: 127.0.0.32");
    let snapshot = load_text(&moved, Path::new("t.yaml")).unwrap();
    let model = MeshModel::build(
        Arc::new(snapshot),
        &TrustDomain::new("red.local").unwrap(),
        "istio-system",
    );
    let after = proxy_snapshot(&model, &node("web"), &secrets()).unwrap();
    for type_url in [LISTENER, ROUTE, CLUSTER, SECRET] {
        assert_eq!(
            before.get(type_url).unwrap().version,
            after.get(type_url).unwrap().version,
            "{type_url} changed"
        );
    }
    assert_ne!(
        before.get(ENDPOINT).unwrap().version,
        after.get(ENDPOINT).unwrap().version
    );
}

#[test]
fn an_unknown_workload_is_an_error_naming_it() {
    let e = proxy_snapshot(&model(""), &node("ghost"), &secrets()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "node sidecar~127.0.0.1~ghost.shop~shop.svc.cluster.local: no WorkloadEntry shop/ghost (with an address) in the configuration"
    );
}

#[test]
fn capture_mode_matches_chains_on_the_original_destination() {
    let extra = "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.shop.local]
  addresses: [10.96.0.20]
  location: MESH_INTERNAL
  ports: [{number: 5432, name: tcp-pg}]
  endpoints: [{address: 10.1.0.5}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web-vip, namespace: shop}
spec:
  hosts: [web.shop.local]
  addresses: [10.96.0.30]
  location: MESH_INTERNAL
  ports: [{number: 8080, name: http}]
  endpoints: [{address: 10.1.0.6}]
";
    let mut captured = node("reviews-v1");
    captured.interception = crate::model::Interception::Redirect;
    let s = proxy_snapshot(&model(extra), &captured, &secrets()).unwrap();
    let listeners = decoded::<Listener>(&s, LISTENER);
    assert_eq!(
        listeners.keys().collect::<Vec<_>>(),
        ["virtualInbound", "virtualOutbound"],
        "capture replaces the explicit listeners"
    );
    let filter_types = |l: &Listener| -> Vec<String> {
        l.listener_filters
            .iter()
            .map(|f| match &f.config_type {
                Some(listener_filter::ConfigType::TypedConfig(any)) => any.type_url.clone(),
                _ => String::new(),
            })
            .collect()
    };

    let outbound = &listeners["virtualOutbound"];
    let address = outbound.address.as_ref().unwrap();
    assert_eq!(address_of(address), ("0.0.0.0".to_owned(), 15001));
    assert!(filter_types(outbound)[0].ends_with("original_dst.v3.OriginalDst"));
    // (destination port, prefix ranges) of each chain.
    let matches: Vec<(u32, Vec<String>)> = outbound
        .filter_chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.as_ref().unwrap();
            (
                m.destination_port.as_ref().unwrap().value,
                m.prefix_ranges
                    .iter()
                    .map(|r| format!("{}/{}", r.address_prefix, r.prefix_len.unwrap().value))
                    .collect(),
            )
        })
        .collect();
    assert!(matches.contains(&(9080, vec![])), "HTTP port: {matches:?}");
    assert!(matches.contains(&(8080, vec![])), "HTTP port: {matches:?}");
    assert!(
        matches.contains(&(5432, vec!["10.96.0.20/32".into()])),
        "a TCP service by its VIP: {matches:?}"
    );
    assert!(
        matches.contains(&(7000, vec!["127.0.0.21/32".into(), "127.0.0.22/32".into()])),
        "a TCP service without a VIP, by its endpoints: {matches:?}"
    );
    let default = outbound.default_filter_chain.as_ref().unwrap();
    assert_eq!(default.name, "PassthroughCluster");
    let passthrough = &clusters(&s)["PassthroughCluster"];
    assert_eq!(
        passthrough.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32
        ))
    );

    // The VIP is a domain of the service's virtual host.
    let routes = outbound_routes(&s);
    let web = routes
        .virtual_hosts
        .iter()
        .find(|v| v.name == "web.shop.local:8080")
        .unwrap();
    assert!(
        web.domains.contains(&"10.96.0.30:8080".to_owned())
            && web.domains.contains(&"10.96.0.30".to_owned()),
        "{:?}",
        web.domains
    );

    let inbound = &listeners["virtualInbound"];
    assert_eq!(
        address_of(inbound.address.as_ref().unwrap()),
        ("0.0.0.0".to_owned(), 15006)
    );
    assert_eq!(
        filter_types(inbound).len(),
        2,
        "original_dst and tls_inspector"
    );
    let ports: BTreeSet<u32> = inbound
        .filter_chains
        .iter()
        .map(|c| {
            c.filter_chain_match
                .as_ref()
                .unwrap()
                .destination_port
                .as_ref()
                .unwrap()
                .value
        })
        .collect();
    // reviews-v1 serves 9080 on 19080 and 7000 (its WorkloadEntry ports).
    assert_eq!(ports, BTreeSet::from([19080, 7000]));
}

#[test]
fn allocated_addresses_match_beside_the_endpoints_and_fill_the_name_table() {
    let extra = "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cache, namespace: shop}
spec:
  hosts: [cache.shop.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 6379, name: tcp-redis}]
  endpoints: [{address: 10.1.0.7}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: shop}
spec:
  hosts: ['*.wild.example']
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls}]
";
    let mut model = model(extra);
    let table = crate::model::vips::VipTable::from([(
        "cache.shop.local".to_owned(),
        std::net::Ipv4Addr::new(240, 240, 1, 2),
    )]);
    model.assign_virtual_addresses(&table);
    let mut captured = node("reviews-v1");
    captured.interception = crate::model::Interception::Redirect;
    let s = proxy_snapshot(&model, &captured, &secrets()).unwrap();
    let outbound = &decoded::<Listener>(&s, LISTENER)["virtualOutbound"];
    let cache = outbound
        .filter_chains
        .iter()
        .find(|c| c.name.ends_with("cache.shop.local"))
        .unwrap();
    let ranges: Vec<String> = cache
        .filter_chain_match
        .as_ref()
        .unwrap()
        .prefix_ranges
        .iter()
        .map(|r| r.address_prefix.clone())
        .collect();
    // The DNS proxy's answer, and what any other resolver would give.
    assert_eq!(ranges, ["240.240.1.2", "10.1.0.7"]);

    let names = &decoded::<isthmus_proto::dns::NameTable>(&s, isthmus_proto::dns::NAME_TABLE_TYPE)
        [isthmus_proto::dns::NAME_TABLE_RESOURCE];
    assert_eq!(names.table["cache.shop.local"].ips, ["240.240.1.2"]);
    assert!(
        !names.table.keys().any(|n| n.contains('*')),
        "no wildcard: {:?}",
        names.table.keys()
    );
}

fn address_of(a: &isthmus_proto::envoy::envoy::config::core::v3::Address) -> (String, u32) {
    use isthmus_proto::envoy::envoy::config::core::v3::{address, socket_address};
    match &a.address {
        Some(address::Address::SocketAddress(s)) => (
            s.address.clone(),
            match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => p,
                _ => 0,
            },
        ),
        _ => panic!("not a socket address"),
    }
}

#[test]
fn a_proxyless_grpc_client_gets_api_listeners_plaintext_eds_clusters_and_weighted_localities() {
    let grpc_node = ProxyNode::from_metadata(
        "sidecar~127.0.0.1~web.shop~shop.svc.cluster.local",
        &BTreeMap::from([("GENERATOR".to_owned(), "grpc".to_owned())]),
    )
    .unwrap();
    assert_eq!(grpc_node.role, NodeRole::Proxyless);
    let model = model("");
    let s = proxy_snapshot(&model, &grpc_node, &secrets()).unwrap();
    let listeners = decoded::<Listener>(&s, LISTENER);
    // Named as the client's target; the first HTTP port also under the bare host.
    let reviews = &listeners["reviews.shop.local:9080"];
    assert!(listeners.contains_key("reviews.shop.local"));
    assert!(reviews.address.is_none() && reviews.filter_chains.is_empty());
    let any = reviews
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .unwrap();
    let hcm = isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["envoy.filters.http.router"]);
    // TCP ports are not gRPC's.
    assert!(
        !listeners.keys().any(|k| k.contains(":7000")),
        "{listeners:?}"
    );
    // No transport socket (SDS is not gRPC's), no DNS clusters, no inbound, no secrets.
    let clusters = clusters(&s);
    assert!(clusters.contains_key("outbound|9080||reviews.shop.local"));
    assert!(clusters.values().all(|c| c.transport_socket.is_none()));
    // Round robin where a sidecar has least request (no DestinationRule): gRPC's core has
    // no least request.
    assert_eq!(
        clusters["outbound|9080||reviews.shop.local"].lb_policy,
        cluster::LbPolicy::RoundRobin as i32
    );
    assert!(
        !clusters
            .keys()
            .any(|k| k.contains("httpbin") || k.starts_with("inbound"))
    );
    assert!(s.get(SECRET).is_none_or(TypeResources::is_empty));
    // Every locality weighted (gRPC drops a locality without a weight).
    let endpoints = decoded::<ClusterLoadAssignment>(&s, ENDPOINT);
    let reviews = &endpoints["outbound|9080||reviews.shop.local"];
    assert!(!reviews.endpoints.is_empty());
    for locality in &reviews.endpoints {
        let weight = locality.load_balancing_weight.map(|w| w.value);
        assert_eq!(
            weight,
            Some(u32::try_from(locality.lb_endpoints.len()).unwrap())
        );
    }
    // With gRPC's xDS credentials: the sidecar's mTLS through the `default` certificate
    // provider, the same peer identity.
    let with_credentials = ProxyNode::from_metadata(
        "sidecar~127.0.0.1~web.shop~shop.svc.cluster.local",
        &BTreeMap::from([
            ("GENERATOR".to_owned(), "grpc".to_owned()),
            ("ISTHMUS_XDS_CREDENTIALS".to_owned(), "true".to_owned()),
        ]),
    )
    .unwrap();
    let s = proxy_snapshot(&model, &with_credentials, &secrets()).unwrap();
    let tls =
        upstream_tls(&super::tests::clusters(&s)["outbound|9080||reviews.shop.local"]).unwrap();
    let common = tls.common_tls_context.unwrap();
    assert_eq!(
        common
            .tls_certificate_provider_instance
            .unwrap()
            .instance_name,
        "default"
    );
    assert!(common.tls_certificate_sds_secret_configs.is_empty());
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
        common.validation_context_type
    else {
        panic!("a plain validation context");
    };
    assert_eq!(
        v.ca_certificate_provider_instance.unwrap().certificate_name,
        "ROOTCA"
    );
    #[allow(deprecated)]
    let sans = format!("{:?}", v.match_subject_alt_names);
    assert!(
        sans.contains("spiffe://red.local/ns/shop/sa/reviews"),
        "{sans}"
    );
    // A router node cannot be a proxyless client.
    let err = ProxyNode::from_metadata(
        "router~127.0.0.1~gw.shop~shop.svc.cluster.local",
        &BTreeMap::from([("GENERATOR".to_owned(), "grpc".to_owned())]),
    )
    .unwrap_err();
    assert!(err.reason.contains("GENERATOR"), "{err}");
}

#[test]
fn a_virtual_service_bound_to_a_gateway_only_routes_no_sidecar_and_names_the_gateway() {
    let edge_only = "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: shop}
spec:
  hosts: [reviews.shop.local]
  gateways: [istio-system/public]
  http:
  - route: [{destination: {host: reviews.shop.local, subset: v2}}]
";
    let model = model(edge_only);
    assert!(!model.routes.contains_key("reviews.shop.local"));
    let warning = model
        .warnings
        .iter()
        .find(|w| w.resource.name == "edge")
        .expect("a warning on the VirtualService");
    assert!(
        warning.message.contains("istio-system/public")
            && warning.message.contains("apply to no proxy"),
        "{}",
        warning.message
    );
    // The sidecar keeps its default route to the service.
    let s = proxy_snapshot(&model, &node("web"), &secrets()).unwrap();
    let routes = outbound_routes(&s);
    let vh = routes
        .virtual_hosts
        .iter()
        .find(|v| v.name == "reviews.shop.local:9080")
        .unwrap();
    assert_eq!(vh.routes.len(), 1, "{vh:?}");
    // Bound to the mesh too: the sidecars take it.
    let both = edge_only.replace("[istio-system/public]", "[istio-system/public, mesh]");
    let both = super::tests::model(&both);
    assert!(both.routes.contains_key("reviews.shop.local"));
}

#[test]
fn simple_and_mutual_tls_originate_with_the_rules_files_and_names() {
    let extra = "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com, billing.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: shop}
spec:
  host: api.example.com
  trafficPolicy: {tls: {mode: SIMPLE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: billing, namespace: shop}
spec:
  host: billing.example.com
  trafficPolicy:
    tls:
      mode: MUTUAL
      caCertificates: /etc/certs/ca.pem
      clientCertificate: /etc/certs/cert.pem
      privateKey: /etc/certs/key.pem
      sni: billing.internal
      subjectAltNames: [billing.internal, spiffe://billing.example/api]
";
    let s = snapshot_of(extra, "web");
    let all = clusters(&s);
    let validation = |tls: &UpstreamTlsContext| {
        let common = tls.common_tls_context.clone().unwrap();
        let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
            common.validation_context_type
        else {
            panic!("an inline validation context: {common:?}")
        };
        (v, common.tls_certificates)
    };
    let file = |name: &str| {
        Some(isthmus_proto::envoy::envoy::config::core::v3::DataSource {
            specifier: Some(
                isthmus_proto::envoy::envoy::config::core::v3::data_source::Specifier::Filename(
                    name.into(),
                ),
            ),
            ..Default::default()
        })
    };

    let simple = upstream_tls(&all["outbound|80||api.example.com"]).unwrap();
    assert_eq!(simple.sni, "api.example.com", "the host is the SNI");
    assert!(
        simple.auto_sni_san_validation,
        "and the certificate must be valid for it"
    );
    let (v, certificates) = validation(&simple);
    assert_eq!(
        v.trusted_ca,
        file("/etc/ssl/certs/ca-certificates.crt"),
        "the system's roots"
    );
    assert!(v.match_typed_subject_alt_names.is_empty() && certificates.is_empty());

    let mutual = upstream_tls(&all["outbound|80||billing.example.com"]).unwrap();
    assert_eq!(mutual.sni, "billing.internal");
    assert!(
        !mutual.auto_sni_san_validation,
        "subjectAltNames replace the SNI check"
    );
    let (v, certificates) = validation(&mutual);
    assert_eq!(v.trusted_ca, file("/etc/certs/ca.pem"));
    let sans: Vec<(i32, String)> = v
        .match_typed_subject_alt_names
        .iter()
        .map(|m| {
            (
                m.san_type,
                format!("{:?}", m.matcher.as_ref().unwrap().match_pattern),
            )
        })
        .collect();
    assert_eq!(
        sans,
        [
            (
                subject_alt_name_matcher::SanType::Dns as i32,
                "Some(Exact(\"billing.internal\"))".into()
            ),
            (
                subject_alt_name_matcher::SanType::Uri as i32,
                "Some(Exact(\"spiffe://billing.example/api\"))".into()
            ),
        ]
    );
    assert_eq!(certificates.len(), 1);
    assert_eq!(
        certificates[0].certificate_chain,
        file("/etc/certs/cert.pem")
    );
    assert_eq!(certificates[0].private_key, file("/etc/certs/key.pem"));
    assert!(
        mutual
            .common_tls_context
            .as_ref()
            .unwrap()
            .tls_certificate_sds_secret_configs
            .is_empty(),
        "never the mesh's own certificate to a server outside the mesh"
    );
}

#[test]
fn port_level_and_subset_policies_merge_as_istio_does() {
    let extra = "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.local
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 10}}
    portLevelSettings:
    - port: {number: 9080}
      connectionPool: {http: {http2MaxRequests: 5}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
      portLevelSettings:
      - port: {number: 7000}
        tls: {mode: SIMPLE, sni: data.example.com}
";
    let s = snapshot_of(extra, "web");
    let all = clusters(&s);
    let facts = |name: &str| {
        let c = &all[name];
        let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
        (
            cluster::LbPolicy::try_from(c.lb_policy).unwrap(),
            t.max_connections.unwrap().value,
            t.max_requests.unwrap().value,
            upstream_tls(c).map(|t| t.sni),
        )
    };
    let (lr, rr, random) = (
        cluster::LbPolicy::LeastRequest,
        cluster::LbPolicy::RoundRobin,
        cluster::LbPolicy::Random,
    );
    let unlimited = u32::MAX;
    // Port 9080's settings replace the rule's whole: Istio's default balancer, no TCP limit.
    assert_eq!(
        facts("outbound|9080||reviews.shop.local"),
        (lr, unlimited, 5, Some("reviews.shop.local".into()))
    );
    assert_eq!(facts("outbound|7000||reviews.shop.local").0, rr);
    assert_eq!(facts("outbound|7000||reviews.shop.local").1, 10);
    assert_eq!(
        facts("outbound|9080|v1|reviews.shop.local"),
        facts("outbound|9080||reviews.shop.local")
    );
    // The subset's balancer over the port's settings; its own port 7000 settings replace all.
    assert_eq!(facts("outbound|9080|v2|reviews.shop.local").0, random);
    assert_eq!(facts("outbound|9080|v2|reviews.shop.local").2, 5);
    assert_eq!(
        facts("outbound|7000|v2|reviews.shop.local"),
        (lr, unlimited, unlimited, Some("data.example.com".into()))
    );
}

#[test]
fn h2_upgrade_and_the_deprecated_consecutive_errors_follow_istio() {
    let extra = "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.local
  trafficPolicy:
    connectionPool: {http: {h2UpgradePolicy: UPGRADE}}
    outlierDetection: {consecutiveErrors: 3}
";
    let s = snapshot_of(extra, "web");
    let all = clusters(&s);
    let c = &all["outbound|9080||reviews.shop.local"];
    let http2 = |c: &Cluster| {
        use http_protocol_options::explicit_http_config::ProtocolConfig;
        use isthmus_proto::envoy::envoy::extensions::upstreams::http::v3::{
            HttpProtocolOptions, http_protocol_options,
        };
        let any = &c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        let options = HttpProtocolOptions::decode(any.value.as_slice()).unwrap();
        matches!(
            options.upstream_protocol_options,
            Some(
                http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(_)),
                    }
                )
            )
        )
    };
    assert!(http2(c), "HTTP/1.1 upgraded");
    let tls = upstream_tls(c).unwrap();
    assert_eq!(tls.common_tls_context.unwrap().alpn_protocols, ["h2"]);
    let od = c.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_gateway_failure.unwrap().value, 3);
    assert_eq!(od.enforcing_consecutive_gateway_failure.unwrap().value, 100);
    assert_eq!(
        od.enforcing_consecutive_5xx.unwrap().value,
        0,
        "5xx ejection off"
    );
    // Without the rule: HTTP/1.1 stays.
    let plain = clusters(&snapshot_of("", "web"));
    assert!(!http2(&plain["outbound|9080||reviews.shop.local"]));
}
