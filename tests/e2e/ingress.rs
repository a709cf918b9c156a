//! The ingress gateway, real processes: `isthmusctl up` runs the two-mesh example with an
//! `isthmus-proxy` ingress gateway in red (a `Workload` with `role: ingress`) serving an Istio
//! `Gateway`: HTTPS terminated with files (`SIMPLE`, and `MUTUAL` for one host), an HTTP port
//! that redirects to HTTPS, and a TLS port passed through by SNI to a server outside the mesh.
//! A `VirtualService` bound to the `Gateway` routes to red's `frontend` (over mTLS) and to
//! green's `ratings`, imported through the federation gateways. curl, from outside the mesh, is
//! the client.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isthmus_e2e::certs::{HttpsServer, Usage, ca, leaf};
use isthmus_e2e::envoy::curl;
use isthmus_e2e::free_port;
use isthmus_e2e::up::{Up, edit, example_copy};

/// The certificates of both tests: the gateway's (for `shop.` and `admin.example.com`) and the
/// passthrough server's from one CA, clients' from another, and a client certificate with the
/// right name from a third.
struct EdgeCerts {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ca: PathBuf,
    secure: (PathBuf, PathBuf),
    ops: (PathBuf, PathBuf),
    intruder: (PathBuf, PathBuf),
    forged: (PathBuf, PathBuf),
}

impl EdgeCerts {
    fn new() -> Self {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("certs");
        std::fs::create_dir_all(&dir).unwrap();
        let (edge_ca, ca_file) = ca(&dir, "edge");
        let (clients_ca, _) = ca(&dir, "clients");
        let (other_ca, _) = ca(&dir, "other");
        let names = ["shop.example.com", "admin.example.com"];
        leaf(&dir, "edge", &names, &edge_ca, Usage::ServerAuth);
        let secure = leaf(
            &dir,
            "secure",
            &["secure.example.com"],
            &edge_ca,
            Usage::ServerAuth,
        );
        let client = |name: &str, san: &str, ca| leaf(&dir, name, &[san], ca, Usage::ClientAuth);
        Self {
            ops: client("ops", "ops.example.com", &clients_ca),
            intruder: client("intruder", "intruder.example.com", &clients_ca),
            forged: client("forged", "ops.example.com", &other_ca),
            secure,
            ca: ca_file,
            dir,
            _dir: temp,
        }
    }

    /// `https://admin.example.com:8443/` through the gateway at `address`, with `cert`.
    fn admin(
        &self,
        address: &str,
        cert: Option<&(PathBuf, PathBuf)>,
    ) -> Result<(u16, String), isthmus_e2e::CurlError> {
        let files = cert.map(|(c, k)| (c.display().to_string(), k.display().to_string()));
        let mut extra = Vec::new();
        if let Some((c, k)) = &files {
            extra.extend(["--cert", c.as_str(), "--key", k.as_str()]);
        }
        https(address, "admin.example.com", 8443, "/", &self.ca, &extra)
    }
}

