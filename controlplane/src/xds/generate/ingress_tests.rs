//! The ingress gateway's configuration: Istio `Gateway` servers and the `VirtualService`s
//! bound to them, decoded from the generated resources.

use std::collections::BTreeMap;

use isthmus_proto::envoy::envoy::config::listener::v3::{FilterChain, Listener, filter};
use isthmus_proto::envoy::envoy::config::route::v3::{
    RouteConfiguration, redirect_action, route, route_action,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy,
};
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, common_tls_context,
};
use prost::Message;

use super::tests::{clusters, decoded, model, secrets};
use super::*;
use crate::xds::resources::{LISTENER, ROUTE};

const EDGE: &str = "---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ingress, namespace: istio-system}
spec: {address: 127.0.0.30, labels: {istio: ingressgateway}, serviceAccount: ingress}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [shop.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE, serverCertificate: /certs/shop.pem, privateKey: /certs/shop.key}
  - name: admin
    port: {number: 8443, name: https-admin, protocol: HTTPS}
    hosts: [shop/admin.example.com]
    tls: {mode: MUTUAL, serverCertificate: /certs/admin.pem, privateKey: /certs/admin.key,
          caCertificates: /certs/clients.pem, subjectAltNames: [ops.example.com]}
  - port: {number: 9443, name: tls, protocol: TLS}
    hosts: ['*.example.com']
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: shop}
spec:
  hosts: [shop.example.com, admin.example.com]
  gateways: [istio-system/public]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: reviews.shop.local, port: {number: 9080}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.example.com]
  gateways: [istio-system/public]
  tls:
  - match: [{sniHosts: [db.example.com]}]
    route: [{destination: {host: reviews.shop.local, port: {number: 7000}}}]
";

fn ingress_node() -> ProxyNode {
    ProxyNode::from_metadata(
        "router~127.0.0.30~ingress.istio-system~istio-system.svc.cluster.local",
        &BTreeMap::new(),
    )
    .unwrap()
}

fn chain_tls(chain: &FilterChain) -> Option<DownstreamTlsContext> {
    let socket = chain.transport_socket.as_ref()?;
    let Some(
        isthmus_proto::envoy::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
            any,
        ),
    ) = &socket.config_type
    else {
        return None;
    };
    Some(DownstreamTlsContext::decode(any.value.as_slice()).unwrap())
}

fn chain_for<'l>(listener: &'l Listener, sni: &str) -> &'l FilterChain {
    listener
        .filter_chains
        .iter()
        .find(|c| {
            c.filter_chain_match
                .as_ref()
                .is_some_and(|m| m.server_names.iter().any(|n| n == sni))
        })
        .unwrap_or_else(|| panic!("no chain for {sni}: {listener:?}"))
}

