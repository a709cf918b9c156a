//! Envoy's `AggregatedDiscoveryService` over tonic: each stream runs in its own task, feeding
//! requests and snapshot changes to its state machine ([`SotwStream`] or [`DeltaStream`]),
//! and recording its pushes, NACKs and convergence ([`StreamTelemetry`]).

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use isthmus_identity::{CertInfo, SpiffeId};
use isthmus_proto::envoy::envoy::config::core::v3::Node;
use isthmus_proto::envoy::google::protobuf::value;

use isthmus_proto::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Status, Streaming};

use super::cache::{Published, SnapshotCache};
use super::delta::DeltaStream;
use super::delta_response::DeltaResponse;
use super::resources::ProxySnapshot;
use super::sotw::{ProtocolError, SotwStream};
use super::status::{Reply, TypeStatus};
use super::streams::StreamRegistry;
use crate::telemetry::{StreamTelemetry, XdsMetrics};

/// What the stream runner needs of a protocol's state machine: requests and snapshots go in,
/// responses come out one at a time, when the stream has room for them.
pub(super) trait StreamMachine: Default + Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    const PROTOCOL: &'static str;
    fn node_of(request: &Self::Request) -> Option<&Node>;
    /// Whether the proxy says it already holds configuration (versions from an earlier stream).
    fn holds_config(request: &Self::Request) -> bool;
    fn on_request(
        &mut self,
        request: Self::Request,
        snapshot: &ProxySnapshot,
    ) -> Result<Option<Reply>, ProtocolError>;
    fn on_snapshot(&mut self, snapshot: &ProxySnapshot);
    fn has_pending(&self) -> bool;
    fn next_response(&mut self) -> Option<Self::Response>;
    fn type_of(response: &Self::Response) -> &str;
    /// The types a response is due for (sendable now or waiting for the proxy's answer).
    fn due_types(&self) -> Vec<&str>;
    /// Whether the proxy has accepted everything due to it.
    fn in_sync(&self) -> bool;
    fn status(&self) -> Vec<TypeStatus>;
}

/// A state-of-the-world stream with its responses waiting to be sent (each one carries the
/// whole type, so there is nothing to build lazily).
#[derive(Debug, Default)]
pub(super) struct SotwMachine {
    stream: SotwStream,
    outbox: VecDeque<DiscoveryResponse>,
}

impl StreamMachine for SotwMachine {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const PROTOCOL: &'static str = "sotw";
    fn node_of(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }
    fn holds_config(request: &DiscoveryRequest) -> bool {
        !request.version_info.is_empty()
    }
    fn on_request(
        &mut self,
        request: DiscoveryRequest,
        snapshot: &ProxySnapshot,
    ) -> Result<Option<Reply>, ProtocolError> {
        let (response, reply) = self.stream.on_request(request, snapshot)?;
        self.outbox.extend(response);
        Ok(reply)
    }
    fn on_snapshot(&mut self, snapshot: &ProxySnapshot) {
        let responses = self.stream.on_snapshot(snapshot);
        self.outbox.extend(responses);
    }
    fn has_pending(&self) -> bool {
        !self.outbox.is_empty()
    }
    fn next_response(&mut self) -> Option<DiscoveryResponse> {
        self.outbox.pop_front()
    }
    fn type_of(response: &DiscoveryResponse) -> &str {
        &response.type_url
    }
    fn due_types(&self) -> Vec<&str> {
        self.outbox.iter().map(|r| r.type_url.as_str()).collect()
    }
    fn in_sync(&self) -> bool {
        // A queued response is awaiting its answer already.
        self.stream.in_sync()
    }
    fn status(&self) -> Vec<TypeStatus> {
        self.stream.status()
    }
}

