//! The ADS stream to `isthmusd` (delta, or state of the world with `--xds-sotw`): sends what [`AdsState`] decides, applies what arrives,
//! publishes each new configuration, and reconnects with jittered exponential backoff,
//! keeping the last good configuration in force while disconnected.

use std::sync::Arc;
use std::time::Duration;

use isthmus_proto::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use isthmus_runtime::backoff::{Backoff, Jitter};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use isthmus_proto::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};

use super::sotw::SotwAdapter;
use super::state::{AdsState, TypeReport};
use crate::config::{ProxyConfig, XdsType};
use crate::metrics::{Metrics, XdsLabels};

/// The largest response accepted: a bound on what one malformed or hostile message can cost.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// What the admin port shows of the xDS connection.
#[derive(Debug, Clone, Default)]
pub struct XdsStatus {
    pub connected: bool,
    pub ready: bool,
    pub waiting_for: Vec<XdsType>,
    pub types: Vec<TypeReport>,
    pub last_disconnect: Option<String>,
}

/// Which form of ADS to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Delta,
    StateOfTheWorld,
}

#[derive(Debug)]
pub struct XdsClient {
    metrics: Arc<Metrics>,
    channel: Channel,
    protocol: Protocol,
    state: AdsState,
    sotw: SotwAdapter,
    config: watch::Sender<Arc<ProxyConfig>>,
    status: watch::Sender<XdsStatus>,
}

impl XdsClient {
    pub fn new(
        channel: Channel,
        protocol: Protocol,
        state: AdsState,
        metrics: Arc<Metrics>,
    ) -> (
        Self,
        watch::Receiver<Arc<ProxyConfig>>,
        watch::Receiver<XdsStatus>,
    ) {
        let (config, config_rx) = watch::channel(Arc::default());
        let (status, status_rx) = watch::channel(XdsStatus::default());
        (
            Self {
                metrics,
                channel,
                protocol,
                state,
                sotw: SotwAdapter::default(),
                config,
                status,
            },
            config_rx,
            status_rx,
        )
    }

