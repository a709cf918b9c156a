//! The ADS protocol edge cases, on the pure stream state machines.

use std::collections::HashMap;

use isthmus_proto::envoy::envoy::config::core::v3::Node;
use isthmus_proto::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
};
use isthmus_proto::envoy::google::protobuf::Any;
use isthmus_proto::envoy::google::rpc::Status;

use super::delta::DeltaStream;
use super::resources::{CLUSTER, ENDPOINT, LISTENER, ProxySnapshot, TypeResources};
use super::sotw::{ProtocolError, SotwStream};
use super::status::Reply;

fn node() -> Option<Node> {
    Some(Node {
        id: "sidecar~127.0.0.1~ratings.bookinfo~bookinfo.svc.cluster.local".into(),
        ..Node::default()
    })
}

/// A resource whose body is `content` (enough to give distinct versions).
fn res(type_url: &str, items: &[(&str, &str)]) -> TypeResources {
    TypeResources::new(items.iter().map(|(name, content)| {
        (
            (*name).to_owned(),
            Any {
                type_url: type_url.to_owned(),
                value: format!("{name}={content}").into_bytes(),
            },
        )
    }))
}

fn snapshot(clusters: &[(&str, &str)], endpoints: &[(&str, &str)]) -> ProxySnapshot {
    ProxySnapshot::default()
        .with(CLUSTER, res(CLUSTER, clusters))
        .with(ENDPOINT, res(ENDPOINT, endpoints))
        .with(LISTENER, res(LISTENER, &[("inbound", "1")]))
}

fn req(type_url: &str, version: &str, nonce: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..DiscoveryRequest::default()
    }
}

fn nack(mut r: DiscoveryRequest, message: &str) -> DiscoveryRequest {
    r.error_detail = Some(Status {
        code: 3,
        message: message.into(),
        ..Status::default()
    });
    r
}

