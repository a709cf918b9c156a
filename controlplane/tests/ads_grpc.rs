//! The ADS server over real gRPC on loopback, driven by Envoy's generated client.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use isthmus_controlplane::xds::grpc::AdsService;
use isthmus_controlplane::xds::resources::{CLUSTER, ProxySnapshot, TypeResources};
use isthmus_controlplane::xds::server::{AdsServer, Caller, NodeGate, NodeInfo, Port};
use isthmus_controlplane::xds::status::TypeStatus;
use isthmus_controlplane::xds::streams::StreamInfo;
use isthmus_proto::envoy::envoy::config::core::v3::Node;
use isthmus_proto::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use isthmus_proto::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest,
};
use isthmus_proto::envoy::google::protobuf::Any;
use isthmus_proto::envoy::google::rpc::Status;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

const NODE: &str = "sidecar~127.0.0.1~ratings.bookinfo~bookinfo.svc.cluster.local";

fn clusters(items: &[(&str, &str)]) -> ProxySnapshot {
    ProxySnapshot::default().with(
        CLUSTER,
        TypeResources::new(items.iter().map(|(n, v)| {
            (
                (*n).to_owned(),
                Any {
                    type_url: CLUSTER.into(),
                    value: format!("{n}={v}").into_bytes(),
                },
            )
        })),
    )
}

/// Admits every node: these tests are about the protocol, not who may have which node.
#[derive(Debug)]
struct OpenGate;

impl NodeGate for OpenGate {
    fn admit(&self, _: &NodeInfo, _: &Caller) -> Result<(), String> {
        Ok(())
    }
}

async fn start() -> (AdsServer, String) {
    let server = AdsServer::new(Port::LoopbackPlaintext, Arc::new(OpenGate));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = AdsService::new(server.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (server, format!("http://{addr}"))
}

async fn next<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("no response within 5 s")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn sotw_push_ack_nack_over_grpc() {
    let (server, url) = start().await;
    server.cache.set(NODE, clusters(&[("a", "1")]));
    let mut client = AggregatedDiscoveryServiceClient::connect(url)
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: NODE.into(),
            ..Node::default()
        }),
        type_url: CLUSTER.into(),
        ..DiscoveryRequest::default()
    })
    .await
    .unwrap();
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r1 = next(&mut responses).await;
    assert_eq!(r1.resources.len(), 1);
    // ACK without repeating the node.
    tx.send(DiscoveryRequest {
        type_url: CLUSTER.into(),
        version_info: r1.version_info.clone(),
        response_nonce: r1.nonce.clone(),
        ..DiscoveryRequest::default()
    })
    .await
    .unwrap();

    // Wait for the ACK to register: a push that overtook it would make it stale (by protocol).
    let acked = Some(r1.version_info.clone());
    wait_for(&server, "the ACK", |streams| {
        first_type(streams).is_some_and(|t| t.acked_version == acked)
    })
    .await;

    // A change is pushed; the proxy NACKs it; status shows it.
    server
        .cache
        .set(NODE, clusters(&[("a", "1"), ("b", "bad")]));
    let r2 = next(&mut responses).await;
    assert_eq!(r2.resources.len(), 2);
    tx.send(DiscoveryRequest {
        type_url: CLUSTER.into(),
        version_info: r1.version_info.clone(),
        response_nonce: r2.nonce.clone(),
        error_detail: Some(Status {
            code: 3,
            message: "cluster b: unknown field".into(),
            ..Status::default()
        }),
        ..DiscoveryRequest::default()
    })
    .await
    .unwrap();
    let streams = wait_for(&server, "the NACK", |streams| {
        first_type(streams).is_some_and(|t| t.nack.is_some())
    })
    .await;
    let status = first_type(&streams).unwrap();
    assert_eq!(status.nack.as_deref(), Some("cluster b: unknown field"));
    assert_eq!(
        status.acked_version.as_deref(),
        Some(r1.version_info.as_str())
    );
    assert_eq!(streams[0].node_id, NODE);

    // Closing the stream removes it from status.
    drop(tx);
    drop(responses);
    wait_for(&server, "the stream to close", Vec::is_empty).await;
}

/// The first type of the first open stream.
fn first_type(streams: &[StreamInfo]) -> Option<&TypeStatus> {
    streams.first().and_then(|s| s.types.first())
}

/// Polls the stream registry until `done` holds (2 s at most).
async fn wait_for(
    server: &AdsServer,
    what: &str,
    done: impl Fn(&Vec<StreamInfo>) -> bool,
) -> Vec<StreamInfo> {
    for _ in 0..100 {
        let streams = server.streams.list();
        if done(&streams) {
            return streams;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}: {:?}", server.streams.list());
}

#[tokio::test]
async fn delta_over_grpc_sends_only_changes() {
    let (server, url) = start().await;
    server.cache.set(NODE, clusters(&[("a", "1"), ("b", "1")]));
    let mut client = AggregatedDiscoveryServiceClient::connect(url)
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: NODE.into(),
            ..Node::default()
        }),
        type_url: CLUSTER.into(),
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .unwrap();
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r1 = next(&mut responses).await;
    assert_eq!(
        r1.resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    tx.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        response_nonce: r1.nonce.clone(),
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .unwrap();

    server.cache.set(NODE, clusters(&[("a", "2")]));
    let r2 = next(&mut responses).await;
    assert_eq!(
        r2.resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(r2.removed_resources, ["b"]);
}

#[tokio::test]
async fn a_stream_without_a_node_is_refused() {
    let (_server, url) = start().await;
    let mut client = AggregatedDiscoveryServiceClient::connect(url)
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(1);
    tx.send(DiscoveryRequest {
        type_url: CLUSTER.into(),
        ..DiscoveryRequest::default()
    })
    .await
    .unwrap();
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let err = tokio::time::timeout(Duration::from_secs(5), responses.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("must carry the node"),
        "{}",
        err.message()
    );
}
