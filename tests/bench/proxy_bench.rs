//! `isthmus-proxy-bench`: latency, CPU and memory of a sidecar pair, side by side in one run:
//! no proxy (client -> app), an `isthmus-proxy` pair with its telemetry (Istio's standard
//! metrics and, with `--trace-sampling` above 0, tracing to a stand-in OTLP collector), the same
//! pair with `--telemetry off`, and an Envoy 1.40 pair (client sidecar -> mTLS -> server
//! sidecar -> app), all configured by one `isthmusd`: HTTP/1.1 and HTTP/2 with 1 KiB
//! responses, raw TCP with 1 KiB exchanges, and the maximum HTTP/1.1 throughput of each pair
//! pinned to one core. The run fails if the telemetry pair did not count the load in
//! `istio_requests_total` / `istio_tcp_*`, or the other pair did.
//!
//! The load is open-loop at a constant rate: each request has a scheduled send time, and its
//! latency is measured from that time, so a stalled proxy is charged for the requests that
//! queue behind it (no coordinated omission). Each proxy runs one worker thread. The set-ups
//! of a comparison take turns in slices of `--slice` seconds, so that the machine's drift
//! over a run weighs on all of them alike. Then the two `isthmus-proxy` pairs are loaded at
//! once (`--together-seconds`), their CPU read over the same slices: telemetry's cost, with
//! the machine's noise falling on both alike.
//!
//! `cargo build --release --workspace --bins && target/release/isthmus-proxy-bench`
//! (`--help` for rate, duration, connections). Results: docs/benchmarks.md.

// A load program measures wall-clock time on purpose.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::print_stdout,
    clippy::unwrap_used
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_e2e::mesh::{bootstrap, mesh_yaml, workload_yaml, write};
use isthmus_e2e::{Isthmusd, free_port};

#[path = "load.rs"]
mod load;
use load::{
    Client, Protocol, Setup, TCP_MESSAGE, app, in_turns, proc_cpu_precise, rss_mib, slices,
    tcp_app, together,
};

#[derive(Debug, Parser)]
struct Args {
    /// Requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of measured load per set-up (after a warm-up of a second).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The set-ups of a comparison take turns in slices of this many seconds (direct, isthmus
    /// pair, Envoy pair, direct, ...), so that the machine's drift weighs on all alike.
    #[arg(long, default_value_t = 2)]
    slice: u64,
    /// Keep-alive connections from the load generator.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Response body size in bytes.
    #[arg(long, default_value_t = 1024)]
    body: usize,
    /// Seconds of the maximum-throughput run per pair (closed loop, each pair's two proxies
    /// pinned to CPU 1, the load generator and the application to CPU 0); 0 skips it.
    #[arg(long, default_value_t = 5)]
    throughput_seconds: u64,
    /// Seconds of the connection-churn run per pair: raw TCP clients that open a connection,
    /// exchange one message and close it, closed loop, pinned as the throughput run (each
    /// connection through a pair is a new mTLS handshake between its sidecars); 0 skips it.
    #[arg(long, default_value_t = 5)]
    churn_seconds: u64,
    /// Percentage of requests traced (`isthmusd --tracing-sampling`), the spans going to a
    /// stand-in OTLP/gRPC collector of this program; 0: no tracing configured. It is configured
    /// for every sidecar `isthmusd` serves, Envoy's included; `--telemetry off` turns it off in
    /// that `isthmus-proxy` pair.
    #[arg(long, default_value_t = 1.0)]
    trace_sampling: f64,
    /// Seconds of load on the two `isthmus-proxy` pairs at once (telemetry on and off, each at
    /// `--rate`), after the turns of each comparison: their CPU read over the same slices, so
    /// that the machine's noise falls on both alike; 0 skips it.
    #[arg(long, default_value_t = 20)]
    together_seconds: u64,
    /// Only these comparisons at `--rate` (for profiling one protocol); all three if none.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Compared>,
}

/// The comparisons at `--rate`, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Compared {
    Http1,
    Http2,
    Tcp,
}

impl Args {
    fn runs(&self, compared: Compared) -> bool {
        self.only.is_empty() || self.only.contains(&compared)
    }
}

/// The figures of one set-up.
struct Figures {
    name: &'static str,
    latency: Histogram<u64>,
    errors: u64,
    /// Proxy CPU seconds (client + server sidecar) during the measured load.
    cpu: f64,
    /// The same, turn by turn.
    cpu_turns: Vec<f64>,
    /// Resident set of the two sidecars (MiB), idle and after the load.
    rss_idle: f64,
    rss_load: f64,
}