impl StreamMachine for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaResponse;
    const PROTOCOL: &'static str = "delta";
    fn node_of(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }
    fn holds_config(request: &DeltaDiscoveryRequest) -> bool {
        !request.initial_resource_versions.is_empty()
    }
    fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        snapshot: &ProxySnapshot,
    ) -> Result<Option<Reply>, ProtocolError> {
        DeltaStream::on_request(self, request, snapshot)
    }
    fn on_snapshot(&mut self, snapshot: &ProxySnapshot) {
        DeltaStream::on_snapshot(self, snapshot)
    }
    fn has_pending(&self) -> bool {
        DeltaStream::has_pending(self)
    }
    fn next_response(&mut self) -> Option<DeltaResponse> {
        DeltaStream::next_response(self)
    }
    fn type_of(response: &DeltaResponse) -> &str {
        &response.type_url
    }
    fn due_types(&self) -> Vec<&str> {
        DeltaStream::due_types(self).collect()
    }
    fn in_sync(&self) -> bool {
        DeltaStream::in_sync(self)
    }
    fn status(&self) -> Vec<TypeStatus> {
        DeltaStream::status(self)
    }
}

/// A proxy as it introduced itself on a stream: its node id and the string values of its
/// node metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub metadata: BTreeMap<String, String>,
    /// It came back with configuration from an earlier stream (a reconnect), which a
    /// configuration built too early could take away.
    pub holds_config: bool,
}

impl NodeInfo {
    fn from_node(node: &Node) -> Self {
        let metadata = node
            .metadata
            .iter()
            .flat_map(|m| m.fields.iter())
            .filter_map(|(k, v)| match &v.kind {
                Some(value::Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                _ => None,
            })
            .collect();
        Self {
            id: node.id.clone(),
            metadata,
            holds_config: false,
        }
    }
}

/// Who is on the other end of a stream, as far as the port it came in on can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The mTLS port: the SPIFFE ID the client proved with its certificate.
    Verified(SpiffeId),
    /// The opt-in plaintext port on loopback: nothing is proven, the node id is believed.
    LoopbackPlaintext,
}

impl Caller {
    fn describe(&self) -> String {
        match self {
            Self::Verified(id) => id.to_string(),
            Self::LoopbackPlaintext => "plaintext loopback caller".into(),
        }
    }
}

/// Decides whether a stream may receive `node`'s configuration, which holds the node's
/// private key.
pub trait NodeGate: Send + Sync + std::fmt::Debug {
    fn admit(&self, node: &NodeInfo, caller: &Caller) -> Result<(), String>;
}

/// How a port's streams are authenticated. There is no default: whoever serves ADS says which
/// port it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// A verified client certificate with a SPIFFE ID is required on every stream.
    Mtls,
    /// No authentication at all: only for the plaintext port that an operator opted into, on
    /// a loopback address (`isthmusd --xds-plaintext-addr`).
    LoopbackPlaintext,
}

/// The ADS service: proxies' streams over the per-node snapshots of `cache`.
#[derive(Debug, Clone)]
pub struct AdsServer {
    pub cache: Arc<SnapshotCache>,
    pub streams: Arc<StreamRegistry>,
    /// Who may have which node's configuration.
    pub gate: Arc<dyn NodeGate>,
    /// How this port's callers are authenticated.
    pub port: Port,
    /// Told of each node when its first stream names it, so its snapshot gets computed.
    pub joins: Option<mpsc::Sender<NodeInfo>>,
    /// Where streams count connections, pushes, NACKs and convergence.
    pub metrics: XdsMetrics,
}

impl AdsServer {
    /// A server on `port` whose streams `gate` admits, with an empty cache and metrics of its
    /// own (not registered anywhere).
    pub fn new(port: Port, gate: Arc<dyn NodeGate>) -> Self {
        Self {
            cache: Arc::default(),
            streams: Arc::default(),
            gate,
            port,
            joins: None,
            metrics: XdsMetrics::new(),
        }
    }
}

/// The SPIFFE ID of a verified client certificate, if the connection has one.
fn peer_identity<T>(request: &Request<T>) -> Option<SpiffeId> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    CertInfo::parse(leaf).ok()?.spiffe_id().ok()
}

