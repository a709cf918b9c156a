//! Listeners: binding what LDS says, accepting, choosing a filter chain (after reading the
//! ClientHello when the TLS inspector is on), terminating TLS with the peer verified as a
//! SPIFFE identity, network RBAC, then the chain's terminal filter.
//!
//! The manager reconciles the bound sockets with each new configuration: new listeners are
//! bound, removed ones stop accepting (their open connections finish on their own), and a
//! listener whose address is unchanged keeps its socket and takes the new configuration at the
//! next connection.

pub mod chain;
pub mod client_hello;
pub mod error;
pub mod original_dst;
pub mod rewind;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use self::chain::ConnectionFacts;
use self::client_hello::{Inspect, MAX_HELLO_BYTES, inspect};
use self::error::{ConnectionError, ErrorChain, InspectorError};
use self::rewind::Rewind;
use crate::authz::{self, Decision, Subject};
use crate::config::ProxyConfig;
use crate::config::listener::Terminal;
use crate::config::secret::Secret;
use crate::drain;
use crate::http::pool::Pool;
use crate::http::{Connection, TlsPeer};
use crate::metrics::{ListenerLabels, Metrics};
use crate::runtime::{Runtime, Settings};
use crate::upstream::outlier::HealthRegistry;
use sha2::{Digest, Sha256};

/// The data-plane listeners bound now, by name: the address each accepts on (its local
/// address, so a configured port 0 reads as the port the kernel picked).
pub type BoundListeners = BTreeMap<String, SocketAddr>;

/// Keeps the bound listeners in line with the configuration, publishing each runtime on
/// `runtime_tx` and the bound addresses on `addresses`; runs until a drain starts (the accept
/// loops stop accepting and end) or `config` closes (they are stopped). The accept loops are
/// this task's own: none outlives it.
pub async fn run(
    mut config: watch::Receiver<Arc<ProxyConfig>>,
    runtime_tx: watch::Sender<Arc<Runtime>>,
    addresses: watch::Sender<BoundListeners>,
    drain: drain::Watch,
    metrics: Arc<Metrics>,
    settings: Settings,
) {
    let runtime_rx = runtime_tx.subscribe();
    let pool = Arc::new(Pool::default());
    let health = HealthRegistry::default();
    let mut accepting: JoinSet<()> = JoinSet::new();
    // By name: the configured address, the one bound, and its accept loop.
    let mut bound: HashMap<String, (SocketAddr, SocketAddr, AbortHandle)> = HashMap::new();
    let draining = loop {
        let current = config.borrow_and_update().clone();
        let runtime = Runtime::build(current.clone(), &health, &metrics, settings);
        // Before any request can use it: removed or changed clusters' pooled connections go.
        pool.prune(runtime.clusters.values().map(AsRef::as_ref));
        runtime_tx.send_replace(Arc::new(runtime));
        bound.retain(|name, (address, _, task)| {
            let keep = current
                .listeners
                .get(name)
                .is_some_and(|l| l.address == *address);
            if !keep {
                tracing::info!(listener = name, %address, "listener removed");
                task.abort();
            }
            keep
        });
        // The removed listeners' loops, aborted above.
        while accepting.try_join_next().is_some() {}
        for (name, listener) in &current.listeners {
            if bound.contains_key(name) {
                continue;
            }
            match bind(listener.address) {
                Ok(socket) => {
                    let local = socket.local_addr().unwrap_or(listener.address);
                    tracing::info!(listener = name, address = %local, "listening");
                    let task = accepting.spawn(accept_loop(
                        name.clone(),
                        socket,
                        runtime_rx.clone(),
                        pool.clone(),
                        drain.clone(),
                    ));
                    bound.insert(name.clone(), (listener.address, local, task));
                }
                // Retried at the next configuration change, as Envoy keeps it warming.
                Err(e) => {
                    tracing::warn!(listener = name, address = %listener.address, error = %e, "cannot bind")
                }
            }
        }
        addresses.send_if_modified(|published| {
            let now: BoundListeners = bound
                .iter()
                .map(|(name, (_, local, _))| (name.clone(), *local))
                .collect();
            let changed = *published != now;
            *published = now;
            changed
        });
        tokio::select! {
            changed = config.changed() => if changed.is_err() { break false },
            // Draining: no more changes are applied.
            () = drain.signaled() => break true,
        }
    };
    if draining {
        // The accept loops saw the drain too: they stop accepting and end.
        while accepting.join_next().await.is_some() {}
    } else {
        accepting.shutdown().await;
    }
    addresses.send_replace(BoundListeners::new());
}

fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

async fn accept_loop(
    name: String,
    socket: TcpListener,
    runtime: watch::Receiver<Arc<Runtime>>,
    pool: Arc<Pool>,
    drain: drain::Watch,
) {
    let name: Arc<str> = name.into();
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            () = drain.signaled() => {
                tracing::info!(listener = &*name, "draining: no longer accepting");
                return;
            }
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly rather than spin.
                tracing::warn!(listener = &*name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tracing::debug!(listener = &*name, %remote, "accepted");
        let latest = runtime.clone();
        let runtime = runtime.borrow().clone();
        let name = name.clone();
        let pool = pool.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            if let Err(reason) = serve(&name, stream, remote, runtime, latest, pool, drain).await {
                tracing::debug!(listener = &*name, %remote, reason, "connection closed");
            }
        });
    }
}

/// One downstream connection, from the first byte to the terminal filter.
async fn serve(
    name: &str,
    stream: TcpStream,
    remote: SocketAddr,
    runtime: Arc<Runtime>,
    latest: watch::Receiver<Arc<Runtime>>,
    pool: Arc<Pool>,
    drain: drain::Watch,
) -> Result<(), String> {
    let listener = runtime
        .config
        .listeners
        .get(name)
        .ok_or("the listener was removed")?;
    let metrics = runtime.metrics.clone();
    let labels = ListenerLabels {
        listener: name.to_owned(),
    };
    metrics.downstream_cx_total.get_or_create(&labels).inc();
    let active = metrics.downstream_cx_active.get_or_create(&labels).clone();
    active.inc();
    // Decrements when the connection ends, however it ends.
    struct Open(prometheus_client::metrics::gauge::Gauge);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    let _open = Open(active);
    let refuse = |reason: &str, detail: String| {
        metrics.refused(name, reason);
        detail
    };
    let _ = stream.set_nodelay(true);
    // On a capture listener, the connection is treated as if it had been accepted at its
    // original destination: chains, RBAC and passthrough clusters see that address.
    let local = if listener.original_dst {
        let original = original_dst::original_destination(&stream)
            .map_err(|e| refuse("original_dst", format!("SO_ORIGINAL_DST: {e}")))?;
        if original == listener.address || Some(original) == stream.local_addr().ok() {
            return Err(refuse(
                "original_dst",
                "not a redirected connection: its destination is the capture listener itself"
                    .into(),
            ));
        }
        original
    } else {
        stream.local_addr().map_err(|e| e.to_string())?
    };
    let mut stream = stream;
    let (prefix, facts) = if listener.tls_inspector {
        read_hello(&mut stream, local, runtime.settings.handshake_timeout)
            .await
            .map_err(|e| refuse("tls_inspector", e))?
    } else {
        (Vec::new(), plaintext_facts(local))
    };
    let (chain_id, chain) = chain::select(listener, &facts)
        .ok_or_else(|| refuse("no_filter_chain", "no filter chain matches".into()))?;
    let downstream = Rewind::new(prefix, stream);
    let (io, tls): (crate::transport::BoxedIo, Option<TlsPeer>) = match &chain.tls {
        None => (Box::new(downstream), None),
        Some(_) => {
            let config = runtime
                .server_tls
                .get(&(name.to_owned(), chain_id))
                .ok_or("no TLS configuration")?
                .as_ref()
                .map_err(Clone::clone)?;
            let accept = tokio_rustls::TlsAcceptor::from(config.clone()).accept(downstream);
            let tls = tokio::time::timeout(runtime.settings.handshake_timeout, accept)
                .await
                .map_err(|_| refuse("tls_handshake_timeout", "TLS handshake timed out".into()))?
                .map_err(|e| refuse("tls_handshake", format!("TLS handshake: {e}")))?;
            let session = tls.get_ref().1;
            let peer = TlsPeer {
                peer_id: isthmus_identity::peer_identity(session).map(|id| id.to_string()),
                peer_hash: session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|leaf| hex::encode(Sha256::digest(leaf.as_ref()))),
                local_id: local_identity(chain, &runtime),
            };
            (Box::new(tls), Some(peer))
        }
    };
    let peer = tls.as_ref().and_then(|t| t.peer_id.clone());
    let subject = Subject {
        peer: peer.as_deref(),
        remote: remote.ip(),
        local,
        server_name: facts.server_name.as_deref(),
        headers: None,
        path: None,
    };
    for rules in &chain.rbac {
        if let Decision::Deny(policy) = authz::evaluate(rules, &subject) {
            tracing::info!(listener = name, %remote, peer = ?peer, policy = ?policy, "connection denied by RBAC");
            return Err(refuse("rbac", "RBAC: access denied".into()));
        }
    }
    match &chain.terminal {
        Terminal::Tcp(tcp) => crate::tcp::proxy(io, tcp, &runtime, local)
            .await
            .map_err(|e| e.to_string()),
        Terminal::Http(hcm) => {
            let codec = hcm.codec;
            let connection = Connection {
                runtime: runtime.clone(),
                latest,
                pool,
                listener: name.to_owned(),
                chain: chain_id,
                remote,
                local,
                server_name: facts.server_name.clone(),
                tls,
            };
            crate::http::serve(io, codec, connection, drain)
                .await
                .map_err(|e| refuse(crate::http::error_reason(&e), e))
        }
    }
}

