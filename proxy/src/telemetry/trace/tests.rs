//! The tracer's decisions and what it records, with an in-memory exporter in place of OTLP.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanKind as OtelKind, Status};
use opentelemetry::{Key, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SimpleSpanProcessor, SpanData, SpanExporter};
use parking_lot::Mutex;

use super::propagation::{self, Format};
use super::*;

/// What a provider exported, and its resource's service name.
#[derive(Debug, Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<SpanData>>>,
    service: Arc<Mutex<Option<String>>>,
    mesh: Arc<Mutex<Option<String>>>,
}

impl SpanExporter for Capture {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.spans.lock().extend(batch);
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        *self.service.lock() = resource
            .get(&Key::new("service.name"))
            .map(|v| v.to_string());
        *self.mesh.lock() = resource
            .get(&Key::new("isthmus.mesh"))
            .map(|v| v.to_string());
    }
}

/// (collector endpoint, service name) of every provider made.
type Made = Arc<Mutex<Vec<(String, String)>>>;

/// A tracer whose providers export into one capture, recording (endpoint, service) per
/// provider made.
fn tracer() -> (Tracer, Capture, Made) {
    let capture = Capture::default();
    let made = Arc::new(Mutex::new(Vec::new()));
    let (c, m) = (capture.clone(), made.clone());
    let factory: Arc<ProviderFactory> = Arc::new(
        move |endpoint: &str, service: &str, resource: &[(String, String)]| {
            m.lock().push((endpoint.to_owned(), service.to_owned()));
            Some(provider(
                SimpleSpanProcessor::new(c.clone()),
                service,
                resource,
            ))
        },
    );
    let tracer = Tracer::with_factory(None, factory).with_node_id("sidecar~10.0.0.1~web.shop");
    tracer.configure(Some("127.0.0.1:4317".into()));
    (tracer, capture, made)
}

fn settings(sampling: f64) -> Tracing {
    Tracing {
        sampling,
        collector_cluster: "isthmus-otlp".into(),
        service_name: "web.shop".into(),
        tags: vec![("isthmus.mesh".into(), "red".into())],
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    h
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| match &kv.value {
            Value::String(s) => s.to_string(),
            other => other.to_string(),
        })
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const PARENT_UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

#[test]
fn sampling_follows_the_caller_else_the_configured_share() {
    let (tracer, _, _) = tracer();
    // (why, sampling, request headers, sampled, continues trace 4bf9...)
    type Case<'a> = (&'a str, f64, Vec<(&'a str, &'a str)>, bool, bool);
    let cases: Vec<Case<'_>> = vec![
        ("no context, always", 1.0, vec![], true, false),
        ("no context, never", 0.0, vec![], false, false),
        (
            "sampled parent, never",
            0.0,
            vec![("traceparent", PARENT)],
            true,
            true,
        ),
        (
            "unsampled parent, always",
            1.0,
            vec![("traceparent", PARENT_UNSAMPLED)],
            false,
            true,
        ),
        (
            "B3 deferring, always",
            1.0,
            vec![("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7")],
            true,
            true,
        ),
        (
            "B3 deferring, never",
            0.0,
            vec![
                ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
                ("x-b3-spanid", "00f067aa0ba902b7"),
            ],
            false,
            true,
        ),
        ("B3 says no, always", 1.0, vec![("b3", "0")], false, false),
        (
            "B3 says yes, never",
            0.0,
            vec![("x-b3-sampled", "1")],
            true,
            false,
        ),
        (
            "B3 debug, never",
            0.0,
            vec![
                ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
                ("x-b3-spanid", "00f067aa0ba902b7"),
                ("x-b3-flags", "1"),
            ],
            true,
            true,
        ),
        (
            "garbage is no context",
            0.0,
            vec![("traceparent", "00-zz-01"), ("b3", "---")],
            false,
            false,
        ),
    ];
    for (why, sampling, pairs, sampled, continued) in cases {
        let span = tracer
            .start(
                &settings(sampling),
                SpanKind::Server,
                || "web.shop:80/*".into(),
                &headers(&pairs),
            )
            .unwrap_or_else(|| panic!("{why}: no span"));
        assert_eq!(span.is_sampled(), sampled, "{why}");
        assert_eq!(span.is_recording(), sampled, "{why}");
        assert_eq!(
            span.trace_id() == "4bf92f3577b34da6a3ce929d0e0e4736",
            continued,
            "{why}"
        );
        // The decision travels on, in W3C, and in B3 too to a caller that spoke B3.
        // B3 goes on where the caller sent any B3 header.
        let spoke_b3 = pairs
            .iter()
            .any(|(k, _)| *k == "b3" || *k == "x-b3-traceid")
            || propagation::extract(&headers(&pairs)).is_some_and(|i| i.format != Format::W3c);
        let mut out = HeaderMap::new();
        propagation::inject(&mut out, &span.outgoing());
        let next = propagation::extract(&out).unwrap();
        assert_eq!(next.format, Format::W3c, "{why}");
        assert_eq!(next.sampled, Some(sampled), "{why}");
        assert_eq!(
            out.get("x-b3-sampled")
                .map(|v| v.to_str().unwrap_or_default()),
            spoke_b3.then_some(if sampled { "1" } else { "0" }),
            "{why}"
        );
        span.end(200);
    }
}

