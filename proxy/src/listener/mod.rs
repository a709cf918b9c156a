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
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::gauge::Gauge;
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
use crate::config::listener::{Direction, Terminal};
use crate::config::secret::Secret;
use crate::config::telemetry::GatewaySide;
use crate::drain;
use crate::http::pool::Pool;
use crate::http::{Connection, TlsPeer};
use crate::metrics::{ListenerLabels, Metrics};
use crate::runtime::{Runtime, Settings};
use crate::telemetry::labels::{Reporter, Workload, unknown};
use crate::telemetry::request::{ConnectionTelemetry, UpstreamFacts};
use crate::telemetry::tcp::TcpContext;
use crate::transport::tls_cache::TlsCache;
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
    let tls_cache = TlsCache::default();
    let mut accepting: JoinSet<()> = JoinSet::new();
    // By name: the configured address, the one bound, and its accept loop.
    let mut bound: HashMap<String, (SocketAddr, SocketAddr, AbortHandle)> = HashMap::new();
    let draining = loop {
        let current = config.borrow_and_update().clone();
        let runtime = Runtime::build(current.clone(), &health, &metrics, settings, &tls_cache);
        if let Some(telemetry) = &metrics.telemetry {
            telemetry.tracer.configure(trace_collector(&runtime));
        }
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
        // Detached on purpose: the connection holds a drain `Watch` until it ends, so a drain
        // asks it to finish and waits for it (up to the deadline), and the listener's
        // removal does not cut it short.
        tokio::spawn(async move {
            let metrics = runtime.metrics.clone();
            let gateway = gateway_side(&runtime, &name);
            if let Err(error) = serve(&name, stream, remote, runtime, latest, pool, drain).await {
                if error.is_refusal() {
                    metrics.refused(&name, error.reason());
                    if let (Some(side), Some(telemetry)) = (gateway, &metrics.telemetry) {
                        // Before a chain (and so a peer) is known.
                        telemetry
                            .gateway
                            .refused(side.as_str(), unknown(), error.reason());
                    }
                }
                tracing::debug!(
                    listener = &*name,
                    %remote,
                    reason = error.reason(),
                    error = %ErrorChain(&error),
                    "connection closed"
                );
            }
        });
    }
}

/// The cluster (and its service) the first forwarding route of `hcm` leads to.
fn inbound_service(
    runtime: &Runtime,
    hcm: &crate::config::listener::HttpManager,
) -> Option<UpstreamFacts> {
    use crate::config::listener::RouteSource;
    use crate::config::route::{Action, Targets};
    let table = match &hcm.routes {
        RouteSource::Rds(name) => runtime.config.routes.get(name).map(|t| &**t),
        RouteSource::Inline(table) => Some(&**table),
    }?;
    let cluster = table
        .virtual_hosts
        .iter()
        .flat_map(|vh| &vh.routes)
        .find_map(|r| match &r.action {
            Action::Forward(f) => match &f.targets {
                Targets::Cluster(name) => Some(name.as_str()),
                Targets::Weighted(targets) => targets.first().map(|t| t.cluster.as_str()),
            },
            _ => None,
        })?;
    let runtime_cluster = runtime.clusters.get(cluster)?;
    Some(UpstreamFacts {
        cluster: runtime_cluster.name.clone(),
        facts: runtime_cluster.cluster.telemetry.clone(),
        principal: None,
        exchange: None,
    })
}

/// Where spans go: the first endpoint (`host:port`) of the collector cluster the first traced
/// connection manager names.
fn trace_collector(runtime: &Runtime) -> Option<String> {
    let cluster = runtime
        .config
        .listeners
        .values()
        .flat_map(|l| l.chains.iter().chain(&l.default_chain))
        .find_map(|c| match &c.terminal {
            Terminal::Http(hcm) => hcm.tracing.as_ref().map(|t| t.collector_cluster.clone()),
            Terminal::Tcp(_) => None,
        })?;
    runtime.clusters.get(&cluster)?.first_address()
}

/// The federation side of a gateway's listener.
fn gateway_side(runtime: &Runtime, name: &str) -> Option<GatewaySide> {
    runtime
        .config
        .listeners
        .get(name)?
        .telemetry
        .as_ref()?
        .gateway
}