/// The SPIFFE ID of the certificate a chain presents.
fn local_identity(
    chain: &crate::config::listener::FilterChain,
    runtime: &Runtime,
) -> Option<String> {
    let name = chain.tls.as_ref()?.context.certificate.as_ref()?;
    match &**runtime.config.secrets.get(name)? {
        Secret::Certificate(cert) => Some(cert.spiffe_id().to_string()),
        Secret::TrustBundles(_) => None,
    }
}

fn plaintext_facts(destination: SocketAddr) -> ConnectionFacts {
    ConnectionFacts {
        destination,
        server_name: None,
        transport_protocol: "raw_buffer",
        alpn: Vec::new(),
    }
}

/// Reads until the first bytes say TLS (with SNI and ALPN) or plaintext. A client that sends
/// nothing within the timeout is treated as plaintext (server-first protocols).
async fn read_hello(
    stream: &mut TcpStream,
    destination: SocketAddr,
    timeout: Duration,
) -> Result<(Vec<u8>, ConnectionFacts), String> {
    let mut buf = Vec::with_capacity(2048);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match inspect(&buf) {
            Inspect::NotTls => return Ok((buf, plaintext_facts(destination))),
            Inspect::Hello { sni, alpn } => {
                let facts = ConnectionFacts {
                    destination,
                    server_name: sni,
                    transport_protocol: "tls",
                    alpn,
                };
                return Ok((buf, facts));
            }
            Inspect::Malformed(why) => return Err(format!("TLS inspector: {why}")),
            Inspect::Incomplete => {}
        }
        if buf.len() >= MAX_HELLO_BYTES {
            return Err("TLS inspector: ClientHello too large".into());
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) if buf.is_empty() => return Ok((buf, plaintext_facts(destination))),
            Err(_) => return Err("TLS inspector: the ClientHello did not arrive in time".into()),
            Ok(Ok(0)) => return Err("closed before sending anything".into()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
}
