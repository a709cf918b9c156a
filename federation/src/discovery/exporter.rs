//! The exporting side: a `FederationDiscovery` service that streams to each peer the catalog
//! exported to it. The peer is named by the verified client certificate's trust domain, and
//! only that peer's control plane (the identity its `ServiceMeshPeer` names) may watch: any
//! other caller, a workload of the peer's mesh included, is refused before anything is sent.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use isthmus_identity::{CertInfo, SpiffeId};
use isthmus_proto::federation::federation_discovery_server::FederationDiscovery;
use isthmus_proto::federation::{
    FullList, Heartbeat, WatchEvent, WatchRequest, watch_event, watch_request,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::catalog::Catalog;
use crate::status::StreamStatus;

/// A peer as the exporter knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPeer {
    /// The `ServiceMeshPeer`'s name.
    pub name: String,
    /// The one identity that may watch this peer's exports: its control plane.
    pub control_plane: SpiffeId,
}

/// What this mesh exports, as the exporter serves it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exports {
    /// Peer name to the catalog exported to it (absent: nothing).
    pub catalogs: BTreeMap<String, Arc<Catalog>>,
    /// Peer trust domain (`ServiceMeshPeer.spec.security.trustDomain`) to the peer.
    pub peers: BTreeMap<String, ExportPeer>,
}

/// Why a caller may not watch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{caller}: no ServiceMeshPeer has trust domain {trust_domain}")]
    UnknownTrustDomain {
        caller: SpiffeId,
        trust_domain: String,
    },
    #[error(
        "{caller} is not the control plane of peer {peer}: only {allowed} may watch its exports"
    )]
    NotControlPlane {
        caller: SpiffeId,
        peer: String,
        allowed: SpiffeId,
    },
}

impl Exports {
    /// The peer whose exports `caller` may watch: the peer of its trust domain, and only if
    /// `caller` is that peer's control plane.
    pub fn authorize(&self, caller: &SpiffeId) -> Result<&str, Refusal> {
        let trust_domain = caller.trust_domain().as_str();
        let peer = self
            .peers
            .get(trust_domain)
            .ok_or_else(|| Refusal::UnknownTrustDomain {
                caller: caller.clone(),
                trust_domain: trust_domain.to_owned(),
            })?;
        if &peer.control_plane != caller {
            return Err(Refusal::NotControlPlane {
                caller: caller.clone(),
                peer: peer.name.clone(),
                allowed: peer.control_plane.clone(),
            });
        }
        Ok(&peer.name)
    }

    fn catalog(&self, peer: &str) -> Catalog {
        self.catalogs
            .get(peer)
            .map(|c| Catalog::clone(c))
            .unwrap_or_default()
    }
}

/// Peer name to its callers' streams, by stream (numbered in the order they were opened): two
/// streams of one identity are two entries, so one ending never hides the other.
pub type RemotesStatus = BTreeMap<String, BTreeMap<u64, StreamStatus>>;

/// The discovery service.
#[derive(Debug, Clone)]
pub struct Exporter {
    exports: watch::Receiver<Arc<Exports>>,
    heartbeat: Duration,
    remotes: Arc<watch::Sender<RemotesStatus>>,
    streams_opened: Arc<AtomicU64>,
}

