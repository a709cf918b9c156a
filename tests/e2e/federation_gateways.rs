//! Service traffic between two meshes through the federation gateways, with real processes on
//! loopback: red's client sidecar -> red's egress gateway -> (mTLS, HTTP/2 CONNECT) -> green's
//! ingress gateway -> green's ratings sidecar -> the application, with the caller's end-to-end
//! mTLS session carried through both gateways. Green's sidecar authorizes on red's identity.
//! The gateways refuse what does not cross: a caller of a third trust domain, a caller without
//! a certificate, an SNI or CONNECT target naming a service that is not exported.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests measure real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use isthmus_e2e::envoy::Echo;
use isthmus_e2e::mesh::{until, write};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{Isthmusd, curl_with, free_port, h2connect, request_cert};

const IMPORTED: &str = "ratings.bookinfo.svc.green-imports.local";
const RED_CLIENT: &str = "spiffe://red.local/ns/shop/sa/client";

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

struct Ports {
    ingress: u16,
    egress: u16,
    ratings_inbound: u16,
    ratings_app: u16,
    details_inbound: u16,
    outbound: u16,
}

fn green_config(red_root: &str, p: &Ports, policy: &str) -> String {
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
",
        ingress = p.ingress,
        ratings_inbound = p.ratings_inbound,
        details_inbound = p.details_inbound,
        root = indent(red_root),
    )
}

fn red_config(green_root: &str, p: &Ports) -> String {
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
",
        egress = p.egress,
        ingress = p.ingress,
        root = indent(green_root),
    )
}

const ALLOW_RED_CLIENT: &str =
    "  action: ALLOW\n  rules: [{from: [{source: {principals: [red.local/ns/shop/sa/client]}}]}]";
const DENY_RED_CLIENT: &str =
    "  action: DENY\n  rules: [{from: [{source: {principals: [red.local/ns/shop/sa/client]}}]}]";

struct Federation {
    dir: tempfile::TempDir,
    ports: Ports,
    red: Isthmusd,
    green: Option<Isthmusd>,
    red_root_pem: String,
    _echo: Echo,
    _proxies: Vec<IsthmusProxy>,
}