/// Red's ingress gateway, its `Gateway` and the `VirtualService`s bound to it.
fn ingress_yaml(certs: &Path, secure_port: u16) -> String {
    format!(
        "apiVersion: local.isthmus.dev/v1alpha1
kind: Workload
metadata: {{name: ingress, namespace: istio-system}}
spec:
  serviceAccount: ingress
  role: ingress
  labels: {{istio: ingressgateway}}
---
{gateway}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge, namespace: shop}}
spec:
  hosts: [shop.example.com, admin.example.com]
  gateways: [istio-system/public]
  http:
  # Delegated: the team's VirtualService (no hosts) says where /ratings goes.
  - match: [{{uri: {{prefix: /ratings}}}}]
    delegate: {{name: ratings-routes, namespace: shop}}
  - route: [{{destination: {{host: frontend.shop.svc.cluster.local, port: {{number: 9080}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings-routes, namespace: shop}}
spec:
  http:
  - route: [{{destination: {{host: ratings.bookinfo.svc.green-imports.local, port: {{number: 9080}}}}}}]
---
{secure}",
        gateway = gateway_yaml("istio-system", certs),
        secure = secure_yaml("istio-system/public", secure_port),
    )
}

/// The `Gateway` `public` of both tests, in `namespace`: HTTP 8080 redirecting to HTTPS,
/// HTTPS 8443 for `shop.example.com` (`SIMPLE`, any namespace's `VirtualService`s) and
/// `admin.example.com` (`MUTUAL`, namespace `shop` only), TLS 9443 passed through.
fn gateway_yaml(namespace: &str, certs: &Path) -> String {
    let c = certs.display();
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: public, namespace: {namespace}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ['*/shop.example.com']
    tls: {{httpsRedirect: true}}
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: ['*/shop.example.com']
    tls: {{mode: SIMPLE, serverCertificate: {c}/edge.pem, privateKey: {c}/edge-key.pem,
           minProtocolVersion: TLSV1_2}}
  - name: admin
    port: {{number: 8443, name: https-admin, protocol: HTTPS}}
    hosts: [shop/admin.example.com]
    tls:
      mode: MUTUAL
      serverCertificate: {c}/edge.pem
      privateKey: {c}/edge-key.pem
      caCertificates: {c}/clients-ca.pem
      subjectAltNames: [ops.example.com]
  - port: {{number: 9443, name: tls, protocol: TLS}}
    hosts: ['*.example.com']
    tls: {{mode: PASSTHROUGH}}
"
    )
}

/// `secure.example.com`, a TLS server outside the mesh on `port`, and the `tls` route that
/// passes its SNI through `gateway`.
fn secure_yaml(gateway: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: shop}}
spec:
  hosts: [secure.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: shop}}
spec:
  hosts: [secure.example.com]
  gateways: [{gateway}]
  tls:
  - match: [{{sniHosts: [secure.example.com]}}]
    route: [{{destination: {{host: secure.example.com}}}}]
"
    )
}