    /// Runs until its task is stopped (`app.rs` owns it and stops it after the drain).
    pub async fn run(mut self) {
        // Full jitter: anywhere up to the current step, so proxies do not reconnect in step.
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX).with_jitter(Jitter::Full);
        loop {
            let (result, got_response) = match self.protocol {
                Protocol::Delta => self.stream_once::<Delta>().await,
                Protocol::StateOfTheWorld => self.stream_once::<Sotw>().await,
            };
            let reason = match result {
                Ok(()) => "the server closed the stream".to_owned(),
                Err(status) => format!("{}: {}", status.code(), status.message()),
            };
            tracing::warn!(
                reason,
                "xDS stream to isthmusd ended; the last configuration stays in force"
            );
            self.status.send_modify(|s| {
                s.connected = false;
                s.last_disconnect = Some(reason);
            });
            if got_response {
                backoff.reset();
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// One stream in form `F`, until it fails. Also says whether any response arrived (that
    /// resets the backoff).
    async fn stream_once<F: Form>(&mut self) -> (Result<(), tonic::Status>, bool) {
        let (tx, rx) = mpsc::channel(64);
        for request in F::first(self) {
            // The channel has room for the first requests (one per type).
            let _ = tx.try_send(request);
        }
        let mut grpc = AggregatedDiscoveryServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let mut inbound = match F::open(&mut grpc, ReceiverStream::new(rx)).await {
            Ok(inbound) => inbound,
            Err(status) => return (Err(status), false),
        };
        self.status.send_modify(|s| s.connected = true);
        let mut got_response = false;
        loop {
            let response = match inbound.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return (Ok(()), got_response),
                Err(status) => return (Err(status), got_response),
            };
            got_response = true;
            for request in F::on_response(self, response) {
                if tx.send(request).await.is_err() {
                    return (
                        Err(tonic::Status::cancelled("request stream closed")),
                        got_response,
                    );
                }
            }
        }
    }

    fn sotw_request(&mut self, request: DeltaDiscoveryRequest) -> DiscoveryRequest {
        let subscribed = XdsType::from_type_url(&request.type_url)
            .map(|k| self.state.subscribed(k))
            .unwrap_or_default();
        self.sotw.sotw_request(request, &subscribed)
    }

    /// Applies one response: counts it, publishes the new configuration and status; returns
    /// the requests to send (ACK or NACK, subscription changes).
    fn apply(&mut self, response: DeltaDiscoveryResponse) -> Vec<DeltaDiscoveryRequest> {
        let kind = XdsType::from_type_url(&response.type_url).map_or("unknown", XdsType::short);
        let outcome = self.state.on_response(response);
        let result = if outcome.config.is_some() {
            "accepted"
        } else {
            "rejected"
        };
        self.metrics
            .xds_updates
            .get_or_create(&XdsLabels {
                r#type: kind.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        if let Some(config) = outcome.config {
            self.config.send_replace(config);
        }
        self.publish_status();
        outcome.requests
    }

    fn publish_status(&self) {
        let ready = self.state.ready();
        let waiting_for = self.state.waiting_for();
        let types = self.state.report();
        self.status.send_modify(|s| {
            s.ready = s.ready || ready;
            s.waiting_for = waiting_for;
            s.types = types;
        });
    }
}

/// What differs between the two forms of ADS: the messages, the RPC, and how they map onto the
/// delta state machine.
trait Form {
    type Request: Send + 'static;
    type Response: Send + 'static;

    /// The first requests of a stream.
    fn first(client: &mut XdsClient) -> Vec<Self::Request>;

    /// Applies a response; the requests to send.
    fn on_response(client: &mut XdsClient, response: Self::Response) -> Vec<Self::Request>;

    async fn open(
        grpc: &mut AggregatedDiscoveryServiceClient<Channel>,
        requests: ReceiverStream<Self::Request>,
    ) -> Result<tonic::Streaming<Self::Response>, tonic::Status>;
}

/// Delta (incremental) ADS: the state machine's own messages.
struct Delta;

impl Form for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn first(client: &mut XdsClient) -> Vec<Self::Request> {
        client.state.start_stream()
    }

    fn on_response(client: &mut XdsClient, response: Self::Response) -> Vec<Self::Request> {
        client.apply(response)
    }

    async fn open(
        grpc: &mut AggregatedDiscoveryServiceClient<Channel>,
        requests: ReceiverStream<Self::Request>,
    ) -> Result<tonic::Streaming<Self::Response>, tonic::Status> {
        Ok(grpc
            .delta_aggregated_resources(requests)
            .await?
            .into_inner())
    }
}

/// State-of-the-world ADS, translated both ways by [`SotwAdapter`].
struct Sotw;

impl Form for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn first(client: &mut XdsClient) -> Vec<Self::Request> {
        client.sotw.reset_stream();
        client
            .state
            .start_stream()
            .into_iter()
            .map(|r| client.sotw_request(r))
            .collect()
    }

    fn on_response(client: &mut XdsClient, response: Self::Response) -> Vec<Self::Request> {
        let held = XdsType::from_type_url(&response.type_url)
            .map(|k| client.state.held(k))
            .unwrap_or_default();
        let delta = client.sotw.delta_response(response, &held);
        client
            .apply(delta)
            .into_iter()
            .map(|r| client.sotw_request(r))
            .collect()
    }

    async fn open(
        grpc: &mut AggregatedDiscoveryServiceClient<Channel>,
        requests: ReceiverStream<Self::Request>,
    ) -> Result<tonic::Streaming<Self::Response>, tonic::Status> {
        Ok(grpc
            .stream_aggregated_resources(requests)
            .await?
            .into_inner())
    }
}
