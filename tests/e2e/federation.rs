//! Federation discovery between two meshes, `red` and `green`, each with its own `isthmusd`,
//! CA and trust domain, configured only by YAML in Maistra's and Istio's syntax. Green exports
//! `ratings` and `reviews` to red; red imports `ratings` (and asks for `details`, which green
//! does not export). Checked: what red's sidecar gets, the status both sides write, an export
//! withdrawn and restored within 2 s, a peer of another trust domain refused, and the peer's
//! control plane killed (stale imports kept, status disconnected) and restarted (resync).
//! Red declares no egress gateway here, so discovery goes straight to green's discovery port
//! (`federation_gateways.rs` runs it through the gateways).

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests measure real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::Path;
use std::time::Duration;

use isthmus_e2e::mesh::{until, write};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{Isthmusd, free_port, isthmusctl};
use serde_json::Value;

const IMPORTED: &str = "ratings.bookinfo.svc.green-imports.local";

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

fn green_config(red_root: &str, export_ratings: bool) -> String {
    let ratings_rule = if export_ratings {
        "  - type: NameSelector\n    nameSelector: {namespace: bookinfo, name: ratings}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: bookinfo}}
spec:
  hosts: [ratings.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http}}]
  endpoints: [{{address: 127.0.0.1, serviceAccount: ratings}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http}}]
  endpoints: [{{address: 127.0.0.1, serviceAccount: reviews}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: red-ca-root-cert, namespace: istio-system}}
data:
  root-cert.pem: |
{root}---
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {{name: red, namespace: istio-system}}
spec:
  remote: {{addresses: [127.0.0.1]}}
  gateways: {{ingress: {{name: ingress-red}}, egress: {{name: egress-red}}}}
  security:
    trustDomain: red.local
    clientID: red.local/ns/istio-system/sa/egress-red-service-account
    certificateChain: {{kind: ConfigMap, name: red-ca-root-cert}}
---
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata: {{name: red, namespace: istio-system}}
spec:
  exportRules:
{ratings_rule}  - type: NameSelector
    nameSelector: {{namespace: bookinfo, name: reviews}}
",
        root = indent(red_root)
    )
}

fn red_config(green_root: &str, green_discovery: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: shop}}
spec: {{address: 127.0.0.1, serviceAccount: client}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: green-ca-root-cert, namespace: istio-system}}
data:
  root-cert.pem: |
{root}---
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {{name: green, namespace: istio-system}}
spec:
  remote: {{addresses: [127.0.0.1], discoveryPort: {green_discovery}}}
  gateways: {{ingress: {{name: ingress-green}}, egress: {{name: egress-green}}}}
  security:
    trustDomain: green.local
    clientID: green.local/ns/istio-system/sa/egress-red-service-account
    certificateChain: {{kind: ConfigMap, name: green-ca-root-cert}}
---
apiVersion: federation.maistra.io/v1
kind: ImportedServiceSet
metadata: {{name: green, namespace: istio-system}}
spec:
  importRules:
  - type: NameSelector
    nameSelector: {{namespace: bookinfo, name: ratings}}
  - type: NameSelector
    nameSelector: {{namespace: bookinfo, name: details}}
",
        root = indent(green_root)
    )
}

fn status(daemon: &Isthmusd) -> Value {
    serde_json::from_str(&daemon.http_get("/debug/federation")).unwrap_or(Value::Null)
}

fn red_watch(red: &Isthmusd) -> Value {
    status(red)["serviceMeshPeers"]["istio-system/green"]["discoveryStatus"]["active"][0]["watch"]
        .clone()
}

fn has_imported_cluster(proxy: &IsthmusProxy) -> bool {
    proxy.admin_get("/clusters").1.contains(IMPORTED)
}

struct Meshes {
    _dir: tempfile::TempDir,
    red: Isthmusd,
    green: Isthmusd,
    green_root: std::path::PathBuf,
    green_port: u16,
    red_root_pem: String,
}

/// Starts both control planes (green's discovery on a fixed port, so it can be restarted
/// there), then writes each side's federation configuration with the other's root.
fn meshes() -> Meshes {
    let dir = tempfile::tempdir().unwrap();
    let green_port = free_port();
    let fast = [
        "--federation-heartbeat",
        "1s",
        "--federation-stale-after",
        "30s",
    ];
    let green_root = dir.path().join("green");
    let port = green_port.to_string();
    let mut green_args = vec!["--federation-addr"];
    let addr = format!("127.0.0.1:{port}");
    green_args.push(&addr);
    green_args.extend(fast);
    let green = Isthmusd::start(&green_root, "green.local", &green_args).unwrap();
    let red = Isthmusd::start(&dir.path().join("red"), "red.local", &fast).unwrap();
    let red_root_pem = std::fs::read_to_string(red.root_file()).unwrap();
    let green_root_pem = std::fs::read_to_string(green.root_file()).unwrap();
    write(
        &green_root.join("config"),
        "federation.yaml",
        &green_config(&red_root_pem, true),
    );
    write(
        &dir.path().join("red").join("config"),
        "federation.yaml",
        &red_config(&green_root_pem, green_port),
    );
    Meshes {
        _dir: dir,
        red,
        green,
        green_root,
        green_port,
        red_root_pem,
    }
}

