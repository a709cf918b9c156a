//! Sidecars' L4 routes (`l4_routes.rs`): `tcp` and `tls` routes of a `VirtualService`, in
//! capture mode and on explicit mode's local TCP ports.

use std::collections::BTreeMap;

use isthmus_proto::envoy::envoy::config::listener::v3::{
    FilterChain, Listener, filter, listener_filter, listener_filter_chain_match_predicate::Rule,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy,
};
use prost::Message;

use super::tests::{decoded, model, secrets};
use super::*;
use crate::xds::resources::LISTENER;

const ROUTES: &str = "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.shop.local]
  addresses: [10.96.0.20]
  location: MESH_INTERNAL
  ports: [{number: 5432, name: tcp-pg}]
  endpoints:
  - {address: 10.1.0.5, labels: {version: v1}}
  - {address: 10.1.0.6, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: shop}
spec:
  host: db.shop.local
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.shop.local]
  tcp:
  - match: [{port: 5432, sourceLabels: {app: web}}]
    route: [{destination: {host: db.shop.local, subset: v2}}]
  - match: [{port: 6000}]
    route: [{destination: {host: db.shop.local, subset: v2}}]
  - route:
    - {destination: {host: db.shop.local, subset: v1}, weight: 80}
    - {destination: {host: db.shop.local, subset: v2}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secure, namespace: shop}
spec:
  hosts: [secure.example.com, beta.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: shop}
spec:
  hosts: [secure.example.com, '*.secure.example.com']
  tls:
  - match: [{port: 443, sniHosts: [secure.example.com, '*.secure.example.com', Secure.Example.com]}]
    route: [{destination: {host: beta.example.com}}]
  - match: [{port: 443, sniHosts: [only.secure.example.com], sourceNamespace: elsewhere}]
    route: [{destination: {host: db.shop.local}}]
  - match: [{sniHosts: [secure.example.com, other.secure.example.com]}]
    route: [{destination: {host: db.shop.local}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: twins, namespace: shop}
spec:
  hosts: [left.shop.local, right.shop.local]
  location: MESH_INTERNAL
  ports: [{number: 8443, name: tls, protocol: TLS}, {number: 5000, name: tcp}]
  endpoints: [{address: 10.1.0.9}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: twins, namespace: shop}
spec:
  hosts: [left.shop.local, right.shop.local]
  tls:
  # Also on the TCP port 5000, where Istio (and Isthmus) apply no tls route.
  - match: [{sniHosts: [left.shop.local, right.shop.local]}]
    route: [{destination: {host: db.shop.local, port: {number: 5432}}}]
  tcp:
  - match: [{destinationSubnets: [10.2.0.0/16]}]
    route: [{destination: {host: db.shop.local, port: {number: 5432}}}]
  - route: [{destination: {host: left.shop.local}}]
";

fn node_of(workload: &str, capture: bool, tcp_ports: &str) -> ProxyNode {
    let mut metadata = BTreeMap::from([("APP_PORTS".to_owned(), "http=8080".to_owned())]);
    if !tcp_ports.is_empty() {
        metadata.insert("OUTBOUND_TCP_PORTS".into(), tcp_ports.into());
    }
    let mut node = ProxyNode::from_metadata(
        &format!("sidecar~127.0.0.1~{workload}.shop~shop.svc.cluster.local"),
        &metadata,
    )
    .unwrap();
    if capture {
        node.interception = crate::model::Interception::Redirect;
    }
    node
}

fn listeners(workload: &str, capture: bool, tcp_ports: &str) -> BTreeMap<String, Listener> {
    let s = proxy_snapshot(
        &model(ROUTES),
        &node_of(workload, capture, tcp_ports),
        &secrets(),
    )
    .unwrap();
    decoded(&s, LISTENER)
}

/// The clusters (with weights) a chain's TCP proxy sends to.
fn destinations(chain: &FilterChain) -> Vec<(String, u32)> {
    let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
        panic!("{chain:?}")
    };
    let proxy = TcpProxy::decode(any.value.as_slice()).unwrap();
    match proxy.cluster_specifier.unwrap() {
        tcp_proxy::ClusterSpecifier::Cluster(c) => vec![(c, 100)],
        tcp_proxy::ClusterSpecifier::WeightedClusters(w) => {
            w.clusters.into_iter().map(|c| (c.name, c.weight)).collect()
        }
    }
}

/// The chains matched on `port` and `server_names` (any prefix ranges).
fn chains_on<'l>(l: &'l Listener, port: Option<u32>, names: &[&str]) -> Vec<&'l FilterChain> {
    l.filter_chains
        .iter()
        .filter(|c| {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            m.destination_port.map(|p| p.value) == port && m.server_names == names
        })
        .collect()
}

/// The one chain matched on `port` and `server_names`.
fn chain<'l>(l: &'l Listener, port: Option<u32>, names: &[&str]) -> &'l FilterChain {
    match chains_on(l, port, names).as_slice() {
        [one] => one,
        other => panic!("{} chains on {port:?} for {names:?}: {l:#?}", other.len()),
    }
}

fn ranges(c: &FilterChain) -> Vec<String> {
    c.filter_chain_match
        .as_ref()
        .unwrap()
        .prefix_ranges
        .iter()
        .map(|r| format!("{}/{}", r.address_prefix, r.prefix_len.unwrap().value))
        .collect()
}

