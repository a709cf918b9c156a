//! What each side of a discovery stream reports, in the shape of Maistra's
//! `ServiceMeshPeer.status.discoveryStatus`: `remotes` are the peer's control planes watching
//! us (we export), `watch` is our stream to the peer (we import).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// A timestamp as status shows it (RFC 3339, seconds).
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// One discovery stream, seen from either end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    /// Importer side: the address watched; exporter side: the caller's identity and address.
    pub source: String,
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_connected: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_full_sync: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_disconnect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_disconnect_status: Option<String>,
}

impl StreamStatus {
    pub fn connected(&mut self, source: &str, at: SystemTime) {
        self.source = source.to_owned();
        self.connected = true;
        self.last_connected = Some(timestamp(at));
    }

    pub fn event(&mut self, full: bool, at: SystemTime) {
        self.last_event = Some(timestamp(at));
        if full {
            self.last_full_sync = Some(timestamp(at));
        }
    }

    pub fn disconnected(&mut self, why: &str, at: SystemTime) {
        self.connected = false;
        self.last_disconnect = Some(timestamp(at));
        self.last_disconnect_status = Some(why.to_owned());
    }
}

/// The importing side's view of one peer: the stream, and whether the imports it holds are the
/// peer's current list or a stale copy kept while the peer is unreachable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchStatus {
    #[serde(flatten)]
    pub stream: StreamStatus,
    /// The imports are the last list heard before the stream was lost.
    #[serde(default)]
    pub stale: bool,
    /// When stale imports are dropped, if the peer does not come back first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_until: Option<String>,
    /// The stale imports were dropped: the peer was away longer than the stale period.
    #[serde(default)]
    pub expired: bool,
    /// Checksum mismatches seen (each answered with a resync).
    #[serde(default)]
    pub checksum_mismatches: u64,
}
