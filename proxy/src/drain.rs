//! Graceful drain: on SIGTERM the listeners stop accepting, HTTP connections are asked to
//! finish (HTTP/2 GOAWAY, HTTP/1.1 closes after the response in progress), and the process
//! waits for open connections up to a deadline.

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
}
