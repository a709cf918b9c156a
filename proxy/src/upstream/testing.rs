//! Test fixtures: static clusters on loopback, runtimes built from them, and upstreams that
//! answer (HTTP/1.1 and HTTP/2) or never do; a listener and a route table to put in front.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::ProxyConfig;
use crate::config::cluster::{Cluster, Discovery, LbPolicy, Limits, UpstreamProtocol};
use crate::config::endpoint::{Endpoint, LoadAssignment, Locality, LocalityGroup};
use crate::config::listener::{Direction, FilterChain, Listener};
use crate::config::route::{Domain, Edits, Route, RouteTable, VirtualHost};
use crate::metrics::Metrics;
use crate::runtime::{Runtime, Settings};
use crate::upstream::Host;
use crate::upstream::outlier::HealthRegistry;

/// A plaintext, least-request cluster with one endpoint, `127.0.0.1:port`.
pub fn cluster(name: &str, port: u16) -> Cluster {
    Cluster {
        keepalive: None,
        telemetry: Default::default(),
        name: name.to_owned(),
        discovery: Discovery::Static(LoadAssignment {
            cluster_name: name.to_owned(),
            groups: vec![LocalityGroup {
                locality: Locality::default(),
                priority: 0,
                weight: None,
                endpoints: vec![Endpoint {
                    host: "127.0.0.1".to_owned(),
                    port,
                    weight: 1,
                    healthy: true,
                }],
            }],
            overprovisioning: 140,
        }),
        connect_timeout: Duration::from_secs(5),
        lb: LbPolicy::LeastRequest,
        limits: Limits::default(),
        outlier: None,
        panic_threshold: 50.0,
        locality_weighted: false,
        protocol: UpstreamProtocol {
            http: None,
            idle_timeout: None,
            max_requests_per_connection: None,
            max_concurrent_streams: None,
        },
        tls: None,
    }
}

/// An inbound listener `in` on `127.0.0.1:0` with these filter chains and no default one.
pub fn listener(chains: Vec<FilterChain>) -> Arc<Listener> {
    Arc::new(Listener {
        telemetry: None,
        name: "in".to_owned(),
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        direction: Direction::Inbound,
        tls_inspector: false,
        tls_inspector_disabled: None,
        original_dst: false,
        chains,
        default_chain: None,
    })
}

/// A route table `r` of one virtual host `all` (any domain) with this one route.
pub fn table(route: Route) -> RouteTable {
    RouteTable {
        name: "r".into(),
        virtual_hosts: vec![VirtualHost {
            policies: Default::default(),
            name: "all".into(),
            domains: vec![Domain::Any],
            routes: vec![route],
            headers: Edits::default(),
            rbac: HashMap::new(),
        }],
        headers: Edits::default(),
    }
}

/// A configuration of just these clusters.
pub fn config(clusters: impl IntoIterator<Item = Cluster>) -> ProxyConfig {
    let mut config = ProxyConfig::default();
    for c in clusters {
        config.clusters.insert(c.name.clone(), Arc::new(c));
    }
    config
}

/// The runtime of `config`, as a configuration change builds it.
pub fn runtime(config: &Arc<ProxyConfig>) -> Runtime {
    Runtime::build(
        config.clone(),
        &HealthRegistry::default(),
        &Arc::new(Metrics::default()),
        Settings::default(),
        &Default::default(),
    )
}

/// The runtime of a configuration of just these clusters.
pub fn runtime_of(clusters: impl IntoIterator<Item = Cluster>) -> Runtime {
    runtime(&Arc::new(config(clusters)))
}

/// The runtime of one [`cluster`] `backend` on `127.0.0.1:port`, and its one host.
pub fn backend(port: u16) -> (Arc<Runtime>, Arc<Host>) {
    let runtime = Arc::new(runtime_of([cluster("backend", port)]));
    let host = runtime.clusters["backend"].priorities[0][0].clone();
    (runtime, host)
}

/// Aborts `task`, which holds work on `host` (a reset, a listener going away), and checks
/// that the host got its active count back: it must not stay busy for least-request balancing.
pub async fn abort_gives_the_count_back<T: std::fmt::Debug>(task: JoinHandle<T>, host: &Host) {
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(host.active.load(Ordering::Relaxed), 0, "the count leaked");
}

/// An upstream that accepts connections and never answers; the test gets each accepted
/// connection (to read what reached it, and to keep it open).
pub async fn silent_upstream() -> (u16, mpsc::UnboundedReceiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if tx.send(stream).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// An HTTP upstream (HTTP/1.1, or HTTP/2 with prior knowledge) answering every request with
/// 200 `ok`. The watch counts its connections open now; the counter, those ever accepted.
pub async fn http_upstream() -> (
    u16,
    watch::Receiver<usize>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (open_tx, open_rx) = watch::channel(0usize);
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        let open_tx = Arc::new(open_tx);
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            open_tx.send_modify(|n| *n += 1);
            let open_tx = open_tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                open_tx.send_modify(|n| *n -= 1);
            });
        }
    });
    (port, open_rx, accepted)
}
