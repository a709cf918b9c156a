//! Two federated meshes, `red` and `green`, as real processes on loopback, for the federation
//! tests and benchmarks: configurations in Maistra's and Istio's YAML, and the processes.

// Wall-clock time is right here: these helpers wait on real processes.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::unwrap_used
)]

use std::process::Command;
use std::time::Duration;

use crate::envoy::{Echo, Envoy};
use crate::mesh::write;
use crate::proxy::IsthmusProxy;
use crate::{Isthmusd, curl_with, free_port};

/// Green's ingress gateway for red, as a node.
const GREEN_INGRESS_NODE: &str =
    "router~127.0.20.2~ingress-red.istio-system~istio-system.svc.cluster.local";

/// What red imports from green.
pub const IMPORTED: &str = "ratings.bookinfo.svc.green-imports.local";

pub fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

/// Every port the two meshes use (all on loopback; addresses 127.0.10.x are red's, 127.0.20.x
/// green's).
#[derive(Debug, Clone)]
pub struct Ports {
    pub ingress: u16,
    pub egress: u16,
    pub ratings_inbound: u16,
    pub ratings_app: u16,
    pub details_inbound: u16,
    pub outbound: u16,
}

/// Green: its ingress gateway for red, `ratings` (exported to red, authorized by `policy`),
/// `reviews` (exported, not imported by red), `details` (not exported), red's root,
/// `ServiceMeshPeer red` and its export set.
pub fn green_config(red_root: &str, p: &Ports, policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ingress-red, namespace: istio-system}}
spec:
  hosts: [ingress-red.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 15443, name: tls-federation}}]
  workloadSelector: {{labels: {{app: ingress-red}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ingress-red, namespace: istio-system}}
spec: {{address: 127.0.20.2, labels: {{app: ingress-red}}, serviceAccount: ingress-red-service-account, ports: {{tls-federation: {ingress}}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: bookinfo}}
spec:
  hosts: [ratings.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http}}]
  workloadSelector: {{labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-v1, namespace: bookinfo}}
spec: {{address: 127.0.20.3, labels: {{app: ratings}}, serviceAccount: ratings, ports: {{http: {ratings_inbound}}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: details, namespace: bookinfo}}
spec:
  hosts: [details.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http}}]
  endpoints: [{{address: 127.0.20.4, serviceAccount: details, ports: {{http: {details_inbound}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http}}]
  endpoints: [{{address: 127.0.20.5, serviceAccount: reviews, ports: {{http: {details_inbound}}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ratings, namespace: bookinfo}}
spec:
  selector: {{matchLabels: {{app: ratings}}}}
{policy}
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
  remote: {{addresses: [127.0.10.2]}}
  gateways: {{ingress: {{name: ingress-red}}, egress: {{name: egress-red}}}}
  security:
    trustDomain: red.local
    clientID: red.local/ns/istio-system/sa/egress-green-service-account
    certificateChain: {{kind: ConfigMap, name: red-ca-root-cert}}
---
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata: {{name: red, namespace: istio-system}}
spec:
  exportRules:
  - type: NameSelector
    nameSelector: {{namespace: bookinfo, name: ratings}}
  - type: NameSelector
    nameSelector: {{namespace: bookinfo, name: reviews}}
",
        ingress = p.ingress,
        ratings_inbound = p.ratings_inbound,
        details_inbound = p.details_inbound,
        root = indent(red_root),
    )
}

/// Red: its client, its egress gateway for green, green's root, `ServiceMeshPeer green` and
/// the import of green's `ratings` (and of `details`, which green does not export).
pub fn red_config(green_root: &str, p: &Ports) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: shop}}
spec: {{address: 127.0.10.3, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: egress-green, namespace: istio-system}}
spec:
  hosts: [egress-green.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 15443, name: tls-federation}}]
  workloadSelector: {{labels: {{app: egress-green}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: egress-green, namespace: istio-system}}
spec: {{address: 127.0.10.2, labels: {{app: egress-green}}, serviceAccount: egress-green-service-account, ports: {{tls-federation: {egress}}}}}
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
  remote: {{addresses: [127.0.20.2], servicePort: {ingress}}}
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
        egress = p.egress,
        ingress = p.ingress,
        root = indent(green_root),
    )
}

