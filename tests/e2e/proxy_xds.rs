//! `isthmus-proxy` configured by `isthmusd` over delta ADS, real processes on loopback: every
//! resource `isthmusd` sends for the example meshes is inside the proxy's profile (no NACK on
//! either side), the proxy becomes ready only once configured, and over the mTLS port it gets
//! only its own workload's configuration.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isthmus_e2e::envoy::curl;
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{CurlError, Isthmusd, create_token, free_port, request_cert};
use serde_json::Value;

/// Services and policies beyond the bookinfo example: a DNS service, redirects, direct
/// responses, rewrites, header edits, retries, a weighted split, a TCP port.
const MORE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: bookinfo}
spec:
  hosts: [httpbin.org]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http}, {number: 443, name: tls}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: bookinfo}
spec:
  hosts: [db.bookinfo.local]
  location: MESH_INTERNAL
  ports: [{number: 5432, name: tcp-pg}]
  endpoints: [{address: 127.0.0.40}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: bookinfo}
spec:
  hosts: [httpbin.org]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, redirectCode: 308}
  - match: [{uri: {exact: /health}}]
    directResponse: {status: 204}
  - match: [{uri: {regex: '/v[0-9]+/.*'}, queryParams: {debug: {exact: '1'}}}]
    rewrite: {uri: /api/}
    headers:
      request: {set: {x-edge: 'true'}, remove: [x-internal]}
      response: {add: {x-served-by: isthmus}}
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: '5xx,connect-failure,retriable-status-codes'}
    timeout: 10s
    route: [{destination: {host: httpbin.org, port: {number: 80}}}]
  - route:
    - {destination: {host: httpbin.org, port: {number: 80}}, weight: 90}
    - {destination: {host: reviews.bookinfo.svc.cluster.local, subset: v2}, weight: 10}
";

fn node_id(ip: &str, workload: &str) -> String {
    format!("sidecar~{ip}~{workload}.bookinfo~bookinfo.svc.cluster.local")
}

fn plaintext_proxy(dir: &Path, daemon: &Isthmusd, ip: &str, workload: &str) -> IsthmusProxy {
    let mut args = vec![
        "--node-id".into(),
        node_id(ip, workload),
        "--xds-plaintext".into(),
        "--xds-address".into(),
        daemon.xds.to_string(),
        "--metadata".into(),
        format!("OUTBOUND_PORT={}", free_port()),
    ];
    // One of the example workloads speaks state-of-the-world ADS.
    if workload == SOTW_WORKLOAD {
        args.push("--xds-sotw".into());
    }
    IsthmusProxy::start(dir, workload, &args)
}

const SOTW_WORKLOAD: &str = "reviews-v2";

fn mesh(dir: &Path) -> Isthmusd {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config");
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, config.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(config.join("more.yaml"), MORE).unwrap();
    Isthmusd::start(dir, "cluster.local", &[]).unwrap()
}