/// The ingress workload's address in red, from `run.json`.
fn ingress_address(up: &Up) -> String {
    let run = up.run();
    let red = run["meshes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "red")
        .unwrap();
    red["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "ingress")
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `https://<host>:<port><path>` through the gateway at `address`, trusting `ca`.
fn https(
    address: &str,
    host: &str,
    port: u16,
    path: &str,
    ca: &Path,
    extra: &[&str],
) -> Result<(u16, String), isthmus_e2e::CurlError> {
    let resolve = format!("{host}:{port}:{address}");
    let url = format!("https://{host}:{port}{path}");
    let mut args = vec!["--resolve", &resolve, "--cacert", ca.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

/// The answer was a refusal on an open connection: the TLS handshake failed, or the
/// connection was cut in or right after it (TLS 1.3 refuses a client certificate after the
/// client's side of the handshake, so curl sees an alert, a reset or a broken pipe), or curl
/// refused the gateway's certificate. Never "nothing listens" nor a timeout; each caller also
/// makes a good call afterwards, so a gateway that died fails the test.
fn assert_refused_in_tls(answer: &Result<(u16, String), isthmus_e2e::CurlError>, what: &str) {
    use isthmus_e2e::CurlFailure::{Refused, Timeout};
    match answer {
        Err(e) => assert!(
            e.status.is_none() && !matches!(e.kind(), Refused | Timeout),
            "{what}: {e:?}"
        ),
        Ok(answer) => panic!("{what}: answered {answer:?}"),
    }
}

/// `call` again until it answers 200 (configuration still arriving), for up to 30 s; its last
/// answer.
fn until_ok(
    call: impl Fn() -> Result<(u16, String), isthmus_e2e::CurlError>,
) -> Result<(u16, String), isthmus_e2e::CurlError> {
    let start = Instant::now();
    loop {
        let answer = call();
        if matches!(answer, Ok((200, _))) || start.elapsed() > Duration::from_secs(30) {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_ingress_gateway_terminates_tls_routes_to_mesh_and_imported_services_and_passes_through() {
    let dir = example_copy();
    // Beside the meshes' folders, not among them (every folder of DIR is a mesh).
    let certs = EdgeCerts::new();
    let secure = HttpsServer::start(&certs.secure.0, &certs.secure.1, None);
    std::fs::write(
        dir.path().join("red/ingress.yaml"),
        ingress_yaml(&certs.dir, secure.port),
    )
    .unwrap();
    // Green's ratings admits red's ingress gateway as well as red's client.
    edit(
        &dir.path().join("green/bookinfo.yaml"),
        "principals: [red.local/ns/shop/sa/client]",
        "principals: [red.local/ns/shop/sa/client, red.local/ns/istio-system/sa/ingress]",
    );

    let up = Up::start(dir.path());
    assert!(
        up.log().contains("istio-system/ingress"),
        "the ingress gateway is in the run's table:\n{}",
        up.log()
    );
    let address = ingress_address(&up);
    let ca = certs.ca.as_path();

    // HTTPS to a mesh service: TLS ends at the gateway, mTLS from it to frontend's sidecar,
    // which names the gateway's identity.
    let answer = until_ok(|| https(&address, "shop.example.com", 8443, "/", ca, &[]));
    let Ok((200, body)) = answer else {
        panic!("{answer:?}\n{}", up.log())
    };
    assert!(body.contains("frontend-red"), "{body}");
    assert!(
        body.contains("URI=spiffe://red.local/ns/istio-system/sa/ingress"),
        "frontend's sidecar did not see the gateway's identity: {body}"
    );

    // The same gateway reaches green's imported ratings through the federation gateways.
    let answer = until_ok(|| https(&address, "shop.example.com", 8443, "/ratings", ca, &[]));
    let Ok((200, body)) = answer else {
        panic!("{answer:?}\n{}", up.log())
    };
    assert!(body.contains("ratings-green"), "{body}");
    assert!(
        body.contains("URI=spiffe://red.local/ns/istio-system/sa/ingress"),
        "green's sidecar did not see red's gateway: {body}"
    );

    // A host no VirtualService binds gets 404 from the gateway; a host of no server, no TLS.
    let (status, _) = https(
        &address,
        "shop.example.com",
        8443,
        "/",
        ca,
        &["-H", "Host: unknown.example.com"],
    )
    .unwrap();
    assert_eq!(status, 404);
    assert_refused_in_tls(
        &https(&address, "nowhere.example.com", 8443, "/", ca, &["-k"]),
        "a SNI no server takes",
    );
    assert!(matches!(
        https(&address, "shop.example.com", 8443, "/", ca, &[]),
        Ok((200, _))
    ));

    // Plain HTTP is redirected to HTTPS.
    let resolve = format!("shop.example.com:8080:{address}");
    let (status, head) = curl(&[
        "-i",
        "--resolve",
        &resolve,
        "http://shop.example.com:8080/cart?id=1",
    ])
    .unwrap();
    assert_eq!(status, 301, "{head}");
    // The gateway drops the Host's port (`strip_any_host_port`, as Istio's gateways): the
    // redirect goes to the HTTPS default port, path and query kept.
    assert!(
        head.to_ascii_lowercase()
            .contains("location: https://shop.example.com/cart?id=1\r\n"),
        "{head}"
    );

    // MUTUAL: a client certificate from the clients' CA with the SAN the server names.
    let admin = |cert| certs.admin(&address, cert);
    let (status, body) = admin(Some(&certs.ops)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("frontend-red"), "{body}");
    for (what, cert) in [
        ("no certificate", None),
        ("a SAN the server does not name", Some(&certs.intruder)),
        ("a certificate of another CA", Some(&certs.forged)),
    ] {
        assert_refused_in_tls(&admin(cert), what);
    }
    assert!(
        matches!(admin(Some(&certs.ops)), Ok((200, _))),
        "the gateway still answers"
    );

    // PASSTHROUGH: the client's TLS reaches the server outside the mesh untouched (its own
    // certificate), by SNI; another SNI finds no route.
    let (status, body) = https(&address, "secure.example.com", 9443, "/", ca, &[]).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("s_server"), "{body}");
    assert_refused_in_tls(
        &https(&address, "other.example.com", 9443, "/", ca, &["-k"]),
        "a SNI no tls route takes",
    );
    assert!(matches!(
        https(&address, "secure.example.com", 9443, "/", ca, &[]),
        Ok((200, _))
    ));
}

/// The `Gateway` and routes of the stock Envoy test: `echo.shop.local` behind HTTPS.
fn envoy_mesh_yaml(certs: &Path, echo_port: u16, secure_port: u16) -> String {
    format!(
        "{mesh}---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ingress, namespace: shop}}
spec: {{address: 127.0.79.9, labels: {{istio: ingressgateway}}, serviceAccount: ingress}}
---
{gateway}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge, namespace: shop}}
spec:
  hosts: [shop.example.com, admin.example.com]
  gateways: [public]
  http:
  - match: [{{uri: {{prefix: /}}}}]
    delegate: {{name: edge-routes}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge-routes, namespace: shop}}
spec:
  http:
  - match: [{{uri: {{prefix: /nowhere}}}}]
    directResponse: {{status: 418}}
  - route: [{{destination: {{host: echo.shop.local, subset: v1}}}}]
---
{secure}",
        mesh = isthmus_e2e::mesh::mesh_yaml("127.0.79", echo_port),
        gateway = gateway_yaml("shop", certs),
        secure = secure_yaml("public", secure_port),
    )
}

#[test]
fn a_stock_envoy_is_the_same_ingress_gateway_with_no_rejected_update() {
    use isthmus_e2e::envoy::{Echo, Envoy};
    use isthmus_e2e::mesh::bootstrap;

    let dir = tempfile::tempdir().unwrap();
    let certs = EdgeCerts::new();
    let secure = HttpsServer::start(&certs.secure.0, &certs.secure.1, None);
    let echo = Echo::start(dir.path(), "echo-v1").unwrap();
    let echo_inbound = free_port();
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("mesh.yaml"),
        envoy_mesh_yaml(&certs.dir, echo_inbound, secure.port),
    )
    .unwrap();
    let daemon = isthmus_e2e::Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    let xds = daemon.xds.to_string();
    let outbound = free_port().to_string();
    let server = bootstrap(
        dir.path(),
        "echo-v1",
        &[
            "--workload",
            "echo-v1",
            "--address",
            "127.0.79.1",
            "--xds-address",
            &xds,
            "--outbound-port",
            &outbound,
            "--app-port",
            &format!("http={}", echo.addr.port()),
        ],
    );
    let server = Envoy::start(dir.path(), "echo-v1", &server).unwrap();
    let ingress = bootstrap(
        dir.path(),
        "ingress",
        &[
            "--workload",
            "ingress",
            "--address",
            "127.0.79.9",
            "--xds-address",
            &xds,
            "--role",
            "ingress",
        ],
    );
    let ingress = Envoy::start(dir.path(), "ingress", &ingress).unwrap();
    let address = "127.0.79.9";
    let ca = certs.ca.as_path();

    let answer = until_ok(|| https(address, "shop.example.com", 8443, "/", ca, &[]));
    let Ok((200, body)) = answer else {
        panic!(
            "{answer:?}\n{}\n{}",
            ingress.logs(),
            daemon.http_get("/debug/xds")
        )
    };
    assert!(
        body.contains("URI=spiffe://red.local/ns/shop/sa/ingress"),
        "echo's sidecar did not see the gateway's identity: {body}"
    );
    // The delegate's own match, within the parent's.
    let (status, _) = https(address, "shop.example.com", 8443, "/nowhere", ca, &[]).unwrap();
    assert_eq!(status, 418);
    let resolve = format!("shop.example.com:8080:{address}");
    let (status, head) = curl(&[
        "-i",
        "--resolve",
        &resolve,
        "http://shop.example.com:8080/a",
    ])
    .unwrap();
    assert_eq!(status, 301, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("location: https://shop.example.com/a\r\n"),
        "{head}"
    );
    assert!(matches!(
        certs.admin(address, Some(&certs.ops)),
        Ok((200, _))
    ));
    assert_refused_in_tls(&certs.admin(address, None), "no client certificate");
    assert_refused_in_tls(
        &certs.admin(address, Some(&certs.intruder)),
        "a SAN the server does not name",
    );
    assert!(matches!(
        certs.admin(address, Some(&certs.ops)),
        Ok((200, _))
    ));
    let (status, body) = https(address, "secure.example.com", 9443, "/", ca, &[]).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("s_server"), "{body}");

    ingress.assert_no_rejected_update();
    server.assert_no_rejected_update();
}

/// A `kubernetes.io/tls` `Secret` with `files`' certificate and key (and roots).
fn tls_secret(
    namespace: &str,
    name: &str,
    files: &(PathBuf, PathBuf),
    ca: Option<&Path>,
) -> String {
    use base64::Engine;
    let b64 =
        |p: &Path| base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap());
    let ca = ca.map_or(String::new(), |c| format!(", ca.crt: {}", b64(c)));
    format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: {namespace}}}
