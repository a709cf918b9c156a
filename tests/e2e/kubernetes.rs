//! Kubernetes mode end to end: real `isthmusd` processes (`--config-source kubernetes`) whose
//! kube-rs reflectors, status writer and TokenReview checks talk to the strict test API server
//! of `tests/support/test_api_server.rs`, and real `isthmus-proxy` processes that get their
//! certificates with service-account tokens.

#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::unwrap_used
)]

use std::time::Duration;

use isthmus_e2e::Isthmusd;
use isthmus_e2e::kube::ApiServer;
use isthmus_e2e::mesh::until;
use serde_json::Value;

fn kubernetes_isthmusd(
    dir: &std::path::Path,
    api: &ApiServer,
    td: &str,
    extra: &[&str],
) -> Isthmusd {
    api.isthmusd(dir, td, extra)
}

fn config_status(daemon: &Isthmusd) -> Value {
    serde_json::from_str(&daemon.http_get("/debug/config")).unwrap()
}

fn count(daemon: &Isthmusd, kind: &str) -> u64 {
    config_status(daemon)["resources"][kind]
        .as_u64()
        .unwrap_or(0)
}

/// Waits up to `secs` for `check` on `/debug/config`; fails with it.
fn wait_config(daemon: &Isthmusd, what: &str, secs: u64, check: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let status = config_status(daemon);
        if check(&status) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {status:#}\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn service_entry(name: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{name}.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: 443, name: tls, protocol: TLS}}]
"
    )
}

#[test]
fn a_bad_object_is_skipped_and_named_while_the_others_apply() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start();
    api.apply(&service_entry("payments"));
    let daemon = kubernetes_isthmusd(dir.path(), &api, "cluster.local", &[]);
    api.apply(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payments, namespace: shop}
spec:
  hosts: [payments.example.com]
  http: [{route: [{destination: {host: payments.example.com}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weight: 200
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payments, namespace: shop}
spec:
  host: payments.example.com
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
",
    );
    wait_config(&daemon, "the valid objects", 10, |s| {
        s["resources"]["VirtualService"] == 1 && s["resources"]["DestinationRule"] == 1
    });
    let status = config_status(&daemon);
    assert_eq!(status["resources"]["ServiceEntry"], 1, "{status}");
    let errors = status["errors"].as_array().unwrap();
    assert!(!errors.is_empty(), "{status}");
    for e in errors {
        assert_eq!(e["resource"], "VirtualService bookinfo/reviews", "{status}");
        assert_eq!(
            e["file"],
            "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices/reviews"
        );
    }
    assert!(
        errors.iter().any(|e| e["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("spec.http[0].route"))),
        "{status}"
    );
    assert!(
        daemon.logs().contains("VirtualService bookinfo/reviews"),
        "the skipped object is logged by name"
    );

    // Fixed, it applies and the problem is gone.
    api.apply(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
",
    );
    until("the fixed object applies", Duration::from_secs(10), || {
        count(&daemon, "VirtualService") == 2
    });
    assert_eq!(config_status(&daemon)["errors"], serde_json::json!([]));
}

#[test]
fn a_closed_watch_and_a_410_lose_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start();
    api.apply(&service_entry("a"));
    let daemon = kubernetes_isthmusd(dir.path(), &api, "cluster.local", &[]);
    until("the first object", Duration::from_secs(10), || {
        count(&daemon, "ServiceEntry") == 1
    });

    // The server ends every watch, and a change is made before the reflectors watch again:
    // their watch resumes from their resourceVersion and the change arrives.
    api.server.hold_watches();
    api.server.close_watches();
    api.apply(&service_entry("b"));
    api.server.release_watches();
    until(
        "the change made while the watch was closed",
        Duration::from_secs(10),
        || count(&daemon, "ServiceEntry") == 2,
    );

    // Again, and the server forgets the events before now: resuming from their last
    // resourceVersion gets 410 Gone, and the reflectors list again. The changes made
    // meanwhile (an addition and a deletion) arrive.
    api.server.hold_watches();
    api.server.close_watches();
    api.apply(&service_entry("c"));
    api.apply(&service_entry("d"));
    assert!(api.server.delete("ServiceEntry", Some("shop"), "a"));
    api.server.compact();
    api.server.release_watches();
    // b, c, d: 2 if the additions were lost, 4 if the deletion was.
    until(
        "the changes made across the 410",
        Duration::from_secs(15),
        || count(&daemon, "ServiceEntry") == 3,
    );
    api.apply(&service_entry("e"));
    until(
        "live events after the relist",
        Duration::from_secs(10),
        || count(&daemon, "ServiceEntry") == 4,
    );
    let requests = api.server.requests();
    let lists = requests
        .iter()
        .filter(|(m, p)| {
            m == "GET"
                && p.starts_with("/apis/networking.istio.io/v1/serviceentries")
                && !p.contains("watch=true")
        })
        .count();
    assert!(lists >= 2, "a relist after the 410: {requests:?}");
}

/// What red imports from green.
const IMPORTED: &str = "ratings.bookinfo.svc.green-imports.local";

/// The federation YAML of the `manifests/examples/<mesh>` overlay (that of
/// `examples/two-meshes`), the peer's address pointed at `address:port` on loopback.
fn example_federation(mesh: &str, placeholder: &str, address: &str, port: u16) -> String {
    let path = format!(
        "{}/../manifests/examples/{mesh}/federation.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let from = format!("    addresses: [{placeholder}]");
    assert!(text.contains(&from), "{path} names its peer {placeholder}");
    text.replace(
        &from,
        &format!("    addresses: [{address}]\n    servicePort: {port}"),
    )
}

fn root_config_map(name: &str, pem: &str) -> String {
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}, namespace: istio-system}}
data:
  root-cert.pem: |
{indented}"
    )
}

