//! Clusters at run time: their endpoints (static, EDS or DNS), load balancing, and connecting
//! to the chosen endpoint, over TLS when the cluster originates it.

pub mod balance;
pub mod breakers;
pub mod outlier;
pub mod priority;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use rand::Rng;
use rustls_pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use crate::config::ProxyConfig;
use crate::config::cluster::{Cluster, Discovery, HttpVersion};
use crate::config::endpoint::LoadAssignment;
use crate::config::tls::{ExternalCertificate, ExternalRoots, Pem};
use crate::metrics::Metrics;
use crate::transport::digest::{self, CertificateBy, field};
use crate::transport::tls_cache::TlsCache;
use crate::transport::{BoxedIo, tls};

use self::balance::Balancer;
use self::breakers::{Breaker, ClusterLoad, SlotIo};
use self::outlier::{HealthRegistry, HostHealth, Outcome};

/// One endpoint of a cluster.
#[derive(Debug)]
pub struct Host {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    /// What EDS says of its health.
    pub eds_healthy: bool,
    /// Requests or connections open to it (least-request balancing).
    pub active: AtomicUsize,
    pub health: Arc<HostHealth>,
}

impl Host {
    /// Counts a request or connection as open on this host (least-request balancing) for as
    /// long as the guard lives. A guard, not an increment and a decrement around an `.await`:
    /// work cancelled mid-flight (a client reset drops its future) gives its count back like
    /// finished work, so the host never looks busy forever.
    pub fn track_active(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        Active { host: self.clone() }
    }
}

/// One request or connection open on a host ([`Host::track_active`]), given back on drop.
#[derive(Debug)]
#[must_use = "the host counts the work as open only while the guard lives"]
pub struct Active {
    host: Arc<Host>,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.host.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The SPIFFE ID an upstream proved with its certificate (TLS origination); `None` over
/// plaintext or without a SPIFFE ID.
pub type UpstreamPeer = Option<Arc<str>>;

/// A cluster ready to be used: its hosts by priority, how to pick among them, and its TLS
/// client configuration.
#[derive(Debug)]
pub struct ClusterRuntime {
    pub cluster: Arc<Cluster>,
    /// The cluster's name, shared: each request's telemetry names it.
    pub name: Arc<str>,
    /// Hosts by priority, best first.
    pub priorities: Vec<Vec<Arc<Host>>>,
    /// EDS's overprovisioning factor (percent) for the priority load.
    pub overprovisioning: u32,
    pub balancer: Balancer,
    /// `None`: plaintext; `Some(Err)`: TLS that cannot be set up yet (a missing secret).
    pub tls: Option<Result<Arc<rustls::ClientConfig>, tls::TlsError>>,
    /// For a mesh cluster, `tls` copied per host, so that sessions resume host by host (kept,
    /// with `tls`, across configuration changes that leave its TLS as it was).
    pub sessions: Arc<tls::PerHostSessions>,
    pub metrics: Arc<Metrics>,
    /// Circuit breaker counters (open connections, pending and open requests, retries).
    pub load: Arc<ClusterLoad>,
    /// Which pooled connections this cluster may use (computed here, once per runtime).
    pub key: ClusterKey,
}

/// Which upstream connections a cluster may share, by value: its name (its breakers and
/// metrics) and a SHA-256 of everything a connection to its hosts was made with: the
/// upstream protocol and the TLS origination (SNI, SAN matchers, ALPN, the identity of the
/// certificate and the content of the trust bundles it names). Two clusters share pooled connections only
/// when their keys are equal, so a changed or re-created cluster never inherits connections
/// made under other settings (a pointer-keyed pool could hand a new cluster at a reused
/// address the old one's TLS session), and an unchanged cluster keeps its connections
/// across configuration changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterKey {
    pub name: Arc<str>,
    pub transport: [u8; 32],
}