#[test]
fn a_partial_share_samples_about_that_share() {
    let (tracer, _, _) = tracer();
    let sampled = (0..2000)
        .filter(|_| {
            tracer
                .start(
                    &settings(0.25),
                    SpanKind::Client,
                    || "x/*".into(),
                    &HeaderMap::new(),
                )
                .is_some_and(|s| s.is_sampled())
        })
        .count();
    assert!((350..650).contains(&sampled), "{sampled} of 2000 at 25 %");
}

#[test]
fn a_sampled_span_is_recorded_as_the_child_of_the_caller() {
    let (tracer, capture, made) = tracer();
    let request = headers(&[
        ("traceparent", PARENT),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("x-request-id", "a5b6c7"),
        ("b3", "stale-should-go"),
    ]);
    let mut span = tracer
        .start(
            &settings(0.0),
            SpanKind::Client,
            || "ratings.bookinfo:9080/*".into(),
            &request,
        )
        .unwrap();
    span.set_attribute("upstream_cluster", "outbound|9080||first-try".into());
    span.set_attribute("upstream_cluster", "outbound|9080||ratings".into());
    span.set_attribute("isthmus.mesh", "red".into());
    let mut upstream = request.clone();
    propagation::inject(&mut upstream, &span.outgoing());
    let span_id = span.span_id();
    span.end(503);

    let spans = capture.spans.lock().clone();
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.name, "ratings.bookinfo:9080/*");
    assert_eq!(s.span_kind, OtelKind::Client);
    assert_eq!(
        format!("{:032x}", s.span_context.trace_id()),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(format!("{:016x}", s.parent_span_id), "00f067aa0ba902b7");
    assert!(s.parent_span_is_remote);
    assert_eq!(format!("{:016x}", s.span_context.span_id()), span_id);
    assert_eq!(s.span_context.trace_state().header(), "congo=t61rcWkgMzE");
    assert_eq!(attribute(s, "isthmus.mesh").as_deref(), Some("red"));
    assert_eq!(attribute(s, "guid:x-request-id").as_deref(), Some("a5b6c7"));
    assert_eq!(
        attribute(s, "node_id").as_deref(),
        Some("sidecar~10.0.0.1~web.shop")
    );
    assert_eq!(
        attribute(s, "upstream_cluster").as_deref(),
        Some("outbound|9080||ratings")
    );
    assert_eq!(attribute(s, "http.status_code").as_deref(), Some("503"));
    let mut keys: Vec<&str> = s.attributes.iter().map(|kv| kv.key.as_str()).collect();
    let all = keys.len();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), all, "each key once: {:?}", s.attributes);
    assert_eq!(attribute(s, "error").as_deref(), Some("true"));
    assert!(matches!(s.status, Status::Error { .. }));
    assert_eq!(capture.service.lock().as_deref(), Some("web.shop"));
    assert_eq!(
        capture.mesh.lock().as_deref(),
        Some("red"),
        "the mesh is a resource attribute too"
    );
    assert_eq!(
        *made.lock(),
        [("127.0.0.1:4317".to_owned(), "web.shop".to_owned())]
    );

    // The upstream request names the recorded span as its parent; the stale `b3` is gone, the
    // request id stays.
    let next = propagation::extract(&upstream).unwrap();
    assert_eq!(format!("{:016x}", next.parent.unwrap().span_id), span_id);
    assert_eq!(next.trace_state.as_deref(), Some("congo=t61rcWkgMzE"));
    assert_eq!(upstream.get("b3"), None);
    // The caller sent B3 too (a stale one): B3 goes on, naming this span.
    assert_eq!(
        upstream.get("x-b3-parentspanid").unwrap(),
        "00f067aa0ba902b7"
    );
    assert_eq!(upstream.get("x-request-id").unwrap(), "a5b6c7");
}

