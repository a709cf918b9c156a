//! The differential test of the proxy against Envoy: two client sidecars of the same service
//! account, one a stock Envoy 1.40 and one `isthmus-proxy`, get the same configuration from the
//! same `isthmusd`. A table of requests goes through both; each row must get the same status,
//! the same backend, the same headers at the backend and in the response. The servers are Envoy
//! sidecars, so only the client side differs.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Duration;

use isthmus_e2e::envoy::{Echo, Envoy, curl};
use isthmus_e2e::mesh::{envoy_client, envoy_server, mesh_yaml, until, workload_yaml, write};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{Isthmusd, free_port};
use serde_json::Value;

/// Routes covering the profile: header match, weights, redirect, direct response, rewrite,
/// header edits, timeout, retries to a dead upstream, query match, regex.
fn routes(dead_port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: dead, namespace: shop}}
spec:
  hosts: [dead.shop.local]
  location: MESH_EXTERNAL
  ports: [{{number: 8080, name: http}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {dead_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: dead, namespace: shop}}
spec:
  hosts: [dead.shop.local]
  http:
  - retries: {{attempts: 2, retryOn: 'connect-failure,5xx'}}
    route: [{{destination: {{host: dead.shop.local}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: shop}}
spec:
  hosts: [echo.shop.local]
  http:
  - match: [{{headers: {{x-version: {{exact: v2}}}}}}]
    route: [{{destination: {{host: echo.shop.local, subset: v2}}}}]
  - match: [{{uri: {{prefix: /weighted}}}}]
    route:
    - {{destination: {{host: echo.shop.local, subset: v1}}, weight: 0}}
    - {{destination: {{host: echo.shop.local, subset: v2}}, weight: 100}}
  - match: [{{uri: {{exact: /old}}}}]
    redirect: {{uri: /new, redirectCode: 302}}
  - match: [{{uri: {{exact: /teapot}}}}]
    directResponse: {{status: 418, body: {{string: short and stout}}}}
  - match: [{{uri: {{prefix: /api/}}}}]
    rewrite: {{uri: /v2/}}
    headers:
      request: {{set: {{x-edge: 'one'}}, add: {{x-trace: 'a'}}, remove: [x-internal]}}
      response: {{set: {{x-served-by: mesh}}, remove: [x-echo-name]}}
    route: [{{destination: {{host: echo.shop.local, subset: v1}}}}]
  - match: [{{uri: {{prefix: /slow}}}}]
    timeout: 0.3s
    route: [{{destination: {{host: echo.shop.local, subset: v1}}}}]
  - match: [{{uri: {{regex: '/items/[0-9]+'}}, queryParams: {{debug: {{exact: '1'}}}}}}]
    route: [{{destination: {{host: echo.shop.local, subset: v2}}}}]
  - route: [{{destination: {{host: echo.shop.local, subset: v1}}}}]
"
    )
}

/// What a response came to, in the terms compared.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    backend: Option<String>,
    /// The path the backend saw.
    path: Option<String>,
    /// Headers the backend saw, of those the routes edit.
    request_headers: Vec<(String, String)>,
    /// Response headers, of those the routes edit or set.
    response_headers: Vec<(String, String)>,
    /// The body of a local answer (not JSON).
    text: Option<String>,
}

const EDITED_REQUEST: [&str; 3] = ["x-edge", "x-trace", "x-internal"];
const EDITED_RESPONSE: [&str; 3] = ["x-served-by", "x-echo-name", "location"];

