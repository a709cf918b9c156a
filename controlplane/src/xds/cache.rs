//! The snapshot each proxy should have, by node id. The model pipeline sets them; each stream
//! watches its node's. A watch channel keeps only the newest value, so a burst of updates
//! reaches a slow stream as one push. Each snapshot carries when it was published (set and
//! different from the one before), from which streams time convergence
//! (`telemetry::stream`).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;
use tokio::time::Instant;

use super::resources::ProxySnapshot;

/// A node's snapshot and when it was published (tokio's clock).
#[derive(Debug, Clone)]
pub struct Published {
    pub snapshot: Arc<ProxySnapshot>,
    pub at: Instant,
}

impl Published {
    fn now(snapshot: ProxySnapshot) -> Self {
        Self {
            snapshot: Arc::new(snapshot),
            at: Instant::now(),
        }
    }
}

#[derive(Debug, Default)]
pub struct SnapshotCache {
    nodes: RwLock<HashMap<String, watch::Sender<Published>>>,
}

impl SnapshotCache {
    /// Sets the snapshot of `node_id`; streams of that node are notified if it changed.
    pub fn set(&self, node_id: &str, snapshot: ProxySnapshot) {
        let mut nodes = self.nodes.write();
        match nodes.get(node_id) {
            Some(tx) => {
                tx.send_if_modified(|current| {
                    let changed = *current.snapshot != snapshot;
                    if changed {
                        *current = Published::now(snapshot);
                    }
                    changed
                });
            }
            None => {
                nodes.insert(
                    node_id.to_owned(),
                    watch::channel(Published::now(snapshot)).0,
                );
            }
        }
    }

    /// Watches `node_id`'s snapshot ([`ProxySnapshot::pending`] until one is set).
    pub fn subscribe(&self, node_id: &str) -> watch::Receiver<Published> {
        if let Some(tx) = self.nodes.read().get(node_id) {
            return tx.subscribe();
        }
        self.nodes
            .write()
            .entry(node_id.to_owned())
            .or_insert_with(|| watch::channel(Published::now(ProxySnapshot::pending())).0)
            .subscribe()
    }

    /// The snapshot of `node_id`, if it has one.
    pub fn get(&self, node_id: &str) -> Option<Arc<ProxySnapshot>> {
        self.nodes
            .read()
            .get(node_id)
            .map(|tx| tx.borrow().snapshot.clone())
            .filter(|s| !s.is_pending())
    }

    /// Forgets nodes nobody watches any more.
    pub fn prune(&self) {
        self.nodes.write().retain(|_, tx| tx.receiver_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::xds::resources::{CLUSTER, TypeResources};

    fn snapshot(version: &str) -> ProxySnapshot {
        ProxySnapshot::default().with(
            CLUSTER,
            TypeResources::new([(
                version.to_owned(),
                isthmus_proto::envoy::google::protobuf::Any::default(),
            )]),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_is_stamped_when_published_not_when_set_again_unchanged() {
        let cache = SnapshotCache::default();
        let mut rx = cache.subscribe("n");
        assert!(rx.borrow_and_update().snapshot.is_pending());
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        cache.set("n", snapshot("a"));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().at, start + Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(1)).await;
        cache.set("n", snapshot("a"));
        assert!(!rx.has_changed().unwrap(), "unchanged: not published");
        cache.set("n", snapshot("b"));
        assert_eq!(rx.borrow_and_update().at, start + Duration::from_secs(2));
    }
}
