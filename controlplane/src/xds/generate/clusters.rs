//! Outbound clusters: one per service port, and one per `DestinationRule` subset, carrying the
//! rule's load balancing, connection pool, outlier detection and TLS mode.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use isthmus_api::networking::{
    DestinationRuleSpec, H2UpgradePolicy, Location, OutlierDetection, Resolution, SimpleLb,
    TlsMode, TrafficPolicy,
};
use isthmus_proto::envoy::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlier, UpstreamConnectionOptions,
    circuit_breakers, cluster,
};
use isthmus_proto::envoy::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpOptions,
    TcpKeepalive,
};
use isthmus_proto::envoy::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use isthmus_proto::envoy::envoy::r#type::v3::Percent;
use isthmus_proto::envoy::google::protobuf::UInt32Value;

use super::endpoints::{dns_load_assignment, subset_endpoints};
use super::names::{imported_sni, outbound_cluster};
use super::tls::{ads, upstream_mtls};
use super::{consistent_hash, tls_origination};
use super::{duration, pack};
use crate::config::cluster::TlsCredential;
use crate::model::registry::RemoteService;
use crate::model::{MeshModel, Port, Protocol, Service};

/// Istio's default connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const UNLIMITED: u32 = u32::MAX;

/// One cluster per (service, port, subset), sorted by name, for proxies in `namespace` (whose
/// `Secret`s a rule's `credentialName` names).
pub fn outbound(model: &MeshModel, services: &[&Service], namespace: &str) -> Vec<Cluster> {
    let mut clusters = Vec::new();
    for service in services {
        let rule = model
            .destination_rules
            .get(&service.key.hostname)
            .map(|(_, r)| r);
        for port in &service.ports {
            let credential = |policy: Option<&TrafficPolicy>| {
                let name = policy?.tls.as_ref()?.credential_name.as_ref()?;
                super::credentials::lookup(model, namespace, name)
            };
            clusters.push(cluster(service, port, None, rule, &credential));
            for subset in rule.map(|r| r.subsets.as_slice()).unwrap_or_default() {
                clusters.push(cluster(
                    service,
                    port,
                    Some(&subset.name),
                    rule,
                    &credential,
                ));
            }
        }
    }
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    clusters
}