#[test]
fn isthmus_proxy_takes_every_resource_isthmusd_sends_for_the_examples() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = mesh(dir.path());
    let proxies: Vec<(String, IsthmusProxy)> = [
        ("127.0.0.20", "productpage"),
        ("127.0.0.21", "reviews-v1"),
        ("127.0.0.22", "reviews-v2"),
    ]
    .into_iter()
    .map(|(ip, w)| (node_id(ip, w), plaintext_proxy(dir.path(), &daemon, ip, w)))
    .collect();
    for (node, proxy) in &proxies {
        if let Err(e) = proxy.wait_ready(Duration::from_secs(20)) {
            panic!("{node} not ready: {e}\nisthmusd:\n{}", daemon.logs());
        }
        let dump = proxy.config_dump();
        for t in dump["xds"]["types"].as_array().unwrap() {
            assert_eq!(t["updates_rejected"], 0, "{node}: {t}");
        }
        let types: Vec<&str> = dump["xds"]["types"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["updates_accepted"].as_u64().unwrap() > 0)
            .map(|t| t["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["CDS", "EDS", "LDS", "RDS", "SDS"], "{node}: {dump}");
        let secrets = dump["secrets"].as_object().unwrap();
        assert!(
            secrets.contains_key("default") && secrets.contains_key("ROOTCA"),
            "{node}: {dump}"
        );
        let listeners = dump["listeners"].as_object().unwrap();
        assert!(listeners.contains_key("outbound_http"), "{node}: {dump}");
        // The reviews workloads serve reviews' port 9080 (on 19080): an inbound listener each.
        if node.contains("reviews") {
            assert_eq!(listeners.len(), 2, "{node}: {dump}");
        }
        let (_, clusters) = proxy.admin_get("/clusters");
        assert!(
            clusters.contains(
                "outbound|9080|v2|reviews.bookinfo.svc.cluster.local::added_via_api::true"
            ),
            "{clusters}"
        );
    }
    // isthmusd's side: every stream of these nodes has every type acknowledged, no NACK.
    let xds: Value = serde_json::from_str(&daemon.http_get("/debug/xds")).unwrap();
    for (node, _) in &proxies {
        let stream = xds["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["node"] == node.as_str())
            .unwrap_or_else(|| panic!("no stream for {node}: {xds}"));
        let protocol = if node.contains(SOTW_WORKLOAD) {
            "sotw"
        } else {
            "delta"
        };
        assert_eq!(stream["protocol"], protocol, "{node}");
        for t in stream["types"].as_array().unwrap() {
            assert!(t["nack"].is_null(), "{node}: {t}");
            assert_eq!(t["sent"], t["acked"], "{node}: {t}");
        }
    }
}

#[test]
fn isthmus_proxy_is_not_ready_without_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = mesh(dir.path());
    // A node with no WorkloadEntry: isthmusd has nothing for it.
    let ghost = plaintext_proxy(dir.path(), &daemon, "127.0.0.99", "ghost");
    assert!(ghost.wait_ready(Duration::from_secs(2)).is_err());
    let (status, body) = ghost.admin_get("/ready");
    assert_eq!(status, 503);
    assert!(body.starts_with("PRE_INITIALIZING"), "{body}");
    // Nothing listening on isthmusd's side either: the proxy reconnects and stays unready.
    let lonely = IsthmusProxy::start(
        dir.path(),
        "lonely",
        &[
            "--node-id".into(),
            node_id("127.0.0.21", "reviews-v1"),
            "--xds-plaintext".into(),
            "--xds-address".into(),
            format!("127.0.0.1:{}", free_port()),
        ],
    );
    assert!(lonely.wait_ready(Duration::from_secs(2)).is_err());
    let (_, body) = lonely.admin_get("/ready");
    assert!(body.contains("not connected to isthmusd"), "{body}");
}

#[test]
fn isthmus_proxy_over_mtls_gets_only_its_own_workload() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = mesh(dir.path());
    let mtls_proxy = |name: &str, identity: &str, node: String| {
        let token = create_token(&daemon, dir.path(), identity);
        IsthmusProxy::start(
            dir.path(),
            name,
            &[
                "--identity".into(),
                identity.into(),
                "--root-cert".into(),
                daemon.root_file().to_string_lossy().into_owned(),
                "--token-file".into(),
                token.to_string_lossy().into_owned(),
                "--ca-address".into(),
                daemon.grpc.to_string(),
                "--node-id".into(),
                node,
                "--metadata".into(),
                format!("OUTBOUND_PORT={}", free_port()),
            ],
        )
    };
    let reviews = mtls_proxy(
        "reviews",
        "spiffe://cluster.local/ns/bookinfo/sa/reviews",
        node_id("127.0.0.21", "reviews-v1"),
    );
    reviews.wait_ready(Duration::from_secs(20)).unwrap();
    let dump = reviews.config_dump();
    assert!(dump["xds"]["connected"].as_bool().unwrap(), "{dump}");
    // productpage's identity asking for reviews-v1's configuration (and its private key).
    let impostor = mtls_proxy(
        "impostor",
        "spiffe://cluster.local/ns/bookinfo/sa/productpage",
        node_id("127.0.0.21", "reviews-v1"),
    );
    assert!(impostor.wait_ready(Duration::from_secs(3)).is_err());
    let (_, body) = impostor.admin_get("/ready");
    assert!(
        body.contains("PermissionDenied") || body.contains("permission"),
        "{body}"
    );
    assert!(
        impostor.config_dump()["listeners"]
            .as_object()
            .unwrap()
            .is_empty()
    );
}

