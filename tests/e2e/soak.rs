//! Soak: 500 requests a second across the meshes (red's client sidecar -> red's egress -> green's
//! ingress -> green's ratings sidecar) for `ISTHMUS_SOAK_MINUTES` (2 by default; `tests/soak.sh
//! MINUTES` runs it longer), with churn all along:
//! - a configuration change in each mesh every 5 s (a service nobody calls, relabelled);
//! - workload certificates of 30 s, so every proxy's certificate rotates every 15 s;
//! - the discovery stream dropped every 30 s: green refuses red's control plane for 3 s (its
//!   `ServiceMeshPeer red` names another `controlPlaneID`), red keeps its stale imports,
//!   reconnects when green takes it back.
//!
//! Every 5 s the resident memory and open file descriptors of every process (both `isthmusd`s,
//! both gateways, both sidecars) are sampled. The run fails if, over its second half, a fitted
//! line says either grows by more than the bounds below, or if a request fails.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: this drives real processes for minutes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use isthmus_e2e::federation::{ALLOW_RED_CLIENT, Federation, IMPORTED, green_config};
use isthmus_e2e::mesh::{churn_document, write};
use isthmus_e2e::traffic::Traffic;

const RPS: u32 = 500;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const CONFIG_EVERY: Duration = Duration::from_secs(5);
const RECONNECT_EVERY: Duration = Duration::from_secs(30);
const REFUSED_FOR: Duration = Duration::from_secs(3);
/// Growth allowed over the second half, by the fitted slope: memory may settle (allocator
/// arenas, caches filling), but not climb on. At 8 MiB an hour, bounded to 1-4 MiB: a short run
/// allows for its noise, a long one catches a slow leak.
const RSS_MIB_PER_HOUR: f64 = 8.0;
const FD_GROWTH: f64 = 8.0;

fn rss_growth_allowed(second_half: Duration) -> f64 {
    (RSS_MIB_PER_HOUR * second_half.as_secs_f64() / 3600.0).clamp(1.0, 4.0)
}

fn minutes() -> f64 {
    std::env::var("ISTHMUS_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(2.0f64)
        .max(1.0)
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn open_fds(pid: u32) -> Option<f64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as f64)
}

/// The least-squares slope of `points` (x, y), per unit of x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(x, y), p| (x + p.0 / n, y + p.1 / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

/// One process's samples: (seconds since the start, RSS MiB, open fds).
struct Series {
    name: String,
    pid: u32,
    samples: Vec<(f64, f64, f64)>,
}

impl Series {
    /// Growth over the second half by the fitted lines: (RSS MiB, fds).
    fn second_half_growth(&self) -> (f64, f64) {
        let end = self.samples.last().map_or(0.0, |s| s.0);
        let half: Vec<&(f64, f64, f64)> =
            self.samples.iter().filter(|s| s.0 >= end / 2.0).collect();
        let span = end / 2.0;
        let rss: Vec<(f64, f64)> = half.iter().map(|s| (s.0, s.1)).collect();
        let fds: Vec<(f64, f64)> = half.iter().map(|s| (s.0, s.2)).collect();
        (slope(&rss) * span, slope(&fds) * span)
    }
}

