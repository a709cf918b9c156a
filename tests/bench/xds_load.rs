//! `isthmus-xds-load`: the control plane benchmark. It writes a synthetic mesh (services,
//! endpoints, one workload per simulated proxy), starts `isthmusd` on it, connects that many
//! delta-ADS clients that behave like Envoy (wildcard LDS/CDS, then the RDS, EDS and SDS names
//! those reference, ACKing every response), then changes the configuration and measures how
//! long every client takes to get the change (the time of its ACK), how much CPU `isthmusd`
//! spends on a push, and its peak RSS.
//!
//! `--source kubernetes` serves the same mesh from an in-process test API server
//! (`tests/support/test_api_server.rs`) as Services, EndpointSlices and Pods instead: `isthmusd`
//! runs with `--config-source kubernetes`, the endpoint change is an `EndpointSlice` whose
//! address changed, and the API server requests of the initial sync and of each change are
//! counted.
//!
//! `cargo build --release --workspace --bins && target/release/isthmus-xds-load`
//! (`--help` for the sizes). Results: docs/benchmarks.md.

// A load program measures wall-clock time on purpose.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::print_stdout
)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use isthmus_controlplane::daemon::Addresses;
use isthmus_e2e::test_api_server::TestApiServer;
use isthmus_proto::envoy::envoy::config::core::v3::Node;
use isthmus_proto::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use isthmus_proto::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints_per_service: usize,
    /// Simulated proxies (delta ADS streams, one connection each).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Changes of each kind (endpoint, route) to measure.
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// How long every client may take to get a change, the initial sync included (a mesh of
    /// 5,000 services and 2,000 proxies syncs in minutes on two cores).
    #[arg(long, default_value_t = 120)]
    deadline_seconds: u64,
    /// Where isthmusd logs (default: a temporary directory).
    #[arg(long)]
    log: Option<PathBuf>,
    /// The isthmusd binary; default: next to this one.
    #[arg(long)]
    isthmusd: Option<PathBuf>,
    /// Where the mesh comes from: a configuration directory, or an in-process test API server
    /// (`isthmusd --config-source kubernetes`).
    #[arg(long, value_enum, default_value = "directory")]
    source: Source,
    /// Kubernetes mode: Services without cluster IPs (`clusterIP` left out), like the
    /// directory mode's `ServiceEntry`s, which have no addresses. By default each Service has
    /// one, as in a cluster, and its listeners and routes match it.
    #[arg(long)]
    no_cluster_ips: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Source {
    Directory,
    Kubernetes,
}

/// The namespace of every object of the synthetic mesh.
const NAMESPACE: &str = "bench";

/// Service `s`'s host name: a `ServiceEntry` host, or the Kubernetes `Service`'s name.
fn host(source: Source, s: usize) -> String {
    match source {
        Source::Directory => format!("svc-{s}.{NAMESPACE}.local"),
        Source::Kubernetes => format!("svc-{s}.{NAMESPACE}.svc.cluster.local"),
    }
}

/// The address of the `n`th endpoint of the mesh.
fn endpoint_ip(n: usize) -> String {
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

/// The address of client `c`'s workload.
fn client_ip(c: usize) -> String {
    format!("127.1.{}.{}", (c >> 8) & 255, c & 255)
}

/// What a client saw: (client, type, resource names, when).
type Event = (usize, String, Vec<String>, Instant);

fn mesh_yaml(args: &Args) -> String {
    let mut y = String::new();
    for s in 0..args.services {
        let _ = write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{s}, namespace: bench}}\nspec:\n  hosts: [svc-{s}.bench.local]\n  location: MESH_INTERNAL\n  ports: [{{number: 80, name: http}}]\n  endpoints:\n"
        );
        for e in 0..args.endpoints_per_service {
            let n = s * args.endpoints_per_service + e;
            let _ = writeln!(
                y,
                "  - {{address: {}, serviceAccount: svc-{s}}}",
                endpoint_ip(n)
            );
        }
    }
    for c in 0..args.clients {
        let _ = write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: client-{c}, namespace: bench}}\nspec: {{address: {}, labels: {{app: client}}, serviceAccount: client}}\n",
            client_ip(c)
        );
    }
    y
}

