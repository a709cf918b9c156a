//! `isthmusctl up` and `isthmusctl demo` as a user runs them: the bundled example, a call
//! through red's sidecar to green's imported service, Ctrl-C leaving no process behind, and
//! bad input reported with its cause and nothing left running.

// Wall-clock time is right here: these tests wait on real processes.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::unwrap_used
)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use isthmus_e2e::up::{
    Up, assert_nothing_left, edit, example, example_copy, isthmusctl, leftovers,
};
use isthmus_e2e::{bin, curl_with};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn demo_passes_every_step_and_stops_everything() {
    let keep = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let out = isthmusctl()
        .args(["demo", "--keep"])
        .arg(keep.path())
        .output()
        .unwrap();
    let took = start.elapsed();
    let report = text(&out);
    eprintln!("{report}");
    assert!(out.status.success(), "the demo failed:\n{report}");
    assert!(report.contains("6 of 6 steps passed"), "{report}");
    for step in [
        "PASS in-mesh call with mTLS",
        "PASS cross-mesh call, caller identity seen by green",
        "PASS services not exported, or not imported, are refused",
        "PASS export withdrawn and restored",
        "PASS failover to the peer and back",
    ] {
        assert!(report.contains(step), "{step} missing:\n{report}");
    }
    // The bound for the whole demo, after the build.
    assert!(took < Duration::from_secs(180), "the demo took {took:?}");
    assert_nothing_left(&keep.path().join("state"), Duration::from_secs(5));
}

