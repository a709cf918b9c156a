//! Istio's metadata exchange over HTTP: each sidecar tells the other who its workload is in
//! `x-envoy-peer-metadata` (base64 of a protobuf `Struct`: `WORKLOAD_NAME`, `NAMESPACE`,
//! `LABELS`, `MESH_ID`, `NAME`) and `x-envoy-peer-metadata-id`, sent on the request by the
//! caller's sidecar and on the response by the callee's, inside their mTLS session; each side
//! removes the other's before the application sees it.
//!
//! What the header says is only ever a label, and only from a peer whose certificate was
//! verified, for the namespace that certificate names: the principal and the mesh come from the
//! certificate, never from here. At most [`MAX_PER_TRUST_DOMAIN`] workloads per trust domain and
//! [`MAX_PEERS`] in all are ever named (beyond that a new one is `unknown`), so no peer can grow
//! the metrics' series without bound nor use up another mesh's share; well-formed headers are
//! cached by their bytes, so requests do not pay for decoding.
//!
//! Between two `isthmus-proxy` sidecars the exchange happens once per connection, not per
//! request: a caller's metadata offers it ([`ONCE_PER_CONNECTION_FIELD`]), a callee that keeps
//! it for the rest of the connection says so with [`KEPT_HEADER_NAME`] beside its own, and the
//! caller then sends neither on that connection again (until its own metadata changes), both
//! sides keeping what they learnt ([`UpstreamExchange`] on the caller's side, the connection's
//! memo on the callee's). Like Istio's exchange, this takes the verified TLS peer to be the
//! sidecar that wrote the metadata: no pooling L7 hop between two sidecars. The three headers cost more to write, parse
//! and strip than all of the request's metrics. A peer that does not answer so (Envoy) gets
//! them on every request, as Istio sends them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use base64::Engine as _;
use bytes::{BufMut as _, Bytes};
use http::HeaderValue;
use isthmus_proto::envoy::google::protobuf::{Struct, Value, value::Kind};
use parking_lot::Mutex;
use prost::Message as _;

use super::labels::Label;

pub const HEADER: &str = "x-envoy-peer-metadata";
pub const ID_HEADER: &str = "x-envoy-peer-metadata-id";
/// The same names as values: a `&str` key is parsed and validated at every lookup.
pub const HEADER_NAME: http::HeaderName = http::HeaderName::from_static(HEADER);
pub const ID_HEADER_NAME: http::HeaderName = http::HeaderName::from_static(ID_HEADER);
/// A callee's answer that it keeps the caller's metadata for the rest of the connection.
pub const KEPT_HEADER_NAME: http::HeaderName =
    http::HeaderName::from_static("x-isthmus-peer-metadata-kept");

/// This side's metadata headers: `x-envoy-peer-metadata` and `x-envoy-peer-metadata-id`.
pub type MetadataHeaders = (HeaderValue, HeaderValue);

/// The field of an `isthmus-proxy` sidecar's metadata that offers the exchange once per
/// connection: a callee answers [`KEPT_HEADER_NAME`] only to a caller whose metadata says so,
/// so that no other caller (an Istio sidecar) or its application ever sees that header.
pub const ONCE_PER_CONNECTION_FIELD: &str = "ISTHMUS_EXCHANGE_ONCE_PER_CONNECTION";

/// One upstream connection's metadata exchange, on the caller's side: which of this side's
/// metadata the callee keeps (requests then go without it, until this side's metadata
/// changes) and what the callee said about itself (its later responses say nothing).
#[derive(Debug, Default)]
pub struct UpstreamExchange {
    kept: Mutex<Option<HeaderValue>>,
    callee: Mutex<Option<Arc<PeerWorkload>>>,
}

impl UpstreamExchange {
    /// Whether the callee keeps `metadata`, this side's header as it is now.
    pub fn keeps(&self, metadata: &HeaderValue) -> bool {
        self.kept.lock().as_ref().is_some_and(|kept| {
            let (kept, ours) = (kept.as_bytes(), metadata.as_bytes());
            // The kept value is a copy of this side's header: the same bytes in memory, found
            // without comparing a few hundred of them on every request.
            std::ptr::eq(kept, ours) || kept == ours
        })
    }

    /// The callee said it keeps `metadata`.
    pub fn set_kept(&self, metadata: HeaderValue) {
        *self.kept.lock() = Some(metadata);
    }

    /// What the callee said about itself, read from its metadata header.
    pub fn remember(&self, callee: Option<Arc<PeerWorkload>>) {
        *self.callee.lock() = callee;
    }

    pub fn remembered(&self) -> Option<Arc<PeerWorkload>> {
        self.callee.lock().clone()
    }
}

/// Distinct workloads ever named from headers, in all.
pub const MAX_PEERS: usize = 1024;
/// Distinct workloads ever named from headers, per trust domain.
pub const MAX_PER_TRUST_DOMAIN: usize = 256;
/// A longer header is not decoded.
const MAX_HEADER: usize = 8 * 1024;
/// A longer header is decoded but not cached.
const MAX_CACHED: usize = 2 * 1024;
/// Longer values are not label values.
const MAX_VALUE: usize = 253;

