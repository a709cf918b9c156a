//! Every metrics endpoint of a running two-mesh federation (both `isthmusd`s' `/metrics`, the
//! gateways' and sidecars' `/stats/prometheus`) negotiates its format as Prometheus expects:
//! without an `Accept` header, the classic text format 0.0.4 that `promtool check metrics`
//! passes without a word; with Prometheus's scrape header, OpenMetrics ending in `# EOF`.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test

use std::process::Command;

use isthmus_e2e::federation::Federation;

/// What Prometheus (2.x) sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET url` with `accept` as the `Accept` header (none at all with `None`: curl's default
/// `*/*` is removed): (status, content type, body). Fails the test when there is no response.
fn fetch(url: &str, accept: Option<&str>) -> (u16, String, String) {
    let body_file = tempfile::NamedTempFile::new().unwrap();
    // `-H "Accept:"` makes curl send no Accept header.
    let header = format!(
        "Accept:{}",
        accept.map(|a| format!(" {a}")).unwrap_or_default()
    );
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-H", &header, "-o"])
        .arg(body_file.path())
        .args(["-w", "%{content_type}\n%{http_code}", url])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "{url} is unreachable ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let written = String::from_utf8(out.stdout).unwrap();
    let (content_type, status) = written.rsplit_once('\n').unwrap();
    let body = std::fs::read_to_string(body_file.path()).expect("metrics are UTF-8");
    (status.parse().unwrap(), content_type.to_owned(), body)
}

#[test]
fn every_metrics_endpoint_serves_promtool_clean_text_or_openmetrics_by_accept() {
    let f = Federation::start();
    // Traffic across the meshes: the proxies' families have members (labelled samples).
    f.wait_up();

    let mut endpoints = vec![
        (
            "red isthmusd".to_owned(),
            format!("http://{}/metrics", f.red.debug),
        ),
        (
            "green isthmusd".to_owned(),
            format!("http://{}/metrics", f.green().debug),
        ),
    ];
    for (i, proxy) in f.proxies.iter().enumerate() {
        endpoints.push((
            format!("proxy {i}"),
            format!("http://{}/stats/prometheus", proxy.admin()),
        ));
    }
    assert_eq!(
        endpoints.len(),
        6,
        "two isthmusds, two gateways, two sidecars"
    );

    for (name, url) in &endpoints {
        check_endpoint(name, url);
    }
}

/// One endpoint: promtool-clean classic text without `Accept`, OpenMetrics with Prometheus's.
fn check_endpoint(name: &str, url: &str) {
    let (status, content_type, body) = fetch(url, None);
    assert_eq!(status, 200, "{name} {url}: {body}");
    assert_eq!(content_type, TEXT, "{name} {url} without Accept");
    assert!(
        body.lines().any(|l| l.starts_with("# TYPE "))
            && body.lines().any(|l| !l.starts_with('#') && !l.is_empty()),
        "{name} {url}: families and samples expected:\n{body}"
    );
    assert!(!body.contains("# EOF"), "{name} {url}:\n{body}");
    assert!(!body.contains("_created"), "{name} {url}:\n{body}");
    assert!(!body.contains("# UNIT"), "{name} {url}:\n{body}");
    for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        if let Some(family) = line.strip_suffix(" counter") {
            assert!(family.ends_with("_total"), "{name} {url}: {line}");
        }
    }
    // The one lint allowed: Istio's own metric name, which dashboards and alerts written for
    // Istio query (promtool exits 3 for a lint, 1 for a format error).
    if let Err(lint) = isthmus_e2e::promtool::check_metrics(&body) {
        panic!("{name} {url}: promtool check metrics failed:\n{lint}\n---\n{body}");
    }

    let (status, content_type, body) = fetch(url, Some(PROMETHEUS_ACCEPT));
    assert_eq!(status, 200, "{name} {url}: {body}");
    assert_eq!(
        content_type, OPENMETRICS,
        "{name} {url} with Prometheus's Accept"
    );
    assert!(body.ends_with("# EOF\n"), "{name} {url}:\n{body}");
}

#[test]
fn every_metrics_endpoint_of_isthmusctl_up_two_meshes_passes_promtool() {
    let up = isthmus_e2e::up::Up::start(&isthmus_e2e::up::example());
    let run = up.run();
    let mut endpoints = Vec::new();
    for mesh in run["meshes"].as_array().unwrap() {
        let name = mesh["name"].as_str().unwrap();
        endpoints.push((
            format!("{name} isthmusd"),
            format!("http://{}/metrics", mesh["debug"].as_str().unwrap()),
        ));
        for kind in ["gateways", "workloads"] {
            for proxy in mesh[kind].as_array().unwrap() {
                endpoints.push((
                    format!("{name} {kind} {}", proxy["name"]),
                    format!(
                        "http://{}/stats/prometheus",
                        proxy["admin"].as_str().unwrap()
                    ),
                ));
            }
        }
    }
    assert!(
        endpoints.len() >= 8,
        "two isthmusds, their gateways and sidecars: {endpoints:?}"
    );
    for (name, url) in &endpoints {
        check_endpoint(name, url);
    }
}
