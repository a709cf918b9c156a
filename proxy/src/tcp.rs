//! The TCP proxy (Envoy's `tcp_proxy`): connects the downstream connection to an endpoint of
//! the chosen cluster and copies bytes both ways until either side closes or the connection
//! has been idle for the configured time. With `tunneling_config` the upstream is a CONNECT
//! stream over the cluster's connection (`tunnel.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::cluster::Discovery;
use crate::config::listener::TcpProxy;
use crate::runtime::Runtime;
use crate::telemetry::tcp::{Meter, TcpContext};
use crate::transport::Io;
use prometheus_client::metrics::counter::Counter;

/// Why the TCP proxy ended a connection with an error.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("no cluster {0:?}")]
    NoCluster(String),
    #[error(transparent)]
    Connect(#[from] crate::upstream::ConnectError),
    #[error("copying")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tunnel(#[from] crate::tunnel::TunnelError),
}

/// `destination`: where the downstream connection was going (its original destination on a
/// capture listener), for passthrough clusters.
/// `telemetry`: the connection's, when telemetry is on and the node is known.
pub async fn proxy<D: Io>(
    downstream: D,
    tcp: &TcpProxy,
    runtime: &Runtime,
    destination: SocketAddr,
    telemetry: Option<TcpContext>,
) -> Result<(), TcpError> {
    let name = pick_cluster(&tcp.clusters);
    let cluster = runtime
        .clusters
        .get(name)
        .ok_or_else(|| TcpError::NoCluster(name.to_owned()))?
        .clone();
    let facts = &cluster.cluster.telemetry;
    let refused = |reason| {
        if let Some(t) = &telemetry {
            t.refused(facts, reason);
        }
    };
    let connected = match cluster.cluster.discovery {
        Discovery::OriginalDst => cluster.connect_original(destination).await,
        _ => cluster.connect().await,
    };
    let (upstream, host, peer) = connected.inspect_err(|_| refused("upstream_connect"))?;
    let upstream: crate::transport::BoxedIo = match &tcp.tunnel {
        Some(authority) => match crate::tunnel::open(upstream, authority).await {
            Ok(stream) => Box::new(stream),
            Err(e) => {
                cluster.record(&host, crate::upstream::outlier::Outcome::GatewayError);
                refused("tunnel_refused");
                return Err(e.into());
            }
        },
        None => upstream,
    };
    cluster.record(&host, crate::upstream::outlier::Outcome::Success);
    // Open on the host until the copy ends or the connection's task is dropped.
    let _active = host.track_active();
    let meter = telemetry
        .map(|t| t.meter(&cluster.cluster.name, facts, peer))
        .unwrap_or_default();
    copy_with_idle_timeout(downstream, upstream, tcp.idle_timeout, &meter)
        .await
        .map_err(TcpError::from)
}

fn pick_cluster(clusters: &[(String, u32)]) -> &str {
    let i = crate::weighted::pick_random(clusters.iter().map(|(_, w)| u64::from(*w)))
        .unwrap_or(clusters.len().saturating_sub(1));
    clusters.get(i).map_or("", |(n, _)| n.as_str())
}

/// Copies both ways; stops when both directions are done, or when no byte moved for `idle`.
/// `a` is the downstream side: its reads count as received, `b`'s as sent (`meter`).
pub async fn copy_with_idle_timeout<A: Io, B: Io>(
    a: A,
    b: B,
    idle: Option<Duration>,
    meter: &Meter,
) -> std::io::Result<()> {
    let moved = Arc::new(AtomicU64::new(0));
    let mut a = Counted {
        inner: a,
        moved: moved.clone(),
        bytes: meter.received.clone(),
    };
    let mut b = Counted {
        inner: b,
        moved: moved.clone(),
        bytes: meter.sent.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    let Some(idle) = idle else {
        return copy.await.map(drop);
    };
    let watchdog = async {
        let mut last = 0;
        loop {
            tokio::time::sleep(idle).await;
            let now = moved.load(Ordering::Relaxed);
            if now == last {
                return;
            }
            last = now;
        }
    };
    tokio::select! {
        result = copy => result.map(drop),
        () = watchdog => Ok(()),
    }
}

/// Counts the bytes read through a stream (for the idle timeout, and into a metric).
struct Counted<S> {
    inner: S,
    moved: Arc<AtomicU64>,
    bytes: Option<Counter>,
}

impl<S: Io> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.moved.fetch_add(n as u64, Ordering::Relaxed);
        if n > 0
            && let Some(bytes) = &self.bytes
        {
            bytes.inc_by(n as u64);
        }
        result
    }
}

impl<S: Io> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::upstream::testing;

    /// The downstream connection's task dropped mid-copy (a reset, a listener going away):
    /// the host must not stay busy for least-request balancing.
    #[tokio::test]
    async fn a_cancelled_proxy_gives_its_active_count_back() {
        let (port, mut accepted) = testing::silent_upstream().await;
        let (runtime, host) = testing::backend(port);
        let tcp = TcpProxy {
            stat_prefix: "test".to_owned(),
            clusters: vec![("backend".to_owned(), 1)],
            idle_timeout: None,
            tunnel: None,
        };
        let (mut client, downstream) = tokio::io::duplex(64);
        let task = tokio::spawn({
            let runtime = runtime.clone();
            let destination: SocketAddr = ([127, 0, 0, 1], port).into();
            async move { proxy(downstream, &tcp, &runtime, destination, None).await }
        });
        // Bytes made it through: the proxy is copying, the host counted as busy.
        client.write_all(b"ping").await.unwrap();
        let mut upstream = accepted.recv().await.unwrap();
        let mut bytes = [0; 4];
        upstream.read_exact(&mut bytes).await.unwrap();
        assert_eq!(&bytes, b"ping");
        assert_eq!(host.active.load(Ordering::Relaxed), 1);
        testing::abort_gives_the_count_back(task, &host).await;
    }
}