/// Service `s`'s `EndpointSlice`: its endpoints at their Pods' addresses, each naming its Pod;
/// `moved` puts endpoint 0 at another address.
fn slice_yaml(args: &Args, s: usize, moved: Option<&str>) -> String {
    let mut y = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{s}-slice\n  namespace: {NAMESPACE}\n  labels: {{kubernetes.io/service-name: svc-{s}}}\naddressType: IPv4\nports: [{{name: http, port: 80, protocol: TCP}}]\nendpoints:\n"
    );
    for e in 0..args.endpoints_per_service {
        let n = s * args.endpoints_per_service + e;
        let address = match moved {
            Some(a) if e == 0 => a.to_owned(),
            _ => endpoint_ip(n),
        };
        let _ = write!(
            y,
            "- addresses: [{address}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  targetRef: {{kind: Pod, name: svc-{s}-{e}, namespace: {NAMESPACE}}}\n"
        );
    }
    y
}

/// A Pod (without its status, which the kubelet would write: see [`fill_cluster`]).
fn pod_yaml(name: &str, app: &str, service_account: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NAMESPACE}, labels: {{app: {app}}}}}\nspec:\n  serviceAccountName: {service_account}\n  containers: [{{name: app, image: app}}]\n"
    )
}

/// The synthetic mesh as a cluster's objects: per service a `Service` (with a cluster IP) and
/// one `EndpointSlice` whose endpoints are Pods running as `svc-N`, and per client a Pod
/// `client-N` (the workload its node id names). Written as multi-document YAML, 1,000
/// documents at a time (the YAML parser's limit per input is 1,024); Pods then get their IP
/// through the `status` subresource, as from the kubelet. Returns how many objects were written.
fn fill_cluster(api: &TestApiServer, args: &Args) -> anyhow::Result<usize> {
    let mut docs = vec![format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n"
    )];
    let mut pods = Vec::new();
    for s in 0..args.services {
        let cluster_ip = if args.no_cluster_ips {
            String::new()
        } else {
            let ip = format!("10.96.{}.{}", (s >> 8) & 255, s & 255);
            format!("  clusterIP: {ip}\n  clusterIPs: [{ip}]\n")
        };
        docs.push(format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: {NAMESPACE}, labels: {{app: svc-{s}}}}}\nspec:\n{cluster_ip}  selector: {{app: svc-{s}}}\n  ports: [{{name: http, port: 80, targetPort: 80}}]\n",
        ));
        docs.push(slice_yaml(args, s, None));
        for e in 0..args.endpoints_per_service {
            let name = format!("svc-{s}-{e}");
            docs.push(pod_yaml(&name, &format!("svc-{s}"), &format!("svc-{s}")));
            pods.push((name, endpoint_ip(s * args.endpoints_per_service + e)));
        }
    }
    for c in 0..args.clients {
        let name = format!("client-{c}");
        docs.push(pod_yaml(&name, "client", "client"));
        pods.push((name, client_ip(c)));
    }
    for batch in docs.chunks(1000) {
        api.apply_yaml(&batch.concat())?;
    }
    for (name, ip) in &pods {
        api.set_status(
            "Pod",
            Some(NAMESPACE),
            name,
            serde_json::json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}),
        )?;
    }
    Ok(docs.len())
}

fn kubeconfig(dir: &Path, api: &TestApiServer) -> anyhow::Result<PathBuf> {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster: {{server: \"{}\"}}\nusers:\n- name: isthmusd\n  user: {{token: isthmusd-token}}\ncontexts:\n- name: bench\n  context: {{cluster: bench, user: isthmusd}}\ncurrent-context: bench\n",
        api.url()
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// API server requests by what they are: lists (and gets), watches, the status Lease's reads
/// and renewals, other writes.
#[derive(Debug, Default, Clone, Copy)]
struct Requests {
    lists: usize,
    watches: usize,
    lease: usize,
    writes: usize,
}

impl Requests {
    fn of(requests: &[(String, String)]) -> Self {
        let mut r = Self::default();
        for (method, path) in requests {
            if path.contains("/leases") {
                r.lease += 1;
            } else if method != "GET" {
                r.writes += 1;
            } else if path.contains("watch=true") || path.contains("watch=1") {
                r.watches += 1;
            } else {
                r.lists += 1;
            }
        }
        r
    }

    /// Every request but the Lease's (which are periodic, not caused by a change).
    fn mesh(&self) -> usize {
        self.lists + self.watches + self.writes
    }
}

impl std::fmt::Display for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} lists/gets, {} watches, {} other writes; status Lease: {}",
            self.lists, self.watches, self.writes, self.lease
        )
    }
}

