//! Ingress gateways (`router` nodes whose workload a `Gateway`'s selector picks), in Envoy's
//! terms: one listener per server port, on the workload's address, named as Istio names them
//! (`0.0.0.0_<port>`).
//!
//! - `HTTP` servers share one filter chain and the route configuration `http.<port>`: a
//!   virtual host per host of the bound `VirtualService`s that a server accepts, with the
//!   `VirtualService`'s HTTP routes (or, for `tls.httpsRedirect`, one redirect to `https`).
//! - `HTTPS` servers each get a filter chain matched on their hosts as SNI, terminating TLS
//!   with the server's certificate files (`MUTUAL`: the client's certificate verified against
//!   `caCertificates` and `subjectAltNames`), and the route configuration
//!   `https.<port>.<server>`.
//! - `TLS` servers in `PASSTHROUGH` mode get a filter chain per `tls` route match of a bound
//!   `VirtualService`, matched on its `sniHosts`, proxying the unterminated bytes to the
//!   route's destinations.
//!
//! Requests leave through the same outbound clusters a sidecar of the gateway's namespace has
//! (mTLS to mesh workloads, the egress gateway for imported services): the snapshot adds the
//! workload's outbound view.

use std::collections::{BTreeMap, BTreeSet};

use isthmus_api::gateway::{
    ServerProtocol, ServerTlsMode, TlsProtocolVersion, host_covers, narrower, split_host,
};
use isthmus_proto::envoy::envoy::config::core::v3::{
    DataSource, TrafficDirection, TransportSocket, data_source, transport_socket,
};
use isthmus_proto::envoy::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener,
};
use isthmus_proto::envoy::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, Route, RouteConfiguration, RouteMatch, VirtualHost,
    redirect_action, route, route_match,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds, http_connection_manager,
};
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, TlsCertificate,
    TlsParameters, common_tls_context, tls_parameters::TlsProtocol,
};
use isthmus_proto::envoy::google::protobuf::BoolValue;

use super::credentials;
use super::endpoints::socket;
use super::l4_routes::to_destinations;
use super::listeners::{
    hcm_filter, network_rbac_filters, policy_filters, rbac_per_filter, router, tls_inspector,
};
use super::rbac::{Layer, rbac_rules};
use super::routes::{Scope, http_route};
use super::tls::{ads, sds};
use super::tls_origination::san_matcher;
use super::{pack, route_policies, tracing};
use crate::model::ingress::{IngressServer, servers_of};
use crate::model::{MeshModel, Workload};

/// What an ingress gateway serves.
#[derive(Debug, Default)]
pub struct Ingress {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    /// The `credentialName`s its chains present (SDS, `credentials.rs`).
    pub credentials: BTreeSet<String>,
}

impl Ingress {
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }
}