#[test]
fn gateway_servers_become_listeners_with_tls_by_sni_redirects_and_passthrough() {
    let model = model(EDGE);
    assert!(
        model
            .warnings
            .iter()
            .all(|w| !w.message.contains("gateways")),
        "{:?}",
        model.warnings
    );
    let s = proxy_snapshot(&model, &ingress_node(), &secrets()).unwrap();
    let listeners: BTreeMap<String, Listener> = decoded(&s, LISTENER);
    assert_eq!(
        listeners.keys().collect::<Vec<_>>(),
        ["0.0.0.0_8080", "0.0.0.0_8443", "0.0.0.0_9443"]
    );
    let routes: BTreeMap<String, RouteConfiguration> = decoded(&s, ROUTE);

    // Port 8080: the redirect to https, for the server's host only.
    let http = &routes["http.8080"];
    assert_eq!(http.virtual_hosts.len(), 1, "{http:?}");
    let vh = &http.virtual_hosts[0];
    assert_eq!(vh.domains, ["shop.example.com", "shop.example.com:8080"]);
    let Some(route::Action::Redirect(redirect)) = &vh.routes[0].action else {
        panic!("{vh:?}")
    };
    assert_eq!(
        redirect.scheme_rewrite_specifier,
        Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true))
    );

    // Port 8443: a chain per server, by SNI; SIMPLE and MUTUAL with their files.
    let tls_listener = &listeners["0.0.0.0_8443"];
    let shop = chain_tls(chain_for(tls_listener, "shop.example.com")).unwrap();
    let common = shop.common_tls_context.as_ref().unwrap();
    assert!(shop.require_client_certificate.is_none());
    assert!(common.validation_context_type.is_none());
    assert_eq!(common.tls_certificates.len(), 1);
    let admin = chain_tls(chain_for(tls_listener, "admin.example.com")).unwrap();
    assert_eq!(
        admin.require_client_certificate.map(|b| b.value),
        Some(true)
    );
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) = &admin
        .common_tls_context
        .as_ref()
        .unwrap()
        .validation_context_type
    else {
        panic!("{admin:?}")
    };
    assert_eq!(v.match_typed_subject_alt_names.len(), 1);
    let shop_routes = &routes["https.8443.1.public.istio-system"];
    let vh = &shop_routes.virtual_hosts[0];
    assert_eq!(vh.domains[0], "shop.example.com");
    let Some(route::Action::Route(action)) = &vh.routes[0].action else {
        panic!("{vh:?}")
    };
    assert_eq!(
        action.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(
            "outbound|9080||reviews.shop.local".into()
        ))
    );
    // The admin server takes only VirtualServices of namespace `shop`: edge is one.
    assert_eq!(
        routes["https.8443.2.public.istio-system"].virtual_hosts[0].domains[0],
        "admin.example.com"
    );

    // Port 9443: the TLS route's SNI, passed through to the destination's cluster.
    let pass = chain_for(&listeners["0.0.0.0_9443"], "db.example.com");
    assert!(pass.transport_socket.is_none());
    let Some(filter::ConfigType::TypedConfig(any)) = &pass.filters[0].config_type else {
        panic!()
    };
    let tcp = TcpProxy::decode(any.value.as_slice()).unwrap();
    assert_eq!(
        tcp.cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(
            "outbound|7000||reviews.shop.local".into()
        ))
    );
    // Requests go on over the mesh's clusters (mTLS to the workloads).
    assert!(clusters(&s).contains_key("outbound|9080||reviews.shop.local"));

    // Sidecars do not take routes bound to the gateway alone.
    let sidecar = super::tests::snapshot_of(EDGE, "web");
    let sidecar_routes: BTreeMap<String, RouteConfiguration> = decoded(&sidecar, ROUTE);
    assert!(
        sidecar_routes
            .values()
            .flat_map(|r| &r.virtual_hosts)
            .all(|v| !v.domains.iter().any(|d| d.contains("example.com")))
    );
}

#[test]
fn a_server_of_another_namespace_or_an_unknown_gateway_gets_nothing() {
    // `./admin.example.com` takes VirtualServices of the gateway's namespace only.
    let yaml = EDGE.replace("shop/admin.example.com", "./admin.example.com");
    let model = model(&yaml);
    let s = proxy_snapshot(&model, &ingress_node(), &secrets()).unwrap();
    let routes: BTreeMap<String, RouteConfiguration> = decoded(&s, ROUTE);
    assert!(
        routes["https.8443.2.public.istio-system"]
            .virtual_hosts
            .iter()
            .all(|v| v.name.starts_with("misdirected:")),
    );
    // A VirtualService naming a Gateway that does not exist is warned about by name.
    let model = super::tests::model(&EDGE.replace(
        "gateways: [istio-system/public]\n  http",
        "gateways: [istio-system/nowhere]\n  http",
    ));
    assert!(
        model
            .warnings
            .iter()
            .any(|w| w.message.contains("istio-system/nowhere")),
        "{:?}",
        model.warnings
    );
}

#[test]
fn overlapping_hosts_narrow_each_sni_goes_to_one_chain_and_policies_apply() {
    let yaml = format!(
        "{EDGE}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: second, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  # admin.example.com is already the first Gateway's: only other.example.com is left.
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: ['*/admin.example.com', '*/other.example.com']
    tls: {{mode: SIMPLE, serverCertificate: /certs/o.pem, privateKey: /certs/o.key}}
  - port: {{number: 9443, name: tls, protocol: TLS}}
    hosts: ['*/*']
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: greedy, namespace: shop}}
spec:
  hosts: ['*']
  gateways: [istio-system/second]
  http:
  - route: [{{destination: {{host: reviews.shop.local, port: {{number: 9080}}}}}}]
  tls:
  - match: [{{sniHosts: ['*']}}]
    route: [{{destination: {{host: reviews.shop.local, port: {{number: 7000}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: private, namespace: shop}}
spec:
  hosts: [private.example.com]
  exportTo: [.]
  gateways: [istio-system/public]
  http:
  - route: [{{destination: {{host: reviews.shop.local, port: {{number: 9080}}}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: edge-deny, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/admin]}}}}]}}]
