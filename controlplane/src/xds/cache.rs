//! The snapshot each proxy should have, by node id. The model pipeline sets them; each stream
//! watches its node's. A watch channel keeps only the newest value, so a burst of updates
//! reaches a slow stream as one push.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

use super::resources::ProxySnapshot;

#[derive(Debug, Default)]
pub struct SnapshotCache {
    nodes: RwLock<HashMap<String, watch::Sender<Arc<ProxySnapshot>>>>,
}

impl SnapshotCache {
    /// Sets the snapshot of `node_id`; streams of that node are notified if it changed.
    pub fn set(&self, node_id: &str, snapshot: ProxySnapshot) {
        let mut nodes = self.nodes.write();
        match nodes.get(node_id) {
            Some(tx) => {
                tx.send_if_modified(|current| {
                    let changed = **current != snapshot;
                    if changed {
                        *current = Arc::new(snapshot);
                    }
                    changed
                });
            }
            None => {
                nodes.insert(node_id.to_owned(), watch::channel(Arc::new(snapshot)).0);
            }
        }
    }

    /// Watches `node_id`'s snapshot ([`ProxySnapshot::pending`] until one is set).
    pub fn subscribe(&self, node_id: &str) -> watch::Receiver<Arc<ProxySnapshot>> {
        if let Some(tx) = self.nodes.read().get(node_id) {
            return tx.subscribe();
        }
        self.nodes
            .write()
            .entry(node_id.to_owned())
            .or_insert_with(|| watch::channel(Arc::new(ProxySnapshot::pending())).0)
            .subscribe()
    }

    /// The snapshot of `node_id`, if it has one.
    pub fn get(&self, node_id: &str) -> Option<Arc<ProxySnapshot>> {
        self.nodes
            .read()
            .get(node_id)
            .map(|tx| tx.borrow().clone())
            .filter(|s| !s.is_pending())
    }

    /// Forgets nodes nobody watches any more.
    pub fn prune(&self) {
        self.nodes.write().retain(|_, tx| tx.receiver_count() > 0);
    }
}