#[test]
fn up_runs_the_example_curl_reaches_the_imported_service_and_ctrl_c_leaves_nothing() {
    let mut up = Up::start(&example());
    let log = up.log();
    for row in [
        "isthmusd (red.local)",
        "isthmusd (green.local)",
        "egress gateway egress-green (peer green)",
        "ingress gateway ingress-red (peer red)",
        "sidecar of shop/client",
    ] {
        assert!(log.contains(row), "the table lacks {row:?}:\n{log}");
    }
    let proxy = up.proxy_of("red", "client");
    let url = "http://ratings.bookinfo.svc.green-imports.local:9080/";
    let start = Instant::now();
    let answer = loop {
        let answer = curl_with(Command::new("curl"), &["-x", &proxy, url]);
        if matches!(answer, Ok((200, _))) || start.elapsed() > Duration::from_secs(30) {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let Ok((200, body)) = answer else {
        panic!("{answer:?}\n{}", up.log());
    };
    assert!(
        body.contains("URI=spiffe://red.local/ns/shop/sa/client"),
        "green's sidecar did not see red's client: {body}"
    );
    // gRPC to the same service's `grpc` port: unary, statuses and a stream, end to end.
    isthmus_e2e::grpc_echo::check_calls(
        &proxy,
        "http://ratings.bookinfo.svc.green-imports.local:9090",
        "ratings-green",
        "spiffe://red.local/ns/shop/sa/client",
        &|| up.log(),
    );
    let processes = up.run()["processes"].as_array().unwrap().len();
    assert!(processes >= 19, "{processes} processes in run.json");
    assert!(
        !leftovers(up.state.path()).is_empty(),
        "the tag finds the run's processes"
    );

    let status = up.interrupt();
    assert!(status.success(), "{status}:\n{}", up.log());
    assert_nothing_left(up.state.path(), Duration::from_secs(2));
    assert!(
        !up.state.path().join("run.json").exists(),
        "run.json removed"
    );
}

/// `isthmusctl up` on `dir` must fail, say `expected`, and leave nothing running.
fn up_fails(dir: &Path, expected: &[&str]) {
    let state = tempfile::tempdir().unwrap();
    let out = isthmusctl()
        .arg("up")
        .arg(dir)
        .arg("--state")
        .arg(state.path())
        .output()
        .unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "up succeeded:\n{said}");
    for e in expected {
        assert!(said.contains(e), "{e:?} missing:\n{said}");
    }
    assert_nothing_left(state.path(), Duration::from_secs(1));
}

#[test]
fn up_reports_a_missing_folder() {
    up_fails(
        Path::new("/nonexistent/meshes"),
        &["/nonexistent/meshes", "cannot read the folder"],
    );
}

#[test]
fn up_reports_invalid_yaml_with_file_and_line() {
    let dir = example_copy();
    edit(
        &dir.path().join("green/bookinfo.yaml"),
        "  ports: [{number: 9080, name: http}]\n  workloadSelector: {labels: {app: reviews}}",
        "  ports: [{number: 9080, name: http}\n  workloadSelector: {labels: {app: reviews}}",
    );
    up_fails(dir.path(), &["green/bookinfo.yaml:", "invalid YAML"]);
}

#[test]
fn up_reports_an_invalid_field_with_its_path() {
    let dir = example_copy();
    edit(
        &dir.path().join("red/shop.yaml"),
        "  serviceAccount: client\n",
        "  serviceAccount: client\n  replicas: 2\n",
    );
    up_fails(dir.path(), &["red/shop.yaml:", "replicas"]);
}

#[test]
fn up_reports_a_port_clash() {
    let dir = example_copy();
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    edit(
        &dir.path().join("red/shop.yaml"),
        "  serviceAccount: client\n",
        &format!("  serviceAccount: client\n  outboundPort: {port}\n"),
    );
    up_fails(
        dir.path(),
        &["port clash", &format!(":{port}"), "shop/client outbound"],
    );
}

#[test]
fn up_reports_a_command_that_does_not_start_and_stops_what_it_started() {
    let dir = example_copy();
    edit(
        &dir.path().join("red/shop.yaml"),
        "  command: [isthmusctl, echo, --listen, \"${ADDRESS}:${PORT_HTTP}\", --name, frontend-red]",
        "  command: [/nonexistent/frontend]",
    );
    up_fails(
        dir.path(),
        &[
            "red/app/shop/frontend",
            "cannot start /nonexistent/frontend",
        ],
    );
}

#[test]
fn up_reports_a_command_that_exits_at_once_with_its_log() {
    let dir = example_copy();
    edit(
        &dir.path().join("red/shop.yaml"),
        "  command: [isthmusctl, echo, --listen, \"${ADDRESS}:${PORT_HTTP}\", --name, frontend-red]",
        "  command: [sh, -c, \"echo frontend cannot find its database >&2; exit 3\"]",
    );
    up_fails(
        dir.path(),
        &[
            "red/app/shop/frontend stopped (exit code 3)",
            "frontend cannot find its database",
        ],
    );
}

#[test]
fn ctrl_c_stops_what_a_workload_started_too() {
    let dir = example_copy();
    // The command leaves a child of its own behind: the process group takes it down too.
    edit(
        &dir.path().join("red/shop.yaml"),
        "  command: [isthmusctl, echo, --listen, \"${ADDRESS}:${PORT_HTTP}\", --name, frontend-red]",
        "  command: [sh, -c, \"sleep 1000 & exec isthmusctl echo --listen ${ADDRESS}:${PORT_HTTP} --name frontend-red\"]",
    );
    // `isthmusctl` inside `sh` is found on PATH: the one under test.
    let path = format!(
        "{}:{}",
        bin("isthmusctl").parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut up = Up::start_with_path(dir.path(), Some(&path));
    let left = leftovers(up.state.path());
    assert!(
        left.len() >= 20,
        "the workload's own child is tagged too: {left:?}"
    );
    assert!(up.interrupt().success(), "{}", up.log());
    assert_nothing_left(up.state.path(), Duration::from_secs(2));
}

#[test]
fn up_killed_outright_still_leaves_nothing_behind() {
    let mut up = Up::start(&example());
    assert!(leftovers(up.state.path()).len() >= 19);
    up.kill_outright();
    // Every process of the example is one of ours: each asked the kernel for SIGTERM when
    // its parent goes.
    assert_nothing_left(up.state.path(), Duration::from_secs(10));
}

#[test]
fn isthmusctl_stops_quietly_when_its_reader_goes_away() {
    // As `isthmusctl manifests crds | head -1`: the pipe closes before the output ends.
    let mut child = isthmusctl()
        .args(["manifests", "crds"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