/// The listeners and routes of the `Gateway` servers `workload` serves.
pub fn ingress(model: &MeshModel, workload: &Workload) -> Ingress {
    let mut by_port: BTreeMap<u32, Vec<IngressServer<'_>>> = BTreeMap::new();
    for server in servers_of(model, workload) {
        // Servers Isthmus cannot serve were refused at validation; skip defensively.
        if server.server.port.server_protocol().is_ok() {
            by_port
                .entry(server.server.port.number)
                .or_default()
                .push(server);
        }
    }
    let policies = Policies::of(model, workload);
    let mut out = Ingress::default();
    for (port, servers) in by_port {
        let http: Vec<&IngressServer<'_>> = servers
            .iter()
            .filter(|s| s.server.port.server_protocol() == Ok(ServerProtocol::Http))
            .collect();
        let mut chains = Vec::new();
        let mut listener_filters = Vec::new();
        if !http.is_empty() {
            // Servers of other protocols on an HTTP port were refused by validation when in
            // one `Gateway`; across `Gateway`s, HTTP wins the port, as in Istio.
            let name = format!("http.{port}");
            out.routes.push(route_configuration(
                model, workload, port, &name, &http, &policies, None,
            ));
            chains.push(FilterChain {
                filters: vec![ingress_hcm(port, &name, &policies)],
                ..Default::default()
            });
        } else {
            listener_filters.push(tls_inspector());
            // First which chain takes which SNIs, then each terminating chain's routes, which
            // must not serve a host another chain of the port takes by SNI (a client could
            // send that chain's SNI and the other host, and skip its MUTUAL check).
            let mut claimed = ClaimedNames::default();
            let mut planned: Vec<(Vec<String>, Planned<'_, '_>)> = Vec::new();
            for server in &servers {
                match server.server.tls_mode() {
                    Some(ServerTlsMode::Passthrough) => {
                        for (names, filter) in passthrough(model, workload, port, server) {
                            if let Some(names) = claimed.claim(names) {
                                planned.push((names, Planned::Pass(Box::new(filter))));
                            }
                        }
                    }
                    Some(mode) => {
                        // A `credentialName` whose `Secret` (in the gateway's namespace) lacks
                        // what the mode needs is not served (a model warning says why), but
                        // its names stay its own: no other chain serves them meanwhile.
                        let usable = credential_name(server)
                            .is_none_or(|name| credential_usable(model, workload, name, mode));
                        if let Some(names) = claimed.claim(sni_names(server)) {
                            if usable {
                                out.credentials.extend(credential_name(server).cloned());
                                planned.push((names, Planned::Terminate(server, mode)));
                            } else {
                                planned.push((names, Planned::Unserved));
                            }
                        }
                    }
                    None => {}
                }
            }
            let all_names: Vec<&[String]> = planned.iter().map(|(n, _)| n.as_slice()).collect();
            for (i, (names, plan)) in planned.iter().enumerate() {
                match plan {
                    Planned::Pass(filter) => {
                        let filters = policies
                            .network_rbac(port)
                            .into_iter()
                            .chain([(**filter).clone()])
                            .collect();
                        chains.push(sni_chain(names.clone(), None, filters));
                    }
                    Planned::Terminate(server, mode) => {
                        let route_name = format!("https.{port}.{}", server.id());
                        out.routes.push(route_configuration(
                            model,
                            workload,
                            port,
                            &route_name,
                            &[*server],
                            &policies,
                            Some((i, &all_names)),
                        ));
                        chains.push(sni_chain(
                            names.clone(),
                            Some(terminate(server, *mode)),
                            vec![ingress_hcm(port, &route_name, &policies)],
                        ));
                    }
                    Planned::Unserved => {}
                }
            }
        }
        if chains.is_empty() {
            continue;
        }
        out.listeners.push(Listener {
            name: format!("0.0.0.0_{port}"),
            address: Some(socket(&workload.address, port)),
            listener_filters,
            filter_chains: chains,
            traffic_direction: TrafficDirection::Outbound as i32,
            ..Default::default()
        });
    }
    out
}

fn credential_name<'s>(server: &IngressServer<'s>) -> Option<&'s String> {
    server.server.tls.as_ref()?.credential_name.as_ref()
}

/// Whether `workload`'s namespace has the `Secret` `name` with a certificate and key, and for
/// `MUTUAL` roots.
pub fn credential_usable(
    model: &MeshModel,
    workload: &Workload,
    name: &str,
    mode: ServerTlsMode,
) -> bool {
    credentials::lookup(model, &workload.namespace, name).is_some_and(|c| {
        credentials::has_certificate(&c) && (mode != ServerTlsMode::Mutual || c.roots.is_some())
    })
}

/// A chain of a TLS port, before its routes are built.
enum Planned<'s, 'm> {
    /// `PASSTHROUGH`: the TCP proxy of a `tls` route.
    Pass(Box<Filter>),
    /// `SIMPLE` / `MUTUAL`: TLS terminated, then HTTP routes.
    Terminate(&'s IngressServer<'m>, ServerTlsMode),
    /// A server that cannot be served (its `credentialName` is missing): its names are kept
    /// from the other chains.
    Unserved,
}