type: kubernetes.io/tls
data: {{tls.crt: {}, tls.key: {}{ca}}}
",
        b64(&files.0),
        b64(&files.1)
    )
}

/// Kubernetes mode: the `Gateway`'s certificate is the `Secret` its `credentialName` names in
/// the gateway's namespace (not the same-named one elsewhere), sent over SDS, and a rotated
/// `Secret` is served without restarting anything. The gateway is the edge: the client's own
/// `x-forwarded-*` headers are not believed.
#[test]
fn credential_name_serves_the_gateway_namespaces_secret_and_its_rotation() {
    use isthmus_e2e::envoy::Echo;
    use isthmus_e2e::kube::ApiServer;

    let dir = tempfile::tempdir().unwrap();
    let certs = EdgeCerts::new();
    let (next_ca, next_ca_file) = ca(&certs.dir, "next");
    let next_edge = leaf(
        &certs.dir,
        "edge-next",
        &["shop.example.com"],
        &next_ca,
        Usage::ServerAuth,
    );
    let edge = (certs.dir.join("edge.pem"), certs.dir.join("edge-key.pem"));
    let plain = Echo::start(dir.path(), "plain").unwrap();
    let api = ApiServer::start();
    api.apply(&tls_secret("istio-system", "edge-cert", &edge, None));
    // The same name in the application's namespace, with another certificate: never served.
    api.apply(&tls_secret("shop", "edge-cert", &next_edge, None));
    api.apply(&format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: public, namespace: istio-system}}
