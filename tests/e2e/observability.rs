//! `manifests/observability/` proven on a real Prometheus (Debian's `prometheus` and `promtool`;
//! `tests/run.sh` installs them):
//!
//! - the bundled example under `isthmusctl up`, with traffic inside red, from red to green (HTTP,
//!   gRPC, refused by green's policy) and a connection green's ingress gateway refuses; a real
//!   Prometheus on the scrape configuration `up` wrote (`STATE/prometheus.yml`, intervals cut to
//!   1 s) with `rules.yaml`: every target up and `promtool check metrics`-clean, every query of
//!   every dashboard panel and every recording rule answered with data, every rule evaluated
//!   without error, and `istio_requests_total{source_mesh="red",destination_mesh="green"}`
//!   counting N calls exactly on both reporters;
//! - the Kubernetes scrape configuration's relabelling, on a real Prometheus fed the pods and
//!   endpoints Kubernetes discovery would give (file discovery with the same `__meta_*` labels);
//! - `promtool check rules`, `promtool test rules`, the dashboards' Grafana structure, and
//!   `kubectl kustomize` of the folder.

// Wall-clock time is right here: these tests wait on real processes.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::unwrap_used
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use isthmus_e2e::up::{Up, assert_nothing_left, example};
use isthmus_e2e::{curl_with, free_port, promtool};
use serde_json::{Value, json};

fn observability() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/observability")
        .canonicalize()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Prometheus and promtool

