//! The ADS client's protocol cases (delta, and state of the world through the adapter), on
//! the pure state machine.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use isthmus_proto::envoy::envoy::config::cluster::v3::{Cluster, cluster};
use isthmus_proto::envoy::envoy::config::core::v3::{
    AggregatedConfigSource, ConfigSource, Node, SocketAddress, address, config_source,
    socket_address,
};
use isthmus_proto::envoy::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use isthmus_proto::envoy::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use isthmus_proto::envoy::envoy::extensions::filters::http::router::v3::Router;
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use isthmus_proto::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use isthmus_proto::envoy::google::protobuf::Any;
use prost::{Message, Name};

use super::sotw::SotwAdapter;
use super::state::AdsState;
use crate::config::XdsType;

fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn ads() -> Option<ConfigSource> {
    Some(ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..ConfigSource::default()
    })
}

fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: ads(),
            service_name: name.into(),
        }),
        ..Cluster::default()
    }
}

fn http_listener(name: &str, route: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: ads(),
            route_config_name: route.into(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack(
                &Router::default(),
            ))),
            ..HttpFilter::default()
        }],
        ..HttpConnectionManager::default()
    };
    Listener {
        name: name.into(),
        address: Some(isthmus_proto::envoy::envoy::config::core::v3::Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(15001)),
                ..SocketAddress::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&hcm))),
            }],
            ..FilterChain::default()
        }],
        ..Listener::default()
    }
}

fn route_table(name: &str, cluster: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..RouteMatch::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.into(),
                    )),
                    ..RouteAction::default()
                })),
                ..Route::default()
            }],
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    }
}

fn response<M: Message + Name>(
    kind: XdsType,
    nonce: &str,
    items: &[(&str, M)],
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: format!("v{nonce}"),
        type_url: kind.type_url(),
        nonce: nonce.into(),
        resources: items
            .iter()
            .map(|(name, m)| Resource {
                name: (*name).into(),
                version: format!("{name}@{nonce}"),
                resource: Some(pack(m)),
                ..Resource::default()
            })
            .collect(),
        removed_resources: removed.iter().map(|s| (*s).to_owned()).collect(),
        ..DeltaDiscoveryResponse::default()
    }
}

fn state() -> AdsState {
    AdsState::new(Node {
        id: "sidecar~127.0.0.1~web.shop~shop.svc.cluster.local".into(),
        ..Node::default()
    })
}

fn types(requests: &[DeltaDiscoveryRequest]) -> Vec<(String, Vec<String>, Vec<String>)> {
    requests
        .iter()
        .map(|r| {
            (
                XdsType::from_type_url(&r.type_url)
                    .unwrap()
                    .short()
                    .to_owned(),
                r.resource_names_subscribe.clone(),
                r.resource_names_unsubscribe.clone(),
            )
        })
        .collect()
}

#[test]
fn a_stream_starts_with_wildcard_lds_and_cds_and_the_node_once() {
    let mut s = state();
    let first = s.start_stream();
    assert_eq!(
        types(&first),
        [
            ("CDS".to_owned(), vec![], vec![]),
            ("LDS".to_owned(), vec![], vec![])
        ]
    );
    assert!(first[0].node.is_some() && first[1].node.is_none());
    assert!(!s.ready(), "nothing applied yet");
}

#[test]
fn referenced_names_are_subscribed_and_readiness_waits_for_them() {
    let mut s = state();
    s.start_stream();
    let out = s.on_response(response(
        XdsType::Cluster,
        "1",
        &[("c1", eds_cluster("c1"))],
        &[],
    ));
    // The ACK, then EDS for the cluster.
    assert_eq!(out.requests[0].response_nonce, "1");
    assert!(out.requests[0].error_detail.is_none());
    assert_eq!(
        types(&out.requests[1..]),
        [("EDS".to_owned(), vec!["c1".to_owned()], vec![])]
    );
    let out = s.on_response(response(
        XdsType::Listener,
        "2",
        &[("l1", http_listener("l1", "r1"))],
        &[],
    ));
    assert_eq!(
        types(&out.requests[1..]),
        [("RDS".to_owned(), vec!["r1".to_owned()], vec![])]
    );
    assert!(!s.ready());
    assert_eq!(s.waiting_for(), [XdsType::Endpoint, XdsType::Route]);
    s.on_response(response(
        XdsType::Route,
        "3",
        &[("r1", route_table("r1", "c1"))],
        &[],
    ));
    s.on_response(response::<Cluster>(XdsType::Endpoint, "4", &[], &[]));
    assert!(s.ready(), "{:?}", s.waiting_for());
    assert!(s.config().routes.contains_key("r1"));
}

