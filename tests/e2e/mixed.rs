//! Mixed pairs of sidecars, configured by the same `isthmusd`: a stock Envoy 1.40 and
//! `isthmus-proxy` on each side of mTLS, with certificates from SDS. Every pairing carries the
//! request, routes by header, passes the caller's identity in `x-forwarded-client-cert`, and
//! answers 403 when an `AuthorizationPolicy` denies the caller.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Duration;

use isthmus_e2e::envoy::{Echo, curl};
use isthmus_e2e::mesh::{
    DENY_CLIENT, HEADER_ROUTES, STRICT, envoy_client, envoy_server, mesh_yaml, workload_yaml, write,
};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{CurlError, Isthmusd, free_port};
use serde_json::Value;

/// Waits up to 20 s for `call` to answer `status`; the last answer (or why there was none)
/// and the logs otherwise.
fn wait_for(status: u16, outbound: u16, headers: &[&str], logs: &dyn Fn() -> String) -> Value {
    let start = std::time::Instant::now();
    loop {
        let last = match call(outbound, headers) {
            Ok((got, body)) if got == status => return body,
            Ok((got, body)) => format!("{got}: {body}"),
            Err(e) => e.to_string(),
        };
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "expected {status}, got {last}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A request from a client application through its sidecar's outbound port: (status, echo
/// body), or why there was no response.
fn call(outbound: u16, headers: &[&str]) -> Result<(u16, Value), CurlError> {
    let proxy = format!("http://127.0.0.1:{outbound}");
    let mut args = vec!["-x", proxy.as_str(), "http://echo.shop.local:8080/hello"];
    for h in headers {
        args.extend_from_slice(&["-H", h]);
    }
    let (status, body) = curl(&args)?;
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

#[test]
fn envoy_and_isthmus_proxy_interoperate_in_every_pairing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = root.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let ip = "127.0.71";
    let inbound = free_port();
    write(&config, "mesh.yaml", &mesh_yaml(ip, inbound));
    write(&config, "routes.yaml", HEADER_ROUTES);
    write(&config, "peer-authentication.yaml", STRICT);
    // A second client workload (same service account): one node id per proxy.
    write(
        &config,
        "client-b.yaml",
        &workload_yaml("client-b", &format!("{ip}.4"), "app: client", "client"),
    );
    let daemon = Isthmusd::start(root, "red.local", &[]).unwrap();
    let xds = daemon.xds.to_string();

    // Servers: v1 behind Envoy, v2 behind isthmus-proxy.
    let app_v1 = Echo::start(root, "v1").unwrap();
    let app_v2 = Echo::start(root, "v2").unwrap();
    let _v1 = envoy_server(
        root,
        &xds,
        "echo-v1",
        &format!("{ip}.1"),
        app_v1.addr.port(),
    );
    let v2 = IsthmusProxy::sidecar(
        root,
        &daemon,
        &format!("{ip}.2"),
        "echo-v2",
        &[
            format!("APP_PORTS=http={}", app_v2.addr.port()),
            format!("OUTBOUND_PORT={}", free_port()),
        ],
    );

    // Clients of the same service account: one behind isthmus-proxy, one behind Envoy.
    let isthmus_out = free_port();
    let client = IsthmusProxy::sidecar(
        root,
        &daemon,
        &format!("{ip}.4"),
        "client-b",
        &[format!("OUTBOUND_PORT={isthmus_out}")],
    );
    let envoy_out = free_port();
    let _envoy_client = envoy_client(root, &xds, &format!("{ip}.3"), envoy_out);

    let diagnostics = || format!("client:\n{}\nserver v2:\n{}", client.logs(), v2.logs());
    // isthmus-proxy -> Envoy (v1, the default route) and isthmus-proxy -> isthmus-proxy (v2).
    let body = wait_for(200, isthmus_out, &[], &diagnostics);
    assert_eq!(body["name"], "v1", "{body}");
    let body = wait_for(200, isthmus_out, &["x-version: v2"], &diagnostics);
    assert_eq!(body["name"], "v2", "{body}");
    // The server sidecar passes on who called, verified by mTLS.
    let xfcc = body["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains("URI=spiffe://red.local/ns/shop/sa/client"),
        "{body}"
    );
    assert!(
        xfcc.contains("By=spiffe://red.local/ns/shop/sa/echo"),
        "{body}"
    );

    // Envoy -> isthmus-proxy.
    let body = wait_for(200, envoy_out, &["x-version: v2"], &diagnostics);
    assert_eq!(body["name"], "v2", "{body}");
    assert!(
        body["headers"]["x-forwarded-client-cert"]
            .as_str()
            .unwrap_or_default()
            .contains("URI=spiffe://red.local/ns/shop/sa/client"),
        "{body}"
    );

    // STRICT: plaintext straight to the isthmus-proxy server is refused: no filter chain
    // takes it, the connection is closed before any response.
    let plaintext = curl(&[&format!("http://{ip}.2:{inbound}/")]);
    assert!(
        matches!(&plaintext, Err(e) if e.is_closed()),
        "plaintext under STRICT: {plaintext:?}\n{}",
        diagnostics()
    );

    // DENY the caller: every pairing answers 403, decided by the server sidecar.
    write(&config, "authorization.yaml", DENY_CLIENT);
    wait_for(403, isthmus_out, &[], &diagnostics);
    wait_for(403, isthmus_out, &["x-version: v2"], &diagnostics);
    wait_for(403, envoy_out, &["x-version: v2"], &diagnostics);
    let denied = curl(&[
        "-x",
        &format!("http://127.0.0.1:{envoy_out}"),
        "-H",
        "x-version: v2",
        "http://echo.shop.local:8080/",
    ]);
    assert_eq!(
        denied,
        Ok((403, "RBAC: access denied".to_owned())),
        "the server sidecar's denial"
    );
}

/// Certificates from SDS that live 4 s rotate every 2 s on both sides of mTLS between two
/// `isthmus-proxy` sidecars; requests sent all along, on new and pooled connections, all
/// succeed.
#[test]
fn certificate_rotation_under_load_drops_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = root.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let ip = "127.0.74";
    let inbound = free_port();
    write(&config, "mesh.yaml", &mesh_yaml(ip, inbound));
    // Only v1 runs here: the default route goes to it.
    write(&config, "routes.yaml", HEADER_ROUTES);
    write(&config, "peer-authentication.yaml", STRICT);
    let daemon = Isthmusd::start(root, "red.local", &["--workload-cert-ttl", "4s"]).unwrap();
    let app = Echo::start(root, "v1").unwrap();
    let server = IsthmusProxy::sidecar(
        root,
        &daemon,
        &format!("{ip}.1"),
        "echo-v1",
        &[
            format!("APP_PORTS=http={}", app.addr.port()),
            format!("OUTBOUND_PORT={}", free_port()),
        ],
    );
    let outbound = free_port();
    let client = IsthmusProxy::sidecar(
        root,
        &daemon,
        &format!("{ip}.3"),
        "client",
        &[format!("OUTBOUND_PORT={outbound}")],
    );
    let logs = || format!("client:\n{}\nserver:\n{}", client.logs(), server.logs());
    wait_for(200, outbound, &[], &logs);
    let serial =
        |proxy: &IsthmusProxy| proxy.config_dump()["secrets"]["default"]["not_after"].clone();
    let first = (serial(&client), serial(&server));

    let start = std::time::Instant::now();
    let (mut sent, mut failed) = (0, Vec::new());
    while start.elapsed() < Duration::from_secs(7) {
        sent += 1;
        match call(outbound, &[]) {
            Ok((200, _)) => {}
            Ok((status, body)) => failed.push(format!("{status} {body}")),
            Err(e) => failed.push(e.to_string()),
        }
    }
    let last = (serial(&client), serial(&server));
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {:?}\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        logs()
    );
    assert_ne!(first.0, last.0, "the client's certificate did not rotate");
    assert_ne!(first.1, last.1, "the server's certificate did not rotate");
    assert!(sent > 50, "only {sent} requests");
}