/// Which chain of a TLS port Envoy picks for SNI `host` (each chain's names given): an exact
/// name, else the longest wildcard that covers it, else the chain with no names.
fn owner(all_names: &[&[String]], host: &str) -> Option<usize> {
    if let Some(i) = all_names
        .iter()
        .position(|names| names.iter().any(|n| n == host))
    {
        return Some(i);
    }
    let wildcard = all_names
        .iter()
        .enumerate()
        .flat_map(|(i, names)| names.iter().map(move |n| (i, n)))
        .filter(|(_, n)| n.starts_with('*') && host_covers(n, host))
        .max_by_key(|(_, n)| n.len())
        .map(|(i, _)| i);
    wildcard.or_else(|| all_names.iter().position(|names| names.is_empty()))
}

/// The SNIs the chains of one port have taken: each name goes to the first chain that names
/// it (as Istio merges servers), and one chain at most takes any SNI; Envoy refuses two
/// chains with the same match.
#[derive(Default)]
struct ClaimedNames {
    names: BTreeSet<String>,
    any: bool,
}

impl ClaimedNames {
    /// What of `names` is still free (empty: any SNI), or `None` when nothing is.
    fn claim(&mut self, names: Vec<String>) -> Option<Vec<String>> {
        if names.is_empty() {
            if self.any {
                return None;
            }
            self.any = true;
            return Some(names);
        }
        let free: Vec<String> = names
            .into_iter()
            .filter(|n| self.names.insert(n.clone()))
            .collect();
        (!free.is_empty()).then_some(free)
    }
}

/// The authorization the gateway workload's policies ask for, as on a sidecar's inbound HTTP
/// ports: `RequestAuthentication` (the JWT filter) and `AuthorizationPolicy` (RBAC, per
/// virtual host), with its traces' settings.
struct Policies {
    /// `AuthorizationPolicy` at the connection layer, for `PASSTHROUGH` chains.
    tcp_rbac: Vec<isthmus_proto::envoy::envoy::config::rbac::v3::Rbac>,
    jwt: Option<isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter>,
    rbac: std::collections::HashMap<String, isthmus_proto::envoy::google::protobuf::Any>,
    tracing: Option<http_connection_manager::Tracing>,
}

impl Policies {
    /// The network RBAC filters of a `PASSTHROUGH` chain on `port`.
    fn network_rbac(&self, port: u32) -> Vec<Filter> {
        network_rbac_filters(&self.tcp_rbac, &format!("outbound_0.0.0.0_{port}."))
    }

    fn of(model: &MeshModel, workload: &Workload) -> Self {
        let policies = model.authorization_policies(workload);
        let jwt_rules = model.jwt_rules(workload);
        let issuers: Vec<&str> = jwt_rules.iter().map(|r| r.issuer.as_str()).collect();
        Self {
            tcp_rbac: rbac_rules(&policies, Layer::Tcp, &issuers),
            jwt: super::jwt::jwt_filter(&jwt_rules, &model.jwks),
            rbac: rbac_per_filter(rbac_rules(&policies, Layer::Http, &issuers)),
            tracing: tracing::hcm_tracing(model, workload),
        }
    }
}

/// The SNIs an HTTPS server's chain matches: its hosts' names; none (any SNI, and clients
/// that send none) when one of them is `*`.
fn sni_names(server: &IngressServer<'_>) -> Vec<String> {
    let names: BTreeSet<String> = server
        .server
        .hosts
        .iter()
        .map(|h| split_host(h).1.to_ascii_lowercase())
        .collect();
    if names.contains("*") {
        Vec::new()
    } else {
        names.into_iter().collect()
    }
}

fn sni_chain(
    names: Vec<String>,
    tls: Option<TransportSocket>,
    filters: Vec<Filter>,
) -> FilterChain {
    FilterChain {
        filter_chain_match: (!names.is_empty()).then(|| FilterChainMatch {
            server_names: names,
            ..Default::default()
        }),
        transport_socket: tls,
        filters,
        ..Default::default()
    }
}