fn request(outbound: u16, url: &str, headers: &[&str]) -> Seen {
    let proxy = format!("http://127.0.0.1:{outbound}");
    let mut args = vec!["-D", "-", "-x", proxy.as_str(), url];
    for h in headers {
        args.extend_from_slice(&["-H", h]);
    }
    // Every row gets a response from both proxies: no response is a failure, never a match.
    let (status, text) =
        curl(&args).unwrap_or_else(|e| panic!("{url} through the sidecar on {outbound}: {e}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    lines.next();
    let mut response_headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .filter(|(k, _)| EDITED_RESPONSE.contains(&k.as_str()))
        .collect();
    response_headers.sort();
    let json: Option<Value> = serde_json::from_str(body).ok();
    let (backend, path, request_headers) = match &json {
        Some(v) => {
            let mut seen: Vec<(String, String)> = EDITED_REQUEST
                .iter()
                .filter_map(|h| {
                    v["headers"][h]
                        .as_str()
                        .map(|x| ((*h).to_owned(), x.to_owned()))
                })
                .collect();
            seen.sort();
            (
                v["name"].as_str().map(str::to_owned),
                v["path"].as_str().map(str::to_owned),
                seen,
            )
        }
        None => (None, None, Vec::new()),
    };
    Seen {
        status,
        backend,
        path,
        request_headers,
        response_headers,
        text: json.is_none().then(|| body.to_owned()),
    }
}

#[test]
fn isthmus_proxy_behaves_like_envoy_on_the_same_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = root.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let ip = "127.0.73";
    let inbound = free_port();
    write(&config, "mesh.yaml", &mesh_yaml(ip, inbound));
    write(
        &config,
        "client-b.yaml",
        &workload_yaml("client-b", &format!("{ip}.4"), "app: client", "client"),
    );
    write(&config, "routes.yaml", &routes(free_port()));
    let daemon = Isthmusd::start(root, "red.local", &[]).unwrap();
    let xds = daemon.xds.to_string();

    let apps = [
        Echo::start(root, "v1").unwrap(),
        Echo::start(root, "v2").unwrap(),
    ];
    let _servers: Vec<Envoy> = ["v1", "v2"]
        .iter()
        .zip(&apps)
        .enumerate()
        .map(|(i, (version, app))| {
            envoy_server(
                root,
                &xds,
                &format!("echo-{version}"),
                &format!("{ip}.{}", i + 1),
                app.addr.port(),
            )
        })
        .collect();
    let envoy_out = free_port();
    let _envoy = envoy_client(root, &xds, &format!("{ip}.3"), envoy_out);
    let isthmus_out = free_port();
    let isthmus = IsthmusProxy::start(
        root,
        "client-b",
        &[
            "--node-id".into(),
            format!("sidecar~{ip}.4~client-b.shop~shop.svc.cluster.local"),
            "--xds-plaintext".into(),
            "--xds-address".into(),
            xds.clone(),
            "--metadata".into(),
            format!("OUTBOUND_PORT={isthmus_out}"),
        ],
    );
    isthmus.wait_ready(Duration::from_secs(20)).unwrap();
    let echo = "http://echo.shop.local:8080";
    until(
        "both clients reach the servers",
        Duration::from_secs(20),
        || {
            [envoy_out, isthmus_out].iter().all(|out| {
                let proxy = format!("http://127.0.0.1:{out}");
                matches!(curl(&["-x", &proxy, &format!("{echo}/")]), Ok((200, _)))
            })
        },
    );

    let table: Vec<(&str, String, Vec<&str>)> = vec![
        ("default route", format!("{echo}/"), vec![]),
        ("header match", format!("{echo}/"), vec!["x-version: v2"]),
        ("header mismatch", format!("{echo}/"), vec!["x-version: v3"]),
        ("weights 0/100", format!("{echo}/weighted/x"), vec![]),
        ("redirect", format!("{echo}/old?q=1"), vec![]),
        ("direct response", format!("{echo}/teapot"), vec![]),
        (
            "rewrite and header edits",
            format!("{echo}/api/users?id=7"),
            vec!["x-internal: secret", "x-trace: z"],
        ),
        (
            "route timeout",
            format!("{echo}/slow?delay_ms=1500"),
            vec![],
        ),
        (
            "regex and query",
            format!("{echo}/items/42?debug=1"),
            vec![],
        ),
        (
            "regex without the query",
            format!("{echo}/items/42"),
            vec![],
        ),
        (
            "retries to a dead upstream",
            "http://dead.shop.local:8080/".to_owned(),
            vec![],
        ),
        (
            "unknown host",
            "http://nowhere.shop.local:8080/".to_owned(),
            vec![],
        ),
    ];
    let mut differences = Vec::new();
    for (what, url, headers) in &table {
        let envoy = request(envoy_out, url, headers);
        let ours = request(isthmus_out, url, headers);
        if envoy != ours {
            differences.push(format!(
                "{what}:\n  envoy:         {envoy:?}\n  isthmus-proxy: {ours:?}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{}\n\n{}",
        differences.join("\n"),
        isthmus.logs()
    );
}