/// Measures the set-ups in turns (`--slice`), with their pairs' memory before and after.
async fn measure_in_turns(setups: &[Setup<'_>], protocol: Protocol, args: &Args) -> Vec<Figures> {
    let rss = |pids: &[u32]| pids.iter().map(|p| rss_mib(*p)).sum::<f64>();
    let idle: Vec<f64> = setups.iter().map(|s| rss(s.pids)).collect();
    let turns = in_turns(
        setups,
        protocol,
        args.rate,
        args.connections,
        (args.seconds, args.slice),
    )
    .await;
    setups
        .iter()
        .zip(turns)
        .zip(idle)
        .map(|((s, t), rss_idle)| Figures {
            name: s.name,
            latency: t.latency,
            errors: t.errors,
            cpu: t.cpu,
            cpu_turns: t.cpu_turns,
            rss_idle,
            rss_load: rss(s.pids),
        })
        .collect()
}

/// Pins every thread of `pid` to `cpu` (`taskset`).
fn pin(pid: u32, cpu: u32) {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "taskset could not pin {pid}"
    );
}

/// What closed-loop `workers` (each answering its (done, errors)) did since `started`:
/// (per second, errors, the `pids`' CPU share of one core since `cpu_before`).
async fn closed_loop_figures(
    workers: Vec<tokio::task::JoinHandle<(u64, u64)>>,
    pids: &[u32],
    cpu_before: f64,
    started: Instant,
) -> (f64, u64, f64) {
    let (mut done, mut errors) = (0, 0);
    for w in workers {
        let (d, e) = w.await.unwrap();
        done += d;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = pids.iter().map(|p| proc_cpu_precise(*p)).sum::<f64>() - cpu_before;
    (done as f64 / elapsed, errors, cpu / elapsed)
}

/// Connection churn, closed loop: 32 clients, each opening a connection to `target`, writing
/// one `TCP_MESSAGE`, reading it back and closing, for `seconds`; (connections per second,
/// errors, proxy CPU share of one core).
async fn churn(target: SocketAddr, pids: &[u32], seconds: u64) -> (f64, u64, f64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let cpu_before: f64 = pids.iter().map(|p| proc_cpu_precise(*p)).sum();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..32 {
        workers.push(tokio::spawn(async move {
            let (mut done, mut errors) = (0u64, 0u64);
            let url = hyper::Uri::from_static("/");
            while Instant::now() < deadline {
                let ok = match Client::connect(target, Protocol::Tcp).await {
                    Ok(mut client) => client.get(&url, None).await,
                    Err(_) => false,
                };
                if ok {
                    done += 1;
                } else {
                    errors += 1;
                    // A refused connect would otherwise spin.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            (done, errors)
        }));
    }
    closed_loop_figures(workers, pids, cpu_before, started).await
}

/// Closed loop, as fast as it goes: `connections` clients sending back to back for
/// `seconds`; (requests per second, errors, proxy CPU share of one core).
async fn throughput(
    target: SocketAddr,
    url: &str,
    header: Option<(&'static str, &'static str)>,
    pids: &[u32],
    seconds: u64,
) -> (f64, u64, f64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let cpu_before: f64 = pids.iter().map(|p| proc_cpu_precise(*p)).sum();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..32 {
        let url: hyper::Uri = url.parse().unwrap();
        workers.push(tokio::spawn(async move {
            let (mut done, mut errors) = (0u64, 0u64);
            let mut client = None;
            while Instant::now() < deadline {
                if client.is_none() {
                    client = Client::connect(target, Protocol::Http1).await.ok();
                }
                let ok = match client.as_mut() {
                    Some(c) => c.get(&url, header).await,
                    None => false,
                };
                if ok {
                    done += 1;
                } else {
                    errors += 1;
                    client = None;
                }
            }
            (done, errors)
        }));
    }
    closed_loop_figures(workers, pids, cpu_before, started).await
}

fn wait_for_route(outbound: u16, url: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                "-x",
            ])
            .arg(format!("http://127.0.0.1:{outbound}"))
            .arg(url)
            .output()?;
        if out.stdout == b"200" {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("no route through the sidecar on port {outbound} to {url}")
}

/// An `isthmus-proxy` sidecar of this bench, killed on drop. Its telemetry is switched with
/// the environment (`ISTHMUS_TELEMETRY=on|off`, the `--telemetry` flag's variable), so that
/// both pairs start the same way and differ by that alone.
struct Sidecar {
    child: std::process::Child,
    admin: String,
    log: std::path::PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        // A profiler wrapping the proxy writes its profile when the proxy exits on SIGTERM.
        if std::env::var_os("ISTHMUS_BENCH_PROXY_WRAPPER").is_some() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    fn start(dir: &Path, name: &str, telemetry: bool, args: &[String]) -> Self {
        let admin = format!("127.0.0.1:{}", free_port());
        let log = dir.join(format!("{name}.log"));
        // `ISTHMUS_BENCH_PROXY_WRAPPER="valgrind --tool=callgrind"` runs each sidecar under a
        // profiler that counts instructions, which do not move with the machine's noise.
        let wrapper = std::env::var("ISTHMUS_BENCH_PROXY_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = std::process::Command::new(program);
                command.args(words).arg(isthmus_e2e::bin("isthmus-proxy"));
                command
            }
            None => std::process::Command::new(isthmus_e2e::bin("isthmus-proxy")),
        };
        let child = command
            .args(["--admin-addr", &admin])
            .args(args)
            .env("ISTHMUS_TELEMETRY", if telemetry { "on" } else { "off" })
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the proxy log"))
            .spawn()
            .expect("spawn isthmus-proxy");
        Self { child, admin, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An admin-port GET: (status, body).
    fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        isthmus_e2e::envoy::curl(&[&format!("http://{}{path}", self.admin)])
            .map_err(|e| anyhow::anyhow!("{}{path}: {e}", self.admin))
    }

    /// Waits up to `limit` for `/ready` to answer 200.
    fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if matches!(self.get("/ready"), Ok((200, _))) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!(
            "{} not ready after {limit:?}:\n{}",
            self.log.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

/// What the stand-in OTLP collector received: calls and bytes by the caller's `user-agent`.
#[derive(Default)]
struct Collector {
    by_agent: parking_lot::Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
}

/// A stand-in OTLP/gRPC collector on a loopback port: HTTP/2 with prior knowledge, every call
/// answered at once with an empty message and `grpc-status: 0` (a valid
/// `ExportTraceServiceResponse`); counts the calls and the bytes they carried.
async fn otlp_collector() -> (SocketAddr, Arc<Collector>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = Arc::new(Collector::default());
    let counts = collector.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counts = counts.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let counts = counts.clone();
                        async move {
                            let agent = request
                                .headers()
                                .get(hyper::header::USER_AGENT)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("(none)")
                                .to_owned();
                            let size = request
                                .into_body()
                                .collect()
                                .await
                                .map_or(0, |b| b.to_bytes().len());
                            {
                                let mut by_agent = counts.by_agent.lock();
                                let entry = by_agent.entry(agent).or_default();
                                entry.0 += 1;
                                entry.1 += size as u64;
                            }
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert(
                                "grpc-status",
                                hyper::header::HeaderValue::from_static("0"),
                            );
                            // One gRPC message: not compressed, 0 bytes long.
                            let frames = [
                                Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[0; 5]))),
                                Ok(Frame::trailers(trailers)),
                            ];
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(StreamBody::new(tokio_stream::iter(frames)))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, collector)
}

/// The sum of the samples of `name` (Prometheus text) whose labels contain `label`.
fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Checks that each sidecar of the telemetry pair counted the load in Istio's `metric` (with
/// its own `reporter`), and that the pair with `--telemetry off` has no such series; the
/// counts, as a line for the report.
fn check_istio_metric(
    metric: &str,
    on: [(&Sidecar, &str); 2],
    off: [&Sidecar; 2],
) -> anyhow::Result<String> {
    let scrape = |proxy: &Sidecar| -> anyhow::Result<String> {
        match proxy.get("/stats/prometheus")? {
            (200, body) => Ok(body),
            (status, body) => anyhow::bail!("/stats/prometheus: {status} {body}"),
        }
    };
    let mut counts = Vec::new();
    for (proxy, reporter) in on {
        let n = metric_sum(&scrape(proxy)?, metric, &format!("reporter=\"{reporter}\""));
        anyhow::ensure!(
            n > 0.0,
            "the telemetry pair's {reporter} sidecar has no {metric}{{reporter=\"{reporter}\"}}: its telemetry did not run"
        );
        counts.push(format!("{reporter} {n:.0}"));
    }
    for proxy in off {
        let text = scrape(proxy)?;
        anyhow::ensure!(
            !text.lines().any(|l| l.starts_with("istio_")),
            "the pair with --telemetry off exports Istio metrics"
        );
    }
    Ok(format!(
        "telemetry check: {metric} in the telemetry pair: {}; none in the pair with --telemetry off",
        counts.join(", ")
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let root: &Path = dir.path();
    let config = root.join("config");
    std::fs::create_dir_all(&config)?;
    let ip = "127.0.90";
    // The set-up's fixed addresses (the sidecars' inbound TCP listeners): a proxy left running
    // by an interrupted run would take the load of a set-up and make it fail.
    for last in 1..=6 {
        let taken = format!("{ip}.{last}:7000");
        anyhow::ensure!(
            std::net::TcpListener::bind(&taken).is_ok(),
            "{taken} is taken (a proxy left running by an earlier bench?)"
        );
    }
    let app_addr = app(args.body).await;
    // echo-v1 behind Envoy, echo-v2 behind isthmus-proxy, echo-v3 behind isthmus-proxy
    // --telemetry off; a client of each kind.
    let inbound = free_port();
    let mesh = mesh_yaml(ip, inbound);
    let subsets = "  - {name: v2, labels: {version: v2}}\n";
    anyhow::ensure!(mesh.contains(subsets), "mesh_yaml's subsets changed");
    let mesh = mesh.replace(
        subsets,
        &format!("{subsets}  - {{name: v3, labels: {{version: v3}}}}\n"),
    );
    write(
        &config,
        "mesh.yaml",
        &format!(
            "{mesh}---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-v3, namespace: shop}}
spec: {{address: {ip}.5, labels: {{app: echo, version: v3}}, serviceAccount: echo, ports: {{http: {inbound}}}}}
"
        ),
    );
    write(
        &config,
        "client-b.yaml",
        &workload_yaml("client-b", &format!("{ip}.4"), "app: client", "client"),
    );
    write(
        &config,
        "client-c.yaml",
        &workload_yaml("client-c", &format!("{ip}.6"), "app: client", "client"),
    );
    let tcp_service = |version: &str| {
        format!(
            "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tcp-{version}, namespace: shop}}
spec:
  hosts: [tcp-{version}.shop.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 7000, name: tcp-echo}}]
  workloadSelector: {{labels: {{version: {version}}}}}
"
        )
    };
    write(
        &config,
        "routes.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: shop}}
spec:
  hosts: [echo.shop.local]
  http:
  - match: [{{headers: {{x-server: {{exact: isthmus}}}}}}]
    route: [{{destination: {{host: echo.shop.local, subset: v2}}}}]
  - match: [{{headers: {{x-server: {{exact: isthmus-off}}}}}}]
    route: [{{destination: {{host: echo.shop.local, subset: v3}}}}]
  - route: [{{destination: {{host: echo.shop.local, subset: v1}}}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: shop}}
spec: {{mtls: {{mode: STRICT}}}}
{}{}{}",
            tcp_service("v1"),
            tcp_service("v2"),
            tcp_service("v3"),
        ),
    );
    let (collector_addr, collector) = otlp_collector().await;
    let collector_endpoint = collector_addr.to_string();
    let sampling = args.trace_sampling.to_string();
    let tracing: Vec<&str> = if args.trace_sampling > 0.0 {
        vec![
            "--tracing-otlp-endpoint",
            &collector_endpoint,
            "--tracing-sampling",
            &sampling,
        ]
    } else {
        Vec::new()
    };
    let daemon = Isthmusd::start(root, "red.local", &tracing).context("isthmusd")?;
    let xds = daemon.xds.to_string();
    let tcp_addr = tcp_app().await;
    // TCP: each client sidecar has a local port for its pair's TCP service.
    let (envoy_tcp, isthmus_tcp, off_tcp) = (free_port(), free_port(), free_port());
    let envoy = |name: &str, args: &[&str]| {
        let file = bootstrap(root, name, args);
        isthmus_e2e::envoy::Envoy::start(root, name, &file).expect("start Envoy")
    };
    let envoy_server = envoy(
        "echo-v1",
        &[
            "--workload",
            "echo-v1",
            "--address",
            &format!("{ip}.1"),
            "--xds-address",
            &xds,
            "--app-port",
            &format!("http={}", app_addr.port()),
            "--app-port",
            &format!("tcp-echo={}", tcp_addr.port()),
        ],
    );
    let envoy_out = free_port();
    let envoy_client = envoy(
        "client",
        &[
            "--workload",
            "client",
            "--address",
            &format!("{ip}.3"),
            "--xds-address",
            &xds,
            "--outbound-port",
            &envoy_out.to_string(),
            "--outbound-tcp-port",
            &format!("tcp-v1.shop.local:7000={envoy_tcp}"),
        ],
    );
    let sidecar = |name: &str, ip: String, telemetry: bool, metadata: Vec<String>| {
        let mut a = vec![
            "--node-id".to_owned(),
            format!("sidecar~{ip}~{name}.shop~shop.svc.cluster.local"),
            "--xds-plaintext".to_owned(),
            "--xds-address".to_owned(),
            xds.clone(),
            "--concurrency".to_owned(),
            "1".to_owned(),
        ];
        for m in metadata {
            a.extend(["--metadata".to_owned(), m]);
        }
        Sidecar::start(root, name, telemetry, &a)
    };
    let server_metadata = || {
        vec![
            format!(
                "APP_PORTS=http={},tcp-echo={}",
                app_addr.port(),
                tcp_addr.port()
            ),
            format!("OUTBOUND_PORT={}", free_port()),
        ]
    };
    let isthmus_server = sidecar("echo-v2", format!("{ip}.2"), true, server_metadata());
    let isthmus_out = free_port();
    let isthmus_client = sidecar(
        "client-b",
        format!("{ip}.4"),
        true,
        vec![
            format!("OUTBOUND_PORT={isthmus_out}"),
            format!("OUTBOUND_TCP_PORTS=tcp-v2.shop.local:7000={isthmus_tcp}"),
        ],
    );
    let off_server = sidecar("echo-v3", format!("{ip}.5"), false, server_metadata());
    let off_out = free_port();
    let off_client = sidecar(
        "client-c",
        format!("{ip}.6"),
        false,
        vec![
            format!("OUTBOUND_PORT={off_out}"),
            format!("OUTBOUND_TCP_PORTS=tcp-v3.shop.local:7000={off_tcp}"),
        ],
    );
    let url = "http://echo.shop.local:8080/";
    for outbound in [envoy_out, isthmus_out, off_out] {
        wait_for_route(outbound, url)?;
    }
    for proxy in [&isthmus_server, &isthmus_client, &off_server, &off_client] {
        proxy.wait_ready(Duration::from_secs(20))?;
    }
    if args.trace_sampling > 0.0 {
        // The telemetry pair must have taken the HCM `tracing` (a refused listener would
        // leave it without the route, and `/ready` would not say so).
        let dump = isthmus_client.get("/config_dump")?.1;
        anyhow::ensure!(
            dump.contains("isthmus-otlp"),
            "the telemetry pair's client sidecar has no isthmus-otlp cluster: tracing is not configured"
        );
    }
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    println!(
        "telemetry pair: Istio's standard metrics{}; Envoy pair: Envoy's own stats{}",
        if args.trace_sampling > 0.0 {
            format!(
                " and tracing at {} % to a stand-in OTLP collector ({collector_endpoint})",
                args.trace_sampling
            )
        } else {
            ", no tracing".to_owned()
        },
        if args.trace_sampling > 0.0 {
            format!(" and the same tracing at {} %", args.trace_sampling)
        } else {
            String::new()
        },
    );

    let isthmus_pids = [isthmus_client.pid(), isthmus_server.pid()];
    let off_pids = [off_client.pid(), off_server.pid()];
    let envoy_pids = [envoy_client.pid(), envoy_server.pid()];
    for (protocol, compared, label) in [
        (Protocol::Http1, Compared::Http1, "HTTP/1.1"),
        (
            Protocol::Http2,
            Compared::Http2,
            "HTTP/2 (h2c from the client to its sidecar and to the app; HTTP/1.1 over mTLS between the sidecars)",
        ),
    ] {
        if !args.runs(compared) {
            continue;
        }
        println!(
            "\n{label}: {} rps for {} s per set-up in turns of {} s, {} connections, {} B responses; each proxy on one worker thread",
            args.rate,
            slices(args.seconds, args.slice).1,
            slices(args.seconds, args.slice).0,
            args.connections,
            args.body
        );
        let setups = [
            Setup {
                name: "direct",
                target: app_addr,
                url: "/",
                header: None,
                pids: &[],
            },
            // One route table for all clients: the isthmus pairs are chosen by a header.
            Setup {
                name: "isthmus-proxy pair, telemetry on",
                target: local(isthmus_out),
                url,
                header: Some(("x-server", "isthmus")),
                pids: &isthmus_pids,
            },
            Setup {
                name: "isthmus-proxy pair, --telemetry off",
                target: local(off_out),
                url,
                header: Some(("x-server", "isthmus-off")),
                pids: &off_pids,
            },
            Setup {
                name: "Envoy pair",
                target: local(envoy_out),
                url,
                header: None,
                pids: &envoy_pids,
            },
        ];
        let figures = measure_in_turns(&setups, protocol, &args).await;
        report(&figures, &args);
        report_together(&setups, protocol, &args).await;
        println!(
            "{}",
            check_istio_metric(
                "istio_requests_total",
                [
                    (&isthmus_client, "source"),
                    (&isthmus_server, "destination")
                ],
                [&off_client, &off_server],
            )?
        );
    }

    if args.runs(Compared::Tcp) {
        println!(
            "\nRaw TCP ({TCP_MESSAGE} B written, {TCP_MESSAGE} B read back per request): {} rps for {} s per set-up in turns of {} s, {} connections; each proxy on one worker thread",
            args.rate,
            slices(args.seconds, args.slice).1,
            slices(args.seconds, args.slice).0,
            args.connections
        );
        let setups = [
            Setup {
                name: "direct",
                target: tcp_addr,
                url: "/",
                header: None,
                pids: &[],
            },
            Setup {
                name: "isthmus-proxy pair, telemetry on",
                target: local(isthmus_tcp),
                url: "/",
                header: None,
                pids: &isthmus_pids,
            },
            Setup {
                name: "isthmus-proxy pair, --telemetry off",
                target: local(off_tcp),
                url: "/",
                header: None,
                pids: &off_pids,
            },
            Setup {
                name: "Envoy pair",
                target: local(envoy_tcp),
                url: "/",
                header: None,
                pids: &envoy_pids,
            },
        ];
        report(
            &measure_in_turns(&setups, Protocol::Tcp, &args).await,
            &args,
        );
        report_together(&setups, Protocol::Tcp, &args).await;
        println!(
            "{}",
            check_istio_metric(
                "istio_tcp_connections_opened_total",
                [
                    (&isthmus_client, "source"),
                    (&isthmus_server, "destination")
                ],
                [&off_client, &off_server],
            )?
        );
    }

    if args.throughput_seconds > 0 || args.churn_seconds > 0 {
        // The pair under test on CPU 1; this process (load generator and application) on 0.
        pin(std::process::id(), 0);
        for pid in isthmus_pids.iter().chain(&off_pids).chain(&envoy_pids) {
            pin(*pid, 1);
        }
    }
    if args.throughput_seconds > 0 {
        println!(
            "\nMaximum throughput, HTTP/1.1, 32 connections, closed loop, {} s; both proxies of a pair share CPU 1",
            args.throughput_seconds
        );
        println!("\n| set-up | requests/s | errors | proxy CPU (cores) |");
        println!("|---|---|---|---|");
        let runs = [
            (
                "isthmus-proxy pair, telemetry on",
                isthmus_out,
                Some(("x-server", "isthmus")),
                &isthmus_pids,
            ),
            (
                "isthmus-proxy pair, --telemetry off",
                off_out,
                Some(("x-server", "isthmus-off")),
                &off_pids,
            ),
            ("Envoy pair", envoy_out, None, &envoy_pids),
        ];
        let mut rates = Vec::new();
        for (name, port, header, pids) in runs {
            let _ = throughput(local(port), url, header, pids, 1).await;
            let (rps, errors, cpu) =
                throughput(local(port), url, header, pids, args.throughput_seconds).await;
            println!("| {name} | {rps:.0} | {errors} | {cpu:.2} |");
            rates.push(rps);
        }
        println!(
            "\nthroughput per core, telemetry on / off: {:.2}; isthmus-proxy (telemetry on) / Envoy: {:.2}",
            rates[0] / rates[1].max(1.0),
            rates[0] / rates[2].max(1.0)
        );
    }
    if args.churn_seconds > 0 {
        println!(
            "\nConnection churn, raw TCP: 32 clients each opening a connection, exchanging {TCP_MESSAGE} B and closing it, closed loop, {} s per pair (a new mTLS handshake between the sidecars per connection); both proxies of a pair share CPU 1",
            args.churn_seconds
        );
        println!(
            "\n| set-up | connections/s | errors | proxy CPU (cores) | connections/s per core |"
        );
        println!("|---|---|---|---|---|");
        let runs = [
            (
                "isthmus-proxy pair, telemetry on",
                isthmus_tcp,
                &isthmus_pids,
            ),
            ("isthmus-proxy pair, --telemetry off", off_tcp, &off_pids),
            ("Envoy pair", envoy_tcp, &envoy_pids),
        ];
        let mut per_core = Vec::new();
        for (name, port, pids) in runs {
            let _ = churn(local(port), pids, 1).await;
            let (rate, errors, cpu) = churn(local(port), pids, args.churn_seconds).await;
            let rate_per_core = rate / cpu.max(1e-9);
            println!("| {name} | {rate:.0} | {errors} | {cpu:.2} | {rate_per_core:.0} |");
            per_core.push(rate_per_core);
        }
        println!(
            "\nnew connections per second per core, isthmus-proxy (telemetry on) / Envoy: {:.2}; telemetry off / Envoy: {:.2}",
            per_core[0] / per_core[2].max(1e-9),
            per_core[1] / per_core[2].max(1e-9)
        );
        // Both resume TLS sessions (docs/identity.md); each one's counters say how many of the
        // pair's handshakes were resumed.
        let handshakes = |proxy: &Sidecar, side: &str| -> anyhow::Result<(f64, f64)> {
            let text = proxy.get("/stats/prometheus")?.1;
            let side = format!("side=\"{side}\"");
            Ok((
                metric_sum(&text, "isthmus_proxy_tls_handshakes_total", &side),
                metric_sum(
                    &text,
                    "isthmus_proxy_tls_handshakes_total",
                    &format!("{side},resumed=\"true\""),
                ),
            ))
        };
        for (name, client, server) in [
            ("telemetry on", &isthmus_client, &isthmus_server),
            ("telemetry off", &off_client, &off_server),
        ] {
            let (c, c_resumed) = handshakes(client, "upstream")?;
            let (s, s_resumed) = handshakes(server, "downstream")?;
            println!(
                "isthmus-proxy pair's TLS handshakes ({name}, the whole run): client sidecar {c:.0} of which {c_resumed:.0} resumed; server sidecar {s:.0} of which {s_resumed:.0} resumed"
            );
        }
        let ssl = |envoy: &isthmus_e2e::envoy::Envoy, what: &str| -> u64 {
            envoy
                .stats()
                .iter()
                .filter(|(name, _)| name.ends_with(&format!(".ssl.{what}")))
                .map(|(_, n)| n)
                .sum()
        };
        println!(
            "Envoy pair's TLS handshakes (the whole run): client sidecar {} of which {} resumed; server sidecar {} of which {} resumed",
            ssl(&envoy_client, "handshake"),
            ssl(&envoy_client, "session_reused"),
            ssl(&envoy_server, "handshake"),
            ssl(&envoy_server, "session_reused"),
        );
    }
    if args.trace_sampling > 0.0 {
        let by_agent = collector.by_agent.lock();
        println!(
            "\nstand-in OTLP collector, export calls by user-agent: {}",
            if by_agent.is_empty() {
                "none".to_owned()
            } else {
                by_agent
                    .iter()
                    .map(|(agent, (calls, bytes))| format!("{agent}: {calls} calls, {bytes} B"))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        );
    }
    Ok(())
}

fn report(all: &[Figures], args: &Args) {
    let q = |f: &Figures, p: f64| f.latency.value_at_quantile(p) as f64 / 1000.0;
    let direct = &all[0];
    println!(
        "\n| set-up | p50 ms | p90 ms | p99 ms | added p50 / p90 / p99 ms | errors | proxy CPU per 1,000 rps | RSS idle / load MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for f in all {
        let added = if std::ptr::eq(f, direct) {
            "—".to_owned()
        } else {
            format!(
                "{:.2} / {:.2} / {:.2}",
                q(f, 0.5) - q(direct, 0.5),
                q(f, 0.9) - q(direct, 0.9),
                q(f, 0.99) - q(direct, 0.99)
            )
        };
        let per_krps =
            f.cpu / slices(args.seconds, args.slice).1 as f64 / (args.rate as f64 / 1000.0);
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {added} | {} | {} | {} |",
            f.name,
            q(f, 0.5),
            q(f, 0.9),
            q(f, 0.99),
            f.errors,
            if f.cpu > 0.0 {
                format!("{per_krps:.3} vCPU")
            } else {
                "—".to_owned()
            },
            if f.rss_load > 0.0 {
                format!("{:.1} / {:.1}", f.rss_idle, f.rss_load)
            } else {
                "—".to_owned()
            },
        );
    }
    if let [direct, on, off, envoy] = all {
        let added = |f: &Figures| q(f, 0.99) - q(direct, 0.99);
        let ratios = Ratios::of(&on.cpu_turns, &off.cpu_turns);
        println!(
            "\nproxy CPU, telemetry on / off: {:.3} over the run; turn by turn (each on-turn against the off-turn right after it): {}",
            on.cpu / off.cpu.max(1e-9),
            ratios.summary(),
        );
        println!(
            "added p99 ms: telemetry on {:.2}, off {:.2}, Envoy {:.2}; proxy CPU / Envoy's: telemetry on {:.2}, off {:.2}; RSS under load, telemetry on / off: {:.2}, on / Envoy: {:.2}",
            added(on),
            added(off),
            added(envoy),
            on.cpu / envoy.cpu.max(1e-9),
            off.cpu / envoy.cpu.max(1e-9),
            on.rss_load / off.rss_load.max(0.001),
            on.rss_load / envoy.rss_load.max(0.001),
        );
    }
}