pub(super) type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Where a stream's task hands its responses to gRPC. Boxed: the channel allocates its slots
/// 32 at a time, and a response is over a hundred bytes (its strings and vectors), so a
/// thousand idle streams held megabytes of empty slots.
type Outbound<T> = mpsc::Sender<Box<Result<T, Status>>>;

impl AdsServer {
    pub(super) fn check_peer<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        match self.port {
            Port::LoopbackPlaintext => Ok(Caller::LoopbackPlaintext),
            Port::Mtls => peer_identity(request).map(Caller::Verified).ok_or_else(|| {
                Status::unauthenticated(
                    "xDS on this port requires a client certificate with a SPIFFE ID",
                )
            }),
        }
    }

    pub(super) fn spawn<M>(
        &self,
        inbound: Streaming<M::Request>,
        caller: Caller,
    ) -> ResponseStream<M::Response>
    where
        M: StreamMachine,
        M::Request: prost::Message + Default,
    {
        // Responses are built when the channel has room, so it holds only a couple.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(run_stream::<M>(self.clone(), inbound, tx, caller));
        Box::pin(ReceiverStream::new(rx).map(|response| *response))
    }
}

async fn run_stream<M>(
    server: AdsServer,
    mut inbound: Streaming<M::Request>,
    tx: Outbound<M::Response>,
    caller: Caller,
) where
    M: StreamMachine,
    M::Request: prost::Message + Default,
{
    let stream = server.streams.open(M::PROTOCOL);
    let id = stream.id();
    let mut machine = M::default();
    let mut node_id = String::new();
    let mut snapshots: Option<watch::Receiver<Published>> = None;
    let mut telemetry = StreamTelemetry::new(server.metrics.clone());
    // Counts the stream in `pilot_xds` once its node is admitted, until it ends.
    let mut _connected = None;
    loop {
        let changed = async {
            match snapshots.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let ready = machine.has_pending();
        tokio::select! {
            permit = tx.reserve(), if ready => {
                let Ok(permit) = permit else { break };
                if let Some(response) = machine.next_response() {
                    telemetry.sent(M::type_of(&response));
                    permit.send(Box::new(Ok(response)));
                }
            }
            message = inbound.message() => {
                let request = match message {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(stream = id, %status, "xDS stream ended");
                        break;
                    }
                };
                // The node is remembered from the first request that has one: some clients
                // send it only once.
                if snapshots.is_none()
                    && let Some(node) = M::node_of(&request)
                {
                    let mut node = NodeInfo::from_node(node);
                    node.holds_config = M::holds_config(&request);
                    if let Err(reason) = server.gate.admit(&node, &caller) {
                        tracing::warn!(node = node.id, caller = caller.describe(), reason, "xDS stream refused");
                        let _ = tx.send(Box::new(Err(Status::permission_denied(format!("node {}: {reason}", node.id))))).await;
                        break;
                    }
                    snapshots = Some(server.cache.subscribe(&node.id));
                    _connected = Some(server.metrics.connected());
                    node_id.clone_from(&node.id);
                    if let Some(joins) = &server.joins {
                        let _ = joins.send(node).await;
                    }
                }
                match answer_request(&mut machine, request, snapshots.as_mut(), &mut telemetry) {
                    Ok(reply) => {
                        telemetry.reply(reply.as_ref());
                        log_reply(&node_id, reply);
                    }
                    Err(e) => {
                        let _ = tx.send(Box::new(Err(Status::invalid_argument(e.to_string())))).await;
                        break;
                    }
                }
            }
            still_open = changed => {
                if !still_open {
                    break;
                }
                if let Some(published) = snapshots.as_mut().map(|rx| rx.borrow_and_update().clone()) {
                    machine.on_snapshot(&published.snapshot);
                    telemetry.changed(published.at, !published.snapshot.is_pending(), machine.in_sync());
                }
            }
        }
        telemetry.settle(machine.due_types(), machine.in_sync());
        stream.update(&node_id, machine.status());
    }
}

