//! `isthmusctl doctor`, `federation graph` and `federation check` against meshes run by
//! `isthmusctl up`: each fault of the issue, found at its hop.

// Wall-clock time is right here: these tests wait on real processes.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::unwrap_used
)]

use std::process::Command;
use std::time::{Duration, Instant};

use isthmus_e2e::up::{Up, edit, example, example_copy, isthmusctl};

const IMPORTED: &str = "ratings.bookinfo.svc.green-imports.local";

/// `isthmusctl <args> --state <the run's>`: (success, stdout and stderr).
fn ctl(up: &Up, args: &[&str]) -> (bool, String) {
    let out = isthmusctl()
        .args(args)
        .arg("--state")
        .arg(up.state.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs `doctor` until its verdict contains every one of `expected` (config changes take a
/// moment to reach every part); fails with the last report after `limit`.
fn doctor_says(up: &Up, expected: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let (ok, report) = ctl(up, &["doctor", IMPORTED]);
        if expected.iter().all(|e| report.contains(e)) {
            assert!(!ok, "doctor found a fault but exited 0:\n{report}");
            return report;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "doctor never said {expected:?}; last report:\n{report}\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until every hop works (the example just started).
fn healthy(up: &Up) {
    let start = Instant::now();
    loop {
        let (ok, report) = ctl(up, &["doctor", IMPORTED]);
        if ok {
            assert!(report.contains("every hop works"), "{report}");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not healthy after 30 s:\n{report}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn doctor_finds_a_stopped_peer_ingress_gateway() {
    let up = Up::start(&example());
    healthy(&up);
    let pid = up.run()["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "green/gateway/ingress-red")
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    Command::new("kill").arg(pid.to_string()).status().unwrap();
    let report = doctor_says(
        &up,
        &[
            "broken at peer ingress gateway",
            "ingress-red of green",
            "not accepting connections",
        ],
    );
    eprintln!("{report}");
}

#[test]
fn doctor_finds_a_removed_export_rule() {
    let dir = example_copy();
    let up = Up::start(dir.path());
    healthy(&up);
    edit(
        &dir.path().join("green/federation.yaml"),
        "  - type: NameSelector\n    nameSelector: {namespace: bookinfo, name: ratings}\n",
        "",
    );
    let report = doctor_says(
        &up,
        &["broken at name resolution: green does not export bookinfo/ratings to red"],
    );
    eprintln!("{report}");
}

#[test]
fn doctor_finds_a_removed_import_rule() {
    let dir = example_copy();
    let up = Up::start(dir.path());
    healthy(&up);
    edit(
        &dir.path().join("red/federation.yaml"),
        "  - type: NameSelector\n    nameSelector: {namespace: bookinfo, name: ratings}\n",
        "",
    );
    let report = doctor_says(
        &up,
        &[
            "broken at name resolution: green exports it as ratings.bookinfo.svc.red-exports.local, but red does not import it",
            "no import rule selects it",
        ],
    );
    eprintln!("{report}");
}

#[test]
fn doctor_finds_a_wrong_root_for_the_peer() {
    let dir = example_copy();
    // Red holds some other CA's root for green.
    let keys = tempfile::tempdir().unwrap();
    let cert = keys.path().join("cert.pem");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-subj", "/O=not green", "-days", "1", "-keyout"])
        .arg(keys.path().join("key.pem"))
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let pem = std::fs::read_to_string(&cert).unwrap();
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    std::fs::write(
        dir.path().join("red/wrong-root.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: green-ca-root-cert, namespace: istio-system}}\ndata:\n  root-cert.pem: |\n{indented}"
        ),
    )
    .unwrap();
    let up = Up::start(dir.path());
    let report = doctor_says(
        &up,
        &[
            "broken at peer ingress gateway",
            "does not verify",
            "a wrong root for the peer?",
            "discovery crosses this hop",
        ],
    );
    eprintln!("{report}");
}

#[test]
fn doctor_finds_an_authorization_policy_denying_the_caller() {
    let dir = example_copy();
    let up = Up::start(dir.path());
    healthy(&up);
    edit(
        &dir.path().join("green/bookinfo.yaml"),
        "  action: ALLOW\n",
        "  action: DENY\n",
    );
    let report = doctor_says(
        &up,
        &[
            "broken at authorization",
            "refused spiffe://red.local/ns/shop/sa/client: 403",
        ],
    );
    eprintln!("{report}");
}

/// The example without the export of `ratings`.
fn without_ratings_export() -> tempfile::TempDir {
    let dir = example_copy();
    edit(
        &dir.path().join("green/federation.yaml"),
        "  - type: NameSelector\n    nameSelector: {namespace: bookinfo, name: ratings}\n",
        "",
    );
    dir
}

fn section<'a>(report: &'a str, header: &str) -> Vec<&'a str> {
    report
        .lines()
        .skip_while(|l| !l.starts_with(header))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect()
}

#[test]
fn federation_check_lists_exactly_what_stops_crossing_offline() {
    let changed = without_ratings_export();
    let out = isthmusctl()
        .args(["federation", "check"])
        .arg(changed.path())
        .arg("--base")
        .arg(example())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        section(&report, "would stop crossing"),
        ["  - green bookinfo/ratings -> red as ratings.bookinfo.svc.green-imports.local"],
        "{report}"
    );
    assert!(
        section(&report, "would start crossing").is_empty(),
        "{report}"
    );
    assert!(report.contains("unchanged: 1"), "{report}");
}

#[test]
fn graph_and_check_read_the_running_meshes() {
    let up = Up::start(&example());
    healthy(&up);
    let (ok, table) = ctl(&up, &["federation", "graph"]);
    assert!(ok, "{table}");
    let row = |service: &str| {
        table
            .lines()
            .find(|l| l.starts_with("green") && l.contains(service))
            .unwrap_or_else(|| panic!("no row for {service}:\n{table}"))
            .to_owned()
    };
    assert!(
        row("bookinfo/ratings").contains(IMPORTED) && row("bookinfo/ratings").ends_with("crossing"),
        "{table}"
    );
    assert!(row("bookinfo/reviews").contains("not imported"), "{table}");
    assert!(
        row("shop/inventory").contains("inventory.shop.svc.cluster.local"),
        "{table}"
    );
    assert!(
        table.contains("import rule matches nothing: importRules[1] (bookinfo/details)"),
        "{table}"
    );

    // Status over every mesh of the run: proxies ACKed, peers connected each way.
    let (ok, status) = ctl(&up, &["status"]);
    assert!(ok, "{status}");
    for expected in [
        "== MESH green (green.local)",
        "== MESH red (red.local)",
        "sidecar~",
        "istio-system/green               imports    connected",
        "istio-system/red                 exports    connected",
    ] {
        assert!(status.contains(expected), "{expected:?} missing:\n{status}");
    }
    assert!(!status.contains("NACK"), "{status}");

    let (ok, dot) = ctl(&up, &["federation", "graph", "--dot"]);
    assert!(ok && dot.starts_with("digraph federation {"), "{dot}");
    assert!(
        dot.contains(&format!("\"green/bookinfo/ratings\" -> \"red/{IMPORTED}\"")),
        "{dot}"
    );

    // A dry run against what runs: only ratings would stop; nothing is applied.
    let changed = without_ratings_export();
    let (ok, report) = ctl(
        &up,
        &["federation", "check", changed.path().to_str().unwrap()],
    );
    assert!(ok, "{report}");
    assert_eq!(
        section(&report, "would stop crossing"),
        ["  - green bookinfo/ratings -> red as ratings.bookinfo.svc.green-imports.local"],
        "{report}"
    );
    healthy(&up);
}
