//! Faults under load, with real processes: red and green federated through their gateways
//! (`isthmus_e2e::federation`), 200 requests a second through the cross-mesh path (red's client
//! sidecar -> red's egress -> green's ingress -> green's ratings sidecar) and 200 through an
//! in-mesh path (green's client sidecar -> green's ratings sidecar) at once, while one fault
//! is applied. Every request that does not get a 200 counts as failed.
//!
//! `ISTHMUS_FAULT_SECONDS` sets how long the load runs per fault (CI: 20 s by default;
//! docs/security.md's figures: 60 s).

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests drive real processes under load.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use isthmus_e2e::federation::{Federation, IMPORTED, green_config};
use isthmus_e2e::mesh::{churn_document, until, write};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::traffic::{Outcome, Traffic};
use isthmus_e2e::{curl_with, free_port};

const RPS: u32 = 200;
const CONNECTIONS: u32 = 4;
const IN_MESH: &str = "ratings.bookinfo.svc.cluster.local";

/// Both clients may call ratings: red's across the meshes, green's in its own mesh.
const ALLOW_BOTH_CLIENTS: &str = "  action: ALLOW\n  rules: [{from: [{source: {principals: [red.local/ns/shop/sa/client, green.local/ns/shop/sa/client]}}]}]";

fn seconds() -> Duration {
    let s = std::env::var("ISTHMUS_FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20u64);
    Duration::from_secs(s.max(10))
}

/// The two paths under load, and what a fault needs to reach.
struct Bench {
    f: Federation,
    _green_client: IsthmusProxy,
    green_outbound: u16,
    /// A second ratings endpoint in green (`ratings-v2`), when asked for.
    ratings_v2: Option<IsthmusProxy>,
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// Green's client workload, and a second ratings endpoint at 127.0.20.6 when `v2_inbound`.
fn green_extra(v2_inbound: Option<u16>) -> String {
    let mut text = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: shop}
spec: {address: 127.0.20.9, serviceAccount: client}
"
    .to_owned();
    if let Some(port) = v2_inbound {
        text.push_str(&format!(
            "---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-v2, namespace: bookinfo}}
spec: {{address: 127.0.20.6, labels: {{app: ratings}}, serviceAccount: ratings, ports: {{http: {port}}}}}
"
        ));
    }
    text
}

/// One fault at a time: the load is a rate, and two benches sharing the CPU would measure
/// each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Bench {
    fn start(isthmusd_args: &[&str], second_ratings: bool) -> Self {
        let turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let f = Federation::start_with(isthmusd_args);
        let v2_inbound = second_ratings.then(free_port);
        write(
            &f.dir.path().join("green/config"),
            "faults.yaml",
            &green_extra(v2_inbound),
        );
        f.write_green(true, ALLOW_BOTH_CLIENTS);
        let proxies = f.dir.path().join("proxies");
        let green_outbound = free_port();
        let green_client = IsthmusProxy::with_identity(
            &proxies,
            f.green(),
            "sidecar~127.0.20.9~client.shop~shop.svc.cluster.local",
            "green-client",
            "spiffe://green.local/ns/shop/sa/client",
            &[
                "--metadata".to_owned(),
                format!("OUTBOUND_PORT={green_outbound}"),
            ],
        );
        let ratings_v2 = v2_inbound.map(|_| {
            IsthmusProxy::with_identity(
                &proxies,
                f.green(),
                "sidecar~127.0.20.6~ratings-v2.bookinfo~bookinfo.svc.cluster.local",
                "green-ratings-v2",
                "spiffe://green.local/ns/bookinfo/sa/ratings",
                &[
                    "--metadata".to_owned(),
                    format!("APP_PORTS=http={}", f.ports.ratings_app),
                ],
            )
        });
        for proxy in std::iter::once(&green_client).chain(&ratings_v2) {
            proxy.wait_ready(Duration::from_secs(30)).unwrap();
        }
        let bench = Self {
            f,
            _green_client: green_client,
            green_outbound,
            ratings_v2,
            _turn: turn,
        };
        bench.f.wait_up();
        until("green's in-mesh call", Duration::from_secs(30), || {
            matches!(bench.call_in_mesh(), Ok((200, _)))
        });
        bench
    }

    fn call_in_mesh(&self) -> Result<(u16, String), isthmus_e2e::CurlError> {
        curl_with(
            std::process::Command::new("curl"),
            &[
                "-x",
                &format!("http://127.0.0.1:{}", self.green_outbound),
                &format!("http://{IN_MESH}:9080/"),
            ],
        )
    }

    /// Load on both paths for `seconds()`; `fault` runs on this thread 2 s in, and may take
    /// until 2 s before the end.
    fn under_load(&mut self, fault: impl FnOnce(&mut Self, Duration)) -> Loads {
        let total = seconds();
        let outbound = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let cross = Traffic::start(
            outbound(self.f.ports.outbound),
            &format!("http://{IMPORTED}:9080/"),
            RPS,
            CONNECTIONS,
        );
        let in_mesh = Traffic::start(
            outbound(self.green_outbound),
            &format!("http://{IN_MESH}:9080/"),
            RPS,
            CONNECTIONS,
        );
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs(2));
        fault(self, total.saturating_sub(Duration::from_secs(4)));
        if let Some(rest) = total.checked_sub(start.elapsed()) {
            std::thread::sleep(rest);
        }
        let loads = Loads {
            cross: cross.stop(),
            in_mesh: in_mesh.stop(),
        };
        eprintln!("cross-mesh: {}\nin-mesh: {}", loads.cross, loads.in_mesh);
        // The load really ran at the rate asked (within 10 %).
        for (what, o) in [("cross-mesh", &loads.cross), ("in-mesh", &loads.in_mesh)] {
            let expected = f64::from(RPS) * o.elapsed.as_secs_f64();
            assert!(
                o.sent as f64 > expected * 0.9,
                "{what}: only {} of {expected:.0} requests were sent",
                o.sent
            );
        }
        loads
    }
}

