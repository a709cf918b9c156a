//! The Kubernetes configuration source: one kube-rs reflector (watch with list, relist after
//! `410 Gone`, backoff) per kind, and a task that rebuilds the [`ConfigSnapshot`] from their
//! stores after every burst of changes.
//!
//! Unlike the directory, where the user edits files and a bad edit keeps the last good whole,
//! the cluster's objects are independent: a bad object is skipped and reported (kind,
//! namespace, name, field path, in the log once and in the configuration status) and every
//! other object applies. The first snapshot is built only when every kind has been listed, so
//! a start never publishes a partial mesh.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesUnordered, SelectAll};
use futures::{FutureExt, StreamExt};
use isthmus_api::{Kind, Resource};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource as KubeResource};
use serde_json::{Map, Value, json};

use super::credentials::{SECRET_FIELD_SELECTOR, credentials, trim_secret};
use super::registry::{Pod, cluster_state};
use crate::config::directory::check_document;
use crate::config::snapshot::DEFAULT_NAMESPACE;
use crate::config::{ConfigError, ConfigSnapshot, ConfigStore, ResourceKey, SourceRef};

/// The Istio and Maistra kinds read from the API server: (kind, group, plural).
pub const CONFIG_KINDS: [(Kind, &str, &str); 11] = [
    (Kind::ServiceEntry, "networking.istio.io", "serviceentries"),
    (
        Kind::WorkloadEntry,
        "networking.istio.io",
        "workloadentries",
    ),
    (
        Kind::VirtualService,
        "networking.istio.io",
        "virtualservices",
    ),
    (
        Kind::DestinationRule,
        "networking.istio.io",
        "destinationrules",
    ),
    (Kind::Gateway, "networking.istio.io", "gateways"),
    (
        Kind::PeerAuthentication,
        "security.istio.io",
        "peerauthentications",
    ),
    (
        Kind::AuthorizationPolicy,
        "security.istio.io",
        "authorizationpolicies",
    ),
    (
        Kind::RequestAuthentication,
        "security.istio.io",
        "requestauthentications",
    ),
    (
        Kind::ServiceMeshPeer,
        "federation.maistra.io",
        "servicemeshpeers",
    ),
    (
        Kind::ExportedServiceSet,
        "federation.maistra.io",
        "exportedservicesets",
    ),
    (
        Kind::ImportedServiceSet,
        "federation.maistra.io",
        "importedservicesets",
    ),
];

/// The version of every kind that is watched (Istio's and Maistra's storage version).
const VERSION: &str = "v1";

/// How the Kubernetes source runs.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// The mesh's root namespace: federation resources and the peers' root `ConfigMap`s live
    /// there, so `ConfigMap`s are watched in it only.
    pub root_namespace: String,
    /// Quiet time after a change before the snapshot is rebuilt (a rollout is one rebuild).
    pub debounce: Duration,
    /// The longest a rebuild waits for a quiet moment under a steady stream of changes.
    pub max_delay: Duration,
    /// Istio's `discoverySelectors` (their `matchLabels`): when any is given, only namespaces
    /// whose labels match one of them (and the root namespace) are part of the mesh; their objects and services
    /// are read, the others' ignored. Empty: every namespace.
    pub discovery_selectors: Vec<BTreeMap<String, String>>,
}

impl Default for SourceSettings {
    fn default() -> Self {
        Self {
            root_namespace: crate::model::DEFAULT_ROOT_NAMESPACE.to_owned(),
            debounce: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            discovery_selectors: Vec::new(),
        }
    }
}

/// The stores the reflectors fill.
struct Stores {
    config: Vec<(Kind, ApiResource, Store<DynamicObject>)>,
    config_maps: Store<ConfigMap>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    secrets: Store<Secret>,
}