fn cluster(
    service: &Service,
    port: &Port,
    subset: Option<&str>,
    rule: Option<&DestinationRuleSpec>,
    credential: &dyn Fn(Option<&TrafficPolicy>) -> Option<TlsCredential>,
) -> Cluster {
    let host = &service.key.hostname;
    let name = outbound_cluster(port.number, subset, host);
    // The rule's policy as it applies to this port and subset (Istio's merge).
    let policy = rule.and_then(|r| r.policy_for(subset, port.number));
    let policy = policy.as_ref();
    let mut c = Cluster {
        name: name.clone(),
        connect_timeout: Some(duration(
            policy
                .and_then(|p| p.connection_pool.as_ref())
                .and_then(|p| p.tcp.as_ref())
                .and_then(|t| t.connect_timeout.as_ref())
                .map_or(CONNECT_TIMEOUT, |d| d.0),
        )),
        lb_policy: lb_policy(policy) as i32,
        lb_config: consistent_hash::of(policy).and_then(|h| consistent_hash::cluster_lb(h).1),
        circuit_breakers: Some(circuit_breakers(policy)),
        outlier_detection: policy
            .and_then(|p| p.outlier_detection.as_ref())
            .map(outlier_detection),
        // As Istio: with outlier detection the panic threshold is `minHealthPercent`, 0 (no
        // panic) when unset; without it, Envoy's default (50 %).
        common_lb_config: policy.and_then(|p| p.outlier_detection.as_ref()).map(|o| {
            cluster::CommonLbConfig {
                healthy_panic_threshold: Some(Percent {
                    value: f64::from(o.min_health_percent.unwrap_or(0)),
                }),
                ..Default::default()
            }
        }),
        typed_extension_protocol_options: protocol_options(upstream_protocol(port, policy), policy),
        upstream_connection_options: tcp_keepalive(policy),
        ..Default::default()
    };
    // `distribute`: the endpoints' localities carry weights (`endpoints.rs`).
    if super::endpoints::distribution(policy).is_some() {
        c.common_lb_config
            .get_or_insert_with(Default::default)
            .locality_config_specifier = Some(
            cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                cluster::common_lb_config::LocalityWeightedLbConfig {},
            ),
        );
    }
    match service.resolution {
        Resolution::Dns | Resolution::DnsRoundRobin => {
            let kind = if service.resolution == Resolution::Dns {
                cluster::DiscoveryType::StrictDns
            } else {
                cluster::DiscoveryType::LogicalDns
            };
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(kind as i32));
            c.load_assignment = Some(dns_load_assignment(&name, service, port));
        }
        Resolution::Static | Resolution::None => {
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            ));
            c.eds_cluster_config = Some(cluster::EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: name.clone(),
            });
        }
    }
    let alpn: &[&str] = match upstream_protocol(port, policy) {
        Protocol::Http2 | Protocol::Grpc => &["h2"],
        Protocol::Http => &["http/1.1"],
        _ => &[],
    };
    let tls = policy.and_then(|p| p.tls.as_ref());
    if let Some(tls) = tls.filter(|t| tls_origination::originates(Some(t))) {
        let credential = credential(policy);
        c.transport_socket = Some(tls_origination::upstream_tls(
            tls,
            host,
            alpn,
            credential.as_ref(),
        ));
    } else if uses_mtls(service, policy) {
        let subset_labels = subset.and_then(|s| {
            rule.and_then(|r| r.subsets.iter().find(|x| x.name == s))
                .map(|x| &x.labels)
        });
        let ids: BTreeSet<String> = subset_endpoints(service, subset_labels)
            .filter_map(|e| e.identity.as_ref().map(ToString::to_string))
            .collect();
        // Imported (or joined by peers' copies): the session may be end to end with a peer's
        // workload, through the local egress gateway, which routes it by SNI (Istio's
        // `outbound_.<port>_._.<host>`); any of the peers' identities is expected too.
        let remotes: Vec<&RemoteService> = service.remote.iter().chain(&service.failover).collect();
        let mut ids = ids;
        ids.extend(remotes.iter().flat_map(|r| r.identities.iter().cloned()));
        let ids: Vec<String> = ids.into_iter().collect();
        let sni = if remotes.is_empty() {
            host.clone()
        } else {
            imported_sni(port.number, host)
        };
        c.transport_socket = Some(upstream_mtls(&sni, &ids, alpn));
    }
    c
}

/// mTLS when the `DestinationRule` says `ISTIO_MUTUAL`; without a TLS setting, for mesh
/// services whose endpoints all have mesh identities (Istio's auto mTLS).
fn uses_mtls(service: &Service, policy: Option<&TrafficPolicy>) -> bool {
    match policy.and_then(|p| p.tls.as_ref()).map(|t| t.mode) {
        Some(TlsMode::IstioMutual) => true,
        Some(_) => false,
        None => {
            service.location == Location::MeshInternal
                && !service.endpoints.is_empty()
                && service.endpoints.iter().all(|e| e.identity.is_some())
        }
    }
}

/// The protocol spoken to the service: an HTTP/1.1 port goes over HTTP/2 with
/// `h2UpgradePolicy: UPGRADE` (the mesh's default, as Istio's, is not to upgrade).
fn upstream_protocol(port: &Port, policy: Option<&TrafficPolicy>) -> Protocol {
    let upgrade = policy
        .and_then(|p| p.connection_pool.as_ref())
        .and_then(|p| p.http.as_ref())
        .and_then(|h| h.h2_upgrade_policy)
        == Some(H2UpgradePolicy::Upgrade);
    match port.protocol {
        Protocol::Http if upgrade => Protocol::Http2,
        other => other,
    }
}

/// `connectionPool.tcp.tcpKeepalive` on the upstream connections (whole seconds, as Envoy).
fn tcp_keepalive(policy: Option<&TrafficPolicy>) -> Option<UpstreamConnectionOptions> {
    let k = policy
        .and_then(|p| p.connection_pool.as_ref())
        .and_then(|p| p.tcp.as_ref())
        .and_then(|t| t.tcp_keepalive)?;
    let secs = |d: Option<isthmus_api::duration::IstioDuration>| {
        d.and_then(|d| u32::try_from(d.0.as_secs().max(1)).ok())
            .and_then(u32v)
    };
    Some(UpstreamConnectionOptions {
        tcp_keepalive: Some(TcpKeepalive {
            keepalive_probes: k.probes.and_then(u32v),
            keepalive_time: secs(k.time),
            keepalive_interval: secs(k.interval),
        }),
        ..Default::default()
    })
}

