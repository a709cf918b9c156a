//! The open xDS streams and their per-type state, for status and debugging.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::RwLock;

use super::status::TypeStatus;

/// One open stream as status shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamInfo {
    pub id: u64,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    /// Empty until the first request named it.
    pub node_id: String,
    pub types: Vec<TypeStatus>,
}

#[derive(Debug, Default)]
pub struct StreamRegistry {
    next: AtomicU64,
    open: RwLock<BTreeMap<u64, StreamInfo>>,
}

impl StreamRegistry {
    pub async fn open(&self, protocol: &'static str) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open.write().await.insert(
            id,
            StreamInfo {
                id,
                protocol,
                ..StreamInfo::default()
            },
        );
        id
    }

    pub async fn update(&self, id: u64, node_id: &str, types: Vec<TypeStatus>) {
        if let Some(info) = self.open.write().await.get_mut(&id) {
            node_id.clone_into(&mut info.node_id);
            info.types = types;
        }
    }

    pub async fn close(&self, id: u64) {
        self.open.write().await.remove(&id);
    }

    /// Every open stream, oldest first.
    pub async fn list(&self) -> Vec<StreamInfo> {
        self.open.read().await.values().cloned().collect()
    }
}
