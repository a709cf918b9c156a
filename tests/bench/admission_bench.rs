//! `isthmus-admission-bench`: the injection webhook's latency per `AdmissionReview`, as the API
//! server sees it, under `--concurrency` requests in flight (50 by default). A real `isthmusd`
//! serves its webhooks on loopback; each of the concurrent clients keeps one TLS connection
//! (HTTP/1.1, verified against the mesh root for `isthmusd.isthmus-system.svc`, as the API
//! server's webhook client does) and sends `tests/fixtures/admission/pod-create.json` in a
//! closed loop, so `--concurrency` reviews are always in flight. `--validate` sends the good
//! `VirtualService` update to `/validate` instead; `--new-connections` opens a connection (TLS
//! handshake included) per review.
//!
//! `cargo build --release --workspace --bins && target/release/isthmus-admission-bench`.
//! Results: docs/benchmarks.md.

// A load program measures wall-clock time on purpose.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::print_stdout,
    clippy::unwrap_used
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use isthmus_e2e::Isthmusd;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, Parser)]
struct Args {
    /// Reviews in flight at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Measured reviews (after `--warmup`).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Reviews sent first and not measured.
    #[arg(long, default_value_t = 2_000)]
    warmup: usize,
    /// Send the `VirtualService` update to `/validate` instead of pods to `/inject`.
    #[arg(long)]
    validate: bool,
    /// A new TLS connection per review instead of one kept per client.
    #[arg(long)]
    new_connections: bool,
}

const HOST: &str = "isthmusd.isthmus-system.svc";

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: std::net::SocketAddr, tls: &TlsConnector) -> Sender {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from(HOST).unwrap();
    let stream = tls.connect(name, tcp).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

async fn review(sender: &mut Sender, path: &str, body: &Bytes) -> Duration {
    let request = http::Request::post(path)
        .header("host", HOST)
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .unwrap();
    let start = Instant::now();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let answer = response.into_body().collect().await.unwrap().to_bytes();
    let elapsed = start.elapsed();
    let needle: &[u8] = b"\"allowed\":true";
    assert!(
        answer.windows(needle.len()).any(|w| w == needle),
        "not allowed: {}",
        String::from_utf8_lossy(&answer)
    );
    elapsed
}

fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Isthmusd::start(dir.path(), "cluster.local", &[]).unwrap();
    let addr = daemon.webhook.expect("isthmusd's webhook port");
    let root = std::fs::read(daemon.root_file()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&root) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(config));
    let (path, fixture) = if args.validate {
        ("/validate", "virtualservice-update-good.json")
    } else {
        ("/inject", "pod-create.json")
    };
    let body = Bytes::from(
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/admission")
                .join(fixture),
        )
        .unwrap(),
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (histogram, wall) = runtime.block_on(async {
        let clients = args.concurrency.max(1);
        let per_client = |total: usize| total.div_ceil(clients);
        let mut tasks = Vec::new();
        let start = Instant::now();
        for _ in 0..clients {
            let (tls, body) = (tls.clone(), body.clone());
            let (warmup, requests) = (per_client(args.warmup), per_client(args.requests));
            let new_connections = args.new_connections;
            tasks.push(tokio::spawn(async move {
                let mut times = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut sender = connect(addr, &tls).await;
                for i in 0..warmup + requests {
                    if new_connections {
                        sender = connect(addr, &tls).await;
                    }
                    let t0 = Instant::now();
                    let served = review(&mut sender, path, &body).await;
                    let elapsed = if new_connections {
                        t0.elapsed()
                    } else {
                        served
                    };
                    if i >= warmup {
                        times.record(elapsed.as_micros() as u64).unwrap();
                    }
                }
                times
            }));
        }
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for task in tasks {
            all.add(task.await.unwrap()).unwrap();
        }
        (all, start.elapsed())
    });
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{path} ({fixture}), {} in flight{}: {} reviews, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {:.0} reviews/s",
        args.concurrency,
        if args.new_connections {
            ", a connection per review"
        } else {
            ", kept-alive connections"
        },
        histogram.len(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        histogram.max() as f64 / 1000.0,
        (args.requests + args.warmup) as f64 / wall.as_secs_f64(),
    );
}