#[test]
fn an_unsupported_field_nacks_with_its_path_and_the_last_good_config_stays() {
    let mut s = state();
    s.start_stream();
    s.on_response(response(
        XdsType::Cluster,
        "1",
        &[("c1", eds_cluster("c1"))],
        &[],
    ));
    let mut bad = eds_cluster("c2");
    bad.lb_policy = cluster::LbPolicy::LoadBalancingPolicyConfig as i32;
    let mut also_bad = eds_cluster("c3");
    also_bad.alt_stat_name = "fine".into();
    also_bad.lrs_server = ads();
    let out = s.on_response(response(
        XdsType::Cluster,
        "2",
        &[("c2", bad), ("c3", also_bad), ("c1", eds_cluster("c1"))],
        &["c1"],
    ));
    assert_eq!(out.requests.len(), 1, "only the NACK");
    let error = out.requests[0]
        .error_detail
        .as_ref()
        .unwrap()
        .message
        .clone();
    assert!(
        error.contains("CDS \"c2\": lb_policy: LoadBalancingPolicyConfig is not supported"),
        "{error}"
    );
    assert!(
        error.contains("CDS \"c3\": lrs_server: not supported by isthmus-proxy"),
        "{error}"
    );
    assert!(out.config.is_none());
    assert!(
        s.config().clusters.contains_key("c1"),
        "nothing of the response applied"
    );
    assert_eq!(s.report()[0].rejected, 1);
}

#[test]
fn malformed_resources_are_nacked_not_fatal() {
    let mut s = state();
    s.start_stream();
    let mut r = response(XdsType::Cluster, "1", &[("c1", eds_cluster("c1"))], &[]);
    r.resources[0].resource.as_mut().unwrap().value = vec![0xff, 0xff, 0xff, 0x0f, 0x12];
    let out = s.on_response(r);
    let error = &out.requests[0].error_detail.as_ref().unwrap().message;
    assert!(
        error.contains("cannot decode envoy.config.cluster.v3.Cluster"),
        "{error}"
    );

    // A listener sent as a cluster, a resource without a name, one whose name differs.
    let mut r = response(
        XdsType::Cluster,
        "2",
        &[("c1", http_listener("l", "r"))],
        &[],
    );
    r.resources.push(Resource::default());
    let mut renamed = response(XdsType::Cluster, "x", &[("other", eds_cluster("c9"))], &[]);
    r.resources.append(&mut renamed.resources);
    let out = s.on_response(r);
    let error = &out.requests[0].error_detail.as_ref().unwrap().message;
    assert!(
        error.contains("expected a type.googleapis.com/envoy.config.cluster.v3.Cluster"),
        "{error}"
    );
    assert!(
        error.contains("resources[1]: the resource has no name"),
        "{error}"
    );
    assert!(
        error.contains("name: \"c9\" differs from the resource's name \"other\""),
        "{error}"
    );

    // A type the proxy never asked for.
    let mut r = response::<Cluster>(XdsType::Cluster, "3", &[], &[]);
    r.type_url = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig".into();
    let out = s.on_response(r);
    assert!(out.requests[0].error_detail.is_some());
    assert!(s.config().clusters.is_empty());
}

#[test]
fn removals_and_unreferenced_names_are_forgotten_and_unsubscribed() {
    let mut s = state();
    s.start_stream();
    s.on_response(response(
        XdsType::Cluster,
        "1",
        &[("c1", eds_cluster("c1")), ("c2", eds_cluster("c2"))],
        &[],
    ));
    s.on_response(response(
        XdsType::Endpoint,
        "2",
        &[(
            "c1",
            isthmus_proto::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment {
                cluster_name: "c1".into(),
                ..Default::default()
            },
        )],
        &[],
    ));
    let out = s.on_response(response::<Cluster>(XdsType::Cluster, "3", &[], &["c1"]));
    assert_eq!(
        types(&out.requests[1..]),
        [("EDS".to_owned(), vec![], vec!["c1".to_owned()])]
    );
    assert!(!s.config().clusters.contains_key("c1"));
    assert!(
        !s.config().endpoints.contains_key("c1"),
        "EDS of an unsubscribed name is dropped"
    );
}

#[test]
fn a_reconnect_sends_the_versions_held_and_the_subscriptions() {
    let mut s = state();
    s.start_stream();
    s.on_response(response(
        XdsType::Cluster,
        "1",
        &[("c1", eds_cluster("c1"))],
        &[],
    ));
    s.on_response(response(
        XdsType::Listener,
        "2",
        &[("l1", http_listener("l1", "r1"))],
        &[],
    ));
    let again = s.start_stream();
    assert_eq!(
        types(&again),
        [
            ("CDS".to_owned(), vec![], vec![]),
            ("EDS".to_owned(), vec!["c1".to_owned()], vec![]),
            ("LDS".to_owned(), vec![], vec![]),
            ("RDS".to_owned(), vec!["r1".to_owned()], vec![]),
        ]
    );
    assert_eq!(again[0].initial_resource_versions["c1"], "c1@1");
    assert_eq!(again[2].initial_resource_versions["l1"], "l1@2");
    assert!(again[0].node.is_some());
}