/// The route configuration `name` of `servers` on `port`: a virtual host per accepted host of
/// each bound `VirtualService` (the first one to claim a host has it).
fn route_configuration(
    model: &MeshModel,
    workload: &Workload,
    port: u32,
    name: &str,
    servers: &[&IngressServer<'_>],
    policies: &Policies,
    chains: Option<(usize, &[&[String]])>,
) -> RouteConfiguration {
    let mut virtual_hosts: Vec<VirtualHost> = Vec::new();
    let mut claimed = BTreeSet::new();
    // Behind a chain of a TLS port, only the hosts that SNI would bring to this very chain:
    // what its names take, and of that what no other chain takes more specifically.
    let sni: &[String] = chains.map_or(&[], |(me, all)| all[me]);
    let within_sni = |host: String| -> Vec<String> {
        let narrowed = if sni.is_empty() {
            vec![host]
        } else {
            sni.iter().filter_map(|n| narrower(n, &host)).collect()
        };
        narrowed
            .into_iter()
            .filter(|h| chains.is_none_or(|(me, all)| owner(all, h) == Some(me)))
            .collect()
    };
    let others: BTreeSet<String> = chains
        .map(|(me, all)| {
            all.iter()
                .enumerate()
                .filter(|(j, _)| *j != me)
                .flat_map(|(_, names)| names.iter().cloned())
                .collect()
        })
        .unwrap_or_default();
    for server in servers {
        let redirect = server.server.tls.as_ref().is_some_and(|t| {
            t.https_redirect && server.server.port.server_protocol() == Ok(ServerProtocol::Http)
        });
        for (_, part, hosts) in server.routes(model) {
            // A VirtualService with no HTTP route (only `tls` or `tcp` ones) claims no host.
            if part.http.is_empty() && !redirect {
                continue;
            }
            for host in hosts.into_iter().flat_map(&within_sni) {
                let host = host.to_ascii_lowercase();
                if !claimed.insert(host.clone()) {
                    continue;
                }
                let routes = if redirect {
                    vec![https_redirect()]
                } else {
                    part.http
                        .iter()
                        .flat_map(|r| http_route(model, workload, Scope::new("", port), r))
                        .collect()
                };
                let mut domains = vec![host.clone()];
                if host != "*" {
                    domains.push(format!("{host}:{port}"));
                }
                virtual_hosts.push(VirtualHost {
                    name: format!("{host}:{port}"),
                    domains,
                    routes,
                    typed_per_filter_config: policies.rbac.clone(),
                    ..Default::default()
                });
            }
        }
    }
    // Hosts other chains of the port take by SNI: 421, as the Gateway API says, whatever
    // wildcard here would match them (Envoy prefers the exact or longer domain).
    for host in &others {
        let mut domains = vec![host.clone()];
        if host != "*" {
            domains.push(format!("{host}:{port}"));
        }
        virtual_hosts.push(VirtualHost {
            name: format!("misdirected:{host}:{port}"),
            domains,
            routes: vec![misdirected()],
            ..Default::default()
        });
    }
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts,
        // A destination the gateway has no cluster for answers 503, as on sidecars.
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

/// A request for a host that another chain of the port serves: 421 Misdirected Request.
fn misdirected() -> Route {
    Route {
        name: "misdirected".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status: 421,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// `tls.httpsRedirect`: every request is sent to `https` with a 301.
fn https_redirect() -> Route {
    Route {
        name: "https-redirect".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Redirect(RedirectAction {
            scheme_rewrite_specifier: Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(
                true,
            )),
            response_code: redirect_action::RedirectResponseCode::MovedPermanently as i32,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The HTTP connection manager of an ingress port: the edge of the mesh, so the caller's
/// address is the remote one (`use_remote_address`), as Istio's gateways set it.
fn ingress_hcm(port: u32, route_name: &str, policies: &Policies) -> Filter {
    let [cors, fault] = route_policies::http_filters();
    let hcm = HttpConnectionManager {
        stat_prefix: format!("outbound_0.0.0.0_{port}"),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_name.to_owned(),
        })),
        // CORS first, so that a preflight is answered without a token; then the workload's
        // policies; then the route's fault.
        http_filters: std::iter::once(cors)
            .chain(policy_filters(policies.jwt.clone()))
            .chain([fault, router()])
            .collect(),
        use_remote_address: Some(BoolValue { value: true }),
        // Envoy matches a Host with a port only against domains with that port; a gateway
        // matches on the name (so a `:1234` cannot slip past a 421 virtual host).
        strip_port_mode: Some(http_connection_manager::StripPortMode::StripAnyHostPort(
            true,
        )),
        tracing: policies.tracing.clone(),
        ..Default::default()
    };
    hcm_filter(&hcm)
}

/// TLS terminated with the server's certificate (files, or the SDS secrets of its
/// `credentialName`); `MUTUAL` verifies the client.
fn terminate(server: &IngressServer<'_>, mode: ServerTlsMode) -> TransportSocket {
    let tls = server.server.tls.clone().unwrap_or_default();
    let file = |path: &Option<String>| DataSource {
        specifier: path.clone().map(data_source::Specifier::Filename),
        ..Default::default()
    };
    let sans = tls
        .subject_alt_names
        .iter()
        .map(|san| san_matcher(san))
        .collect();
    let credential = tls.credential_name.as_deref();
    let validation = (mode == ServerTlsMode::Mutual).then(|| match credential {
        Some(name) => common_tls_context::ValidationContextType::CombinedValidationContext(
            common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: sans,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(&credentials::roots_secret(name))),
                ..Default::default()
            },
        ),
        None => common_tls_context::ValidationContextType::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(file(&tls.ca_certificates)),
                match_typed_subject_alt_names: sans,
                ..Default::default()
            },
        ),
    });
    let (tls_certificates, tls_certificate_sds_secret_configs) = match credential {
        Some(name) => (
            Vec::new(),
            vec![sds(&credentials::certificate_secret(name))],
        ),
        None => (
            vec![TlsCertificate {
                certificate_chain: Some(file(&tls.server_certificate)),
                private_key: Some(file(&tls.private_key)),
                ..Default::default()
            }],
            Vec::new(),
        ),
    };
    let version = |v: Option<TlsProtocolVersion>| match v {
        None | Some(TlsProtocolVersion::Auto) => TlsProtocol::TlsAuto as i32,
        Some(TlsProtocolVersion::V1_2) => TlsProtocol::TlSv12 as i32,
        Some(TlsProtocolVersion::V1_3) => TlsProtocol::TlSv13 as i32,
    };
    let tls_params = (tls.min_protocol_version.is_some() || tls.max_protocol_version.is_some())
        .then(|| TlsParameters {
            tls_minimum_protocol_version: version(tls.min_protocol_version),
            tls_maximum_protocol_version: version(tls.max_protocol_version),
            ..Default::default()
        });
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates,
            tls_certificate_sds_secret_configs,
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            tls_params,
            validation_context_type: validation,
            ..Default::default()
        }),
        require_client_certificate: (mode == ServerTlsMode::Mutual)
            .then_some(BoolValue { value: true }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
    }
}