/// A TCP service behind an `isthmus-proxy` sidecar under STRICT mTLS: the inbound listener
/// terminates TLS with the certificate from SDS, verifies the client's SPIFFE ID, applies
/// network RBAC, and proxies the bytes to the application (here an HTTP echo, opaque to TCP).
#[test]
fn inbound_tcp_over_mtls_with_network_rbac() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let port = free_port();
    let ip = "127.0.70.1";
    std::fs::write(
        config.join("db.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: shop}}
spec:
  hosts: [db.shop.local]
  location: MESH_INTERNAL
  ports: [{{number: {port}, name: tcp-db}}]
  workloadSelector: {{labels: {{app: db}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: db-1, namespace: shop}}
spec: {{address: {ip}, labels: {{app: db}}, serviceAccount: db}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: shop}}
spec: {{mtls: {{mode: STRICT}}}}
"
        ),
    )
    .unwrap();
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    let app = isthmus_e2e::envoy::Echo::start(dir.path(), "db").unwrap();
    let proxy = IsthmusProxy::start(
        dir.path(),
        "db-1",
        &[
            "--node-id".into(),
            format!("sidecar~{ip}~db-1.shop~shop.svc.cluster.local"),
            "--xds-plaintext".into(),
            "--xds-address".into(),
            daemon.xds.to_string(),
            "--metadata".into(),
            format!("APP_PORTS=tcp-db={}", app.addr.port()),
            "--metadata".into(),
            format!("OUTBOUND_PORT={}", free_port()),
        ],
    );
    proxy.wait_ready(Duration::from_secs(20)).unwrap();

    // A client certificate for spiffe://red.local/ns/shop/sa/client from the mesh CA.
    let client = "spiffe://red.local/ns/shop/sa/client";
    let tls = request_cert(&daemon, dir.path(), client);
    let url = format!("https://{ip}:{port}/hello");
    let cert = tls.join("cert-chain.pem");
    let key = tls.join("key.pem");
    let with_cert = || {
        curl(&[
            "-k",
            "--http1.1",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            &url,
        ])
    };
    // The server presents the workload's SVID, which chains to the mesh root (curl's -k only
    // skips the host name check, which an SVID cannot pass: it has no DNS name).
    let s_client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("{ip}:{port}"),
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(daemon.root_file())
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&s_client.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let (status, body) = with_cert().expect("mTLS with the client's certificate");
    assert_eq!(status, 200, "{body}\n{}", proxy.logs());
    assert!(body.contains("\"name\":\"db\""), "{body}");

    // No client certificate: the handshake requires one.
    let no_cert = curl(&["-k", "--http1.1", &url]);
    assert!(
        matches!(&no_cert, Err(e) if e.tls_alert() == Some("certificate required")),
        "no client certificate under STRICT: {no_cert:?}"
    );
    // Plaintext: no filter chain under STRICT, closed (FIN or RST) before any response.
    let plaintext = curl(&[&format!("http://{ip}:{port}/hello")]);
    assert!(
        matches!(&plaintext, Err(e) if e.is_closed()),
        "plaintext under STRICT: {plaintext:?}"
    );

    // DENY the client's principal: the connection is closed before a byte reaches the app.
    std::fs::write(
        config.join("deny.yaml"),
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules: [{from: [{source: {principals: [red.local/ns/shop/sa/client]}}]}]
",
    )
    .unwrap();
    let start = Instant::now();
    let mut last = with_cert();
    while matches!(last, Ok((200, _))) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        last = with_cert();
    }
    // After the handshake, network RBAC closes the connection: no response at all (a FIN, or
    // a RST when the request had already arrived unread).
    assert!(
        matches!(&last, Err(e) if e.is_closed()),
        "after the DENY policy: {last:?}\n{}",
        proxy.logs()
    );
    std::fs::remove_file(config.join("deny.yaml")).unwrap();
    let start = Instant::now();
    while !matches!(with_cert(), Ok((200, _))) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not served again after removing the policy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A service `web.shop.local:8080` outside the mesh with an endpoint per port of `apps`, outlier
