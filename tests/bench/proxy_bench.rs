//! `isthmus-proxy-bench`: latency, CPU and memory of a sidecar pair, side by side in one run:
//! no proxy (client -> app), an `isthmus-proxy` pair and an Envoy 1.40 pair (client sidecar ->
//! mTLS -> server sidecar -> app), all configured by one `isthmusd`: HTTP/1.1 and HTTP/2 with
//! 1 KiB responses, raw TCP with 1 KiB exchanges, and the maximum HTTP/1.1 throughput of each
//! pair pinned to one core.
//!
//! The load is open-loop at a constant rate: each request has a scheduled send time, and its
//! latency is measured from that time, so a stalled proxy is charged for the requests that
//! queue behind it (no coordinated omission). Each proxy runs one worker thread. The set-ups
//! of a comparison take turns in slices of `--slice` seconds, so that the machine's drift
//! over a run weighs on all of them alike.
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

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use isthmus_e2e::mesh::{bootstrap, mesh_yaml, workload_yaml, write};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{Isthmusd, free_port};

#[path = "load.rs"]
mod load;
use load::{
    Client, Protocol, Setup, TCP_MESSAGE, app, in_turns, proc_cpu_seconds, rss_mib, slices, tcp_app,
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
}

/// The figures of one set-up.
struct Figures {
    name: &'static str,
    latency: Histogram<u64>,
    errors: u64,
    /// Proxy CPU seconds (client + server sidecar) during the measured load.
    cpu: f64,
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
    let cpu_before: f64 = pids.iter().map(|p| proc_cpu_seconds(*p)).sum();
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
    let (mut done, mut errors) = (0, 0);
    for w in workers {
        let (d, e) = w.await.unwrap();
        done += d;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = pids.iter().map(|p| proc_cpu_seconds(*p)).sum::<f64>() - cpu_before;
    (done as f64 / elapsed, errors, cpu / elapsed)
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let root: &Path = dir.path();
    let config = root.join("config");
    std::fs::create_dir_all(&config)?;
    let app_addr = app(args.body).await;
    let ip = "127.0.90";
    // echo-v1 behind Envoy, echo-v2 behind isthmus-proxy; a client of each kind.
    write(&config, "mesh.yaml", &mesh_yaml(ip, free_port()));
    write(
        &config,
        "client-b.yaml",
        &workload_yaml("client-b", &format!("{ip}.4"), "app: client", "client"),
    );
    write(
        &config,
        "routes.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo.shop.local]
  http:
  - match: [{headers: {x-server: {exact: isthmus}}}]
    route: [{destination: {host: echo.shop.local, subset: v2}}]
  - route: [{destination: {host: echo.shop.local, subset: v1}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp-v1, namespace: shop}
spec:
  hosts: [tcp-v1.shop.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 7000, name: tcp-echo}]
  workloadSelector: {labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp-v2, namespace: shop}
spec:
  hosts: [tcp-v2.shop.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 7000, name: tcp-echo}]
  workloadSelector: {labels: {version: v2}}
",
    );
    let daemon = Isthmusd::start(root, "red.local", &[]).context("isthmusd")?;
    let xds = daemon.xds.to_string();
    let tcp_addr = tcp_app().await;
    // TCP: each client sidecar has a local port for its pair's TCP service.
    let (envoy_tcp, isthmus_tcp) = (free_port(), free_port());
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
    let sidecar = |name: &str, ip: String, metadata: Vec<String>| {
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
        IsthmusProxy::start(root, name, &a)
    };
    let isthmus_server = sidecar(
        "echo-v2",
        format!("{ip}.2"),
        vec![
            format!(
                "APP_PORTS=http={},tcp-echo={}",
                app_addr.port(),
                tcp_addr.port()
            ),
            format!("OUTBOUND_PORT={}", free_port()),
        ],
    );
    let isthmus_out = free_port();
    let isthmus_client = sidecar(
        "client-b",
        format!("{ip}.4"),
        vec![
            format!("OUTBOUND_PORT={isthmus_out}"),
            format!("OUTBOUND_TCP_PORTS=tcp-v2.shop.local:7000={isthmus_tcp}"),
        ],
    );
    let url = "http://echo.shop.local:8080/";
    wait_for_route(envoy_out, url)?;
    isthmus_server
        .wait_ready(Duration::from_secs(20))
        .map_err(anyhow::Error::msg)?;
    isthmus_client
        .wait_ready(Duration::from_secs(20))
        .map_err(anyhow::Error::msg)?;
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

    let isthmus_pids = [isthmus_client.pid(), isthmus_server.pid()];
    let envoy_pids = [envoy_client.pid(), envoy_server.pid()];
    for (protocol, label) in [
        (Protocol::Http1, "HTTP/1.1"),
        (
            Protocol::Http2,
            "HTTP/2 (h2c from the client to its sidecar and to the app; HTTP/1.1 over mTLS between the sidecars)",
        ),
    ] {
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
            // One route table for both clients: the isthmus pair is chosen by a header.
            Setup {
                name: "isthmus-proxy pair",
                target: local(isthmus_out),
                url,
                header: Some(("x-server", "isthmus")),
                pids: &isthmus_pids,
            },
            Setup {
                name: "Envoy pair",
                target: local(envoy_out),
                url,
                header: None,
                pids: &envoy_pids,
            },
        ];
        report(&measure_in_turns(&setups, protocol, &args).await, &args);
    }

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
            name: "isthmus-proxy pair",
            target: local(isthmus_tcp),
            url: "/",
            header: None,
            pids: &isthmus_pids,
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

    if args.throughput_seconds > 0 {
        // The pair under test on CPU 1; this process (load generator and application) on 0.
        pin(std::process::id(), 0);
        for pid in isthmus_pids.iter().chain(&envoy_pids) {
            pin(*pid, 1);
        }
        println!(
            "\nMaximum throughput, HTTP/1.1, 32 connections, closed loop, {} s; both proxies of a pair share CPU 1",
            args.throughput_seconds
        );
        println!("\n| set-up | requests/s | errors | proxy CPU (cores) |");
        println!("|---|---|---|---|");
        let runs = [
            (
                "isthmus-proxy pair",
                isthmus_out,
                Some(("x-server", "isthmus")),
                &isthmus_pids,
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
            "\nthroughput per core, isthmus-proxy / Envoy: {:.2}",
            rates[0] / rates[1].max(1.0)
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
    if let [direct, ours, envoy] = all {
        let added = |f: &Figures| q(f, 0.99) - q(direct, 0.99);
        // A ratio of added latencies means something only when both pairs add some.
        let p99_ratio = if added(ours) > 0.0 && added(envoy) > 0.0 {
            format!("{:.2}", added(ours) / added(envoy))
        } else {
            "n/a (a pair was not slower than direct)".to_owned()
        };
        println!(
            "\nadded p99, isthmus-proxy / Envoy: {p99_ratio}; proxy CPU, isthmus-proxy / Envoy: {:.2}; RSS under load, isthmus-proxy / Envoy: {:.2}",
            ours.cpu / envoy.cpu.max(0.001),
            ours.rss_load / envoy.rss_load.max(0.001),
        );
    }
}
