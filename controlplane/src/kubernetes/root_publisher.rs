//! The mesh root in every namespace of the mesh, as istiod publishes `istio-ca-root-cert`: the
//! [`super::leader`] Lease holder keeps a `ConfigMap` [`ROOT_CERT_CONFIG_MAP`] with the key
//! [`ROOT_CERT_KEY`] holding the mesh root PEM in each namespace that is part of the mesh (every
//! namespace, or those the discovery selectors pick plus the root namespace: the configuration
//! source's `Scope`). Injected sidecars and the gateways mount it from their own namespace
//! to trust `isthmusd`.
//!
//! - While this replica leads, it watches `Namespace`s and the `ConfigMap`s of that name in
//!   every namespace (field selector `metadata.name`); after the first list of both, and after
//!   every burst of changes, it compares and writes:
//!   - a namespace without the `ConfigMap` gets one (label [`MANAGED_BY_LABEL`]:
//!     [`MANAGED_BY`]);
//!   - a `ConfigMap` whose [`ROOT_CERT_KEY`] differs (or that lacks the label) is replaced
//!     with the `resourceVersion` read, its other keys, labels and annotations kept;
//!   - a `ConfigMap` that is deleted is created again.
//! - Skipped: namespaces being deleted (`deletionTimestamp`, phase `Terminating`: the API
//!   server refuses new objects there), Kubernetes' own ([`IGNORED_NAMESPACES`], as Istio
//!   skips them), an immutable `ConfigMap` (logged once).
//! - A write that loses a race (`409`, or `404`/`403` because the namespace went away) is not
//!   an error: the watch brings the newer state and the comparison runs again. Other errors
//!   are logged and retried after a backoff. A namespace just written is not written again
//!   until the watch shows the write (no double create while the event is on its way).
//! - When leadership is lost, the watches are dropped; a new leader lists again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use isthmus_runtime::backoff::Backoff;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

use super::leader::until_leading;
use super::source::Scope;

/// The `ConfigMap` holding the mesh root in each namespace.
pub const ROOT_CERT_CONFIG_MAP: &str = "isthmus-ca-root-cert";

/// Its key: the mesh root PEM (the name Istio and Maistra use).
pub const ROOT_CERT_KEY: &str = "root-cert.pem";

/// The label `isthmusd` sets on the `ConfigMap`s it keeps.
pub const MANAGED_BY_LABEL: &str = "isthmus.io/managed-by";

/// [`MANAGED_BY_LABEL`]'s value.
pub const MANAGED_BY: &str = "isthmusd";

/// Namespaces that never get the root: Kubernetes' own (Istio's `IgnoredNamespaces`).
pub const IGNORED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// Which namespaces get the root, and the publisher's pace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootPublisherSettings {
    /// The mesh's root namespace: always part of the mesh.
    pub root_namespace: String,
    /// Istio's `discoverySelectors`, as the configuration source has them (empty: every
    /// namespace).
    pub discovery_selectors: Vec<BTreeMap<String, String>>,
    /// Quiet time after a change before comparing (a burst is one pass).
    pub debounce: Duration,
    /// Each API call's limit.
    pub request_timeout: Duration,
    /// Backoff after a pass with failed writes.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl RootPublisherSettings {
    /// Every namespace of the mesh that `root_namespace` and `discovery_selectors` make, with
    /// the default pace.
    pub fn new(
        root_namespace: impl Into<String>,
        discovery_selectors: Vec<BTreeMap<String, String>>,
    ) -> Self {
        Self {
            root_namespace: root_namespace.into(),
            discovery_selectors,
            debounce: Duration::from_millis(100),
            request_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// One write a pass makes.
#[derive(Debug, Clone, PartialEq)]
enum Write {
    /// A new `ConfigMap` in a namespace that has none.
    Create(ConfigMap),
    /// The stored `ConfigMap`, with the root and the label set (its `resourceVersion` kept).
    Update(ConfigMap),
}

impl Write {
    fn config_map(&self) -> &ConfigMap {
        match self {
            Self::Create(map) | Self::Update(map) => map,
        }
    }

    fn namespace(&self) -> &str {
        self.config_map()
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default()
    }
}

/// What a pass finds.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    writes: Vec<Write>,
    /// Namespaces whose `ConfigMap` differs but is immutable.
    immutable: Vec<String>,
}

/// Whether a namespace is being deleted.
fn terminating(namespace: &Namespace) -> bool {
    namespace.metadata.deletion_timestamp.is_some()
        || namespace
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|phase| phase == "Terminating")
}