impl ClusterKey {
    /// `secrets`: digests of the secrets already seen in this build (a certificate or a
    /// bundle named by many clusters is hashed once).
    fn new<'a>(
        cluster: &'a Cluster,
        config: &'a ProxyConfig,
        secrets: &mut HashMap<&'a str, [u8; 32]>,
    ) -> Self {
        let mut h = Sha256::new();
        let protocol: &[u8] = match cluster.protocol.http {
            None => b"tcp-or-http1",
            Some(HttpVersion::Http1) => b"http1",
            Some(HttpVersion::Http2) => b"http2",
        };
        field(&mut h, protocol);
        match &cluster.tls {
            None => field(&mut h, b"plaintext"),
            Some(tls) => {
                field(&mut h, b"tls");
                field(&mut h, tls.sni.as_bytes());
                let context = &tls.context;
                for name in [&context.certificate, &context.validation] {
                    match name {
                        None => field(&mut h, b"none"),
                        Some(name) => {
                            field(&mut h, b"some");
                            field(&mut h, name.as_bytes());
                            let digest = secrets.entry(name).or_insert_with(|| {
                                digest::secret(config.secrets.get(name), CertificateBy::Identity)
                            });
                            field(&mut h, &digest[..]);
                        }
                    }
                }
                for list in [&context.peer_ids, &context.alpn] {
                    field(&mut h, &(list.len() as u64).to_be_bytes());
                    for item in list {
                        field(&mut h, item.as_bytes());
                    }
                }
                // Outside the mesh: the roots, names and client certificate, by content (a
                // file read now, at the configuration change that builds its TLS; a
                // credential's secret as it is now): trust withdrawn ends what it allowed.
                match &tls.external {
                    None => field(&mut h, b"mesh"),
                    Some(external) => {
                        field(&mut h, b"external");
                        field(&mut h, format!("{:?}", external.server_name).as_bytes());
                        let mut sds: Vec<&'a str> = Vec::new();
                        match &external.roots {
                            None => field(&mut h, b"no roots"),
                            Some(ExternalRoots::Pem(pem)) => pem_field(&mut h, pem),
                            Some(ExternalRoots::Sds(name)) => {
                                field(&mut h, b"roots over SDS");
                                sds.push(name);
                            }
                        }
                        match &external.client_certificate {
                            None => field(&mut h, b"no certificate"),
                            Some(ExternalCertificate::Pem { chain, key }) => {
                                pem_field(&mut h, chain);
                                pem_field(&mut h, key);
                            }
                            Some(ExternalCertificate::Sds(name)) => {
                                field(&mut h, b"certificate over SDS");
                                sds.push(name);
                            }
                        }
                        for name in sds {
                            field(&mut h, b"sds");
                            field(&mut h, name.as_bytes());
                            let digest = secrets.entry(name).or_insert_with(|| {
                                digest::secret(config.secrets.get(name), CertificateBy::Identity)
                            });
                            field(&mut h, &digest[..]);
                        }
                    }
                }
            }
        }
        Self {
            name: cluster.name.as_str().into(),
            transport: h.finalize().into(),
        }
    }
}

/// PEM by its content as it is now (a file read now); an unreadable file as such.
fn pem_field(h: &mut Sha256, pem: &Pem) {
    match pem.content() {
        Some(bytes) => field(h, &Sha256::digest(&bytes)[..]),
        None => field(h, b"unreadable"),
    }
}

/// Every cluster of a configuration; hosts keep their outlier records from `health`.
pub fn build(
    config: &ProxyConfig,
    health: &HealthRegistry,
    metrics: &Arc<Metrics>,
    tls_cache: &TlsCache,
) -> HashMap<String, Arc<ClusterRuntime>> {
    let mut secrets = HashMap::new();
    let clusters: HashMap<String, Arc<ClusterRuntime>> = config
        .clusters
        .iter()
        .map(|(name, cluster)| {
            let assignment = match &cluster.discovery {
                Discovery::Static(a) | Discovery::Dns { assignment: a, .. } => Some(a.clone()),
                Discovery::Eds { service_name } => {
                    config.endpoints.get(service_name).map(|a| (**a).clone())
                }
                Discovery::OriginalDst => None,
            };
            let client_tls = cluster
                .tls
                .as_ref()
                .map(|t| tls_cache.client(name, t, config));
            let priorities: Vec<Vec<Arc<Host>>> = assignment
                .as_ref()
                .map(|a| by_priority(name, a, health, cluster.locality_weighted))
                .unwrap_or_default();
            // Kept sessions of hosts that left (a rollout's old pods) would hold the places
            // of new ones.
            if let Some(t) = &client_tls {
                t.sessions.retain(|addr| {
                    priorities.iter().flatten().any(|h| {
                        h.port == addr.port() && h.host.parse::<std::net::IpAddr>() == Ok(addr.ip())
                    })
                });
            }
            let runtime = ClusterRuntime {
                overprovisioning: assignment.as_ref().map_or(140, |a| a.overprovisioning),
                balancer: Balancer::new(cluster.lb),
                priorities,
                tls: client_tls.as_ref().map(|t| t.config.clone()),
                sessions: client_tls.map(|t| t.sessions).unwrap_or_default(),
                name: Arc::from(name.as_str()),
                cluster: cluster.clone(),
                metrics: metrics.clone(),
                load: health.load(name),
                key: ClusterKey::new(cluster, config, &mut secrets),
            };
            (name.clone(), Arc::new(runtime))
        })
        .collect();
    health.retain(
        |(cluster, host, port)| {
            clusters.get(cluster).is_some_and(|c| {
                c.priorities
                    .iter()
                    .flatten()
                    .any(|h| h.host == *host && h.port == *port)
            })
        },
        |cluster| clusters.contains_key(cluster),
    );
    clusters
}

