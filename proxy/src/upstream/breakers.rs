//! A cluster's circuit breakers (Envoy's thresholds of the default priority): open
//! connections, requests waiting for a connection, open requests, and retries in flight
//! (a fixed count, or a budget relative to open requests). Each is a counter shared by every
//! configuration of the cluster; a slot is taken before the work and given back when its
//! guard drops, so a limit can never leak.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::config::cluster::Limits;
use crate::transport::BoxedIo;

/// The counters of one cluster.
#[derive(Debug, Default)]
pub struct ClusterLoad {
    pub connections: AtomicU32,
    pub pending: AtomicU32,
    pub requests: AtomicU32,
    pub retries: AtomicU32,
    /// Woken when a connection closes or goes back to the pool: pending requests look again.
    pub freed: Notify,
}

/// Which counter a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    Connections,
    Pending,
    Requests,
    Retries,
}

/// One unit of a counter, given back on drop.
#[derive(Debug)]
pub struct Slot {
    load: Arc<ClusterLoad>,
    breaker: Breaker,
}

impl ClusterLoad {
    fn counter(&self, breaker: Breaker) -> &AtomicU32 {
        match breaker {
            Breaker::Connections => &self.connections,
            Breaker::Pending => &self.pending,
            Breaker::Requests => &self.requests,
            Breaker::Retries => &self.retries,
        }
    }

    /// The limit of `breaker` under `limits` now (a retry budget depends on open requests).
    pub fn limit(&self, breaker: Breaker, limits: &Limits) -> u32 {
        match breaker {
            Breaker::Connections => limits.max_connections,
            Breaker::Pending => limits.max_pending_requests,
            Breaker::Requests => limits.max_requests,
            Breaker::Retries => match limits.retry_budget {
                None => limits.max_retries,
                Some(budget) => {
                    let open = f64::from(self.requests.load(Ordering::Relaxed));
                    // Truncation is Envoy's rounding of the budget.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let share = (open * budget.percent / 100.0) as u32;
                    share.max(budget.min_concurrency)
                }
            },
        }
    }

    /// Takes a slot of `breaker` if it is under its limit.
    pub fn try_acquire(self: &Arc<Self>, breaker: Breaker, limits: &Limits) -> Option<Slot> {
        let limit = self.limit(breaker, limits);
        let counter = self.counter(breaker);
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Slot {
            load: self.clone(),
            breaker,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.load
            .counter(self.breaker)
            .fetch_sub(1, Ordering::AcqRel);
        if self.breaker == Breaker::Connections {
            self.load.freed.notify_waiters();
        }
    }
}

/// An upstream connection holding its `Connections` slot until it closes.
pub struct SlotIo {
    pub inner: BoxedIo,
    pub slot: Slot,
}

impl std::fmt::Debug for SlotIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotIo").finish_non_exhaustive()
    }
}

impl AsyncRead for SlotIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SlotIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cluster::RetryBudget;

    #[test]
    fn slots_stop_at_the_limit_and_come_back_on_drop() {
        let load = Arc::new(ClusterLoad::default());
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let a = load.try_acquire(Breaker::Connections, &limits).unwrap();
        let _b = load.try_acquire(Breaker::Connections, &limits).unwrap();
        assert!(load.try_acquire(Breaker::Connections, &limits).is_none());
        drop(a);
        assert!(load.try_acquire(Breaker::Connections, &limits).is_some());
        assert_eq!(load.connections.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_retry_budget_follows_open_requests_with_a_floor() {
        let load = Arc::new(ClusterLoad::default());
        let limits = Limits {
            retry_budget: Some(RetryBudget {
                percent: 20.0,
                min_concurrency: 3,
            }),
            ..Limits::default()
        };
        assert_eq!(load.limit(Breaker::Retries, &limits), 3, "the floor");
        load.requests.store(100, Ordering::Relaxed);
        assert_eq!(load.limit(Breaker::Retries, &limits), 20, "20 % of 100");
        let fixed = Limits::default();
        assert_eq!(load.limit(Breaker::Retries, &fixed), 3, "max_retries");
    }
}
