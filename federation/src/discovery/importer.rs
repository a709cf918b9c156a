//! The importing side: one task per peer keeps a `Watch` stream open to the peer's control
//! plane and publishes the peer's catalog as an [`ImportState`].
//!
//! - The first `FullList` of a stream replaces what was held; changes follow, each checked
//!   against the exporter's checksum, a mismatch answered with a `Resync`.
//! - A `Resync` is also sent on a timer (60 s by default).
//! - No message for the heartbeat timeout ends the stream; reconnection backs off
//!   exponentially with jitter, over the peer's addresses in turn.
//! - While disconnected the last catalog is kept and marked stale; after the stale period it
//!   is dropped ([`expire_stale`]). Nothing else changes until the peer is back.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_proto::federation::federation_discovery_client::FederationDiscoveryClient;
use isthmus_proto::federation::{
    Resync, Subscribe, WatchEvent, WatchRequest, watch_event, watch_request,
};
use isthmus_runtime::backoff::{Backoff, Jitter};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::catalog::{ApplyError, Catalog};
use crate::status::{WatchStatus, timestamp};

/// The protocol version this importer speaks.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImporterSettings {
    /// A full resync is asked this often.
    pub resync: Duration,
    /// No message for this long ends the stream (three exporter heartbeats).
    pub heartbeat_timeout: Duration,
    /// How long imports outlive the stream that brought them.
    pub stale_after: Duration,
    /// Reconnection waits 50-100 % of a step that starts here and doubles with each failure,
    /// up to `backoff_max`; a stream that lived longer than `backoff_max` starts it again.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for ImporterSettings {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(60),
            heartbeat_timeout: Duration::from_secs(30),
            stale_after: Duration::from_secs(300),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// What is known of one peer's exports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportState {
    /// The peer's catalog; `None` before the first full list and after stale imports expire.
    pub catalog: Option<Arc<Catalog>>,
    pub status: WatchStatus,
    /// When the imports became stale (tokio's clock), for [`expire_stale`].
    pub stale_since: Option<Instant>,
    /// When the last full list was applied (the wall clock, for metrics; `status` has it as
    /// text).
    pub last_full_sync: Option<SystemTime>,
    /// Full lists and changes received from the peer on every stream of this importer, whether
    /// they applied or not (heartbeats are not counted): a counter for metrics.
    pub events_received: u64,
}

/// Dials one of the peer's addresses.
pub trait Dialer: Send + Sync + 'static {
    fn channel(&self, address: &str) -> Result<Channel, String>;
}

impl<F> Dialer for F
where
    F: Fn(&str) -> Result<Channel, String> + Send + Sync + 'static,
{
    fn channel(&self, address: &str) -> Result<Channel, String> {
        self(address)
    }
}

