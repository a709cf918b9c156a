//! Traces, the Envoy way (issue 19): with `--tracing-otlp-endpoint`, every sidecar HTTP
//! connection manager gets a `tracing` block (Envoy's OpenTelemetry tracer sending OTLP/gRPC to
//! the cluster `isthmus-otlp`, `random_sampling` = `--tracing-sampling`, literal tags naming
//! the mesh and workload), and every sidecar gets that cluster.
//!
//! As in Istio, the spans' `service.name` is `<app>.<namespace>`, `<app>` being the workload's
//! canonical service (`service.istio.io/canonical-name`, `app.kubernetes.io/name` or `app`
//! label), else its name. Which span a proxy makes (CLIENT on the outbound side, SERVER on the
//! inbound side) follows the listener's `traffic_direction`.

use std::net::IpAddr;
use std::time::Duration;

use isthmus_proto::envoy::envoy::config::cluster::v3::{Cluster, cluster};
use isthmus_proto::envoy::envoy::config::core::v3::{GrpcService, grpc_service};
use isthmus_proto::envoy::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use isthmus_proto::envoy::envoy::config::trace::v3::{OpenTelemetryConfig, tracing as trace};
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use isthmus_proto::envoy::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use isthmus_proto::envoy::envoy::r#type::v3::Percent;

use super::clusters::protocol_options;
use super::endpoints::socket;
use super::{duration, pack};
use crate::model::{MeshModel, Protocol, Workload};

/// The cluster every sidecar sends its spans to.
pub const OTLP_CLUSTER: &str = "isthmus-otlp";
/// Envoy's OpenTelemetry tracer.
pub const OPENTELEMETRY_TRACER: &str = "envoy.tracers.opentelemetry";

/// Literal span tags (Envoy `custom_tags`) every sidecar span carries.
pub const TAG_MESH: &str = "isthmus.mesh";
pub const TAG_WORKLOAD: &str = "isthmus.workload";
pub const TAG_NAMESPACE: &str = "isthmus.namespace";

/// The labels that name a workload's canonical service, first found wins (Istio's order).
const SERVICE_LABELS: [&str; 3] = [
    "service.istio.io/canonical-name",
    "app.kubernetes.io/name",
    "app",
];

/// The `tracing` field of `workload`'s HTTP connection managers; `None` without tracing.
pub fn hcm_tracing(model: &MeshModel, workload: &Workload) -> Option<Tracing> {
    let settings = model.telemetry.tracing.as_ref()?;
    // Validated as a host:port by `isthmusd`'s flags; a model built elsewhere with a bad one
    // gets no tracing rather than configuration Envoy would refuse.
    collector(&settings.otlp_endpoint)?;
    let literal = |tag: &str, value: String| CustomTag {
        tag: tag.to_owned(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal { value })),
    };
    let provider = OpenTelemetryConfig {
        grpc_service: Some(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: OTLP_CLUSTER.into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        service_name: service_name(workload),
        ..Default::default()
    };
    Some(Tracing {
        random_sampling: Some(Percent {
            value: settings.sampling_percent.clamp(0.0, 100.0),
        }),
        custom_tags: vec![
            literal(TAG_MESH, model.mesh_id()),
            literal(TAG_WORKLOAD, workload.name.clone()),
            literal(TAG_NAMESPACE, workload.namespace.clone()),
        ],
        provider: Some(trace::Http {
            name: OPENTELEMETRY_TRACER.into(),
            config_type: Some(trace::http::ConfigType::TypedConfig(pack(&provider))),
        }),
        ..Default::default()
    })
}

/// The `isthmus-otlp` cluster (HTTP/2 to the collector: STATIC for an IP address, STRICT_DNS
/// for a name); `None` without tracing.
pub fn otlp_cluster(model: &MeshModel) -> Option<Cluster> {
    let settings = model.telemetry.tracing.as_ref()?;
    let (host, port) = collector(&settings.otlp_endpoint)?;
    let kind = if host.parse::<IpAddr>().is_ok() {
        cluster::DiscoveryType::Static
    } else {
        cluster::DiscoveryType::StrictDns
    };
    Some(Cluster {
        name: OTLP_CLUSTER.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: Some(duration(Duration::from_secs(10))),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: OTLP_CLUSTER.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(&host, u32::from(port))),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options: protocol_options(Protocol::Grpc, None),
        ..Default::default()
    })
}