/// The healthy hosts, grouped by priority, best first. Locality-weighted, a host weighs its
/// locality's weight shared among the locality's hosts by their own weights (so that picking
/// a host is picking a locality by its weight, then a host in it, as Envoy does); a locality
/// without a weight has no host.
fn by_priority(
    cluster: &str,
    assignment: &LoadAssignment,
    health: &HealthRegistry,
    locality_weighted: bool,
) -> Vec<Vec<Arc<Host>>> {
    let mut priorities: Vec<u32> = assignment.groups.iter().map(|g| g.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    priorities
        .into_iter()
        .map(|priority| {
            assignment
                .groups
                .iter()
                .filter(|g| g.priority == priority)
                .filter(|g| !locality_weighted || g.weight.is_some_and(|w| w > 0))
                .flat_map(|g| {
                    let total: u64 = g.endpoints.iter().map(|e| u64::from(e.weight.max(1))).sum();
                    g.endpoints.iter().map(move |e| {
                        let weight = match g.weight.filter(|_| locality_weighted) {
                            // Scaled by 1,000 so that small shares keep their precision.
                            Some(w) => {
                                u64::from(w) * u64::from(e.weight.max(1)) * 1000 / total.max(1)
                            }
                            None => u64::from(e.weight),
                        };
                        (e, u32::try_from(weight.max(1)).unwrap_or(u32::MAX))
                    })
                })
                .map(|(e, weight)| {
                    Arc::new(Host {
                        host: e.host.clone(),
                        port: e.port,
                        weight,
                        eds_healthy: e.healthy,
                        active: AtomicUsize::new(0),
                        health: health.get(cluster, &e.host, e.port),
                    })
                })
                .collect::<Vec<_>>()
        })
        .filter(|hosts| !hosts.is_empty())
        .collect()
}

/// Why no connection to a cluster could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cluster {0:?} has no healthy endpoint")]
    NoHost(String),
    #[error("cluster {cluster:?}: {reason}")]
    Tls { cluster: String, reason: String },
    #[error("{host}:{port}: {source}")]
    Io {
        host: String,
        port: u16,
        source: io::Error,
    },
    /// The `max_connections` circuit breaker is open.
    #[error("cluster {0:?}: too many connections (max_connections)")]
    Overflow(String),
    #[error("{host}:{port}: connect timeout after {timeout:?}")]
    Timeout {
        host: String,
        port: u16,
        timeout: Duration,
    },
}

impl ClusterRuntime {
    /// The hosts to balance this request over: a priority level drawn by Envoy's priority
    /// load (locality failover as hosts fail, see `priority.rs`), then its usable hosts
    /// (healthy by EDS, not ejected), or all its hosts when the level is in panic.
    pub fn usable_hosts(&self) -> Vec<Arc<Host>> {
        let usable = |h: &Arc<Host>| h.eds_healthy && !h.health.is_ejected();
        let levels: Vec<priority::Level> = self
            .priorities
            .iter()
            .map(|hosts| priority::Level {
                usable: hosts.iter().filter(|h| usable(h)).count(),
                total: hosts.len(),
            })
            .collect();
        let loads = priority::loads(&levels, self.overprovisioning, self.cluster.panic_threshold);
        let draw = rand::rng().random_range(0..100);
        // Nothing usable and panic disabled: no host (Envoy's "no healthy upstream").
        let Some(level) = priority::choose(&loads, draw) else {
            return Vec::new();
        };
        let hosts = &self.priorities[level];
        if loads[level].panic {
            return hosts.clone();
        }
        hosts.iter().filter(|h| usable(h)).cloned().collect()
    }