/// detection on it, and a `client` workload at 127.0.72.1; then `isthmusd` and the client's
/// `isthmus-proxy` (ready), and its outbound port.
fn web_client(dir: &Path, apps: &[u16], extra: &[&str]) -> (Isthmusd, IsthmusProxy, u16) {
    web_client_with(dir, apps, "", extra)
}

/// [`web_client`] with more of the `DestinationRule`'s traffic policy (`connectionPool: ...`).
fn web_client_with(
    dir: &Path,
    apps: &[u16],
    policy: &str,
    extra: &[&str],
) -> (Isthmusd, IsthmusProxy, u16) {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let endpoints: String = apps
        .iter()
        .map(|p| format!("  - {{address: 127.0.0.1, ports: {{http: {p}}}}}\n"))
        .collect();
    std::fs::write(
        config.join("web.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: shop}}
spec:
  hosts: [web.shop.local]
  location: MESH_EXTERNAL
  ports: [{{number: 8080, name: http}}]
  endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: shop}}
spec:
  host: web.shop.local
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}}
{policy}---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: shop}}
spec: {{address: 127.0.72.1, serviceAccount: client}}
"
        ),
    )
    .unwrap();
    let daemon = Isthmusd::start(dir, "red.local", &[]).unwrap();
    let outbound = free_port();
    let mut args: Vec<String> = vec![
        "--node-id".into(),
        "sidecar~127.0.72.1~client.shop~shop.svc.cluster.local".into(),
        "--xds-plaintext".into(),
        "--xds-address".into(),
        daemon.xds.to_string(),
        "--metadata".into(),
        format!("OUTBOUND_PORT={outbound}"),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let proxy = IsthmusProxy::start(dir, "client", &args);
    proxy.wait_ready(Duration::from_secs(20)).unwrap();
    (daemon, proxy, outbound)
}

/// A request to `web.shop.local` through the client's sidecar: (status, answering backend),
/// or why there was no response.
fn try_web(outbound: u16, path: &str) -> Result<(u16, String), CurlError> {
    let (status, body) = curl(&[
        "-x",
        &format!("http://127.0.0.1:{outbound}"),
        &format!("http://web.shop.local:8080{path}"),
    ])?;
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    Ok((status, body["name"].as_str().unwrap_or_default().to_owned()))
}

/// [`try_web`], which must get a response.
fn web(outbound: u16, path: &str) -> (u16, String) {
    try_web(outbound, path)
        .unwrap_or_else(|e| panic!("web.shop.local{path} through the client sidecar: {e}"))
}

/// Outlier detection through `isthmus-proxy`: when one of two endpoints dies, its failures
/// eject it, the retry goes to the other one, and every request still succeeds.
#[test]
fn a_dead_endpoint_is_ejected_and_requests_fail_over() {
    let dir = tempfile::tempdir().unwrap();
    let a = isthmus_e2e::envoy::Echo::start(dir.path(), "a").unwrap();
    let b = isthmus_e2e::envoy::Echo::start(dir.path(), "b").unwrap();
    let (_daemon, proxy, outbound) = web_client(dir.path(), &[a.addr.port(), b.addr.port()], &[]);
    let seen: Vec<String> = (0..10).map(|_| web(outbound, "/").1).collect();
    assert!(
        seen.contains(&"a".to_owned()) && seen.contains(&"b".to_owned()),
        "{seen:?}\n{}",
        proxy.logs()
    );

    let a_port = a.addr.port();
    drop(a);
    for i in 0..20 {
        assert_eq!(
            web(outbound, "/"),
            (200, "b".to_owned()),
            "request {i} after a died\n{}",
            proxy.logs()
        );
    }
    let (_, clusters) = proxy.admin_get("/clusters");
    assert!(
        clusters.contains(&format!(
            "outbound|8080||web.shop.local::127.0.0.1:{a_port}::health_flags::/failed_outlier_check"
        )),
        "{clusters}"
    );
    drop(b);
}

