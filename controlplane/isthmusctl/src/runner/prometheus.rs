//! `STATE/prometheus.yml`: a Prometheus configuration that scrapes everything a run started,
//! written next to `run.json` once the run is up (and rewritten by every `up`):
//!
//! - job `isthmusd`: each mesh's `isthmusd` debug port, `/metrics`, labelled `mesh`;
//! - job `isthmus-gateways`: each federation gateway's admin port, `/stats/prometheus`,
//!   labelled `mesh`, `namespace`, `gateway`;
//! - job `isthmus-sidecars`: each workload's sidecar admin port, `/stats/prometheus`, labelled
//!   `mesh`, `namespace`, `workload`.
//!
//! The target labels are the ones `manifests/observability/prometheus-kubernetes.yaml` gives in
//! a cluster, so the dashboards and rules of `manifests/observability/` read both alike. When
//! `isthmusctl` runs from the source tree it was built from, `rule_files` names that tree's
//! `manifests/observability/rules.yaml`; run `prometheus --config.file=STATE/prometheus.yml`
//! (`docs/observability.md`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::run_file::RunFile;

/// The file, in the state folder.
pub const PROMETHEUS_FILE: &str = "prometheus.yml";
/// How often the written configuration scrapes and evaluates rules.
pub const SCRAPE_INTERVAL: &str = "5s";
/// The recording and alerting rules of the source tree this binary was built from.
const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../manifests/observability/rules.yaml"
);

/// `STATE/prometheus.yml`.
pub fn path(state: &Path) -> PathBuf {
    state.join(PROMETHEUS_FILE)
}

/// The rule file to load, if the source tree's is there.
pub fn rules() -> Option<PathBuf> {
    let rules = Path::new(RULES);
    rules
        .is_file()
        .then(|| std::fs::canonicalize(rules).unwrap_or_else(|_| rules.to_owned()))
}

/// The configuration for `run`, loading `rules` if given.
pub fn config(run: &RunFile, rules: Option<&Path>) -> Value {
    let mut isthmusd = Vec::new();
    let mut gateways = Vec::new();
    let mut sidecars = Vec::new();
    for mesh in &run.meshes {
        isthmusd.push(json!({
            "targets": [mesh.debug.to_string()],
            "labels": {"mesh": mesh.name},
        }));
        for g in &mesh.gateways {
            gateways.push(json!({
                "targets": [g.admin.to_string()],
                "labels": {"mesh": mesh.name, "namespace": g.namespace, "gateway": g.name},
            }));
        }
        for w in &mesh.workloads {
            sidecars.push(json!({
                "targets": [w.admin.to_string()],
                "labels": {"mesh": mesh.name, "namespace": w.namespace, "workload": w.name},
            }));
        }
    }
    let job = |name: &str, path: &str, targets: Vec<Value>| json!({"job_name": name, "metrics_path": path, "static_configs": targets});
    let mut config = json!({
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            job("isthmusd", "/metrics", isthmusd),
            job("isthmus-gateways", "/stats/prometheus", gateways),
            job("isthmus-sidecars", "/stats/prometheus", sidecars),
        ],
    });
    if let Some(rules) = rules {
        config["rule_files"] = json!([rules.display().to_string()]);
    }
    config
}

/// The file's text: a header saying what it is, then the configuration as YAML.
pub fn render(run: &RunFile, rules: Option<&Path>) -> anyhow::Result<String> {
    let yaml = serde_saphyr::to_string(&config(run, rules))
        .context("cannot render the Prometheus configuration")?;
    Ok(format!(
        "# Written by `isthmusctl up` (pid {}) for the meshes of {}: every isthmusd (/metrics),\n\
         # federation gateway and sidecar (/stats/prometheus) of the run. Rewritten by every `up`.\n\
         #   prometheus --config.file={PROMETHEUS_FILE}   (docs/observability.md)\n{yaml}",
        run.pid,
        run.dir.display()
    ))
}