    /// The first host's `host:port` (a static collector's address, say).
    pub fn first_address(&self) -> Option<String> {
        let host = self.priorities.iter().flatten().next()?;
        Some(match host.host.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]:{}", host.port),
            Err(_) => format!("{}:{}", host.host, host.port),
        })
    }

    /// Picks a host to send to.
    pub fn pick(&self) -> Option<Arc<Host>> {
        self.balancer.pick(&self.usable_hosts())
    }

    /// [`ClusterRuntime::pick`] by the request's hash, for a consistent-hash cluster.
    pub fn pick_hashed(&self, hash: Option<u64>) -> Option<Arc<Host>> {
        self.balancer.pick_hashed(&self.usable_hosts(), hash)
    }

    /// As [`ClusterRuntime::pick`], for a retry that avoids the hosts already `tried` (Envoy's
    /// `previous_hosts` predicate): a host not tried yet when there is one. (Envoy picks again
    /// up to `host_selection_retry_max_attempts` times; leaving the tried hosts out is that,
    /// without the chance of landing on one again.)
    pub fn pick_avoiding(&self, tried: &[Arc<Host>], hash: Option<u64>) -> Option<Arc<Host>> {
        let usable = self.usable_hosts();
        let untried: Vec<Arc<Host>> = usable
            .iter()
            .filter(|h| !tried.iter().any(|t| Arc::ptr_eq(t, h)))
            .cloned()
            .collect();
        let hosts = if untried.is_empty() { usable } else { untried };
        self.balancer.pick_hashed(&hosts, hash)
    }

    /// Records what an attempt to `host` came to, and ejects it if outlier detection says so
    /// (within the cluster's ejection cap).
    pub fn record(&self, host: &Host, outcome: Outcome) {
        let Some(outlier) = &self.cluster.outlier else {
            return;
        };
        if !host.health.record(outcome, outlier) || host.health.is_ejected() {
            return;
        }
        let all: Vec<&Arc<Host>> = self.priorities.iter().flatten().collect();
        let ejected = all.iter().filter(|h| h.health.is_ejected()).count();
        let cap = (all.len() * outlier.max_ejection_percent as usize / 100).max(1);
        if ejected < cap {
            host.health.eject(outlier);
            Metrics::cluster(&self.metrics.outlier_ejections, &self.cluster.name);
            tracing::info!(
                cluster = self.cluster.name,
                host = host.host,
                port = host.port,
                "host ejected by outlier detection"
            );
        }
    }

    /// Connects to where a captured connection was going (an `ORIGINAL_DST` cluster).
    pub async fn connect_original(
        &self,
        destination: SocketAddr,
    ) -> Result<(BoxedIo, Arc<Host>, UpstreamPeer), ConnectError> {
        let host = Arc::new(Host {
            host: destination.ip().to_string(),
            port: destination.port(),
            weight: 1,
            eds_healthy: true,
            active: AtomicUsize::new(0),
            health: Arc::default(),
        });
        let (io, peer) = self.connect_to(&host).await?;
        Ok((io, host, peer))
    }

    /// Picks a host and connects to it (TLS included), within the cluster's connect timeout;
    /// also says who the host proved to be.
    pub async fn connect(&self) -> Result<(BoxedIo, Arc<Host>, UpstreamPeer), ConnectError> {
        let host = self
            .pick()
            .ok_or_else(|| ConnectError::NoHost(self.cluster.name.clone()))?;
        match self.connect_to(&host).await {
            Ok((io, peer)) => Ok((io, host, peer)),
            // An overflow says nothing of the host's health.
            Err(e @ ConnectError::Overflow(_)) => Err(e),
            Err(e) => {
                self.record(&host, Outcome::GatewayError);
                Err(e)
            }
        }
    }

    /// Connects to `host`; also says who the peer proved to be over TLS (its SPIFFE ID).
    /// The connection holds a slot of the cluster's `max_connections` until it closes.
    pub async fn connect_to(&self, host: &Host) -> Result<(BoxedIo, UpstreamPeer), ConnectError> {
        let Some(slot) = self
            .load
            .try_acquire(Breaker::Connections, &self.cluster.limits)
        else {
            self.metrics.overflow(&self.cluster.name, "max_connections");
            return Err(ConnectError::Overflow(self.cluster.name.clone()));
        };
        let timeout = self.cluster.connect_timeout;
        let result = tokio::time::timeout(timeout, self.dial(host))
            .await
            .map_err(|_| ConnectError::Timeout {
                host: host.host.clone(),
                port: host.port,
                timeout,
            })
            .and_then(|r| r);
        if result.is_err() {
            Metrics::cluster(&self.metrics.upstream_connect_failures, &self.cluster.name);
        }
        result.map(|(io, peer)| (Box::new(SlotIo { inner: io, slot }) as BoxedIo, peer))
    }

    async fn dial(&self, host: &Host) -> Result<(BoxedIo, UpstreamPeer), ConnectError> {
        let io_err = |source| ConnectError::Io {
            host: host.host.clone(),
            port: host.port,
            source,
        };
        let addr: SocketAddr = match host.host.parse() {
            Ok(ip) => SocketAddr::new(ip, host.port),
            Err(_) => tokio::net::lookup_host((host.host.as_str(), host.port))
                .await
                .map_err(io_err)?
                .next()
                .ok_or_else(|| io_err(io::Error::new(io::ErrorKind::NotFound, "no address")))?,
        };
        let tcp = TcpStream::connect(addr).await.map_err(io_err)?;
        tcp.set_nodelay(true).map_err(io_err)?;
        if let Some(k) = &self.cluster.keepalive {
            keepalive(&tcp, k).map_err(io_err)?;
        }
        let Some(tls) = &self.tls else {
            return Ok((Box::new(tcp), None));
        };
        let tls_err = |reason: String| ConnectError::Tls {
            cluster: self.cluster.name.clone(),
            reason,
        };
        let config = tls.as_ref().map_err(|e| tls_err(e.clone()))?;
        let sni = self
            .cluster
            .tls
            .as_ref()
            .map(|t| t.sni.as_str())
            .unwrap_or_default();
        let name = if sni.is_empty() {
            ServerName::IpAddress(addr.ip().into())
        } else {
            ServerName::try_from(sni.to_owned())
                .map_err(|e| tls_err(format!("SNI {sni:?}: {e}")))?
        };
        let external = self
            .cluster
            .tls
            .as_ref()
            .is_some_and(|t| t.external.is_some());
        let config = if external {
            config.clone()
        } else {
            self.sessions.config(config, addr)
        };
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| tls_err(format!("TLS handshake with {addr}: {e}")))?;
        // A server outside the mesh is not verified as a SPIFFE identity: whatever URI SAN it
        // shows is not a mesh peer (telemetry's `destination_principal`).
        let peer = if external {
            None
        } else {
            self.metrics.handshake("upstream", stream.get_ref().1);
            isthmus_identity::verified_peer(stream.get_ref().1, SystemTime::now())
                .map_err(|e| tls_err(format!("resumed TLS session with {addr}: {e}")))?
                .map(|id| Arc::from(id.to_string().as_str()))
        };
        Ok((Box::new(stream), peer))
    }
}