/// Starts one reflector per kind on `client` and returns the task that keeps `store` in step
/// with them; it runs until dropped. Nothing is published until every kind has been listed.
pub fn watch_cluster(
    client: Client,
    store: Arc<ConfigStore>,
    settings: SourceSettings,
) -> impl Future<Output = ()> + Send + 'static {
    let mut streams: SelectAll<BoxStream<'static, ()>> = SelectAll::new();
    let mut config = Vec::new();
    for (kind, group, plural) in CONFIG_KINDS {
        let resource = ApiResource {
            group: group.to_owned(),
            version: VERSION.to_owned(),
            api_version: format!("{group}/{VERSION}"),
            kind: kind.name().to_owned(),
            plural: plural.to_owned(),
        };
        let writer = Writer::new(resource.clone());
        let reader = writer.as_reader();
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        streams.push(reflect(writer, api, kind.name(), trim_custom));
        config.push((kind, resource, reader));
    }
    let stores = Stores {
        config,
        config_maps: typed(
            &mut streams,
            Api::namespaced(client.clone(), &settings.root_namespace),
            "ConfigMap",
            |m: &mut ConfigMap| trim_meta(&mut m.metadata),
        ),
        services: typed(
            &mut streams,
            Api::all(client.clone()),
            "Service",
            |s: &mut Service| {
                trim_meta(&mut s.metadata);
                s.status = None;
            },
        ),
        slices: typed(
            &mut streams,
            Api::all(client.clone()),
            "EndpointSlice",
            |s: &mut EndpointSlice| trim_meta(&mut s.metadata),
        ),
        pods: typed(&mut streams, Api::all(client.clone()), "Pod", trim_pod),
        secrets: {
            let writer = Writer::<Secret>::new(());
            let reader = writer.as_reader();
            let config = watcher::Config::default().fields(SECRET_FIELD_SELECTOR);
            streams.push(reflect_with(
                writer,
                Api::all(client.clone()),
                "Secret",
                trim_secret,
                config,
            ));
            reader
        },
        namespaces: typed(
            &mut streams,
            Api::all(client),
            "Namespace",
            |n: &mut Namespace| {
                trim_meta(&mut n.metadata);
                n.spec = None;
                n.status = None;
            },
        ),
    };
    run(stores, streams, store, settings)
}

/// A reflector for a typed kind: its store, its stream pushed on `streams`.
fn typed<K>(
    streams: &mut SelectAll<BoxStream<'static, ()>>,
    api: Api<K>,
    name: &'static str,
    trim: fn(&mut K),
) -> Store<K>
where
    K: KubeResource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let writer = Writer::<K>::new(());
    let reader = writer.as_reader();
    streams.push(reflect(writer, api, name, trim));
    reader
}

/// The reflector's stream, reduced to "something changed"; errors (a lost watch, a refused
/// list) are logged and retried with kube's default backoff. `410 Gone` makes the watcher
/// list again; the store swaps to the new list only when it is complete. `trim` drops what
/// the mesh never reads before an object is stored (a cluster's pods are many).
fn reflect<K>(
    writer: Writer<K>,
    api: Api<K>,
    name: &'static str,
    trim: fn(&mut K),
) -> BoxStream<'static, ()>
where
    K: KubeResource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    reflect_with(writer, api, name, trim, watcher::Config::default())
}

/// [`reflect`] with the watch's own configuration (a field selector).
fn reflect_with<K>(
    writer: Writer<K>,
    api: Api<K>,
    name: &'static str,
    trim: fn(&mut K),
    config: watcher::Config,
) -> BoxStream<'static, ()>
where
    K: KubeResource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let events = watcher(api, config).modify(trim);
    reflector::reflector(writer, events)
        .default_backoff()
        .filter_map(move |event| async move {
            match event {
                Ok(_) => Some(()),
                Err(e) => {
                    tracing::warn!(kind = name, "Kubernetes watch failed, retrying: {e}");
                    None
                }
            }
        })
        .boxed()
}

/// Server bookkeeping no conversion reads: field managers and annotations (among them
/// `kubectl`'s copy of the whole last-applied object).
fn trim_meta(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
}