/// Answers one request from the newest snapshot. If the snapshot changed since the stream last
/// looked, reading it here consumes the change notification, so every other type's changes
/// are queued now too; otherwise they would wait for the next change (a lost update).
fn answer_request<M: StreamMachine>(
    machine: &mut M,
    request: M::Request,
    snapshots: Option<&mut watch::Receiver<Published>>,
    telemetry: &mut StreamTelemetry,
) -> Result<Option<Reply>, ProtocolError> {
    let (changed, published) = match snapshots {
        Some(rx) => (
            rx.has_changed().unwrap_or(false),
            Some(rx.borrow_and_update().clone()),
        ),
        None => (false, None),
    };
    let snapshot = published
        .as_ref()
        .map(|p| p.snapshot.clone())
        .unwrap_or_default();
    let reply = machine.on_request(request, &snapshot)?;
    let computed = published.is_some() && !snapshot.is_pending();
    match published {
        Some(published) if changed => {
            machine.on_snapshot(&snapshot);
            telemetry.changed(published.at, computed, machine.in_sync());
        }
        _ => telemetry.seen(computed),
    }
    Ok(reply)
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

#[cfg(test)]
mod tests {
    use isthmus_proto::envoy::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use isthmus_proto::envoy::google::protobuf::Any;

    use super::*;
    use crate::xds::resources::{CLUSTER, LISTENER, ROUTE, TypeResources};

    fn request(type_url: &str, subscribe: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: Some(Node {
                id: "n".into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            resource_names_subscribe: subscribe.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn one(name: &str) -> TypeResources {
        TypeResources::new([(
            name.to_owned(),
            Any {
                type_url: "t".into(),
                value: name.as_bytes().to_vec(),
            },
        )])
    }

    /// The snapshot arrives while the proxy is mid-conversation: the next request (here a new
    /// RDS subscription) must not swallow the CDS and LDS changes.
    #[test]
    fn a_request_that_sees_a_new_snapshot_also_sends_the_other_types() {
        let published = |snapshot| Published {
            snapshot: Arc::new(snapshot),
            at: tokio::time::Instant::now(),
        };
        let (tx, mut rx) = watch::channel(published(ProxySnapshot::default()));
        let mut telemetry = StreamTelemetry::new(XdsMetrics::new());
        let mut machine = DeltaStream::default();
        for type_url in [CLUSTER, LISTENER] {
            answer_request(
                &mut machine,
                request(type_url, &[]),
                Some(&mut rx),
                &mut telemetry,
            )
            .unwrap();
            let empty = machine.next_response().unwrap();
            assert!(empty.resources.is_empty());
            let mut ack = request(type_url, &[]);
            ack.response_nonce = empty.nonce;
            answer_request(&mut machine, ack, Some(&mut rx), &mut telemetry).unwrap();
        }
        assert!(machine.next_response().is_none());
        assert!(machine.in_sync());
        tx.send_replace(published(
            ProxySnapshot::default()
                .with(CLUSTER, one("c"))
                .with(LISTENER, one("l"))
                .with(ROUTE, one("r")),
        ));
        answer_request(
            &mut machine,
            request(ROUTE, &["r"]),
            Some(&mut rx),
            &mut telemetry,
        )
        .unwrap();
        assert!(!machine.in_sync());
        let responses: Vec<_> = std::iter::from_fn(|| machine.next_response()).collect();
        let mut sent: Vec<(String, Vec<String>)> = responses
            .iter()
            .map(|r| {
                (
                    r.type_url.clone(),
                    r.resources.iter().map(|x| x.name.to_string()).collect(),
                )
            })
            .collect();
        sent.sort();
        assert_eq!(
            sent,
            [
                (CLUSTER.to_owned(), vec!["c".to_owned()]),
                (LISTENER.to_owned(), vec!["l".to_owned()]),
                (ROUTE.to_owned(), vec!["r".to_owned()]),
            ]
        );
    }
}
