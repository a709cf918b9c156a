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
    let shop_routes = &routes["https.8443.istio-system.public.1"];
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
        routes["https.8443.istio-system.public.admin"].virtual_hosts[0].domains[0],
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
        routes["https.8443.istio-system.public.admin"]
            .virtual_hosts
            .is_empty()
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