/// The writes that make every namespace of the mesh hold `root_pem`: pure, from the watched
/// `namespaces` and `config_maps` (those named [`ROOT_CERT_CONFIG_MAP`]).
fn plan(
    namespaces: &[Arc<Namespace>],
    config_maps: &[Arc<ConfigMap>],
    settings: &RootPublisherSettings,
    root_pem: &str,
) -> Plan {
    let scope = Scope::of(
        namespaces,
        &settings.discovery_selectors,
        &settings.root_namespace,
    );
    let existing: HashMap<&str, &ConfigMap> = config_maps
        .iter()
        .filter(|m| m.metadata.name.as_deref() == Some(ROOT_CERT_CONFIG_MAP))
        .filter_map(|m| Some((m.metadata.namespace.as_deref()?, m.as_ref())))
        .collect();
    let mut out = Plan::default();
    let mut names: Vec<&str> = namespaces
        .iter()
        .filter(|ns| !terminating(ns))
        .filter_map(|ns| ns.metadata.name.as_deref())
        .filter(|name| !IGNORED_NAMESPACES.contains(name) && scope.contains(Some(name)))
        .collect();
    names.sort_unstable();
    for namespace in names {
        match existing.get(namespace) {
            None => out
                .writes
                .push(Write::Create(new_config_map(namespace, root_pem))),
            // Going away: created again once it is gone.
            Some(map) if map.metadata.deletion_timestamp.is_some() => {}
            Some(map) => match updated(map, root_pem) {
                None => {}
                Some(_) if map.immutable == Some(true) => out.immutable.push(namespace.to_owned()),
                Some(next) => out.writes.push(Write::Update(next)),
            },
        }
    }
    out
}

/// The `ConfigMap` a namespace without one gets.
fn new_config_map(namespace: &str, root_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CERT_CONFIG_MAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_CERT_KEY.to_owned(),
            root_pem.to_owned(),
        )])),
        ..ConfigMap::default()
    }
}

/// `map` with the root and the label set, if either differs; everything else kept.
fn updated(map: &ConfigMap, root_pem: &str) -> Option<ConfigMap> {
    let current = map
        .data
        .as_ref()
        .and_then(|d| d.get(ROOT_CERT_KEY))
        .is_some_and(|pem| pem == root_pem)
        && map
            .binary_data
            .as_ref()
            .is_none_or(|b| !b.contains_key(ROOT_CERT_KEY));
    let labelled = map
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY);
    if current && labelled {
        return None;
    }
    let mut next = map.clone();
    // The server keeps the field managers.
    next.metadata.managed_fields = None;
    next.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
    next.data
        .get_or_insert_with(BTreeMap::new)
        .insert(ROOT_CERT_KEY.to_owned(), root_pem.to_owned());
    // A key is in `data` or `binaryData`, never both.
    if let Some(binary) = &mut next.binary_data {
        binary.remove(ROOT_CERT_KEY);
    }
    Some(next)
}

/// Keeps the root `ConfigMap` in every namespace of the mesh while `leader` is `true`. Runs
/// until the `leader` watch closes.
pub async fn publish_root_cert(
    client: Client,
    settings: RootPublisherSettings,
    root_pem: String,
    mut leader: watch::Receiver<bool>,
) {
    let mut publisher = Publisher {
        client,
        settings,
        root_pem,
        recent: HashMap::new(),
        immutable_reported: HashSet::new(),
    };
    loop {
        if !until_leading(&mut leader).await {
            break;
        }
        tracing::debug!("leading: publishing the mesh root ConfigMap");
        if publisher.lead(&mut leader).await.is_err() {
            break;
        }
    }
    tracing::info!("leader election stopped; mesh root publisher ends");
}

/// The election stopped.
struct Stopped;

/// A namespace just written: the `resourceVersion` its `ConfigMap` had then (`None`: it had
/// none), and when.
type Recent = HashMap<String, (Option<String>, Instant)>;

/// How long a write waits for the watch to show it before the namespace is compared again
/// regardless (a pass is due then).
const WRITE_SETTLES: Duration = Duration::from_secs(2);

struct Publisher {
    client: Client,
    settings: RootPublisherSettings,
    root_pem: String,
    recent: Recent,
    immutable_reported: HashSet<String>,
}