/// The two `isthmus-proxy` pairs (`setups[1]`, telemetry on, and `setups[2]`, off) loaded at
/// once for `--together-seconds`: CPU per 1,000 rps of each, and on / off slice by slice.
async fn report_together(setups: &[Setup<'_>], protocol: Protocol, args: &Args) {
    if args.together_seconds == 0 {
        return;
    }
    let (slice, seconds) = slices(args.together_seconds, args.slice);
    let [(on, on_failed), (off, off_failed)] = together(
        [&setups[1], &setups[2]],
        protocol,
        args.rate,
        args.connections,
        (seconds, slice),
    )
    .await;
    let per_1000 =
        |cpu: &[f64]| cpu.iter().sum::<f64>() / seconds as f64 * 1000.0 / args.rate as f64;
    println!(
        "both isthmus-proxy pairs loaded at once ({} rps each, {seconds} s in slices of {slice} s): proxy CPU per 1,000 rps, telemetry on {:.3} vCPU, off {:.3} vCPU; on / off {:.3} over the run; slice by slice: {}; errors: on {on_failed}, off {off_failed}",
        args.rate,
        per_1000(&on),
        per_1000(&off),
        on.iter().sum::<f64>() / off.iter().sum::<f64>().max(1e-9),
        Ratios::of(&on, &off).summary(),
    );
    if on_failed + off_failed > 0 {
        // A pair that drops requests spends less: its ratio is not telemetry's cost.
        println!(
            "warning: requests failed while both pairs were loaded; the ratio above is not comparable"
        );
    }
}

/// Telemetry on / off, interval by interval (a turn, or a slice of both at once).
struct Ratios {
    /// In the order measured.
    listed: Vec<f64>,
    sorted: Vec<f64>,
}

impl Ratios {
    fn of(on: &[f64], off: &[f64]) -> Self {
        let listed: Vec<f64> = on.iter().zip(off).map(|(a, b)| a / b.max(1e-9)).collect();
        let mut sorted = listed.clone();
        sorted.sort_by(f64::total_cmp);
        Self { listed, sorted }
    }

    /// `median m (95 % interval of the median a–b), range x–y [each, in order]`.
    fn summary(&self) -> String {
        let s = &self.sorted;
        let median = match s.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        };
        let interval = median_interval(s).map_or_else(
            || "too few for an interval".to_owned(),
            |(low, high)| format!("95 % interval of the median {low:.3}–{high:.3}"),
        );
        let listed = self
            .listed
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "median {median:.3} ({interval}), range {:.3}–{:.3} [{listed}]",
            s.first().copied().unwrap_or(f64::NAN),
            s.last().copied().unwrap_or(f64::NAN),
        )
    }
}

