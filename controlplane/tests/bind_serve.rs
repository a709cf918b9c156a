//! `isthmusd` in-process: `bind` with every port on 127.0.0.1:0, the addresses it reports and
//! publishes, the debug port over plain HTTP/1.1, and a shutdown that returns promptly even with
//! an xDS stream open, and leaves neither listeners nor that stream behind.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use isthmus_controlplane::daemon::{Addresses, DaemonConfig, DaemonError, Listener, bind};
use isthmus_proto::envoy::envoy::config::core::v3::Node;
use isthmus_proto::envoy::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use isthmus_proto::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SERVICE_ENTRY: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 9080
    name: http
  workloadSelector:
    labels:
      app: reviews
";

const NODE: &str = "sidecar~127.0.0.1~reviews-v1.bookinfo~bookinfo.svc.cluster.local";

/// A local daemon's configuration with one `ServiceEntry`, plaintext xDS on too.
fn config(dir: &Path) -> DaemonConfig {
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("mesh.yaml"), SERVICE_ENTRY).unwrap();
    let mut config = DaemonConfig::local(
        config_dir,
        dir.join("state"),
        "cluster.local".parse().unwrap(),
    );
    config.xds_plaintext_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config
}

/// `GET path` over HTTP/1.1: the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_every_port_serves_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let state_dir = config.state_dir.clone();
    let bound = bind(config).await.unwrap();

    // Every port on loopback, each a port of its own chosen by the system.
    let addresses = *bound.addresses();
    let xds_plaintext = addresses.xds_plaintext.unwrap();
    let federation = addresses.federation.unwrap();
    let all = [addresses.grpc, addresses.debug, xds_plaintext, federation];
    for addr in all {
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addresses:?}");
    }
    let mut ports: Vec<u16> = all.iter().map(SocketAddr::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 4, "{addresses:?}");
    // The file other processes read says the same, through the same type.
    assert_eq!(Addresses::read(&state_dir).unwrap(), addresses);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(bound.serve(async {
        let _ = stopped.await;
    }));

    let (status, body) = get(addresses.debug, "/ready").await;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(body, "ok\n");
    let (status, body) = get(addresses.debug, "/debug/config").await;
    assert!(status.contains(" 200 "), "{status}");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["errors"], serde_json::json!([]), "{config}");
    assert!(body.contains("ServiceEntry"), "{config}");

    // An xDS stream stays open until its client goes; shutdown does not wait for it past the
    // drain timeout.
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{xds_plaintext}"))
        .await
        .unwrap();
    let (requests, outbound) = tokio::sync::mpsc::channel(4);
    requests
        .send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: NODE.into(),
                ..Node::default()
            }),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            ..DeltaDiscoveryRequest::default()
        })
        .await
        .unwrap();
    let stream = tokio::spawn(async move {
        let mut responses = client
            .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await?
            .into_inner();
        while responses.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    });
    let streams = async {
        loop {
            let (_, body) = get(addresses.debug, "/debug/xds").await;
            if body.contains(NODE) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), streams)
        .await
        .expect("the xDS stream shows on /debug/xds");

    stop.send(()).unwrap();
    let served = tokio::time::timeout(Duration::from_secs(5), daemon)
        .await
        .expect("serve returns within the drain timeout after shutdown")
        .unwrap();
    served.unwrap();
    // The stream's connection was cut, though its client still holds it open.
    let ended = tokio::time::timeout(Duration::from_secs(5), stream)
        .await
        .expect("the xDS stream ends with the daemon")
        .unwrap();
    assert!(ended.is_err(), "{ended:?}");
    drop(requests);

    // Nothing listens any more: the listeners went with their servers.
    for addr in all {
        let closed = async {
            while TcpStream::connect(addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .unwrap_or_else(|_| panic!("{addr} still accepts connections after shutdown"));
    }
}

#[tokio::test]
async fn a_port_in_use_is_named_with_its_address_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = config(dir.path());
    config.debug_addr = taken.local_addr().unwrap();
    let error = bind(config).await.unwrap_err();
    let DaemonError::Bind { listener, addr, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(*listener, Listener::Debug);
    assert_eq!(*addr, taken.local_addr().unwrap());
    assert!(error.to_string().contains("--debug-addr"), "{error}");
    let cause = std::error::Error::source(&error).unwrap();
    assert_eq!(
        cause.downcast_ref::<std::io::Error>().unwrap().kind(),
        std::io::ErrorKind::AddrInUse
    );
}

/// `ServiceEntry`s without addresses: `db` (static), `api` (resolved by DNS), a wildcard and
/// a `resolution: NONE` one (neither gets an address), and `extra` entries after them.
fn address_less(extra: &[&str]) -> String {
    let entry = |name: &str, host: &str, resolution: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: ['{host}']
  location: MESH_EXTERNAL
  resolution: {resolution}
  ports: [{{number: 5432, name: tcp-db}}]
  endpoints: [{{address: 10.1.2.3}}]
---
"
        )
    };
    let mut text = entry("db", "db.example.internal", "STATIC")
        + &entry("api", "api.example.com", "DNS")
        + &entry("wild", "*.example.org", "DNS")
        + &entry("none", "none.example.com", "NONE");
    for (i, host) in extra.iter().enumerate() {
        text += &entry(&format!("extra{i}"), host, "STATIC");
    }
    text
}

