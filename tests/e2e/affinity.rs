//! `DestinationRule` load balancing on the caller's sidecar, real processes: two backends
//! behind one service, requests kept on a host by a header or by a cookie the sidecar sets
//! (`consistentHash`), and shared 80/20 between two localities (`localityLbSetting.distribute`),
//! through `isthmus-proxy` and through a stock Envoy on the same configuration.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use isthmus_e2e::envoy::{Echo, Envoy, curl};
use isthmus_e2e::mesh::{bootstrap, until};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{Isthmusd, free_port};
use serde_json::Value;

fn config(a: u16, b: u16) -> String {
    let service = |name: &str, key: &str| {
        format!(
            "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{name}.shop.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {a}}}}}
  - {{address: 127.0.0.1, ports: {{http: {b}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: shop}}
spec:
  host: {name}.shop.local
  trafficPolicy:
    loadBalancer:
      consistentHash: {key}
"
        )
    };
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: shop}}
spec: {{address: 127.0.76.1, serviceAccount: client, locality: eu/a}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: by-locality, namespace: shop}}
spec:
  hosts: [by-locality.shop.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {a}}}, locality: eu/a}}
  - {{address: 127.0.0.1, ports: {{http: {b}}}, locality: us/b}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: by-locality, namespace: shop}}
spec:
  host: by-locality.shop.local
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - from: us/*
          to: {{us/*: 100}}
        - from: eu/*
          to: {{eu/a/*: 80, us/*: 20}}
{}{}",
        service("by-header", "{httpHeaderName: x-user}"),
        service(
            "by-cookie",
            "{httpCookie: {name: session, ttl: 3600s, path: /}}"
        ),
    )
}

/// (status, backend name, set-cookie) of `GET http://<host>.shop.local:8080/` through the
/// sidecar's outbound port.
fn call(outbound: u16, host: &str, headers: &[String]) -> (u16, String, Option<String>) {
    let mut args = vec![
        "-i".to_owned(),
        "-x".to_owned(),
        format!("http://127.0.0.1:{outbound}"),
        format!("http://{host}.shop.local:8080/"),
    ];
    for h in headers {
        args.extend(["-H".to_owned(), h.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, text) = curl(&args).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let cookie = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or(l.strip_prefix("Set-Cookie: "))
        })
        .map(str::to_owned);
    let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    (
        status,
        body["name"].as_str().unwrap_or_default().to_owned(),
        cookie,
    )
}

fn check_affinity(outbound: u16, logs: &dyn Fn() -> String) {
    until("the sidecar routes", Duration::from_secs(20), || {
        matches!(
            curl(&[
                "-x",
                &format!("http://127.0.0.1:{outbound}"),
                "http://by-header.shop.local:8080/"
            ]),
            Ok((200, _))
        )
    });
    // Each user always lands on the same backend; the users spread over both.
    let mut chosen: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..5 {
        for user in 0..12 {
            let (status, backend, _) =
                call(outbound, "by-header", &[format!("x-user: user-{user}")]);
            assert_eq!(status, 200, "{}", logs());
            let first = chosen
                .entry(format!("user-{user}"))
                .or_insert(backend.clone());
            assert_eq!(*first, backend, "user-{user} moved in round {round}");
        }
    }
    let used: BTreeSet<&String> = chosen.values().collect();
    assert_eq!(used.len(), 2, "twelve users on one backend: {chosen:?}");

    // A cookie the sidecar makes up keeps the client on its backend.
    let (status, first, cookie) = call(outbound, "by-cookie", &[]);
    assert_eq!(status, 200, "{}", logs());
    let cookie = cookie.unwrap_or_else(|| panic!("no set-cookie\n{}", logs()));
    assert!(
        cookie.starts_with("session=") && cookie.contains("Max-Age=3600"),
        "{cookie}"
    );
    let value = cookie.split(';').next().unwrap().to_owned();
    for _ in 0..10 {
        let (_, backend, again) = call(outbound, "by-cookie", &[format!("cookie: {value}")]);
        assert_eq!(backend, first, "the cookie's requests stay");
        assert_eq!(again, None, "a request with the cookie gets no new one");
    }
}

/// The client's locality (eu/a) sends 80 % to eu/a's backend and 20 % to us/b's.
fn check_distribution(outbound: u16, logs: &dyn Fn() -> String) {
    let mut a = 0;
    const N: u32 = 500;
    for _ in 0..N {
        let (status, backend, _) = call(outbound, "by-locality", &[]);
        assert_eq!(status, 200, "{}", logs());
        if backend == "a" {
            a += 1;
        }
    }
    let share = f64::from(a) * 100.0 / f64::from(N);
    assert!(
        (73.0..=87.0).contains(&share),
        "{share} % to eu/a, not 80 ± 7"
    );
}

fn setup(dir: &Path) -> (Echo, Echo, Isthmusd) {
    let a = Echo::start(dir, "a").unwrap();
    let b = Echo::start(dir, "b").unwrap();
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("affinity.yaml"),
        config(a.addr.port(), b.addr.port()),
    )
    .unwrap();
    let daemon = Isthmusd::start(dir, "red.local", &[]).unwrap();
    (a, b, daemon)
}

#[test]
fn isthmus_proxy_keeps_a_key_on_its_host_and_shares_by_locality() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, _b, daemon) = setup(dir.path());
    let outbound = free_port();
    let proxy = IsthmusProxy::start(
        dir.path(),
        "client",
        &[
            "--node-id".into(),
            "sidecar~127.0.76.1~client.shop~shop.svc.cluster.local".into(),
            "--xds-plaintext".into(),
            "--xds-address".into(),
            daemon.xds.to_string(),
            "--metadata".into(),
            format!("OUTBOUND_PORT={outbound}"),
        ],
    );
    proxy.wait_ready(Duration::from_secs(20)).unwrap();
    check_affinity(outbound, &|| proxy.logs());
    check_distribution(outbound, &|| proxy.logs());
}

#[test]
fn stock_envoy_keeps_a_key_on_its_host_and_shares_by_locality_with_no_rejected_update() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, _b, daemon) = setup(dir.path());
    let outbound = free_port();
    let file = bootstrap(
        dir.path(),
        "client",
        &[
            "--workload",
            "client",
            "--address",
            "127.0.76.1",
            "--xds-address",
            &daemon.xds.to_string(),
            "--outbound-port",
            &outbound.to_string(),
        ],
    );
    let envoy = Envoy::start(dir.path(), "client", &file).unwrap();
    check_affinity(outbound, &|| envoy.logs());
    check_distribution(outbound, &|| envoy.logs());
    envoy.assert_no_rejected_update();
}