/// Writes `STATE/prometheus.yml` for `run` (atomically).
pub fn write(state: &Path, run: &RunFile) -> anyhow::Result<PathBuf> {
    let path = path(state);
    let tmp = path.with_extension("yml.tmp");
    std::fs::write(&tmp, render(run, rules().as_deref())?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::runner::run_file::{GatewayEntry, MeshEntry, WorkloadEntry};

    fn run() -> RunFile {
        let mesh = |name: &str, debug: &str, gateways, workloads| MeshEntry {
            name: name.to_owned(),
            trust_domain: format!("{name}.local"),
            config_dir: PathBuf::from("/state").join(name).join("config"),
            debug: debug.parse().unwrap(),
            xds: "127.0.0.1:1".parse().unwrap(),
            federation: None,
            gateways,
            workloads,
        };
        RunFile {
            pid: 42,
            dir: PathBuf::from("/meshes"),
            meshes: vec![
                mesh(
                    "green",
                    "127.0.0.1:4000",
                    vec![GatewayEntry {
                        name: "ingress-red".into(),
                        namespace: "istio-system".into(),
                        direction: "ingress".into(),
                        peer: "red".into(),
                        listen: "127.40.1.2:15443".parse().unwrap(),
                        admin: "127.40.1.2:15000".parse().unwrap(),
                    }],
                    vec![WorkloadEntry {
                        name: "ratings".into(),
                        namespace: "bookinfo".into(),
                        service_account: "ratings".into(),
                        outbound: "127.40.1.100:15001".parse().unwrap(),
                        admin: "127.40.1.100:15000".parse().unwrap(),
                        address: "127.40.1.100".into(),
                    }],
                ),
                mesh("red", "127.0.0.1:5000", vec![], vec![]),
            ],
            processes: vec![],
        }
    }

    #[test]
    fn every_port_of_the_run_is_a_target_with_its_labels() {
        let text = render(&run(), Some(Path::new("/repo/rules.yaml"))).unwrap();
        assert!(
            text.starts_with("# Written by `isthmusctl up` (pid 42)"),
            "{text}"
        );
        let parsed: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(parsed, config(&run(), Some(Path::new("/repo/rules.yaml"))));
        assert_eq!(parsed["global"]["scrape_interval"], "5s");
        assert_eq!(parsed["rule_files"], json!(["/repo/rules.yaml"]));
        let jobs = parsed["scrape_configs"].as_array().unwrap();
        assert_eq!(
            jobs[0],
            json!({"job_name": "isthmusd", "metrics_path": "/metrics", "static_configs": [
                {"targets": ["127.0.0.1:4000"], "labels": {"mesh": "green"}},
                {"targets": ["127.0.0.1:5000"], "labels": {"mesh": "red"}},
            ]})
        );
        assert_eq!(
            jobs[1]["static_configs"],
            json!([{"targets": ["127.40.1.2:15000"],
                    "labels": {"mesh": "green", "namespace": "istio-system", "gateway": "ingress-red"}}])
        );
        assert_eq!(jobs[1]["metrics_path"], "/stats/prometheus");
        assert_eq!(
            jobs[2]["static_configs"],
            json!([{"targets": ["127.40.1.100:15000"],
                    "labels": {"mesh": "green", "namespace": "bookinfo", "workload": "ratings"}}])
        );
        assert!(config(&run(), None).get("rule_files").is_none());
    }

    #[test]
    fn the_source_trees_rules_are_found_and_the_file_is_written() {
        let rules = rules().expect("built from this tree");
        assert!(rules.ends_with("manifests/observability/rules.yaml"));
        let state = tempfile::tempdir().unwrap();
        let written = write(state.path(), &run()).unwrap();
        assert_eq!(written, state.path().join("prometheus.yml"));
        let text = std::fs::read_to_string(&written).unwrap();
        assert!(text.contains(&rules.display().to_string()), "{text}");
    }
}