/// One downstream connection, from the first byte to the terminal filter. A refusal is counted
/// by the caller (`ConnectionError::is_refusal`).
async fn serve(
    name: &str,
    stream: TcpStream,
    remote: SocketAddr,
    runtime: Arc<Runtime>,
    latest: watch::Receiver<Arc<Runtime>>,
    pool: Arc<Pool>,
    drain: drain::Watch,
) -> Result<(), ConnectionError> {
    let listener = runtime
        .config
        .listeners
        .get(name)
        .ok_or(ConnectionError::ListenerRemoved)?;
    let labels = ListenerLabels {
        listener: name.to_owned(),
    };
    runtime
        .metrics
        .downstream_cx_total
        .get_or_create(&labels)
        .inc();
    let _open = OpenConnection::new(
        runtime
            .metrics
            .downstream_cx_active
            .get_or_create(&labels)
            .clone(),
    );
    let _ = stream.set_nodelay(true);
    // On a capture listener, the connection is treated as if it had been accepted at its
    // original destination: chains, RBAC and passthrough clusters see that address.
    let local = if listener.original_dst {
        let original =
            original_dst::original_destination(&stream).map_err(ConnectionError::OriginalDst)?;
        if original == listener.address || Some(original) == stream.local_addr().ok() {
            return Err(ConnectionError::NotRedirected);
        }
        original
    } else {
        stream.local_addr().map_err(ConnectionError::LocalAddress)?
    };
    let mut stream = stream;
    let inspect = listener.tls_inspector
        && !listener
            .tls_inspector_disabled
            .as_ref()
            .is_some_and(|off| off.matches(local.port()));
    let (prefix, facts) = if inspect {
        read_hello(&mut stream, local, runtime.settings.handshake_timeout).await?
    } else {
        (Vec::new(), plaintext_facts(local))
    };
    let (chain_id, chain) =
        chain::select(listener, &facts).ok_or(ConnectionError::NoFilterChain)?;
    let downstream = Rewind::new(prefix, stream);
    let (io, tls): (crate::transport::BoxedIo, Option<TlsPeer>) = match &chain.tls {
        None => (Box::new(downstream), None),
        Some(_) => {
            let config = runtime
                .server_tls
                .get(&(name.to_owned(), chain_id))
                .ok_or(ConnectionError::NoTlsConfiguration)?
                .as_ref()
                .map_err(|e| ConnectionError::TlsConfiguration(e.clone()))?;
            let accept = tokio_rustls::TlsAcceptor::from(config.clone()).accept(downstream);
            let tls = tokio::time::timeout(runtime.settings.handshake_timeout, accept)
                .await
                .map_err(|_| ConnectionError::TlsHandshakeTimeout)?
                .map_err(ConnectionError::TlsHandshake)?;
            let session = tls.get_ref().1;
            // A chain terminating TLS for clients outside the mesh (a gateway's `Gateway`
            // server) names no mesh identity, whatever URI its client certificates carry.
            let edge = chain.tls.as_ref().is_some_and(|t| t.external.is_some());
            let peer_id = if edge {
                None
            } else {
                runtime.metrics.handshake("downstream", session);
                isthmus_identity::verified_peer(session, SystemTime::now()).map_err(|e| {
                    ConnectionError::TlsHandshake(io::Error::new(io::ErrorKind::InvalidData, e))
                })?
            };
            let peer = TlsPeer {
                peer_id: peer_id.map(|id| id.to_string()),
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
        jwt: None,
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
            return Err(ConnectionError::Rbac);
        }
    }
    let tcp_telemetry = tcp_context(&runtime, listener, chain, peer.clone());
    match &chain.terminal {
        // `drain` lives until the copy ends: a TCP connection counts as open work (a drain
        // waits for it up to the deadline) but is not cut, having no request boundary.
        Terminal::Tcp(tcp) => {
            let result = crate::tcp::proxy(io, tcp, &runtime, local, tcp_telemetry).await;
            drop(drain);
            Ok(result?)
        }
        Terminal::Http(hcm) => {
            let codec = hcm.codec;
            let telemetry = request_telemetry(remote, &runtime, listener, hcm, tls.as_ref());
            let gateway = tcp_telemetry.filter(|t| t.node.gateway.is_some());
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
                drain,
                telemetry,
                gateway,
            };
            Ok(crate::http::serve_connection(io, codec, connection).await?)
        }
    }
}

/// The telemetry of a connection on `listener`'s `chain`, when telemetry is on and the control
/// plane said who the node is.
fn tcp_context(
    runtime: &Runtime,
    listener: &crate::config::listener::Listener,
    chain: &crate::config::listener::FilterChain,
    peer_id: Option<String>,
) -> Option<TcpContext> {
    Some(TcpContext {
        telemetry: runtime.metrics.telemetry.clone()?,
        node: listener.telemetry.clone()?,
        direction: listener.direction,
        peer_id,
        chain_peer: chain.peer.clone(),
    })
}

