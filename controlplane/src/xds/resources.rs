//! What one proxy is sent: per xDS type, named resources with content-derived versions, so an
//! unchanged resource keeps its version across pushes and across `isthmusd` restarts.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use isthmus_proto::envoy::google::protobuf::Any;
use prost::Message;
use sha2::{Digest, Sha256};

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Types whose empty subscription means "everything" (Envoy's wildcard LDS and CDS, and the
/// sidecar DNS proxy's name table).
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER || type_url == isthmus_proto::dns::NAME_TABLE_TYPE
}

/// One resource, its version the hash of its encoding.
///
/// The name is shared (streams remember what each proxy holds by name, a thousand proxies
/// times a few thousand names) and the version is a number (shown as 16 hex digits on the
/// wire), so that per-proxy bookkeeping stays small. The body is kept as the encoded
/// `google.protobuf.Any`, made once and shared: a delta response to any number of proxies
/// refers to these bytes and copies them only into its gRPC frame.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedResource {
    pub name: Arc<str>,
    pub version: u64,
    encoded_body: Bytes,
}

impl NamedResource {
    fn new(name: Arc<str>, body: &Any) -> Self {
        Self {
            name,
            version: content_version(body),
            encoded_body: body.encode_to_vec().into(),
        }
    }

    /// The version as xDS carries it.
    pub fn version_string(&self) -> String {
        format_version(self.version)
    }

    /// The body, decoded (a copy).
    pub fn body(&self) -> Any {
        Any::decode(self.encoded_body.clone()).expect("encoded from an Any by NamedResource::new")
    }

    /// The body as the encoded `google.protobuf.Any`, shared.
    pub fn encoded_body(&self) -> &Bytes {
        &self.encoded_body
    }
}

/// A resource version as xDS carries it: 16 hex digits.
pub fn format_version(version: u64) -> String {
    format!("{version:016x}")
}

/// The version a proxy reports (`initial_resource_versions`); `None` if it is not one of ours.
pub fn parse_version(version: &str) -> Option<u64> {
    (version.len() == 16)
        .then(|| u64::from_str_radix(version, 16).ok())
        .flatten()
}

/// Every resource of one type, and the type's version (a hash over names and versions).
///
/// Made of shared parts: what many proxies have in common (the outbound clusters of a
/// namespace, say) is built once and referenced by each proxy's snapshot, not copied.
#[derive(Debug, Clone, Default)]
pub struct TypeResources {
    pub version: String,
    parts: Vec<Arc<Part>>,
}

/// Resources by name.
pub type Part = BTreeMap<Arc<str>, NamedResource>;

/// Versions are derived from content, so equal versions mean equal resources.
impl PartialEq for TypeResources {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
    }
}

impl TypeResources {
    pub fn new(items: impl IntoIterator<Item = (String, Any)>) -> Self {
        let items: Part = items
            .into_iter()
            .map(|(name, body)| {
                let name: Arc<str> = name.into();
                (name.clone(), NamedResource::new(name, &body))
            })
            .collect();
        let mut hasher = Sha256::new();
        for item in items.values() {
            hasher.update(item.name.as_bytes());
            hasher.update([0]);
            hasher.update(item.version.to_be_bytes());
        }
        let version = hex::encode(&hasher.finalize()[..8]);
        Self {
            version,
            parts: vec![Arc::new(items)],
        }
    }

    /// The resources of all `parts` (their names must not overlap), sharing their storage.
    pub fn merge(parts: &[&TypeResources]) -> Self {
        let non_empty: Vec<&&TypeResources> = parts.iter().filter(|p| !p.is_empty()).collect();
        if let [only] = non_empty.as_slice() {
            return (**only).clone();
        }
        let mut hasher = Sha256::new();
        for part in &non_empty {
            hasher.update(part.version.as_bytes());
            hasher.update([0]);
        }
        Self {
            version: hex::encode(&hasher.finalize()[..8]),
            parts: non_empty
                .iter()
                .flat_map(|p| p.parts.iter().cloned())
                .collect(),
        }
    }

    /// The shared parts, each in name order.
    pub fn parts(&self) -> &[Arc<Part>] {
        &self.parts
    }

    /// Every resource, part by part, each part in name order.
    pub fn items(&self) -> impl Iterator<Item = &NamedResource> {
        self.parts.iter().flat_map(|p| p.values())
    }

    pub fn get(&self, name: &str) -> Option<&NamedResource> {
        self.parts.iter().find_map(|p| p.get(name))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(|p| p.is_empty())
    }
}

/// The first 8 bytes of the SHA-256 of the resource's type and encoding.
fn content_version(body: &Any) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(body.type_url.as_bytes());
    hasher.update(body.value.as_slice());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Everything one proxy may subscribe to, by type URL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxySnapshot {
    types: BTreeMap<String, TypeResources>,
    /// A placeholder: the node's configuration has not been computed yet. Streams answer
    /// nothing until it is, so a proxy never initialises on an empty configuration.
    pending: bool,
}

impl ProxySnapshot {
    /// The placeholder a stream sees before its node's first snapshot is computed.
    pub fn pending() -> Self {
        Self {
            types: BTreeMap::new(),
            pending: true,
        }
    }

    pub fn is_pending(&self) -> bool {
        self.pending
    }

    pub fn with(mut self, type_url: &str, resources: TypeResources) -> Self {
        self.types.insert(type_url.to_owned(), resources);
        self
    }

    /// The resources of `type_url`; an unknown type has none (version "").
    pub fn get(&self, type_url: &str) -> Option<&TypeResources> {
        self.types.get(type_url)
    }
}
