//! Stock Envoy 1.40 sidecars configured only by `isthmusd` from a YAML directory:
//! client -> Envoy sidecar -> mTLS (certificates over SDS) -> Envoy sidecar -> server.
//!
//! Covers the control plane issue's acceptance: no rejected update of any type, routing
//! changes from an edited `VirtualService` within a second, STRICT `PeerAuthentication`, an
//! `AuthorizationPolicy` DENY on the caller's principal, a broken file mid-run, and xDS over
//! the mTLS port with the workload's own certificate.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::Path;
use std::time::Duration;

use isthmus_e2e::envoy::{Echo, Envoy, curl};
use isthmus_e2e::mesh::{
    DENY_CLIENT, HEADER_ROUTES, SPLIT_ROUTES, STRICT, bootstrap, mesh_yaml, until, write,
};
use isthmus_e2e::{CurlError, Isthmusd, free_port, isthmusctl};
use serde_json::Value;

struct Sidecars {
    _apps: Vec<Echo>,
    v1: Envoy,
    v2: Envoy,
    client: Envoy,
    outbound: u16,
}

fn start_sidecars(dir: &Path, daemon: &Isthmusd, ip: &str) -> Sidecars {
    let xds = daemon.xds.to_string();
    let mut apps = Vec::new();
    let mut server = |version: &str, last: u8, sotw: bool| {
        let app = Echo::start(dir, version).unwrap();
        let app_port = format!("http={}", app.addr.port());
        let address = format!("{ip}.{last}");
        let workload = format!("echo-{version}");
        let mut args = vec![
            "--workload",
            &workload,
            "--address",
            &address,
            "--xds-address",
            &xds,
            "--app-port",
            &app_port,
        ];
        if sotw {
            args.push("--sotw");
        }
        let file = bootstrap(dir, &workload, &args);
        apps.push(app);
        Envoy::start(dir, &workload, &file).unwrap()
    };
    // One delta and one state-of-the-world server sidecar: Envoy speaks both to isthmusd.
    let v1 = server("v1", 1, false);
    let v2 = server("v2", 2, true);
    let outbound = free_port();
    let client_file = bootstrap(
        dir,
        "client",
        &[
            "--workload",
            "client",
            "--address",
            &format!("{ip}.3"),
            "--xds-address",
            &xds,
            "--outbound-port",
            &outbound.to_string(),
        ],
    );
    let client = Envoy::start(dir, "client", &client_file).unwrap();
    Sidecars {
        _apps: apps,
        v1,
        v2,
        client,
        outbound,
    }
}

impl Sidecars {
    /// A request from the client application through its sidecar: (status, echo body), or
    /// why there was no response.
    fn call(&self, path: &str, headers: &[&str]) -> Result<(u16, Value), CurlError> {
        let proxy = format!("http://127.0.0.1:{}", self.outbound);
        let url = format!("http://echo.shop.local:8080{path}");
        let mut args = vec!["-x", proxy.as_str(), url.as_str()];
        for h in headers {
            args.extend_from_slice(&["-H", h]);
        }
        let (status, body) = curl(&args)?;
        Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }

    fn backend(&self, headers: &[&str]) -> String {
        let (status, body) = self
            .call("/", headers)
            .expect("a request through the client sidecar");
        assert_eq!(status, 200, "{body}");
        body["name"].as_str().unwrap().to_owned()
    }

    fn all(&self) -> [&Envoy; 3] {
        [&self.v1, &self.v2, &self.client]
    }
}

