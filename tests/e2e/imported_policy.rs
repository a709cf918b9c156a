//! L7 policy across the federation boundary: a `VirtualService` and a `DestinationRule` on an
//! imported host (`ratings.bookinfo.svc.green-imports.local`) are honoured by the caller's
//! sidecar in red, as for any host of its own mesh. Red and green federated through their
//! gateways as real processes (`isthmus_e2e::federation`); green's ratings is `isthmusctl
//! echo` (`?delay_ms=`, `?status=`), red's own copy of ratings another echo outside the mesh.
//! Green's ratings sidecar counts what reaches it (`istio_requests_total`, reporter
//! `destination`), so a retry or an ejection is seen where it lands.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests drive real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::process::Command;
use std::time::{Duration, Instant};

use isthmus_e2e::envoy::Echo;
use isthmus_e2e::federation::{Federation, IMPORTED};
use isthmus_e2e::mesh::{until, write};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{CurlError, curl_with};

/// Red's own ratings, outside the mesh (plain HTTP from the sidecar).
const LOCAL: &str = "ratings.red.example";

fn local_service(port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings-red, namespace: shop}}
spec:
  hosts: [{LOCAL}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"
    )
}

/// A header match to red's copy, a timeout, retries and an 80/20 split between green's
/// (imported) copy and red's.
fn virtual_service() -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings-imported, namespace: shop}}
spec:
  hosts: [{IMPORTED}]
  http:
  - match: [{{headers: {{x-ratings: {{exact: local}}}}}}]
    route: [{{destination: {{host: {LOCAL}, port: {{number: 9080}}}}}}]
  - match: [{{uri: {{prefix: /slow}}}}]
    timeout: 500ms
    route: [{{destination: {{host: {IMPORTED}}}}}]
  - match: [{{uri: {{prefix: /flaky}}}}]
    retries: {{attempts: 3, perTryTimeout: 2s, retryOn: 5xx}}
    route: [{{destination: {{host: {IMPORTED}}}}}]
  - route:
    - destination: {{host: {IMPORTED}, port: {{number: 9080}}}}
      weight: 80
    - destination: {{host: {LOCAL}, port: {{number: 9080}}}}
      weight: 20
"
    )
}

/// Connection pool limits and outlier detection on the imported host.
fn destination_rule() -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings-imported, namespace: shop}}
spec:
  host: {IMPORTED}
  trafficPolicy:
    connectionPool: {{http: {{http2MaxRequests: 1}}}}
    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}}
"
    )
}

/// `GET http://<IMPORTED>:9080<path>` through red's client sidecar, with `headers`: (status,
/// headers and body).
fn ask(f: &Federation, path: &str, headers: &[&str]) -> Result<(u16, String), CurlError> {
    let proxy = format!("http://127.0.0.1:{}", f.ports.outbound);
    let url = format!("http://{IMPORTED}:9080{path}");
    let mut args = vec!["-i", "-x", &proxy, &url];
    for h in headers {
        args.extend(["-H", h]);
    }
    curl_with(Command::new("curl"), &args)
}

/// Which copy answered: `green`, `red`, or the status.
fn who(answer: &Result<(u16, String), CurlError>) -> String {
    match answer {
        Ok((200, text)) if text.contains("\"ratings-v1\"") => "green".into(),
        Ok((200, text)) if text.contains("\"ratings-red\"") => "red".into(),
        Ok((status, _)) => format!("status {status}"),
        Err(e) => format!("{e}"),
    }
}

/// Requests green's ratings sidecar has served with `code`.
fn served_by_green(f: &Federation, code: &str) -> u64 {
    let green_ratings: &IsthmusProxy = &f.proxies[1];
    let (status, text) = green_ratings.admin_get("/stats/prometheus");
    assert_eq!(status, 200, "{text}");
    let code = format!("response_code=\"{code}\"");
    text.lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains(&code)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Red with its own ratings and `policy` on the imported host; waits until the header match
/// (the first route of the `VirtualService`) is in force.
fn federation_with(policy: &str) -> (Federation, Echo) {
    let f = Federation::start();
    f.wait_up();
    let dir = f.dir.path();
    let red_ratings = Echo::start(dir, "ratings-red").unwrap();
    write(
        &dir.join("red/config"),
        "imported-policy.yaml",
        &format!("{}---\n{policy}", local_service(red_ratings.addr.port())),
    );
    (f, red_ratings)
}

#[test]
fn a_virtual_service_on_an_imported_host_matches_splits_times_out_and_retries() {
    let (f, _red_ratings) = federation_with(&virtual_service());
    until(
        "the VirtualService on the imported host in red's sidecar",
        Duration::from_secs(20),
        || who(&ask(&f, "/", &["x-ratings: local"])) == "red",
    );

    // Header match: the header goes to red's copy, its absence mostly to green's.
    for _ in 0..10 {
        assert_eq!(who(&ask(&f, "/", &["x-ratings: local"])), "red");
    }

    // Weight split 80/20 between the imported copy and the local one, over 400 calls.
    let (mut green, mut red) = (0u32, 0u32);
    for _ in 0..400 {
        match who(&ask(&f, "/", &[])).as_str() {
            "green" => green += 1,
            "red" => red += 1,
            other => panic!("a split call failed: {other}"),
        }
    }
    let share = f64::from(green) / 400.0;
    assert!(
        (0.73..=0.87).contains(&share),
        "80/20 split: green {green}, red {red}"
    );

    // Timeout: 500 ms, against an answer that takes 3 s: 504 from red's sidecar, in time.
    let started = Instant::now();
    let slow = ask(&f, "/slow?delay_ms=3000", &[]);
    let took = started.elapsed();
    assert!(matches!(slow, Ok((504, _))), "{slow:?}");
    assert!(
        took < Duration::from_millis(2500),
        "the route's timeout, not the answer's delay: {took:?}"
    );
    // Without `/slow`, the split route has no timeout: the same delay is waited for.
    let waited = who(&ask(&f, "/?delay_ms=1000", &[]));
    assert!(waited == "green" || waited == "red", "{waited}");

    // Retries: 3 on 5xx, so a failing answer reaches green's sidecar 4 times.
    let before = served_by_green(&f, "503");
    let flaky = ask(&f, "/flaky?status=503", &[]);
    assert!(matches!(flaky, Ok((503, _))), "{flaky:?}");
    until(
        "green's sidecar to count the attempts",
        Duration::from_secs(5),
        || served_by_green(&f, "503") - before >= 4,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        served_by_green(&f, "503") - before,
        4,
        "one call and three retries"
    );
}

#[test]
fn a_destination_rule_on_an_imported_host_limits_requests_and_ejects_on_errors() {
    let vs_header_only = format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings-imported, namespace: shop}}
