//! TLS origination to servers outside the mesh (a `DestinationRule`'s `SIMPLE` and `MUTUAL`),
//! real processes: `openssl s_server` is the external HTTPS server, the application calls it in
//! plain HTTP through its sidecar, and the sidecar (`isthmus-proxy`, then a stock Envoy on the
//! same `isthmusd` configuration) originates TLS with the files the rule names.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::PathBuf;
use std::time::Duration;

use isthmus_e2e::certs::{HttpsServer, Usage as ExtendedKeyUsagePurpose, ca, leaf};
use isthmus_e2e::envoy::curl;
use isthmus_e2e::mesh::{envoy_client, until};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{Isthmusd, free_port};

/// One external host: its name, the server it leads to, and the `DestinationRule`'s `tls`.
struct Host {
    name: &'static str,
    port: u16,
    tls: String,
}

fn config(hosts: &[Host]) -> String {
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: shop}
spec: {address: 127.0.73.1, serviceAccount: client}
",
    );
    for (i, host) in hosts.iter().enumerate() {
        yaml.push_str(&format!(
            "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external-{i}, namespace: shop}}
spec:
  hosts: [{name}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: external-{i}, namespace: shop}}
spec:
  host: {name}
  trafficPolicy:
    tls: {tls}
",
            name = host.name,
            port = host.port,
            tls = host.tls,
        ));
    }
    yaml
}

/// What the application gets for `http://<host>/` through its sidecar's outbound port.
fn call(outbound: u16, host: &str) -> Result<(u16, String), String> {
    curl(&[
        "-x",
        &format!("http://127.0.0.1:{outbound}"),
        &format!("http://{host}/"),
    ])
    .map_err(|e| e.to_string())
}

/// The servers, the certificates and the rules every sidecar in this file is checked with.
struct Setup {
    _dir: tempfile::TempDir,
    _servers: [HttpsServer; 2],
    daemon: Isthmusd,
    root: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let certs = root.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (server_ca, server_ca_file) = ca(&certs, "server");
    let (_other_ca, other_ca_file) = ca(&certs, "other");
    let (client_ca, client_ca_file) = ca(&certs, "client");
    let (server_cert, server_key) = leaf(
        &certs,
        "server",
        &["api.example.test", "mtls.example.test"],
        &server_ca,
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        &certs,
        "shop-client",
        &["client.shop.example.test"],
        &client_ca,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let open = HttpsServer::start(&server_cert, &server_key, None);
    let verifying = HttpsServer::start(&server_cert, &server_key, Some(&client_ca_file));
    let ca = server_ca_file.display();
    let hosts = [
        // The SNI is the host, and the server's certificate is valid for it.
        Host {
            name: "api.example.test",
            port: open.port,
            tls: format!("{{mode: SIMPLE, caCertificates: {ca}}}"),
        },
        // subjectAltNames replace the SNI check: the SNI names no SAN, the list does.
        Host {
            name: "san.example.test",
            port: open.port,
            tls: format!(
                "{{mode: SIMPLE, caCertificates: {ca}, subjectAltNames: [api.example.test]}}"
            ),
        },
        Host {
            name: "wrong-san.example.test",
            port: open.port,
            tls: format!(
                "{{mode: SIMPLE, caCertificates: {ca}, sni: api.example.test, subjectAltNames: [billing.example.test]}}"
            ),
        },
        // The SNI (the host) is not a name of the server's certificate.
        Host {
            name: "wrong-name.example.test",
            port: open.port,
            tls: format!("{{mode: SIMPLE, caCertificates: {ca}}}"),
        },
        Host {
            name: "wrong-ca.example.test",
            port: open.port,
            tls: format!(
                "{{mode: SIMPLE, caCertificates: {}, sni: api.example.test}}",
                other_ca_file.display()
            ),
        },
        Host {
            name: "insecure.example.test",
            port: open.port,
            tls: format!(
                "{{mode: SIMPLE, caCertificates: {}, insecureSkipVerify: true}}",
                other_ca_file.display()
            ),
        },
        Host {
            name: "mtls.example.test",
            port: verifying.port,
            tls: format!(
                "{{mode: MUTUAL, caCertificates: {ca}, clientCertificate: {}, privateKey: {}}}",
                client_cert.display(),
                client_key.display()
            ),
        },
        Host {
            name: "no-client-cert.example.test",
            port: verifying.port,
            tls: format!("{{mode: SIMPLE, caCertificates: {ca}, sni: mtls.example.test}}"),
        },
    ];
    let config_dir = root.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("external.yaml"), config(&hosts)).unwrap();
    let daemon = Isthmusd::start(&root, "red.local", &[]).unwrap();
    Setup {
        _dir: dir,
        _servers: [open, verifying],
        daemon,
        root,
    }
}

/// What every sidecar must do with the rules of [`setup`], through its outbound port.
fn check_origination(outbound: u16, logs: &dyn Fn() -> String) {
    until(
        "the sidecar reaches the external server",
        Duration::from_secs(20),
        || matches!(call(outbound, "api.example.test"), Ok((200, _))),
    );
    for host in [
        "api.example.test",
        "san.example.test",
        "insecure.example.test",
    ] {
        let (status, page) = call(outbound, host).unwrap();
        assert_eq!(status, 200, "{host}: {page}\n{}", logs());
        assert!(
            page.contains("no client certificate available"),
            "{host}: SIMPLE presents no certificate: {page}"
        );
    }
    let (status, page) = call(outbound, "mtls.example.test").unwrap();
    assert_eq!(status, 200, "MUTUAL: {page}\n{}", logs());
    assert!(
        page.contains("Client certificate") && page.contains("shop-client"),
        "MUTUAL presents the rule's client certificate: {page}"
    );
    for host in [
        "wrong-san.example.test",
        "wrong-name.example.test",
        "wrong-ca.example.test",
        "no-client-cert.example.test",
    ] {
        let answer = call(outbound, host);
        assert!(
            matches!(&answer, Ok((status, _)) if *status >= 500),
            "{host}: the handshake must fail: {answer:?}\n{}",
            logs()
        );
    }
}

#[test]
fn isthmus_proxy_originates_tls_and_mutual_tls_and_refuses_wrong_servers() {
    let setup = setup();
    let outbound = free_port();
    let proxy = IsthmusProxy::start(
        &setup.root,
        "client",
        &[
            "--node-id".into(),
            "sidecar~127.0.73.1~client.shop~shop.svc.cluster.local".into(),
            "--xds-plaintext".into(),
            "--xds-address".into(),
            setup.daemon.xds.to_string(),
            "--metadata".into(),
            format!("OUTBOUND_PORT={outbound}"),
        ],
    );
    proxy.wait_ready(Duration::from_secs(20)).unwrap();
    check_origination(outbound, &|| proxy.logs());
    // The local reply says why, as Envoy's does.
    for (host, why) in [
        ("wrong-san.example.test", "NotValidForName"),
        (
            "wrong-name.example.test",
            "not valid for name \"wrong-name.example.test\"",
        ),
        ("wrong-ca.example.test", "UnknownIssuer"),
    ] {
        let (_, page) = call(outbound, host).unwrap();
        assert!(
            page.contains("transport failure reason") && page.contains(why),
            "{host}: {page}"
        );
    }
}

#[test]
fn stock_envoy_takes_the_same_origination_with_no_rejected_update() {
    let setup = setup();
    let outbound = free_port();
    let envoy = envoy_client(
        &setup.root,
        &setup.daemon.xds.to_string(),
        "127.0.73.1",
        outbound,
    );
    check_origination(outbound, &|| envoy.logs());
    envoy.assert_no_rejected_update();
}
