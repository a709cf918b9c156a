//! Traces across meshes (issue 19): `isthmusctl up examples/two-meshes --otlp-endpoint ...
//! --trace-sampling 100` with a real OTLP/gRPC receiver (`opentelemetry-proto` served by
//! `grpcio`, `tests/support/otlp.rs`). A call from red's client through its sidecar to green's
//! imported `ratings` is one trace: red's client-sidecar span (CLIENT) and green's
//! server-sidecar span (SERVER), the latter the child of the former, each naming its mesh.
//! A B3 context from the application is continued; an unsampled W3C one is respected.

#![allow(clippy::unwrap_used)]
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::process::Command;
use std::time::{Duration, Instant};

use isthmus_e2e::curl_with;
use isthmus_e2e::otlp::{Receiver, Span};
use isthmus_e2e::up::{Up, example};
use serde_json::Value;

const RATINGS: &str = "http://ratings.bookinfo.svc.green-imports.local:9080/";

/// A call from red's client application through its sidecar, with `headers`: the status and
/// the headers green's ratings (an echo) received.
fn call_seen(proxy: &str, headers: &[&str]) -> Option<(u16, Value)> {
    let mut args = vec!["-x", proxy, RATINGS];
    for h in headers {
        args.extend(["-H", h]);
    }
    let (status, body) = curl_with(Command::new("curl"), &args).ok()?;
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    Some((status, body["headers"].clone()))
}

fn call(proxy: &str, headers: &[&str]) -> Option<u16> {
    call_seen(proxy, headers).map(|(s, _)| s)
}

/// The spans of the request with `x-request-id: id`.
fn of_request<'s>(spans: &'s [Span], id: &str) -> Vec<&'s Span> {
    spans
        .iter()
        .filter(|s| s.attribute("guid:x-request-id") == Some(id))
        .collect()
}

/// The client-sidecar span and the server-sidecar span of one request, once both arrived.
fn pair<'s>(spans: &'s [Span], id: &str) -> Option<(&'s Span, &'s Span)> {
    let mine = of_request(spans, id);
    let client = mine.iter().find(|s| s.kind == "SPAN_KIND_CLIENT")?;
    let server = mine.iter().find(|s| s.kind == "SPAN_KIND_SERVER")?;
    Some((client, server))
}

#[test]
fn a_call_from_red_to_green_is_one_trace() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path()).unwrap();
    let endpoint = receiver.endpoint();
    let up = Up::start_with_args(
        &example(),
        &["--otlp-endpoint", &endpoint, "--trace-sampling", "100"],
    );
    let proxy = up.proxy_of("red", "client");

    // The import takes a moment after everything is up.
    let start = Instant::now();
    while call(&proxy, &[]) != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no 200 from green's ratings in 60 s:\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // An unsampled W3C context is kept: neither sidecar records it.
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    assert_eq!(
        call(
            &proxy,
            &[
                "x-request-id: trace-unsampled",
                &format!("traceparent: {unsampled}")
            ]
        ),
        Some(200)
    );

    // A request of its own: the sidecars sample every one (100 %).
    assert_eq!(call(&proxy, &["x-request-id: trace-red-green"]), Some(200));
    let spans = receiver.wait_for(Duration::from_secs(30), |s| {
        pair(s, "trace-red-green").is_some()
    });
    let (client, server) = pair(&spans, "trace-red-green").unwrap_or_else(|| {
        panic!(
            "no client and server span for the request; received:\n{spans:#?}\nreceiver:\n{}",
            receiver.logs()
        )
    });
    assert_eq!(
        client.trace_id, server.trace_id,
        "one trace: {client:#?}\n{server:#?}"
    );
    assert_eq!(
        server.parent_span_id, client.span_id,
        "the server span is the client span's child"
    );
    assert_eq!(client.attribute("isthmus.mesh"), Some("red"), "{client:#?}");
    assert_eq!(
        server.attribute("isthmus.mesh"),
        Some("green"),
        "{server:#?}"
    );
    assert_eq!(client.service_name, "client.shop", "{client:#?}");
    assert_eq!(server.service_name, "ratings.bookinfo", "{server:#?}");
    assert_eq!(client.attribute("http.status_code"), Some("200"));
    assert_eq!(server.attribute("http.status_code"), Some("200"));
    assert!(client.parent_span_id.is_empty(), "a root: {client:#?}");

    // The application's B3 context is continued: same trace, its span as the parent.
    let trace = "463ac35c9f6413ad48485a3953bb6124";
    let parent = "a2fb4a1d1a96d312";
    let b3 = format!("b3: {trace}-{parent}-1");
    let (status, seen) = call_seen(&proxy, &["x-request-id: trace-b3", &b3]).unwrap();
    assert_eq!(status, 200);
    let spans = receiver.wait_for(Duration::from_secs(30), |s| pair(s, "trace-b3").is_some());
    let (client, server) = pair(&spans, "trace-b3")
        .unwrap_or_else(|| panic!("no spans for the B3 request; received:\n{spans:#?}"));
    assert_eq!(client.trace_id, trace, "{client:#?}");
    assert_eq!(client.parent_span_id, parent, "{client:#?}");
    assert_eq!(server.trace_id, trace, "{server:#?}");
    assert_eq!(server.parent_span_id, client.span_id, "{server:#?}");
    // What green's application received names green's server span as its parent, in both
    // forms, and no stale single `b3` header; the request id went through.
    let header = |name: &str| seen[name].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        header("traceparent"),
        format!("00-{trace}-{}-01", server.span_id),
        "{seen:#}"
    );
    assert_eq!(header("x-b3-traceid"), trace, "{seen:#}");
    assert_eq!(header("x-b3-spanid"), server.span_id, "{seen:#}");
    assert_eq!(header("x-b3-parentspanid"), client.span_id, "{seen:#}");
    assert_eq!(header("x-b3-sampled"), "1", "{seen:#}");
    assert_eq!(
        seen.get("b3"),
        None,
        "a stale b3 reached the application: {seen:#}"
    );
    assert_eq!(header("x-request-id"), "trace-b3", "{seen:#}");

    // By now the unsampled request's spans would have been exported with the others.
    assert!(
        of_request(&spans, "trace-unsampled").is_empty()
            && !spans
                .iter()
                .any(|s| s.trace_id == "0af7651916cd43dd8448eb211c80319c"),
        "an unsampled request was recorded:\n{spans:#?}"
    );
}