"
    );
    let model = model(&yaml);
    let s = proxy_snapshot(&model, &ingress_node(), &secrets()).unwrap();
    let listeners: BTreeMap<String, Listener> = decoded(&s, LISTENER);
    let names = |l: &Listener| -> Vec<Vec<String>> {
        l.filter_chains
            .iter()
            .map(|c| {
                c.filter_chain_match
                    .as_ref()
                    .map(|m| m.server_names.clone())
                    .unwrap_or_default()
            })
            .collect()
    };
    // Each SNI in one chain at most (Envoy refuses equal matches), the first server's.
    assert_eq!(
        names(&listeners["0.0.0.0_8443"]),
        [
            vec!["shop.example.com".to_owned()],
            vec!["admin.example.com".to_owned()],
            vec!["other.example.com".to_owned()],
        ]
    );
    // `*` as SNI: one chain with no server_names after the first Gateway's db.example.com.
    assert_eq!(
        names(&listeners["0.0.0.0_9443"]),
        [vec!["db.example.com".to_owned()], vec![]]
    );
    let routes: BTreeMap<String, RouteConfiguration> = decoded(&s, ROUTE);
    // The VirtualService's `*` takes only what the server names, and behind its chain only
    // what that chain's SNI is; a host another chain takes by SNI is 421 (no MUTUAL bypass by
    // sending one chain's SNI and another's Host).
    let second = &routes["https.8443.0.second.istio-system"];
    let domains: Vec<(&str, &str)> = second
        .virtual_hosts
        .iter()
        .map(|v| (v.domains[0].as_str(), v.routes[0].name.as_str()))
        .collect();
    assert_eq!(
        domains,
        [
            ("other.example.com", ""),
            ("admin.example.com", "misdirected"),
            ("shop.example.com", "misdirected"),
        ]
    );
    let shop = &routes["https.8443.1.public.istio-system"];
    let Some(route::Action::DirectResponse(answer)) = &shop
        .virtual_hosts
        .iter()
        .find(|v| v.domains[0] == "admin.example.com")
        .unwrap()
        .routes[0]
        .action
    else {
        panic!("{shop:?}")
    };
    assert_eq!(answer.status, 421);
    // exportTo `.`: not visible to a gateway of another namespace.
    assert!(
        routes
            .values()
            .flat_map(|r| &r.virtual_hosts)
            .all(|v| !v.domains.iter().any(|d| d.starts_with("private."))),
    );
    // The gateway's AuthorizationPolicy is its virtual hosts' RBAC.
    let vh = &routes["https.8443.1.public.istio-system"].virtual_hosts[0];
    assert!(
        vh.typed_per_filter_config
            .keys()
            .any(|k| k.contains("rbac")),
        "{vh:?}"
    );
}

#[test]
fn a_destination_rules_credential_name_is_the_client_namespaces_secret_over_sds() {
    use std::sync::Arc;

    use isthmus_identity::TrustDomain;
    use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
        Secret, UpstreamTlsContext,
    };

    use crate::config::cluster::{ClusterState, TlsCredential};
    use crate::config::load_text;

    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: httpbin, namespace: shop}}
spec:
  host: httpbin.org
  trafficPolicy:
    tls: {{mode: MUTUAL, credentialName: egress-cert}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: stranger, namespace: other}}