#[test]
fn a_root_span_and_a_success() {
    let (tracer, capture, _) = tracer();
    let span = tracer
        .start(
            &settings(1.0),
            SpanKind::Server,
            || "web.shop:80/*".into(),
            &HeaderMap::new(),
        )
        .unwrap();
    let mut out = HeaderMap::new();
    propagation::inject(&mut out, &span.outgoing());
    assert_eq!(out.get("x-b3-parentspanid"), None, "a root has no parent");
    span.end(204);
    let spans = capture.spans.lock().clone();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span_kind, OtelKind::Server);
    assert_eq!(u64::from_be_bytes(spans[0].parent_span_id.to_bytes()), 0);
    assert_eq!(attribute(&spans[0], "error"), None);
    assert_eq!(spans[0].status, Status::Unset);
}

#[test]
fn a_span_dropped_without_an_end_is_still_exported() {
    let (tracer, capture, _) = tracer();
    let mut span = tracer
        .start(
            &settings(1.0),
            SpanKind::Client,
            || "x/*".into(),
            &HeaderMap::new(),
        )
        .unwrap();
    span.set_attribute("upstream_cluster", "c".into());
    drop(span);
    let spans = capture.spans.lock().clone();
    assert_eq!(spans.len(), 1);
    assert_eq!(
        attribute(&spans[0], "upstream_cluster").as_deref(),
        Some("c")
    );
    assert_eq!(attribute(&spans[0], "http.status_code"), None);
}

#[test]
fn without_a_collector_the_context_still_travels() {
    let (tracer, capture, made) = tracer();
    tracer.configure(None);
    let span = tracer
        .start(
            &settings(1.0),
            SpanKind::Client,
            || "x/*".into(),
            &headers(&[("traceparent", PARENT)]),
        )
        .unwrap();
    assert!(span.is_sampled());
    assert!(!span.is_recording());
    let mut out = HeaderMap::new();
    propagation::inject(&mut out, &span.outgoing());
    let next = propagation::extract(&out).unwrap();
    assert_eq!(
        next.parent.unwrap().trace_id,
        0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736
    );
    assert_ne!(next.parent.unwrap().span_id, 0x00f0_67aa_0ba9_02b7);
    span.end(200);
    assert!(capture.spans.lock().is_empty());
    assert!(made.lock().is_empty());
}

#[test]
fn a_new_collector_gets_new_providers() {
    let (tracer, capture, made) = tracer();
    let run = |t: &Tracer| {
        t.start(
            &settings(1.0),
            SpanKind::Client,
            || "x/*".into(),
            &HeaderMap::new(),
        )
        .unwrap()
        .end(200)
    };
    run(&tracer);
    run(&tracer);
    tracer.configure(Some("127.0.0.1:4317".into()));
    run(&tracer);
    assert_eq!(made.lock().len(), 1, "same collector: the provider stays");
    tracer.configure(Some("collector.observability:4317".into()));
    run(&tracer);
    assert_eq!(
        made.lock().last().map(|(e, _)| e.as_str()),
        Some("collector.observability:4317")
    );
    assert_eq!(capture.spans.lock().len(), 4);
}

#[test]
fn the_otlp_exporter_needs_a_runtime() {
    // Outside tokio: no exporter (and no panic); the span is not recorded.
    assert!(otlp_provider("127.0.0.1:4317", "web.shop", &[]).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otlp_exporter_starts_and_stops_without_a_collector() {
    // Port 9 (discard) on loopback: nothing listens; exports fail quietly, shutdown is bounded.
    let tracer = Tracer::new();
    tracer.configure(Some("127.0.0.1:9".into()));
    let span = tracer
        .start(
            &settings(1.0),
            SpanKind::Client,
            || "x/*".into(),
            &HeaderMap::new(),
        )
        .unwrap();
    assert!(span.is_recording());
    span.end(200);
    tokio::time::timeout(Duration::from_secs(30), tracer.shutdown())
        .await
        .unwrap();
    let after = tracer
        .start(
            &settings(1.0),
            SpanKind::Client,
            || "x/*".into(),
            &HeaderMap::new(),
        )
        .unwrap();
    assert!(!after.is_recording(), "stopped");
}