/// `<app or workload>.<namespace>`, as Istio names a sidecar's spans.
pub fn service_name(workload: &Workload) -> String {
    let app = SERVICE_LABELS
        .iter()
        .find_map(|l| workload.labels.get(*l).filter(|v| !v.is_empty()))
        .unwrap_or(&workload.name);
    format!("{app}.{}", workload.namespace)
}

/// `host:port` (`[v6]:port` for an IPv6 address) split; `None` if it is not that.
pub fn collector(endpoint: &str) -> Option<(String, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')?
            .parse::<std::net::Ipv6Addr>()
            .ok()?
            .to_string(),
        None if host.contains(':') => return None,
        None => host.to_owned(),
    };
    let name_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    name_ok.then_some((host, port))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use isthmus_identity::TrustDomain;
    use isthmus_proto::envoy::envoy::config::listener::v3::{Listener, filter};
    use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use prost::{Message, Name};

    use super::*;
    use crate::config::load_text;
    use crate::model::telemetry::{TelemetrySettings, TracingSettings};
    use crate::model::{Interception, ProxyNode};
    use crate::xds::generate::{ProxySecrets, proxy_snapshot};
    use crate::xds::resources::{CLUSTER, LISTENER, ProxySnapshot};

    const MESH: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: bookinfo}
