//! The ADS stream to `isthmusd` (delta, or state of the world with `--xds-sotw`): sends what [`AdsState`] decides, applies what arrives,
//! publishes each new configuration, and reconnects with jittered exponential backoff,
//! keeping the last good configuration in force while disconnected.

use std::sync::Arc;
use std::time::Duration;

use isthmus_api::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use isthmus_api::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
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

    /// Runs until the process ends.
    pub async fn run(mut self) {
        let mut delay = BACKOFF_FIRST;
        loop {
            let (result, got_response) = match self.protocol {
                Protocol::Delta => self.stream_once().await,
                Protocol::StateOfTheWorld => self.stream_once_sotw().await,
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
                delay = BACKOFF_FIRST;
            }
            // Full jitter: anywhere up to the current delay, so proxies do not reconnect in step.
            let sleep = rand::rng().random_range(Duration::ZERO..=delay);
            tokio::time::sleep(sleep).await;
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }

    /// One stream, until it fails. Also says whether any response arrived (resets backoff).
    async fn stream_once(&mut self) -> (Result<(), tonic::Status>, bool) {
        let (tx, rx) = mpsc::channel(64);
        for request in self.state.start_stream() {
            // The channel has room for the first requests (one per type).
            let _ = tx.try_send(request);
        }
        let mut client = AggregatedDiscoveryServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let mut inbound = match client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
        {
            Ok(response) => response.into_inner(),
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
            for request in self.apply(response) {
                if tx.send(request).await.is_err() {
                    return (
                        Err(tonic::Status::cancelled("request stream closed")),
                        got_response,
                    );
                }
            }
        }
    }

    /// The same over state-of-the-world ADS, translated both ways by [`SotwAdapter`].
    async fn stream_once_sotw(&mut self) -> (Result<(), tonic::Status>, bool) {
        self.sotw.reset_stream();
        let (tx, rx) = mpsc::channel(64);
        for request in self.state.start_stream() {
            let request = self.sotw_request(request);
            let _ = tx.try_send(request);
        }
        let mut client = AggregatedDiscoveryServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let mut inbound = match client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
        {
            Ok(response) => response.into_inner(),
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
            let held = XdsType::from_type_url(&response.type_url)
                .map(|k| self.state.held(k))
                .unwrap_or_default();
            let delta = self.sotw.delta_response(response, &held);
            for request in self.apply(delta) {
                let request = self.sotw_request(request);
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
