//! One request's telemetry in process: who is named from what, which headers go where, and
//! when a request counts as complete.

use std::collections::HashMap;

use http_body_util::BodyExt;
use isthmus_proto::envoy::envoy::config::core::v3::Metadata;
use isthmus_proto::envoy::google::protobuf::{Struct, Value, value::Kind};
use prometheus_client::registry::Registry;

use super::*;
use crate::config::telemetry::{FACTS_FIELD, TELEMETRY_KEY, node_facts};
use crate::telemetry::peer_metadata::OwnHeaders;

const CLIENT: &str = "spiffe://red.local/ns/shop/sa/client";

const RATINGS: &str = "spiffe://green.local/ns/bookinfo/sa/ratings";

/// Green's `ratings` sidecar, inbound: its registry, and the connection of a verified caller.
fn server(peer_id: Option<&str>) -> (Registry, Arc<ConnectionTelemetry>) {
    sidecar(Reporter::Destination, peer_id)
}

/// A sidecar of green's `ratings` workload, as `reporter` (outbound: `Source`).
fn sidecar(reporter: Reporter, peer_id: Option<&str>) -> (Registry, Arc<ConnectionTelemetry>) {
    let facts = r#"{"app":"ratings","mesh":"green","meshes":{"green.local":"green","red.local":"red"},"namespace":"bookinfo","principal":"spiffe://green.local/ns/bookinfo/sa/ratings","workload":"ratings"}"#;
    let metadata = Metadata {
        filter_metadata: HashMap::from([(
            TELEMETRY_KEY.to_owned(),
            Struct {
                fields: HashMap::from([(
                    FACTS_FIELD.to_owned(),
                    Value {
                        kind: Some(Kind::StringValue(facts.to_owned())),
                    },
                )]),
            },
        )]),
        ..Default::default()
    };
    let node = node_facts(Some(&metadata)).expect("facts");
    let telemetry = Arc::new(Telemetry::default());
    let mut registry = Registry::default();
    telemetry.register(&mut registry);
    let peer = peer_id.map(|id| {
        let mut caller = Workload::unknown();
        caller.principal = Arc::from(id);
        caller.mesh = node.mesh_of(id);
        Arc::new(caller)
    });
    let conn = Arc::new(ConnectionTelemetry {
        peers: telemetry.peers.clone(),
        telemetry,
        node,
        reporter,
        peer,
        peer_id: peer_id.map(Arc::from),
        mutual_tls: peer_id.is_some(),
        tracing: None,
        served: None,
        remote: "127.0.0.1:5000".parse().expect("address"),
        handles: Arc::default(),
        last_peer: parking_lot::Mutex::default(),
        other_side: parking_lot::Mutex::default(),
    });
    (registry, conn)
}

fn request(
    method: http::Method,
    caller: Option<&OwnHeaders>,
) -> http::Request<http_body_util::Empty<Bytes>> {
    let mut request = http::Request::builder()
        .method(method)
        .uri("http://ratings.bookinfo.svc.cluster.local:9080/")
        .body(http_body_util::Empty::new())
        .expect("request");
    if let Some(h) = caller {
        let headers = request.headers_mut();
        headers.insert(peer_metadata::HEADER, h.metadata.clone());
        headers.insert(peer_metadata::ID_HEADER, h.id.clone());
    }
    request
}

fn response(status: u16, body: &'static str) -> http::Response<Body> {
    let mut response = http::Response::new(crate::http::full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = http::StatusCode::from_u16(status).expect("status");
    response
}

/// The `istio_requests_total` lines of the registry.
fn requests(registry: &Registry) -> Vec<String> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encodes");
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .map(str::to_owned)
        .collect()
}

fn one_with(lines: &[String], parts: &[&str]) -> bool {
    lines.len() == 1 && parts.iter().all(|p| lines[0].contains(p))
}