fn no_rejected_updates(envoy: &Envoy) {
    let stats = envoy.stats();
    let rejected: Vec<_> = stats
        .iter()
        .filter(|(k, v)| k.ends_with("update_rejected") && *v > 0)
        .collect();
    assert!(
        rejected.is_empty(),
        "envoy {} rejected: {rejected:?}\n{}",
        envoy.name,
        envoy
            .logs()
            .lines()
            .filter(|l| l.contains("rejected") || l.contains("[warning]") || l.contains("[error]"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let accepted = |prefix: &str| {
        stats
            .iter()
            .any(|(k, v)| k.starts_with(prefix) && k.ends_with("update_success") && *v > 0)
    };
    // Every type was delivered and applied at least once: LDS, CDS, RDS (client), EDS, SDS.
    for prefix in [
        "listener_manager.lds",
        "cluster_manager.cds",
        "sds.default",
        "sds.ROOTCA",
    ] {
        assert!(
            accepted(prefix),
            "envoy {}: no {prefix} update applied",
            envoy.name
        );
    }
}

#[test]
fn envoy_sidecars_are_configured_by_isthmusd_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = root.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let ip = "127.0.10";
    let inbound = free_port();
    write(&config, "mesh.yaml", &mesh_yaml(ip, inbound));
    let daemon = Isthmusd::start(root, "red.local", &[]).unwrap();
    let mesh = start_sidecars(root, &daemon, ip);

    // mTLS with certificates from isthmusd over SDS; the server sees the caller's identity.
    until(
        "the first request through the mesh",
        Duration::from_secs(20),
        || matches!(mesh.call("/", &[]), Ok((200, _))),
    );
    let (_, body) = mesh
        .call("/hello", &[])
        .expect("a request through the mesh");
    let xfcc = body["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains("URI=spiffe://red.local/ns/shop/sa/client"),
        "{body}"
    );
    let handshakes = [
        mesh.v1
            .stat(&format!("listener.{ip}.1_{inbound}.ssl.handshake")),
        mesh.v2
            .stat(&format!("listener.{ip}.2_{inbound}.ssl.handshake")),
    ];
    assert!(
        handshakes.iter().flatten().sum::<u64>() >= 1,
        "the request did not arrive over TLS: {handshakes:?}"
    );
    // PERMISSIVE (the default): plaintext from outside the mesh is still accepted.
    let direct = format!("http://{ip}.1:{inbound}/");
    let (status, body) = curl(&[&direct]).expect("plaintext under PERMISSIVE");
    assert_eq!(status, 200, "{body}");

    // A header match, then a weighted split: each applies within a second, nothing restarts.
    write(&config, "routes.yaml", HEADER_ROUTES);
    // Before it, requests are balanced over v1 and v2: six of each in a row is the new route.
    let took = until("the header route", Duration::from_secs(5), || {
        (0..6).all(|_| mesh.backend(&["x-version: v2"]) == "v2" && mesh.backend(&[]) == "v1")
    });
    eprintln!("header route applied after {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "header routing took {took:?}"
    );
    for _ in 0..10 {
        assert_eq!(mesh.backend(&[]), "v1");
        assert_eq!(mesh.backend(&["x-version: v2"]), "v2");
    }
    write(&config, "routes.yaml", SPLIT_ROUTES);
    let took = until("the weighted split", Duration::from_secs(5), || {
        mesh.backend(&[]) == "v2"
    });
    eprintln!("weighted split applied after {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "the weighted split took {took:?}"
    );
    let v2 = (0..100).filter(|_| mesh.backend(&[]) == "v2").count();
    assert!(
        (25..=75).contains(&v2),
        "50/50 split sent {v2} of 100 to v2"
    );

    // A broken file: reported with file, document and field; traffic keeps the last good
    // configuration.
    write(
        &config,
        "routes.yaml",
        &format!(
            "{HEADER_ROUTES}---\n{}",
            SPLIT_ROUTES.replace(
                "  - route:",
                "  - rewrite: {uriRegexRewrite: {match: a, rewrite: b}}\n    route:",
            )
        ),
    );
    let debug = daemon.debug.to_string();
    until(
        "the rejection in isthmusctl status",
        Duration::from_secs(5),
        || {
            let out = isthmusctl(&["status", "--debug-addr", &debug]);
            String::from_utf8_lossy(&out.stdout).contains(
            "routes.yaml:11 (document 2): VirtualService echo: spec.http[0].rewrite.uriRegexRewrite: not supported by Isthmus",
        )
        },
    );
    let out = isthmusctl(&["status", "--debug-addr", &debug]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sidecar~127.0.10.3~client.shop"), "{text}");
    let v2 = (0..20).filter(|_| mesh.backend(&[]) == "v2").count();
    assert!(
        (1..20).contains(&v2),
        "the last good split stays in force ({v2}/20 to v2)"
    );

    // STRICT: clients without a certificate are refused, mesh traffic flows. Plaintext
    // matches no filter chain: Envoy closes the connection before any response.
    write(&config, "routes.yaml", HEADER_ROUTES);
    write(&config, "peer-authentication.yaml", STRICT);
    let mut plaintext = curl(&[&direct]);
    until("STRICT mTLS", Duration::from_secs(5), || {
        plaintext = curl(&[&direct]);
        !matches!(plaintext, Ok((200, _)))
    });
    assert!(
        matches!(&plaintext, Err(e) if e.is_closed()),
        "plaintext under STRICT: {plaintext:?}\n{}",
        mesh.v1.logs()
    );
    // TLS without a client certificate. In TLS 1.2 Envoy's verdict is part of the handshake:
    // the alert handshake failure.
    let tls_without_cert = format!("https://{ip}.1:{inbound}/");
    let no_cert = curl(&["-k", "--tls-max", "1.2", &tls_without_cert]);
    assert!(
        matches!(&no_cert, Err(e) if e.tls_alert() == Some("handshake failure")),
        "TLS 1.2 without a client certificate: {no_cert:?}"
    );
    // In TLS 1.3 it comes after the client's side of the handshake: curl, already sending its
    // request, finds the connection torn down (a send failure) before it reads the alert.
    let no_cert = curl(&["-k", "--tlsv1.3", &tls_without_cert]);
    assert!(
        matches!(&no_cert, Err(e) if e.is_send_failure()
            || e.tls_alert() == Some("certificate required")),
        "TLS 1.3 without a client certificate: {no_cert:?}"
    );
    assert_eq!(mesh.backend(&[]), "v1");

    // DENY on the caller's principal: its requests become 403s, decided by the server sidecar.
    write(&config, "authorization.yaml", DENY_CLIENT);
    until("the DENY policy", Duration::from_secs(5), || {
        matches!(mesh.call("/", &[]), Ok((403, _)))
    });
    let denied = mesh.v1.stat(&format!("http.inbound_{inbound}.rbac.denied"));
    assert!(denied.is_some_and(|n| n >= 1), "rbac.denied: {denied:?}");

    // What a proxy was sent, decoded; never its private key.
    let out = isthmusctl(&[
        "status",
        "--debug-addr",
        &debug,
        "--dump",
        "sidecar~127.0.10.3~client.shop~shop.svc.cluster.local",
    ]);
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(dump.contains("outbound|8080|v2|echo.shop.local"), "{dump}");
    assert!(
        dump.contains("TlsCertificate (chain and key, not shown)"),
        "{dump}"
    );
    assert!(!dump.contains("PRIVATE KEY"));

    for envoy in mesh.all() {
        no_rejected_updates(envoy);
    }
    let rds = mesh
        .client
        .stat("http.outbound_http.rds.outbound.update_success");
    assert!(rds.is_some_and(|n| n >= 1), "RDS updates: {rds:?}");
    assert!(!daemon.logs().contains("panicked"), "{}", daemon.logs());
}

#[test]
fn envoy_over_the_mtls_port_gets_only_its_own_workload() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = root.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let ip = "127.0.11";
    write(&config, "mesh.yaml", &mesh_yaml(ip, free_port()));
    let daemon = Isthmusd::start(root, "red.local", &[]).unwrap();

    // The client workload's certificate, the way an operator gets one.
    let state = daemon.state_dir.to_str().unwrap().to_owned();
    let token = root.join("client.token");
    let tls = root.join("tls");
    let grpc = daemon.grpc.to_string();
    let run = |args: &[&str]| {
        let out = isthmusctl(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let id = "spiffe://red.local/ns/shop/sa/client";
    run(&[
        "token",
        "create",
        "--state-dir",
        &state,
        "--identity",
        id,
        "--out",
        token.to_str().unwrap(),
    ]);
    run(&[
        "cert",
        "request",
        "--ca-addr",
        &grpc,
        "--root",
        daemon.root_file().to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
        "--identity",
        id,
        "--out-dir",
        tls.to_str().unwrap(),
    ]);
    let tls_args = |workload: &'static str, last: &str| {
        vec![
            "--workload".to_owned(),
            workload.to_owned(),
            "--address".to_owned(),
            format!("{ip}.{last}"),
            "--xds-address".to_owned(),
            grpc.clone(),
            "--tls-dir".to_owned(),
            tls.display().to_string(),
            "--trust-domain".to_owned(),
            "red.local".to_owned(),
            "--outbound-port".to_owned(),
            free_port().to_string(),
        ]
    };
    let args = tls_args("client", "3");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = Envoy::start(root, "client", &bootstrap(root, "client", &refs)).unwrap();
    until("configuration over mTLS", Duration::from_secs(20), || {
        client
            .stat("listener_manager.lds.update_success")
            .is_some_and(|n| n >= 1)
            && client
                .stat("sds.default.update_success")
                .is_some_and(|n| n >= 1)
    });
    no_rejected_updates(&client);

    // The same certificate claiming another workload's node gets nothing.
    let args = tls_args("echo-v1", "1");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let thief = Envoy::start(root, "thief", &bootstrap(root, "thief", &refs)).unwrap();
    until("the refusal", Duration::from_secs(10), || {
        daemon
            .logs()
            .contains("but workload shop/echo-v1 runs as spiffe://red.local/ns/shop/sa/echo")
    });
    std::thread::sleep(Duration::from_millis(500));
    // The thief runs, its cluster requests were refused (each a failed stream), it got no
    // clusters and no listeners, and it never even subscribed to the workload's secret.
    let failures = thief.stat("cluster_manager.cds.update_failure");
    assert!(
        failures.is_some_and(|n| n >= 1),
        "CDS failures: {failures:?}"
    );
    assert_eq!(thief.stat("cluster_manager.cds.update_success"), Some(0));
    assert_eq!(thief.stat("listener_manager.lds.update_success"), Some(0));
    assert_eq!(thief.stat("sds.default.update_success"), None);

    // A proxy for a workload the configuration does not have: status says so.
    let xds = daemon.xds.to_string();
    let ghost = bootstrap(
        root,
        "ghost",
        &["--workload", "ghost", "--xds-address", &xds],
    );
    let _ghost = Envoy::start(root, "ghost", &ghost).unwrap();
    let debug = daemon.debug.to_string();
    until(
        "the ghost in isthmusctl status",
        Duration::from_secs(10),
        || {
            let out = isthmusctl(&["status", "--debug-addr", &debug]);
            String::from_utf8_lossy(&out.stdout).contains(
            "NO CONFIG: node sidecar~127.0.0.1~ghost.shop~shop.svc.cluster.local: no WorkloadEntry shop/ghost",
        )
        },
    );
}

/// With `--tracing-otlp-endpoint`, stock Envoy sidecars accept the `tracing` isthmusd puts on
/// every HTTP connection manager and the `isthmus-otlp` cluster, and send their spans to a
/// real OTLP receiver: the client sidecar's CLIENT span (continuing the application's W3C
/// context), the server sidecar's SERVER span its child, both tagged with the mesh (issue 19).
#[test]
fn envoy_sidecars_send_spans_to_the_otlp_collector() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = root.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let receiver = isthmus_e2e::otlp::Receiver::start(&root.join("otlp")).unwrap();
    let ip = "127.0.12";
    write(&config, "mesh.yaml", &mesh_yaml(ip, free_port()));
    let endpoint = receiver.endpoint();
    let daemon = Isthmusd::start(
        root,
        "red.local",
        &[
            "--mesh-id",
            "red",
            "--tracing-otlp-endpoint",
            &endpoint,
            "--tracing-sampling",
            "100",
        ],
    )
    .unwrap();
    let mesh = start_sidecars(root, &daemon, ip);
    until(
        "a request through the mesh",
        Duration::from_secs(20),
        || matches!(mesh.call("/", &[]), Ok((200, _))),
    );
    for envoy in mesh.all() {
        no_rejected_updates(envoy);
    }
    // The application's own span (Envoy keeps no x-request-id from outside: the trace id
    // finds the request).
    let trace = "5b8efff798038103d269b633813fc60c";
    let app_span = "eee19b7ec3c1b174";
    let traceparent = format!("traceparent: 00-{trace}-{app_span}-01");
    let (status, body) = mesh.call("/", &[&traceparent]).unwrap();
    assert_eq!(status, 200, "{body}");

    // Envoy flushes its spans every 5 s.
    let pair = |spans: &[isthmus_e2e::otlp::Span]| {
        let mine: Vec<_> = spans
            .iter()
            .filter(|s| s.trace_id == trace)
            .cloned()
            .collect();
        let client = mine.iter().find(|s| s.kind == "SPAN_KIND_CLIENT")?.clone();
        let server = mine.iter().find(|s| s.kind == "SPAN_KIND_SERVER")?.clone();
        Some((client, server))
    };
    let spans = receiver.wait_for(Duration::from_secs(30), |s| pair(s).is_some());
    let (client, server) = pair(&spans).unwrap_or_else(|| {
        panic!(
            "no client and server span; received:\n{spans:#?}\nreceiver:\n{}",
            receiver.logs()
        )
    });
    assert_eq!(client.parent_span_id, app_span, "{client:#?}");
    assert_eq!(server.parent_span_id, client.span_id, "{server:#?}");
    assert_eq!(client.service_name, "client.shop");
    assert_eq!(server.service_name, "echo.shop");
    for span in [&client, &server] {
        assert_eq!(span.attribute("isthmus.mesh"), Some("red"), "{span:#?}");
        assert_eq!(
            span.attribute("isthmus.namespace"),
            Some("shop"),
            "{span:#?}"
        );
    }
    assert_eq!(client.attribute("isthmus.workload"), Some("client"));
}
