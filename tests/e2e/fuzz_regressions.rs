//! The fuzz targets' saved inputs, replayed on stable: every file of `fuzz/regressions/<target>/`
//! (crashes found and fixed, and hand-written edge cases) and of `fuzz/corpus/<target>/` (the
//! seeds) goes through the function the target `<target>` of `fuzz/` calls, so CI keeps them
//! fixed without nightly or libFuzzer. `tests/fuzz.sh SECONDS` runs the fuzzers themselves.
//!
//! `cargo test -p isthmus-e2e --test fuzz_regressions -- --ignored write_seeds` rewrites the
//! generated seeds from real data (a rustls ClientHello, the control plane's xDS resources for
//! `examples/config`, its YAML files, a discovery stream of its services).

use std::path::{Path, PathBuf};

/// The body of a fuzz target.
type Body = fn(&[u8]);

/// Each target of `fuzz/fuzz_targets/` and the function it calls.
const TARGETS: [(&str, Body); 7] = [
    ("client_hello", isthmus_proxy::fuzzing::client_hello),
    ("envoy_config", isthmus_proxy::fuzzing::envoy_config),
    ("yaml_config", isthmus_controlplane::fuzzing::yaml_config),
    (
        "discovery_importer",
        isthmus_federation::fuzzing::discovery_importer,
    ),
    ("http_edge", isthmus_proxy::fuzzing::http_edge),
    (
        "admission_review",
        isthmus_controlplane::fuzzing::admission_review,
    ),
    (
        "telemetry_headers",
        isthmus_proxy::fuzzing::telemetry_headers,
    ),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, in name order (none if it does not exist).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_saved_input_replays_through_its_target() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (target, body) in TARGETS {
        for folder in ["regressions", "corpus"] {
            let dir = fuzz_dir().join(folder).join(target);
            let files = inputs(&dir);
            assert!(
                !files.is_empty(),
                "{}: no saved inputs (the folder is missing or empty)",
                dir.display()
            );
            for file in files {
                let data =
                    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                replayed += 1;
                if let Err(panic) = std::panic::catch_unwind(|| body(&data)) {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    failures.push(format!("{target}: {}: {why}", file.display()));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {replayed} inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Rewrites the generated seeds of `fuzz/corpus/` from real data.
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seeds() {
    seeds::client_hello();
    seeds::envoy_config();
    seeds::yaml_config();
    seeds::discovery_importer();
}

#[cfg(test)]
mod seeds {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use isthmus_controlplane::config::directory::{load_dir, load_text};
    use isthmus_controlplane::model::{MeshModel, ProxyNode};
    use isthmus_controlplane::xds::generate::{ProxySecrets, proxy_snapshot};
    use isthmus_controlplane::xds::resources::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
    use isthmus_federation::discovery::Catalog;
    use isthmus_identity::TrustDomain;
    use isthmus_proto::envoy::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource,
    };
    use isthmus_proto::federation::{
        Change, ExportedService, FullList, Heartbeat, ServicePort, WatchEvent, change, watch_event,
    };
    use prost::Message;

    fn write(target: &str, name: &str, data: &[u8]) {
        let dir = super::fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    }

    fn examples() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
    }

    /// ClientHellos as rustls writes them: TLS 1.3 and 1.2, with SNI and ALPN.
    pub fn client_hello() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        for (name, versions, alpn) in [
            (
                "rustls-tls13-h2",
                &[&rustls::version::TLS13][..],
                vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            ),
            ("rustls-tls12", &[&rustls::version::TLS12][..], vec![]),
        ] {
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            config.alpn_protocols = alpn;
            let server = rustls_pki_types::ServerName::try_from(
                "outbound_.9080_._.reviews.bookinfo.svc.cluster.local",
            )
            .unwrap()
            .to_owned();
            let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
            let mut out = Vec::new();
            conn.write_tls(&mut out).unwrap();
            write("client_hello", name, &out);
        }
    }

    /// The control plane's resources for two workloads of `examples/config`: a few of each
    /// type (selector byte + resource), one delta response and one SotW response.
    pub fn envoy_config() {
        let snapshot = load_dir(&examples().join("config")).unwrap_or_else(|e| panic!("{e:?}"));
        let model = MeshModel::build(
            Arc::new(snapshot),
            &TrustDomain::new("cluster.local").unwrap(),
            "istio-system",
        );
        let ca = isthmus_identity::testing::TestCa::new("cluster.local");
        let secrets = ProxySecrets {
            certificate_chain_pem: String::new(),
            private_key_pem: String::new().into(),
            bundles: vec![("cluster.local".into(), ca.root_pem())],
        };
        // The proxy's XdsType::ALL order: the selector byte of `fuzzing::envoy_config`.
        let types = [
            (CLUSTER, 0u8),
            (ENDPOINT, 1),
            (LISTENER, 2),
            (ROUTE, 3),
            (SECRET, 4),
        ];
        for (workload, address) in [("productpage", "127.0.0.20"), ("reviews-v1", "127.0.0.21")] {
            let node = ProxyNode::from_metadata(
                &format!("sidecar~{address}~{workload}.bookinfo~bookinfo.svc.cluster.local"),
                &BTreeMap::new(),
            )
            .unwrap();
            let proxy = proxy_snapshot(&model, &node, &secrets).unwrap();
            for (type_url, selector) in types {
                let Some(resources) = proxy.get(type_url) else {
                    continue;
                };
                let kind = type_url.rsplit('.').next().unwrap_or_default();
                // The three largest: the most structure.
                let mut items: Vec<_> = resources.items().collect();
                items.sort_by_key(|r| std::cmp::Reverse(r.body().value.len()));
                for (i, r) in items.iter().take(3).enumerate() {
                    if String::from_utf8_lossy(&r.body().value).contains("PRIVATE KEY") {
                        continue;
                    }
                    let mut data = vec![selector];
                    data.extend_from_slice(&r.body().value);
                    write("envoy_config", &format!("{workload}-{kind}-{i}"), &data);
                }
                if type_url == CLUSTER {
                    let delta = DeltaDiscoveryResponse {
                        system_version_info: "1".into(),
                        resources: items
                            .iter()
                            .map(|r| Resource {
                                name: r.name.to_string(),
                                version: r.version.to_string(),
                                resource: Some(r.body()),
                                ..Resource::default()
                            })
                            .collect(),
                        type_url: type_url.into(),
                        removed_resources: vec!["gone".into()],
                        nonce: "n1".into(),
                        ..DeltaDiscoveryResponse::default()
                    };
                    let mut data = vec![6];
                    data.extend_from_slice(&delta.encode_to_vec());
                    write("envoy_config", &format!("{workload}-delta-CDS"), &data);
                }
                if type_url == LISTENER {
                    let sotw = DiscoveryResponse {
                        version_info: "1".into(),
                        resources: items.iter().map(|r| r.body()).collect(),
                        type_url: type_url.into(),
                        nonce: "n1".into(),
                        ..DiscoveryResponse::default()
                    };
                    let mut data = vec![7];
                    data.extend_from_slice(&sotw.encode_to_vec());
                    write("envoy_config", &format!("{workload}-sotw-LDS"), &data);
                }
            }
        }
    }

    /// YAML files of the examples: valid configuration, and one of `examples/two-meshes` with
    /// the local runner's `Workload` kind (refused here).
    pub fn yaml_config() {
        for (path, valid) in [
            ("config/bookinfo.yaml", true),
            ("config/federation.yaml", true),
            ("two-meshes/green/bookinfo.yaml", false),
            ("two-meshes/red/federation.yaml", true),
        ] {
            let file = examples().join(path);
            let text = std::fs::read_to_string(&file).unwrap();
            assert_eq!(load_text(&text, &file).is_ok(), valid, "{path}");
            write("yaml_config", &path.replace('/', "-"), text.as_bytes());
        }
    }

    fn service(host: &str, port: u32, account: &str) -> ExportedService {
        ExportedService {
            hostname: host.into(),
            name: host.split('.').next().unwrap_or_default().into(),
            namespace: "bookinfo".into(),
            ports: vec![ServicePort {
                number: port,
                name: "http".into(),
                protocol: "HTTP".into(),
            }],
            identities: vec![format!("spiffe://green.local/ns/bookinfo/sa/{account}")],
        }
    }

    /// A discovery stream as the exporter sends it: a full list, changes, heartbeats, each
    /// with the exporter's checksum (and one change with a stale checksum).
    pub fn discovery_importer() {
        let ratings = service("ratings.bookinfo.svc.green-exports.local", 9080, "ratings");
        let reviews = service("reviews.bookinfo.svc.green-exports.local", 9080, "reviews");
        let mut details = service("details.bookinfo.svc.green-exports.local", 9080, "details");
        details.ports.push(ServicePort {
            number: 9090,
            name: "grpc".into(),
            protocol: "GRPC".into(),
        });
        let mut exporter = Catalog::new([ratings.clone(), reviews.clone()]);
        let mut stream = Vec::new();
        let mut push = |event: watch_event::Event, checksum: u64| {
            let bytes = WatchEvent {
                event: Some(event),
                checksum,
            }
            .encode_to_vec();
            stream.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
            stream.extend_from_slice(&bytes);
        };
        push(
            watch_event::Event::Heartbeat(Heartbeat {
                interval_ms: 10_000,
            }),
            0,
        );
        push(
            watch_event::Event::Full(FullList {
                services: exporter.services().cloned().collect(),
            }),
            exporter.checksum(),
        );
        for change in [
            Change {
                kind: change::Kind::Upsert as i32,
                service: Some(details),
            },
            Change {
                kind: change::Kind::Delete as i32,
                service: Some(ExportedService {
                    hostname: ratings.hostname.clone(),
                    ..ExportedService::default()
                }),
            },
        ] {
            exporter.apply_change(&change).unwrap();
            push(watch_event::Event::Change(change), exporter.checksum());
        }
        push(
            watch_event::Event::Heartbeat(Heartbeat {
                interval_ms: 10_000,
            }),
            exporter.checksum(),
        );
        write("discovery_importer", "full-changes-heartbeats", &stream);
        // A lost change: the next one's checksum does not match (a resync).
        let mut lost = Vec::new();
        let full = WatchEvent {
            event: Some(watch_event::Event::Full(FullList {
                services: vec![reviews.clone()],
            })),
            checksum: Catalog::new([reviews]).checksum(),
        }
        .encode_to_vec();
        lost.extend_from_slice(&u16::try_from(full.len()).unwrap().to_be_bytes());
        lost.extend_from_slice(&full);
        let change = WatchEvent {
            event: Some(watch_event::Event::Change(Change {
                kind: change::Kind::Upsert as i32,
                service: Some(ratings),
            })),
            checksum: exporter.checksum(),
        }
        .encode_to_vec();
        lost.extend_from_slice(&u16::try_from(change.len()).unwrap().to_be_bytes());
        lost.extend_from_slice(&change);
        write("discovery_importer", "checksum-mismatch", &lost);
    }
}