/// A SotW response of `kind` carrying `items` at `version`.
fn sotw_response<M: Message + Name>(
    kind: XdsType,
    nonce: &str,
    version: &str,
    items: &[M],
) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources: items.iter().map(pack).collect(),
        type_url: kind.type_url(),
        nonce: nonce.into(),
        ..DiscoveryResponse::default()
    }
}

/// The state machine driven over state-of-the-world ADS, as the client does it.
fn sotw_round(
    state: &mut AdsState,
    adapter: &mut SotwAdapter,
    response: DiscoveryResponse,
) -> Vec<DiscoveryRequest> {
    let kind = XdsType::from_type_url(&response.type_url).unwrap();
    let delta = adapter.delta_response(response, &state.held(kind));
    state
        .on_response(delta)
        .requests
        .into_iter()
        .map(|r| {
            let kind = XdsType::from_type_url(&r.type_url).unwrap();
            adapter.sotw_request(r, &state.subscribed(kind))
        })
        .collect()
}

#[test]
fn state_of_the_world_acks_with_versions_names_every_resource_and_removes_by_absence() {
    let mut state = state();
    let mut adapter = SotwAdapter::default();
    let first: Vec<DiscoveryRequest> = state
        .start_stream()
        .into_iter()
        .map(|r| {
            let kind = XdsType::from_type_url(&r.type_url).unwrap();
            adapter.sotw_request(r, &state.subscribed(kind))
        })
        .collect();
    assert!(first[0].node.is_some(), "the node on the first request");
    assert!(
        first
            .iter()
            .all(|r| r.version_info.is_empty() && r.resource_names.is_empty())
    );

    // LDS with two listeners: ACKed with its version; RDS asked for both route names at once.
    let requests = sotw_round(
        &mut state,
        &mut adapter,
        sotw_response(
            XdsType::Listener,
            "1",
            "lds-v1",
            &[http_listener("a", "ra"), http_listener("b", "rb")],
        ),
    );
    assert_eq!(requests[0].version_info, "lds-v1");
    assert_eq!(requests[0].response_nonce, "1");
    assert!(requests[0].error_detail.is_none());
    let rds = requests
        .iter()
        .find(|r| r.type_url == XdsType::Route.type_url())
        .unwrap();
    assert_eq!(rds.resource_names, ["ra", "rb"]);
    assert_eq!(state.held(XdsType::Listener).len(), 2);

    // RDS answers one of the two: nothing is removed by absence on a named type.
    sotw_round(
        &mut state,
        &mut adapter,
        sotw_response(XdsType::Route, "2", "rds-v1", &[route_table("ra", "c")]),
    );
    assert_eq!(state.held(XdsType::Route).len(), 1);

    // A bad listener: NACK keeps the accepted version and says why.
    let mut bad = http_listener("c", "rc");
    bad.address = None;
    let nack = sotw_round(
        &mut state,
        &mut adapter,
        sotw_response(XdsType::Listener, "3", "lds-v2", &[bad]),
    );
    assert_eq!(nack[0].version_info, "lds-v1", "the last accepted version");
    assert_eq!(nack[0].response_nonce, "3");
    assert!(
        nack[0]
            .error_detail
            .as_ref()
            .unwrap()
            .message
            .contains("LDS \"c\""),
        "{:?}",
        nack[0].error_detail
    );
    assert_eq!(
        state.held(XdsType::Listener).len(),
        2,
        "the last good config stays"
    );

    // LDS without "b": b is removed, and its route is no longer asked for.
    let requests = sotw_round(
        &mut state,
        &mut adapter,
        sotw_response(
            XdsType::Listener,
            "4",
            "lds-v3",
            &[http_listener("a", "ra")],
        ),
    );
    assert_eq!(
        state.held(XdsType::Listener),
        std::collections::BTreeSet::from(["a".to_owned()])
    );
    assert_eq!(requests[0].version_info, "lds-v3");
    let rds = requests
        .iter()
        .find(|r| r.type_url == XdsType::Route.type_url())
        .unwrap();
    assert_eq!(rds.resource_names, ["ra"]);
    assert_eq!(
        rds.version_info, "rds-v1",
        "RDS keeps its own accepted version"
    );
    assert_eq!(rds.response_nonce, "2", "and its own last nonce");
}