/// What a peer says about its workload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerWorkload {
    pub workload: Label,
    pub namespace: Label,
    pub app: Label,
    /// An `isthmus-proxy` sidecar, offering the exchange once per connection.
    pub once_per_connection: bool,
}

/// This side's headers, built once per listener configuration.
#[derive(Debug, Clone)]
pub struct OwnHeaders {
    pub metadata: HeaderValue,
    pub id: HeaderValue,
}

impl OwnHeaders {
    pub fn new(node_id: &str, workload: &str, namespace: &str, app: &str, mesh: &str) -> Self {
        let labels = Struct {
            fields: HashMap::from([("app".to_owned(), string(app))]),
        };
        let labels = Value {
            kind: Some(Kind::StructValue(labels)),
        };
        // Fields in key order: the same node sends the same bytes after every configuration
        // change (a protobuf map has no order of its own), so peers' caches keep hitting.
        let mut fields: Vec<(&str, Value)> = vec![
            ("LABELS", labels),
            ("MESH_ID", string(mesh)),
            ("NAME", string(workload)),
            ("NAMESPACE", string(namespace)),
            ("WORKLOAD_NAME", string(workload)),
            (
                ONCE_PER_CONNECTION_FIELD,
                Value {
                    kind: Some(Kind::BoolValue(true)),
                },
            ),
        ];
        fields.sort_by(|a, b| a.0.cmp(b.0));
        let mut encoded = Vec::new();
        for (key, value) in &fields {
            // A map entry: field 1 of `Struct`, a message of key (1) and value (2).
            let mut entry = Vec::new();
            prost::encoding::string::encode(1, &(*key).to_owned(), &mut entry);
            prost::encoding::message::encode(2, value, &mut entry);
            prost::encoding::encode_key(
                1,
                prost::encoding::WireType::LengthDelimited,
                &mut encoded,
            );
            prost::encoding::encode_varint(entry.len() as u64, &mut encoded);
            encoded.put_slice(&entry);
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(encoded);
        Self {
            metadata: HeaderValue::from_str(&encoded).unwrap_or(HeaderValue::from_static("")),
            id: HeaderValue::from_str(node_id).unwrap_or(HeaderValue::from_static("unknown")),
        }
    }
}

/// Decodes peers' headers: the workloads named so far (bounded) and a cache of decoded
/// headers.
#[derive(Debug, Default)]
pub struct PeerCache {
    inner: Mutex<Peers>,
}

#[derive(Debug, Default)]
struct Peers {
    /// Well-formed header bytes -> what they say.
    decoded: HashMap<Bytes, Arc<PeerWorkload>>,
    /// Trust domain -> the workloads named for it so far.
    named: HashMap<String, HashSet<Arc<PeerWorkload>>>,
    total: usize,
}

impl PeerCache {
    /// The workload a header describes, from a peer that proved to be `spiffe_id`: `None` when
    /// the header is malformed, names another namespace than the certificate, or names a new
    /// workload once the caps are reached.
    pub fn lookup(&self, value: &HeaderValue, spiffe_id: &str) -> Option<Arc<PeerWorkload>> {
        let bytes = value.as_bytes();
        if bytes.len() > MAX_HEADER {
            return None;
        }
        let (trust_domain, namespace) = spiffe_namespace(spiffe_id)?;
        let cached = self.inner.lock().decoded.get(bytes).cloned();
        let peer = match cached {
            Some(peer) => peer,
            None => {
                let peer = Arc::new(decode(bytes)?);
                if bytes.len() <= MAX_CACHED {
                    let mut peers = self.inner.lock();
                    // Only a cache: emptied when full.
                    if peers.decoded.len() >= 4 * MAX_PEERS {
                        peers.decoded.clear();
                    }
                    peers
                        .decoded
                        .insert(Bytes::copy_from_slice(bytes), peer.clone());
                }
                peer
            }
        };
        if *peer.namespace != *namespace {
            return None;
        }
        let mut peers = self.inner.lock();
        let total = peers.total;
        let named = peers.named.entry(trust_domain.to_owned()).or_default();
        if let Some(known) = named.get(&peer) {
            return Some(known.clone());
        }
        if named.len() >= MAX_PER_TRUST_DOMAIN || total >= MAX_PEERS {
            return None;
        }
        named.insert(peer.clone());
        peers.total += 1;
        Some(peer)
    }
}

/// The trust domain and namespace of `spiffe://<td>/ns/<ns>/sa/<sa>`.
fn spiffe_namespace(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("spiffe://")?;
    let (td, path) = rest.split_once('/')?;
    let ns = path.strip_prefix("ns/")?.split('/').next()?;
    Some((td, ns))
}

/// The workload, namespace and app a header names, if it is a well-formed `Struct`.
pub fn decode(bytes: &[u8]) -> Option<PeerWorkload> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(bytes)
        .ok()?;
    let s = Struct::decode(raw.as_slice()).ok()?;
    let text = |key: &str| match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) if !v.is_empty() && v.len() <= MAX_VALUE => Some(v.as_str()),
        _ => None,
    };
    let labels = match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(labels)) => Some(labels),
        _ => None,
    };
    let label = |key: &str| match labels
        .and_then(|l| l.fields.get(key))
        .and_then(|v| v.kind.as_ref())
    {
        Some(Kind::StringValue(v)) if !v.is_empty() && v.len() <= MAX_VALUE => Some(v.as_str()),
        _ => None,
    };
    let workload = text("WORKLOAD_NAME").or_else(|| text("NAME"))?;
    let namespace = text("NAMESPACE")?;
    let app = label("app")
        .or_else(|| label("app.kubernetes.io/name"))
        .or_else(|| label("service.istio.io/canonical-name"))
        .unwrap_or(workload);
    let once_per_connection = matches!(
        s.fields
            .get(ONCE_PER_CONNECTION_FIELD)
            .and_then(|v| v.kind.as_ref()),
        Some(Kind::BoolValue(true))
    );
    Some(PeerWorkload {
        workload: Arc::from(workload),
        namespace: Arc::from(namespace),
        app: Arc::from(app),
        once_per_connection,
    })
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_one_side_sends_the_other_reads() {
        let own = OwnHeaders::new(
            "sidecar~1.2.3.4~client.shop~shop.svc.cluster.local",
            "client",
            "shop",
            "web",
            "red",
        );
        let peer = decode(own.metadata.as_bytes()).expect("decodes");
        assert_eq!(&*peer.workload, "client");
        assert_eq!(&*peer.namespace, "shop");
        assert_eq!(&*peer.app, "web");
    }

    const CLIENT: &str = "spiffe://red.local/ns/shop/sa/client";

    #[test]
    fn malformed_or_oversized_headers_name_no_one() {
        let cache = PeerCache::default();
        for bad in ["", "!!!", "aGVsbG8=", &"A".repeat(MAX_HEADER + 4)] {
            let value = HeaderValue::from_str(bad).expect("header");
            assert_eq!(cache.lookup(&value, CLIENT), None, "{bad:.20}");
        }
        // A Struct without a namespace.
        let partial = Struct {
            fields: HashMap::from([("WORKLOAD_NAME".to_owned(), string("w"))]),
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(partial.encode_to_vec());
        assert_eq!(decode(encoded.as_bytes()), None);
    }

    #[test]
    fn only_the_namespace_the_certificate_names_is_believed() {
        let cache = PeerCache::default();
        let own = OwnHeaders::new("id", "client", "shop", "web", "red");
        assert!(cache.lookup(&own.metadata, CLIENT).is_some());
        assert_eq!(
            cache.lookup(&own.metadata, "spiffe://red.local/ns/other/sa/x"),
            None
        );
        assert_eq!(cache.lookup(&own.metadata, "not a SPIFFE ID"), None);
    }

    #[test]
    fn the_same_node_sends_the_same_bytes() {
        let a = OwnHeaders::new("id", "client", "shop", "web", "red");
        let b = OwnHeaders::new("id", "client", "shop", "web", "red");
        assert_eq!(a.metadata, b.metadata);
    }

    #[test]
    fn names_are_bounded_per_trust_domain_and_in_all() {
        let cache = PeerCache::default();
        let id = |td: &str| format!("spiffe://{td}/ns/ns/sa/sa");
        for i in 0..MAX_PER_TRUST_DOMAIN + 10 {
            let own = OwnHeaders::new("id", &format!("w{i}"), "ns", "app", "m");
            let found = cache.lookup(&own.metadata, &id("green.local"));
            assert_eq!(found.is_some(), i < MAX_PER_TRUST_DOMAIN, "peer {i}");
        }
        // Known peers are still recognised; another trust domain has its own share.
        let first = OwnHeaders::new("id", "w0", "ns", "app", "m");
        assert!(cache.lookup(&first.metadata, &id("green.local")).is_some());
        assert!(cache.lookup(&first.metadata, &id("red.local")).is_some());
        // In all: no more than MAX_PEERS (green's share and red's one are already named).
        let mut named = MAX_PER_TRUST_DOMAIN + 1;
        for td in 0..MAX_PEERS / MAX_PER_TRUST_DOMAIN + 2 {
            for i in 0..MAX_PER_TRUST_DOMAIN {
                let own = OwnHeaders::new("id", &format!("t{td}w{i}"), "ns", "app", "m");
                if cache
                    .lookup(&own.metadata, &id(&format!("td{td}.local")))
                    .is_some()
                {
                    named += 1;
                }
            }
        }
        assert_eq!(named, MAX_PEERS);
    }
}