/// Traces across implementations (issue 19): with `--tracing-otlp-endpoint`, an Envoy client
/// sidecar's span is the parent of an `isthmus-proxy` server sidecar's, and an
/// `isthmus-proxy` client's the parent of an Envoy server's; every span reaches a real OTLP
/// receiver tagged with the mesh.
#[test]
fn envoy_and_isthmus_proxy_spans_join_one_trace() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = root.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let receiver = isthmus_e2e::otlp::Receiver::start(&root.join("otlp")).unwrap();
    let ip = "127.0.78";
    let inbound = free_port();
    write(&config, "mesh.yaml", &mesh_yaml(ip, inbound));
    write(&config, "routes.yaml", HEADER_ROUTES);
    write(
        &config,
        "client-b.yaml",
        &workload_yaml("client-b", &format!("{ip}.4"), "app: client", "client"),
    );
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
    let xds = daemon.xds.to_string();
    // v1 behind Envoy, v2 behind isthmus-proxy; clients: isthmus-proxy and Envoy.
    let app_v1 = Echo::start(root, "v1").unwrap();
    let app_v2 = Echo::start(root, "v2").unwrap();
    let _v1 = envoy_server(
        root,
        &xds,
        "echo-v1",
        &format!("{ip}.1"),
        app_v1.addr.port(),
    );
    let v2 = IsthmusProxy::sidecar(
        root,
        &daemon,
        &format!("{ip}.2"),
        "echo-v2",
        &[
            format!("APP_PORTS=http={}", app_v2.addr.port()),
            format!("OUTBOUND_PORT={}", free_port()),
        ],
    );
    let isthmus_out = free_port();
    let client = IsthmusProxy::sidecar(
        root,
        &daemon,
        &format!("{ip}.4"),
        "client-b",
        &[format!("OUTBOUND_PORT={isthmus_out}")],
    );
    let envoy_out = free_port();
    let envoy_client = envoy_client(root, &xds, &format!("{ip}.3"), envoy_out);
    let diagnostics = || format!("client:\n{}\nserver v2:\n{}", client.logs(), v2.logs());
    wait_for(200, isthmus_out, &[], &diagnostics);
    wait_for(200, envoy_out, &["x-version: v2"], &diagnostics);

    // isthmus-proxy -> Envoy, and Envoy -> isthmus-proxy, one request each, each in a trace
    // of the application's (Envoy keeps no x-request-id from outside: trace ids find them).
    let app_span = "eee19b7ec3c1b174";
    let to_envoy = "11111111111111111111111111111111";
    let to_isthmus = "22222222222222222222222222222222";
    let traceparent = |trace: &str| format!("traceparent: 00-{trace}-{app_span}-01");
    let (status, _) = call(isthmus_out, &[&traceparent(to_envoy)]).unwrap();
    assert_eq!(status, 200);
    let (status, _) = call(envoy_out, &["x-version: v2", &traceparent(to_isthmus)]).unwrap();
    assert_eq!(status, 200);

    let pair = |spans: &[isthmus_e2e::otlp::Span], trace: &str| {
        let mine: Vec<_> = spans
            .iter()
            .filter(|s| s.trace_id == trace)
            .cloned()
            .collect();
        let client = mine.iter().find(|s| s.kind == "SPAN_KIND_CLIENT")?.clone();
        let server = mine.iter().find(|s| s.kind == "SPAN_KIND_SERVER")?.clone();
        Some((client, server))
    };
    // Envoy flushes every 5 s, isthmus-proxy every second.
    let spans = receiver.wait_for(Duration::from_secs(30), |s| {
        pair(s, to_envoy).is_some() && pair(s, to_isthmus).is_some()
    });
    for (id, client_scope, server_scope) in [
        (to_envoy, "isthmus-proxy", "envoy"),
        (to_isthmus, "envoy", "isthmus-proxy"),
    ] {
        let (client_span, server_span) = pair(&spans, id).unwrap_or_else(|| {
            panic!(
                "{id}: no client and server span; received:\n{spans:#?}\n{}\nEnvoy client:\n{}",
                diagnostics(),
                envoy_client.logs()
            )
        });
        assert_eq!(
            client_span.parent_span_id, app_span,
            "{id}: {client_span:#?}"
        );
        assert_eq!(
            server_span.parent_span_id, client_span.span_id,
            "{id}: {client_span:#?}\n{server_span:#?}"
        );
        assert_eq!(client_span.scope, client_scope, "{id}: {client_span:#?}");
        assert_eq!(server_span.scope, server_scope, "{id}: {server_span:#?}");
        for span in [&client_span, &server_span] {
            assert_eq!(span.attribute("isthmus.mesh"), Some("red"), "{span:#?}");
        }
        assert_eq!(client_span.service_name, "client.shop", "{client_span:#?}");
        assert_eq!(server_span.service_name, "echo.shop", "{server_span:#?}");
    }
}