spec: {{address: 127.0.0.40, serviceAccount: stranger}}
",
        super::tests::MESH
    );
    let credential = TlsCredential {
        certificate_chain: Some(b"CHAIN".to_vec()),
        private_key: Some(zeroize::Zeroizing::new(b"KEY".to_vec())),
        roots: Some(b"ROOTS".to_vec()),
    };
    let cluster = ClusterState {
        credentials: [(
            ("shop".to_owned(), "egress-cert".to_owned()),
            Arc::new(credential),
        )]
        .into(),
        ..Default::default()
    };
    let snapshot = load_text(&yaml, std::path::Path::new("t.yaml"))
        .unwrap()
        .with_cluster(Arc::new(cluster));
    let model = MeshModel::build(
        Arc::new(snapshot),
        &TrustDomain::new("red.local").unwrap(),
        "istio-system",
    );
    let of = |workload: &str, namespace: &str| {
        let node = ProxyNode::from_metadata(
            &format!("sidecar~127.0.0.1~{workload}.{namespace}~{namespace}.svc.cluster.local"),
            &BTreeMap::new(),
        )
        .unwrap();
        proxy_snapshot(&model, &node, &secrets()).unwrap()
    };
    let web = of("web", "shop");
    let sent: BTreeMap<String, Secret> = decoded(&web, crate::xds::resources::SECRET);
    assert!(
        sent.contains_key("kubernetes://egress-cert"),
        "{:?}",
        sent.keys()
    );
    assert!(sent.contains_key("kubernetes://egress-cert-cacert"));
    let cluster = &clusters(&web)["outbound|443||httpbin.org"];
    let socket = cluster.transport_socket.as_ref().unwrap();
    let Some(
        isthmus_proto::envoy::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
            any,
        ),
    ) = &socket.config_type
    else {
        panic!()
    };
    let tls = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
    let common = tls.common_tls_context.unwrap();
    assert_eq!(
        common.tls_certificate_sds_secret_configs[0].name,
        "kubernetes://egress-cert"
    );
    assert!(common.tls_certificates.is_empty());
    // Another namespace's proxy gets no Secret of `shop` (its TLS fails closed).
    let stranger = of("stranger", "other");
    let sent: BTreeMap<String, Secret> = decoded(&stranger, crate::xds::resources::SECRET);
    assert!(
        sent.keys().all(|k| !k.starts_with("kubernetes://")),
        "{:?}",
        sent.keys()
    );
}

#[test]
fn a_host_is_routed_only_behind_the_chain_its_sni_would_pick() {
    let yaml = "---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ingress, namespace: istio-system}
spec: {address: 127.0.0.30, labels: {istio: ingressgateway}, serviceAccount: ingress}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ['*.example.com']
    tls: {mode: SIMPLE, serverCertificate: /c/a.pem, privateKey: /c/a.key}
  - port: {number: 8443, name: secure, protocol: HTTPS}
    hosts: ['*.secure.example.com']
    tls: {mode: MUTUAL, serverCertificate: /c/b.pem, privateKey: /c/b.key, caCertificates: /c/ca.pem}
  # Its Secret is missing (directory mode): not served, but its name is still its own.
  - port: {number: 8443, name: vault, protocol: HTTPS}
    hosts: [vault.example.com]
    tls: {mode: MUTUAL, credentialName: vault-cert}
  - port: {number: 9443, name: tls, protocol: TLS}
    hosts: [db.example.com]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: shop}
spec:
  hosts: [a.secure.example.com, b.example.com, vault.example.com, db.example.com]
  gateways: [istio-system/public]
  http:
  - route: [{destination: {host: reviews.shop.local, port: {number: 9080}}}]
  tls:
  - match: [{sniHosts: [db.example.com]}]
    route: [{destination: {host: reviews.shop.local, port: {number: 7000}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge-deny, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]
";
    let model = super::tests::model(yaml);
    let s = proxy_snapshot(&model, &ingress_node(), &secrets()).unwrap();
    let routes: BTreeMap<String, RouteConfiguration> = decoded(&s, ROUTE);
    let hosts = |name: &str| -> Vec<(String, bool)> {
        routes[name]
            .virtual_hosts
            .iter()
            .map(|v| (v.domains[0].clone(), v.name.starts_with("misdirected:")))
            .collect()
    };
    // `a.secure.example.com` is the MUTUAL chain's: behind the wildcard chain it is 421 (the
    // longer wildcard's virtual host), never routed; the unserved vault's name too.
    let wide = hosts("https.8443.0.public.istio-system");
    assert!(wide.contains(&("b.example.com".into(), false)), "{wide:?}");
    assert!(
        !wide.iter().any(|(h, _)| h == "a.secure.example.com"),
        "{wide:?}"
    );
    assert!(
        wide.contains(&("*.secure.example.com".into(), true)),
        "{wide:?}"
    );
    assert!(
        wide.contains(&("vault.example.com".into(), true)),
        "{wide:?}"
    );
    let secure = hosts("https.8443.1.public.istio-system");
    assert_eq!(secure[0], ("a.secure.example.com".into(), false));
    assert!(!routes.contains_key("https.8443.2.public.istio-system"));
    // PASSTHROUGH: the gateway's policy at the connection layer, before the TCP proxy.
    let listeners: BTreeMap<String, Listener> = decoded(&s, LISTENER);
    let pass = chain_for(&listeners["0.0.0.0_9443"], "db.example.com");
    let names: Vec<&str> = pass.filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.network.rbac",
            "envoy.filters.network.tcp_proxy"
        ]
    );
}
