//! Graceful drain: on SIGTERM the listeners stop accepting, HTTP connections are asked to
//! finish (HTTP/2 GOAWAY, HTTP/1.1 closes after the response in progress), and the process
//! waits for open connections up to a deadline. Tunnels (CONNECT, upgrades), which have no
//! request boundary to stop at, are waited for too and end when the deadline passes
//! ([`Watch::until_ended`]).

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Starts a drain and waits for it.
#[derive(Debug)]
pub struct Trigger {
    signal: watch::Sender<bool>,
    open: mpsc::Receiver<()>,
}

/// Held by every listener and connection: says when to drain; while alive, it counts as an
/// open connection.
#[derive(Debug, Clone)]
pub struct Watch {
    signal: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
}

pub fn new() -> (Trigger, Watch) {
    let (signal, signal_rx) = watch::channel(false);
    let (open_tx, open) = mpsc::channel(1);
    (
        Trigger { signal, open },
        Watch {
            signal: signal_rx,
            _open: open_tx,
        },
    )
}

impl Watch {
    /// Resolves once a drain has started.
    pub async fn signaled(&self) {
        let mut signal = self.signal.clone();
        let _ = signal.wait_for(|draining| *draining).await;
    }

    /// Resolves once the drain is over: its deadline passed (the [`Trigger`] is gone with it),
    /// or the [`Trigger`] was dropped without a drain.
    pub async fn ended(&self) {
        let mut signal = self.signal.clone();
        while signal.changed().await.is_ok() {}
    }

    /// Runs `work` until it finishes (`Some` of its output) or the drain is over (`None`,
    /// `work` dropped): for work with no request boundary to stop at, such as a tunnel.
    pub async fn until_ended<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            output = work => Some(output),
            () = self.ended() => None,
        }
    }
}

impl Trigger {
    /// Signals the drain and waits until every [`Watch`] is dropped or `deadline` passes; says
    /// whether everything finished in time.
    pub async fn drain(mut self, deadline: Duration) -> bool {
        let _ = self.signal.send(true);
        tokio::time::timeout(deadline, async {
            while self.open.recv().await.is_some() {}
        })
        .await
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_open_work_up_to_the_deadline() {
        let (trigger, watch) = new();
        let worker = watch.clone();
        drop(watch);
        tokio::spawn(async move {
            worker.signaled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(worker);
        });
        assert!(
            trigger.drain(Duration::from_secs(5)).await,
            "finished in time"
        );

        let (trigger, watch) = new();
        let stuck = watch.clone();
        drop(watch);
        assert!(
            !trigger.drain(Duration::from_secs(5)).await,
            "gave up at the deadline"
        );
        drop(stuck);
    }

    #[tokio::test(start_paused = true)]
    async fn work_held_past_the_deadline_ends_with_the_drain() {
        let (trigger, watch) = new();
        let tunnel = tokio::spawn(async move {
            // Work that would never finish by itself, holding the `Watch`.
            watch.until_ended(std::future::pending::<()>()).await
        });
        let started = tokio::time::Instant::now();
        assert!(
            !trigger.drain(Duration::from_secs(5)).await,
            "the drain waited for the work"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(
            tunnel.await.unwrap(),
            None,
            "the work ended at the deadline"
        );

        // Work that finishes by itself gives its output.
        let (_trigger, watch) = new();
        assert_eq!(watch.until_ended(async { 7 }).await, Some(7));
    }
}