fn names(resources: &[Any]) -> Vec<String> {
    resources
        .iter()
        .map(|a| {
            String::from_utf8_lossy(&a.value)
                .split('=')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn sotw_first_request_needs_the_node_and_later_ones_may_omit_it() {
    let snap = snapshot(&[("a", "1")], &[]);
    let mut s = SotwStream::default();
    assert_eq!(
        s.on_request(req(CLUSTER, "", "", &[]), &snap).unwrap_err(),
        ProtocolError::MissingNode
    );
    let mut first = req(CLUSTER, "", "", &[]);
    first.node = node();
    let (response, _) = s.on_request(first, &snap).unwrap();
    assert!(response.is_some());
    // Node sent only once: the listener request without it is served, the node remembered.
    let (response, _) = s.on_request(req(LISTENER, "", "", &[]), &snap).unwrap();
    assert_eq!(names(&response.unwrap().resources), ["inbound"]);
    assert_eq!(s.node().unwrap().id, node().unwrap().id);
}

#[test]
fn sotw_nack_then_corrected_config() {
    let v1 = snapshot(&[("a", "1")], &[]);
    let mut s = SotwStream::default();
    let mut first = req(CLUSTER, "", "", &[]);
    first.node = node();
    let r1 = s.on_request(first, &v1).unwrap().0.unwrap();
    let (none, ack) = s
        .on_request(req(CLUSTER, &r1.version_info, &r1.nonce, &[]), &v1)
        .unwrap();
    assert!(none.is_none());
    assert!(matches!(ack, Some(Reply::Ack { .. })));

    // A bad change: the proxy NACKs it.
    let bad = snapshot(&[("a", "broken")], &[]);
    let r2 = s.on_snapshot(&bad).pop().unwrap();
    let (none, reply) = s
        .on_request(
            nack(
                req(CLUSTER, &r1.version_info, &r2.nonce, &[]),
                "cluster a: bad field",
            ),
            &bad,
        )
        .unwrap();
    assert!(none.is_none());
    assert_eq!(
        reply,
        Some(Reply::Nack {
            type_url: CLUSTER.into(),
            version: r2.version_info.clone(),
            reason: "cluster a: bad field".into()
        })
    );
    let status = s.status();
    assert_eq!(status[0].nack.as_deref(), Some("cluster a: bad field"));
    assert_eq!(
        status[0].acked_version.as_deref(),
        Some(r1.version_info.as_str())
    );
    // The rejected version is not sent again.
    assert!(s.on_snapshot(&bad).is_empty());

    // The corrected config is pushed and accepted; the NACK clears.
    let fixed = snapshot(&[("a", "2")], &[]);
    let r3 = s.on_snapshot(&fixed).pop().unwrap();
    assert_ne!(r3.version_info, r2.version_info);
    let (_, reply) = s
        .on_request(req(CLUSTER, &r3.version_info, &r3.nonce, &[]), &fixed)
        .unwrap();
    assert!(matches!(reply, Some(Reply::Ack { .. })));
    assert_eq!(s.status()[0].nack, None);
}

#[test]
fn sotw_stale_nonces_are_ignored() {
    let v1 = snapshot(&[("a", "1")], &[]);
    let mut s = SotwStream::default();
    let mut first = req(CLUSTER, "", "", &[]);
    first.node = node();
    let r1 = s.on_request(first, &v1).unwrap().0.unwrap();
    let v2 = snapshot(&[("a", "2")], &[]);
    let r2 = s.on_snapshot(&v2).pop().unwrap();
    // A late ACK of the first response must not count as an ACK of the second.
    let (response, reply) = s
        .on_request(req(CLUSTER, &r1.version_info, &r1.nonce, &[]), &v2)
        .unwrap();
    assert!(response.is_none() && reply.is_none());
    assert_eq!(s.status()[0].acked_version, None);
    let (_, reply) = s
        .on_request(req(CLUSTER, &r2.version_info, &r2.nonce, &[]), &v2)
        .unwrap();
    assert!(matches!(reply, Some(Reply::Ack { version, .. }) if version == r2.version_info));
}

#[test]
fn sotw_reconnect_with_known_version_gets_nothing_until_a_change() {
    let v1 = snapshot(&[("a", "1")], &[]);
    let current = v1.get(CLUSTER).unwrap().version.clone();
    // A new stream (isthmusd restarted); the proxy says it has the current version.
    let mut s = SotwStream::default();
    let mut first = req(CLUSTER, &current, "", &[]);
    first.node = node();
    let (response, _) = s.on_request(first, &v1).unwrap();
    assert!(
        response.is_none(),
        "nothing to send: the proxy is up to date"
    );
    assert!(s.on_snapshot(&v1).is_empty());
    let v2 = snapshot(&[("a", "1"), ("b", "1")], &[]);
    assert_eq!(names(&s.on_snapshot(&v2)[0].resources), ["a", "b"]);

    // With an old version it gets the current config at once.
    let mut s = SotwStream::default();
    let mut first = req(CLUSTER, "old-version", "", &[]);
    first.node = node();
    assert!(s.on_request(first, &v1).unwrap().0.is_some());
}

#[test]
fn sotw_named_subscriptions_get_only_their_resources() {
    let snap = snapshot(&[], &[("a", "1"), ("b", "1"), ("c", "1")]);
    let mut s = SotwStream::default();
    let mut first = req(ENDPOINT, "", "", &["a"]);
    first.node = node();
    let r1 = s.on_request(first, &snap).unwrap().0.unwrap();
    assert_eq!(names(&r1.resources), ["a"]);
    // Widening the subscription answers at once, with the whole new set.
    let (r2, _) = s
        .on_request(
            req(ENDPOINT, &r1.version_info, &r1.nonce, &["a", "c"]),
            &snap,
        )
        .unwrap();
    assert_eq!(names(&r2.unwrap().resources), ["a", "c"]);
}

fn dreq(
    type_url: &str,
    subscribe: &[&str],
    unsubscribe: &[&str],
    nonce: &str,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        resource_names_subscribe: subscribe.iter().map(|n| (*n).to_owned()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|n| (*n).to_owned()).collect(),
        response_nonce: nonce.into(),
        ..DeltaDiscoveryRequest::default()
    }
}

fn dnames(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|r| r.name.clone()).collect()
}

/// The next response, which must exist.
fn next(s: &mut DeltaStream) -> DeltaDiscoveryResponse {
    s.next_response()
        .map(|r| r.to_envoy())
        .expect("a response is due")
}

/// The proxy's ACK of `r`.
fn ack(s: &mut DeltaStream, r: &DeltaDiscoveryResponse, snap: &ProxySnapshot) -> Option<Reply> {
    s.on_request(dreq(&r.type_url, &[], &[], &r.nonce), snap)
        .unwrap()
}

#[test]
fn delta_sends_only_changes_and_removals() {
    let v1 = snapshot(&[("a", "1"), ("b", "1")], &[]);
    let mut s = DeltaStream::default();
    let mut first = dreq(CLUSTER, &[], &[], "");
    first.node = node();
    assert_eq!(s.on_request(first, &v1).unwrap(), None);
    let r1 = next(&mut s);
    assert_eq!(dnames(&r1), ["a", "b"], "wildcard CDS gets everything");
    assert!(matches!(ack(&mut s, &r1, &v1), Some(Reply::Ack { .. })));
    assert!(
        s.next_response().map(|r| r.to_envoy()).is_none(),
        "node sent once; an ACK needs no answer"
    );

    // b changes, c appears, a disappears.
    let v2 = snapshot(&[("b", "2"), ("c", "1")], &[]);
    s.on_snapshot(&v2);
    let r2 = next(&mut s);
    assert_eq!(dnames(&r2), ["b", "c"]);
    assert_eq!(r2.removed_resources, ["a"]);
    ack(&mut s, &r2, &v2);
    s.on_snapshot(&v2);
    assert!(
        !s.has_pending() && s.next_response().map(|r| r.to_envoy()).is_none(),
        "nothing left to send"
    );
}

#[test]
fn delta_unsubscribe_and_resubscribe() {
    let snap = snapshot(&[], &[("a", "1"), ("b", "1")]);
    let mut s = DeltaStream::default();
    let mut first = dreq(ENDPOINT, &["a", "b"], &[], "");
    first.node = node();
    s.on_request(first, &snap).unwrap();
    let r1 = next(&mut s);
    assert_eq!(dnames(&r1), ["a", "b"]);
    // Unsubscribing needs no answer, and changes to `a` are no longer sent.
    s.on_request(dreq(ENDPOINT, &[], &["a"], &r1.nonce), &snap)
        .unwrap();
    assert!(s.next_response().map(|r| r.to_envoy()).is_none());
    let changed = snapshot(&[], &[("a", "2"), ("b", "1")]);
    s.on_snapshot(&changed);
    assert!(s.next_response().map(|r| r.to_envoy()).is_none());
    // Subscribing again sends it again, though its version is one the proxy once had.
    s.on_request(dreq(ENDPOINT, &["a"], &[], ""), &changed)
        .unwrap();
    assert_eq!(dnames(&next(&mut s)), ["a"]);
}

#[test]
fn delta_reconnect_with_initial_versions_sends_only_what_differs() {
    let snap = snapshot(&[("a", "1"), ("b", "1")], &[]);
    let versions: HashMap<String, String> = snap
        .get(CLUSTER)
        .unwrap()
        .items()
        .map(|r| (r.name.to_string(), r.version_string()))
        .collect();
    let changed = snapshot(&[("a", "1"), ("b", "2")], &[]);
    let mut s = DeltaStream::default();
    let mut first = dreq(CLUSTER, &[], &[], "");
    first.node = node();
    first.initial_resource_versions = versions;
    // A resource the proxy has from elsewhere, with a version not of our making.
    first
        .initial_resource_versions
        .insert("gone".into(), "x".into());
    s.on_request(first, &changed).unwrap();
    let r = next(&mut s);
    assert_eq!(dnames(&r), ["b"]);
    assert_eq!(r.removed_resources, ["gone"]);
}

#[test]
fn delta_nack_is_recorded_and_not_resent() {
    let v1 = snapshot(&[("a", "1")], &[]);
    let mut s = DeltaStream::default();
    let mut first = dreq(CLUSTER, &[], &[], "");
    first.node = node();
    s.on_request(first, &v1).unwrap();
    let r1 = next(&mut s);
    let mut n = dreq(CLUSTER, &[], &[], &r1.nonce);
    n.error_detail = Some(Status {
        message: "bad cluster".into(),
        ..Status::default()
    });
    let reply = s.on_request(n, &v1).unwrap();
    assert!(s.next_response().map(|r| r.to_envoy()).is_none());
    assert!(matches!(reply, Some(Reply::Nack { reason, .. }) if reason == "bad cluster"));
    assert_eq!(s.status()[0].nack.as_deref(), Some("bad cluster"));
    s.on_snapshot(&v1);
    assert!(s.next_response().map(|r| r.to_envoy()).is_none());
    assert_eq!(
        s.on_request(dreq("", &[], &[], ""), &v1).unwrap_err(),
        ProtocolError::MissingTypeUrl
    );
}

#[test]
fn delta_splits_a_big_push_into_bounded_responses_one_in_flight() {
    use super::delta::MAX_RESOURCES_PER_RESPONSE;
    let names: Vec<String> = (0..250).map(|i| format!("c{i:03}")).collect();
    let items: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let snap = snapshot(&items, &[]);
    let mut s = DeltaStream::default();
    let mut first = dreq(CLUSTER, &[], &[], "");
    first.node = node();
    s.on_request(first, &snap).unwrap();
    let mut chunks = Vec::new();
    let mut replies = Vec::new();
    while let Some(chunk) = s.next_response().map(|r| r.to_envoy()) {
        assert!(
            s.next_response().map(|r| r.to_envoy()).is_none(),
            "the next part waits for the proxy's answer"
        );
        replies.push(ack(&mut s, &chunk, &snap));
        chunks.push(chunk);
    }
    let sizes: Vec<usize> = chunks.iter().map(|c| c.resources.len()).collect();
    assert_eq!(
        sizes,
        [MAX_RESOURCES_PER_RESPONSE, MAX_RESOURCES_PER_RESPONSE, 50]
    );
    let nonces: std::collections::BTreeSet<&str> =
        chunks.iter().map(|c| c.nonce.as_str()).collect();
    assert_eq!(nonces.len(), 3, "each response has its own nonce");
    let all: Vec<String> = chunks.iter().flat_map(dnames).collect();
    assert_eq!(all, names, "every resource once, in order");
    // Only the ACK of the last part is an ACK of the pushed version.
    assert!(replies[..2].iter().all(Option::is_none), "{replies:?}");
    assert!(
        matches!(&replies[2], Some(Reply::Ack { version, .. }) if *version == snap.get(CLUSTER).unwrap().version)
    );
    assert_eq!(
        s.status()[0].acked_version.as_deref(),
        Some(snap.get(CLUSTER).unwrap().version.as_str())
    );
}

#[test]
fn delta_responses_are_bounded_in_bytes() {
    use super::delta::MAX_BYTES_PER_RESPONSE;
    // Three resources reach the bound: responses of three.
    let body = "x".repeat(MAX_BYTES_PER_RESPONSE / 3);
    let names: Vec<String> = (0..20).map(|i| format!("c{i:02}")).collect();
    let items: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), body.as_str())).collect();
    let snap = snapshot(&items, &[]);
    let mut s = DeltaStream::default();
    let mut first = dreq(CLUSTER, &[], &[], "");
    first.node = node();
    s.on_request(first, &snap).unwrap();
    let mut sizes = Vec::new();
    while let Some(chunk) = s.next_response().map(|r| r.to_envoy()) {
        let bytes: usize = chunk
            .resources
            .iter()
            .map(|r| r.resource.as_ref().unwrap().value.len())
            .sum();
        assert!(bytes < MAX_BYTES_PER_RESPONSE + body.len() + 16, "{bytes}");
        sizes.push(chunk.resources.len());
        ack(&mut s, &chunk, &snap);
    }
    assert_eq!(sizes, [3, 3, 3, 3, 3, 3, 2]);
}

