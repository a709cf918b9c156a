//! A complete, valid configuration: every resource, keyed by kind, namespace and name, with the
//! place it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use isthmus_api::{Kind, Resource, TypedResource};

use super::cluster::ClusterState;

/// Namespace of resources whose metadata names none (as `kubectl apply` does).
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind.name(), self.namespace, self.name)
    }
}

/// Where a resource was read from: a file's document, or (document 0) an object of the
/// Kubernetes API, `file` being its API path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    pub file: PathBuf,
    pub document: usize,
    pub line: u64,
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.document == 0 {
            return write!(f, "{}", self.file.display());
        }
        write!(
            f,
            "{}:{} (document {})",
            self.file.display(),
            self.line,
            self.document
        )
    }
}

/// The configuration in force. Built whole and replaced whole, never edited in place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSnapshot {
    /// Shared with the directory loader's cache of parsed documents (a document that did not
    /// change is the same resource, not a copy).
    resources: BTreeMap<ResourceKey, (Arc<Resource>, SourceRef)>,
    /// Kubernetes `Service`s, their endpoints and `Pod`s (Kubernetes mode only).
    cluster: Arc<ClusterState>,
}

impl ConfigSnapshot {
    pub(crate) fn from_map(resources: BTreeMap<ResourceKey, (Resource, SourceRef)>) -> Self {
        Self::from_shared(
            resources
                .into_iter()
                .map(|(k, (r, s))| (k, (Arc::new(r), s)))
                .collect(),
        )
    }

    pub(crate) fn from_shared(
        resources: BTreeMap<ResourceKey, (Arc<Resource>, SourceRef)>,
    ) -> Self {
        Self {
            resources,
            cluster: Arc::default(),
        }
    }

    /// The snapshot with the cluster's services and pods.
    pub fn with_cluster(mut self, cluster: Arc<ClusterState>) -> Self {
        self.cluster = cluster;
        self
    }

    /// Kubernetes `Service`s and `Pod`s; empty in directory mode.
    pub fn cluster(&self) -> &ClusterState {
        &self.cluster
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    pub fn get(&self, key: &ResourceKey) -> Option<&Resource> {
        self.resources.get(key).map(|(r, _)| &**r)
    }

    /// Every resource with its key and origin, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&ResourceKey, &Resource, &SourceRef)> {
        self.resources.iter().map(|(k, (r, s))| (k, &**r, s))
    }

    /// Resources of one kind (a range of the map: keys sort by kind first).
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = (&ResourceKey, &Resource)> {
        let from = ResourceKey {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        self.resources
            .range(from..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(k, (r, _))| (k, &**r))
    }

    /// The resources of type `T` (one kind), typed, in key order.
    pub fn of_type<'a, T: TypedResource + 'a>(
        &'a self,
    ) -> impl Iterator<Item = (&'a ResourceKey, &'a T)> {
        self.of_kind(T::KIND)
            .filter_map(|(k, r)| Some((k, T::from_resource(r)?)))
    }

    /// How many resources of each kind.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for key in self.resources.keys() {
            *counts.entry(key.kind.name()).or_default() += 1;
        }
        counts
    }
}