#[test]
fn an_export_and_import_reach_red_with_status_on_both_sides_and_withdrawal_within_2s() {
    let m = meshes();
    until(
        "red to import green's ratings",
        Duration::from_secs(20),
        || {
            status(&m.red)["importedServiceSets"]["istio-system/green"]["importedServices"]
                .as_array()
                .is_some_and(|a| a.len() == 2)
        },
    );
    let imported = &status(&m.red)["importedServiceSets"]["istio-system/green"];
    let services = imported["importedServices"].as_array().unwrap();
    let ratings = services
        .iter()
        .find(|s| s["exportedName"] == "ratings.bookinfo.svc.red-exports.local")
        .unwrap_or_else(|| panic!("{imported:#}"));
    assert_eq!(
        ratings["localService"]["hostname"], IMPORTED,
        "{imported:#}"
    );
    assert_eq!(ratings["localService"]["namespace"], "bookinfo");
    let reviews = services
        .iter()
        .find(|s| s["exportedName"] == "reviews.bookinfo.svc.red-exports.local")
        .unwrap_or_else(|| panic!("{imported:#}"));
    assert_eq!(
        reviews["localService"]["hostname"], "",
        "exported, not imported"
    );
    assert!(
        reviews["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no import rule")),
        "{imported:#}"
    );
    let unmatched = imported["unmatchedRules"].to_string();
    assert!(
        unmatched.contains("importRules[1] (bookinfo/details)"),
        "imported, not exported: {imported:#}"
    );
    assert_eq!(imported["stale"], false);

    let watch = red_watch(&m.red);
    assert_eq!(watch["connected"], true, "{watch:#}");
    assert!(watch["lastFullSync"].is_string(), "{watch:#}");
    let green_side = status(&m.green);
    let remotes = &green_side["serviceMeshPeers"]["istio-system/red"]["discoveryStatus"]["active"]
        [0]["remotes"];
    assert_eq!(remotes[0]["connected"], true, "{green_side:#}");
    assert!(
        remotes[0]["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("spiffe://red.local/")),
        "green names red's control plane by its verified identity: {remotes:#}"
    );
    let exported = &green_side["exportedServiceSets"]["istio-system/red"]["exportedServices"];
    assert_eq!(exported.as_array().map(Vec::len), Some(2), "{green_side:#}");
    assert_eq!(
        exported[0]["localService"]["hostname"], "ratings.bookinfo.svc.cluster.local",
        "{exported:#}"
    );
    // The same documents, one file per resource.
    let file = m
        .red
        .state_dir
        .join("status/importedserviceset/istio-system/green.json");
    let on_disk: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(on_disk["importedServices"], imported["importedServices"]);

    // `isthmusctl status` tells the same story.
    let out = isthmusctl(&["status", "--debug-addr", &m.red.debug.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("istio-system/green               imports    connected"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("ratings.bookinfo.svc.red-exports.local") && l.ends_with(IMPORTED)),
        "{text}"
    );

    // A red sidecar gets the imported service as a cluster.
    let proxy_dir = m._dir.path().join("proxy");
    std::fs::create_dir_all(&proxy_dir).unwrap();
    let client = IsthmusProxy::sidecar(
        &proxy_dir,
        &m.red,
        "127.0.0.1",
        "client",
        &[format!("OUTBOUND_PORT={}", free_port())],
    );
    client.wait_ready(Duration::from_secs(20)).unwrap();
    until("the imported cluster", Duration::from_secs(10), || {
        has_imported_cluster(&client)
    });

    // Withdraw the export on green: gone from red's sidecar within 2 s; back within 2 s.
    let green_config_dir = m.green_root.join("config");
    write(
        &green_config_dir,
        "federation.yaml",
        &green_config(&m.red_root_pem, false),
    );
    let gone = until(
        "the withdrawn export to leave red",
        Duration::from_secs(5),
        || !has_imported_cluster(&client),
    );
    write(
        &green_config_dir,
        "federation.yaml",
        &green_config(&m.red_root_pem, true),
    );
    let back = until(
        "the restored export to reach red",
        Duration::from_secs(5),
        || has_imported_cluster(&client),
    );
    eprintln!("export withdrawn: {gone:?}; restored: {back:?}");
    assert!(gone < Duration::from_secs(2), "withdrawal took {gone:?}");
    assert!(back < Duration::from_secs(2), "restoration took {back:?}");
}

#[test]
fn losing_the_peer_keeps_stale_imports_and_its_return_resyncs() {
    let mut m = meshes();
    until("the first import", Duration::from_secs(20), || {
        red_watch(&m.red)["lastFullSync"].is_string()
            && status(&m.red)["importedServiceSets"]["istio-system/green"]["importedServices"][0]["localService"]
                ["hostname"]
                == IMPORTED
    });
    let proxy_dir = m._dir.path().join("proxy");
    std::fs::create_dir_all(&proxy_dir).unwrap();
    let client = IsthmusProxy::sidecar(
        &proxy_dir,
        &m.red,
        "127.0.0.1",
        "client",
        &[format!("OUTBOUND_PORT={}", free_port())],
    );
    client.wait_ready(Duration::from_secs(20)).unwrap();
    until("the imported cluster", Duration::from_secs(10), || {
        has_imported_cluster(&client)
    });

    // Kill green's control plane.
    drop(std::mem::replace(
        &mut m.green,
        Isthmusd::start(&m._dir.path().join("placeholder"), "blue.local", &[]).unwrap(),
    ));
    until(
        "red to see green disconnected",
        Duration::from_secs(10),
        || red_watch(&m.red)["connected"] == false,
    );
    let watch = red_watch(&m.red);
    assert!(watch["lastDisconnectStatus"].is_string(), "{watch:#}");
    assert_eq!(watch["stale"], true, "{watch:#}");
    assert!(watch["staleUntil"].is_string(), "{watch:#}");
    let imported = &status(&m.red)["importedServiceSets"]["istio-system/green"];
    assert_eq!(imported["stale"], true, "{imported:#}");
    // Traffic config stays: the sidecar keeps the imported service through the stale period.
    std::thread::sleep(Duration::from_secs(2));
    assert!(has_imported_cluster(&client), "stale imports must stay");

    // Green comes back on the same port with the same CA: red resyncs.
    let addr = format!("127.0.0.1:{}", m.green_port);
    m.green = Isthmusd::start(
        &m.green_root,
        "green.local",
        &["--federation-addr", &addr, "--federation-heartbeat", "1s"],
    )
    .unwrap();
    until("red to resync with green", Duration::from_secs(20), || {
        let w = red_watch(&m.red);
        w["connected"] == true && w["stale"] == false
    });
    assert!(has_imported_cluster(&client));
}

#[test]
fn a_caller_of_an_unknown_trust_domain_is_refused_by_the_discovery_port() {
    let m = meshes();
    let discovery = m.green.federation.expect("green serves discovery");
    until("green to trust red's root", Duration::from_secs(20), || {
        red_watch(&m.red)["connected"] == true
    });
    // TLS 1.2, so that the client-certificate verdict is part of the handshake s_client reports.
    // s_client's exit status and what it printed: a refusal is told apart from a dead port.
    let handshake = |dir: &Path, cert: &Path| {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-tls1_2", "-connect", &discovery.to_string()])
            .args(["-alpn", "h2", "-cert"])
            .arg(cert.join("cert-chain.pem"))
            .arg("-key")
            .arg(cert.join("key.pem"))
            .arg("-CAfile")
            .arg(m.green.root_file())
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    // red's control plane: green has red's root for red.local, the handshake completes.
    let red_dir = m._dir.path().join("red-client");
    std::fs::create_dir_all(&red_dir).unwrap();
    let red_cert = isthmus_e2e::request_cert(
        &m.red,
        &red_dir,
        "spiffe://red.local/ns/istio-system/sa/isthmusd",
    );
    let (ok, out) = handshake(&red_dir, &red_cert);
    assert!(
        ok && out.contains("Verify return code: 0") && !out.contains("alert"),
        "a red client completes the handshake:\n{out}"
    );
    // blue's own CA issues a certificate green has no root for.
    let blue_dir = m._dir.path().join("blue");
    let blue = Isthmusd::start(&blue_dir, "blue.local", &[]).unwrap();
    let cert_dir = blue_dir.join("client");
    std::fs::create_dir_all(&cert_dir).unwrap();
    let blue_cert = isthmus_e2e::request_cert(
        &blue,
        &cert_dir,
        "spiffe://blue.local/ns/istio-system/sa/isthmusd",
    );
    // Refused in the handshake: green's verifier has no root for blue.local (alert 46), the
    // port is alive (a dead one would be "connect:errno=111", and no alert).
    let (ok, out) = handshake(&cert_dir, &blue_cert);
    assert!(
        !ok && out.contains("alert certificate unknown"),
        "a blue client must not complete a handshake with green's discovery port:\n{out}"
    );
}
