//! Upstream HTTP connections, pooled per (cluster, host): HTTP/1.1 connections are reused one
//! request at a time (back in the pool when the response body ends), HTTP/2 connections are
//! shared by concurrent requests. Idle connections older than the cluster's idle timeout are
//! dropped at checkout.
//!
//! Clusters are told apart by value ([`ClusterKey`]: the name and a digest of the transport
//! settings), never by where their configuration happens to be allocated: two clusters share
//! connections only when those connections are equally valid for both. Each configuration
//! change prunes the pool to the clusters and hosts of the new runtime ([`Pool::prune`]);
//! only those clusters pool connections, so a removed or changed cluster's connections close
//! instead of living for the life of the process.

use std::collections::{HashMap, HashSet};
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
use crate::telemetry::peer_metadata::{self, MetadataHeaders, UpstreamExchange};
use crate::upstream::breakers::{Breaker, ClusterLoad};
use crate::upstream::{ClusterKey, ClusterRuntime, ConnectError, Host, UpstreamPeer};

/// Idle HTTP/1.1 connections kept per host.
const MAX_IDLE_PER_HOST: usize = 64;
/// Envoy's default idle timeout of upstream connections.
const DEFAULT_IDLE: Duration = Duration::from_secs(3600);

/// A host of a cluster.
type HostKey = (String, u16);
/// Where a connection belongs: its cluster (by value) and host.
type Key = (ClusterKey, HostKey);
/// An idle HTTP/1.1 connection, since when, and who its peer proved to be.
type Idle = (http1::SendRequest<Body>, Instant, PooledPeer);
/// A shared HTTP/2 connection and who its peer proved to be.
type Shared = (http2::SendRequest<Body>, PooledPeer);
/// Connections by cluster, then host. Only the clusters of the current runtime have an
/// entry: a connection of any other cluster is not pooled. Each request looks its cluster and
/// host up twice (to take a connection and to give it back): a fast hash, not SipHash (the
/// keys come from the configuration, not from requests).
type ByCluster<C> = HashMap<ClusterKey, HashMap<HostKey, C, FastHash>, FastHash>;
type FastHash = foldhash::fast::RandomState;

#[derive(Default)]
pub struct Pool {
    http1: Mutex<ByCluster<Vec<Idle>>>,
    /// `None`: a live host of a live cluster with no shared connection yet.
    http2: Mutex<ByCluster<Option<Shared>>>,
    /// Mirrored requests in flight (their answers are awaited in the background).
    pub mirrors: MirrorSlots,
}

/// At most this many mirrored requests in flight per proxy; beyond, a request is not
/// mirrored (a slow mirror must never make the proxy pile up work).
pub const MAX_MIRRORS: usize = 1024;

/// The slots of [`MAX_MIRRORS`].
#[derive(Debug, Clone)]
pub struct MirrorSlots(pub Arc<tokio::sync::Semaphore>);

impl Default for MirrorSlots {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(MAX_MIRRORS)))
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

/// Why a request could not be sent upstream. The messages name hyper's error (logs print
/// them with `%`); it is the source too, for its own causes.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP handshake with the upstream: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("upstream reset: {0}")]
    Reset(#[source] hyper::Error),
    /// No connection could be had and the `max_pending_requests` breaker is open too.
    #[error("too many requests waiting for a connection (max_pending_requests)")]
    Overflow,
}