/// TCP keepalive on an upstream connection (`SO_KEEPALIVE` and the idle time, interval and
/// probe count that are set).
fn keepalive(tcp: &TcpStream, k: &crate::config::cluster::Keepalive) -> io::Result<()> {
    let mut params = socket2::TcpKeepalive::new();
    if let Some(time) = k.time {
        params = params.with_time(time);
    }
    if let Some(interval) = k.interval {
        params = params.with_interval(interval);
    }
    if let Some(probes) = k.probes {
        params = params.with_retries(probes);
    }
    socket2::SockRef::from(tcp).set_tcp_keepalive(&params)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::config::cluster::{Discovery, LbPolicy};
    use crate::upstream::testing;

    #[test]
    fn a_retry_avoiding_previous_hosts_takes_one_not_tried_while_there_is_one() {
        for lb in [
            LbPolicy::LeastRequest,
            LbPolicy::Random,
            LbPolicy::RoundRobin,
        ] {
            let mut cluster = testing::cluster("backend", 10001);
            cluster.lb = lb;
            if let Discovery::Static(assignment) = &mut cluster.discovery {
                let mut second = assignment.groups[0].endpoints[0].clone();
                second.port = 10002;
                assignment.groups[0].endpoints.push(second);
            }
            let config = Arc::new(testing::config([cluster]));
            let runtime = testing::runtime(&config);
            let backend = runtime.clusters["backend"].clone();
            let first = backend.priorities[0][0].clone();
            for _ in 0..50 {
                let picked = backend
                    .pick_avoiding(std::slice::from_ref(&first), None)
                    .unwrap();
                assert_eq!(picked.port, 10002, "{lb:?}");
            }
            // Every host tried: any host will do, rather than none.
            let all = backend.priorities[0].clone();
            assert!(backend.pick_avoiding(&all, None).is_some());
        }
    }
}