/// A custom resource keeps its annotations (Istio reads some), except `kubectl`'s copy of
/// the object, but not its `status`.
fn trim_custom(object: &mut DynamicObject) {
    object.metadata.managed_fields = None;
    if let Some(annotations) = &mut object.metadata.annotations {
        // `kubectl apply`'s copy of the whole object.
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    if let Some(data) = object.data.as_object_mut() {
        data.remove("status");
    }
}

/// A Pod is decoded slim already ([`Pod`]); its metadata is trimmed too.
fn trim_pod(pod: &mut Pod) {
    trim_meta(&mut pod.metadata);
}

async fn run(
    stores: Stores,
    mut events: SelectAll<BoxStream<'static, ()>>,
    store: Arc<ConfigStore>,
    settings: SourceSettings,
) {
    let mut converted = Conversions::default();
    // Until every kind is listed, only drive the streams.
    let ready = all_ready(&stores).fuse();
    tokio::pin!(ready);
    loop {
        tokio::select! {
            result = &mut ready => {
                if result.is_err() {
                    return;
                }
                break;
            }
            event = events.next() => {
                if event.is_none() {
                    return;
                }
            }
        }
    }
    tracing::info!("every Kubernetes kind listed");
    publish(&stores, &store, &mut converted, &settings);
    while events.next().await.is_some() {
        // Settle: wait for a quiet `debounce`, at most `max_delay` in all.
        let deadline = tokio::time::Instant::now() + settings.max_delay;
        loop {
            match tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + settings.debounce),
                events.next(),
            )
            .await
            {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        publish(&stores, &store, &mut converted, &settings);
    }
}

/// Resolves once every kind has been listed; meanwhile, every 10 s, logs the kinds still
/// waiting (a missing CRD or a forbidden list shows there, with the watch errors above it).
async fn all_ready(stores: &Stores) -> Result<(), reflector::store::WriterDropped> {
    type Listed<'a> = BoxFuture<'a, (&'static str, Result<(), reflector::store::WriterDropped>)>;
    let mut pending: FuturesUnordered<Listed<'_>> = FuturesUnordered::new();
    for (kind, _, s) in &stores.config {
        let name = kind.name();
        pending.push(async move { (name, s.wait_until_ready().await) }.boxed());
    }
    pending.push(async { ("ConfigMap", stores.config_maps.wait_until_ready().await) }.boxed());
    pending.push(async { ("Service", stores.services.wait_until_ready().await) }.boxed());
    pending.push(async { ("EndpointSlice", stores.slices.wait_until_ready().await) }.boxed());
    pending.push(async { ("Pod", stores.pods.wait_until_ready().await) }.boxed());
    pending.push(async { ("Namespace", stores.namespaces.wait_until_ready().await) }.boxed());
    pending.push(async { ("Secret", stores.secrets.wait_until_ready().await) }.boxed());
    let mut waiting: Vec<&str> = CONFIG_KINDS
        .iter()
        .map(|(k, ..)| k.name())
        .chain([
            "ConfigMap",
            "Service",
            "EndpointSlice",
            "Pod",
            "Namespace",
            "Secret",
        ])
        .collect();
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    loop {
        tokio::select! {
            listed = pending.next() => match listed {
                Some((kind, result)) => {
                    result?;
                    waiting.retain(|k| *k != kind);
                }
                None => return Ok(()),
            },
            _ = report.tick() => {
                tracing::warn!(kinds = ?waiting, "not ready: still waiting for the first list of these kinds");
            }
        }
    }
}

/// Each object's conversion, kept while its `resourceVersion` stays, so that a change
/// re-validates only what changed.
#[derive(Default)]
struct Conversions {
    by_key: HashMap<ResourceKey, Converted>,
}

struct Converted {
    resource_version: Option<String>,
    result: Result<(Resource, SourceRef), Vec<ConfigError>>,
}

/// Rebuilds the snapshot from the stores and applies it with the skipped objects' problems.
fn publish(
    stores: &Stores,
    store: &ConfigStore,
    conversions: &mut Conversions,
    settings: &SourceSettings,
) {
    let scope = Scope::new(stores, settings);
    let mut assembly = Assembly {
        previous: std::mem::take(&mut conversions.by_key),
        next: HashMap::new(),
        resources: BTreeMap::new(),
        skipped: Vec::new(),
    };
    for (kind, api, reader) in &stores.config {
        for object in reader.state() {
            if !scope.contains(object.metadata.namespace.as_deref()) {
                continue;
            }
            let key = key_of(
                *kind,
                object.metadata.namespace.as_deref(),
                object.metadata.name.as_deref(),
            );
            let rv = object.metadata.resource_version.clone();
            assembly.take(key, rv, || convert_custom(&object, api, *kind));
        }
    }
    // Only the ConfigMaps that peers name hold configuration; the root namespace's others
    // (Istio's own, say) are none of the mesh's business.
    let named: HashSet<(String, String)> = assembly
        .resources
        .iter()
        .filter_map(|(key, (resource, _))| match resource {
            Resource::ServiceMeshPeer(peer) => peer
                .spec
                .security
                .certificate_chain
                .as_ref()
                .filter(|chain| chain.kind == "ConfigMap")
                .map(|chain| (key.namespace.clone(), chain.name.clone())),
            _ => None,
        })
        .collect();
    for map in stores.config_maps.state() {
        let named_by_a_peer = named.contains(&(
            map.metadata.namespace.clone().unwrap_or_default(),
            map.metadata.name.clone().unwrap_or_default(),
        ));
        if !named_by_a_peer {
            continue;
        }
        let key = key_of(
            Kind::ConfigMap,
            map.metadata.namespace.as_deref(),
            map.metadata.name.as_deref(),
        );
        let rv = map.metadata.resource_version.clone();
        assembly.take(key, rv, || convert_config_map(&map));
    }
    let Assembly {
        next,
        resources,
        skipped,
        ..
    } = assembly;
    conversions.by_key = next;
    let services = stores.services.state();
    let slices = stores.slices.state();
    let pods = stores.pods.state();
    let mut cluster = cluster_state(
        services
            .iter()
            .filter(|s| scope.contains(s.metadata.namespace.as_deref()))
            .map(AsRef::as_ref),
        slices
            .iter()
            .filter(|s| scope.contains(s.metadata.namespace.as_deref()))
            .map(AsRef::as_ref),
        pods.iter()
            .filter(|p| scope.contains(p.metadata.namespace.as_deref()))
            .map(AsRef::as_ref),
    );
    cluster.credentials = credentials(
        stores
            .secrets
            .state()
            .iter()
            .filter(|s| scope.contains(s.metadata.namespace.as_deref()))
            .map(AsRef::as_ref),
    );
    tracing::debug!(
        namespaces = stores.namespaces.state().len(),
        services = cluster.services.len(),
        pods = cluster.pods.len(),
        "Kubernetes registry rebuilt"
    );
    let snapshot = ConfigSnapshot::from_map(resources).with_cluster(Arc::new(cluster));
    store.apply_partial(snapshot, skipped);
}

/// The namespaces of the mesh: all, or those the discovery selectors pick plus the root.
/// (Also the namespaces `root_publisher.rs` publishes the mesh root in.)
pub(crate) struct Scope {
    namespaces: Option<HashSet<String>>,
}

impl Scope {
    fn new(stores: &Stores, settings: &SourceSettings) -> Self {
        Self::of(
            &stores.namespaces.state(),
            &settings.discovery_selectors,
            &settings.root_namespace,
        )
    }

    /// The scope among `namespaces` that `selectors` (Istio's `discoverySelectors`; none: every
    /// namespace) and the root namespace make.
    pub(crate) fn of(
        namespaces: &[Arc<Namespace>],
        selectors: &[BTreeMap<String, String>],
        root_namespace: &str,
    ) -> Self {
        if selectors.is_empty() {
            return Self { namespaces: None };
        }
        let mut namespaces: HashSet<String> = namespaces
            .iter()
            .filter(|ns| {
                let labels = ns.metadata.labels.clone().unwrap_or_default();
                selected(selectors, &labels)
            })
            .filter_map(|ns| ns.metadata.name.clone())
            .collect();
        namespaces.insert(root_namespace.to_owned());
        Self {
            namespaces: Some(namespaces),
        }
    }

    /// Whether objects of `namespace` (`None`: cluster-scoped) are part of the mesh.
    pub(crate) fn contains(&self, namespace: Option<&str>) -> bool {
        match (&self.namespaces, namespace) {
            (None, _) => true,
            (Some(set), Some(ns)) => set.contains(ns),
            (Some(_), None) => true,
        }
    }
}

/// Whether `labels` match any selector (each a set of `key=value` that must all hold).
fn selected(selectors: &[BTreeMap<String, String>], labels: &BTreeMap<String, String>) -> bool {
    selectors
        .iter()
        .any(|selector| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Parses one selector, `key=value[,key=value…]` (as `kubectl -l` writes equality selectors).
pub fn parse_selector(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(',')
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not key=value"))?;
            let (k, v) = (k.trim(), v.trim().trim_start_matches('='));
            // Label keys and values: `[prefix/]name` of alphanumerics, `-`, `_`, `.`; anything
            // else is another operator (`!=`, `in`), which this flag does not take.
            let label = |t: &str, slash: bool| {
                t.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || (slash && c == '/')
                })
            };
            if k.is_empty() || !label(k, true) || !label(v, false) {
                return Err(format!(
                    "{pair:?}: only key=value selectors are supported (Istio's matchLabels)"
                ));
            }
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// One rebuild's progress: conversions reused or made, the valid resources, the problems.
struct Assembly {
    previous: HashMap<ResourceKey, Converted>,
    next: HashMap<ResourceKey, Converted>,
    resources: BTreeMap<ResourceKey, (Resource, SourceRef)>,
    skipped: Vec<ConfigError>,
}

impl Assembly {
    /// Adds the object at `key`: its previous conversion if its `resourceVersion` is the
    /// same, else `convert`'s (a new problem is logged once, here).
    fn take(
        &mut self,
        key: ResourceKey,
        resource_version: Option<String>,
        convert: impl FnOnce() -> Result<(Resource, SourceRef), Vec<ConfigError>>,
    ) {
        let converted = match self.previous.remove(&key) {
            Some(c) if resource_version.is_some() && c.resource_version == resource_version => c,
            _ => {
                let result = convert();
                if let Err(errors) = &result {
                    for e in errors {
                        tracing::warn!("skipped, the other objects apply: {e}");
                    }
                }
                Converted {
                    resource_version,
                    result,
                }
            }
        };
        match &converted.result {
            Ok((resource, source)) => {
                self.resources
                    .insert(key.clone(), (resource.clone(), source.clone()));
            }
            Err(errors) => self.skipped.extend(errors.iter().cloned()),
        }
        self.next.insert(key, converted);
    }
}

fn key_of(kind: Kind, namespace: Option<&str>, name: Option<&str>) -> ResourceKey {
    ResourceKey {
        kind,
        namespace: namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned(),
        name: name.unwrap_or_default().to_owned(),
    }
}

/// The API path of an object: where it came from, in errors.
fn api_path(group: &str, plural: &str, namespace: Option<&str>, name: Option<&str>) -> PathBuf {
    let base = if group.is_empty() {
        format!("/api/{VERSION}")
    } else {
        format!("/apis/{group}/{VERSION}")
    };
    let namespace = namespace
        .map(|ns| format!("/namespaces/{ns}"))
        .unwrap_or_default();
    PathBuf::from(format!(
        "{base}{namespace}/{plural}/{}",
        name.unwrap_or_default()
    ))
}

/// The document a user would have applied: type, identifying metadata and `spec`; the
/// server's bookkeeping and `status` (ours, written back) are not configuration.
fn convert_custom(
    object: &DynamicObject,
    api: &ApiResource,
    kind: Kind,
) -> Result<(Resource, SourceRef), Vec<ConfigError>> {
    let mut document = Map::new();
    document.insert("apiVersion".into(), json!(api.api_version));
    document.insert("kind".into(), json!(api.kind));
    document.insert("metadata".into(), metadata(&object.metadata));
    if let Some(spec) = object.data.get("spec") {
        document.insert("spec".into(), spec.clone());
    }
    let namespace = object.metadata.namespace.as_deref();
    let name = object.metadata.name.as_deref();
    let source = SourceRef {
        file: api_path(&api.group, &api.plural, namespace, name),
        document: 0,
        line: 0,
    };
    check(Value::Object(document), source, kind, namespace, name)
}

fn convert_config_map(map: &ConfigMap) -> Result<(Resource, SourceRef), Vec<ConfigError>> {
    let mut document = Map::new();
    document.insert("apiVersion".into(), json!("v1"));
    document.insert("kind".into(), json!("ConfigMap"));
    document.insert("metadata".into(), metadata(&map.metadata));
    if let Some(data) = &map.data {
        document.insert("data".into(), json!(data));
    }
    if let Some(binary) = &map.binary_data {
        document.insert("binaryData".into(), json!(binary));
    }
    let namespace = map.metadata.namespace.as_deref();
    let name = map.metadata.name.as_deref();
    let source = SourceRef {
        file: api_path("", "configmaps", namespace, name),
        document: 0,
        line: 0,
    };
    check(
        Value::Object(document),
        source,
        Kind::ConfigMap,
        namespace,
        name,
    )
}

fn metadata(meta: &kube::api::ObjectMeta) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), json!(meta.name));
    if let Some(ns) = &meta.namespace {
        out.insert("namespace".into(), json!(ns));
    }
    if let Some(labels) = &meta.labels {
        out.insert("labels".into(), json!(labels));
    }
    if let Some(annotations) = &meta.annotations {
        out.insert("annotations".into(), json!(annotations));
    }
    Value::Object(out)
}