impl Pool {
    /// Sends `request` to `host` of `cluster`, over a pooled or new connection, with this
    /// side's `metadata` headers unless that connection's callee keeps them already.
    pub async fn send(
        self: &Arc<Self>,
        cluster: &ClusterRuntime,
        host: &Host,
        mut request: http::Request<Body>,
        metadata: Option<&MetadataHeaders>,
    ) -> Result<http::Response<Body>, SendError> {
        let key: Key = (cluster.key.clone(), (host.host.clone(), host.port));
        let idle = cluster
            .cluster
            .protocol
            .idle_timeout
            .unwrap_or(DEFAULT_IDLE);
        if cluster.cluster.protocol.http == Some(HttpVersion::Http2) {
            let existing = self
                .http2
                .lock()
                .get(&key.0)
                .and_then(|hosts| hosts.get(&key.1).cloned().flatten());
            let (mut sender, peer) = match existing {
                Some((s, peer)) if !s.is_closed() => (s, peer),
                _ => {
                    let (io, peer) = cluster.connect_to(host).await?;
                    let peer = PooledPeer::new(peer);
                    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                        .await
                        .map_err(SendError::Handshake)?;
                    // Detached: the connection ends when its last sender is dropped (pruned
                    // from the pool, or the pool gone) and its requests are done; those
                    // requests belong to downstream connections that hold a drain `Watch`.
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    // Shared from now on, unless the cluster or the host left the runtime
                    // meanwhile (a pruned host never comes back into the pool).
                    if let Some(slot) = self
                        .http2
                        .lock()
                        .get_mut(&key.0)
                        .and_then(|hosts| hosts.get_mut(&key.1))
                    {
                        *slot = Some((sender.clone(), peer.clone()));
                    }
                    (sender, peer)
                }
            };
            peer.add_metadata(&mut request, metadata);
            let response = sender
                .send_request(request)
                .await
                .map_err(SendError::Reset)?;
            return Ok(with_peer(response.map(box_incoming), peer));
        }
        let (mut sender, peer) = loop {
            let candidate = self
                .http1
                .lock()
                .get_mut(&key.0)
                .and_then(|hosts| hosts.get_mut(&key.1))
                .and_then(Vec::pop);
            match candidate {
                // Back in the pool as soon as its response body ended: the connection task
                // may not have caught up yet, so wait for it rather than drop the connection.
                Some((mut s, since, peer)) if since.elapsed() < idle && !s.is_closed() => {
                    if s.ready().await.is_ok() {
                        break (s, peer);
                    }
                }
                Some(_) => {}
                None => {
                    let (io, peer) = match cluster.connect_to(host).await {
                        Ok(connected) => connected,
                        // At `max_connections`: wait as a pending request for a connection
                        // to come back or close, if `max_pending_requests` allows.
                        Err(ConnectError::Overflow(_)) => {
                            self.wait_pending(cluster, &key).await?;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let peer = PooledPeer::new(peer);
                    let (sender, conn) = http1::handshake(TokioIo::new(io))
                        .await
                        .map_err(SendError::Handshake)?;
                    // Detached, as above: it ends with its sender (dropped by the pool, or
                    // with the response body that would have returned it).
                    tokio::spawn(async move {
                        let _ = conn.with_upgrades().await;
                    });
                    break (sender, peer);
                }
            }
        };
        peer.add_metadata(&mut request, metadata);
        let response = sender
            .send_request(request)
            .await
            .map_err(SendError::Reset)?;
        let pool = Arc::downgrade(self);
        let load = cluster.load.clone();
        let back = (sender, pool, key, load, peer.clone());
        let response = response.map(|body| {
            Body::new(ReturnOnEnd {
                body,
                back: Some(back),
            })
        });
        Ok(with_peer(response, peer))
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
        // Detached: after a 101 the connection is the upgraded stream's (`upgrade.rs`), else
        // it ends with `sender`.
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        sender.send_request(request).await.map_err(SendError::Reset)
    }

    /// Keeps only the connections of `live` clusters (by key) to their hosts, and pools
    /// connections of those clusters only from now on. Called with each new runtime before
    /// it is published: idle HTTP/1.1 connections of removed or changed clusters (or to
    /// removed hosts) are dropped, and so close; shared HTTP/2 connections leave the pool,
    /// and close once the requests still running on them are done. Requests of an older
    /// runtime finish on their connections, which are then not pooled again.
    pub fn prune<'a>(&self, live: impl IntoIterator<Item = &'a ClusterRuntime>) {
        let mut hosts: HashMap<&ClusterKey, HashSet<(&str, u16)>> = HashMap::new();
        for cluster in live {
            hosts.entry(&cluster.key).or_default().extend(
                cluster
                    .priorities
                    .iter()
                    .flatten()
                    .map(|h| (h.host.as_str(), h.port)),
            );
        }
        // Every live host of every live cluster gets an entry, and only those: a connection
        // is pooled only where an entry is, so one that an older runtime gives back late to a
        // host or cluster that has gone is dropped.
        fn keep<C: Default>(
            pool: &mut ByCluster<C>,
            hosts: &HashMap<&ClusterKey, HashSet<(&str, u16)>>,
        ) {
            pool.retain(|key, _| hosts.contains_key(key));
            for (&key, live) in hosts {
                let entries = pool.entry(key.clone()).or_default();
                entries.retain(|(host, port), _| live.contains(&(host.as_str(), *port)));
                for &(host, port) in live {
                    entries.entry((host.to_owned(), port)).or_default();
                }
            }
        }
        keep(&mut self.http1.lock(), &hosts);
        keep(&mut self.http2.lock(), &hosts);
    }

    fn give_back(
        &self,
        sender: http1::SendRequest<Body>,
        key: Key,
        load: &ClusterLoad,
        peer: PooledPeer,
    ) {
        {
            let mut idle = self.http1.lock();
            // A cluster or host the current runtime no longer has: the connection is dropped.
            if let Some(list) = idle.get_mut(&key.0).and_then(|hosts| hosts.get_mut(&key.1))
                && list.len() < MAX_IDLE_PER_HOST
            {
                list.push((sender, Instant::now(), peer));
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
        let idle_here = self
            .http1
            .lock()
            .get(&key.0)
            .and_then(|hosts| hosts.get(&key.1))
            .is_some_and(|l| !l.is_empty());
        let room = load.connections.load(std::sync::atomic::Ordering::Acquire)
            < cluster.cluster.limits.max_connections;
        if !idle_here && !room {
            freed.await;
        }
        Ok(())
    }

    /// Whether connections of `cluster` are pooled.
    #[cfg(test)]
    fn holds(&self, cluster: &ClusterRuntime) -> bool {
        let http1 = self
            .http1
            .lock()
            .get(&cluster.key)
            .is_some_and(|hosts| hosts.values().any(|l| !l.is_empty()));
        http1
            || self
                .http2
                .lock()
                .get(&cluster.key)
                .is_some_and(|hosts| hosts.values().any(Option::is_some))
    }

    /// The cluster keys the pool has an entry for.
    #[cfg(test)]
    fn keys(&self) -> HashSet<ClusterKey> {
        let mut keys: HashSet<ClusterKey> = self.http1.lock().keys().cloned().collect();
        keys.extend(self.http2.lock().keys().cloned());
        keys
    }
}

/// The verified upstream of a response, for telemetry: its SPIFFE ID and its connection's
/// metadata exchange.
#[derive(Debug, Clone)]
pub struct VerifiedUpstream {
    pub id: Arc<str>,
    pub exchange: Arc<UpstreamExchange>,
}

/// Who a pooled connection's peer proved to be, and what the metadata exchange on that
/// connection settled.
#[derive(Debug, Clone)]
struct PooledPeer {
    id: UpstreamPeer,
    exchange: Arc<UpstreamExchange>,
}

impl PooledPeer {
    fn new(id: UpstreamPeer) -> Self {
        Self {
            id,
            exchange: Arc::default(),
        }
    }

    /// This side's metadata, for a verified peer that does not keep it yet.
    fn add_metadata(&self, request: &mut http::Request<Body>, metadata: Option<&MetadataHeaders>) {
        if let Some((metadata, id)) = metadata
            && self.id.is_some()
            && !self.exchange.keeps(metadata)
        {
            let headers = request.headers_mut();
            headers.insert(peer_metadata::HEADER_NAME, metadata.clone());
            headers.insert(peer_metadata::ID_HEADER_NAME, id.clone());
        }
    }
}

fn with_peer(mut response: http::Response<Body>, peer: PooledPeer) -> http::Response<Body> {
    if let Some(id) = peer.id {
        response.extensions_mut().insert(VerifiedUpstream {
            id,
            exchange: peer.exchange,
        });
    }
    response
}

fn box_incoming(body: Incoming) -> Body {
    use http_body_util::BodyExt;
    body.map_err(|e| Box::new(e) as super::BoxError)
        .boxed_unsync()
}

/// A response body that returns its HTTP/1.1 connection to the pool once read to the end.
/// Where a connection goes back to: the pool (if still there), its key, and the cluster's
/// breakers to wake pending requests.
type GiveBack = (
    http1::SendRequest<Body>,
    Weak<Pool>,
    Key,
    Arc<ClusterLoad>,
    PooledPeer,
);

struct ReturnOnEnd {
    body: Incoming,
    back: Option<GiveBack>,
}

impl ReturnOnEnd {
    fn give_back(&mut self) {
        if let Some((sender, pool, key, load, peer)) = self.back.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.give_back(sender, key, &load, peer);
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use http_body_util::BodyExt;

    use super::*;
    use crate::config::ProxyConfig;
    use crate::config::cluster::Cluster;
    use crate::config::tls::{TlsContext, UpstreamTls};
    use crate::runtime::Runtime;
    use crate::upstream::testing;

    /// This side's metadata goes to a verified upstream until it says it keeps that very
    /// value; never to an unverified one; again when this side's metadata changes.
    #[test]
    fn metadata_goes_until_the_upstream_keeps_it() {
        let ours = (
            http::HeaderValue::from_static("bWV0YWRhdGE="),
            http::HeaderValue::from_static("client.shop"),
        );
        let sent = |peer: &PooledPeer, metadata: &MetadataHeaders| {
            let mut request = http::Request::new(super::super::full(Bytes::new()));
            peer.add_metadata(&mut request, Some(metadata));
            let headers = request.headers();
            let both = headers.contains_key(peer_metadata::HEADER_NAME)
                && headers.contains_key(peer_metadata::ID_HEADER_NAME);
            assert_eq!(both, headers.contains_key(peer_metadata::HEADER_NAME));
            both
        };
        assert!(!sent(&PooledPeer::new(None), &ours), "unverified");
        let verified = PooledPeer::new(Some(Arc::from("spiffe://green.local/ns/b/sa/r")));
        assert!(sent(&verified, &ours));
        verified.exchange.set_kept(ours.0.clone());
        assert!(!sent(&verified, &ours), "kept");
        let changed = (
            http::HeaderValue::from_static("Y2hhbmdlZA=="),
            ours.1.clone(),
        );
        assert!(sent(&verified, &changed), "a changed value goes again");
    }

    fn clusters(runtime: &Runtime) -> impl Iterator<Item = &ClusterRuntime> {
        runtime.clusters.values().map(AsRef::as_ref)
    }

    /// TLS origination verified against the bundle `roots`, with this SNI.
    fn tls(sni: &str) -> Option<UpstreamTls> {
        Some(UpstreamTls {
            context: TlsContext {
                certificate: None,
                validation: Some("roots".to_owned()),
                peer_ids: Vec::new(),
                alpn: Vec::new(),
            },
            sni: sni.to_owned(),
            external: None,
        })
    }

    /// A GET through the pool, its body read to the end (an HTTP/1.1 connection goes back).
    async fn get(pool: &Arc<Pool>, cluster: &ClusterRuntime) -> Result<String, SendError> {
        let host = cluster.priorities[0][0].clone();
        let uri = if cluster.cluster.protocol.http == Some(HttpVersion::Http2) {
            format!("http://{}/", cluster.cluster.name)
        } else {
            "/".to_owned()
        };
        let request = http::Request::get(uri)
            .body(super::super::full(Bytes::new()))
            .unwrap();
        let response = pool.send(cluster, &host, request, None).await?;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_cluster_of_the_same_name_with_other_tls_settings_never_reuses_connections() {
        let (port, _open, _accepted) = testing::http_upstream().await;
        let pool = Arc::new(Pool::default());
        let mut config = Arc::new(testing::config([testing::cluster("backend", port)]));
        let plaintext = testing::runtime(&config);
        let old_key = plaintext.clusters["backend"].key.clone();
        pool.prune(clusters(&plaintext));
        assert_eq!(
            get(&pool, &plaintext.clusters["backend"]).await.unwrap(),
            "ok"
        );
        assert!(pool.holds(&plaintext.clusters["backend"]));
        drop(plaintext);

        // The same name, now originating TLS, in the very allocation the old cluster had:
        // what an allocator reusing a freed address does to a pointer-keyed pool.
        let cluster = Arc::get_mut(
            Arc::get_mut(&mut config)
                .unwrap()
                .clusters
                .get_mut("backend")
                .unwrap(),
        )
        .unwrap();
        cluster.tls = tls("backend.example");
        let with_tls = testing::runtime(&config);
        // The plaintext cluster is still live too (equal, allocated elsewhere), so pruning
        // keeps its connection: only the keys keep the two apart.
        let plaintext = testing::runtime_of([testing::cluster("backend", port)]);
        assert_eq!(plaintext.clusters["backend"].key, old_key);
        assert_ne!(with_tls.clusters["backend"].key, old_key);
        pool.prune(clusters(&plaintext).chain(clusters(&with_tls)));
        assert!(pool.holds(&plaintext.clusters["backend"]));
        // Its own connection, whose TLS cannot be set up (the bundle never came): the
        // plaintext connection in the pool would have answered.
        let err = get(&pool, &with_tls.clusters["backend"])
            .await
            .expect_err("a plaintext connection was reused for a TLS cluster");
        assert!(
            matches!(err, SendError::Connect(ConnectError::Tls { .. })),
            "{err}"
        );
    }

    #[tokio::test]
    async fn equal_clusters_share_connections_whatever_their_allocation() {
        let (port, _open, accepted) = testing::http_upstream().await;
        let pool = Arc::new(Pool::default());
        let first = testing::runtime_of([testing::cluster("b", port)]);
        let second = testing::runtime_of([testing::cluster("b", port)]);
        assert_eq!(first.clusters["b"].key, second.clusters["b"].key);
        pool.prune(clusters(&second));
        assert_eq!(get(&pool, &first.clusters["b"]).await.unwrap(), "ok");
        assert_eq!(get(&pool, &second.clusters["b"]).await.unwrap(), "ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn the_key_follows_every_transport_setting() {
        let base = testing::cluster("b", 80);
        let key = |c: &Cluster, config: &mut ProxyConfig| {
            config.clusters.insert(c.name.clone(), Arc::new(c.clone()));
            let runtime = testing::runtime(&Arc::new(config.clone()));
            runtime.clusters["b"].key.clone()
        };
        let mut config = ProxyConfig::default();
        let plain = key(&base, &mut config);
        let mut variants = vec![plain.clone()];
        let mut c = base.clone();
        c.protocol.http = Some(HttpVersion::Http2);
        variants.push(key(&c, &mut config));
        c.tls = tls("b.example");
        let with_tls = key(&c, &mut config);
        variants.push(with_tls.clone());
        c.tls = tls("other.example");
        variants.push(key(&c, &mut config));
        let mut t = tls("b.example").unwrap();
        t.context.alpn = vec!["h2".to_owned()];
        c.tls = Some(t.clone());
        variants.push(key(&c, &mut config));
        t.context.peer_ids = vec!["spiffe://td/ns/a/sa/b".to_owned()];
        c.tls = Some(t.clone());
        variants.push(key(&c, &mut config));
        t.context.certificate = Some("default".to_owned());
        c.tls = Some(t.clone());
        let before_secret = key(&c, &mut config);
        variants.push(before_secret.clone());
        // The secret's content, not only its name: the bundle arriving changes the key.
        config.secrets.insert(
            "roots".to_owned(),
            Arc::new(crate::config::secret::Secret::TrustBundles(Vec::new())),
        );
        variants.push(key(&c, &mut config));
        let distinct: HashSet<_> = variants.iter().collect();
        assert_eq!(distinct.len(), variants.len(), "{variants:?}");
        // Settings that do not change a connection do not change the key.
        let mut c = base.clone();
        c.connect_timeout = Duration::from_secs(1);
        c.limits.max_connections = 1;
        assert_eq!(key(&c, &mut config), plain);
    }

    #[tokio::test]
    async fn a_config_change_drops_the_connections_of_replaced_and_removed_clusters() {
        let (port, mut open, _accepted) = testing::http_upstream().await;
        let pool = Arc::new(Pool::default());
        let mut h2 = testing::cluster("changed", port);
        h2.protocol.http = Some(HttpVersion::Http2);
        let first = Arc::new(testing::config([
            testing::cluster("kept", port),
            testing::cluster("removed", port),
            h2.clone(),
        ]));
        let before = testing::runtime(&first);
        pool.prune(clusters(&before));
        for name in ["kept", "removed", "changed"] {
            assert_eq!(get(&pool, &before.clusters[name]).await.unwrap(), "ok");
            assert!(pool.holds(&before.clusters[name]), "{name}");
        }

        let mut changed = h2;
        changed.tls = tls("changed.example");
        let second = Arc::new(testing::config([testing::cluster("kept", port), changed]));
        let after = testing::runtime(&second);
        pool.prune(clusters(&after));

        assert!(
            pool.holds(&before.clusters["kept"]),
            "an unchanged cluster keeps its connections"
        );
        assert!(!pool.holds(&before.clusters["removed"]), "removed");
        assert!(!pool.holds(&before.clusters["changed"]), "changed");
        let live: HashSet<ClusterKey> = clusters(&after).map(|c| c.key.clone()).collect();
        assert_eq!(pool.keys(), live, "no entry under an old key");
        // Closed for real: the upstream sees only the kept cluster's connection open.
        open_becomes(&mut open, 1, "the dropped connections close").await;
    }

    /// Waits (up to 10 s) until the upstream has `n` connections open.
    async fn open_becomes(open: &mut tokio::sync::watch::Receiver<usize>, n: usize, what: &str) {
        tokio::time::timeout(Duration::from_secs(10), open.wait_for(|open| *open == n))
            .await
            .expect(what)
            .unwrap();
    }

    /// Cluster `b` on one upstream (`before`, the pool pruned to it), then moved by EDS to
    /// another (`after`: same settings, so the same key); and the connections open to the
    /// first upstream.
    async fn moved_endpoint() -> (
        Arc<Pool>,
        Runtime,
        Runtime,
        tokio::sync::watch::Receiver<usize>,
    ) {
        let (gone, gone_open, _) = testing::http_upstream().await;
        let (stays, _, _) = testing::http_upstream().await;
        let pool = Arc::new(Pool::default());
        let before = testing::runtime_of([testing::cluster("b", gone)]);
        pool.prune(clusters(&before));
        let after = testing::runtime_of([testing::cluster("b", stays)]);
        assert_eq!(before.clusters["b"].key, after.clusters["b"].key);
        (pool, before, after, gone_open)
    }

    #[tokio::test]
    async fn an_endpoint_removed_from_a_cluster_loses_its_pooled_connections() {
        let (pool, before, after, mut gone_open) = moved_endpoint().await;
        assert_eq!(get(&pool, &before.clusters["b"]).await.unwrap(), "ok");
        pool.prune(clusters(&after));
        assert!(!pool.holds(&after.clusters["b"]));
        open_becomes(&mut gone_open, 0, "the dropped connection closes").await;
    }

    /// A request of the older runtime that ends after the change gives its connection back to
    /// a host that is gone: the pool must not take it (it would never be checked out again).
    #[tokio::test]
    async fn a_connection_given_back_after_its_host_was_pruned_is_dropped() {
        let (pool, before, after, mut gone_open) = moved_endpoint().await;
        let cluster = &before.clusters["b"];
        let host = cluster.priorities[0][0].clone();
        let request = http::Request::get("/")
            .body(super::super::full(Bytes::new()))
            .unwrap();
        // The response head is in; its body is not read yet.
        let response = pool.send(cluster, &host, request, None).await.unwrap();
        pool.prune(clusters(&after));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        assert!(
            !pool.holds(&after.clusters["b"]),
            "the late connection was pooled"
        );
        open_becomes(&mut gone_open, 0, "the late connection closes").await;
    }
}