#[test]
fn five_hundred_rps_across_meshes_with_churn_grow_neither_memory_nor_descriptors() {
    let total = Duration::from_secs_f64(minutes() * 60.0);
    let f = Federation::start_with(&["--workload-cert-ttl", "30s"]);
    f.wait_up();
    let green_config_dir = f.dir.path().join("green/config");
    let red_config_dir = f.dir.path().join("red/config");
    let mut series: Vec<Series> = [
        ("red isthmusd", f.red.pid()),
        ("green isthmusd", f.green().pid()),
    ]
    .into_iter()
    .map(|(name, pid)| (name.to_owned(), pid))
    .chain(
        [
            "green ingress",
            "green ratings sidecar",
            "red egress",
            "red client sidecar",
        ]
        .into_iter()
        .zip(&f.proxies)
        .map(|(name, p)| (name.to_owned(), p.pid())),
    )
    .map(|(name, pid)| Series {
        name,
        pid,
        samples: Vec::new(),
    })
    .collect();
    let traffic = Traffic::start(
        SocketAddr::from(([127, 0, 0, 1], f.ports.outbound)),
        &format!("http://{IMPORTED}:9080/"),
        RPS,
        8,
    );
    let start = Instant::now();
    let (mut next_sample, mut next_config, mut next_reconnect) =
        (Duration::ZERO, CONFIG_EVERY, RECONNECT_EVERY);
    let mut refused_until: Option<Duration> = None;
    let (mut changes, mut reconnects) = (0u64, 0u64);
    let normal = green_config(&f.red_root_pem, &f.ports, ALLOW_RED_CLIENT);
    let refusing = normal.replace(
        "    trustDomain: red.local\n",
        "    trustDomain: red.local\n    controlPlaneID: red.local/ns/elsewhere/sa/isthmusd\n",
    );
    assert_ne!(
        normal, refusing,
        "the fixture's ServiceMeshPeer red has its trustDomain line"
    );
    loop {
        let now = start.elapsed();
        if now >= total {
            break;
        }
        if now >= next_sample {
            for s in &mut series {
                if let (Some(rss), Some(fds)) = (rss_mib(s.pid), open_fds(s.pid)) {
                    s.samples.push((now.as_secs_f64(), rss, fds));
                } else {
                    panic!("{} (pid {}) is gone at {now:?}", s.name, s.pid);
                }
            }
            next_sample += SAMPLE_EVERY;
        }
        if now >= next_config {
            for dir in [&red_config_dir, &green_config_dir] {
                write(dir, "churn.yaml", &churn_document("churn", changes));
            }
            changes += 1;
            next_config += CONFIG_EVERY;
        }
        if refused_until.is_some_and(|until| now >= until) {
            write(&green_config_dir, "mesh.yaml", &normal);
            refused_until = None;
        }
        if now >= next_reconnect && now + REFUSED_FOR < total {
            write(&green_config_dir, "mesh.yaml", &refusing);
            refused_until = Some(now + REFUSED_FOR);
            reconnects += 1;
            next_reconnect += RECONNECT_EVERY;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    write(&green_config_dir, "mesh.yaml", &normal);
    let outcome = traffic.stop();
    eprintln!(
        "soak: {:.1} min, {changes} configuration changes per mesh, {reconnects} discovery reconnects\ntraffic: {outcome}",
        minutes()
    );
    let mut problems = Vec::new();
    for s in &series {
        let (first, last) = (s.samples[0], s.samples[s.samples.len() - 1]);
        let (rss_growth, fd_growth) = s.second_half_growth();
        eprintln!(
            "{:<22} RSS {:6.1} -> {:6.1} MiB (second half, fitted: {rss_growth:+.2} MiB)   fds {:4} -> {:4} (fitted: {fd_growth:+.1})",
            s.name, first.1, last.1, first.2, last.2
        );
        if rss_growth > rss_growth_allowed(total / 2) {
            problems.push(format!(
                "{}: RSS grew {rss_growth:.2} MiB over the second half",
                s.name
            ));
        }
        if fd_growth > FD_GROWTH {
            problems.push(format!(
                "{}: {fd_growth:.1} more fds over the second half",
                s.name
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(
        outcome.failed(),
        0,
        "requests failed during the soak: {outcome}"
    );
    let expected = f64::from(RPS) * outcome.elapsed.as_secs_f64();
    assert!(
        outcome.sent as f64 > expected * 0.9,
        "only {} of {expected:.0} requests were sent",
        outcome.sent
    );
    assert!(
        reconnects >= 1 || minutes() < 1.0,
        "the discovery stream was dropped"
    );
}