pub const ALLOW_RED_CLIENT: &str =
    "  action: ALLOW\n  rules: [{from: [{source: {principals: [red.local/ns/shop/sa/client]}}]}]";
pub const DENY_RED_CLIENT: &str =
    "  action: DENY\n  rules: [{from: [{source: {principals: [red.local/ns/shop/sa/client]}}]}]";

/// Which federation gateway is a stock Envoy instead of `isthmus-proxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvoyGateway {
    GreenIngress,
    RedEgress,
}

/// Two meshes on loopback, each with its own `isthmusd`, CA and trust domain: green's ingress
/// gateway and ratings sidecar, red's egress gateway and client sidecar, all `isthmus-proxy`
/// (in that order in `proxies`) unless one gateway is an Envoy (then in `envoy`, and missing
/// from `proxies`).
#[derive(Debug)]
pub struct Federation {
    pub dir: tempfile::TempDir,
    pub ports: Ports,
    pub red: Isthmusd,
    pub green: Option<Isthmusd>,
    pub red_root_pem: String,
    _echo: Option<Echo>,
    pub proxies: Vec<IsthmusProxy>,
    pub envoy: Option<Envoy>,
}

impl Federation {
    /// With `isthmusctl echo` as green's ratings application.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`Federation::start`], both `isthmusd`s started with `isthmusd_args` too.
    pub fn start_with(isthmusd_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let echo = Echo::start(dir.path(), "ratings-v1").unwrap();
        let port = echo.addr.port();
        Self::start_in(dir, port, Some(echo), isthmusd_args, None)
    }

