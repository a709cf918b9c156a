//! `isthmusd`'s xDS server end to end: a real gRPC ADS client against the real daemon.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::time::Duration;

use isthmus_e2e::{Isthmusd, isthmusd_start_failure};
use isthmus_proto::envoy::envoy::config::core::v3::Node;
use isthmus_proto::envoy::envoy::service::discovery::v3::DiscoveryRequest;
use isthmus_proto::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// The node of the workload `web` (127.0.0.1, namespace `app`) that the tests' configurations
/// declare.
fn web_node() -> Node {
    Node {
        id: "sidecar~127.0.0.1~web.app~app.svc.cluster.local".into(),
        ..Node::default()
    }
}

/// A request stream whose first request is `first`, and where to send the next ones.
async fn opened<T>(first: T) -> (mpsc::Sender<T>, ReceiverStream<T>) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(first).await.unwrap();
    (tx, ReceiverStream::new(rx))
}

/// The stream's next message, within `limit`.
async fn next_within<T>(responses: &mut tonic::Streaming<T>, limit: Duration) -> T {
    tokio::time::timeout(limit, responses.next())
        .await
        .expect("a response in time")
        .expect("the stream is open")
        .expect("a message, not an error")
}

#[tokio::test]
async fn ads_stream_is_served_and_visible_in_status() {
    let dir = tempfile::tempdir().unwrap();
    // isthmusd answers a node once it has computed its configuration: it needs its workload.
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/web.yaml"),
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: app}
spec: {address: 127.0.0.1, serviceAccount: web}
",
    )
    .unwrap();
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", daemon.xds))
        .await
        .unwrap();
    let (tx, requests) = opened(DiscoveryRequest {
        node: Some(web_node()),
        type_url: CDS.into(),
        ..DiscoveryRequest::default()
    })
    .await;
    let mut responses = client
        .stream_aggregated_resources(requests)
        .await
        .unwrap()
        .into_inner();
    let first = next_within(&mut responses, Duration::from_secs(5)).await;
    assert_eq!(first.type_url, CDS);
    tx.send(DiscoveryRequest {
        type_url: CDS.into(),
        version_info: first.version_info.clone(),
        response_nonce: first.nonce.clone(),
        ..DiscoveryRequest::default()
    })
    .await
    .unwrap();

    let mut status = Value::Null;
    for _ in 0..100 {
        status = serde_json::from_str(&daemon.http_get("/debug/xds")).unwrap();
        if status["streams"][0]["types"][0]["acked"] == first.version_info.as_str() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stream = &status["streams"][0];
    assert_eq!(
        stream["node"], "sidecar~127.0.0.1~web.app~app.svc.cluster.local",
        "{status}"
    );
    assert_eq!(stream["protocol"], "sotw");
    assert_eq!(stream["types"][0]["typeUrl"], CDS);
    assert_eq!(
        stream["types"][0]["acked"],
        Value::from(first.version_info),
        "{status}"
    );
}

/// A resource larger than what a delta response copies into its frame (the outbound route
/// table of 300 services, tens of kilobytes) arrives whole and decodes: its bytes go to HTTP/2
/// as the snapshot's own buffer, between the chunks written for the response around it.
#[tokio::test]
async fn delta_stream_carries_a_large_route_table_whole() {
    use isthmus_controlplane::xds::delta_response::SHARED_BODY_MIN;
    use isthmus_proto::envoy::envoy::config::route::v3::RouteConfiguration;
    use isthmus_proto::envoy::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use prost::Message;

    const SERVICES: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: app}
spec: {address: 127.0.0.1, serviceAccount: web}
",
    );
    for s in 0..SERVICES {
        yaml.push_str(&format!(
            "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-{s}, namespace: app}}
spec:
  hosts: [svc-{s}.app.local]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http}}]
  endpoints: [{{address: 10.0.{}.{}}}]
",
            s / 256,
            s % 256
        ));
    }
    std::fs::write(dir.path().join("config/mesh.yaml"), yaml).unwrap();
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", daemon.xds))
        .await
        .unwrap();
    let (_tx, requests) = opened(DeltaDiscoveryRequest {
        node: Some(web_node()),
        type_url: ROUTE.into(),
        resource_names_subscribe: vec!["outbound".into()],
        ..DeltaDiscoveryRequest::default()
    })
    .await;
    let mut responses = client
        .delta_aggregated_resources(requests)
        .await
        .unwrap()
        .into_inner();
    let response = next_within(&mut responses, Duration::from_secs(10)).await;
    assert_eq!(response.type_url, ROUTE);
    let [resource] = response.resources.as_slice() else {
        panic!("one route table: {:?}", response.resources.len());
    };
    assert_eq!(resource.name, "outbound");
    assert_eq!(resource.version.len(), 16, "{}", resource.version);
    let body = resource.resource.as_ref().unwrap();
    assert_eq!(body.type_url, ROUTE);
    assert!(
        body.value.len() > 4 * SHARED_BODY_MIN,
        "large enough to be sent as a shared chunk: {} bytes",
        body.value.len()
    );
    let table = RouteConfiguration::decode(body.value.as_slice()).unwrap();
    assert_eq!(table.name, "outbound");
    for s in [0, SERVICES / 2, SERVICES - 1] {
        let host = format!("svc-{s}.app.local");
        assert!(
            table
                .virtual_hosts
                .iter()
                .any(|v| v.domains.iter().any(|d| d.starts_with(&host))),
            "{host} has a virtual host"
        );
    }
    assert!(!response.nonce.is_empty());
}

#[test]
fn plaintext_xds_is_refused_on_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let (code, stderr) = isthmusd_start_failure(
        dir.path(),
        &[
            "--config-dir",
            "config",
            "--state-dir",
            "state",
            "--xds-plaintext-addr",
            "0.0.0.0:0",
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("plaintext xDS is served on loopback addresses only"),
        "{stderr}"
    );
}
