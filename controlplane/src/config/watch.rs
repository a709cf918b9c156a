//! Keeping the store in step with the directory: a file-system watch (debounced, so an editor's
//! burst of writes is one reload) plus a periodic full reload in case an event was missed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::loader::DirLoader;
use super::store::ConfigStore;

/// Timing of reloads.
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// Quiet time after the last change before reloading.
    pub debounce: Duration,
    /// Full reload even without events.
    pub resync: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(50),
            resync: Duration::from_secs(30),
        }
    }
}

/// Loads `dir` into `store` now, and returns the task that keeps reloading it: on changes
/// (debounced) and every `resync`. The caller runs and owns that task; it never ends by itself,
/// and dropping it (or aborting the task it was spawned as) drops the file-system watch too.
/// Fails if the directory cannot be watched.
pub fn watch_dir(
    dir: PathBuf,
    store: Arc<ConfigStore>,
    settings: WatchSettings,
) -> Result<impl Future<Output = ()> + Send + 'static, notify::Error> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::Recursive)?;
    // Files that did not change are not parsed again (a large directory, one edit).
    let mut loader = DirLoader::default();
    store.apply(loader.load(&dir));
    Ok(async move {
        // The watch lives as long as the task; its sender, in the watcher's callback, too, so
        // `rx` does not close while the task runs.
        let _watcher = watcher;
        let mut resync = tokio::time::interval(settings.resync);
        resync.tick().await;
        loop {
            tokio::select! {
                event = rx.recv() => {
                    if event.is_none() {
                        return;
                    }
                    // Debounce: wait until no event arrived for `debounce`.
                    while let Ok(Some(())) = tokio::time::timeout(settings.debounce, rx.recv()).await {}
                }
                _ = resync.tick() => {}
            }
            let dir = dir.clone();
            let mut taken = std::mem::take(&mut loader);
            let loaded = tokio::task::spawn_blocking(move || {
                let started = tokio::time::Instant::now();
                let loaded = taken.load(&dir);
                tracing::debug!(elapsed = ?started.elapsed(), "configuration directory read");
                (taken, loaded)
            })
            .await;
            match loaded {
                Ok((back, loaded)) => {
                    loader = back;
                    store.apply(loaded);
                }
                // The loader went with the task: the next reload parses every file again.
                Err(e) => tracing::error!(error = %e, "reading the configuration directory failed"),
            }
        }
    })
}