#[tokio::test]
async fn a_verified_callers_metadata_names_it_and_is_answered_then_removed() {
    let (registry, conn) = server(Some(CLIENT));
    let client = OwnHeaders::new("client.shop", "client", "shop", "web", "red");
    let mut req = request(http::Method::GET, Some(&client));
    let observation = conn.begin(&mut req);
    assert!(
        req.headers().get(peer_metadata::HEADER).is_none(),
        "stripped"
    );
    assert!(
        req.headers().get(peer_metadata::ID_HEADER).is_none(),
        "stripped"
    );
    assert!(req.headers().contains_key("x-request-id"), "an id is given");
    let answered = observation.finish(response(200, "hello"), None);
    assert_eq!(
        answered.headers().get(peer_metadata::HEADER),
        Some(&conn.node.headers.metadata),
        "the caller learns who answered"
    );
    assert!(
        requests(&registry).is_empty(),
        "recorded only when the body ends"
    );
    let body = answered
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"hello");
    let lines = requests(&registry);
    assert!(
        one_with(
            &lines,
            &[
                "reporter=\"destination\"",
                "source_workload=\"client\"",
                "source_workload_namespace=\"shop\"",
                "source_app=\"web\"",
                "source_principal=\"spiffe://red.local/ns/shop/sa/client\"",
                "source_mesh=\"red\"",
                "destination_workload=\"ratings\"",
                "destination_mesh=\"green\"",
                "response_flags=\"-\"",
                "connection_security_policy=\"mutual_tls\"",
                "response_code=\"200\"",
                "} 1",
            ]
        ),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn metadata_for_another_namespace_or_from_an_unverified_caller_names_no_one() {
    let liar = OwnHeaders::new("admin.kube-system", "admin", "kube-system", "admin", "red");
    for peer in [Some(CLIENT), None] {
        let (registry, conn) = server(peer);
        let mut req = request(http::Method::GET, Some(&liar));
        let observation = conn.begin(&mut req);
        assert!(
            req.headers().get(peer_metadata::HEADER).is_none(),
            "stripped anyway"
        );
        let answered = observation.finish(response(200, ""), None);
        // An unverified caller gets nothing back either.
        assert_eq!(
            answered.headers().get(peer_metadata::HEADER).is_some(),
            peer.is_some(),
            "{peer:?}"
        );
        drop(answered.into_body().collect().await.expect("body"));
        let lines = requests(&registry);
        assert!(
            one_with(&lines, &["source_workload=\"unknown\""]),
            "{peer:?}: {lines:#?}"
        );
    }
}

#[tokio::test]
async fn a_request_given_up_before_its_answer_is_code_0_dc() {
    let (registry, conn) = server(Some(CLIENT));
    let mut req = request(http::Method::GET, None);
    drop(conn.begin(&mut req));
    let lines = requests(&registry);
    assert!(
        one_with(&lines, &["response_code=\"0\"", "response_flags=\"DC\""]),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_body_dropped_midway_is_dc_but_a_head_answer_is_complete() {
    let (registry, conn) = server(Some(CLIENT));
    let mut req = request(http::Method::GET, None);
    let observation = conn.begin(&mut req);
    // A streamed body of unknown length: one frame, then the client goes away.
    let mut partial = response(200, "");
    *partial.body_mut() = Body::new(Endless { sent: false });
    let mut answered = observation.finish(partial, None);
    let frame = answered.body_mut().frame().await;
    assert!(frame.is_some_and(|f| f.is_ok_and(|f| f.is_data())));
    drop(answered);
    let lines = requests(&registry);
    assert!(one_with(&lines, &["response_flags=\"DC\""]), "{lines:#?}");

    let (registry, conn) = server(Some(CLIENT));
    let mut req = request(http::Method::HEAD, None);
    let observation = conn.begin(&mut req);
    // hyper drops a HEAD answer's body unread.
    drop(observation.finish(response(200, "not sent"), None));
    let lines = requests(&registry);
    assert!(
        one_with(&lines, &["response_flags=\"-\"", "response_code=\"200\""]),
        "{lines:#?}"
    );
}

/// A body that sends one frame and then never ends.
struct Endless {
    sent: bool,
}

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.sent {
            return Poll::Pending;
        }
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"part")))))
    }
}

/// Between two `isthmus-proxy` sidecars the metadata goes once per connection: the callee
/// says it keeps it, and the caller's later requests on that connection, without it, are still
/// named. An unverified caller is never told so.
#[tokio::test]
async fn a_kept_callers_later_requests_are_named_without_its_metadata() {
    let (registry, conn) = server(Some(CLIENT));
    let client = OwnHeaders::new("client.shop", "client", "shop", "web", "red");
    let mut first = request(http::Method::GET, Some(&client));
    let answered = conn.begin(&mut first).finish(response(200, "a"), None);
    assert_eq!(
        answered.headers().get(peer_metadata::KEPT_HEADER_NAME),
        Some(&HeaderValue::from_static("1")),
        "the caller may stop sending it"
    );
    drop(answered.into_body().collect().await.expect("body"));
    let mut later = request(http::Method::GET, None);
    let answered = conn.begin(&mut later).finish(response(200, "b"), None);
    assert!(
        answered.headers().get(peer_metadata::HEADER).is_none(),
        "a caller that sent nothing gets nothing back"
    );
    drop(answered.into_body().collect().await.expect("body"));
    let lines = requests(&registry);
    assert!(
        one_with(&lines, &["source_workload=\"client\"", "} 2"]),
        "{lines:#?}"
    );

    let (_, unverified) = server(None);
    let mut req = request(http::Method::GET, Some(&client));
    let answered = unverified.begin(&mut req).finish(response(200, ""), None);
    assert!(
        answered
            .headers()
            .get(peer_metadata::KEPT_HEADER_NAME)
            .is_none()
    );

    // An Istio sidecar's metadata does not offer it: its application never sees the marker.
    let (_, conn) = server(Some(CLIENT));
    let istio = {
        use base64::Engine as _;
        use prost::Message as _;
        let fields = [("NAMESPACE", "shop"), ("WORKLOAD_NAME", "client")]
            .into_iter()
            .map(|(k, v)| {
                let value = Value {
                    kind: Some(Kind::StringValue(v.to_owned())),
                };
                (k.to_owned(), value)
            })
            .collect();
        let encoded = Struct { fields }.encode_to_vec();
        let encoded = base64::engine::general_purpose::STANDARD.encode(encoded);
        OwnHeaders {
            metadata: HeaderValue::from_str(&encoded).expect("base64"),
            id: HeaderValue::from_static("client.shop"),
        }
    };
    let mut req = request(http::Method::GET, Some(&istio));
    let answered = conn.begin(&mut req).finish(response(200, ""), None);
    assert!(
        answered.headers().get(peer_metadata::HEADER).is_some(),
        "answered as Istio answers"
    );
    assert!(
        answered
            .headers()
            .get(peer_metadata::KEPT_HEADER_NAME)
            .is_none()
    );
}