/// Watches `peer` at `addresses` until the task is aborted, publishing into `state`.
pub async fn run(
    peer: String,
    addresses: Vec<String>,
    dialer: Arc<dyn Dialer>,
    settings: ImporterSettings,
    state: watch::Sender<ImportState>,
) {
    let expiry = tokio::spawn(expire_stale(state.clone(), settings.stale_after));
    let _abort_expiry = AbortOnDrop(expiry);
    let mut backoff =
        Backoff::new(settings.backoff_min, settings.backoff_max).with_jitter(Jitter::Equal);
    for attempt in 0usize.. {
        let Some(address) = addresses.get(attempt % addresses.len().max(1)) else {
            tracing::warn!(peer, "no address to watch");
            return;
        };
        let started = Instant::now();
        let why = match dialer.channel(address) {
            Ok(channel) => session(&peer, address, channel, settings, &state).await,
            Err(e) => format!("cannot dial {address}: {e}"),
        };
        let now = SystemTime::now();
        state.send_modify(|s| {
            if s.status.stream.connected || s.status.stream.last_disconnect.is_none() {
                tracing::warn!(peer, address, why, "discovery stream lost");
            }
            s.status.stream.disconnected(&why, now);
            if s.catalog.is_some() && !s.status.stale {
                s.status.stale = true;
                s.status.stale_until = Some(timestamp(now + settings.stale_after));
                s.stale_since = Some(Instant::now());
            }
        });
        // A stream that lived a while resets the backoff.
        if started.elapsed() > settings.backoff_max {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Drops stale imports once they have been stale for `stale_after`.
pub async fn expire_stale(state: watch::Sender<ImportState>, stale_after: Duration) {
    let mut rx = state.subscribe();
    loop {
        let since = rx.borrow_and_update().stale_since;
        match since {
            Some(since) => {
                tokio::select! {
                    () = tokio::time::sleep_until(since + stale_after) => {
                        state.send_if_modified(|s| {
                            if s.stale_since != Some(since) {
                                return false;
                            }
                            tracing::warn!(source = s.status.stream.source, "stale imports expired");
                            s.catalog = None;
                            s.stale_since = None;
                            s.status.stale = false;
                            s.status.stale_until = None;
                            s.status.expired = true;
                            true
                        });
                    }
                    changed = rx.changed() => if changed.is_err() { return },
                }
            }
            None => {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One stream, from dialling to its end; returns why it ended.
async fn session(
    peer: &str,
    address: &str,
    channel: Channel,
    settings: ImporterSettings,
    state: &watch::Sender<ImportState>,
) -> String {
    let mut client = FederationDiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let subscribe = WatchRequest {
        request: Some(watch_request::Request::Subscribe(Subscribe {
            protocol_version: PROTOCOL_VERSION,
        })),
    };
    if tx.send(subscribe).await.is_err() {
        return "internal: request channel closed".into();
    }
    let opened = tokio::time::timeout(
        settings.heartbeat_timeout,
        client.watch(ReceiverStream::new(rx)),
    )
    .await;
    let mut inbound = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return describe(&status),
        Err(_) => return "no answer to Subscribe".into(),
    };
    state.send_modify(|s| s.status.stream.connected(address, SystemTime::now()));
    tracing::info!(peer, address, "discovery stream open");
    let mut catalog = Catalog::default();
    let mut synced = false;
    let mut resync = tokio::time::interval(settings.resync);
    resync.reset();
    loop {
        tokio::select! {
            message = tokio::time::timeout(settings.heartbeat_timeout, inbound.message()) => {
                let event = match message {
                    Err(_) => return format!(
                        "no message for {:?}: heartbeats missed", settings.heartbeat_timeout
                    ),
                    Ok(Err(status)) => return describe(&status),
                    Ok(Ok(None)) => return "stream closed by the peer".into(),
                    Ok(Ok(Some(event))) => event,
                };
                let counted = u64::from(is_catalog_event(&event));
                match on_event(&mut catalog, &mut synced, event) {
                    Step::Ignored | Step::Heartbeat => {}
                    Step::Publish { full } => {
                        let published = Arc::new(catalog.clone());
                        let now = SystemTime::now();
                        state.send_modify(|s| {
                            s.catalog = Some(published);
                            s.stale_since = None;
                            s.status.stale = false;
                            s.status.stale_until = None;
                            s.status.expired = false;
                            s.status.stream.event(full, now);
                            if full {
                                s.last_full_sync = Some(now);
                            }
                            s.events_received += counted;
                        });
                    }
                    Step::Resync { ours, theirs } => {
                        tracing::warn!(peer, ours, theirs, "checksum mismatch; asking for a resync");
                        state.send_modify(|s| {
                            s.status.checksum_mismatches += 1;
                            s.events_received += counted;
                        });
                        if !ask_resync(&tx, "checksum mismatch").await {
                            return "internal: request channel closed".into();
                        }
                    }
                    Step::End(why) => {
                        state.send_if_modified(|s| {
                            s.events_received += counted;
                            counted > 0
                        });
                        return why;
                    }
                }
            }
            _ = resync.tick() => {
                if !ask_resync(&tx, "timer").await {
                    return "internal: request channel closed".into();
                }
            }
        }
    }
}

/// What one event of the stream leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing: a heartbeat before the first full list.
    Ignored,
    /// A heartbeat whose checksum agrees.
    Heartbeat,
    /// The catalog changed and agrees with the exporter's checksum: publish it.
    Publish { full: bool },
    /// The checksums differ: ask for a resync.
    Resync { ours: u64, theirs: u64 },
    /// A protocol error ends the stream, for this reason.
    End(String),
}

/// Applies one event of a stream to the stream's `catalog`; `synced` says whether a full list
/// has been applied on this stream.
pub fn on_event(catalog: &mut Catalog, synced: &mut bool, event: WatchEvent) -> Step {
    let Some(body) = event.event else {
        return Step::End("protocol error: an event without a body".into());
    };
    let full = matches!(body, watch_event::Event::Full(_));
    if !*synced && !full {
        // Changes before the first full list mean nothing; heartbeats are fine.
        if matches!(body, watch_event::Event::Change(_)) {
            return Step::End("protocol error: a change before the full list".into());
        }
        return Step::Ignored;
    }
    match catalog.apply(&body, event.checksum) {
        Ok(()) => {
            *synced = true;
            if matches!(body, watch_event::Event::Heartbeat(_)) {
                Step::Heartbeat
            } else {
                Step::Publish { full }
            }
        }
        Err(ApplyError::Checksum { ours, theirs }) => Step::Resync { ours, theirs },
        Err(e @ ApplyError::Malformed(_)) => Step::End(format!("protocol error: {e}")),
    }
}

/// Whether `event` is a full list or a change (what [`ImportState::events_received`] counts).
fn is_catalog_event(event: &WatchEvent) -> bool {
    matches!(
        event.event,
        Some(watch_event::Event::Full(_) | watch_event::Event::Change(_))
    )
}

async fn ask_resync(tx: &mpsc::Sender<WatchRequest>, reason: &str) -> bool {
    tx.send(WatchRequest {
        request: Some(watch_request::Request::Resync(Resync {
            reason: reason.into(),
        })),
    })
    .await
    .is_ok()
}

/// A gRPC status as status shows it: the code and what the peer said.
fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(&format!(" ({source})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> ImportState {
        ImportState {
            catalog: Some(Arc::new(Catalog::default())),
            ..Default::default()
        }
    }

    #[test]
    fn full_lists_and_changes_are_counted_heartbeats_are_not() {
        use isthmus_proto::federation::{Change, FullList, Heartbeat};
        let event = |event| WatchEvent {
            event: Some(event),
            checksum: 0,
        };
        assert!(is_catalog_event(&event(watch_event::Event::Full(
            FullList::default()
        ))));
        assert!(is_catalog_event(&event(watch_event::Event::Change(
            Change::default()
        ))));
        assert!(!is_catalog_event(&event(watch_event::Event::Heartbeat(
            Heartbeat::default()
        ))));
        assert!(!is_catalog_event(&WatchEvent::default()));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_imports_are_dropped_after_the_stale_period_unless_the_peer_returns() {
        let (tx, mut rx) = watch::channel(held());
        tokio::spawn(expire_stale(tx.clone(), Duration::from_secs(300)));
        tokio::task::yield_now().await;
        // The stream is lost: the imports are kept, marked stale.
        tx.send_modify(|s| {
            s.status.stale = true;
            s.stale_since = Some(Instant::now());
        });
        tokio::time::sleep(Duration::from_secs(299)).await;
        assert!(
            rx.borrow_and_update().catalog.is_some(),
            "kept through the period"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = rx.borrow_and_update().clone();
        assert!(
            s.catalog.is_none() && s.status.expired && !s.status.stale,
            "{s:?}"
        );

        // A peer that comes back within the period keeps its imports.
        tx.send_replace(held());
        tx.send_modify(|s| {
            s.status.stale = true;
            s.stale_since = Some(Instant::now());
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        tx.send_modify(|s| {
            s.status.stale = false;
            s.stale_since = None;
        });
        tokio::time::sleep(Duration::from_secs(400)).await;
        assert!(
            rx.borrow_and_update().catalog.is_some(),
            "the return cancelled the expiry"
        );
    }
}