/// `GET path` on isthmusd's debug port; the body.
async fn debug_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (_, body) = text.split_once("\r\n\r\n").context("an HTTP response")?;
    Ok(body.to_owned())
}

fn write_atomic(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

/// Resident set, MiB: `VmHWM` (peak) or `VmRSS` (now).
fn rss_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn client(
    id: usize,
    addr: String,
    events: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let mut ads = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await?
        .max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(64);
    let node = Node {
        id: format!("sidecar~127.0.0.1~client-{id}.bench~bench.svc.cluster.local"),
        ..Default::default()
    };
    let request = |type_url: &str, subscribe: Vec<String>| DeltaDiscoveryRequest {
        type_url: type_url.to_owned(),
        resource_names_subscribe: subscribe,
        ..Default::default()
    };
    tx.send(DeltaDiscoveryRequest {
        node: Some(node),
        ..request(CLUSTER, vec![])
    })
    .await?;
    tx.send(request(LISTENER, vec![])).await?;
    tx.send(request(SECRET, vec!["default".into(), "ROOTCA".into()]))
        .await?;
    let mut stream = ads
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut subscribed: BTreeSet<String> = BTreeSet::new();
    while let Some(response) = stream.message().await? {
        let DeltaDiscoveryResponse {
            type_url,
            nonce,
            resources,
            ..
        } = response;
        let names: Vec<String> = resources.iter().map(|r| r.name.clone()).collect();
        tx.send(DeltaDiscoveryRequest {
            response_nonce: nonce,
            ..request(&type_url, vec![])
        })
        .await?;
        // Like Envoy: follow what clusters and listeners reference.
        let follow: Vec<String> = match type_url.as_str() {
            CLUSTER => names
                .iter()
                .filter(|n| n.starts_with("outbound|"))
                .cloned()
                .collect(),
            LISTENER => vec!["outbound".into()],
            _ => Vec::new(),
        };
        let new: Vec<String> = follow
            .into_iter()
            .filter(|n| subscribed.insert(n.clone()))
            .collect();
        if !new.is_empty() {
            let t = if type_url == CLUSTER { ENDPOINT } else { ROUTE };
            tx.send(request(t, new)).await?;
        }
        let _ = events.send((id, type_url, names, Instant::now()));
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Waits until every client reported `name` of `type_url` after `since`; per-client latency.
async fn converge(
    events: &mut mpsc::UnboundedReceiver<Event>,
    (clients, limit): (usize, Duration),
    type_url: &str,
    name: &str,
    since: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut latency = vec![None; clients];
    let mut seen: Vec<BTreeSet<String>> = vec![BTreeSet::new(); clients];
    let mut done = 0;
    let deadline = since + limit;
    while done < clients {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((id, t, names, at))) = tokio::time::timeout(left, events.recv()).await else {
            let missing: Vec<String> = (0..clients)
                .filter(|c| latency[*c].is_none())
                .take(3)
                .map(|c| format!("client {c} saw {:?}", seen[c]))
                .collect();
            bail!("only {done} of {clients} clients got {name} within {limit:?}; {missing:?}");
        };
        seen[id].insert(format!(
            "{} ({})",
            t.rsplit('.').next().unwrap_or_default(),
            names.len()
        ));
        if at >= since && t == type_url && names.iter().any(|n| n == name) && latency[id].is_none()
        {
            latency[id] = Some(at - since);
            done += 1;
        }
    }
    let mut all: Vec<Duration> = latency.into_iter().flatten().collect();
    all.sort();
    Ok(all)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&config)?;
    let api = match args.source {
        Source::Directory => {
            write_atomic(&config, "mesh.yaml", &mesh_yaml(&args))?;
            None
        }
        Source::Kubernetes => {
            // Served by this program's runtime; filled before isthmusd starts, so its initial
            // list is the whole mesh.
            let api = TestApiServer::start().await?;
            let t0 = Instant::now();
            let objects = fill_cluster(&api, &args)?;
            println!(
                "test API server {}: {objects} objects written in {:.2} s (not part of isthmusd's figures)",
                api.url(),
                t0.elapsed().as_secs_f64()
            );
            Some(api)
        }
    };
    let isthmusd = match &args.isthmusd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("isthmusd"),
    };
    let mut command = Command::new(&isthmusd);
    match &api {
        None => command.arg("--config-dir").arg(&config),
        Some(api) => command
            .args(["--config-source", "kubernetes", "--kubeconfig"])
            .arg(kubeconfig(dir.path(), api)?),
    };
    let requests_before = api.as_ref().map_or(0, |a| a.requests().len());
    let spawned = Instant::now();
    let child = command
        .arg("--state-dir")
        .arg(&state)
        .args(["--trust-domain", "bench.local"])
        .args(["--grpc-addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0"])
        .args(["--xds-plaintext-addr", "127.0.0.1:0"])
        .args(["--federation-addr", "127.0.0.1:0"])
        .env(
            "RUST_LOG",
            std::env::var("ISTHMUSD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(
            args.log
                .clone()
                .unwrap_or_else(|| dir.path().join("isthmusd.log")),
        )?)
        .spawn()
        .with_context(|| format!("starting {}", isthmusd.display()))?;
    let daemon = Daemon { child };
    let pid = daemon.child.id();
    let mut bound = None;
    for _ in 0..1200 {
        if let Ok(addresses) = Addresses::read(&state) {
            bound = Some(addresses);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bound = bound.context("isthmusd did not start")?;
    let xds = bound
        .xds_plaintext
        .map(|a| a.to_string())
        .context("no plaintext xDS address")?;
    // The first applied configuration: in Kubernetes mode, once every kind is listed.
    let mut status = serde_json::Value::Null;
    let first_config = loop {
        if let Ok(body) = debug_get(bound.debug, "/debug/config").await
            && let Ok(s) = serde_json::from_str::<serde_json::Value>(&body)
        {
            status = s;
            if status["version"].as_u64().is_some_and(|v| v >= 1) {
                break spawned.elapsed();
            }
        }
        if spawned.elapsed() > Duration::from_secs(120) {
            bail!("isthmusd applied no configuration within 120 s: {status}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let initial_requests = api
        .as_ref()
        .map(|a| Requests::of(&a.requests()[requests_before..]));
    println!(
        "mesh: {} services, {} endpoints, {} clients, from {:?}; isthmusd {}",
        args.services,
        args.services * args.endpoints_per_service,
        args.clients,
        args.source,
        isthmusd.display()
    );
    println!(
        "isthmusd start to first applied configuration: {:.2} s (resources {}, cluster {})",
        first_config.as_secs_f64(),
        status["resources"],
        status["cluster"]
    );
    if let Some(r) = &initial_requests {
        println!("API server requests until then: {r}");
    }

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let start = Instant::now();
    let cpu_before = cpu_seconds(pid);
    let reconnects = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for id in 0..args.clients {
        let (addr, events, reconnects) = (xds.clone(), events_tx.clone(), reconnects.clone());
        tokio::spawn(async move {
            // Like Envoy: a broken stream is re-established after a short back-off.
            loop {
                if let Err(e) = client(id, addr.clone(), events.clone()).await
                    && reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3
                {
                    eprintln!("client {id}: {e:#} (reconnecting)");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        // Proxies start over seconds, not in the same millisecond: 500 per second here.
        if id % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let wait = (args.clients, Duration::from_secs(args.deadline_seconds));
    let last_svc = format!("outbound|80||{}", host(args.source, args.services - 1));
    let initial = converge(&mut events, wait, ENDPOINT, &last_svc, start).await?;
    let initial_sync = percentile(&initial, 100.0);
    let initial_rss = rss_mib(pid, "VmRSS:");
    println!(
        "initial sync of all clients: {:.2} s, isthmusd CPU {:.2} s, RSS {:.0} MiB",
        initial_sync.as_secs_f64(),
        cpu_seconds(pid) - cpu_before,
        initial_rss
    );
    if let Some(api) = &api {
        println!(
            "API server requests from isthmusd's start to the clients' initial sync: {}",
            Requests::of(&api.requests()[requests_before..])
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    while events.try_recv().is_ok() {}

    let mut report = String::new();
    let mut per_change: Vec<(String, Vec<Requests>)> = Vec::new();
    for kind in ["endpoint", "route"] {
        let mut all = Vec::new();
        let mut cpu = Vec::new();
        let mut requests = Vec::new();
        for round in 0..args.changes {
            let svc = (round * 7919) % args.services;
            let host = host(args.source, svc);
            let cpu_before = cpu_seconds(pid);
            let requests_before = api.as_ref().map_or(0, |a| a.requests().len());
            let t0 = Instant::now();
            let latencies = if kind == "endpoint" {
                match &api {
                    None => {
                        // Add an endpoint to one service.
                        let anchor = format!(
                            "hosts: [{host}]\n  location: MESH_INTERNAL\n  ports: [{{number: 80, name: http}}]\n  endpoints:\n"
                        );
                        let mesh = mesh_yaml(&args).replacen(
                            &anchor,
                            &format!(
                                "{anchor}  - {{address: 10.200.{round}.1, serviceAccount: svc-{svc}}}\n"
                            ),
                            1,
                        );
                        write_atomic(&config, "mesh.yaml", &mesh)?;
                    }
                    Some(api) => {
                        // Move one endpoint of one service's slice to another address.
                        let moved = format!("10.200.{}.{}", (round >> 8) & 255, round & 255);
                        api.apply_yaml(&slice_yaml(&args, svc, Some(&moved)))?;
                    }
                }
                converge(
                    &mut events,
                    wait,
                    ENDPOINT,
                    &format!("outbound|80||{host}"),
                    t0,
                )
                .await?
            } else {
                // The directory's `routes.yaml` is replaced by one with another route; the
                // cluster's one `VirtualService` is replaced likewise (one MODIFIED event).
                let name = match args.source {
                    Source::Directory => format!("route-{round}"),
                    Source::Kubernetes => "route".to_owned(),
                };
                let yaml = format!(
                    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n  hosts: [{host}]\n  http:\n  - timeout: {}s\n    route: [{{destination: {{host: {host}}}}}]\n",
                    round + 1
                );
                match &api {
                    None => write_atomic(&config, "routes.yaml", &yaml)?,
                    Some(api) => api.apply_yaml(&yaml)?,
                }
                converge(&mut events, wait, ROUTE, "outbound", t0).await?
            };
            // Let the push finish everywhere before reading the CPU it cost.
            tokio::time::sleep(Duration::from_millis(500)).await;
            cpu.push(cpu_seconds(pid) - cpu_before);
            if let Some(api) = &api {
                requests.push(Requests::of(&api.requests()[requests_before..]));
            }
            all.extend(latencies);
            while events.try_recv().is_ok() {}
        }
        all.sort();
        let mean_cpu = cpu.iter().sum::<f64>() / cpu.len().max(1) as f64;
        let line = format!(
            "| {kind} change | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} s |",
            args.changes,
            percentile(&all, 50.0).as_secs_f64() * 1000.0,
            percentile(&all, 99.0).as_secs_f64() * 1000.0,
            percentile(&all, 100.0).as_secs_f64() * 1000.0,
            mean_cpu,
        );
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
        per_change.push((kind.to_owned(), requests));
    }
    println!(
        "isthmusd RSS: peak {:.0} MiB, after the changes {:.0} MiB",
        rss_mib(pid, "VmHWM:"),
        rss_mib(pid, "VmRSS:")
    );
    println!(
        "client reconnections: {}",
        reconnects.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "\n| change | rounds | p50 to ACK | p99 to ACK | last client | isthmusd CPU per push |\n|---|---|---|---|---|---|\n{report}"
    );
    if api.is_some() {
        for (kind, requests) in &per_change {
            let counts: Vec<String> = requests.iter().map(|r| r.mesh().to_string()).collect();
            let relists: usize = requests.iter().map(|r| r.lists).sum();
            println!(
                "API server requests per {kind} change (without the status Lease's): [{}]; lists among them: {relists}",
                counts.join(", ")
            );
            for (round, r) in requests.iter().enumerate() {
                println!("  round {round}: {r}");
            }
        }
    }
    drop(daemon);
    // Clients are mid-stream; end here rather than unwinding them.
    std::process::exit(0)
}