#[test]
fn delta_a_resource_that_changes_while_a_response_is_in_flight_is_sent_once_as_it_is_now() {
    let v1 = snapshot(&[("a", "1"), ("b", "1")], &[]);
    let mut s = DeltaStream::default();
    let mut first = dreq(CLUSTER, &[], &[], "");
    first.node = node();
    s.on_request(first, &v1).unwrap();
    let r1 = next(&mut s);
    // Two changes to `a` and the removal of `b` before the proxy answers.
    let v2 = snapshot(&[("a", "2"), ("b", "1")], &[]);
    s.on_snapshot(&v2);
    assert!(
        s.next_response().map(|r| r.to_envoy()).is_none(),
        "one response in flight"
    );
    let v3 = snapshot(&[("a", "3")], &[]);
    s.on_snapshot(&v3);
    ack(&mut s, &r1, &v3);
    let r2 = next(&mut s);
    let a3 = v3.get(CLUSTER).unwrap().get("a").unwrap().version_string();
    assert_eq!(
        r2.resources
            .iter()
            .map(|r| (r.name.as_str(), r.version.as_str()))
            .collect::<Vec<_>>(),
        [("a", a3.as_str())]
    );
    assert_eq!(r2.removed_resources, ["b"]);
    assert_eq!(r2.system_version_info, v3.get(CLUSTER).unwrap().version);
}

