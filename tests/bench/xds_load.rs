//! `isthmus-xds-load`: the control plane benchmark. It writes a synthetic mesh (services,
//! endpoints, one workload per simulated proxy), starts `isthmusd` on it, connects that many
//! delta-ADS clients that behave like Envoy (wildcard LDS/CDS, then the RDS, EDS and SDS names
//! those reference, ACKing every response), then changes the configuration and measures how
//! long every client takes to get the change (the time of its ACK), how much CPU `isthmusd`
//! spends on a push, and its peak RSS.
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
    /// Where isthmusd logs (default: a temporary directory).
    #[arg(long)]
    log: Option<PathBuf>,
    /// The isthmusd binary; default: next to this one.
    #[arg(long)]
    isthmusd: Option<PathBuf>,
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
                "  - {{address: 10.{}.{}.{}, serviceAccount: svc-{s}}}",
                (n >> 16) & 255,
                (n >> 8) & 255,
                n & 255
            );
        }
    }
    for c in 0..args.clients {
        let _ = write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: client-{c}, namespace: bench}}\nspec: {{address: 127.1.{}.{}, labels: {{app: client}}, serviceAccount: client}}\n",
            (c >> 8) & 255,
            c & 255
        );
    }
    y
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
    clients: usize,
    type_url: &str,
    name: &str,
    since: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut latency = vec![None; clients];
    let mut seen: Vec<BTreeSet<String>> = vec![BTreeSet::new(); clients];
    let mut done = 0;
    let deadline = since + Duration::from_secs(120);
    while done < clients {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((id, t, names, at))) = tokio::time::timeout(left, events.recv()).await else {
            let missing: Vec<String> = (0..clients)
                .filter(|c| latency[*c].is_none())
                .take(3)
                .map(|c| format!("client {c} saw {:?}", seen[c]))
                .collect();
            bail!("only {done} of {clients} clients got {name} within 120 s; {missing:?}");
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
    write_atomic(&config, "mesh.yaml", &mesh_yaml(&args))?;
    let isthmusd = match &args.isthmusd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("isthmusd"),
    };
    let child = Command::new(&isthmusd)
        .arg("--config-dir")
        .arg(&config)
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
    let mut xds = None;
    for _ in 0..600 {
        if let Ok(addresses) = Addresses::read(&state) {
            xds = addresses.xds_plaintext.map(|a| a.to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let xds = xds.context("isthmusd did not start")?;
    println!(
        "mesh: {} services, {} endpoints, {} clients; isthmusd {}",
        args.services,
        args.services * args.endpoints_per_service,
        args.clients,
        isthmusd.display()
    );

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
    let last_svc = format!("outbound|80||svc-{}.bench.local", args.services - 1);
    let initial = converge(&mut events, args.clients, ENDPOINT, &last_svc, start).await?;
    println!(
        "initial sync of all clients: {:.2} s, isthmusd CPU {:.2} s, RSS {:.0} MiB",
        percentile(&initial, 100.0).as_secs_f64(),
        cpu_seconds(pid) - cpu_before,
        rss_mib(pid, "VmRSS:")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    while events.try_recv().is_ok() {}

    let mut report = String::new();
    for kind in ["endpoint", "route"] {
        let mut all = Vec::new();
        let mut cpu = Vec::new();
        for round in 0..args.changes {
            let svc = (round * 7919) % args.services;
            let host = format!("svc-{svc}.bench.local");
            let cpu_before = cpu_seconds(pid);
            let t0 = Instant::now();
            let latencies = if kind == "endpoint" {
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
                converge(
                    &mut events,
                    args.clients,
                    ENDPOINT,
                    &format!("outbound|80||{host}"),
                    t0,
                )
                .await?
            } else {
                let yaml = format!(
                    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: route-{round}, namespace: bench}}\nspec:\n  hosts: [{host}]\n  http:\n  - timeout: {}s\n    route: [{{destination: {{host: {host}}}}}]\n",
                    round + 1
                );
                write_atomic(&config, "routes.yaml", &yaml)?;
                converge(&mut events, args.clients, ROUTE, "outbound", t0).await?
            };
            // Let the push finish everywhere before reading the CPU it cost.
            tokio::time::sleep(Duration::from_millis(500)).await;
            cpu.push(cpu_seconds(pid) - cpu_before);
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
    drop(daemon);
    // Clients are mid-stream; end here rather than unwinding them.
    std::process::exit(0)
}