fn call(outbound: u16) -> Result<(u16, String), isthmus_e2e::CurlError> {
    isthmus_e2e::curl_with(
        std::process::Command::new("curl"),
        &[
            "-x",
            &format!("http://127.0.0.1:{outbound}"),
            &format!("http://{IMPORTED}:9080/"),
        ],
    )
}

#[test]
fn two_meshes_configured_only_through_their_api_servers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let (ingress, egress, ratings_inbound, outbound) = (
        isthmus_e2e::free_port(),
        isthmus_e2e::free_port(),
        isthmus_e2e::free_port(),
        isthmus_e2e::free_port(),
    );
    let echo = isthmus_e2e::envoy::Echo::start(path, "ratings-green").unwrap();
    let green_api = ApiServer::start();
    let red_api = ApiServer::start();
    let green = kubernetes_isthmusd(&path.join("green"), &green_api, "green.local", &[]);
    let red = kubernetes_isthmusd(&path.join("red"), &red_api, "red.local", &[]);
    let red_root = std::fs::read_to_string(red.root_file()).unwrap();
    let green_root = std::fs::read_to_string(green.root_file()).unwrap();

    // Green: the example's federation YAML, red's root, the ingress gateway for red and
    // ratings as Service, EndpointSlice and Pod; only red's client may call ratings.
    let green_federation =
        example_federation("green", "ingress-green.red.example", "127.0.10.2", 15443);
    green_api.apply(&green_federation);
    green_api.apply(&root_config_map("red-ca-root-cert", &red_root));
    green_api.pod(
        "istio-system",
        "ingress-red-0",
        "127.0.20.2",
        "ingress-red-service-account",
        "ingress-red",
    );
    green_api.service(
        "istio-system",
        "ingress-red",
        "tls-federation",
        15443,
        "127.0.20.2",
        ingress,
        "ingress-red-0",
    );
    green_api.pod("bookinfo", "ratings-v1", "127.0.20.3", "ratings", "ratings");
    green_api.service(
        "bookinfo",
        "ratings",
        "http",
        9080,
        "127.0.20.3",
        ratings_inbound,
        "ratings-v1",
    );
    green_api.apply(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules: [{from: [{source: {principals: [red.local/ns/shop/sa/client]}}]}]
",
    );
    // Red: the example's federation YAML, green's root, the egress gateway for green, and the
    // client pod.
    red_api.apply(&example_federation(
        "red",
        "ingress-red.green.example",
        "127.0.20.2",
        ingress,
    ));
    red_api.apply(&root_config_map("green-ca-root-cert", &green_root));
    red_api.pod(
        "istio-system",
        "egress-green-0",
        "127.0.10.2",
        "egress-green-service-account",
        "egress-green",
    );
    red_api.service(
        "istio-system",
        "egress-green",
        "tls-federation",
        15443,
        "127.0.10.2",
        egress,
        "egress-green-0",
    );
    red_api.pod("shop", "client", "127.0.10.3", "client", "client");

    let proxies_dir = path.join("proxies");
    std::fs::create_dir_all(&proxies_dir).unwrap();
    let app_ports = format!("APP_PORTS=http={}", echo.addr.port());
    let outbound_port = format!("OUTBOUND_PORT={outbound}");
    let proxies = [
        green_api.pod_proxy(
            &proxies_dir,
            &green,
            "router~127.0.20.2~ingress-red-0.istio-system~istio-system.svc.cluster.local",
            ("istio-system", "ingress-red-service-account"),
            "green.local",
            &["--role", "federation"],
        ),
        green_api.pod_proxy(
            &proxies_dir,
            &green,
            "sidecar~127.0.20.3~ratings-v1.bookinfo~bookinfo.svc.cluster.local",
            ("bookinfo", "ratings"),
            "green.local",
            &["--metadata", &app_ports],
        ),
        red_api.pod_proxy(
            &proxies_dir,
            &red,
            "router~127.0.10.2~egress-green-0.istio-system~istio-system.svc.cluster.local",
            ("istio-system", "egress-green-service-account"),
            "red.local",
            &["--role", "federation"],
        ),
        red_api.pod_proxy(
            &proxies_dir,
            &red,
            "sidecar~127.0.10.3~client.shop~shop.svc.cluster.local",
            ("shop", "client"),
            "red.local",
            &["--metadata", &outbound_port],
        ),
    ];
    for proxy in &proxies {
        if let Err(e) = proxy.wait_ready(Duration::from_secs(30)) {
            panic!(
                "{e}\ngreen: {}\n{}\nred: {}\n{}",
                green.http_get("/debug/config"),
                green.logs(),
                red.http_get("/debug/config"),
                red.logs()
            );
        }
    }

    // The certificates came with service-account tokens checked by TokenReview.
    for api in [&green_api, &red_api] {
        assert!(
            api.server.requests().iter().any(|(m, p)| m == "POST"
                && p.starts_with("/apis/authentication.k8s.io/v1/tokenreviews")),
            "no TokenReview: {:?}",
            api.server.requests()
        );
    }

    // A call from red reaches green's ratings, and green's sidecar saw red's caller.
    let reached = wait_call(outbound, Duration::from_secs(30), |r| {
        matches!(r, Ok((200, _)))
    });
    let Ok((200, body)) = reached else {
        let tail = |t: String| t.lines().rev().take(20).collect::<Vec<_>>().join("\n");
        panic!(
            "no cross-mesh call passed: {reached:?}\nred: {}\ngreen: {}\nproxies:\n{}",
            red.http_get("/debug/federation"),
            green.http_get("/debug/federation"),
            proxies
                .iter()
                .map(|p| tail(p.logs()))
                .collect::<Vec<_>>()
                .join("\n-----\n")
        );
    };
    assert!(
        body.contains("URI=spiffe://red.local/ns/shop/sa/client"),
        "green's sidecar forwarded red's caller identity: {body}"
    );

    // Status on each API server shows the connection and what crosses.
    let limit = Duration::from_secs(15);
    let red_peer = red_api.wait_for("ServiceMeshPeer", "istio-system", "green", limit, |o| {
        o["status"]["discoveryStatus"]["active"][0]["watch"]["connected"] == true
    });
    assert!(
        red_peer.is_ok(),
        "red's ServiceMeshPeer green: {red_peer:?}"
    );
    let green_peer = green_api.wait_for("ServiceMeshPeer", "istio-system", "red", limit, |o| {
        o["status"]["discoveryStatus"]["active"][0]["remotes"][0]["connected"] == true
    });
    assert!(
        green_peer.is_ok(),
        "green's ServiceMeshPeer red: {green_peer:?}"
    );
    let exported = green_api.wait_for("ExportedServiceSet", "istio-system", "red", limit, |o| {
        o["status"]["exportedServices"]
            .as_array()
            .is_some_and(|s| s.iter().any(|e| e["localService"]["name"] == "ratings"))
    });
    assert!(
        exported.is_ok(),
        "green's ExportedServiceSet red: {exported:?}"
    );
    let imported = red_api.wait_for("ImportedServiceSet", "istio-system", "green", limit, |o| {
        o["status"]["importedServices"]
            .as_array()
            .is_some_and(|s| s.iter().any(|e| e["localService"]["hostname"] == IMPORTED))
    });
    assert!(
        imported.is_ok(),
        "red's ImportedServiceSet green: {imported:?}"
    );

    // Deleting the export rule through green's API server cuts the service off within 2 s;
    // restoring it brings it back.
    let ratings_rule =
        "  - type: NameSelector\n    nameSelector: {namespace: bookinfo, name: ratings}\n";
    assert!(green_federation.contains(ratings_rule));
    let withdrawn = std::time::Instant::now();
    green_api.apply(&green_federation.replace(ratings_rule, ""));
    let result = wait_call(outbound, Duration::from_secs(2), |r| {
        !matches!(r, Ok((200, _)))
    });
    assert!(
        !matches!(result, Ok((200, _))),
        "still reachable 2 s after the export rule was deleted: {result:?}"
    );
    let cut_after = withdrawn.elapsed();
    green_api.apply(&green_federation);
    let restored = wait_call(outbound, Duration::from_secs(15), |r| {
        matches!(r, Ok((200, _)))
    });
    assert!(
        matches!(restored, Ok((200, _))),
        "not reachable again: {restored:?}"
    );
    eprintln!("export rule deleted -> unreachable after {cut_after:?}");
}

