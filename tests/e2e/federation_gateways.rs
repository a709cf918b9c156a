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
use std::time::Duration;

use isthmus_e2e::envoy::Echo;
use isthmus_e2e::federation::{
    ALLOW_RED_CLIENT, DENY_RED_CLIENT, Federation, IMPORTED, indent, red_config,
};
use isthmus_e2e::h2connect::{ProbeError, Stage};
use isthmus_e2e::mesh::{until, write};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{Isthmusd, free_port, h2connect, request_cert};
const RED_CLIENT: &str = "spiffe://red.local/ns/shop/sa/client";

#[test]
fn red_reaches_greens_exported_service_with_its_own_identity_end_to_end() {
    let f = Federation::start();
    f.wait_up();
    let (status, body) = f.call(IMPORTED).expect("the cross-mesh call");
    assert_eq!(status, 200, "{body}");
    // Discovery itself came through the gateways: red's stream is to its egress gateway.
    // (Status settles 200 ms after a change; the call may have passed before.)
    let watch = || f.red_watch();
    until(
        "red's status to show the stream",
        Duration::from_secs(5),
        || watch()["connected"] == true,
    );
    let watch = watch();
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

    // Exported but not imported, imported but not exported: no such service in red, and red's
    // status says why.
    for host in [
        "reviews.bookinfo.svc.green-imports.local",
        "details.bookinfo.svc.green-imports.local",
    ] {
        let answer = f.call(host);
        assert!(
            matches!(answer, Ok((404, _))),
            "{host}: no route in red: {answer:?}"
        );
    }
    let imports = || -> serde_json::Value {
        let status: serde_json::Value =
            serde_json::from_str(&f.red.http_get("/debug/federation")).unwrap();
        status["importedServiceSets"]["istio-system/green"].clone()
    };
    let explained = |text: &str| {
        text.contains("reviews.bookinfo.svc.red-exports.local")
            && text.contains("no import rule selects it")
            && text.contains("importRules[1] (bookinfo/details)")
    };
    for _ in 0..50 {
        if explained(&imports().to_string()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(explained(&imports().to_string()), "{:#}", imports());

    // Green denies that principal: the same call gets green's sidecar's 403.
    f.write_green(true, DENY_RED_CLIENT);
    until(
        "green's DENY policy to apply",
        Duration::from_secs(10),
        || matches!(f.call(IMPORTED), Ok((403, _))),
    );
    let (_, body) = f.call(IMPORTED).expect("green's denial");
    assert!(body.contains("RBAC: access denied"), "{body}");
}

#[test]
fn a_withdrawn_export_stops_traffic_within_2s_and_a_lost_peer_control_plane_does_not() {
    let mut f = Federation::start();
    f.wait_up();
    // Green withdraws the export: red's calls fail within 2 s; restored, they pass within 2 s.
    // Stopped means refused by the mesh with an HTTP status (red no longer routes it: 404; or
    // green's ingress no longer admits it: 503), never a sidecar that stopped answering.
    f.write_green(false, ALLOW_RED_CLIENT);
    let mut stopped = f.call(IMPORTED);
    let gone = until(
        "the withdrawn export to stop",
        Duration::from_secs(10),
        || {
            stopped = f.call(IMPORTED);
            !matches!(stopped, Ok((200, _)))
        },
    );
    assert!(
        matches!(stopped, Ok((404 | 503, _))),
        "the withdrawn export's refusal: {stopped:?}"
    );
    // Settled: red no longer has the service.
    until(
        "red to drop the withdrawn service",
        Duration::from_secs(10),
        || matches!(f.call(IMPORTED), Ok((404, _))),
    );
    f.write_green(true, ALLOW_RED_CLIENT);
    let back = until(
        "the restored export to pass",
        Duration::from_secs(10),
        || matches!(f.call(IMPORTED), Ok((200, _))),
    );
    eprintln!(
        "export withdrawn -> unreachable in {gone:?} ({stopped:?}); restored -> reachable in {back:?}"
    );
    assert!(gone < Duration::from_secs(2), "withdrawal took {gone:?}");
    assert!(back < Duration::from_secs(2), "restoration took {back:?}");

    // Green's control plane dies: traffic keeps flowing; red marks the peer disconnected and
    // its imports stale.
    drop(f.green.take());
    let watch = || f.red_watch();
    until(
        "red to see green's control plane gone",
        Duration::from_secs(40),
        || watch()["connected"] == false,
    );
    assert_eq!(watch()["stale"], true, "{:#}", watch());
    for _ in 0..20 {
        let answer = f.call(IMPORTED);
        assert!(
            matches!(answer, Ok((200, _))),
            "traffic through the stale period: {answer:?}"
        );
    }
}

/// Certificates from any mesh's CA, and CONNECT probes of a gateway.
struct Prober<'f> {
    f: &'f Federation,
    dir: std::path::PathBuf,
}

const EXPORTED: &str = "ratings.bookinfo.svc.red-exports.local";
/// The identity green's `ServiceMeshPeer red` names as its `clientID`.
const PEER_CLIENT: &str = "spiffe://red.local/ns/istio-system/sa/egress-green-service-account";

impl<'f> Prober<'f> {
    /// Waits for the path to be up, so that a refusal is the gateway's decision.
    fn new(f: &'f Federation) -> Self {
        f.wait_up();
        let dir = f.dir.path().join("certs");
        std::fs::create_dir_all(&dir).unwrap();
        Self { f, dir }
    }

    /// A certificate for `identity` from `daemon`'s CA, in a folder of its own.
    fn cert(&self, daemon: &Isthmusd, identity: &str) -> std::path::PathBuf {
        let dir = self.dir.join(identity.replace(['/', ':'], "_"));
        std::fs::create_dir_all(&dir).unwrap();
        request_cert(daemon, &dir, identity)
    }

    /// CONNECT `target` at green's ingress gateway with `sni` and `cert`: the status, or
    /// how the connection was refused.
    fn green_ingress(
        &self,
        cert: Option<&Path>,
        sni: &str,
        target: &str,
    ) -> Result<u16, ProbeError> {
        let ingress = format!("127.0.20.2:{}", self.f.ports.ingress)
            .parse()
            .unwrap();
        let root = self.f.green().root_file();
        h2connect::connect(ingress, sni, target, cert, &root, "green.local")
    }
}

/// A TLS handshake that the gateway ends by closing the connection, without an alert: no
/// filter chain matches the SNI.
fn no_filter_chain(out: &Result<u16, ProbeError>) -> bool {
    matches!(out, Err(e) if e.stage == Stage::Tls && e.is_closed())
}

/// A handshake the gateway refuses with the TLS alert `alert` (rustls's name).
fn tls_alert(out: &Result<u16, ProbeError>, alert: &str) -> bool {
    matches!(out, Err(e) if e.tls_alert() == Some(alert))
}

impl Prober<'_> {}

#[test]
fn the_ingress_gateway_admits_the_peers_client_id_to_an_exported_service() {
    let f = Federation::start();
    let p = Prober::new(&f);
    let peer = p.cert(&f.red, PEER_CLIENT);
    let out = p.green_ingress(Some(&peer), EXPORTED, &format!("{EXPORTED}:9080"));
    assert_eq!(out, Ok(200), "the peer's CONNECT is accepted");
}

#[test]
fn a_connect_target_that_is_not_exported_is_refused_at_the_ingress() {
    let f = Federation::start();
    let p = Prober::new(&f);
    let peer = p.cert(&f.red, PEER_CLIENT);
    // `details` exists in green but is not exported: under an exported SNI, no route.
    let out = p.green_ingress(
        Some(&peer),
        EXPORTED,
        "details.bookinfo.svc.red-exports.local:9080",
    );
    assert_eq!(out, Ok(404), "a target that is not exported");
}

#[test]
fn a_forged_sni_naming_a_service_that_is_not_exported_is_refused_at_the_ingress() {
    let f = Federation::start();
    let p = Prober::new(&f);
    let peer = p.cert(&f.red, PEER_CLIENT);
    let out = p.green_ingress(
        Some(&peer),
        "details.bookinfo.svc.red-exports.local",
        "details.bookinfo.svc.red-exports.local:9080",
    );
    assert!(no_filter_chain(&out), "no filter chain: {out:?}");
}

#[test]
fn a_caller_without_a_certificate_is_refused_at_the_ingress() {
    let f = Federation::start();
    let p = Prober::new(&f);
    let out = p.green_ingress(None, EXPORTED, &format!("{EXPORTED}:9080"));
    assert!(tls_alert(&out, "CertificateRequired"), "{out:?}");
}

#[test]
fn a_caller_of_a_third_trust_domain_is_refused_at_the_ingress() {
    let f = Federation::start();
    let p = Prober::new(&f);
    let blue = Isthmusd::start(&f.dir.path().join("blue"), "blue.local", &[]).unwrap();
    // Same path as the peer's clientID, from blue's CA.
    let third = p.cert(
        &blue,
        "spiffe://blue.local/ns/istio-system/sa/egress-green-service-account",
    );
    let out = p.green_ingress(Some(&third), EXPORTED, &format!("{EXPORTED}:9080"));
    // Its chain does not verify against any root green holds for a peer.
    assert!(tls_alert(&out, "CertificateUnknown"), "{out:?}");
}

#[test]
fn a_peer_identity_other_than_its_client_id_is_refused_at_the_ingress() {
    let f = Federation::start();
    let p = Prober::new(&f);
    // red's trust domain, red's CA, but a workload's identity, not the egress gateway's.
    let other = p.cert(&f.red, RED_CLIENT);
    let out = p.green_ingress(Some(&other), EXPORTED, &format!("{EXPORTED}:9080"));
    // The chain verifies (red's root), the identity is not the clientID: refused in the
    // handshake too, with the same alert.
    assert!(tls_alert(&out, "CertificateUnknown"), "{out:?}");
}

#[test]
fn the_egress_gateway_forwards_only_imported_services() {
    let f = Federation::start();
    let p = Prober::new(&f);
    let client = p.cert(&f.red, RED_CLIENT);
    let egress = format!("127.0.10.2:{}", f.ports.egress).parse().unwrap();
    // `details` is green's but not imported by red: no chain at red's egress.
    let out = h2connect::connect(
        egress,
        "outbound_.9080_._.details.bookinfo.svc.green-imports.local",
        "x:9080",
        Some(&client),
        &f.green().root_file(),
        "green.local",
    );
    assert!(no_filter_chain(&out), "no chain at red's egress: {out:?}");
}

#[test]
fn red_never_re_exports_to_blue_what_it_imported_from_green() {
    let f = Federation::start();
    let p = Prober::new(&f);
    let blue = Isthmusd::start(&f.dir.path().join("blue"), "blue.local", &[]).unwrap();
    let blue_root = std::fs::read_to_string(blue.root_file()).unwrap();
    let ingress_port = free_port();
    // Red peers with blue too and exports everything to it, through an ingress of its own.
    write(
        &f.dir.path().join("red/config"),
        "blue.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ingress-blue, namespace: istio-system}}
spec:
  hosts: [ingress-blue.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 15443, name: tls-federation}}]
  workloadSelector: {{labels: {{app: ingress-blue}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ingress-blue, namespace: istio-system}}
spec: {{address: 127.0.10.4, labels: {{app: ingress-blue}}, serviceAccount: ingress-blue-service-account, ports: {{tls-federation: {ingress_port}}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: blue-ca-root-cert, namespace: istio-system}}
data:
  root-cert.pem: |
{root}---
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {{name: blue, namespace: istio-system}}
spec:
  remote: {{addresses: [127.0.30.2]}}
  gateways: {{ingress: {{name: ingress-blue}}, egress: {{name: egress-blue}}}}
  security:
    trustDomain: blue.local
    clientID: blue.local/ns/istio-system/sa/egress-red-service-account
    certificateChain: {{kind: ConfigMap, name: blue-ca-root-cert}}
---
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata: {{name: blue, namespace: istio-system}}
spec:
  exportRules:
  - type: NameSelector
    nameSelector: {{namespace: '*', name: '*'}}
",
            root = indent(&blue_root)
        ),
    );
    let dir = f.dir.path().join("proxies");
    let red_ingress = IsthmusProxy::gateway(
        &dir,
        &f.red,
        "router~127.0.10.4~ingress-blue.istio-system~istio-system.svc.cluster.local",
        "red-ingress-blue",
    );
    red_ingress.wait_ready(Duration::from_secs(30)).unwrap();
    let status = || -> serde_json::Value {
        serde_json::from_str(&f.red.http_get("/debug/federation")).unwrap()
    };
    until("red to export to blue", Duration::from_secs(10), || {
        status()["exportedServiceSets"]["istio-system/blue"]["exportedServices"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    let exported = status()["exportedServiceSets"]["istio-system/blue"]["exportedServices"].clone();
    let names = exported.to_string();
    assert!(
        !names.contains("green-imports") && !names.contains("ratings"),
        "what red imported from green is not exported to blue: {exported:#}"
    );

    // Blue, as the peer red configured, asks red's ingress for it anyway.
    let client = p.cert(
        &blue,
        "spiffe://blue.local/ns/istio-system/sa/egress-red-service-account",
    );
    let addr = format!("127.0.10.4:{ingress_port}").parse().unwrap();
    let red_root = f.red.root_file();
    let ask = |sni: &str, target: &str| {
        h2connect::connect(addr, sni, target, Some(&client), &red_root, "red.local")
    };
    let target = "ratings.bookinfo.svc.blue-exports.local:9080";
    let by_sni = ask("ratings.bookinfo.svc.blue-exports.local", target);
    assert!(no_filter_chain(&by_sni), "no chain for it: {by_sni:?}");
    // Under a name red's ingress does serve to blue, the CONNECT target finds no route.
    assert_eq!(
        ask("discovery.federation.local", target),
        Ok(404),
        "no route to it"
    );
    let _ = &p;
}

/// Red's own `ratings`, which green's copy joins as a failover locality (`importAsLocal`), with
/// outlier detection; red's client sidecar calls `ratings.bookinfo.svc.cluster.local`.
fn red_failover_config(app_port: u16, inbound: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
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
metadata: {{name: ratings-red, namespace: bookinfo}}
spec: {{address: 127.0.10.5, labels: {{app: ratings}}, serviceAccount: ratings, ports: {{http: {inbound}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings, namespace: bookinfo}}
spec:
  host: ratings.bookinfo.svc.cluster.local
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 100}}
# app port {app_port}
"
    )
}

const FAILOVER_MAX_FAILURES: usize = 2;

#[test]
fn imported_as_local_the_peers_copy_takes_over_when_local_endpoints_fail_and_gives_back() {
    let f = Federation::start();
    f.wait_up();
    let dir = f.dir.path();
    let (app_port, inbound) = (free_port(), free_port());
    let app = format!("127.0.0.1:{app_port}");
    let mut red_app = Some(Echo::start_on(dir, "ratings-red", &app).unwrap());
    write(
        &dir.join("red/config"),
        "local-ratings.yaml",
        &red_failover_config(app_port, inbound),
    );
    // Green's ratings now joins red's as a failover locality instead of its own name.
    let green_root = std::fs::read_to_string(f.green().root_file()).unwrap();
    let as_local = red_config(&green_root, &f.ports).replace(
        "  importRules:\n  - type: NameSelector\n    nameSelector: {namespace: bookinfo, name: ratings}\n",
        "  locality: {region: green}\n  importRules:\n  - type: NameSelector\n    importAsLocal: true\n    nameSelector: {namespace: bookinfo, name: ratings, alias: {namespace: bookinfo, name: ratings}}\n",
    );
    assert_ne!(as_local, red_config(&green_root, &f.ports));
    write(&dir.join("red/config"), "mesh.yaml", &as_local);
    let sidecar = IsthmusProxy::node(
        &dir.join("proxies"),
        &f.red,
        "sidecar~127.0.10.5~ratings-red.bookinfo~bookinfo.svc.cluster.local",
        "red-ratings",
        &[format!("APP_PORTS=http={app_port}")],
    );
    sidecar.wait_ready(Duration::from_secs(30)).unwrap();
    const LOCAL: &str = "ratings.bookinfo.svc.cluster.local";
    let answer = |f: &Federation| {
        let (status, body) = f
            .call(LOCAL)
            .expect("red's client sidecar answers, with a status if not with ratings");
        if status != 200 {
            return format!("status {status}");
        }
        if body.contains("ratings-red") {
            "red".into()
        } else if body.contains("ratings-v1") {
            "green".into()
        } else {
            format!("unexpected: {body}")
        }
    };
    until(
        "red's own ratings to answer",
        Duration::from_secs(20),
        || answer(&f) == "red",
    );
    for _ in 0..10 {
        assert_eq!(answer(&f), "red", "local endpoints first");
    }

    // Red's ratings fails: after at most what outlier detection allows, green answers.
    drop(red_app.take());
    let mut failures = 0;
    let mut answers = Vec::new();
    loop {
        let a = answer(&f);
        if a == "green" {
            break;
        }
        failures += 1;
        answers.push(a);
        assert!(failures <= 20, "no failover: {answers:?}");
    }
    assert!(
        failures <= FAILOVER_MAX_FAILURES,
        "{failures} failed requests before failover (outlier detection ejects after {FAILOVER_MAX_FAILURES}): {answers:?}"
    );
    for _ in 0..10 {
        assert_eq!(answer(&f), "green", "failed over to the peer");
    }

    // Red's ratings recovers: once its ejection ends, traffic comes back.
    let _red_app = Echo::start_on(dir, "ratings-red", &app).unwrap();
    until(
        "traffic to come back to red",
        Duration::from_secs(20),
        || answer(&f) == "red",
    );
    eprintln!("failover: {failures} failed requests ({answers:?})");
}