impl Federation {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports = Ports {
            ingress: free_port(),
            egress: free_port(),
            ratings_inbound: free_port(),
            ratings_app: 0,
            details_inbound: free_port(),
            outbound: free_port(),
        };
        let green = Isthmusd::start(&dir.path().join("green"), "green.local", &[]).unwrap();
        let red = Isthmusd::start(&dir.path().join("red"), "red.local", &[]).unwrap();
        let red_root_pem = std::fs::read_to_string(red.root_file()).unwrap();
        let green_root_pem = std::fs::read_to_string(green.root_file()).unwrap();
        let echo = Echo::start(dir.path(), "ratings-v1").unwrap();
        let mut ports = ports;
        ports.ratings_app = echo.addr.port();
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
        let proxies = vec![
            IsthmusProxy::node(
                &proxies_dir,
                &green,
                "router~127.0.20.2~ingress-red.istio-system~istio-system.svc.cluster.local",
                "green-ingress",
                &[],
            ),
            IsthmusProxy::node(
                &proxies_dir,
                &green,
                "sidecar~127.0.20.3~ratings-v1.bookinfo~bookinfo.svc.cluster.local",
                "green-ratings",
                &[format!("APP_PORTS=http={}", ports.ratings_app)],
            ),
            IsthmusProxy::node(
                &proxies_dir,
                &red,
                "router~127.0.10.2~egress-green.istio-system~istio-system.svc.cluster.local",
                "red-egress",
                &[],
            ),
            IsthmusProxy::node(
                &proxies_dir,
                &red,
                "sidecar~127.0.10.3~client.shop~shop.svc.cluster.local",
                "red-client",
                &[format!("OUTBOUND_PORT={}", ports.outbound)],
            ),
        ];
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
            _proxies: proxies,
        }
    }

    fn green(&self) -> &Isthmusd {
        self.green.as_ref().expect("green's control plane runs")
    }

    fn write_green(&self, export_ratings: bool, policy: &str) {
        let mut text = green_config(&self.red_root_pem, &self.ports, policy);
        if !export_ratings {
            text = text.replace(
                "    nameSelector: {namespace: bookinfo, name: ratings}",
                "    nameSelector: {namespace: bookinfo, name: reviews}",
            );
        }
        write(&self.dir.path().join("green/config"), "mesh.yaml", &text);
    }

    /// `GET http://<host>:9080/` through red's client sidecar (its HTTP proxy port).
    fn call(&self, host: &str) -> (u16, String) {
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

#[test]
fn red_reaches_greens_exported_service_with_its_own_identity_end_to_end() {
    let f = Federation::start();
    until(
        "a cross-mesh call to succeed",
        Duration::from_secs(30),
        || f.call(IMPORTED).0 == 200,
    );
    let (status, body) = f.call(IMPORTED);
    assert_eq!(status, 200, "{body}");
    // Discovery itself came through the gateways: red's stream is to its egress gateway.
    let red_status: serde_json::Value =
        serde_json::from_str(&f.red.http_get("/debug/federation")).unwrap();
    let watch = &red_status["serviceMeshPeers"]["istio-system/green"]["discoveryStatus"]["active"]
        [0]["watch"];
    assert_eq!(watch["connected"], true, "{watch:#}");
    assert_eq!(
        watch["source"],
        format!("127.0.10.2:{}", f.ports.egress),
        "{watch:#}"
    );
    assert!(
        body.contains("ratings-v1"),
        "green's ratings answered: {body}"
    );
    assert!(
        body.contains(&format!("URI={RED_CLIENT}")),
        "green's sidecar saw red's caller identity (end-to-end mTLS): {body}"
    );

    // Green denies that principal: the same call gets green's sidecar's 403.
    f.write_green(true, DENY_RED_CLIENT);
    until(
        "green's DENY policy to apply",
        Duration::from_secs(10),
        || f.call(IMPORTED).0 == 403,
    );
    let (_, body) = f.call(IMPORTED);
    assert!(body.contains("RBAC: access denied"), "{body}");
}

#[test]
fn a_withdrawn_export_stops_traffic_within_2s_and_a_lost_peer_control_plane_does_not() {
    let mut f = Federation::start();
    until("the path to be up", Duration::from_secs(30), || {
        f.call(IMPORTED).0 == 200
    });
    // Green withdraws the export: red's calls fail within 2 s; restored, they pass within 2 s.
    f.write_green(false, ALLOW_RED_CLIENT);
    let gone = until(
        "the withdrawn export to stop",
        Duration::from_secs(10),
        || f.call(IMPORTED).0 != 200,
    );
    f.write_green(true, ALLOW_RED_CLIENT);
    let back = until(
        "the restored export to pass",
        Duration::from_secs(10),
        || f.call(IMPORTED).0 == 200,
    );
    eprintln!("export withdrawn -> unreachable in {gone:?}; restored -> reachable in {back:?}");
    assert!(gone < Duration::from_secs(2), "withdrawal took {gone:?}");
    assert!(back < Duration::from_secs(2), "restoration took {back:?}");

    // Green's control plane dies: traffic keeps flowing; red marks the peer disconnected and
    // its imports stale.
    drop(f.green.take());
    let watch = || {
        let status: serde_json::Value =
            serde_json::from_str(&f.red.http_get("/debug/federation")).unwrap();
        status["serviceMeshPeers"]["istio-system/green"]["discoveryStatus"]["active"][0]["watch"]
            .clone()
    };
    until(
        "red to see green's control plane gone",
        Duration::from_secs(40),
        || watch()["connected"] == false,
    );
    assert_eq!(watch()["stale"], true, "{:#}", watch());
    for _ in 0..20 {
        let (status, body) = f.call(IMPORTED);
        assert_eq!(status, 200, "traffic through the stale period: {body}");
    }
}

#[test]
fn the_ingress_gateway_refuses_what_does_not_cross() {
    let f = Federation::start();
    until("the path to be up", Duration::from_secs(30), || {
        f.call(IMPORTED).0 == 200
    });
    let ingress = format!("127.0.20.2:{}", f.ports.ingress);
    let exported = "ratings.bookinfo.svc.red-exports.local";
    let certs = f.dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    // The identity green's ServiceMeshPeer red names as its clientID, from red's CA.
    let peer = request_cert(
        &f.red,
        &certs,
        "spiffe://red.local/ns/istio-system/sa/egress-green-service-account",
    );
    // Another red identity: right trust domain, not the clientID.
    let other = request_cert(&f.red, &certs, "spiffe://red.local/ns/shop/sa/client");
    let blue_dir = f.dir.path().join("blue");
    let blue = Isthmusd::start(&blue_dir, "blue.local", &[]).unwrap();
    // Its own folder: the same account name as the peer's.
    let blue_certs = certs.join("blue");
    std::fs::create_dir_all(&blue_certs).unwrap();
    let third = request_cert(
        &blue,
        &blue_certs,
        "spiffe://blue.local/ns/istio-system/sa/egress-green-service-account",
    );
    let green_root = f.green().root_file();
    let ingress: std::net::SocketAddr = ingress.parse().unwrap();
    let probe = |cert: Option<&Path>, sni: &str, target: &str| -> String {
        match h2connect::connect(ingress, sni, target, cert, &green_root, "green.local") {
            Ok(status) => format!("status {status}"),
            Err(e) => format!("refused: {e}"),
        }
    };
    // The configured peer, an exported target: the tunnel opens.
    let ok = probe(Some(&peer), exported, &format!("{exported}:9080"));
    assert_eq!(ok, "status 200", "the peer's CONNECT is accepted");
    // A target that is not exported, under an exported SNI: no route, 404.
    let details = probe(
        Some(&peer),
        exported,
        "details.bookinfo.svc.red-exports.local:9080",
    );
    assert_eq!(details, "status 404", "a target that is not exported");
    // An SNI naming a service that is not exported: no filter chain, connection closed.
    let sni = probe(
        Some(&peer),
        "details.bookinfo.svc.red-exports.local",
        "x:9080",
    );
    assert!(sni.starts_with("refused"), "forged SNI: {sni}");
    // No client certificate, another red identity, a third trust domain: the handshake fails.
    for (name, cert) in [
        ("no certificate", None),
        ("not the clientID", Some(other.as_path())),
        ("third trust domain", Some(third.as_path())),
    ] {
        let out = probe(cert, exported, &format!("{exported}:9080"));
        assert!(
            out.starts_with("refused"),
            "{name}: refused at the handshake: {out}"
        );
    }
}
