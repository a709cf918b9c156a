//! A small mesh for end-to-end tests, in Istio's YAML: an `echo` service with subsets v1 and
//! v2 and a client, the routes and policies the tests switch between, and the helpers to
//! write them and to bootstrap Envoy sidecars with `isthmusctl`.

// Wall-clock time is right here: these helpers wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::Path;
use std::time::{Duration, Instant};

use crate::isthmusctl;

pub fn write(dir: &Path, name: &str, text: &str) {
    // Write then rename, as editors and `kubectl` do: the watcher never sees half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write a config file");
    std::fs::rename(&tmp, dir.join(name)).expect("rename a config file into place");
}

pub fn mesh_yaml(ip: &str, port: u16) -> String {
    let workload = |name: &str, last: u8, labels: &str, sa: &str| {
        format!(
            "---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}, namespace: shop}}
spec: {{address: {ip}.{last}, labels: {{{labels}}}, serviceAccount: {sa}, ports: {{http: {port}}}}}
"
        )
    };
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: shop}}
spec:
  hosts: [echo.shop.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http}}]
  workloadSelector: {{labels: {{app: echo}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: shop}}
spec:
  host: echo.shop.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
{}{}{}",
        workload("echo-v1", 1, "app: echo, version: v1", "echo"),
        workload("echo-v2", 2, "app: echo, version: v2", "echo"),
        workload("client", 3, "app: client", "client"),
    )
}

pub const HEADER_ROUTES: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo.shop.local]
  http:
  - match: [{headers: {x-version: {exact: v2}}}]
    route: [{destination: {host: echo.shop.local, subset: v2}}]
  - route: [{destination: {host: echo.shop.local, subset: v1}}]
";

pub const SPLIT_ROUTES: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo.shop.local]
  http:
  - route:
    - {destination: {host: echo.shop.local, subset: v1}, weight: 50}
    - {destination: {host: echo.shop.local, subset: v2}, weight: 50}
";

pub const STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
";

pub const DENY_CLIENT: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{from: [{source: {principals: [red.local/ns/shop/sa/client]}}]}]
";

pub fn bootstrap(dir: &Path, name: &str, args: &[&str]) -> std::path::PathBuf {
    let file = dir.join(format!("{name}.json"));
    let mut all = vec![
        "bootstrap",
        "envoy",
        "--namespace",
        "shop",
        "--admin-port",
        "0",
    ];
    if !args.contains(&"--tls-dir") {
        all.push("--insecure-plaintext");
    }
    all.extend_from_slice(args);
    let out_file = file.to_string_lossy().into_owned();
    all.extend_from_slice(&["-o", &out_file]);
    let out = isthmusctl(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    file
}

/// Polls `check` every 20 ms until it holds; returns how long that took (at most `limit`).
pub fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// One more workload of the mesh, in namespace `shop`.
pub fn workload_yaml(name: &str, address: &str, labels: &str, service_account: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}, namespace: shop}}
spec: {{address: {address}, labels: {{{labels}}}, serviceAccount: {service_account}}}
"
    )
}

/// A stock Envoy as the sidecar of server `workload` at `address`, its app on `app_port`.
pub fn envoy_server(
    dir: &Path,
    xds: &str,
    workload: &str,
    address: &str,
    app_port: u16,
) -> crate::envoy::Envoy {
    let file = bootstrap(
        dir,
        workload,
        &[
            "--workload",
            workload,
            "--address",
            address,
            "--xds-address",
            xds,
            "--app-port",
            &format!("http={app_port}"),
        ],
    );
    crate::envoy::Envoy::start(dir, workload, &file).expect("start Envoy")
}

/// A stock Envoy as the sidecar of the `client` workload at `address`, its outbound HTTP proxy
/// on `outbound`.
pub fn envoy_client(dir: &Path, xds: &str, address: &str, outbound: u16) -> crate::envoy::Envoy {
    let file = bootstrap(
        dir,
        "client",
        &[
            "--workload",
            "client",
            "--address",
            address,
            "--xds-address",
            xds,
            "--outbound-port",
            &outbound.to_string(),
        ],
    );
    crate::envoy::Envoy::start(dir, "client", &file).expect("start Envoy")
}

/// Change number `n` of a service nobody calls (`<name>.shop.local`): relabelled, another port,
/// another endpoint each time. Configuration churn that touches no route a test calls.
pub fn churn_document(name: &str, n: u64) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop, labels: {{generation: \"{n}\"}}}}
spec:
  hosts: [{name}.shop.local]
  location: MESH_INTERNAL
  ports: [{{number: {port}, name: http}}]
  endpoints: [{{address: 127.0.30.{host}}}]
",
        port = 9000 + n % 100,
        host = 1 + n % 200,
    )
}