struct Loads {
    cross: Outcome,
    in_mesh: Outcome,
}

impl Loads {
    fn assert_no_failure(&self, fault: &str) {
        assert!(
            self.cross.failed() == 0 && self.in_mesh.failed() == 0,
            "{fault}: requests failed\ncross-mesh: {}\nin-mesh: {}",
            self.cross,
            self.in_mesh
        );
    }
}

/// When the certificate `proxy` serves (its SDS `default` secret) expires.
fn serving_certificate(proxy: &IsthmusProxy) -> String {
    let dump = proxy.config_dump();
    dump["secrets"]["default"]["not_after"]
        .as_str()
        .unwrap_or_else(|| panic!("no default certificate: {dump}"))
        .to_owned()
}

#[test]
fn workload_certificates_rotated_every_10_s_fail_no_request() {
    // 20 s certificates, renewed at half-life: every 10 s, on every proxy.
    let mut b = Bench::start(&["--workload-cert-ttl", "20s"], false);
    let before = serving_certificate(&b.f.proxies[1]);
    let loads = b.under_load(|_, _| {});
    let after = serving_certificate(&b.f.proxies[1]);
    assert_ne!(
        before, after,
        "green's ratings sidecar got a new certificate"
    );
    loads.assert_no_failure("certificate rotation");
}

#[test]
fn isthmusd_killed_and_restarted_fails_no_request() {
    let mut b = Bench::start(&[], false);
    let loads = b.under_load(|b, _| {
        b.f.restart_red_control_plane(Duration::from_secs(1));
        std::thread::sleep(Duration::from_secs(2));
        b.f.restart_green_control_plane(Duration::from_secs(1));
    });
    loads.assert_no_failure("isthmusd restart");
}