/// What one pass did.
#[derive(Debug, Default)]
struct Pass {
    created: usize,
    updated: usize,
    failures: Vec<String>,
    /// A namespace was left for its write to show: compare again by then.
    recheck_at: Option<Instant>,
}

impl Publisher {
    /// Watches and writes while leading; `Ok` when leadership is lost.
    async fn lead(&mut self, leader: &mut watch::Receiver<bool>) -> Result<(), Stopped> {
        let namespace_writer = Writer::<Namespace>::new(());
        let namespaces = namespace_writer.as_reader();
        let map_writer = Writer::<ConfigMap>::new(());
        let maps = map_writer.as_reader();
        let namespace_events = reflector::reflector(
            namespace_writer,
            watcher(
                Api::<Namespace>::all(self.client.clone()),
                watcher::Config::default(),
            )
            .modify(trim_namespace),
        )
        .default_backoff()
        .map(|event| event.map(drop).map_err(|e| ("Namespace", e)));
        let map_events = reflector::reflector(
            map_writer,
            watcher(
                Api::<ConfigMap>::all(self.client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={ROOT_CERT_CONFIG_MAP}")),
            )
            .modify(|m: &mut ConfigMap| m.metadata.managed_fields = None),
        )
        .default_backoff()
        .map(|event| event.map(drop).map_err(|e| ("ConfigMap", e)));
        let mut events = futures::stream::select(namespace_events.boxed(), map_events.boxed());
        let mut backoff = Backoff::new(self.settings.backoff_base, self.settings.backoff_max);
        // When the next pass runs; whether it is a retry after failures.
        let mut next: Option<Instant> = None;
        let mut failing = false;
        loop {
            tokio::select! {
                changed = leader.changed() => {
                    if changed.is_err() {
                        return Err(Stopped);
                    }
                    if !*leader.borrow_and_update() {
                        tracing::debug!("no longer leading: the mesh root publisher waits");
                        return Ok(());
                    }
                }
                event = events.next() => match event {
                    None => return Ok(()),
                    Some(Err((kind, e))) => {
                        tracing::warn!(kind, "mesh root publisher: Kubernetes watch failed, retrying: {e}");
                    }
                    Some(Ok(())) => {
                        if !failing && listed(&namespaces) && listed(&maps) {
                            let at = Instant::now() + self.settings.debounce;
                            next = Some(next.map_or(at, |n| n.min(at)));
                        }
                    }
                },
                () = sleep_until(next) => {
                    next = None;
                    let pass = self.pass(&namespaces, &maps, leader).await;
                    if pass.created + pass.updated > 0 {
                        tracing::info!(
                            created = pass.created,
                            updated = pass.updated,
                            config_map = ROOT_CERT_CONFIG_MAP,
                            "published the mesh root"
                        );
                    }
                    failing = !pass.failures.is_empty();
                    if let Some(at) = pass.recheck_at.filter(|_| !failing) {
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                    if failing {
                        let delay = backoff.next_delay();
                        tracing::warn!(
                            failed = pass.failures.len(),
                            first = %pass.failures[0],
                            retry_in = ?delay,
                            "cannot publish the mesh root ConfigMap in some namespaces"
                        );
                        next = Some(Instant::now() + delay);
                    } else {
                        backoff.reset();
                    }
                }
            }
        }
    }

    /// Compares and writes what differs, one call at a time, while leading.
    async fn pass(
        &mut self,
        namespaces: &Store<Namespace>,
        maps: &Store<ConfigMap>,
        leader: &watch::Receiver<bool>,
    ) -> Pass {
        let stored = maps.state();
        let plan = plan(&namespaces.state(), &stored, &self.settings, &self.root_pem);
        for namespace in plan.immutable {
            if self.immutable_reported.insert(namespace.clone()) {
                tracing::warn!(
                    %namespace,
                    config_map = ROOT_CERT_CONFIG_MAP,
                    "the ConfigMap is immutable and does not hold the mesh root; delete it and it is created again"
                );
            }
        }
        let version: HashMap<&str, Option<&str>> = stored
            .iter()
            .filter_map(|m| {
                Some((
                    m.metadata.namespace.as_deref()?,
                    m.metadata.resource_version.as_deref(),
                ))
            })
            .collect();
        // A write is shown once the stored version moved from the one it replaced.
        self.recent.retain(|namespace, (before, at)| {
            at.elapsed() < WRITE_SETTLES
                && version.get(namespace.as_str()).copied().flatten() == before.as_deref()
        });
        let mut pass = Pass::default();
        for write in plan.writes {
            if !*leader.borrow() {
                break;
            }
            let namespace = write.namespace().to_owned();
            let seen = version.get(namespace.as_str()).copied().flatten();
            if let Some((_, at)) = self.recent.get(&namespace) {
                // Our write of it is still on its way to the watch.
                let due = *at + WRITE_SETTLES;
                pass.recheck_at = Some(pass.recheck_at.map_or(due, |r| r.min(due)));
                continue;
            }
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &namespace);
            let params = PostParams::default();
            let (call, created) = match &write {
                Write::Create(map) => (api.create(&params, map).boxed(), true),
                Write::Update(map) => (
                    api.replace(ROOT_CERT_CONFIG_MAP, &params, map).boxed(),
                    false,
                ),
            };
            match tokio::time::timeout(self.settings.request_timeout, call).await {
                Ok(Ok(_)) => {
                    tracing::debug!(%namespace, created, "mesh root ConfigMap written");
                    self.recent
                        .insert(namespace, (seen.map(str::to_owned), Instant::now()));
                    if created {
                        pass.created += 1;
                    } else {
                        pass.updated += 1;
                    }
                }
                Ok(Err(kube::Error::Api(status))) if lost_race(&status) => {
                    tracing::debug!(%namespace, reason = %status.reason, "mesh root ConfigMap changed meanwhile; the watch brings it");
                }
                Ok(Err(e)) => pass.failures.push(format!("{namespace}: {e}")),
                Err(_) => pass.failures.push(format!(
                    "{namespace}: no answer in {:?}",
                    self.settings.request_timeout
                )),
            }
        }
        pass
    }
}

/// A write refused because the cluster changed under it: the `ConfigMap` was created, changed
/// or deleted meanwhile, or its namespace is gone or going.
fn lost_race(status: &kube::core::Status) -> bool {
    status.is_already_exists()
        || status.is_conflict()
        || status.is_not_found()
        || (status.is_forbidden() && status.message.contains("being terminated"))
}

/// Whether a reflector's store has its first complete list.
fn listed<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|ready| ready.is_ok())
}