spec:
  selector: {{app: istio-ingressgateway}}
  servers:
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: ['*/shop.example.com']
    tls: {{mode: SIMPLE, credentialName: edge-cert}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: plain, namespace: shop}}
spec:
  hosts: [plain.shop.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge, namespace: shop}}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/public]
  http:
  - route: [{{destination: {{host: plain.shop.internal}}}}]
",
        port = plain.addr.port()
    ));
    api.pod(
        "istio-system",
        "istio-ingressgateway-0",
        "127.0.82.9",
        "ingress",
        "istio-ingressgateway",
    );
    let daemon = api.isthmusd(dir.path(), "cluster.local", &[]);
    let gateway = api.pod_proxy(
        dir.path(),
        &daemon,
        "router~127.0.82.9~istio-ingressgateway-0.istio-system~istio-system.svc.cluster.local",
        ("istio-system", "ingress"),
        "cluster.local",
        &["--role", "ingress"],
    );

    let address = "127.0.82.9";

    let answer = until_ok(|| {
        https(
            address,
            "shop.example.com",
            8443,
            "/",
            &certs.ca,
            &[
                "-H",
                "x-forwarded-proto: http",
                "-H",
                "x-forwarded-for: 10.9.9.9",
                "-H",
                "x-forwarded-client-cert: URI=spiffe://cluster.local/ns/shop/sa/admin",
            ],
        )
    });
    let Ok((200, body)) = answer else {
        panic!("{answer:?}\n{}\n{}", gateway.logs(), daemon.logs())
    };
    // What left the gateway, as the server outside the mesh saw it.
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    let headers = &seen["headers"];
    assert_eq!(headers["x-forwarded-proto"], "https", "{body}");
    let xff = headers["x-forwarded-for"].as_str().unwrap_or_default();
    assert!(
        xff.ends_with("127.0.0.1"),
        "the client's address is appended: {body}"
    );
    assert!(
        headers.get("x-forwarded-client-cert").is_none(),
        "a client's XFCC went through: {body}"
    );

    // Rotation: the Secret changes, the gateway serves the new certificate.
    api.apply(&tls_secret("istio-system", "edge-cert", &next_edge, None));
    let rotated = until_ok(|| https(address, "shop.example.com", 8443, "/", &next_ca_file, &[]));
    assert!(
        matches!(rotated, Ok((200, _))),
        "{rotated:?}\n{}",
        gateway.logs()
    );
    assert_refused_in_tls(
        &https(address, "shop.example.com", 8443, "/", &certs.ca, &[]),
        "the rotated-away certificate's CA",
    );
    assert!(matches!(
        https(address, "shop.example.com", 8443, "/", &next_ca_file, &[]),
        Ok((200, _))
    ));

    // A stock Envoy as a second replica takes the same SDS credential with no rejected update.
    api.pod(
        "istio-system",
        "istio-ingressgateway-1",
        "127.0.82.10",
        "ingress",
        "istio-ingressgateway",
    );
    let bootstrap = dir.path().join("envoy-ingress.json");
    let xds = daemon.xds.to_string();
    let out = isthmus_e2e::isthmusctl(&[
        "bootstrap",
        "envoy",
        "--role",
        "ingress",
        "--workload",
        "istio-ingressgateway-1",
        "--namespace",
        "istio-system",
        "--address",
        "127.0.82.10",
        "--xds-address",
        &xds,
        "--insecure-plaintext",
        "--admin-port",
        "0",
        "-o",
        &bootstrap.to_string_lossy(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let envoy = isthmus_e2e::envoy::Envoy::start(dir.path(), "ingress", &bootstrap).unwrap();
    let answer = until_ok(|| {
        https(
            "127.0.82.10",
            "shop.example.com",
            8443,
            "/",
            &next_ca_file,
            &[],
        )
    });
    assert!(
        matches!(answer, Ok((200, _))),
        "{answer:?}\n{}",
        envoy.logs()
    );
    envoy.assert_no_rejected_update();

    // No Secret: the server is not served, and isthmusd's log says why.
    assert!(
        api.server
            .delete("Secret", Some("istio-system"), "edge-cert")
    );
    isthmus_e2e::mesh::until("the server gone", Duration::from_secs(20), || {
        // No chain is left on the port: its listener goes, and connections are refused.
        https(address, "shop.example.com", 8443, "/", &next_ca_file, &[]).is_err()
    });
    isthmus_e2e::mesh::until(
        "the warning on the Gateway",
        Duration::from_secs(20),
        || daemon.logs().contains("no Secret istio-system/edge-cert"),
    );
}