/// SIGTERM: the proxy stops accepting, lets the request in flight finish, and exits.
#[test]
fn sigterm_lets_the_request_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let app = isthmus_e2e::envoy::Echo::start(dir.path(), "slow").unwrap();
    let (_daemon, mut proxy, outbound) =
        web_client(dir.path(), &[app.addr.port()], &["--drain-timeout", "5s"]);
    assert_eq!(web(outbound, "/").0, 200);
    let in_flight = std::thread::spawn(move || web(outbound, "/?delay_ms=1500"));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = proxy.terminate(Duration::from_secs(8));
    let took = started.elapsed();
    assert_eq!(
        in_flight.join().unwrap(),
        (200, "slow".to_owned()),
        "{}",
        proxy.logs()
    );
    let status = status.expect("the proxy did not exit after SIGTERM");
    assert!(status.success(), "{status}\n{}", proxy.logs());
    assert!(
        took >= Duration::from_millis(900),
        "exited before the request finished ({took:?})"
    );
    let after = try_web(outbound, "/");
    assert!(
        matches!(&after, Err(e) if e.is_refused()),
        "nothing listens after the drain: {after:?}"
    );
    assert!(proxy.logs().contains("draining"), "{}", proxy.logs());
}

/// Hostile or broken clients get a clean refusal and a counted metric, and never stop the
/// proxy from serving: connections that send nothing, a ClientHello that never completes,
/// garbage where TLS is expected, and oversized request headers.
#[test]
fn hostile_clients_are_refused_counted_and_harmless() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    let dir = tempfile::tempdir().unwrap();
    let app = isthmus_e2e::envoy::Echo::start(dir.path(), "web").unwrap();
    let (_daemon, proxy, outbound) = web_client(
        dir.path(),
        &[app.addr.port()],
        &["--handshake-timeout", "1s"],
    );
    let address = format!("127.0.0.1:{outbound}");

    // Fifty connections that never send a byte, and one that stops mid-ClientHello: the
    // outbound listener has no TLS inspector, so they are plaintext HTTP clients that never
    // finish their headers.
    let mut idle: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(&address).unwrap())
        .collect();
    let mut partial = TcpStream::connect(&address).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    // Meanwhile, a good request is served.
    assert_eq!(
        web(outbound, "/"),
        (200, "web".to_owned()),
        "{}",
        proxy.logs()
    );

    // Headers larger than the 64 KiB bound: refused with 431 (seen every time here), or the
    // connection closed while curl is still sending them (the proxy stops reading at the
    // bound, and a close with unread bytes is a RST that can overtake the 431).
    let big = format!("x-big: {}", "a".repeat(100 * 1024));
    let oversized = curl(&[
        "-x",
        &format!("http://{address}"),
        "-H",
        &big,
        "http://web.shop.local:8080/",
    ]);
    assert!(
        matches!(&oversized, Ok((431, _))) || matches!(&oversized, Err(e) if e.is_closed()),
        "oversized headers: {oversized:?}"
    );

    // The stalled clients are dropped after the handshake timeout (1 s here).
    std::thread::sleep(Duration::from_millis(1500));
    let mut buf = [0u8; 64];
    for (i, stream) in idle
        .iter_mut()
        .chain(std::iter::once(&mut partial))
        .enumerate()
    {
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        // Closed, or answered with an error status: never left hanging.
        match stream.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => assert!(
                buf[..n].starts_with(b"HTTP/1.1 4"),
                "connection {i}: {:?}",
                &buf[..n]
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "connection {i} still open after the timeout: {e}\n{}",
                proxy.logs()
            ),
        }
    }
    assert_eq!(web(outbound, "/"), (200, "web".to_owned()), "still serving");
    let (_, metrics) = proxy.admin_get("/stats/prometheus");
    let protocol_errors: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("isthmus_proxy_downstream_connections_refused_total")
                && l.contains("reason=\"http_protocol\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(protocol_errors >= 1, "{metrics}");
    assert!(
        metrics.contains("isthmus_proxy_xds_updates_total{type=\"CDS\",result=\"accepted\"}"),
        "{metrics}"
    );
}