/// The caller's side: a response that says the callee keeps this side's metadata settles the
/// connection's exchange, and later responses on it, which say nothing, name the callee from
/// what the first said. The marker never reaches the application.
#[tokio::test]
async fn a_callee_that_keeps_the_metadata_is_named_from_the_first_answer() {
    let (registry, conn) = sidecar(Reporter::Source, None);
    let exchange = Arc::new(UpstreamExchange::default());
    let upstream = || UpstreamFacts {
        cluster: Arc::from("outbound|9080||ratings.bookinfo.svc.cluster.local"),
        facts: Arc::default(),
        principal: Some(Arc::from(RATINGS)),
        exchange: Some(exchange.clone()),
    };
    let ratings = OwnHeaders::new(
        "ratings.bookinfo",
        "ratings-v1",
        "bookinfo",
        "ratings",
        "green",
    );
    let mut first = response(200, "a");
    let headers = first.headers_mut();
    headers.insert(peer_metadata::HEADER_NAME, ratings.metadata.clone());
    headers.insert(peer_metadata::ID_HEADER_NAME, ratings.id.clone());
    headers.insert(
        peer_metadata::KEPT_HEADER_NAME,
        HeaderValue::from_static("1"),
    );
    let mut req = request(http::Method::GET, None);
    let answered = conn.begin(&mut req).finish(first, Some(upstream()));
    assert!(answered.headers().get(peer_metadata::HEADER).is_none());
    assert!(
        answered
            .headers()
            .get(peer_metadata::KEPT_HEADER_NAME)
            .is_none()
    );
    assert!(
        exchange.keeps(&conn.node.headers.metadata),
        "later requests go without this side's metadata"
    );
    drop(answered.into_body().collect().await.expect("body"));

    let later = response(200, "b");
    let mut req = request(http::Method::GET, None);
    drop(
        conn.begin(&mut req)
            .finish(later, Some(upstream()))
            .into_body()
            .collect()
            .await
            .expect("body"),
    );
    let lines = requests(&registry);
    assert!(
        one_with(
            &lines,
            &[
                "reporter=\"source\"",
                "destination_workload=\"ratings-v1\"",
                "destination_principal=\"spiffe://green.local/ns/bookinfo/sa/ratings\"",
                "} 2"
            ]
        ),
        "{lines:#?}"
    );
}

/// A marker without the callee's metadata (not an exchange) settles nothing.
#[tokio::test]
async fn a_marker_alone_settles_nothing() {
    let (_, conn) = sidecar(Reporter::Source, None);
    let exchange = Arc::new(UpstreamExchange::default());
    let mut answer = response(200, "");
    let upstream = UpstreamFacts {
        cluster: Arc::from("outbound|9080||ratings.bookinfo.svc.cluster.local"),
        facts: Arc::default(),
        principal: Some(Arc::from(RATINGS)),
        exchange: Some(exchange.clone()),
    };
    answer.headers_mut().insert(
        peer_metadata::KEPT_HEADER_NAME,
        HeaderValue::from_static("1"),
    );
    let mut req = request(http::Method::GET, None);
    let answered = conn.begin(&mut req).finish(answer, Some(upstream));
    assert!(
        answered
            .headers()
            .get(peer_metadata::KEPT_HEADER_NAME)
            .is_none()
    );
    assert!(!exchange.keeps(&conn.node.headers.metadata));
}
