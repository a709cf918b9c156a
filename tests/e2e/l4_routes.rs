//! `VirtualService` `tcp` and `tls` routes on a caller's sidecar, real processes: the
//! application connects to its sidecar's local TCP port (`OUTBOUND_TCP_PORTS`), and the
//! sidecar — `isthmus-proxy`, then a stock Envoy on the same `isthmusd` configuration — picks
//! the destination by the route: a subset for opaque TCP, and by the TLS client hello's SNI
//! (`sniHosts`) for TLS it does not terminate. `openssl s_server` instances are the TLS
//! servers, each with its own certificate, so the client sees which one it reached.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use isthmus_e2e::certs::{HttpsServer, Usage, ca, leaf, server_common_name};
use isthmus_e2e::envoy::{Echo, Envoy, curl};
use isthmus_e2e::mesh::{bootstrap, until};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{Isthmusd, free_port};
use serde_json::Value;

const CLIENT_ADDRESS: &str = "127.0.78.1";

fn config(v1: u16, v2: u16, alpha: u16, beta: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: shop}}
spec: {{address: {CLIENT_ADDRESS}, serviceAccount: client, labels: {{app: client}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: shop}}
spec:
  hosts: [db.shop.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 5432, name: tcp-db, protocol: TCP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp-db: {v1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{tcp-db: {v2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: shop}}
spec:
  host: db.shop.local
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: shop}}
spec:
  hosts: [db.shop.local]
  tcp:
  - match: [{{sourceLabels: {{app: somebody-else}}}}]
    route: [{{destination: {{host: db.shop.local, subset: v1}}}}]
  - match: [{{port: 5432, sourceLabels: {{app: client}}}}]
    route: [{{destination: {{host: db.shop.local, subset: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: alpha, namespace: shop}}
spec:
  hosts: [alpha.example.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {alpha}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: beta, namespace: shop}}
spec:
  hosts: [beta.example.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {beta}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: alpha, namespace: shop}}
spec:
  hosts: [alpha.example.test, '*.alpha.example.test']
  tls:
  - match: [{{port: 443, sniHosts: ['*.alpha.example.test']}}]
    route: [{{destination: {{host: beta.example.test}}}}]
"
    )
}

struct Setup {
    dir: tempfile::TempDir,
    daemon: Isthmusd,
    _backends: [Echo; 2],
    _servers: [HttpsServer; 2],
    ca: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (issuer, ca_file) = ca(&certs, "external");
    let names = ["alpha.example.test", "canary.alpha.example.test"];
    // Both servers are valid for both names: the common name tells them apart.
    let (alpha_cert, alpha_key) = leaf(&certs, "alpha", &names, &issuer, Usage::ServerAuth);
    let (beta_cert, beta_key) = leaf(&certs, "beta", &names, &issuer, Usage::ServerAuth);
    let alpha = HttpsServer::start(&alpha_cert, &alpha_key, None);
    let beta = HttpsServer::start(&beta_cert, &beta_key, None);
    let v1 = Echo::start(dir.path(), "db-v1").unwrap();
    let v2 = Echo::start(dir.path(), "db-v2").unwrap();
    let routes = dir.path().join("config");
    std::fs::create_dir_all(&routes).unwrap();
    std::fs::write(
        routes.join("mesh.yaml"),
        config(v1.addr.port(), v2.addr.port(), alpha.port, beta.port),
    )
    .unwrap();
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    Setup {
        dir,
        daemon,
        _backends: [v1, v2],
        _servers: [alpha, beta],
        ca: ca_file,
    }
}

/// Local ports of the client's sidecar: (db.shop.local:5432, alpha.example.test:443).
fn local_ports() -> (u16, u16) {
    (free_port(), free_port())
}

/// The echo backend's name for `GET /` spoken by the application over the local TCP port.
fn db_call(local: u16) -> Result<String, String> {
    let (status, body) =
        curl(&[&format!("http://127.0.0.1:{local}/")]).map_err(|e| e.to_string())?;
    let body: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {body}: {e}"))?;
    Ok(body["name"].as_str().unwrap_or_default().to_owned())
}

/// The common name of the server certificate the application meets when it connects to the
/// local TLS port with `sni`, verifying the chain against `ca`.
fn tls_call(local: u16, sni: &str, ca: &Path) -> Result<String, String> {
    server_common_name(
        std::process::Command::new("curl"),
        ca,
        sni,
        local,
        "127.0.0.1",
    )
}

fn check(setup: &Setup, db: u16, tls: u16, logs: &dyn Fn() -> String) {
    until("the sidecar's TCP routes", Duration::from_secs(20), || {
        db_call(db).is_ok()
    });
    // Without the route the two endpoints would share the calls: all go to subset v2.
    for _ in 0..8 {
        assert_eq!(
            db_call(db).unwrap_or_else(|e| panic!("{e}\n{}", logs())),
            "db-v2",
            "{}",
            logs()
        );
    }
    // SNI decides, and the TLS is end to end: the client verifies the server it reached.
    for _ in 0..3 {
        assert_eq!(
            tls_call(tls, "alpha.example.test", &setup.ca)
                .unwrap_or_else(|e| panic!("{e}\n{}", logs())),
            "alpha",
            "an SNI no tls route takes goes to the service itself"
        );
        assert_eq!(
            tls_call(tls, "canary.alpha.example.test", &setup.ca)
                .unwrap_or_else(|e| panic!("{e}\n{}", logs())),
            "beta",
            "*.alpha.example.test is routed to beta"
        );
    }
}

#[test]
fn isthmus_proxy_routes_tcp_by_source_and_tls_by_sni() {
    let setup = setup();
    let (db, tls) = local_ports();
    let proxy = IsthmusProxy::start(
        setup.dir.path(),
        "client",
        &[
            "--node-id".into(),
            format!("sidecar~{CLIENT_ADDRESS}~client.shop~shop.svc.cluster.local"),
            "--xds-plaintext".into(),
            "--xds-address".into(),
            setup.daemon.xds.to_string(),
            "--metadata".into(),
            format!("OUTBOUND_PORT={}", free_port()),
            "--metadata".into(),
            format!("OUTBOUND_TCP_PORTS=db.shop.local:5432={db},alpha.example.test:443={tls}"),
        ],
    );
    proxy.wait_ready(Duration::from_secs(20)).unwrap();
    check(&setup, db, tls, &|| proxy.logs());
}

#[test]
fn stock_envoy_takes_the_same_routes_with_no_rejected_update() {
    let setup = setup();
    let (db, tls) = local_ports();
    let file = bootstrap(
        setup.dir.path(),
        "client",
        &[
            "--workload",
            "client",
            "--address",
            CLIENT_ADDRESS,
            "--xds-address",
            &setup.daemon.xds.to_string(),
            "--outbound-port",
            &free_port().to_string(),
            "--outbound-tcp-port",
            &format!("db.shop.local:5432={db}"),
            "--outbound-tcp-port",
            &format!("alpha.example.test:443={tls}"),
        ],
    );
    let envoy = Envoy::start(setup.dir.path(), "client", &file).unwrap();
    check(&setup, db, tls, &|| envoy.logs());
    envoy.assert_no_rejected_update();
}
