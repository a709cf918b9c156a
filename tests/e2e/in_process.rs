//! The whole mesh of `examples/config` in this process: `isthmusd` bound on port 0 and one
//! `isthmus-proxy` per workload, each with a bootstrap token, its certificate from the CA and
//! delta ADS over mTLS, as the processes run. Every proxy becomes ready, `isthmusd` sees every
//! type of every stream acknowledged with no NACK, and everything stops on its shutdown future.
//! (`e2e/contract.rs` checks the same contract for every node shape of every example, without
//! sockets; `e2e/proxy_xds.rs` with processes.)

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use isthmus_controlplane::config::load_dir;
use isthmus_controlplane::model::MeshModel;
use isthmus_e2e::in_process::InProcessIsthmusd;
use isthmus_identity::TrustDomain;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_of_examples_config_is_configured_in_process_without_a_nack() {
    let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config");
    let state = tempfile::tempdir().unwrap();
    let daemon = InProcessIsthmusd::start(&config_dir, state.path(), "cluster.local").await;

    // The workloads, from the same configuration isthmusd reads.
    let model = MeshModel::build(
        Arc::new(load_dir(&config_dir).unwrap()),
        &TrustDomain::new("cluster.local").unwrap(),
        "istio-system",
    );
    assert!(model.workloads.len() >= 3, "{:?}", model.workloads.keys());
    let mut proxies = Vec::new();
    for w in model.workloads.values() {
        let node = format!(
            "sidecar~{}~{}.{ns}~{ns}.svc.cluster.local",
            w.address,
            w.name,
            ns = w.namespace
        );
        // Its outbound listener on its own address: proxies never share a port.
        let metadata = [("OUTBOUND_ADDRESS".to_owned(), w.address.clone())];
        let proxy = daemon.proxy(&node, &w.identity, &metadata).await;
        proxies.push((node, proxy));
    }
    for (node, proxy) in &proxies {
        proxy
            .wait_ready(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{node}: {e}"));
    }

    let (status, body) = daemon.debug_get("/debug/xds").await;
    assert_eq!(status, 200, "{body}");
    let xds: Value = serde_json::from_str(&body).unwrap();
    for (node, _) in &proxies {
        let stream = xds["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["node"] == node.as_str())
            .unwrap_or_else(|| panic!("no stream for {node}: {xds}"));
        let types = stream["types"].as_array().unwrap();
        assert!(types.len() >= 4, "{node}: {stream}");
        for t in types {
            assert!(t["nack"].is_null(), "{node}: {t}");
            assert_eq!(t["sent"], t["acked"], "{node}: {t}");
        }
    }

    for (node, proxy) in proxies {
        tokio::time::timeout(Duration::from_secs(10), proxy.stop())
            .await
            .unwrap_or_else(|_| panic!("{node} did not stop"))
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), daemon.stop())
        .await
        .expect("isthmusd did not stop")
        .unwrap();
}