spec:
  hosts: [ratings.bookinfo.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http}, {number: 7000, name: tcp-data}]
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-v1, namespace: bookinfo}
spec: {address: 127.0.0.21, labels: {app: ratings, version: v1}, serviceAccount: ratings}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: bookinfo}
spec: {address: 127.0.0.22, serviceAccount: client}
";

    fn model(tracing: Option<&str>) -> MeshModel {
        let snapshot = load_text(MESH, std::path::Path::new("t.yaml")).unwrap();
        let mut model = MeshModel::build(
            Arc::new(snapshot),
            &TrustDomain::new("red.local").unwrap(),
            "istio-system",
        );
        model.telemetry = TelemetrySettings {
            mesh_id: Some("red".into()),
            tracing: tracing.map(|endpoint| TracingSettings {
                otlp_endpoint: endpoint.into(),
                sampling_percent: 12.5,
            }),
        };
        model
    }

    fn snapshot(model: &MeshModel, workload: &str, interception: Interception) -> ProxySnapshot {
        let mut node = ProxyNode::from_metadata(
            &format!("sidecar~127.0.0.1~{workload}.bookinfo~bookinfo.svc.cluster.local"),
            &BTreeMap::new(),
        )
        .unwrap();
        node.interception = interception;
        let secrets = ProxySecrets {
            certificate_chain_pem: "CHAIN".into(),
            private_key_pem: "KEY".to_owned().into(),
            bundles: vec![("red.local".into(), "RED ROOT".into())],
        };
        proxy_snapshot(model, &node, &secrets).unwrap()
    }

    fn decoded<M: Message + Default>(s: &ProxySnapshot, type_url: &str) -> BTreeMap<String, M> {
        s.get(type_url)
            .map(|t| {
                t.items()
                    .map(|r| {
                        let body = M::decode(r.body().value.as_slice()).unwrap();
                        (r.name.to_string(), body)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every HTTP connection manager of the snapshot's listeners, by listener name.
    fn managers(s: &ProxySnapshot) -> Vec<(String, HttpConnectionManager)> {
        let listeners: BTreeMap<String, Listener> = decoded(s, LISTENER);
        let mut out = Vec::new();
        for (name, l) in listeners {
            for chain in l.filter_chains.iter().chain(&l.default_filter_chain) {
                for f in &chain.filters {
                    if let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type
                        && any.type_url == HttpConnectionManager::type_url()
                    {
                        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
                        out.push((name.clone(), hcm));
                    }
                }
            }
        }
        out
    }

    fn tags(t: &Tracing) -> Vec<(String, String)> {
        t.custom_tags
            .iter()
            .map(|c| match &c.r#type {
                Some(custom_tag::Type::Literal(l)) => (c.tag.clone(), l.value.clone()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn every_sidecar_manager_traces_to_the_otlp_cluster() {
        let model = model(Some("127.0.0.1:4317"));
        for interception in [Interception::Explicit, Interception::Redirect] {
            let s = snapshot(&model, "ratings-v1", interception);
            let hcms = managers(&s);
            // Inbound (HTTP port) and outbound.
            assert!(hcms.len() >= 2, "{interception:?}: {hcms:?}");
            for (listener, hcm) in &hcms {
                let t = hcm.tracing.as_ref().unwrap_or_else(|| panic!("{listener}"));
                assert_eq!(t.random_sampling.as_ref().unwrap().value, 12.5);
                assert_eq!(
                    tags(t),
                    [
                        ("isthmus.mesh".to_owned(), "red".to_owned()),
                        ("isthmus.workload".into(), "ratings-v1".into()),
                        ("isthmus.namespace".into(), "bookinfo".into()),
                    ]
                );
                let provider = t.provider.as_ref().unwrap();
                assert_eq!(provider.name, "envoy.tracers.opentelemetry");
                let Some(trace::http::ConfigType::TypedConfig(any)) = &provider.config_type else {
                    panic!("no typed config");
                };
                let otel = OpenTelemetryConfig::decode(any.value.as_slice()).unwrap();
                assert_eq!(otel.service_name, "ratings.bookinfo");
                let Some(grpc_service::TargetSpecifier::EnvoyGrpc(g)) =
                    otel.grpc_service.unwrap().target_specifier
                else {
                    panic!("not envoy_grpc");
                };
                assert_eq!(g.cluster_name, OTLP_CLUSTER);
            }
            let clusters: BTreeMap<String, Cluster> = decoded(&s, CLUSTER);
            let otlp = &clusters[OTLP_CLUSTER];
            assert_eq!(
                otlp.cluster_discovery_type,
                Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Static as i32
                ))
            );
            assert!(!otlp.typed_extension_protocol_options.is_empty(), "HTTP/2");
        }
        // A workload without an `app` label is named by its workload name.
        let s = snapshot(&model, "client", Interception::Explicit);
        let (_, hcm) = &managers(&s)[0];
        let Some(trace::http::ConfigType::TypedConfig(any)) = &hcm
            .tracing
            .as_ref()
            .unwrap()
            .provider
            .as_ref()
            .unwrap()
            .config_type
        else {
            panic!("no typed config");
        };
        let otel = OpenTelemetryConfig::decode(any.value.as_slice()).unwrap();
        assert_eq!(otel.service_name, "client.bookinfo");
    }

    #[test]
    fn a_named_collector_is_resolved_by_dns_and_no_endpoint_means_no_tracing() {
        let s = snapshot(
            &model(Some("jaeger.observability:4317")),
            "ratings-v1",
            Interception::Explicit,
        );
        let clusters: BTreeMap<String, Cluster> = decoded(&s, CLUSTER);
        assert_eq!(
            clusters[OTLP_CLUSTER].cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::StrictDns as i32
            ))
        );

        let s = snapshot(&model(None), "ratings-v1", Interception::Explicit);
        assert!(managers(&s).iter().all(|(_, h)| h.tracing.is_none()));
        assert!(!decoded::<Cluster>(&s, CLUSTER).contains_key(OTLP_CLUSTER));
    }

    #[test]
    fn collector_endpoints() {
        let cases = [
            ("127.0.0.1:4317", Some(("127.0.0.1", 4317))),
            (
                "jaeger.observability:4317",
                Some(("jaeger.observability", 4317)),
            ),
            ("[::1]:4317", Some(("::1", 4317))),
            ("::1:4317", None),
            ("jaeger", None),
            ("jaeger:0", None),
            ("jaeger:99999", None),
            (":4317", None),
            ("http://jaeger:4317", None),
            ("[nope]:4317", None),
        ];
        for (text, want) in cases {
            let got = collector(text);
            assert_eq!(got.as_ref().map(|(h, p)| (h.as_str(), *p)), want, "{text}");
        }
    }
}
