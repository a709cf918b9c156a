//! `isthmusctl top` on the bundled example run by `isthmusctl up`: a steady load at a known
//! rate from red's client sidecar to green's imported `ratings`, and `top -o json` shows the
//! service in green with callers from mesh red at that rate (within 10 %), and the same
//! traffic crossing from red to green in the peers view.

// Wall-clock time is right here: these tests wait on real processes.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::unwrap_used
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use isthmus_e2e::up::{Up, assert_nothing_left, example, isthmusctl};
use isthmusctl::runner::http::get_via;
use serde_json::Value;

const IMPORTED: &str = "ratings.bookinfo.svc.green-imports.local:9080";
/// Requests per second sent.
const RATE: f64 = 20.0;

/// What the load did.
#[derive(Debug, Default)]
struct Sent {
    requests: AtomicU64,
    ok: AtomicU64,
}

/// Open loop: a request every 1/RATE s through `proxy` (late ticks catch up, so the average
/// holds), until `stop` or 60 s; waits for the requests in flight.
fn load(proxy: String, stop: Arc<AtomicBool>, sent: Arc<Sent>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE));
        let mut calls = tokio::task::JoinSet::new();
        let start = tokio::time::Instant::now();
        while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
            tick.tick().await;
            let (proxy, sent) = (proxy.clone(), sent.clone());
            calls.spawn(async move {
                sent.requests.fetch_add(1, Ordering::Relaxed);
                if let Ok((200, _)) = get_via(&proxy, IMPORTED, "/").await {
                    sent.ok.fetch_add(1, Ordering::Relaxed);
                }
            });
            while calls.try_join_next().is_some() {}
        }
        while calls.join_next().await.is_some() {}
    });
}

/// `isthmusctl top <args> --state <the run's>`: stdout, after checking it succeeded.
fn top(up: &Up, args: &[&str]) -> String {
    let out = isthmusctl()
        .arg("top")
        .args(args)
        .arg("--state")
        .arg(up.state.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "isthmusctl top {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn near(what: &str, measured: f64, expected: f64, report: &Value) {
    assert!(
        (measured - expected).abs() <= expected * 0.1,
        "{what}: {measured} rps, sent {expected} rps (10 % allowed):\n{report:#}"
    );
}

#[test]
fn top_shows_the_cross_mesh_service_its_callers_mesh_and_their_rate() {
    let mut up = Up::start(&example());
    let proxy = up.proxy_of("red", "client");

    // The import takes a moment to reach red's sidecar after start.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    loop {
        match runtime.block_on(get_via(&proxy, IMPORTED, "/")) {
            Ok((200, _)) => break,
            answer => assert!(
                start.elapsed() < Duration::from_secs(30),
                "{IMPORTED} never answered 200 through red's client: {answer:?}\n{}",
                up.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Sent::default());
    let generator = {
        let (proxy, stop, sent) = (proxy.clone(), stop.clone(), sent.clone());
        std::thread::spawn(move || load(proxy, stop, sent))
    };
    // Steady before the window opens, and still going when it closes.
    std::thread::sleep(Duration::from_secs(2));
    let load_start = Instant::now();
    let requests_before = sent.requests.load(Ordering::Relaxed);
    let json = top(&up, &["-o", "json", "--interval", "5"]);
    let table = top(&up, &["--mesh", "green", "--interval", "1"]);
    let achieved = (sent.requests.load(Ordering::Relaxed) - requests_before) as f64
        / load_start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    generator.join().unwrap();
    let (requests, ok) = (
        sent.requests.load(Ordering::Relaxed),
        sent.ok.load(Ordering::Relaxed),
    );
    assert_eq!(ok, requests, "some calls of the load failed\n{}", up.log());
    assert!(
        (achieved - RATE).abs() <= RATE * 0.05,
        "the load itself ran at {achieved} rps, not {RATE}"
    );

    let report: Value = serde_json::from_str(&json).unwrap();
    assert!(
        report["warnings"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    // Green's ratings as its own sidecar counts it, callers from red.
    let service = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["mesh"] == "green"
                && s["service"]
                    .as_str()
                    .is_some_and(|host| host.starts_with("ratings.bookinfo."))
        })
        .unwrap_or_else(|| panic!("no row for green's ratings:\n{report:#}"));
    let from_red = service["bySourceMesh"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sourceMesh"] == "red")
        .unwrap_or_else(|| panic!("no callers from red:\n{report:#}"));
    near(
        "green's ratings, callers from red",
        from_red["requestsPerSecond"].as_f64().unwrap(),
        RATE,
        &report,
    );
    assert_eq!(from_red["successRate"], 1.0, "{report:#}");
    eprintln!(
        "load {achieved:.2} rps; top: green's ratings from red {}, window {} s",
        from_red["requestsPerSecond"], report["windowSeconds"]
    );
    let p50 = from_red["p50Ms"].as_f64().unwrap();
    let p99 = from_red["p99Ms"].as_f64().unwrap();
    assert!(0.0 < p50 && p50 <= p99, "{report:#}");

    // The same traffic, leaving red for green (as red's client counts it) and arriving.
    let peer = |mesh: &str, direction: &str, other: &str| {
        report["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["mesh"] == mesh && p["direction"] == direction && p["peer"] == other)
            .unwrap_or_else(|| panic!("no {direction} row for {mesh} and {other}:\n{report:#}"))
            .clone()
    };
    let outbound = peer("red", "outbound", "green");
    near(
        "red to green",
        outbound["requestsPerSecond"].as_f64().unwrap(),
        RATE,
        &report,
    );
    assert!(
        outbound["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["service"] == "ratings.bookinfo.svc.green-imports.local"),
        "{report:#}"
    );
    near(
        "green from red",
        peer("green", "inbound", "red")["requestsPerSecond"]
            .as_f64()
            .unwrap(),
        RATE,
        &report,
    );

    let out = isthmusctl()
        .args(["top", "--mesh", "blue", "--state"])
        .arg(up.state.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("no mesh blue in this run (meshes: green, red)"),
        "{said}"
    );

    // The table, for green only.
    assert!(
        table.lines().any(|l| l.starts_with("green")
            && l.contains("ratings.bookinfo.")
            && l.contains(" red ")),
        "{table}"
    );
    assert!(
        !table.lines().any(|l| l.starts_with("red ")),
        "--mesh green shows red's rows:\n{table}"
    );

    let status = up.interrupt();
    assert!(status.success(), "{status}:\n{}", up.log());
    assert_nothing_left(up.state.path(), Duration::from_secs(2));
}

#[test]
fn top_without_a_run_says_so() {
    let state = tempfile::tempdir().unwrap();
    let out = isthmusctl()
        .args(["top", "--state"])
        .arg(state.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no running `isthmusctl up`"), "{said}");
}
