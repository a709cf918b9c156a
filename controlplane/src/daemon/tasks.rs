//! The tasks a bound `isthmusd` owns, each under a name, so that the one that stopped can be
//! named; dropping the set aborts them all.

use std::collections::HashMap;

use tokio::task::{AbortHandle, Id, JoinError, JoinHandle, JoinSet};

/// Spawned tasks by name.
pub(super) struct Owned<N, T> {
    set: JoinSet<T>,
    names: HashMap<Id, N>,
}

impl<N, T> Default for Owned<N, T> {
    fn default() -> Self {
        Self {
            set: JoinSet::new(),
            names: HashMap::new(),
        }
    }
}

impl<N: Copy, T: Send + 'static> Owned<N, T> {
    /// Runs `task` as one of the set's.
    pub fn spawn(&mut self, name: N, task: impl Future<Output = T> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// The next task to end with its name: its output, or why it has none (panic, abort);
    /// `None` when the set is empty.
    pub async fn next(&mut self) -> Option<(N, Result<T, JoinError>)> {
        loop {
            let ended = self.set.join_next_with_id().await?;
            let id = match &ended {
                Ok((id, _)) => *id,
                Err(e) => e.id(),
            };
            if let Some(name) = self.names.remove(&id) {
                return Some((name, ended.map(|(_, output)| output)));
            }
        }
    }

    /// Aborts every task and waits until they have stopped.
    pub async fn shutdown(&mut self) {
        self.set.shutdown().await;
        self.names.clear();
    }
}

impl<N: Copy> Owned<N, ()> {
    /// Owns a task someone else spawned (`handle`): aborted with the set, and its panic is the
    /// set's task's panic.
    pub fn adopt(&mut self, name: N, handle: JoinHandle<()>) {
        let abort = AbortOnDrop(handle.abort_handle());
        self.spawn(name, async move {
            let _abort = abort;
            if let Err(e) = handle.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        });
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn names_the_task_that_ended_even_when_it_panicked() {
        let mut tasks = Owned::default();
        tasks.spawn("forever", std::future::pending::<()>());
        tasks.spawn("panics", async { panic!("on purpose") });
        let (name, ended) = tasks.next().await.unwrap();
        assert_eq!(name, "panics");
        assert!(ended.unwrap_err().is_panic());
        tasks.shutdown().await;
        assert!(tasks.next().await.is_none());
    }

    #[tokio::test]
    async fn an_adopted_task_is_aborted_with_the_set() {
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let _tx = tx; // dropped when the task is aborted
            std::future::pending::<()>().await;
        });
        let mut tasks = Owned::default();
        tasks.adopt("adopted", handle);
        tasks.shutdown().await;
        let closed = tokio::time::timeout(Duration::from_secs(5), &mut rx).await;
        assert!(closed.unwrap().is_err(), "the adopted task was aborted");
    }
}