#[test]
fn tcp_routes_choose_the_capture_chains_destinations_by_source_and_port() {
    let weighted = vec![
        ("outbound|5432|v1|db.shop.local".to_owned(), 80),
        ("outbound|5432|v2|db.shop.local".to_owned(), 20),
    ];
    let outbound = &listeners("reviews-v1", true, "")["virtualOutbound"];
    assert_eq!(
        destinations(chain(outbound, Some(5432), &[])),
        weighted,
        "the first route whose match applies (port 6000 and app: web do not)"
    );
    let outbound = &listeners("web", true, "")["virtualOutbound"];
    assert_eq!(
        destinations(chain(outbound, Some(5432), &[])),
        [("outbound|5432|v2|db.shop.local".to_owned(), 100)],
        "sourceLabels app: web"
    );
}

#[test]
fn tls_routes_match_the_sni_and_inspect_only_their_ports() {
    let outbound = &listeners("reviews-v1", true, "")["virtualOutbound"];
    let beta = [("outbound|443||beta.example.com".to_owned(), 100)];
    // A service without addresses is matched on port and SNI alone.
    for name in ["secure.example.com", "*.secure.example.com"] {
        let by_sni = chain(outbound, Some(443), &[name]);
        assert!(ranges(by_sni).is_empty(), "{by_sni:?}");
        assert_eq!(destinations(by_sni), beta, "{name}");
    }
    // The third route's other name; its secure.example.com (and the upper-cased copy in
    // the first) stays with the first route. The sourceNamespace match does not apply.
    assert_eq!(
        destinations(chain(outbound, Some(443), &["other.secure.example.com"])),
        [("outbound|5432||db.shop.local".to_owned(), 100)]
    );
    assert!(chains_on(outbound, Some(443), &["only.secure.example.com"]).is_empty());

    // Twin hosts share their endpoint: each (port, address, SNI) is in one chain only, or
    // Envoy refuses the listener.
    for name in ["left.shop.local", "right.shop.local"] {
        let c = chain(outbound, Some(8443), &[name]);
        assert!(ranges(c).contains(&"10.1.0.9/32".to_owned()), "{c:?}");
    }
    // No tls route on the TCP port 5000.
    for c in &outbound.filter_chains {
        let m = c.filter_chain_match.as_ref().unwrap();
        if m.destination_port.as_ref().is_some_and(|p| p.value == 5000) {
            assert!(
                m.server_names.is_empty() && m.transport_protocol.is_empty(),
                "{c:?}"
            );
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &outbound.filter_chains {
        let m = c.filter_chain_match.clone().unwrap();
        let port = m.destination_port.map(|p| p.value);
        let names = if m.server_names.is_empty() {
            vec![String::new()]
        } else {
            m.server_names.clone()
        };
        let cidrs = if m.prefix_ranges.is_empty() {
            vec!["any".to_owned()]
        } else {
            ranges(c)
        };
        for n in &names {
            for r in &cidrs {
                assert!(
                    seen.insert((port, r.clone(), n.clone(), m.transport_protocol.clone())),
                    "two chains match {port:?} {r} {n:?}"
                );
            }
        }
    }

    // The TLS inspector runs on 443 and 8443 only, and a silent client passes on.
    assert!(outbound.continue_on_listener_filters_timeout);
    let inspector = outbound
        .listener_filters
        .iter()
        .find(|f| f.name.ends_with("tls_inspector"))
        .expect("a TLS inspector");
    assert!(matches!(
        &inspector.config_type,
        Some(listener_filter::ConfigType::TypedConfig(_))
    ));
    let Some(Rule::NotMatch(on)) = inspector.filter_disabled.clone().unwrap().rule else {
        panic!("{inspector:?}")
    };
    let Some(Rule::OrMatch(set)) = on.rule else {
        panic!("{on:?}")
    };
    let ports: Vec<(i32, i32)> = set
        .rules
        .iter()
        .map(|r| match &r.rule {
            Some(Rule::DestinationPortRange(range)) => (range.start, range.end),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ports, [(443, 444), (8443, 8444)]);
}

#[test]
fn tcp_destination_subnets_are_chains_on_those_addresses() {
    let outbound = &listeners("reviews-v1", true, "")["virtualOutbound"];
    let db = [("outbound|5432||db.shop.local".to_owned(), 100)];
    let on_5000: Vec<&FilterChain> = chains_on(outbound, Some(5000), &[]);
    let subnet = on_5000
        .iter()
        .find(|c| ranges(c) == ["10.2.0.0/16"])
        .unwrap_or_else(|| panic!("{on_5000:#?}"));
    assert_eq!(destinations(subnet), db);
    let own = on_5000
        .iter()
        .find(|c| ranges(c).contains(&"10.1.0.9/32".to_owned()))
        .unwrap();
    assert_eq!(
        destinations(own),
        [("outbound|5000||left.shop.local".to_owned(), 100)]
    );
}

#[test]
fn a_local_tcp_port_takes_the_routes_of_its_service() {
    let l = listeners(
        "reviews-v1",
        false,
        "secure.example.com:443=15443,db.shop.local:5432=15432",
    );
    let tls = &l["outbound_tcp_15443"];
    for name in ["secure.example.com", "*.secure.example.com"] {
        assert_eq!(
            destinations(chain(tls, None, &[name])),
            [("outbound|443||beta.example.com".to_owned(), 100)]
        );
    }
    assert!(tls.continue_on_listener_filters_timeout);
    assert_eq!(
        destinations(chain(tls, None, &[])),
        [("outbound|443||secure.example.com".to_owned(), 100)],
        "other SNIs, and plaintext, go to the service itself"
    );
    assert!(tls.listener_filters[0].name.ends_with("tls_inspector"));
    let db = &l["outbound_tcp_15432"];
    assert!(db.listener_filters.is_empty(), "no SNI chain, no inspector");
    assert_eq!(db.filter_chains.len(), 1);
    assert_eq!(destinations(&db.filter_chains[0]).len(), 2);
}