/// A sidecar's HTTP request telemetry on `listener` (not a gateway's: it carries tunnels).
fn request_telemetry(
    remote: SocketAddr,
    runtime: &Runtime,
    listener: &crate::config::listener::Listener,
    hcm: &crate::config::listener::HttpManager,
    tls: Option<&TlsPeer>,
) -> Option<Arc<ConnectionTelemetry>> {
    let telemetry = runtime.metrics.telemetry.clone()?;
    let node = listener.telemetry.clone().filter(|n| n.gateway.is_none())?;
    let reporter = match listener.direction {
        Direction::Inbound => Reporter::Destination,
        Direction::Outbound => Reporter::Source,
        Direction::Unspecified => return None,
    };
    let peer_id = tls.and_then(|t| t.peer_id.as_deref());
    let peer = peer_id.map(|id| {
        let mut caller = Workload::unknown();
        caller.principal = telemetry.principals.label(id);
        caller.mesh = node.mesh_of(id);
        Arc::new(caller)
    });
    // A request answered before a cluster is chosen (RBAC, no route) is still for this
    // workload's service: the one its inbound routes lead to.
    let served = (reporter == Reporter::Destination)
        .then(|| inbound_service(runtime, hcm))
        .flatten();
    Some(Arc::new(ConnectionTelemetry {
        served,
        remote,
        peers: telemetry.peers.clone(),
        handles: Arc::default(),
        last_peer: parking_lot::Mutex::default(),
        other_side: parking_lot::Mutex::default(),
        telemetry,
        node,
        reporter,
        peer,
        mutual_tls: peer_id.is_some(),
        peer_id: peer_id.map(Arc::from),
        tracing: hcm.tracing.clone(),
    }))
}

/// One open downstream connection in `downstream_connections_active`: counted when made,
/// given back on drop, however the connection ends (an error, a cancelled task).
#[must_use = "the connection counts as open only while the guard lives"]
struct OpenConnection(Gauge);

impl OpenConnection {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
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
        Secret::TrustBundles(_) | Secret::PlainCertificate(_) | Secret::Roots(_) => None,
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
) -> Result<(Vec<u8>, ConnectionFacts), InspectorError> {
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
            Inspect::Malformed(why) => return Err(InspectorError::Malformed(why)),
            Inspect::Incomplete => {}
        }
        if buf.len() >= MAX_HELLO_BYTES {
            return Err(InspectorError::TooLarge);
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) if buf.is_empty() => return Ok((buf, plaintext_facts(destination))),
            Err(_) => return Err(InspectorError::Timeout),
            Ok(Ok(0)) => return Err(InspectorError::Closed),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(InspectorError::Read(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::metrics::RefusedLabels;
    use crate::upstream::testing;

    /// A listener on port 0 with no filter chain: every connection is refused.
    fn config_with_listener() -> ProxyConfig {
        let mut config = ProxyConfig::default();
        config
            .listeners
            .insert("in".to_owned(), testing::listener(Vec::new()));
        config
    }

    #[tokio::test]
    async fn listeners_publish_their_address_count_refusals_and_stop_at_the_drain() {
        let (config_tx, config) = watch::channel(Arc::new(config_with_listener()));
        let (runtime_tx, _runtime) = watch::channel(Arc::default());
        let (addresses_tx, mut addresses) = watch::channel(BoundListeners::new());
        let (trigger, drain) = drain::new();
        let metrics = Arc::new(Metrics::default());
        let manager = tokio::spawn(run(
            config,
            runtime_tx,
            addresses_tx,
            drain,
            metrics.clone(),
            Settings::default(),
        ));
        let bound = addresses
            .wait_for(|a| a.contains_key("in"))
            .await
            .unwrap()
            .clone();
        let address = bound["in"];
        assert_ne!(address.port(), 0, "the port the kernel picked");

        // No chain matches: refused, counted with its reason, no longer open once closed.
        let mut client = TcpStream::connect(address).await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
            .await
            .expect("the refused connection is closed");
        let refused = metrics.downstream_cx_refused.get_or_create(&RefusedLabels {
            listener: "in".to_owned(),
            reason: "no_filter_chain".to_owned(),
        });
        let labels = ListenerLabels {
            listener: "in".to_owned(),
        };
        // Counted once the connection's task has ended (just after the close).
        tokio::time::timeout(Duration::from_secs(10), async {
            while refused.get() != 1
                || metrics.downstream_cx_active.get_or_create(&labels).get() != 0
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("one refusal counted, nothing left open");

        assert!(trigger.drain(Duration::from_secs(5)).await, "nothing open");
        tokio::time::timeout(Duration::from_secs(10), manager)
            .await
            .expect("the manager ends at the drain")
            .unwrap();
        assert!(addresses.borrow().is_empty(), "no listener after the drain");
        assert!(
            TcpStream::connect(address).await.is_err(),
            "still accepting"
        );
        drop(config_tx);
    }
}