/// Istio's default is least request.
fn lb_policy(policy: Option<&TrafficPolicy>) -> cluster::LbPolicy {
    if let Some(hash) = consistent_hash::of(policy) {
        return consistent_hash::cluster_lb(hash).0;
    }
    match policy
        .and_then(|p| p.load_balancer.as_ref())
        .and_then(|lb| lb.simple)
    {
        Some(SimpleLb::RoundRobin) => cluster::LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => cluster::LbPolicy::Random,
        _ => cluster::LbPolicy::LeastRequest,
    }
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

/// Istio lifts Envoy's default limits (1024) unless the rule sets them.
fn circuit_breakers(policy: Option<&TrafficPolicy>) -> CircuitBreakers {
    let pool = policy.and_then(|p| p.connection_pool.as_ref());
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            max_connections: u32v(tcp.and_then(|t| t.max_connections).unwrap_or(UNLIMITED)),
            max_pending_requests: u32v(
                http.and_then(|h| h.http1_max_pending_requests)
                    .unwrap_or(UNLIMITED),
            ),
            max_requests: u32v(http.and_then(|h| h.http2_max_requests).unwrap_or(UNLIMITED)),
            max_retries: u32v(http.and_then(|h| h.max_retries).unwrap_or(UNLIMITED)),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn outlier_detection(o: &OutlierDetection) -> EnvoyOutlier {
    // Istio's deprecated `consecutiveErrors` counts gateway errors only (5xx ejection off),
    // when neither of the fields that replaced it is set.
    let legacy = o
        .consecutive_errors
        .filter(|_| o.consecutive_5xx_errors.is_none() && o.consecutive_gateway_errors.is_none());
    if let Some(n) = legacy {
        return EnvoyOutlier {
            consecutive_gateway_failure: u32v(n),
            enforcing_consecutive_gateway_failure: u32v(100),
            enforcing_consecutive_5xx: u32v(0),
            ..outlier_detection(&OutlierDetection {
                consecutive_errors: None,
                ..o.clone()
            })
        };
    }
    EnvoyOutlier {
        consecutive_5xx: o.consecutive_5xx_errors.and_then(u32v),
        // Envoy does not enforce gateway-error ejection unless told to.
        consecutive_gateway_failure: o.consecutive_gateway_errors.and_then(u32v),
        enforcing_consecutive_gateway_failure: o
            .consecutive_gateway_errors
            .map(|_| UInt32Value { value: 100 }),
        interval: o.interval.as_ref().map(|d| duration(d.0)),
        base_ejection_time: o.base_ejection_time.as_ref().map(|d| duration(d.0)),
        max_ejection_percent: o.max_ejection_percent.and_then(u32v),
        ..Default::default()
    }
}

const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub(super) fn protocol_options(
    protocol: Protocol,
    policy: Option<&TrafficPolicy>,
) -> HashMap<String, isthmus_proto::envoy::google::protobuf::Any> {
    let http = policy
        .and_then(|p| p.connection_pool.as_ref())
        .and_then(|p| p.http.as_ref());
    let explicit = match protocol {
        Protocol::Http2 | Protocol::Grpc => {
            http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                Http2ProtocolOptions {
                    max_concurrent_streams: http
                        .and_then(|h| h.max_concurrent_streams)
                        .and_then(u32v),
                    ..Default::default()
                },
            )
        }
        Protocol::Http => {
            http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                Http1ProtocolOptions::default(),
            )
        }
        _ => return HashMap::new(),
    };
    let options = HttpProtocolOptions {
        common_http_protocol_options: Some(CommonHttpOptions {
            idle_timeout: http
                .and_then(|h| h.idle_timeout.as_ref())
                .map(|d| duration(d.0)),
            max_requests_per_connection: http
                .and_then(|h| h.max_requests_per_connection)
                .and_then(u32v),
            ..Default::default()
        }),
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(explicit),
                },
            ),
        ),
        ..Default::default()
    };
    HashMap::from([(HTTP_OPTIONS.to_owned(), pack(&options))])
}