/// A `PASSTHROUGH` server's chains: for each match of each bound `tls` route that applies on
/// `port`, its SNI hosts (those the server accepts) and a TCP proxy to the route.
fn passthrough(
    model: &MeshModel,
    workload: &Workload,
    port: u32,
    server: &IngressServer<'_>,
) -> Vec<(Vec<String>, Filter)> {
    let mut out = Vec::new();
    for (key, part, _) in server.routes(model) {
        for route in &part.tls {
            let filter = to_destinations(
                model,
                Scope::new("", port),
                &format!("outbound_0.0.0.0_{port}"),
                &route.route,
            );
            for m in &route.matches {
                let applies = m.port.is_none_or(|p| p == port)
                    && m.source_labels
                        .iter()
                        .all(|(k, v)| workload.labels.get(k) == Some(v))
                    && m.source_namespace
                        .as_ref()
                        .is_none_or(|ns| *ns == workload.namespace);
                if !applies {
                    continue;
                }
                // What of each SNI the server serves (the narrower pattern of the pair).
                let names: BTreeSet<String> = m
                    .sni_hosts
                    .iter()
                    .flat_map(|sni| {
                        server
                            .server
                            .serves(server.gateway_namespace, &key.namespace, sni)
                    })
                    .collect();
                if names.is_empty() {
                    continue;
                }
                // `*` is any SNI, which Envoy says with no `server_names` at all.
                let names = if names.contains("*") {
                    Vec::new()
                } else {
                    names.into_iter().collect()
                };
                out.push((names, filter.clone()));
            }
        }
    }
    out
}