/// Up to `max_items` resources of `type_url` named `<prefix><n>` (`n` below `names`), each with
/// one of three contents.
fn random_resources(
    rng: &mut rand::rngs::StdRng,
    type_url: &str,
    prefix: &str,
    (max_items, names): (usize, usize),
) -> TypeResources {
    use rand::Rng;
    let items: Vec<(String, String)> = (0..rng.random_range(0..max_items))
        .map(|_| {
            (
                format!("{prefix}{}", rng.random_range(0..names)),
                rng.random_range(0..3).to_string(),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = items
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    res(type_url, &refs)
}

/// A delta proxy applying a response to what it holds (name to version).
fn apply_delta(proxy: &mut HashMap<String, String>, r: &DeltaDiscoveryResponse) {
    for x in &r.resources {
        proxy.insert(x.name.clone(), x.version.clone());
    }
    for name in &r.removed_resources {
        assert!(proxy.remove(name).is_some(), "{name} removed, never held");
    }
}

/// The proxy answers the response it holds, then takes and answers every response due.
fn answer_everything(
    s: &mut DeltaStream,
    unanswered: Option<DeltaDiscoveryResponse>,
    proxy: &mut HashMap<String, String>,
    snap: &ProxySnapshot,
) {
    if let Some(r) = unanswered {
        ack(s, &r, snap);
    }
    while let Some(r) = s.next_response().map(|r| r.to_envoy()) {
        apply_delta(proxy, &r);
        ack(s, &r, snap);
    }
}

/// Whatever sequence of snapshots arrives (shared parts kept, changed, emptied; resources
/// added, changed, removed, moved between parts), and whenever the proxy answers, a delta
/// proxy that applies every response ends up holding exactly the snapshot.
#[test]
fn delta_pushes_keep_the_proxy_equal_to_the_snapshot() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let random_part = |rng: &mut rand::rngs::StdRng, prefix: &str| {
        random_resources(rng, CLUSTER, prefix, (12, 20))
    };
    let mut a = random_part(&mut rng, "a");
    let mut b = random_part(&mut rng, "b");
    let mut s = DeltaStream::default();
    let mut first = dreq(CLUSTER, &[], &[], "");
    first.node = node();
    let mut proxy: HashMap<String, String> = HashMap::new();
    let merged = TypeResources::merge(&[&a, &b]);
    let mut snap = ProxySnapshot::default().with(CLUSTER, merged);
    s.on_request(first, &snap).unwrap();
    // A response the proxy applied and has not answered yet.
    let mut unanswered: Option<DeltaDiscoveryResponse> = None;
    for step in 0..400 {
        match rng.random_range(0..5) {
            0 => a = random_part(&mut rng, "a"),
            1 => b = random_part(&mut rng, "b"),
            // The same names dealt anew between the two parts: some move, same versions.
            2 => {
                let names: std::collections::BTreeMap<String, String> = (0..10)
                    .map(|i| (format!("x{i}"), (i % 3).to_string()))
                    .collect();
                let (left, right): (Vec<_>, Vec<_>) =
                    names.iter().partition(|_| rng.random_range(0..2) == 0);
                let part = |v: Vec<(&String, &String)>| {
                    let refs: Vec<(&str, &str)> =
                        v.iter().map(|(n, c)| (n.as_str(), c.as_str())).collect();
                    res(CLUSTER, &refs)
                };
                a = part(left);
                b = part(right);
            }
            _ => {} // nothing changes: shared parts are reused as they are
        }
        let merged = TypeResources::merge(&[&a, &b]);
        snap = ProxySnapshot::default().with(CLUSTER, merged.clone());
        s.on_snapshot(&snap);
        // Sometimes the proxy takes one response and answers later, after more changes.
        if unanswered.is_none() && rng.random_range(0..3) == 0 {
            unanswered = s.next_response().map(|r| r.to_envoy());
            if let Some(r) = &unanswered {
                apply_delta(&mut proxy, r);
            }
            continue;
        }
        answer_everything(&mut s, unanswered.take(), &mut proxy, &snap);
        let expected: HashMap<String, String> = merged
            .items()
            .map(|r| (r.name.to_string(), r.version_string()))
            .collect();
        assert_eq!(proxy, expected, "step {step}");
        assert_eq!(
            s.kept_changes(),
            0,
            "step {step}: nothing due, nothing kept"
        );
    }
}

/// Before the node's configuration is computed the stream answers nothing (a proxy must not
/// initialise on an empty configuration); the first computed snapshot answers every type
/// asked for meanwhile.
#[test]
fn nothing_is_answered_before_the_nodes_snapshot_is_computed() {
    let pending = ProxySnapshot::pending();
    let snap = snapshot(&[("a", "1")], &[("a", "1")]);

    let mut d = DeltaStream::default();
    let mut first = dreq(CLUSTER, &[], &[], "");
    first.node = node();
    d.on_request(first, &pending).unwrap();
    d.on_request(dreq(ENDPOINT, &["a"], &[], ""), &pending)
        .unwrap();
    assert!(!d.has_pending() && d.next_response().map(|r| r.to_envoy()).is_none());
    d.on_snapshot(&snap);
    let sent: Vec<(String, Vec<String>)> =
        std::iter::from_fn(|| d.next_response().map(|r| r.to_envoy()))
            .map(|r| (r.type_url.clone(), dnames(&r)))
            .collect();
    assert_eq!(
        sent,
        [
            (CLUSTER.to_owned(), vec!["a".to_owned()]),
            (ENDPOINT.to_owned(), vec!["a".to_owned()])
        ]
    );

    let mut s = SotwStream::default();
    let mut first = req(CLUSTER, "", "", &[]);
    first.node = node();
    assert!(s.on_request(first, &pending).unwrap().0.is_none());
    assert!(s.on_snapshot(&pending).is_empty());
    let responses = s.on_snapshot(&snap);
    assert_eq!(responses.len(), 1);
    assert_eq!(names(&responses[0].resources), ["a"]);
}

/// The same for a type subscribed by name (EDS): subscriptions that grow and shrink while
/// snapshots change and responses go unanswered, and reconnections that report what the proxy
/// holds. The proxy ends up holding exactly the subscribed part of the snapshot, and a stream
/// with nothing due remembers nothing beside the shared snapshot.
#[test]
fn delta_pushes_keep_the_proxy_equal_to_its_subscribed_part_of_the_snapshot() {
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // Up to 150 resources: a push then takes more than one response (100 at most), and
    // subscriptions change between them.
    let random_part = |rng: &mut rand::rngs::StdRng, prefix: &str| {
        random_resources(rng, ENDPOINT, prefix, (150, 160))
    };
    let some_names = |rng: &mut rand::rngs::StdRng| -> Vec<String> {
        (0..rng.random_range(1..240))
            .map(|_| {
                let prefix = if rng.random_range(0..2) == 0 {
                    "a"
                } else {
                    "b"
                };
                format!("{prefix}{}", rng.random_range(0..160))
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let connect =
        |subscribed: &BTreeSet<String>, proxy: &HashMap<String, String>, snap: &ProxySnapshot| {
            let mut s = DeltaStream::default();
            let names: Vec<&str> = subscribed.iter().map(String::as_str).collect();
            let mut first = dreq(ENDPOINT, &names, &[], "");
            first.node = node();
            first.initial_resource_versions = proxy.clone();
            s.on_request(first, snap).unwrap();
            s
        };
    let (mut a, mut b) = (random_part(&mut rng, "a"), random_part(&mut rng, "b"));
    let mut snap = ProxySnapshot::default().with(ENDPOINT, TypeResources::merge(&[&a, &b]));
    let mut subscribed: BTreeSet<String> = some_names(&mut rng).into_iter().collect();
    let mut proxy: HashMap<String, String> = HashMap::new();
    let mut s = connect(&subscribed, &proxy, &snap);
    let mut unanswered: Option<DeltaDiscoveryResponse> = None;
    // Subscribed to everything (`*`) besides the names.
    let mut wildcard = false;
    for step in 0..800 {
        match rng.random_range(0..10) {
            0 => a = random_part(&mut rng, "a"),
            1 => b = random_part(&mut rng, "b"),
            2 => {
                let more = some_names(&mut rng);
                let refs: Vec<&str> = more.iter().map(String::as_str).collect();
                s.on_request(dreq(ENDPOINT, &refs, &[], ""), &snap).unwrap();
                subscribed.extend(more);
            }
            3 => {
                // The proxy forgets what it unsubscribes from.
                let gone: Vec<String> = some_names(&mut rng)
                    .into_iter()
                    .filter(|n| subscribed.contains(n))
                    .collect();
                let refs: Vec<&str> = gone.iter().map(String::as_str).collect();
                s.on_request(dreq(ENDPOINT, &[], &refs, ""), &snap).unwrap();
                for name in &gone {
                    subscribed.remove(name);
                    if !wildcard {
                        proxy.remove(name);
                    }
                }
            }
            4 => {
                // A new stream, told what the proxy holds (a response in flight is lost).
                unanswered = None;
                wildcard = false;
                proxy.retain(|name, _| subscribed.contains(name));
                // It also says it holds a resource that no snapshot has, at a version this
                // server never made.
                subscribed.insert("a999".to_owned());
                proxy.insert("a999".to_owned(), "not-a-version".to_owned());
                s = connect(&subscribed, &proxy, &snap);
            }
            5 => {
                // Everything, or back to the names alone (the proxy drops the rest).
                if wildcard {
                    s.on_request(dreq(ENDPOINT, &[], &["*"], ""), &snap)
                        .unwrap();
                    proxy.retain(|name, _| subscribed.contains(name));
                } else {
                    s.on_request(dreq(ENDPOINT, &["*"], &[], ""), &snap)
                        .unwrap();
                }
                wildcard = !wildcard;
            }
            6 => {
                // More names and fewer in one request.
                let more = some_names(&mut rng);
                let gone: Vec<String> = some_names(&mut rng)
                    .into_iter()
                    .filter(|n| subscribed.contains(n) && !more.contains(n))
                    .collect();
                let (add, drop): (Vec<&str>, Vec<&str>) = (
                    more.iter().map(String::as_str).collect(),
                    gone.iter().map(String::as_str).collect(),
                );
                s.on_request(dreq(ENDPOINT, &add, &drop, ""), &snap)
                    .unwrap();
                for name in &gone {
                    subscribed.remove(name);
                    if !wildcard {
                        proxy.remove(name);
                    }
                }
                subscribed.extend(more);
            }
            _ => {}
        }
        let merged = TypeResources::merge(&[&a, &b]);
        snap = ProxySnapshot::default().with(ENDPOINT, merged.clone());
        s.on_snapshot(&snap);
        // A slow proxy, for a few steps: it answers one response only after the next change
        // (snapshots and subscriptions change while pushes are half done).
        if rng.random_range(0..2) == 0 {
            if let Some(r) = unanswered.take() {
                ack(&mut s, &r, &snap);
            }
            unanswered = s.next_response().map(|r| r.to_envoy());
            if let Some(r) = &unanswered {
                apply_delta(&mut proxy, r);
            }
            continue;
        }
        answer_everything(&mut s, unanswered.take(), &mut proxy, &snap);
        let expected: HashMap<String, String> = merged
            .items()
            .filter(|r| wildcard || subscribed.contains(&*r.name))
            .map(|r| (r.name.to_string(), r.version_string()))
            .collect();
        assert_eq!(proxy, expected, "step {step}");
        assert_eq!(
            s.kept_changes(),
            0,
            "step {step}: nothing due, nothing kept"
        );
    }
}