/// An HTTP/2 frame: 9-byte header, then the payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// HTTP/2 rapid reset (CVE-2023-44487): a client that opens streams and cancels them at once,
/// thousands in one burst, gets GOAWAY ENHANCE_YOUR_CALM; the flood is counted and the proxy
/// keeps serving everyone else.
#[test]
fn an_http2_rapid_reset_flood_is_cut_off_and_counted() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    let dir = tempfile::tempdir().unwrap();
    let app = isthmus_e2e::envoy::Echo::start(dir.path(), "web").unwrap();
    let (_daemon, proxy, outbound) = web_client(dir.path(), &[app.addr.port()], &[]);
    let mut stream = TcpStream::connect(("127.0.0.1", outbound)).unwrap();
    // h2c with prior knowledge: the preface and empty SETTINGS, then 5,000 times HEADERS
    // (GET / on web.shop.local:8080, HPACK static entries and one literal) + RST_STREAM(CANCEL).
    let authority = b"web.shop.local:8080";
    let mut block = vec![
        0x82,
        0x86,
        0x84,
        0x01,
        u8::try_from(authority.len()).unwrap(),
    ];
    block.extend_from_slice(authority);
    let mut burst = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    burst.extend(h2_frame(0x4, 0, 0, &[]));
    for i in 0..5_000u32 {
        let id = 2 * i + 1;
        burst.extend(h2_frame(0x1, 0x5, id, &block));
        burst.extend(h2_frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    // The proxy may close while the burst is still being written.
    let _ = stream.write_all(&burst);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the flooding connection was not closed: {e}"),
        }
    }
    // Walk the frames the proxy sent: one of them is GOAWAY with ENHANCE_YOUR_CALM (11).
    let mut goaway = None;
    let mut at = 0;
    while at + 9 <= received.len() {
        let len = usize::from(received[at]) << 16
            | usize::from(received[at + 1]) << 8
            | usize::from(received[at + 2]);
        let kind = received[at + 3];
        let payload = &received[(at + 9).min(received.len())..(at + 9 + len).min(received.len())];
        if kind == 0x7 && payload.len() >= 8 {
            goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        at += 9 + len;
    }
    assert_eq!(
        goaway,
        Some(11),
        "GOAWAY ENHANCE_YOUR_CALM\n{}",
        proxy.logs()
    );

    assert_eq!(web(outbound, "/"), (200, "web".to_owned()), "still serving");
    let (_, metrics) = proxy.admin_get("/stats/prometheus");
    assert!(
        metrics.lines().any(|l| l
            .starts_with("isthmus_proxy_downstream_connections_refused_total")
            && l.contains("reason=\"http2_flood\"")
            && !l.ends_with(" 0")),
        "{metrics}\n{}",
        proxy.logs()
    );
}

/// A request through the client sidecar fails with a circuit breaker's 503, as Envoy's.
fn assert_overflow(outbound: u16, proxy: &IsthmusProxy) {
    let (status, body) = curl(&[
        "-D",
        "-",
        "-x",
        &format!("http://127.0.0.1:{outbound}"),
        "http://web.shop.local:8080/",
    ])
    .expect("a response from the client sidecar");
    assert_eq!(status, 503, "{body}\n{}", proxy.logs());
    assert!(body.contains("x-envoy-overloaded: true"), "{body}");
    assert!(body.ends_with("reset reason: overflow"), "{body}");
}