impl Exporter {
    pub fn new(exports: watch::Receiver<Arc<Exports>>, heartbeat: Duration) -> Self {
        Self {
            exports,
            heartbeat,
            remotes: Arc::new(watch::channel(RemotesStatus::new()).0),
            streams_opened: Arc::new(AtomicU64::new(0)),
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
        let peer = match self.exports.borrow().authorize(&identity) {
            Ok(peer) => peer.to_owned(),
            Err(refusal) => {
                tracing::warn!(%refusal, remote = ?request.remote_addr(), "discovery watch refused");
                return Err(Status::permission_denied(refusal.to_string()));
            }
        };
        let source = match request.remote_addr() {
            Some(addr) => format!("{identity} from {addr}"),
            None => identity.to_string(),
        };
        tracing::info!(peer, %source, "peer subscribed to its exports");
        let (tx, rx) = mpsc::channel(16);
        let stream = ExportStream {
            id: self.streams_opened.fetch_add(1, Ordering::Relaxed),
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
    /// This stream's key in [`RemotesStatus`].
    id: u64,
    peer: String,
    identity: SpiffeId,
    source: String,
    exports: watch::Receiver<Arc<Exports>>,
    heartbeat: Duration,
    remotes: Arc<watch::Sender<RemotesStatus>>,
    tx: mpsc::Sender<Result<WatchEvent, Status>>,
}

/// A stream's entry in [`RemotesStatus`], connected while this guard lives. Dropping it (the
/// stream ended, or its task was dropped mid-stream) marks the entry disconnected with `why`,
/// so status never shows a stream that is gone as connected.
struct Connection {
    remotes: Arc<watch::Sender<RemotesStatus>>,
    peer: String,
    id: u64,
    why: String,
}

impl Connection {
    fn open(stream: &ExportStream) -> Self {
        stream.status(|s, now| s.connected(&stream.source, now));
        Self {
            remotes: stream.remotes.clone(),
            peer: stream.peer.clone(),
            id: stream.id,
            why: "the stream's task ended".into(),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let now = SystemTime::now();
        let id = self.id;
        self.remotes.send_modify(|remotes| {
            if let Some(streams) = remotes.get_mut(&self.peer) {
                if let Some(status) = streams.get_mut(&id) {
                    status.disconnected(&self.why, now);
                }
                // Every live stream is shown; of the ended ones, only the one that ended last
                // (when and why), so that reconnections do not pile up.
                streams.retain(|&other, s| other == id || s.connected);
            }
        });
    }
}

/// How long a caller has to say what it wants.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

impl ExportStream {
    async fn run(mut self, mut inbound: Streaming<WatchRequest>) {
        let mut connection = Connection::open(&self);
        let why = self.serve(&mut inbound).await;
        tracing::info!(
            peer = self.peer,
            source = self.source,
            why,
            "peer's watch ended"
        );
        connection.why = why;
    }

    fn status(&self, update: impl FnOnce(&mut StreamStatus, SystemTime)) {
        self.remotes.send_modify(|remotes| {
            let entry = remotes
                .entry(self.peer.clone())
                .or_default()
                .entry(self.id)
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
                    if exports.authorize(&self.identity).ok() != Some(self.peer.as_str()) {
                        let _ = self.tx.send(Err(Status::permission_denied(format!(
                            "ServiceMeshPeer {} was removed, or changed its trust domain or control plane",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(uri: &str) -> SpiffeId {
        SpiffeId::parse(uri).unwrap()
    }

    fn exports() -> Exports {
        Exports {
            catalogs: BTreeMap::new(),
            peers: BTreeMap::from([(
                "red.local".to_owned(),
                ExportPeer {
                    name: "red".into(),
                    control_plane: id("spiffe://red.local/ns/isthmus-system/sa/isthmusd"),
                },
            )]),
        }
    }

    #[test]
    fn only_the_peers_control_plane_may_watch_its_exports() {
        let exports = exports();
        assert_eq!(
            exports.authorize(&id("spiffe://red.local/ns/isthmus-system/sa/isthmusd")),
            Ok("red")
        );
        // Red's trust domain, red's CA, but a workload, a gateway, another namespace's isthmusd.
        for caller in [
            "spiffe://red.local/ns/shop/sa/client",
            "spiffe://red.local/ns/istio-system/sa/egress-green-service-account",
            "spiffe://red.local/ns/other/sa/isthmusd",
        ] {
            let refusal = exports.authorize(&id(caller)).unwrap_err();
            assert!(
                matches!(refusal, Refusal::NotControlPlane { ref peer, .. } if peer == "red"),
                "{caller}: {refusal}"
            );
            assert!(
                refusal
                    .to_string()
                    .contains("only spiffe://red.local/ns/isthmus-system/sa/isthmusd may watch"),
                "{refusal}"
            );
        }
        assert!(matches!(
            exports.authorize(&id("spiffe://blue.local/ns/isthmus-system/sa/isthmusd")),
            Err(Refusal::UnknownTrustDomain { .. })
        ));
    }
}
