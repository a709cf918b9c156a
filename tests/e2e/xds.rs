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
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "sidecar~127.0.0.1~web.app~app.svc.cluster.local".into(),
            ..Node::default()
        }),
        type_url: CDS.into(),
        ..DiscoveryRequest::default()
    })
    .await
    .unwrap();
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), responses.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
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