/// A 95 % confidence interval for the median of `sorted`, free of any assumption about the
/// distribution: the order statistics `k` and `n + 1 - k`, with `k` the largest for which a
/// fair coin shows at most `k - 1` heads in `n` tosses with probability at most 2.5 %. `None`
/// below 6 values (no such `k`) or above 1,000 (the binomial terms underflow).
fn median_interval(sorted: &[f64]) -> Option<(f64, f64)> {
    let n = sorted.len();
    if !(6..=1000).contains(&n) {
        return None;
    }
    // P(X = 0), then P(X = i + 1) from P(X = i), X ~ Binomial(n, 1/2).
    let mut term = 0.5f64.powi(i32::try_from(n).ok()?);
    let mut below = 0.0;
    let mut k = 0;
    for i in 0..n {
        below += term;
        if below > 0.025 {
            break;
        }
        // At most i heads with probability at most 2.5 %: k = i + 1 qualifies.
        k = i + 1;
        term *= (n - i) as f64 / (i + 1) as f64;
    }
    (k >= 1).then(|| (sorted[k - 1], sorted[n - k]))
}

#[cfg(test)]
mod tests {
    use super::median_interval;

    #[test]
    fn the_median_interval_is_the_binomial_order_statistics() {
        let values = |n: usize| (1..=n).map(|i| i as f64).collect::<Vec<_>>();
        assert_eq!(median_interval(&values(5)), None, "too few");
        // n = 6: P(X = 0) = 1/64 ≤ 2.5 %, P(X ≤ 1) = 7/64 > 2.5 %: the extremes.
        assert_eq!(median_interval(&values(6)), Some((1.0, 6.0)));
        // n = 10: P(X ≤ 1) = 11/1024, P(X ≤ 2) = 56/1024 > 2.5 %: the 2nd and 9th.
        assert_eq!(median_interval(&values(10)), Some((2.0, 9.0)));
        // n = 30: P(X ≤ 9) ≈ 2.1 %, P(X ≤ 10) ≈ 4.9 %: the 10th and 21st.
        assert_eq!(median_interval(&values(30)), Some((10.0, 21.0)));
        assert_eq!(median_interval(&values(1001)), None, "too many");
    }
}