/// Validates `document`; every problem names the object as `Kind namespace/name`.
fn check(
    document: Value,
    source: SourceRef,
    kind: Kind,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<(Resource, SourceRef), Vec<ConfigError>> {
    match check_document(document, &source) {
        Ok(resource) => Ok((resource, source)),
        Err(mut errors) => {
            let object = format!(
                "{} {}/{}",
                kind.name(),
                namespace.unwrap_or(DEFAULT_NAMESPACE),
                name.unwrap_or_default()
            );
            for e in &mut errors {
                e.resource = Some(object.clone());
            }
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_object_is_reported_by_kind_namespace_name_and_field() {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "bookinfo", "resourceVersion": "7",
                         "uid": "u", "managedFields": []},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}, "weight": "x"}]}]},
            "status": {"anything": true}
        }))
        .unwrap();
        let api = ApiResource {
            group: "networking.istio.io".into(),
            version: "v1".into(),
            api_version: "networking.istio.io/v1".into(),
            kind: "VirtualService".into(),
            plural: "virtualservices".into(),
        };
        let errors = convert_custom(&object, &api, Kind::VirtualService).unwrap_err();
        let text = errors[0].to_string();
        assert!(
            text.starts_with(
                "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices/reviews: VirtualService bookinfo/reviews: spec.http[0].route[0].weight"
            ),
            "{text}"
        );
    }

    #[test]
    fn discovery_selectors_are_equality_label_sets_any_of_which_selects() {
        let selector = parse_selector("istio-discovery=enabled, team=shop").unwrap();
        assert_eq!(selector.len(), 2);
        assert!(parse_selector("nope").is_err());
        assert!(parse_selector("env!=prod").is_err());
        assert!(parse_selector("env in (a,b)").is_err());
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        let selectors = vec![selector, parse_selector("env=prod").unwrap()];
        assert!(selected(&selectors, &labels(&[("env", "prod")])));
        assert!(selected(
            &selectors,
            &labels(&[("istio-discovery", "enabled"), ("team", "shop")])
        ));
        assert!(!selected(
            &selectors,
            &labels(&[("istio-discovery", "enabled")])
        ));
    }

    #[test]
    fn server_bookkeeping_and_status_are_not_configuration() {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "federation.maistra.io/v1",
            "kind": "ImportedServiceSet",
            "metadata": {"name": "green", "namespace": "istio-system", "resourceVersion": "9",
                         "uid": "u", "generation": 2, "creationTimestamp": "2026-01-01T00:00:00Z",
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"importRules": [{"type": "NameSelector", "nameSelector": {"namespace": "bookinfo", "name": "ratings"}}]},
            "status": {"importedServices": []}
        }))
        .unwrap();
        let api = ApiResource {
            group: "federation.maistra.io".into(),
            version: "v1".into(),
            api_version: "federation.maistra.io/v1".into(),
            kind: "ImportedServiceSet".into(),
            plural: "importedservicesets".into(),
        };
        let (resource, source) = convert_custom(&object, &api, Kind::ImportedServiceSet).unwrap();
        assert_eq!(resource.kind(), Kind::ImportedServiceSet);
        assert_eq!(
            source.to_string(),
            "/apis/federation.maistra.io/v1/namespaces/istio-system/importedservicesets/green"
        );
    }
}
