//! Upstream HTTP connections, pooled per (cluster, host): HTTP/1.1 connections are reused one
//! request at a time (back in the pool when the response body ends), HTTP/2 connections are
//! shared by concurrent requests. Idle connections older than the cluster's idle timeout are
//! dropped at checkout.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::Body;
use crate::config::cluster::HttpVersion;
use crate::upstream::breakers::{Breaker, ClusterLoad};
use crate::upstream::{ClusterRuntime, ConnectError, Host};

/// Idle HTTP/1.1 connections kept per host.
const MAX_IDLE_PER_HOST: usize = 64;
/// Envoy's default idle timeout of upstream connections.
const DEFAULT_IDLE: Duration = Duration::from_secs(3600);

/// A pool key: the cluster (by identity of its configuration: a changed cluster gets fresh
/// connections) and the host.
type Key = (usize, String, u16);
/// An idle HTTP/1.1 connection and since when.
type Idle = (http1::SendRequest<Body>, Instant);

#[derive(Default)]
pub struct Pool {
    http1: Mutex<HashMap<Key, Vec<Idle>>>,
    http2: Mutex<HashMap<Key, http2::SendRequest<Body>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP handshake with the upstream: {0}")]
    Handshake(hyper::Error),
    #[error("upstream reset: {0}")]
    Reset(hyper::Error),
    /// No connection could be had and the `max_pending_requests` breaker is open too.
    #[error("too many requests waiting for a connection (max_pending_requests)")]
    Overflow,
}

impl Pool {
    /// Sends `request` to `host` of `cluster`, over a pooled or new connection.
    pub async fn send(
        self: &Arc<Self>,
        cluster: &ClusterRuntime,
        host: &Host,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, SendError> {
        let key: Key = (
            Arc::as_ptr(&cluster.cluster) as usize,
            host.host.clone(),
            host.port,
        );
        let idle = cluster
            .cluster
            .protocol
            .idle_timeout
            .unwrap_or(DEFAULT_IDLE);
        if cluster.cluster.protocol.http == Some(HttpVersion::Http2) {
            let existing = self.http2.lock().get(&key).cloned();
            let mut sender = match existing {
                Some(s) if !s.is_closed() => s,
                _ => {
                    let (io, _) = cluster.connect_to(host).await?;
                    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                        .await
                        .map_err(SendError::Handshake)?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    self.http2.lock().insert(key, sender.clone());
                    sender
                }
            };
            let response = sender
                .send_request(request)
                .await
                .map_err(SendError::Reset)?;
            return Ok(response.map(box_incoming));
        }
        let mut sender = loop {
            let candidate = self.http1.lock().get_mut(&key).and_then(Vec::pop);
            match candidate {
                // Back in the pool as soon as its response body ended: the connection task
                // may not have caught up yet, so wait for it rather than drop the connection.
                Some((mut s, since)) if since.elapsed() < idle && !s.is_closed() => {
                    if s.ready().await.is_ok() {
                        break s;
                    }
                }
                Some(_) => {}
                None => {
                    let io = match cluster.connect_to(host).await {
                        Ok((io, _)) => io,
                        // At `max_connections`: wait as a pending request for a connection
                        // to come back or close, if `max_pending_requests` allows.
                        Err(ConnectError::Overflow(_)) => {
                            self.wait_pending(cluster, &key).await?;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let (sender, conn) = http1::handshake(TokioIo::new(io))
                        .await
                        .map_err(SendError::Handshake)?;
                    tokio::spawn(async move {
                        let _ = conn.with_upgrades().await;
                    });
                    break sender;
                }
            }
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(SendError::Reset)?;
        let pool = Arc::downgrade(self);
        let load = cluster.load.clone();
        Ok(response.map(|body| {
            Body::new(ReturnOnEnd {
                body,
                back: Some((sender, pool, key, load)),
            })
        }))
    }

    /// Sends an upgrade request (WebSocket) on a new HTTP/1.1 connection of its own: after a
    /// 101 the connection belongs to the upgraded stream, never to the pool.
    pub async fn send_upgrade(
        cluster: &ClusterRuntime,
        host: &Host,
        request: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, SendError> {
        let (io, _) = cluster.connect_to(host).await?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Handshake)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        sender.send_request(request).await.map_err(SendError::Reset)
    }

    fn give_back(&self, sender: http1::SendRequest<Body>, key: Key, load: &ClusterLoad) {
        {
            let mut idle = self.http1.lock();
            let list = idle.entry(key).or_default();
            if list.len() < MAX_IDLE_PER_HOST {
                list.push((sender, Instant::now()));
            }
        }
        load.freed.notify_waiters();
    }

    /// Waits, holding a pending-request slot, until a connection of the cluster is given back
    /// or closed; the caller then looks again. No slot: the breaker's overflow.
    async fn wait_pending(&self, cluster: &ClusterRuntime, key: &Key) -> Result<(), SendError> {
        let load = &cluster.load;
        let Some(_pending) = load.try_acquire(Breaker::Pending, &cluster.cluster.limits) else {
            cluster
                .metrics
                .overflow(&cluster.cluster.name, "max_pending_requests");
            return Err(SendError::Overflow);
        };
        let freed = load.freed.notified();
        tokio::pin!(freed);
        // Registered before looking, so a connection freed in between is not missed.
        freed.as_mut().enable();
        let idle_here = self.http1.lock().get(key).is_some_and(|l| !l.is_empty());
        let room = load.connections.load(std::sync::atomic::Ordering::Acquire)
            < cluster.cluster.limits.max_connections;
        if !idle_here && !room {
            freed.await;
        }
        Ok(())
    }
}

fn box_incoming(body: Incoming) -> Body {
    use http_body_util::BodyExt;
    body.map_err(|e| Box::new(e) as super::BoxError)
        .boxed_unsync()
}

/// A response body that returns its HTTP/1.1 connection to the pool once read to the end.
/// Where a connection goes back to: the pool (if still there), its key, and the cluster's
/// breakers to wake pending requests.
type GiveBack = (http1::SendRequest<Body>, Weak<Pool>, Key, Arc<ClusterLoad>);

struct ReturnOnEnd {
    body: Incoming,
    back: Option<GiveBack>,
}

impl ReturnOnEnd {
    fn give_back(&mut self) {
        if let Some((sender, pool, key, load)) = self.back.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.give_back(sender, key, &load);
        }
    }
}

impl http_body::Body for ReturnOnEnd {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            // The end: after the last frame (a server stops polling a body that says it has
            // ended), or when the body reports none left.
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled.map_err(|e| Box::new(e) as super::BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