/// A namespace as the publisher reads it: name, labels, deletion.
fn trim_namespace(namespace: &mut Namespace) {
    namespace.metadata.managed_fields = None;
    namespace.metadata.annotations = None;
    namespace.spec = None;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NamespaceStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----\n";

    fn namespace(name: &str, labels: &[(&str, &str)]) -> Arc<Namespace> {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Arc::new(Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        })
    }

    fn config_map(namespace: &str, value: serde_json::Value) -> Arc<ConfigMap> {
        let mut value = value;
        value["metadata"]["name"] = json!(ROOT_CERT_CONFIG_MAP);
        value["metadata"]["namespace"] = json!(namespace);
        value["metadata"]["resourceVersion"] = json!("7");
        Arc::new(serde_json::from_value(value).unwrap())
    }

    fn targets(plan: &Plan) -> Vec<(&'static str, &str)> {
        plan.writes
            .iter()
            .map(|w| match w {
                Write::Create(_) => ("create", w.namespace()),
                Write::Update(_) => ("update", w.namespace()),
            })
            .collect()
    }

    #[test]
    fn missing_and_stale_config_maps_are_written_current_ones_left_alone() {
        let mut leaving = (*namespace("leaving", &[])).clone();
        leaving.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let mut terminating = (*namespace("terminating", &[])).clone();
        terminating.status = Some(NamespaceStatus {
            phase: Some("Terminating".into()),
            ..NamespaceStatus::default()
        });
        let namespaces = vec![
            namespace("bookinfo", &[]),
            namespace("shop", &[]),
            namespace("current", &[]),
            namespace("unlabelled", &[]),
            namespace("kube-system", &[]),
            Arc::new(leaving),
            Arc::new(terminating),
        ];
        let labels = json!({MANAGED_BY_LABEL: MANAGED_BY});
        let maps = vec![
            config_map(
                "shop",
                json!({"metadata": {"labels": {"team": "shop"}, "annotations": {"note": "kept"}},
                       "data": {ROOT_CERT_KEY: "old", "extra": "kept"}}),
            ),
            config_map(
                "current",
                json!({"metadata": {"labels": labels}, "data": {ROOT_CERT_KEY: PEM}}),
            ),
            config_map("unlabelled", json!({"data": {ROOT_CERT_KEY: PEM}})),
            // Not ours: another name in the same namespace.
            Arc::new(
                serde_json::from_value(
                    json!({"metadata": {"name": "other", "namespace": "bookinfo"}}),
                )
                .unwrap(),
            ),
        ];
        let settings = RootPublisherSettings::new("istio-system", Vec::new());
        let plan = plan(&namespaces, &maps, &settings, PEM);
        assert_eq!(
            targets(&plan),
            [
                ("create", "bookinfo"),
                ("update", "shop"),
                ("update", "unlabelled")
            ]
        );
        let Write::Create(created) = &plan.writes[0] else {
            panic!("{plan:?}")
        };
        assert_eq!(
            serde_json::to_value(created).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": ROOT_CERT_CONFIG_MAP, "namespace": "bookinfo", "labels": labels},
                   "data": {ROOT_CERT_KEY: PEM}})
        );
        // The update keeps the other keys, labels, annotations and the resourceVersion read.
        let shop = serde_json::to_value(plan.writes[1].config_map()).unwrap();
        assert_eq!(shop["data"], json!({ROOT_CERT_KEY: PEM, "extra": "kept"}));
        assert_eq!(
            shop["metadata"]["labels"],
            json!({"team": "shop", MANAGED_BY_LABEL: MANAGED_BY})
        );
        assert_eq!(shop["metadata"]["annotations"], json!({"note": "kept"}));
        assert_eq!(shop["metadata"]["resourceVersion"], "7");
        assert!(plan.immutable.is_empty());
    }

    #[test]
    fn discovery_selectors_pick_the_namespaces_and_the_root_namespace_is_always_one() {
        let namespaces = vec![
            namespace("istio-system", &[]),
            namespace("shop", &[("istio-discovery", "enabled")]),
            namespace("legacy", &[]),
        ];
        let selector = BTreeMap::from([("istio-discovery".to_owned(), "enabled".to_owned())]);
        let settings = RootPublisherSettings::new("istio-system", vec![selector]);
        let plan = plan(&namespaces, &[], &settings, PEM);
        assert_eq!(
            targets(&plan),
            [("create", "istio-system"), ("create", "shop")]
        );
    }

    #[test]
    fn an_immutable_config_map_is_reported_and_a_deleted_one_waited_for() {
        let namespaces = vec![namespace("frozen", &[]), namespace("going", &[])];
        let maps = vec![
            config_map(
                "frozen",
                json!({"immutable": true, "data": {ROOT_CERT_KEY: "old"}}),
            ),
            config_map(
                "going",
                json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["x"]},
                       "data": {ROOT_CERT_KEY: "old"}}),
            ),
        ];
        let settings = RootPublisherSettings::new("istio-system", Vec::new());
        let plan = plan(&namespaces, &maps, &settings, PEM);
        assert!(plan.writes.is_empty(), "{plan:?}");
        assert_eq!(plan.immutable, ["frozen"]);
    }

    #[test]
    fn the_root_moves_out_of_binary_data() {
        let map = config_map(
            "shop",
            json!({"binaryData": {ROOT_CERT_KEY: "b2xk", "logo": "eA=="}}),
        );
        let next = updated(&map, PEM).unwrap();
        assert_eq!(
            next.data.unwrap().get(ROOT_CERT_KEY).map(String::as_str),
            Some(PEM)
        );
        assert_eq!(
            next.binary_data.unwrap().keys().collect::<Vec<_>>(),
            ["logo"]
        );
    }

    #[test]
    fn races_are_not_errors() {
        let status = |code: u16, reason: &str, message: &str| {
            kube::core::Status::failure(message, reason).with_code(code)
        };
        assert!(lost_race(&status(409, "AlreadyExists", "exists")));
        assert!(lost_race(&status(409, "Conflict", "modified")));
        assert!(lost_race(&status(
            404,
            "NotFound",
            "namespaces \"x\" not found"
        )));
        assert!(lost_race(&status(
            403,
            "Forbidden",
            "unable to create new content in namespace x because it is being terminated"
        )));
        assert!(!lost_race(&status(
            403,
            "Forbidden",
            "configmaps is forbidden: User cannot create resource"
        )));
        assert!(!lost_race(&status(500, "InternalError", "etcd")));
    }
}