    /// With green's ratings application already listening on 127.0.0.1:`app_port`.
    pub fn start_with_app(app_port: u16) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), app_port, None, &[], None)
    }

    /// As [`Federation::start`], with one gateway a stock Envoy 1.40 configured by its
    /// `isthmusd` (`isthmusctl bootstrap envoy --role federation`).
    pub fn start_with_envoy(gateway: EnvoyGateway) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let echo = Echo::start(dir.path(), "ratings-v1").unwrap();
        let port = echo.addr.port();
        Self::start_in(dir, port, Some(echo), &[], Some(gateway))
    }

    fn start_in(
        dir: tempfile::TempDir,
        app_port: u16,
        echo: Option<Echo>,
        isthmusd_args: &[&str],
        envoy_gateway: Option<EnvoyGateway>,
    ) -> Self {
        let ports = Ports {
            ingress: free_port(),
            egress: free_port(),
            ratings_inbound: free_port(),
            ratings_app: 0,
            details_inbound: free_port(),
            outbound: free_port(),
        };
        let green =
            Isthmusd::start(&dir.path().join("green"), "green.local", isthmusd_args).unwrap();
        let red = Isthmusd::start(&dir.path().join("red"), "red.local", isthmusd_args).unwrap();
        let red_root_pem = std::fs::read_to_string(red.root_file()).unwrap();
        let green_root_pem = std::fs::read_to_string(green.root_file()).unwrap();
        let mut ports = ports;
        ports.ratings_app = app_port;
        write(
            &dir.path().join("green/config"),
            "mesh.yaml",
            &green_config(&red_root_pem, &ports, ALLOW_RED_CLIENT),
        );
        write(
            &dir.path().join("red/config"),
            "mesh.yaml",
            &red_config(&green_root_pem, &ports),
        );
        let proxies_dir = dir.path().join("proxies");
        std::fs::create_dir_all(&proxies_dir).unwrap();
        // Each as its own workload identity, on the mTLS port (as `isthmusctl up` runs them).
        let gateway = ["--role".to_owned(), "federation".to_owned()];
        let mut proxies = Vec::new();
        let mut envoy = None;
        if envoy_gateway == Some(EnvoyGateway::GreenIngress) {
            envoy = Some(envoy_gateway_for(
                &proxies_dir,
                &green,
                "ingress-red",
                "127.0.20.2",
            ));
        } else {
            proxies.push(IsthmusProxy::with_identity(
                &proxies_dir,
                &green,
                GREEN_INGRESS_NODE,
                "green-ingress",
                "spiffe://green.local/ns/istio-system/sa/ingress-red-service-account",
                &gateway,
            ));
        }
        proxies.push(IsthmusProxy::with_identity(
            &proxies_dir,
            &green,
            "sidecar~127.0.20.3~ratings-v1.bookinfo~bookinfo.svc.cluster.local",
            "green-ratings",
            "spiffe://green.local/ns/bookinfo/sa/ratings",
            &[
                "--metadata".to_owned(),
                format!("APP_PORTS=http={}", ports.ratings_app),
            ],
        ));
        if envoy_gateway == Some(EnvoyGateway::RedEgress) {
            envoy = Some(envoy_gateway_for(
                &proxies_dir,
                &red,
                "egress-green",
                "127.0.10.2",
            ));
        } else {
            proxies.push(IsthmusProxy::with_identity(
                &proxies_dir,
                &red,
                "router~127.0.10.2~egress-green.istio-system~istio-system.svc.cluster.local",
                "red-egress",
                "spiffe://red.local/ns/istio-system/sa/egress-green-service-account",
                &gateway,
            ));
        }
        proxies.push(IsthmusProxy::with_identity(
            &proxies_dir,
            &red,
            "sidecar~127.0.10.3~client.shop~shop.svc.cluster.local",
            "red-client",
            "spiffe://red.local/ns/shop/sa/client",
            &[
                "--metadata".to_owned(),
                format!("OUTBOUND_PORT={}", ports.outbound),
            ],
        ));
        if let Some(envoy) = &envoy {
            wait_envoy_live(envoy);
        }
        for proxy in &proxies {
            if let Err(e) = proxy.wait_ready(Duration::from_secs(30)) {
                panic!(
                    "{e}\ngreen: {}\nred: {}\n{}",
                    green.http_get("/debug/xds"),
                    red.http_get("/debug/xds"),
                    green.logs()
                );
            }
        }
        Self {
            dir,
            ports,
            red,
            green: Some(green),
            red_root_pem,
            _echo: echo,
            proxies,
            envoy,
        }
    }

    /// Red's discovery watch of green, as red's `/debug/federation` shows it.
    pub fn red_watch(&self) -> serde_json::Value {
        let status: serde_json::Value =
            serde_json::from_str(&self.red.http_get("/debug/federation")).unwrap();
        status["serviceMeshPeers"]["istio-system/green"]["discoveryStatus"]["active"][0]["watch"]
            .clone()
    }

    /// Logs of every gateway and sidecar, the last lines of each.
    pub fn logs(&self) -> String {
        let tail = |text: String| text.lines().rev().take(15).collect::<Vec<_>>().join("\n");
        let mut all: Vec<String> = self.proxies.iter().map(|p| tail(p.logs())).collect();
        if let Some(envoy) = &self.envoy {
            all.push(tail(envoy.logs()));
        }
        all.join("\n-----\n")
    }

    /// Waits up to 30 s for a cross-mesh call to pass; on timeout, fails with what each part
    /// says.
    pub fn wait_up(&self) {
        for _ in 0..300 {
            if matches!(self.call(IMPORTED), Ok((200, _))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "no cross-mesh call passed in 30 s: {:?}\nred: {}\ngreen: {}\nproxies (last lines first):\n{}",
            self.call(IMPORTED),
            self.red.http_get("/debug/federation"),
            self.green().http_get("/debug/federation"),
            self.logs()
        );
    }

    /// Red's `isthmusd` killed outright and started again after `down` (same state, same
    /// addresses).
    pub fn restart_red_control_plane(&mut self, down: Duration) {
        self.red.restart(down).unwrap();
    }

    /// Green's `isthmusd` killed outright and started again after `down`.
    pub fn restart_green_control_plane(&mut self, down: Duration) {
        self.green
            .as_mut()
            .expect("green's control plane runs")
            .restart(down)
            .unwrap();
    }

    /// Green's ingress gateway told to stop (SIGTERM: it stops accepting and drains what it
    /// carries, up to `drain`), then started again on the same address. Returns how long the
    /// drain took (SIGTERM to exit) and how long nothing listened (exit to the new one ready).
    pub fn restart_green_ingress(&mut self, drain: Duration) -> (Duration, Duration) {
        let asked = std::time::Instant::now();
        let status = self.proxies[0].terminate(drain + Duration::from_secs(1));
        assert!(
            status.is_some_and(|s| s.success()),
            "the ingress gateway drains and exits 0: {status:?}"
        );
        let exited = std::time::Instant::now();
        let proxies_dir = self.dir.path().join("proxies");
        let restarted = IsthmusProxy::with_identity(
            &proxies_dir,
            self.green(),
            GREEN_INGRESS_NODE,
            "green-ingress-restarted",
            "spiffe://green.local/ns/istio-system/sa/ingress-red-service-account",
            &["--role".to_owned(), "federation".to_owned()],
        );
        restarted.wait_ready(Duration::from_secs(30)).unwrap();
        self.proxies[0] = restarted;
        (exited - asked, exited.elapsed())
    }

    pub fn green(&self) -> &Isthmusd {
        self.green.as_ref().expect("green's control plane runs")
    }

    /// Rewrites green's configuration: with or without the export of `ratings`.
    pub fn write_green(&self, export_ratings: bool, policy: &str) {
        let mut text = green_config(&self.red_root_pem, &self.ports, policy);
        if !export_ratings {
            text = text.replace(
                "    nameSelector: {namespace: bookinfo, name: ratings}",
                "    nameSelector: {namespace: bookinfo, name: reviews}",
            );
        }
        write(&self.dir.path().join("green/config"), "mesh.yaml", &text);
    }

    /// `GET http://<host>:9080/` through red's client sidecar (its HTTP proxy port): (status,
    /// body), or why there was no response.
    pub fn call(&self, host: &str) -> Result<(u16, String), crate::CurlError> {
        curl_with(
            Command::new("curl"),
            &[
                "-x",
                &format!("http://127.0.0.1:{}", self.ports.outbound),
                &format!("http://{host}:9080/"),
            ],
        )
    }
}

/// A stock Envoy as the federation gateway `workload` (in `istio-system`, at `address`),
/// bootstrapped by `isthmusctl bootstrap envoy --role federation` against `daemon`'s plaintext
/// xDS port (its certificates come over SDS).
fn envoy_gateway_for(
    dir: &std::path::Path,
    daemon: &Isthmusd,
    workload: &str,
    address: &str,
) -> Envoy {
    let file = dir.join(format!("envoy-{workload}.json"));
    let out = crate::isthmusctl(&[
        "bootstrap",
        "envoy",
        "--role",
        "federation",
        "--workload",
        workload,
        "--namespace",
        "istio-system",
        "--address",
        address,
        "--xds-address",
        &daemon.xds.to_string(),
        "--insecure-plaintext",
        "--admin-port",
        "0",
        "-o",
        &file.to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Envoy::start(dir, workload, &file).unwrap()
}

/// Waits up to 30 s for an Envoy to be initialised (its listeners and clusters from xDS).
fn wait_envoy_live(envoy: &Envoy) {
    for _ in 0..300 {
        if envoy.admin_get("/ready").trim() == "LIVE" {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "Envoy gateway {} not ready in 30 s:\n{}",
        envoy.name,
        envoy.logs()
    );
}
