//! What one proxy is sent: per xDS type, named resources with content-derived versions, so an
//! unchanged resource keeps its version across pushes and across `isthmusd` restarts.

use std::collections::BTreeMap;

use isthmus_api::envoy::google::protobuf::Any;
use sha2::{Digest, Sha256};

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Types whose empty subscription means "everything" (Envoy's wildcard LDS and CDS).
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

/// One resource, its version the hash of its encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedResource {
    pub name: String,
    pub version: String,
    pub body: Any,
}

/// Every resource of one type, and the type's version (a hash over names and versions).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeResources {
    pub version: String,
    pub items: BTreeMap<String, NamedResource>,
}

impl TypeResources {
    pub fn new(items: impl IntoIterator<Item = (String, Any)>) -> Self {
        let items: BTreeMap<String, NamedResource> = items
            .into_iter()
            .map(|(name, body)| {
                let version = short_hash(&[body.type_url.as_bytes(), &body.value]);
                (
                    name.clone(),
                    NamedResource {
                        name,
                        version,
                        body,
                    },
                )
            })
            .collect();
        let mut hasher = Sha256::new();
        for item in items.values() {
            hasher.update(item.name.as_bytes());
            hasher.update([0]);
            hasher.update(item.version.as_bytes());
        }
        let version = hex::encode(&hasher.finalize()[..8]);
        Self { version, items }
    }
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Everything one proxy may subscribe to, by type URL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxySnapshot {
    types: BTreeMap<String, TypeResources>,
}

impl ProxySnapshot {
    pub fn with(mut self, type_url: &str, resources: TypeResources) -> Self {
        self.types.insert(type_url.to_owned(), resources);
        self
    }

    /// The resources of `type_url`; an unknown type has none (version "").
    pub fn get(&self, type_url: &str) -> Option<&TypeResources> {
        self.types.get(type_url)
    }
}
