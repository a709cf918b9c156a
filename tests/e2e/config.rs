//! `isthmusd --config-dir` end to end: the directory is watched, a bad change is reported with
//! file, document and field while the last good configuration stays in force.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use isthmus_e2e::{Isthmusd, isthmusctl};
use serde_json::Value;

const ROUTES: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts: [reviews]
  http:
  - route:
    - destination:
        host: reviews
";

fn debug_config(daemon: &Isthmusd) -> Value {
    let body = daemon.http_get("/debug/config");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Polls `/debug/config` until `done` holds (5 s at most).
fn wait_for(daemon: &Isthmusd, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let status = debug_config(daemon);
        if done(&status) {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}: {}", debug_config(daemon));
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn a_bad_change_is_reported_and_the_last_good_configuration_stays() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    write(&config, "routes.yaml", ROUTES);
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    let status = wait_for(&daemon, "the first load", |s| s["version"] == 1);
    assert_eq!(status["resources"]["VirtualService"], 1);

    // A second document with an unsupported field: reported, nothing applied.
    write(
        &config,
        "routes.yaml",
        &format!(
            "{ROUTES}---\n{}",
            ROUTES.replace("name: reviews", "name: ratings").replace(
                "  - route:",
                "  - rewrite: {uriRegexRewrite: {match: a, rewrite: b}}\n    route:",
            )
        ),
    );
    let status = wait_for(&daemon, "the rejection", |s| {
        !s["errors"].as_array().unwrap().is_empty()
    });
    let error = &status["errors"][0];
    assert!(
        error["file"].as_str().unwrap().ends_with("routes.yaml"),
        "{error}"
    );
    assert_eq!(error["document"], 2);
    assert_eq!(error["resource"], "VirtualService ratings");
    assert_eq!(error["path"], "spec.http[0].rewrite.uriRegexRewrite");
    assert_eq!(error["reason"], "not supported by Isthmus");
    assert_eq!(status["version"], 1, "the last good configuration stays");
    assert_eq!(status["resources"]["VirtualService"], 1);

    // Fixed: applied, errors cleared.
    write(
        &config,
        "routes.yaml",
        &format!(
            "{ROUTES}---\n{}",
            ROUTES.replace("name: reviews", "name: ratings")
        ),
    );
    let status = wait_for(&daemon, "the fix", |s| s["version"] == 2);
    assert_eq!(status["resources"]["VirtualService"], 2);
    assert!(status["errors"].as_array().unwrap().is_empty(), "{status}");
    assert!(!daemon.logs().contains("panicked"));
}

#[test]
fn isthmusctl_config_validate_locates_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "good.yaml", ROUTES);
    let out = isthmusctl(&["config", "validate", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 resources: 1 VirtualService)"));

    write(
        dir.path(),
        "bad.yaml",
        &ROUTES
            .replace("host: reviews", "host: reviews\n      weight: 50")
            .replace("name: reviews", "name: x"),
    );
    write(dir.path(), "syntax.yaml", "kind: [\n");
    let out = isthmusctl(&["config", "validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("bad.yaml:1 (document 1): VirtualService x: spec.http[0].route: weights add up to 50, not 100"), "{stdout}");
    assert!(
        stdout.contains("syntax.yaml") && stdout.contains("invalid YAML"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 problem(s)"));
}

#[test]
fn isthmusctl_status_names_the_rejected_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    write(&config, "routes.yaml", ROUTES);
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    wait_for(&daemon, "the first load", |s| s["version"] == 1);
    write(
        &config,
        "routes.yaml",
        &ROUTES.replace(
            "  - route:",
            "  - fault: {abort: {http2Error: x}}\n    route:",
        ),
    );
    wait_for(&daemon, "the rejection", |s| {
        !s["errors"].as_array().unwrap().is_empty()
    });

    let out = isthmusctl(&["status", "--debug-addr", &daemon.debug.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CONFIG   version 1"), "{text}");
    assert!(text.contains("routes.yaml:1 (document 1): VirtualService reviews: spec.http[0].fault.abort.http2Error: not supported by Isthmus"), "{text}");
    assert!(text.contains("(no proxy connected)"), "{text}");
}