/// The `max_connections` and `max_pending_requests` circuit breakers (`tcp.maxConnections`,
/// `http1MaxPendingRequests`): with one connection allowed, a second request waits for it
/// (pending) and is served after the first; a third finds the pending queue full and fails at
/// once with 503 and `x-envoy-overloaded`, as in Envoy.
#[test]
fn connection_and_pending_breakers_queue_then_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let app = isthmus_e2e::envoy::Echo::start(dir.path(), "web").unwrap();
    let (_daemon, proxy, outbound) = web_client_with(
        dir.path(),
        &[app.addr.port()],
        "    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}\n",
        &[],
    );
    // Warm: the one connection exists and is idle in the pool.
    assert_eq!(
        web(outbound, "/"),
        (200, "web".to_owned()),
        "{}",
        proxy.logs()
    );
    let started = Instant::now();
    let first = std::thread::spawn(move || web(outbound, "/?delay_ms=1000"));
    std::thread::sleep(Duration::from_millis(200));
    let second = std::thread::spawn(move || {
        let answer = web(outbound, "/?delay_ms=10");
        (answer, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_overflow(outbound, &proxy);
    assert_eq!(first.join().unwrap(), (200, "web".to_owned()));
    let (answer, took) = second.join().unwrap();
    assert_eq!(
        answer,
        (200, "web".to_owned()),
        "the pending request is served"
    );
    assert!(
        took >= Duration::from_millis(1000),
        "it waited for the connection: {took:?}"
    );
    let (_, metrics) = proxy.admin_get("/stats/prometheus");
    let overflows = |breaker: &str| {
        format!(
            "isthmus_proxy_upstream_overflows_total{{cluster=\"outbound|8080||web.shop.local\",breaker=\"{breaker}\"}}"
        )
    };
    // The second and third requests found the connection taken; the third also the queue full.
    assert!(
        metrics.contains(&format!("{} 2", overflows("max_connections"))),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("{} 1", overflows("max_pending_requests"))),
        "{metrics}"
    );
}

/// The `max_requests` circuit breaker (`http2MaxRequests`): over it, a request fails at once
/// with 503 and `x-envoy-overloaded`, as in Envoy.
#[test]
fn the_request_circuit_breaker_overflows_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = isthmus_e2e::envoy::Echo::start(dir.path(), "web").unwrap();
    let (_daemon, proxy, outbound) = web_client_with(
        dir.path(),
        &[app.addr.port()],
        "    connectionPool: {http: {http2MaxRequests: 1}}\n",
        &[],
    );
    let slow = std::thread::spawn(move || web(outbound, "/?delay_ms=1500"));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert_overflow(outbound, &proxy);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "not at once"
    );
    assert_eq!(slow.join().unwrap(), (200, "web".to_owned()));
    assert_eq!(web(outbound, "/"), (200, "web".to_owned()), "room again");
    let (_, metrics) = proxy.admin_get("/stats/prometheus");
    assert!(
        metrics.contains(
            "isthmus_proxy_upstream_overflows_total{cluster=\"outbound|8080||web.shop.local\",breaker=\"max_requests\"} 1"
        ),
        "{metrics}"
    );
}

/// `connectionPool.tcp.tcpKeepalive`: the sidecar's connection to the service carries the
/// keepalive timer the rule sets (as the kernel reports it, `ss -o`).
#[test]
fn tcp_keepalive_is_set_on_upstream_connections() {
    let dir = tempfile::tempdir().unwrap();
    let app = isthmus_e2e::envoy::Echo::start(dir.path(), "a").unwrap();
    let policy = "    connectionPool: {tcp: {tcpKeepalive: {time: 7s, interval: 3s, probes: 4}}}\n";
    let (_daemon, proxy, outbound) = web_client_with(dir.path(), &[app.addr.port()], policy, &[]);
    assert_eq!(web(outbound, "/").0, 200);
    let port = app.addr.port();
    let out = Command::new("ss")
        .args([
            "-tnoH",
            "state",
            "established",
            "dst",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The pooled connection to the app: its keepalive timer runs from the rule's 7 s.
    assert!(
        text.lines()
            .any(|l| l.contains("timer:(keepalive,") && !l.contains("timer:(keepalive,0")),
        "no keepalive timer on the connection to {port}:\n{text}\n{}",
        proxy.logs()
    );
    // `ss` writes 6.9 s as `6.992ms` (seconds, then milliseconds) or `6sec`: whole seconds
    // first. Just opened, the timer is a little under the rule's 7 s.
    let timer = text.split("timer:(keepalive,").nth(1).unwrap_or_default();
    let whole_seconds: String = timer.chars().take_while(char::is_ascii_digit).collect();
    let seconds_first = timer[whole_seconds.len()..].starts_with('.')
        || timer[whole_seconds.len()..].starts_with("sec");
    assert!(
        seconds_first
            && whole_seconds
                .parse::<u32>()
                .is_ok_and(|s| (5..=7).contains(&s)),
        "{text}"
    );
}
