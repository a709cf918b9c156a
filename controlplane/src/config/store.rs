//! The configuration in force. A new snapshot replaces it whole; a failed load leaves it as it
//! was and records why, so the last good configuration stays in force and the problem is
//! visible.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use super::error::ConfigError;
use super::snapshot::ConfigSnapshot;

/// What the status endpoint reports about configuration.
#[derive(Debug, Clone, Default)]
pub struct ConfigStatus {
    /// Increases with every applied change.
    pub version: u64,
    pub applied_at: Option<SystemTime>,
    /// Problems of the newest load; empty when it was applied.
    pub errors: Vec<ConfigError>,
    pub rejected_at: Option<SystemTime>,
    /// Whether the source finished its first load (applied or not): the directory read once,
    /// or every Kubernetes kind listed. Until then `isthmusd` is not ready.
    pub loaded: bool,
}

/// Holds the good snapshot and the status; consumers subscribe to changes.
#[derive(Debug)]
pub struct ConfigStore {
    snapshot: watch::Sender<Arc<ConfigSnapshot>>,
    status: watch::Sender<ConfigStatus>,
}

impl Default for ConfigStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigStore {
    /// Starts empty (version 0) until the first good load.
    pub fn new() -> Self {
        Self {
            snapshot: watch::channel(Arc::new(ConfigSnapshot::default())).0,
            status: watch::channel(ConfigStatus::default()).0,
        }
    }

    /// Applies a load's result: a snapshot replaces the current one (if different); errors keep
    /// the current one. Returns whether a new snapshot was published.
    pub fn apply(&self, loaded: Result<ConfigSnapshot, Vec<ConfigError>>) -> bool {
        match loaded {
            Ok(snapshot) => {
                let changed = **self.snapshot.borrow() != snapshot;
                self.status.send_modify(|s| {
                    s.loaded = true;
                    s.errors.clear();
                    if changed {
                        s.version += 1;
                        s.applied_at = Some(SystemTime::now());
                    }
                });
                if changed {
                    tracing::info!(resources = snapshot.len(), "configuration applied");
                    self.snapshot.send_replace(Arc::new(snapshot));
                }
                changed
            }
            Err(errors) => {
                // Periodic reloads find the same problems again: say them once.
                if self.status.borrow().errors != errors {
                    for e in &errors {
                        tracing::warn!(
                            "configuration rejected, last good configuration stays: {e}"
                        );
                    }
                }
                self.status.send_modify(|s| {
                    s.loaded = true;
                    s.errors = errors;
                    s.rejected_at = Some(SystemTime::now());
                });
                false
            }
        }
    }

    /// Applies what a source of independent objects (Kubernetes) could read: `snapshot` holds
    /// every valid object and replaces the current one (if different); `skipped` are the
    /// problems of the objects left out (already logged by the source), kept in the status
    /// until they are fixed. Returns whether a new snapshot was published.
    pub fn apply_partial(&self, snapshot: ConfigSnapshot, skipped: Vec<ConfigError>) -> bool {
        let changed = **self.snapshot.borrow() != snapshot;
        self.status.send_modify(|s| {
            s.loaded = true;
            if changed {
                s.version += 1;
                s.applied_at = Some(SystemTime::now());
            }
            if !skipped.is_empty() && s.errors != skipped {
                s.rejected_at = Some(SystemTime::now());
            }
            s.errors = skipped;
        });
        if changed {
            tracing::info!(resources = snapshot.len(), "configuration applied");
            self.snapshot.send_replace(Arc::new(snapshot));
        }
        changed
    }

    pub fn current(&self) -> Arc<ConfigSnapshot> {
        self.snapshot.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ConfigSnapshot>> {
        self.snapshot.subscribe()
    }

    pub fn status(&self) -> ConfigStatus {
        self.status.borrow().clone()
    }
}
