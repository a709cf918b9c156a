//! The exporting side: a `FederationDiscovery` service that streams to each peer the catalog
//! exported to it. The peer is named by the verified client certificate's trust domain; a
//! caller of any other trust domain is refused before anything is sent.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_api::identity::{CertInfo, SpiffeId};
use isthmus_api::proto::federation::federation_discovery_server::FederationDiscovery;
use isthmus_api::proto::federation::{
    FullList, Heartbeat, WatchEvent, WatchRequest, watch_event, watch_request,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::catalog::Catalog;
use crate::status::StreamStatus;

/// What this mesh exports, as the exporter serves it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exports {
    /// Peer name to the catalog exported to it (absent: nothing).
    pub catalogs: BTreeMap<String, Arc<Catalog>>,
    /// Peer trust domain to peer name (`ServiceMeshPeer.spec.security.trustDomain`).
    pub peers: BTreeMap<String, String>,
}

impl Exports {
    fn catalog(&self, peer: &str) -> Catalog {
        self.catalogs
            .get(peer)
            .map(|c| Catalog::clone(c))
            .unwrap_or_default()
    }
}

/// Peer name to its callers' streams, by caller identity.
pub type RemotesStatus = BTreeMap<String, BTreeMap<String, StreamStatus>>;

/// The discovery service.
#[derive(Debug, Clone)]
pub struct Exporter {
    exports: watch::Receiver<Arc<Exports>>,
    heartbeat: Duration,
    remotes: Arc<watch::Sender<RemotesStatus>>,
}

impl Exporter {
    pub fn new(exports: watch::Receiver<Arc<Exports>>, heartbeat: Duration) -> Self {
        Self {
            exports,
            heartbeat,
            remotes: Arc::new(watch::channel(RemotesStatus::new()).0),
        }
    }

    /// The streams of callers, per peer, for status.
    pub fn remotes(&self) -> watch::Receiver<RemotesStatus> {
        self.remotes.subscribe()
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl FederationDiscovery for Exporter {
    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let identity = request
            .peer_certs()
            .and_then(|certs| certs.first().cloned())
            .and_then(|leaf| CertInfo::parse(&leaf).ok()?.spiffe_id().ok())
            .ok_or_else(|| {
                Status::unauthenticated("federation discovery requires a peer's client certificate")
            })?;
        let trust_domain = identity.trust_domain().to_string();
        let peer = self
            .exports
            .borrow()
            .peers
            .get(&trust_domain)
            .cloned()
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "{identity}: no ServiceMeshPeer has trust domain {trust_domain}"
                ))
            })?;
        let source = match request.remote_addr() {
            Some(addr) => format!("{identity} from {addr}"),
            None => identity.to_string(),
        };
        tracing::info!(peer, %source, "peer subscribed to its exports");
        let (tx, rx) = mpsc::channel(16);
        let stream = ExportStream {
            peer,
            identity,
            source,
            exports: self.exports.clone(),
            heartbeat: self.heartbeat,
            remotes: self.remotes.clone(),
            tx,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct ExportStream {
    peer: String,
    identity: SpiffeId,
    source: String,
    exports: watch::Receiver<Arc<Exports>>,
    heartbeat: Duration,
    remotes: Arc<watch::Sender<RemotesStatus>>,
    tx: mpsc::Sender<Result<WatchEvent, Status>>,
}

/// How long a caller has to say what it wants.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

impl ExportStream {
    async fn run(mut self, mut inbound: Streaming<WatchRequest>) {
        self.status(|s, now| s.connected(&self.source, now));
        let why = self.serve(&mut inbound).await;
        tracing::info!(
            peer = self.peer,
            source = self.source,
            why,
            "peer's watch ended"
        );
        self.status(|s, now| s.disconnected(&why, now));
    }

    fn status(&self, update: impl FnOnce(&mut StreamStatus, SystemTime)) {
        let key = self.identity.to_string();
        self.remotes.send_modify(|remotes| {
            let entry = remotes
                .entry(self.peer.clone())
                .or_default()
                .entry(key)
                .or_default();
            update(entry, SystemTime::now());
        });
    }

    /// Serves until the stream ends; returns why.
    async fn serve(&mut self, inbound: &mut Streaming<WatchRequest>) -> String {
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(WatchRequest {
                request: Some(watch_request::Request::Subscribe(_)),
            }))) => {}
            Ok(Ok(Some(_))) => {
                let _ = self
                    .tx
                    .send(Err(Status::invalid_argument(
                        "the first message must be a Subscribe",
                    )))
                    .await;
                return "protocol error: no Subscribe".into();
            }
            Ok(Ok(None)) => return "closed before subscribing".into(),
            Ok(Err(status)) => return format!("error before subscribing: {}", status.message()),
            Err(_) => return "no Subscribe within 10 s".into(),
        }
        let mut sent = self.exports.borrow_and_update().catalog(&self.peer);
        if !self.send_full(&sent).await {
            return "caller went away".into();
        }
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        loop {
            tokio::select! {
                changed = self.exports.changed() => {
                    if changed.is_err() {
                        return "exporter stopping".into();
                    }
                    let exports = self.exports.borrow_and_update().clone();
                    let trust_domain = self.identity.trust_domain().to_string();
                    if exports.peers.get(&trust_domain) != Some(&self.peer) {
                        let _ = self.tx.send(Err(Status::permission_denied(format!(
                            "ServiceMeshPeer {} was removed or changed its trust domain",
                            self.peer
                        )))).await;
                        return "peer removed from configuration".into();
                    }
                    let newer = exports.catalog(&self.peer);
                    for change in sent.diff(&newer) {
                        // `diff` only produces well-formed changes.
                        let _ = sent.apply_change(&change);
                        let event = watch_event::Event::Change(change);
                        if !self.send(event, sent.checksum(), false).await {
                            return "caller went away".into();
                        }
                    }
                    heartbeat.reset();
                }
                request = inbound.message() => match request {
                    Ok(Some(WatchRequest { request: Some(watch_request::Request::Resync(resync)) })) => {
                        tracing::debug!(peer = self.peer, reason = resync.reason, "resync asked");
                        if !self.send_full(&sent).await {
                            return "caller went away".into();
                        }
                        heartbeat.reset();
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return "closed by the caller".into(),
                    Err(status) => return format!("stream error: {}", status.message()),
                },
                _ = heartbeat.tick() => {
                    let beat = watch_event::Event::Heartbeat(Heartbeat {
                        interval_ms: u32::try_from(self.heartbeat.as_millis()).unwrap_or(u32::MAX),
                    });
                    if !self.send(beat, sent.checksum(), false).await {
                        return "caller went away".into();
                    }
                }
            }
        }
    }

    async fn send_full(&self, catalog: &Catalog) -> bool {
        let full = watch_event::Event::Full(FullList {
            services: catalog.services().cloned().collect(),
        });
        self.send(full, catalog.checksum(), true).await
    }

    async fn send(&self, event: watch_event::Event, checksum: u64, full: bool) -> bool {
        let heartbeat = matches!(event, watch_event::Event::Heartbeat(_));
        let sent = self
            .tx
            .send(Ok(WatchEvent {
                event: Some(event),
                checksum,
            }))
            .await
            .is_ok();
        if sent && !heartbeat {
            self.status(|s, now| s.event(full, now));
        }
        sent
    }
}