spec:
  hosts: [{IMPORTED}]
  http:
  - match: [{{headers: {{x-ratings: {{exact: local}}}}}}]
    route: [{{destination: {{host: {LOCAL}, port: {{number: 9080}}}}}}]
  - route: [{{destination: {{host: {IMPORTED}}}}}]
    retries: {{attempts: 0}}
---
{}",
        destination_rule()
    );
    let (f, _red_ratings) = federation_with(&vs_header_only);
    until(
        "the policy on the imported host in red's sidecar",
        Duration::from_secs(20),
        || who(&ask(&f, "/", &["x-ratings: local"])) == "red",
    );
    assert_eq!(who(&ask(&f, "/", &[])), "green");

    // Connection pool: one request at a time to the imported host; a second fails at once
    // with 503 and `x-envoy-overloaded`, as in Envoy.
    // A slow request takes the slot, then a quick one must overflow. On a loaded machine the
    // quick one may win the race for the slot (the slow one then overflows instead), so a
    // round where the slow one did not hold the slot is tried again.
    let outbound = f.ports.outbound;
    let mut rounds = Vec::new();
    let (overflow, took) = loop {
        let slow = std::thread::spawn(move || {
            curl_with(
                Command::new("curl"),
                &[
                    "-x",
                    &format!("http://127.0.0.1:{outbound}"),
                    &format!("http://{IMPORTED}:9080/?delay_ms=2000"),
                ],
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let quick = ask(&f, "/", &[]);
        let took = started.elapsed();
        let slow = slow.join().unwrap();
        let slow_held_the_slot = matches!(slow, Ok((200, _)));
        if slow_held_the_slot {
            break (quick, took);
        }
        rounds.push(format!("slow {slow:?}, quick {quick:?}"));
        assert!(
            rounds.len() < 5,
            "the slow request never held the slot: {rounds:#?}"
        );
    };
    assert!(
        took < Duration::from_millis(1000),
        "the second request fails at once: {took:?}"
    );
    match &overflow {
        Ok((503, text)) => assert!(
            text.to_ascii_lowercase()
                .contains("x-envoy-overloaded: true"),
            "{text}"
        ),
        other => panic!("overflow expected while the slow request held the slot: {other:?}"),
    }
    assert_eq!(who(&ask(&f, "/", &[])), "green", "room again");

    // Outlier detection: two 5xx in a row (no retries on this route) eject the imported host
    // (the egress gateway's endpoint); the next call gets 503 from red's sidecar without
    // reaching green.
    let failed_first = served_by_green(&f, "503");
    for _ in 0..2 {
        assert!(matches!(ask(&f, "/?status=503", &[]), Ok((503, _))));
    }
    until("green to count both", Duration::from_secs(5), || {
        served_by_green(&f, "503") >= failed_first + 2
    });
    assert_eq!(served_by_green(&f, "503"), failed_first + 2, "no retries");
    let ok_before = served_by_green(&f, "200");
    let failed_before = served_by_green(&f, "503");
    let ejected = ask(&f, "/", &[]);
    match &ejected {
        Ok((503, text)) => assert!(text.contains("no healthy upstream"), "{text}"),
        other => panic!("ejected: {other:?}"),
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        served_by_green(&f, "200"),
        ok_before,
        "nothing reached green"
    );
    assert_eq!(served_by_green(&f, "503"), failed_before);
    // The local copy, another cluster, is untouched.
    assert_eq!(who(&ask(&f, "/", &["x-ratings: local"])), "red");
}