/// Calls the imported service through red's client sidecar until `done` holds or `limit`
/// passes; the last result.
fn wait_call(
    outbound: u16,
    limit: Duration,
    done: impl Fn(&Result<(u16, String), isthmus_e2e::CurlError>) -> bool,
) -> Result<(u16, String), isthmus_e2e::CurlError> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let result = call(outbound);
        if done(&result) || std::time::Instant::now() > deadline {
            return result;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_replicas_one_status_writer_and_the_lease_fails_over() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start();
    // A peer that cannot be reached: its status still says so, written by the lease holder.
    api.apply(
        "apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {name: green, namespace: istio-system}
spec:
  remote: {addresses: [127.0.0.1], discoveryPort: 9}
  gateways: {ingress: {name: ingress-green}, egress: {name: egress-green}}
  security:
    trustDomain: green.local
    clientID: green.local/ns/istio-system/sa/egress-red-service-account
    certificateChain: {kind: ConfigMap, name: green-ca-root-cert}
",
    );
    let replica = |name: &str| {
        kubernetes_isthmusd(
            &dir.path().join(name),
            &api,
            "red.local",
            &["--pod-name", name, "--lease-duration", "3s"],
        )
    };
    let mut replicas = vec![Some(replica("isthmusd-a")), Some(replica("isthmusd-b"))];
    let holder = |api: &ApiServer| -> Option<String> {
        api.server
            .get("Lease", Some("isthmus-system"), "isthmusd-status")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
            .filter(|h| !h.is_empty())
    };
    let writer_of = |api: &ApiServer| -> Option<String> {
        api.server
            .get("ServiceMeshPeer", Some("istio-system"), "green")
            .and_then(|p| {
                p["status"]["discoveryStatus"]["active"][0]["pod"]
                    .as_str()
                    .map(str::to_owned)
            })
    };
    until(
        "a lease holder writes status",
        Duration::from_secs(10),
        || holder(&api).is_some() && writer_of(&api) == holder(&api),
    );
    let first = holder(&api).unwrap();
    // For a while, only the holder writes: the status names it every time.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        assert_eq!(
            writer_of(&api).as_deref(),
            Some(first.as_str()),
            "one writer"
        );
        assert_eq!(
            holder(&api).as_deref(),
            Some(first.as_str()),
            "a stable holder"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status_patches = |api: &ApiServer| {
        api.server
            .requests()
            .iter()
            .filter(|(m, p)| m == "PATCH" && p.contains("/servicemeshpeers/green/status"))
            .count()
    };
    let before = status_patches(&api);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        status_patches(&api),
        before,
        "an unchanged status is not written again"
    );

    // The holder stops without a word: the other replica takes over within the lease time.
    let index = usize::from(first == "isthmusd-b");
    let stopped = std::time::Instant::now();
    drop(replicas[index].take());
    let second = if index == 0 {
        "isthmusd-b"
    } else {
        "isthmusd-a"
    };
    until(
        "the other replica holds the lease and writes",
        Duration::from_secs(12),
        || holder(&api).as_deref() == Some(second) && writer_of(&api).as_deref() == Some(second),
    );
    let took = stopped.elapsed();
    // The lease's 3 s, counted from when the other replica last saw it renewed (up to a
    // renewal period, 1 s, after the last renewal), plus its next round.
    assert!(
        took < Duration::from_secs(8),
        "failover within the 3 s lease plus renewal periods, took {took:?}"
    );
    eprintln!("lease failover took {took:?}");
    drop(replicas);
}

#[test]
fn discovery_selectors_scope_the_mesh_to_the_selected_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start();
    api.apply(
        "apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-discovery: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
",
    );
    api.apply(&service_entry("payments"));
    api.apply(&service_entry("ledger").replace("namespace: shop", "namespace: legacy"));
    api.pod("legacy", "ledger-0", "127.0.33.1", "ledger", "ledger");
    let daemon = kubernetes_isthmusd(
        dir.path(),
        &api,
        "cluster.local",
        &["--discovery-selector", "istio-discovery=enabled"],
    );
    wait_config(&daemon, "the selected namespace only", 10, |s| {
        s["version"].as_u64() >= Some(1)
    });
    let status = config_status(&daemon);
    assert_eq!(status["resources"]["ServiceEntry"], 1, "{status}");
    assert_eq!(status["cluster"]["pods"], 0, "{status}");

    // Labelled, the namespace joins the mesh.
    api.apply(
        "apiVersion: v1
kind: Namespace
metadata: {name: legacy, labels: {istio-discovery: enabled}}
",
    );
    wait_config(&daemon, "the newly selected namespace", 10, |s| {
        s["resources"]["ServiceEntry"] == 2 && s["cluster"]["pods"] == 1
    });
}
