//! `isthmus-federation-bench`: what federation costs, measured in one run on loopback with two
//! meshes (`red`, `green`: each its own `isthmusd`, CA and trust domain, `isthmus-proxy`
//! everywhere):
//!
//! - latency at `--rate` requests per second (HTTP/1.1, 1 KiB responses, open loop, latency
//!   from each request's scheduled time) of three set-ups side by side: direct (client -> app),
//!   in-mesh (red client sidecar -> mTLS -> red server sidecar -> app) and cross-mesh (red
//!   client sidecar -> red egress gateway -> HTTP/2 CONNECT over mTLS -> green ingress gateway
//!   -> green sidecar -> app, the caller's mTLS session end to end); the cross-mesh latency
//!   added over the in-mesh call; the gateways' CPU per 1,000 rps;
//! - convergence: `--changes` export changes on green (the `ExportedServiceSet` file rewritten,
//!   withdrawing and restoring `ratings` in turn), each timed from the write until red's
//!   client sidecar has dropped (or regained) the imported cluster.
//!
//! `cargo build --release --workspace --bins && target/release/isthmus-federation-bench`
//! (`--help` for rate, duration, changes). Results: docs/benchmarks.md.

// A load program measures wall-clock time on purpose.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::print_stdout,
    clippy::unwrap_used
)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use isthmus_e2e::federation::{ALLOW_RED_CLIENT, Federation, IMPORTED};
use isthmus_e2e::free_port;
use isthmus_e2e::mesh::write;
use isthmus_e2e::proxy::IsthmusProxy;

#[path = "load.rs"]
#[allow(dead_code)]
mod load;
use load::{Protocol, Setup, app, in_turns, slices};

#[derive(Debug, Parser)]
struct Args {
    /// Requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of measured load per set-up (after a warm-up of a second each).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Keep-alive connections from the load generator.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// The set-ups take turns in slices of this many seconds (direct, in-mesh, cross-mesh,
    /// direct, ...), so that the machine's drift over a run weighs on all three alike.
    #[arg(long, default_value_t = 2)]
    slice: u64,
    /// Export changes timed for convergence; 0 skips it.
    #[arg(long, default_value_t = 100)]
    changes: usize,
}

const IN_MESH: &str = "echo.shop.svc.cluster.local";

/// Red's own service for the in-mesh baseline: `echo` behind a sidecar at 127.0.10.6.
fn in_mesh_yaml(inbound: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: shop}}
spec:
  hosts: [{IN_MESH}]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http}}]
  workloadSelector: {{labels: {{app: echo}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo, namespace: shop}}
spec: {{address: 127.0.10.6, labels: {{app: echo}}, serviceAccount: echo, ports: {{http: {inbound}}}}}
"
    )
}

/// `GET /clusters` on an admin port, without a process per poll.
fn clusters(admin: &str) -> String {
    let Ok(mut stream) = std::net::TcpStream::connect(admin) else {
        return String::new();
    };
    let _ = stream.write_all(b"GET /clusters HTTP/1.0\r\nHost: admin\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let green_app = app(1024).await;
    let red_app = app(1024).await;
    let (f, in_mesh_sidecar) = tokio::task::spawn_blocking(move || {
        let f = Federation::start_with_app(green_app.port());
        let inbound = free_port();
        write(
            &f.dir.path().join("red/config"),
            "in-mesh.yaml",
            &in_mesh_yaml(inbound),
        );
        let sidecar = IsthmusProxy::node(
            &f.dir.path().join("proxies"),
            &f.red,
            "sidecar~127.0.10.6~echo.shop~shop.svc.cluster.local",
            "red-echo",
            &[format!("APP_PORTS=http={}", red_app.port())],
        );
        sidecar.wait_ready(Duration::from_secs(30)).unwrap();
        f.wait_up();
        (f, sidecar)
    })
    .await?;
    let outbound: std::net::SocketAddr = format!("127.0.0.1:{}", f.ports.outbound).parse()?;
    // Until red's client can call its own echo too.
    let mut last = f.call(IN_MESH);
    for _ in 0..300 {
        if matches!(last, Ok((200, _))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = f.call(IN_MESH);
    }
    anyhow::ensure!(
        matches!(last, Ok((200, _))),
        "red's client cannot call {IN_MESH}: {last:?}"
    );

    let urls = [
        (red_app, format!("http://{red_app}/")),
        (outbound, format!("http://{IN_MESH}:9080/")),
        (outbound, format!("http://{IMPORTED}:9080/")),
    ];
    // The gateways' CPU (egress, ingress) is charged to the cross-mesh set-up.
    let gateways = [f.proxies[2].pid(), f.proxies[0].pid()];
    fn setup<'a>(
        name: &'static str,
        (target, url): &'a (std::net::SocketAddr, String),
        pids: &'a [u32],
    ) -> Setup<'a> {
        Setup {
            name,
            target: *target,
            url,
            header: None,
            pids,
        }
    }
    let setups = [
        setup("direct", &urls[0], &[][..]),
        setup("in-mesh (sidecar pair)", &urls[1], &[][..]),
        setup(
            "cross-mesh (sidecars + two gateways)",
            &urls[2],
            &gateways[..],
        ),
    ];
    let turns = in_turns(
        &setups,
        Protocol::Http1,
        args.rate,
        args.connections,
        (args.seconds, args.slice),
    )
    .await;
    let (slice, measured) = slices(args.seconds, args.slice);
    drop(in_mesh_sidecar);

    println!(
        "\nlatency at {} rps, HTTP/1.1, 1 KiB, {measured} s each, in turns of {slice} s:\n",
        args.rate
    );
    println!("| set-up | p50 ms | p90 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|");
    for (s, t) in setups.iter().zip(&turns) {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {} |",
            s.name,
            ms(&t.latency, 0.5),
            ms(&t.latency, 0.9),
            ms(&t.latency, 0.99),
            t.errors
        );
    }
    let (in_mesh, cross) = (&turns[1].latency, &turns[2].latency);
    println!(
        "\ncross-mesh added over in-mesh: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms; gateways' CPU {:.3} vCPU per 1,000 rps (egress + ingress)",
        ms(cross, 0.5) - ms(in_mesh, 0.5),
        ms(cross, 0.9) - ms(in_mesh, 0.9),
        ms(cross, 0.99) - ms(in_mesh, 0.99),
        turns[2].cpu / measured as f64 / (args.rate as f64 / 1000.0),
    );

    if args.changes > 0 {
        let admin = f.proxies[3].admin().to_owned();
        let changes = args.changes;
        let times = tokio::task::spawn_blocking(move || {
            let mut times = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            for i in 0..changes {
                let export = i % 2 == 1;
                let start = Instant::now();
                f.write_green(export, ALLOW_RED_CLIENT);
                while clusters(&admin).contains(IMPORTED) != export {
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "change {i} did not converge"
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
                times.record(start.elapsed().as_micros() as u64).unwrap();
            }
            times
        })
        .await?;
        println!(
            "\nconvergence over {changes} export changes (green's file written -> red's sidecar updated): p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            ms(&times, 0.5),
            ms(&times, 0.9),
            ms(&times, 0.99),
            times.max() as f64 / 1000.0,
        );
    }
    Ok(())
}