/// The allocated addresses on `/debug/addresses`, by host, once there are `count`.
async fn allocated(debug: SocketAddr, count: usize) -> std::collections::BTreeMap<String, String> {
    let wait = async {
        loop {
            let (_, body) = get(debug, "/debug/addresses").await;
            let status: serde_json::Value = serde_json::from_str(&body).unwrap();
            let found: std::collections::BTreeMap<String, String> = status["services"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["allocated"] == true)
                .map(|s| {
                    (
                        s["host"].as_str().unwrap().to_owned(),
                        s["addresses"][0].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            if found.len() == count {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("the allocated addresses on /debug/addresses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocated_addresses_survive_reloads_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let yaml = config.config_dir.join("mesh.yaml");
    std::fs::write(&yaml, address_less(&[])).unwrap();
    let state_dir = config.state_dir.clone();

    let bound = bind(config.clone()).await.unwrap();
    let debug = bound.addresses().debug;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(bound.serve(async {
        let _ = stopped.await;
    }));
    let first = allocated(debug, 2).await;
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        ["api.example.com", "db.example.internal"],
        "no address for a wildcard or resolution NONE"
    );
    for ip in first.values() {
        assert!(ip.starts_with("240.240."), "{first:?}");
    }
    assert_ne!(first["api.example.com"], first["db.example.internal"]);
    // Kept in the state folder, privately.
    let file = state_dir.join("vips.json");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A reload that adds a name keeps the others' addresses.
    std::fs::write(&yaml, address_less(&["new.example.internal"])).unwrap();
    let second = allocated(debug, 3).await;
    assert_eq!(second["api.example.com"], first["api.example.com"]);
    assert_eq!(second["db.example.internal"], first["db.example.internal"]);
    stop.send(()).unwrap();
    daemon.await.unwrap().unwrap();

    // A restart, with one name gone: the rest keep theirs.
    std::fs::write(
        &yaml,
        address_less(&["new.example.internal"])
            .replace("db.example.internal", "other.example.internal"),
    )
    .unwrap();
    let bound = bind(config).await.unwrap();
    let debug = bound.addresses().debug;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(bound.serve(async {
        let _ = stopped.await;
    }));
    let third = allocated(debug, 3).await;
    assert_eq!(third["api.example.com"], first["api.example.com"]);
    assert_eq!(
        third["new.example.internal"],
        second["new.example.internal"]
    );
    assert!(!third.contains_key("db.example.internal"));
    let distinct: std::collections::BTreeSet<&String> = third.values().collect();
    assert_eq!(distinct.len(), 3, "{third:?}");
    stop.send(()).unwrap();
    daemon.await.unwrap().unwrap();
}