#[test]
fn a_storm_of_50_configuration_changes_a_second_fails_no_request() {
    let mut b = Bench::start(&[], false);
    let written = Arc::new(AtomicU64::new(0));
    let loads = b.under_load(|b, budget| {
        // Changes that touch no called route: a service nobody calls, relabelled each time,
        // in both meshes.
        let dirs = [
            b.f.dir.path().join("red/config"),
            b.f.dir.path().join("green/config"),
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, written2) = (stop.clone(), written.clone());
        let storm = std::thread::spawn(move || {
            let mut n = 0u64;
            let tick = Duration::from_millis(20);
            let start = Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                let text = churn_document("storm", n);
                write(&dirs[(n % 2) as usize], "storm.yaml", &text);
                n += 1;
                written2.store(n, Ordering::Relaxed);
                let next = tick * u32::try_from(n).unwrap_or(u32::MAX);
                if let Some(wait) = next.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        });
        std::thread::sleep(budget);
        stop.store(true, Ordering::Relaxed);
        storm.join().unwrap();
    });
    let changes = written.load(Ordering::Relaxed);
    let budget = seconds()
        .saturating_sub(Duration::from_secs(4))
        .as_secs_f64();
    assert!(
        changes as f64 >= 50.0 * budget * 0.9,
        "{changes} changes in {budget} s"
    );
    loads.assert_no_failure("configuration storm");
}

#[test]
fn the_peer_ingress_gateway_restarted_with_its_drain_fails_at_most_what_its_gap_allows() {
    let mut b = Bench::start(&[], false);
    let (mut drained, mut down) = (Duration::ZERO, Duration::ZERO);
    let loads = b.under_load(|b, _| {
        (drained, down) = b.f.restart_green_ingress(Duration::from_secs(5));
    });
    // While it drains, the tunnels it carries go on and no new one is accepted; once it has
    // exited, nothing listens until the new one is ready. The bound: every cross-mesh request
    // sent while nothing listened, plus half a second of them for the tunnels cut at the
    // drain's end, may fail (the calling sidecar's retries usually save them all); the in-mesh
    // path does not cross the gateway and may not fail at all.
    let bound = (f64::from(RPS) * (down.as_secs_f64() + 0.5)).ceil() as usize;
    eprintln!(
        "ingress drained in {:.3} s, down {:.3} s: {} cross-mesh failures, bound {bound}",
        drained.as_secs_f64(),
        down.as_secs_f64(),
        loads.cross.failed()
    );
    assert!(
        loads.cross.failed() <= bound,
        "at most the requests of the gap (+0.5 s) may fail: {}",
        loads.cross
    );
    assert_eq!(loads.in_mesh.failed(), 0, "{}", loads.in_mesh);
}

#[test]
fn a_serving_sidecar_given_sigterm_drains_and_fails_no_request() {
    let mut b = Bench::start(&[], true);
    let mut exit = None;
    let loads = b.under_load(|b, _| {
        // As when a pod ends: its endpoint leaves the configuration while its sidecar is told to
        // stop. Requests in flight on it finish; new ones go to the other endpoint.
        let full = green_config(&b.f.red_root_pem, &b.f.ports, ALLOW_BOTH_CLIENTS);
        let without_v1: Vec<&str> = full
            .split("---\n")
            .filter(|doc| !doc.contains("name: ratings-v1"))
            .collect();
        let text = without_v1.join("---\n");
        write(&b.f.dir.path().join("green/config"), "mesh.yaml", &text);
        exit = b.f.proxies[1].terminate(Duration::from_secs(10));
    });
    let exit = exit.expect("the sidecar exits within its drain");
    assert!(exit.success(), "a drained sidecar exits 0: {exit:?}");
    loads.assert_no_failure("sidecar SIGTERM");
    assert!(b.ratings_v2.is_some());
}

#[test]
fn isthmusd_restarted_while_the_peer_is_silent_keeps_its_proxies_imports() {
    let mut b = Bench::start(&[], false);
    let signal = |sig: &str, pid: u32| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let loads = b.under_load(|b, _| {
        // Green's control plane stops answering (its data path goes on); red's restarts and
        // cannot hear green's exports until green answers again, 3 s later. Red's proxies
        // reconnect meanwhile: they must keep the imports they hold, not get a configuration
        // without them.
        let green = b.f.green().pid();
        signal("-STOP", green);
        b.f.restart_red_control_plane(Duration::from_millis(200));
        std::thread::sleep(Duration::from_secs(3));
        signal("-CONT", green);
    });
    loads.assert_no_failure("isthmusd restart while the peer is silent");
}
