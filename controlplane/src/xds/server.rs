//! Envoy's `AggregatedDiscoveryService` over tonic: each stream runs in its own task, feeding
//! requests and snapshot changes to its state machine ([`SotwStream`] or [`DeltaStream`]).

use std::pin::Pin;
use std::sync::Arc;

use isthmus_api::envoy::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use isthmus_api::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::cache::SnapshotCache;
use super::delta::DeltaStream;
use super::resources::ProxySnapshot;
use super::sotw::{ProtocolError, SotwStream};
use super::status::{Reply, TypeStatus};
use super::streams::StreamRegistry;

/// What the stream runner needs of a protocol's state machine.
trait StreamMachine: Default + Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    const PROTOCOL: &'static str;
    fn node_id_of(request: &Self::Request) -> Option<String>;
    fn on_request(
        &mut self,
        request: Self::Request,
        snapshot: &ProxySnapshot,
    ) -> Result<(Option<Self::Response>, Option<Reply>), ProtocolError>;
    fn on_snapshot(&mut self, snapshot: &ProxySnapshot) -> Vec<Self::Response>;
    fn status(&self) -> Vec<TypeStatus>;
}

impl StreamMachine for SotwStream {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const PROTOCOL: &'static str = "sotw";
    fn node_id_of(request: &DiscoveryRequest) -> Option<String> {
        request.node.as_ref().map(|n| n.id.clone())
    }
    fn on_request(
        &mut self,
        request: DiscoveryRequest,
        snapshot: &ProxySnapshot,
    ) -> Result<(Option<DiscoveryResponse>, Option<Reply>), ProtocolError> {
        SotwStream::on_request(self, request, snapshot)
    }
    fn on_snapshot(&mut self, snapshot: &ProxySnapshot) -> Vec<DiscoveryResponse> {
        SotwStream::on_snapshot(self, snapshot)
    }
    fn status(&self) -> Vec<TypeStatus> {
        SotwStream::status(self)
    }
}

impl StreamMachine for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const PROTOCOL: &'static str = "delta";
    fn node_id_of(request: &DeltaDiscoveryRequest) -> Option<String> {
        request.node.as_ref().map(|n| n.id.clone())
    }
    fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        snapshot: &ProxySnapshot,
    ) -> Result<(Option<DeltaDiscoveryResponse>, Option<Reply>), ProtocolError> {
        DeltaStream::on_request(self, request, snapshot)
    }
    fn on_snapshot(&mut self, snapshot: &ProxySnapshot) -> Vec<DeltaDiscoveryResponse> {
        DeltaStream::on_snapshot(self, snapshot)
    }
    fn status(&self) -> Vec<TypeStatus> {
        DeltaStream::status(self)
    }
}

/// The ADS service: proxies' streams over the per-node snapshots of `cache`.
#[derive(Debug, Clone, Default)]
pub struct AdsServer {
    pub cache: Arc<SnapshotCache>,
    pub streams: Arc<StreamRegistry>,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(Response::new(
            self.spawn::<SotwStream>(request.into_inner()),
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(Response::new(
            self.spawn::<DeltaStream>(request.into_inner()),
        ))
    }
}

impl AdsServer {
    fn spawn<M>(&self, inbound: Streaming<M::Request>) -> ResponseStream<M::Response>
    where
        M: StreamMachine,
        M::Request: prost::Message + Default,
    {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_stream::<M>(self.clone(), inbound, tx));
        Box::pin(ReceiverStream::new(rx))
    }
}

async fn run_stream<M>(
    server: AdsServer,
    mut inbound: Streaming<M::Request>,
    tx: mpsc::Sender<Result<M::Response, Status>>,
) where
    M: StreamMachine,
    M::Request: prost::Message + Default,
{
    let id = server.streams.open(M::PROTOCOL).await;
    let mut machine = M::default();
    let mut node_id = String::new();
    let mut snapshots: Option<watch::Receiver<Arc<ProxySnapshot>>> = None;
    loop {
        let changed = async {
            match snapshots.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let responses = tokio::select! {
            message = inbound.message() => {
                let request = match message {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(stream = id, %status, "xDS stream ended");
                        break;
                    }
                };
                if snapshots.is_none()
                    && let Some(node) = M::node_id_of(&request)
                {
                    snapshots = Some(server.cache.subscribe(&node).await);
                    node_id = node;
                }
                let snapshot = snapshots.as_mut().map(|rx| rx.borrow_and_update().clone()).unwrap_or_default();
                match machine.on_request(request, &snapshot) {
                    Ok((response, reply)) => {
                        log_reply(&node_id, reply);
                        response.into_iter().collect()
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                        break;
                    }
                }
            }
            still_open = changed => {
                if !still_open {
                    break;
                }
                let snapshot = snapshots.as_mut().map(|rx| rx.borrow_and_update().clone()).unwrap_or_default();
                machine.on_snapshot(&snapshot)
            }
        };
        for response in responses {
            if tx.send(Ok(response)).await.is_err() {
                break;
            }
        }
        server.streams.update(id, &node_id, machine.status()).await;
    }
    server.streams.close(id).await;
}

fn log_reply(node_id: &str, reply: Option<Reply>) {
    match reply {
        Some(Reply::Nack {
            type_url,
            version,
            reason,
        }) => tracing::warn!(
            node = node_id,
            type_url,
            version,
            reason,
            "proxy rejected config (NACK)"
        ),
        Some(Reply::Ack { type_url, version }) => {
            tracing::debug!(node = node_id, type_url, version, "ACK")
        }
        None => {}
    }
}