/// A Prometheus server on loopback, killed (and reaped) when dropped, panic or not.
struct Prometheus {
    child: Child,
    address: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Prometheus with `config` (written as JSON, which is YAML), once `/-/ready` answers.
    fn start(config: &Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, serde_json::to_string_pretty(config).unwrap()).unwrap();
        let (clean, said) = promtool(&["check", "config", &file.display().to_string()], "");
        assert!(clean, "promtool check config:\n{said}\n{config:#}");
        let address = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run prometheus (Debian package `prometheus`; tests/run.sh installs it)");
        let mut prometheus = Self {
            child,
            address,
            dir,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = prometheus.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            if matches!(prometheus.http("/-/ready", &[]), Ok((200, _))) {
                return prometheus;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "prometheus not ready in 30 s:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path?params` (URL-encoded): status and body.
    fn http(&self, path: &str, params: &[(&str, &str)]) -> Result<(u16, String), String> {
        let mut command = Command::new("curl");
        command.arg("-G");
        for (name, value) in params {
            command.args(["--data-urlencode", &format!("{name}={value}")]);
        }
        curl_with(command, &[&format!("http://{}{path}", self.address)])
            .map_err(|e| format!("{e:?}"))
    }

    /// An API call's `data`, or Prometheus's error.
    fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let (_, body) = self.http(path, params)?;
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))?;
        if answer["status"] == "success" {
            Ok(answer["data"].clone())
        } else {
            Err(format!("{} {}", answer["errorType"], answer["error"]))
        }
    }

    /// The instant vector (or scalar, as one sample) `promql` evaluates to now.
    fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/query", &[("query", promql)])?;
        Ok(match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => data["result"].as_array().cloned().unwrap(),
            _ => vec![data["result"].clone()],
        })
    }

    /// The single value of `promql` (a sum), if it has one.
    fn value(&self, promql: &str) -> Option<f64> {
        let result = self
            .query(promql)
            .unwrap_or_else(|e| panic!("{promql}: {e}"));
        match result.as_slice() {
            [one] => one["value"][1].as_str().unwrap().parse().ok(),
            _ => None,
        }
    }

    fn targets(&self) -> Value {
        self.api("/api/v1/targets", &[]).unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool args` in `manifests/observability` with `stdin`.
fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    promtool::run(&observability(), args, stdin)
}

/// Polls `check` until it gives `Ok`, for at most `limit`; its last complaint otherwise.
fn eventually<T>(limit: Duration, check: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    until(Instant::now() + limit, check)
}

/// Polls `check` until it gives `Ok` or `deadline` passes (it is tried at least once).
fn until<T>(deadline: Instant, mut check: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The dashboards

/// Every dashboard: (file name, JSON).
fn dashboards() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(observability().join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "{files:?}");
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, json)
        })
        .collect()
}

/// Every panel, rows' collapsed panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every panel query: ("panel title / refId", expr).
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |target| {
                    (
                        format!(
                            "{} / {}",
                            panel["title"].as_str().unwrap(),
                            target["refId"].as_str().unwrap()
                        ),
                        target["expr"].as_str().unwrap().to_owned(),
                    )
                })
        })
        .collect()
}

/// `expr` with Grafana's variables replaced: the built-in intervals, then `vars` (`$name` and
/// `${name}`, longest names first so that `$mesh` never eats a prefix of another name).
fn substitute(expr: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m");
    let mut names: Vec<&&str> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        out = out
            .replace(&format!("${{{name}}}"), vars[*name])
            .replace(&format!("${name}"), vars[*name]);
    }
    assert!(
        !out.contains('$'),
        "a variable is left in {out} (from {expr})"
    );
    out
}

/// The run's values for each dashboard's variables: every panel must show data for at least
/// one of them. The example's traffic flows one way (red calls green), so the federation
/// dashboard's two directions are each seen from one side, and a workload that is called
/// (ratings) and one that calls (red's client) together cover the workload dashboard.
fn variable_sets(uid: &str) -> Vec<BTreeMap<&'static str, &'static str>> {
    let sets: Vec<Vec<(&str, &str)>> = match uid {
        "isthmus-mesh-overview" | "isthmus-control-plane" => {
            vec![vec![("mesh", "red")], vec![("mesh", "green")]]
        }
        "isthmus-service" => vec![vec![
            ("mesh", "green"),
            ("service", "ratings.bookinfo.svc.cluster.local"),
            ("reporter", "destination"),
        ]],
        "isthmus-workload" => vec![
            vec![
                ("mesh", "green"),
                ("namespace", "bookinfo"),
                ("workload", "ratings"),
                ("reporter", "destination"),
            ],
            vec![
                ("mesh", "red"),
                ("namespace", "shop"),
                ("workload", "client"),
                ("reporter", "destination"),
            ],
        ],
        "isthmus-federation" => vec![
            vec![("mesh", "red"), ("peer", "green")],
            vec![("mesh", "green"), ("peer", "red")],
        ],
        other => panic!("no variable values for dashboard {other}"),
    };
    sets.into_iter()
        .map(|set| set.into_iter().collect())
        .collect()
}

#[test]
fn dashboards_are_grafana_dashboards_on_a_prometheus_datasource_variable() {
    let mut uids = BTreeSet::new();
    for (file, dashboard) in dashboards() {
        let uid = dashboard["uid"].as_str().unwrap().to_owned();
        assert!(uids.insert(uid.clone()), "{file}: uid {uid} twice");
        assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36, "{file}");
        assert!(dashboard["id"].is_null(), "{file}: importable (no id)");
        assert!(
            dashboard["title"]
                .as_str()
                .unwrap()
                .starts_with("Isthmus / ")
        );
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        assert_eq!(
            (
                &variables[0]["name"],
                &variables[0]["type"],
                &variables[0]["query"]
            ),
            (
                &json!("datasource"),
                &json!("datasource"),
                &json!("prometheus")
            ),
            "{file}: the first variable is the Prometheus data source"
        );
        let datasource = json!({"type": "prometheus", "uid": "${datasource}"});
        for variable in &variables[1..] {
            if variable["type"] == "query" {
                assert_eq!(variable["datasource"], datasource, "{file}: {variable}");
                assert!(
                    variable["definition"]
                        .as_str()
                        .unwrap()
                        .starts_with("label_values("),
                    "{file}: {variable}"
                );
            }
        }
        let mut ids = BTreeSet::new();
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap();
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{file}: id of {title}"
            );
            let grid = &panel["gridPos"];
            assert!(
                grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
                "{file}: {title} is wider than the grid"
            );
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(panel["datasource"], datasource, "{file}: {title}");
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{file}: {title} has no query");
            for target in targets {
                assert_eq!(target["datasource"], datasource, "{file}: {title}");
                assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()));
            }
        }
        // Every variable a query uses is defined (or one of Grafana's own).
        let defined: BTreeSet<&str> = variables
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for (at, expr) in panel_queries(&dashboard) {
            for name in expr.split('$').skip(1).map(|rest| {
                rest.trim_start_matches('{')
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap()
            }) {
                assert!(
                    name.starts_with("__") || defined.contains(name),
                    "{file}: {at} uses ${name}, not a variable: {expr}"
                );
            }
        }
    }
}

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    let (clean, said) = promtool(&["check", "rules", "rules.yaml"], "");
    assert!(clean, "promtool check rules:\n{said}");
    assert!(
        said.contains("SUCCESS") && !said.contains("WARNING"),
        "{said}"
    );
    let (passed, said) = promtool(&["test", "rules", "rules_test.yaml"], "");
    assert!(passed, "promtool test rules:\n{said}");
}

#[test]
fn kustomize_renders_the_prometheus_configuration_and_one_configmap_per_dashboard() {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(observability())
        .output()
        .expect("run kubectl (tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let by_name: BTreeMap<&str, &Value> = docs
        .iter()
        .map(|d| (d["metadata"]["name"].as_str().unwrap(), d))
        .collect();
    let read = |file: &str| std::fs::read_to_string(observability().join(file)).unwrap();
    let prometheus = by_name["isthmus-prometheus"];
    assert_eq!(
        prometheus["data"]["prometheus.yml"],
        read("prometheus-kubernetes.yaml")
    );
    assert_eq!(prometheus["data"]["rules.yaml"], read("rules.yaml"));
    for (file, _) in dashboards() {
        let name = format!(
            "isthmus-grafana-dashboard-{}",
            file.trim_end_matches(".json")
        );
        let map = by_name
            .get(name.as_str())
            .unwrap_or_else(|| panic!("no ConfigMap {name}"));
        assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
        assert_eq!(
            map["data"][file.as_str()],
            read(&format!("dashboards/{file}"))
        );
    }
    assert_eq!(docs.len(), 6);
}

// ---------------------------------------------------------------------------------------------
// The Kubernetes scrape configuration

/// A discovered pod, as Kubernetes pod discovery labels it (one target per container port).
fn pod(
    name: &str,
    ip: &str,
    ports: &[u16],
    phase: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> Vec<Value> {
    let sanitize = |s: &str| s.replace(['.', '/', '-'], "_");
    let mut meta = json!({
        "__meta_kubernetes_namespace": "shop",
        "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_phase": phase,
    });
    for (k, v) in labels {
        meta[format!("__meta_kubernetes_pod_label_{}", sanitize(k))] = json!(v);
        meta[format!("__meta_kubernetes_pod_labelpresent_{}", sanitize(k))] = json!("true");
    }
    for (k, v) in annotations {
        meta[format!("__meta_kubernetes_pod_annotation_{}", sanitize(k))] = json!(v);
        meta[format!("__meta_kubernetes_pod_annotationpresent_{}", sanitize(k))] = json!("true");
    }
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    ports
        .iter()
        .map(|port| json!({"targets": [format!("{host}:{port}")], "labels": meta}))
        .collect()
}

#[test]
fn the_kubernetes_scrape_configuration_finds_isthmusd_sidecars_gateways_and_applications() {
    let text = std::fs::read_to_string(observability().join("prometheus-kubernetes.yaml")).unwrap();
    let mut config: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(config["rule_files"], json!(["rules.yaml"]));
    let dir = tempfile::tempdir().unwrap();
    let injected = [
        ("sidecar.isthmus.io/status", "{}"),
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", "15020"),
        ("prometheus.io/path", "/stats/prometheus"),
    ];
    let mut pods = Vec::new();
    // An injected pod: its sidecar, once (two container ports).
    pods.extend(pod(
        "web-1",
        "10.1.0.7",
        &[8080, 8081],
        "Running",
        &[("app", "web")],
        &injected,
    ));
    // An injected pod whose application has its own scrape annotations: both.
    pods.extend(pod(
        "api-1",
        "10.1.0.8",
        &[9090],
        "Running",
        &[("app", "api")],
        &[
            ("sidecar.isthmus.io/status", "{}"),
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", "9090"),
        ],
    ));
    // A federation gateway with its status port announced.
    pods.extend(pod(
        "ingress-red-1",
        "10.1.0.9",
        &[15443],
        "Running",
        &[
            ("app", "ingress-red"),
            ("app.kubernetes.io/name", "federation-gateway"),
        ],
        &[
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", "15020"),
            ("prometheus.io/path", "/stats/prometheus"),
        ],
    ));
    // IPv6.
    pods.extend(pod(
        "web-2",
        "fd00::7",
        &[8080],
        "Running",
        &[("app", "web")],
        &injected,
    ));
    // Not annotated, and finished: nothing.
    pods.extend(pod(
        "plain-1",
        "10.1.0.10",
        &[80],
        "Running",
        &[("app", "plain")],
        &[],
    ));
    pods.extend(pod(
        "job-1",
        "10.1.0.11",
        &[80],
        "Succeeded",
        &[("app", "job")],
        &injected,
    ));
    let endpoints = json!([
        {"targets": ["10.0.0.5:15014"], "labels": {
            "__meta_kubernetes_namespace": "isthmus-system",
            "__meta_kubernetes_service_name": "isthmusd",
            "__meta_kubernetes_endpoint_port_name": "http-monitoring",
            "__meta_kubernetes_pod_name": "isthmusd-abc"}},
        {"targets": ["10.0.0.5:15012"], "labels": {
            "__meta_kubernetes_namespace": "isthmus-system",
            "__meta_kubernetes_service_name": "isthmusd",
            "__meta_kubernetes_endpoint_port_name": "grpc-xds",
            "__meta_kubernetes_pod_name": "isthmusd-abc"}},
    ]);
    let pods_file = dir.path().join("pods.json");
    let endpoints_file = dir.path().join("endpoints.json");
    std::fs::write(&pods_file, Value::Array(pods).to_string()).unwrap();
    std::fs::write(&endpoints_file, endpoints.to_string()).unwrap();
    // Kubernetes discovery replaced by files with the same labels (Debian's Prometheus is built
    // without it); everything else as written.
    for job in config["scrape_configs"].as_array_mut().unwrap() {
        let sd = job
            .as_object_mut()
            .unwrap()
            .remove("kubernetes_sd_configs")
            .unwrap();
        let file = match sd[0]["role"].as_str().unwrap() {
            "pod" => &pods_file,
            "endpoints" => &endpoints_file,
            role => panic!("role {role}"),
        };
        job["file_sd_configs"] = json!([{"files": [file.display().to_string()]}]);
    }
    config["rule_files"] = json!([observability().join("rules.yaml").display().to_string()]);
    config["global"]["scrape_interval"] = json!("1h");
    let prometheus = Prometheus::start(&config);

    let want: BTreeSet<(String, String, BTreeMap<String, String>)> = [
        (
            "isthmusd",
            "http://10.0.0.5:15014/metrics",
            json!({"namespace": "isthmus-system", "pod": "isthmusd-abc"}),
        ),
        (
            "isthmus-sidecars",
            "http://10.1.0.7:15020/stats/prometheus",
            json!({"namespace": "shop", "pod": "web-1", "workload": "web"}),
        ),
        (
            "isthmus-sidecars",
            "http://10.1.0.8:15020/stats/prometheus",
            json!({"namespace": "shop", "pod": "api-1", "workload": "api"}),
        ),
        (
            "isthmus-sidecars",
            "http://[fd00::7]:15020/stats/prometheus",
            json!({"namespace": "shop", "pod": "web-2", "workload": "web"}),
        ),
        (
            "kubernetes-pods",
            "http://10.1.0.8:9090/metrics",
            json!({"namespace": "shop", "pod": "api-1", "workload": "api"}),
        ),
        (
            "kubernetes-pods",
            "http://10.1.0.9:15020/stats/prometheus",
            json!({"namespace": "shop", "pod": "ingress-red-1", "gateway": "ingress-red"}),
        ),
    ]
    .into_iter()
    .map(|(job, url, labels)| {
        let mut labels: BTreeMap<String, String> = serde_json::from_value(labels).unwrap();
        labels.insert("mesh".into(), "cluster.local".into());
        labels.insert("job".into(), job.into());
        (job.to_owned(), url.to_owned(), labels)
    })
    .collect();
    let got = eventually(Duration::from_secs(30), || {
        let got: BTreeSet<(String, String, BTreeMap<String, String>)> =
            prometheus.targets()["activeTargets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    let mut labels: BTreeMap<String, String> =
                        serde_json::from_value(t["labels"].clone()).unwrap();
                    labels.remove("instance");
                    (
                        t["scrapePool"].as_str().unwrap().to_owned(),
                        t["scrapeUrl"].as_str().unwrap().to_owned(),
                        labels,
                    )
                })
                .collect();
        if got == want {
            Ok(got)
        } else {
            Err(format!("{got:#?}"))
        }
    });
    assert!(
        got.is_ok(),
        "targets: want {want:#?}\ngot {}",
        got.unwrap_err()
    );
}

// ---------------------------------------------------------------------------------------------
// The local run

/// A Prometheus text exposition's samples of `family`: (labels, value).
fn samples(text: &str, family: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
            let mut labels = BTreeMap::new();
            let mut chars = rest.chars();
            loop {
                let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
                let name = name.trim_start_matches(',').trim().to_owned();
                if name.is_empty() || name.starts_with('}') {
                    break;
                }
                assert_eq!(chars.next(), Some('"'), "{line}");
                let mut value = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('n') => value.push('\n'),
                            Some(other) => value.push(other),
                            None => break,
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(name, value);
                let rest = chars.as_str();
                if rest.starts_with('}') {
                    chars.next();
                    break;
                }
            }
            (labels, chars.as_str().trim())
        } else if rest.starts_with(' ') {
            (BTreeMap::new(), rest.trim())
        } else {
            continue; // another family with this prefix
        };
        let value = value.split(' ').next().unwrap().parse().unwrap();
        out.push((labels, value));
    }
    out
}

/// The sum of `istio_requests_total` samples matching `filter` on a proxy's admin port.
fn requests_on(admin: &str, filter: &[(&str, &str)]) -> f64 {
    let (status, text) = curl_with(
        Command::new("curl"),
        &[&format!("http://{admin}/stats/prometheus")],
    )
    .unwrap();
    assert_eq!(status, 200, "{admin}: {text}");
    samples(&text, "istio_requests_total")
        .into_iter()
        .filter(|(labels, _)| {
            filter
                .iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

fn mesh<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["meshes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap()
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

/// Calls through `proxy` (a sidecar's HTTP proxy) until one answers `status` (the imported
/// name takes a moment to reach red's sidecar).
fn call_until(proxy: &str, url: &str, status: u16, up: &Up) {
    let start = Instant::now();
    loop {
        let answer = curl_with(Command::new("curl"), &["-x", proxy, url]);
        if matches!(answer, Ok((s, _)) if s == status) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{url} through {proxy}: {answer:?}\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Calls `url` through `proxy` `n` times, each answered `status`.
fn call(proxy: &str, url: &str, status: u16, n: usize) {
    for _ in 0..n {
        let answer = curl_with(Command::new("curl"), &["-x", proxy, url]);
        assert!(
            matches!(answer, Ok((s, _)) if s == status),
            "{url} through {proxy}: {answer:?}"
        );
    }
}

const RATINGS: &str = "http://ratings.bookinfo.svc.green-imports.local:9080/";

#[test]
fn dashboards_and_rules_have_data_on_a_real_prometheus_scraping_isthmusctl_up() {
    let up = Up::start(&example());
    let run = up.run();
    let state = up.state.path().to_owned();
    let red = mesh(&run, "red");
    let green = mesh(&run, "green");
    let client = named(&red["workloads"], "client");
    let frontend = named(&red["workloads"], "frontend");
    let ratings = named(&green["workloads"], "ratings");
    let client_proxy = client["outbound"].as_str().unwrap();

    // The scrape configuration `up` wrote: every isthmusd, gateway and sidecar of run.json.
    let written = std::fs::read_to_string(state.join("prometheus.yml")).unwrap();
    assert!(
        written.starts_with("# Written by `isthmusctl up`"),
        "{written}"
    );
    let mut config: Value = serde_saphyr::from_str(&written).unwrap();
    assert_eq!(
        config["rule_files"],
        json!([observability().join("rules.yaml").display().to_string()]),
        "the source tree's rules"
    );
    let mut expected_targets = BTreeSet::new();
    for m in run["meshes"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        expected_targets.insert((
            "isthmusd".to_owned(),
            format!("http://{}/metrics", m["debug"].as_str().unwrap()),
            BTreeMap::from([("mesh".to_owned(), name.to_owned())]),
        ));
        for (kind, job, label) in [
            ("gateways", "isthmus-gateways", "gateway"),
            ("workloads", "isthmus-sidecars", "workload"),
        ] {
            for proxy in m[kind].as_array().unwrap() {
                expected_targets.insert((
                    job.to_owned(),
                    format!(
                        "http://{}/stats/prometheus",
                        proxy["admin"].as_str().unwrap()
                    ),
                    BTreeMap::from([
                        ("mesh".to_owned(), name.to_owned()),
                        (
                            "namespace".to_owned(),
                            proxy["namespace"].as_str().unwrap().to_owned(),
                        ),
                        (label.to_owned(), proxy["name"].as_str().unwrap().to_owned()),
                    ]),
                ));
            }
        }
    }
    assert!(expected_targets.len() >= 13, "{expected_targets:?}");
    // A short interval for the test; everything else as written.
    config["global"] = json!({
        "scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s",
    });
    let prometheus = Prometheus::start(&config);

    // Traffic: red's client reaches ratings in green (HTTP, then gRPC with application
    // statuses), red's frontend is refused by green's policy (403), the client calls frontend
    // inside red, and green's ingress gateway refuses a name no one exports.
    call_until(client_proxy, RATINGS, 200, &up);
    isthmus_e2e::grpc_echo::check_calls(
        client_proxy,
        "http://ratings.bookinfo.svc.green-imports.local:9090",
        "ratings-green",
        "spiffe://red.local/ns/shop/sa/client",
        &|| up.log(),
    );
    call(frontend["outbound"].as_str().unwrap(), RATINGS, 403, 2);
    call(
        client_proxy,
        "http://frontend.shop.svc.cluster.local:9080/",
        200,
        3,
    );
    let ingress = green["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["direction"] == "ingress")
        .unwrap();
    let listen = ingress["listen"].as_str().unwrap();
    let (host, port) = listen.rsplit_once(':').unwrap();
    for _ in 0..2 {
        let refused = curl_with(
            Command::new("curl"),
            &[
                "-k",
                "--resolve",
                &format!("nothing.example.invalid:{port}:{host}"),
                &format!("https://nothing.example.invalid:{port}/"),
            ],
        );
        assert!(
            refused.is_err(),
            "the gateway took an unknown name: {refused:?}"
        );
    }

    // Exactly N calls from red to green, counted by red's client sidecar (reporter source)
    // and green's ratings sidecar (reporter destination), there and in Prometheus; each side
    // names the other's workload on every call, although the metadata exchange goes once per
    // connection between two isthmus-proxy sidecars.
    let source = [
        ("reporter", "source"),
        ("source_mesh", "red"),
        ("destination_mesh", "green"),
    ];
    let destination = [
        ("reporter", "destination"),
        ("source_mesh", "red"),
        ("destination_mesh", "green"),
    ];
    let named_source = [&source[..], &[("destination_workload", "ratings")]].concat();
    let named_destination = [&destination[..], &[("source_workload", "client")]].concat();
    let client_admin = client["admin"].as_str().unwrap();
    let ratings_admin = ratings["admin"].as_str().unwrap();
    let before = (
        requests_on(client_admin, &source),
        requests_on(ratings_admin, &destination),
    );
    let named_before = (
        requests_on(client_admin, &named_source),
        requests_on(ratings_admin, &named_destination),
    );
    const N: usize = 7;
    call(client_proxy, RATINGS, 200, N);
    let want = (before.0 + N as f64, before.1 + N as f64);
    let after = eventually(Duration::from_secs(5), || {
        let now = (
            requests_on(client_admin, &source),
            requests_on(ratings_admin, &destination),
        );
        if now == want {
            Ok(now)
        } else {
            Err(format!("{now:?}"))
        }
    });
    assert_eq!(after, Ok(want), "{N} calls after {before:?}");
    assert_eq!(
        (
            requests_on(client_admin, &named_source),
            requests_on(ratings_admin, &named_destination),
        ),
        (named_before.0 + N as f64, named_before.1 + N as f64),
        "every call names the other side's workload"
    );
    let on_client = r#"sum(istio_requests_total{reporter="source", source_mesh="red", destination_mesh="green", mesh="red", workload="client"})"#;
    let on_ratings = r#"sum(istio_requests_total{reporter="destination", source_mesh="red", destination_mesh="green", mesh="green", workload="ratings"})"#;
    let seen = eventually(Duration::from_secs(20), || {
        let seen = (prometheus.value(on_client), prometheus.value(on_ratings));
        if seen == (Some(want.0), Some(want.1)) {
            Ok(seen)
        } else {
            Err(format!("{seen:?}"))
        }
    });
    assert!(seen.is_ok(), "Prometheus: {seen:?}, the sidecars: {want:?}");
    // Only green's ratings sidecar reports red's calls as their destination; only red's
    // sidecars as their source.
    let reporters = |reporter: &str| -> BTreeSet<(String, String)> {
        prometheus
            .query(&format!(
                r#"sum by (mesh, workload) (istio_requests_total{{reporter="{reporter}", source_mesh="red", destination_mesh="green"}})"#
            ))
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["metric"]["mesh"].as_str().unwrap_or("").to_owned(),
                    s["metric"]["workload"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let want_reporters = (
        BTreeSet::from([("green".to_owned(), "ratings".to_owned())]),
        BTreeSet::from([
            ("red".to_owned(), "client".to_owned()),
            ("red".to_owned(), "frontend".to_owned()),
        ]),
    );
    // frontend's sidecar may not have been scraped since its calls yet.
    let seen = eventually(Duration::from_secs(10), || {
        let seen = (reporters("destination"), reporters("source"));
        if seen == want_reporters {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    assert_eq!(seen, Ok(()), "reporters of red -> green calls");

    // Every target of the written configuration is scraped, and promtool-clean.
    let targets = eventually(Duration::from_secs(20), || {
        let targets = prometheus.targets();
        let active = targets["activeTargets"].as_array().unwrap().clone();
        let down: Vec<&Value> = active.iter().filter(|t| t["health"] != "up").collect();
        if down.is_empty() {
            Ok(active)
        } else {
            Err(format!("{down:#?}"))
        }
    })
    .unwrap_or_else(|down| panic!("targets not up: {down}"));
    let got: BTreeSet<(String, String, BTreeMap<String, String>)> = targets
        .iter()
        .map(|t| {
            let mut labels: BTreeMap<String, String> =
                serde_json::from_value(t["labels"].clone()).unwrap();
            labels.remove("instance");
            labels.remove("job");
            (
                t["scrapePool"].as_str().unwrap().to_owned(),
                t["scrapeUrl"].as_str().unwrap().to_owned(),
                labels,
            )
        })
        .collect();
    assert_eq!(got, expected_targets);
    for target in &targets {
        let url = target["scrapeUrl"].as_str().unwrap();
        let (status, body) = curl_with(Command::new("curl"), &[url]).unwrap();
        assert_eq!(status, 200, "{url}");
        // promtool's one objection to Istio's own name (the contract: Istio's dashboards
        // and tools read it) is a lint, not a format error (exit code 3, not 1).
        if let Err(lint) = promtool::check_metrics(&body) {
            panic!("{url}: promtool check metrics:\n{lint}");
        }
    }

    // Every rule evaluated without error; every recording rule and every dashboard query
    // answered with data (polled: rates need two scrapes, rules an evaluation).
    let mut missing = Vec::new();
    let rules: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(observability().join("rules.yaml")).unwrap(),
    )
    .unwrap();
    // One deadline for all: a query that has no data by then gets one try each.
    let deadline = Instant::now() + Duration::from_secs(30);
    let has_data = |promql: &str| -> Result<(), String> {
        until(deadline, || match prometheus.query(promql) {
            Ok(result) if !result.is_empty() => Ok(()),
            Ok(_) => Err("no data".to_owned()),
            Err(e) => Err(e),
        })
    };
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            if let Some(record) = rule["record"].as_str()
                && let Err(e) = has_data(record)
            {
                missing.push(format!("recording rule {record}: {e}"));
            }
        }
    }
    let evaluated = until(deadline, || {
        let groups = prometheus.api("/api/v1/rules", &[])?;
        let bad: Vec<String> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().iter())
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{} {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("\n"))
        }
    });
    if let Err(bad) = evaluated {
        missing.push(format!("rules not evaluated cleanly:\n{bad}"));
    }
    let (mut checked, mut zero_only) = (0, Vec::new());
    for (file, dashboard) in dashboards() {
        let uid = dashboard["uid"].as_str().unwrap();
        let sets = variable_sets(uid);
        // The variables' own queries list values.
        for set in &sets {
            for variable in dashboard["templating"]["list"].as_array().unwrap() {
                let Some(definition) = variable["definition"].as_str() else {
                    continue;
                };
                let inner = definition
                    .strip_prefix("label_values(")
                    .and_then(|d| d.strip_suffix(')'))
                    .unwrap();
                let (selector, label) = inner.rsplit_once(',').unwrap();
                let selector = substitute(selector.trim(), set);
                let values = until(deadline, || {
                    let values = prometheus.api(
                        &format!("/api/v1/label/{}/values", label.trim()),
                        &[("match[]", &selector)],
                    )?;
                    if values.as_array().is_some_and(|v| !v.is_empty()) {
                        Ok(values)
                    } else {
                        Err("no values".into())
                    }
                });
                if let Err(e) = values {
                    missing.push(format!(
                        "{file}: variable {} ({selector}): {e}",
                        variable["name"]
                    ));
                }
            }
        }
        for (at, expr) in panel_queries(&dashboard) {
            let tried: Vec<String> = sets.iter().map(|set| substitute(&expr, set)).collect();
            let found = until(deadline, || {
                for promql in &tried {
                    match prometheus.query(promql) {
                        Ok(result) if !result.is_empty() => return Ok(()),
                        Ok(_) => {}
                        Err(e) => return Err(format!("{promql}: {e}")),
                    }
                }
                Err(format!("no data for any of {tried:#?}"))
            });
            checked += 1;
            if let Err(e) = found {
                missing.push(format!("{file}: {at}: {e}"));
                continue;
            }
            // Said for the record: panels whose data is only their `or vector(0)` (nothing of
            // the kind happened in this run: no TCP service, no NACK, ...).
            if let Some(counted) = [" or on() vector(0)", " or vector(0)"]
                .iter()
                .find_map(|fallback| expr.strip_suffix(fallback))
                && sets.iter().all(|set| {
                    prometheus
                        .query(&substitute(counted, set))
                        .is_ok_and(|r| r.is_empty())
                })
            {
                zero_only.push(format!("{file}: {at}"));
            }
        }
    }
    eprintln!(
        "{checked} panel queries checked; {} show only their honest zero in this run:\n  {}",
        zero_only.len(),
        zero_only.join("\n  ")
    );
    assert!(
        missing.is_empty(),
        "{} queries without data:\n{}\n(prometheus log:\n{})",
        missing.len(),
        missing.join("\n"),
        prometheus.log()
    );

    drop(prometheus);
    drop(up);
    assert_nothing_left(&state, Duration::from_secs(10));
}
