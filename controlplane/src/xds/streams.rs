//! The open xDS streams and their per-type state, for status and debugging. A stream is
//! listed while its [`OpenStream`] guard lives: however its task ends, it leaves the list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

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
    open: Mutex<BTreeMap<u64, StreamInfo>>,
}

/// One listed stream; dropping it takes the stream off the list.
#[derive(Debug)]
pub struct OpenStream {
    registry: Arc<StreamRegistry>,
    id: u64,
}

impl StreamRegistry {
    /// Lists a new stream until the guard is dropped.
    pub fn open(self: &Arc<Self>, protocol: &'static str) -> OpenStream {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open.lock().insert(
            id,
            StreamInfo {
                id,
                protocol,
                ..StreamInfo::default()
            },
        );
        OpenStream {
            registry: self.clone(),
            id,
        }
    }

    /// Every open stream, oldest first.
    pub fn list(&self) -> Vec<StreamInfo> {
        self.open.lock().values().cloned().collect()
    }
}

impl OpenStream {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn update(&self, node_id: &str, types: Vec<TypeStatus>) {
        if let Some(info) = self.registry.open.lock().get_mut(&self.id) {
            node_id.clone_into(&mut info.node_id);
            info.types = types;
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.registry.open.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_listed_while_its_guard_lives() {
        let registry = Arc::new(StreamRegistry::default());
        let first = registry.open("delta");
        let second = registry.open("sotw");
        second.update("sidecar~10.0.0.1~a.ns~ns.svc.cluster.local", Vec::new());
        let listed = registry.list();
        assert_eq!(
            listed.iter().map(|s| s.id).collect::<Vec<_>>(),
            [first.id(), second.id()]
        );
        assert_eq!(listed[0].protocol, "delta");
        assert_eq!(
            listed[1].node_id,
            "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local"
        );
        drop(first);
        assert_eq!(
            registry.list().iter().map(|s| s.id).collect::<Vec<_>>(),
            [second.id()]
        );
        drop(second);
        assert!(registry.list().is_empty());
    }
}
