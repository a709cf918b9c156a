//! The status of the federation resources, in Maistra's shapes, computed from the model, the
//! importers and the exporter's streams:
//!
//! - `ServiceMeshPeer`: `discoveryStatus.active[0]` with `pod` (this `isthmusd`), `remotes`
//!   (the peer's control planes watching our exports) and `watch` (our stream to the peer);
//! - `ExportedServiceSet`: `exportedServices`, each `exportedName` with its `localService`;
//! - `ImportedServiceSet`: `importedServices`, each name the peer exports with the
//!   `localService` it became; an exported-but-not-imported name has no `localService` and a
//!   `reason`. `unmatchedRules` names the rules that select nothing the peer exports
//!   (imported but not exported).
//!
//! Every resource's warnings are included, and one `Ready` condition in Kubernetes' shape
//! (`type`, `status`, `reason`, `message`, `lastTransitionTime`) saying why it does not work:
//!
//! | resource | `False` reasons (first that applies) | `True` reason |
//! |---|---|---|
//! | `ServiceMeshPeer` | `Ignored` (not in the control plane's namespace, trust domain or `controlPlaneID` unusable), `RootMissing` (no `certificateChain`, no such `ConfigMap`, no `root-cert.pem` key, or not a certificate), `PeerUnreachable` (our discovery watch is not connected; the message has the last disconnect reason) | `Connected` |
//! | `ExportedServiceSet` | `Ignored` (not in the control plane's namespace), `PeerNotReady` (no `ServiceMeshPeer` of its name, or that peer's `Ready` is `False`), `NoMatch` (a rule exports no service) | `Exported` |
//! | `ImportedServiceSet` | `Ignored`, `PeerNotReady`, `NoMatch` (a rule selects nothing the peer exports: `unmatchedRules`) | `Imported` |
//!
//! [`compute`] is pure and leaves `lastTransitionTime` out; [`stamp_transitions`] (called by
//! [`spawn`]) sets it from the previous documents: kept while a condition's `status` stays,
//! the current time when it changes or first appears (so a restart stamps every condition
//! anew).
//!
//! In local mode each document is also written to
//! `STATE/status/<kind>/<namespace>/<name>.json` when it changes (`isthmusctl status` reads
//! the same documents from the debug port's `/debug/federation`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use isthmus_api::core::ROOT_CERT_KEY;
use isthmus_api::federation::{ImportedServiceSet, ServiceMeshPeer};
use isthmus_api::{Kind, Resource};
use isthmus_federation::discovery::exporter::RemotesStatus;
use isthmus_federation::exports::ExportDecision;
use isthmus_federation::imports::ImportDecision;
use isthmus_federation::status::{StreamStatus, WatchStatus, timestamp};
use isthmus_identity::{TrustBundle, TrustDomain};
use serde::Serialize;
use tokio::sync::watch;

use super::ImportStates;
use crate::config::ResourceKey;
use crate::model::MeshModel;
use crate::model::federation::offers;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FederationStatus {
    /// By `namespace/name`.
    pub service_mesh_peers: BTreeMap<String, PeerStatus>,
    pub exported_service_sets: BTreeMap<String, ExportStatus>,
    pub imported_service_sets: BTreeMap<String, ImportStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub discovery_status: DiscoveryStatus,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// One `Ready` condition.
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DiscoveryStatus {
    pub active: Vec<PodStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PodStatus {
    pub pod: String,
    pub remotes: Vec<StreamStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportStatus {
    pub exported_services: Vec<ServiceStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// One `Ready` condition.
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportStatus {
    pub imported_services: Vec<ServiceStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmatched_rules: Vec<String>,
    /// The imports are a stale copy: the peer's discovery stream is down.
    pub stale: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// One `Ready` condition.
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub exported_name: String,
    pub local_service: LocalServiceRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A condition in Kubernetes' shape (`metav1.Condition` without `observedGeneration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Always [`READY`] here.
    #[serde(rename = "type")]
    pub kind: String,
    pub status: ConditionStatus,
    /// CamelCase, one of [`reason`]'s.
    pub reason: String,
    pub message: String,
    /// RFC 3339 (seconds): when `status` last changed. `None` out of [`compute`]; set by
    /// [`stamp_transitions`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// `"True"` or `"False"` (never `"Unknown"`: this control plane always knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConditionStatus {
    True,
    False,
}

/// The one condition type.
pub const READY: &str = "Ready";

/// The reasons of the `Ready` conditions.
pub mod reason {
    /// The resource is not considered at all (see its warnings).
    pub const IGNORED: &str = "Ignored";
    /// The peer's root (`certificateChain`) is missing or not a certificate.
    pub const ROOT_MISSING: &str = "RootMissing";
    /// Our discovery watch of the peer is not connected.
    pub const PEER_UNREACHABLE: &str = "PeerUnreachable";
    /// The peer is usable and our discovery watch of it is connected.
    pub const CONNECTED: &str = "Connected";
    /// The set's `ServiceMeshPeer` is missing or not ready.
    pub const PEER_NOT_READY: &str = "PeerNotReady";
    /// A rule of the set selects nothing.
    pub const NO_MATCH: &str = "NoMatch";
    /// Every export rule exports something.
    pub const EXPORTED: &str = "Exported";
    /// Every import rule selects something the peer exports.
    pub const IMPORTED: &str = "Imported";
}

impl Condition {
    /// A `Ready` condition without its transition time.
    pub fn ready(status: ConditionStatus, reason: &str, message: impl Into<String>) -> Self {
        Self {
            kind: READY.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.into(),
            last_transition_time: None,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// The `Ready` condition of a list of conditions.
fn ready_of(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.kind == READY)
}

/// Empty when the name did not become a local service.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LocalServiceRef {
    pub hostname: String,
    pub name: String,
    pub namespace: String,
}

/// The status documents of every federation resource.
pub fn compute(
    model: &MeshModel,
    imports: &ImportStates,
    remotes: &RemotesStatus,
    pod: &str,
) -> FederationStatus {
    let warnings_of = |key: &ResourceKey| -> Vec<String> {
        model
            .warnings
            .iter()
            .filter(|w| &w.resource == key)
            .map(|w| w.message.clone())
            .collect()
    };
    let (offers, offer_warnings) = offers(model);
    let mut status = FederationStatus::default();
    for (key, peer) in model.config.of_type::<ServiceMeshPeer>() {
        let remotes = remotes
            .get(&key.name)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        let watch = imports.get(&key.name).map(|s| s.status.clone());
        let warnings = warnings_of(key);
        let ready = peer_ready(model, key, peer, watch.as_ref(), &warnings);
        status.service_mesh_peers.insert(
            id(key),
            PeerStatus {
                discovery_status: DiscoveryStatus {
                    active: vec![PodStatus {
                        pod: pod.to_owned(),
                        remotes,
                        watch,
                    }],
                },
                warnings,
                conditions: vec![ready],
            },
        );
    }
    // A set's peer is the `ServiceMeshPeer` of its name in the control plane's namespace.
    let peer_condition = |key: &ResourceKey| -> Option<&Condition> {
        let peer = format!("{}/{}", model.root_namespace, key.name);
        status
            .service_mesh_peers
            .get(&peer)
            .and_then(|p| ready_of(&p.conditions))
    };
    let mut exported_service_sets = BTreeMap::new();
    for (key, _) in model.config.of_kind(Kind::ExportedServiceSet) {
        let mut warnings = warnings_of(key);
        warnings.extend(
            offer_warnings
                .iter()
                .filter(|w| &w.resource == key)
                .map(|w| w.message.clone()),
        );
        let offer = offers
            .get(&key.name)
            .filter(|_| key.namespace == model.root_namespace);
        let exported_services = offer
            .map(|offer| {
                offer
                    .iter()
                    .filter_map(|(local, decision)| match decision {
                        ExportDecision::Exported { host, .. } => Some(ServiceStatus {
                            exported_name: host.clone(),
                            local_service: LocalServiceRef {
                                hostname: model
                                    .services
                                    .values()
                                    .find(|s| {
                                        s.key.namespace == local.namespace
                                            && crate::model::federation::rule_name(s) == *local
                                    })
                                    .map(|s| s.key.hostname.clone())
                                    .unwrap_or_default(),
                                name: local.name.clone(),
                                namespace: local.namespace.clone(),
                            },
                            reason: None,
                        }),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ready = set_ready(model, key, &warnings, peer_condition(key), || {
            let rules = export_rules(model, key);
            let offer = offer.map(Vec::as_slice).unwrap_or_default();
            let idle: Vec<String> = (0..rules)
                .filter(|&i| {
                    !offer.iter().any(
                        |(_, d)| matches!(d, ExportDecision::Exported { rule, .. } if *rule == i),
                    )
                })
                .map(|i| {
                    let refused = offer.iter().any(
                        |(_, d)| matches!(d, ExportDecision::Refused { rule, .. } if *rule == i),
                    );
                    if refused {
                        format!("exportRules[{i}] selects only services that may not be exported")
                    } else {
                        format!("exportRules[{i}] selects no service")
                    }
                })
                .collect();
            (!idle.is_empty()).then(|| idle.join("; "))
        });
        exported_service_sets.insert(
            id(key),
            ExportStatus {
                exported_services,
                warnings,
                conditions: vec![ready.with_true(reason::EXPORTED, "every rule exports a service")],
            },
        );
    }
    let mut imported_service_sets = BTreeMap::new();
    for (key, set) in model.config.of_type::<ImportedServiceSet>() {
        let entries = (key.namespace == model.root_namespace)
            .then(|| model.imports.get(&key.name))
            .flatten();
        let imported_services: Vec<ServiceStatus> = entries
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| match &e.decision {
                        ImportDecision::Imported { as_name, host, .. } => ServiceStatus {
                            exported_name: e.exported_host.clone(),
                            local_service: LocalServiceRef {
                                hostname: host.clone(),
                                name: as_name.name.clone(),
                                namespace: as_name.namespace.clone(),
                            },
                            reason: None,
                        },
                        ImportDecision::NotSelected => ServiceStatus {
                            exported_name: e.exported_host.clone(),
                            local_service: LocalServiceRef::default(),
                            reason: Some(
                                "exported by the peer, but no import rule selects it".into(),
                            ),
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();
        let unmatched_rules: Vec<String> = set
            .spec
            .import_rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                let mapping = rule.name_selector.as_ref()?;
                let offered = entries.map(Vec::as_slice).unwrap_or_default();
                let any = offered.iter().any(|e| {
                    part_matches(&mapping.namespace, &e.offered.namespace)
                        && part_matches(&mapping.name, &e.offered.name)
                });
                (!any).then(|| {
                    format!(
                        "importRules[{i}] ({}/{}): the peer does not export a service it selects",
                        or_any(&mapping.namespace),
                        or_any(&mapping.name)
                    )
                })
            })
            .collect();
        let stale = imports.get(&key.name).is_some_and(|s| s.status.stale);
        let warnings = warnings_of(key);
        let ready = set_ready(model, key, &warnings, peer_condition(key), || {
            (!unmatched_rules.is_empty()).then(|| unmatched_rules.join("; "))
        });
        imported_service_sets.insert(
            id(key),
            ImportStatus {
                imported_services,
                unmatched_rules,
                stale,
                warnings,
                conditions: vec![ready.with_true(
                    reason::IMPORTED,
                    "every rule selects a service the peer exports",
                )],
            },
        );
    }
    status.exported_service_sets = exported_service_sets;
    status.imported_service_sets = imported_service_sets;
    status
}

/// The `Ready` condition of a `ServiceMeshPeer`.
fn peer_ready(
    model: &MeshModel,
    key: &ResourceKey,
    peer: &ServiceMeshPeer,
    watch: Option<&WatchStatus>,
    warnings: &[String],
) -> Condition {
    let not_ready =
        |reason: &str, message: String| Condition::ready(ConditionStatus::False, reason, message);
    let ignored = || {
        let message = if warnings.is_empty() {
            "the peer is not usable".to_owned()
        } else {
            warnings.join("; ")
        };
        not_ready(reason::IGNORED, message)
    };
    if key.namespace != model.root_namespace {
        return ignored();
    }
    if !model.peers.iter().any(|p| &p.source == key) {
        return match root_problem(model, key, peer) {
            Some(problem) => not_ready(reason::ROOT_MISSING, problem),
            None => ignored(),
        };
    }
    match watch {
        Some(w) if w.stream.connected => Condition::ready(
            ConditionStatus::True,
            reason::CONNECTED,
            format!("discovery watch of {} connected", w.stream.source),
        ),
        Some(WatchStatus {
            stream:
                StreamStatus {
                    last_disconnect_status: Some(why),
                    ..
                },
            ..
        }) => not_ready(
            reason::PEER_UNREACHABLE,
            format!("discovery watch not connected: {why}"),
        ),
        _ => not_ready(
            reason::PEER_UNREACHABLE,
            "discovery watch not connected yet".to_owned(),
        ),
    }
}

/// Why the peer's root cannot be had, if it cannot: the checks of `model::peers`, whose
/// warning says the same in its words.
fn root_problem(model: &MeshModel, key: &ResourceKey, peer: &ServiceMeshPeer) -> Option<String> {
    let Some(chain) = &peer.spec.security.certificate_chain else {
        return Some("spec.security.certificateChain is required: it names the ConfigMap holding the peer's root".into());
    };
    let namespace = &key.namespace;
    let map_key = ResourceKey {
        kind: Kind::ConfigMap,
        namespace: namespace.clone(),
        name: chain.name.clone(),
    };
    let Some(Resource::ConfigMap(map)) = model.config.get(&map_key) else {
        return Some(format!(
            "spec.security.certificateChain: no ConfigMap {namespace}/{}",
            chain.name
        ));
    };
    let Some(pem) = map.data.get(ROOT_CERT_KEY) else {
        return Some(format!(
            "ConfigMap {namespace}/{} has no {ROOT_CERT_KEY:?} key",
            chain.name
        ));
    };
    // Without a valid trust domain the peer is ignored for that reason, not for its root.
    let trust_domain = TrustDomain::new(&peer.spec.security.trust_domain).ok()?;
    TrustBundle::from_pem(
        trust_domain,
        pem.as_bytes(),
        &format!("ConfigMap {namespace}/{} key {ROOT_CERT_KEY}", chain.name),
    )
    .err()
    .map(|e| e.to_string())
}

/// The number of `exportRules` of an `ExportedServiceSet`.
fn export_rules(model: &MeshModel, key: &ResourceKey) -> usize {
    match model.config.get(key) {
        Some(Resource::ExportedServiceSet(set)) => set.spec.export_rules.len(),
        _ => 0,
    }
}

/// The `Ready` condition of an exported or imported set, `True` left for the caller to word
/// ([`Pending::with_true`]). `no_match` says which rules select nothing, if any.
fn set_ready(
    model: &MeshModel,
    key: &ResourceKey,
    warnings: &[String],
    peer: Option<&Condition>,
    no_match: impl FnOnce() -> Option<String>,
) -> Pending {
    let not_ready = |reason: &str, message: String| {
        Pending(Some(Condition::ready(
            ConditionStatus::False,
            reason,
            message,
        )))
    };
    if key.namespace != model.root_namespace {
        return not_ready(reason::IGNORED, warnings.join("; "));
    }
    let peer_id = format!("{}/{}", model.root_namespace, key.name);
    match peer {
        None => {
            return not_ready(
                reason::PEER_NOT_READY,
                format!("no ServiceMeshPeer {peer_id} (a set shares its peer's name)"),
            );
        }
        Some(c) if !c.is_true() => {
            return not_ready(
                reason::PEER_NOT_READY,
                format!(
                    "ServiceMeshPeer {peer_id} is not ready: {}: {}",
                    c.reason, c.message
                ),
            );
        }
        Some(_) => {}
    }
    match no_match() {
        Some(message) => not_ready(reason::NO_MATCH, message),
        None => Pending(None),
    }
}

/// A `Ready` condition that is `False`, or `True` once worded.
struct Pending(Option<Condition>);

impl Pending {
    fn with_true(self, reason: &str, message: &str) -> Condition {
        self.0
            .unwrap_or_else(|| Condition::ready(ConditionStatus::True, reason, message))
    }
}

/// Sets every condition's `lastTransitionTime`: the previous document's while the condition's
/// `status` is the same, else `now`.
pub fn stamp_transitions(
    status: &mut FederationStatus,
    previous: &FederationStatus,
    now: std::time::SystemTime,
) {
    let now = timestamp(now);
    fn stamp<T>(
        current: &mut BTreeMap<String, T>,
        previous: &BTreeMap<String, T>,
        now: &str,
        conditions: impl Fn(&T) -> &Vec<Condition>,
        conditions_mut: impl Fn(&mut T) -> &mut Vec<Condition>,
    ) {
        for (id, document) in current.iter_mut() {
            let before = previous.get(id).map(&conditions);
            for condition in conditions_mut(document) {
                let kept = before
                    .into_iter()
                    .flatten()
                    .find(|c| c.kind == condition.kind && c.status == condition.status)
                    .and_then(|c| c.last_transition_time.clone());
                condition.last_transition_time = Some(kept.unwrap_or_else(|| now.to_owned()));
            }
        }
    }
    stamp(
        &mut status.service_mesh_peers,
        &previous.service_mesh_peers,
        &now,
        |d| &d.conditions,
        |d| &mut d.conditions,
    );
    stamp(
        &mut status.exported_service_sets,
        &previous.exported_service_sets,
        &now,
        |d| &d.conditions,
        |d| &mut d.conditions,
    );
    stamp(
        &mut status.imported_service_sets,
        &previous.imported_service_sets,
        &now,
        |d| &d.conditions,
        |d| &mut d.conditions,
    );
}

fn part_matches(pattern: &str, value: &str) -> bool {
    pattern.is_empty() || pattern == "*" || pattern == value
}

fn or_any(part: &str) -> &str {
    if part.is_empty() { "*" } else { part }
}

fn id(key: &ResourceKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

/// Computes status whenever an input changes (settled for 200 ms) and writes each document
/// under `dir` when it changed. Returns the documents in force.
pub fn spawn(
    mut model: watch::Receiver<Arc<MeshModel>>,
    mut imports: watch::Receiver<Arc<ImportStates>>,
    mut remotes: watch::Receiver<RemotesStatus>,
    pod: String,
    dir: PathBuf,
) -> watch::Receiver<Arc<FederationStatus>> {
    let (tx, rx) = watch::channel(Arc::new(FederationStatus::default()));
    tokio::spawn(async move {
        let mut written: BTreeMap<PathBuf, String> = BTreeMap::new();
        loop {
            let mut status = compute(
                &model.borrow_and_update(),
                &imports.borrow_and_update(),
                &remotes.borrow_and_update(),
                &pod,
            );
            stamp_transitions(&mut status, &tx.borrow(), std::time::SystemTime::now());
            write_files(&dir, &status, &mut written);
            tx.send_if_modified(|current| {
                let changed = **current != status;
                if changed {
                    *current = Arc::new(status);
                }
                changed
            });
            tokio::select! {
                r = model.changed() => if r.is_err() { return },
                r = imports.changed() => if r.is_err() { return },
                r = remotes.changed() => if r.is_err() { return },
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    rx
}

fn write_files(dir: &Path, status: &FederationStatus, written: &mut BTreeMap<PathBuf, String>) {
    let mut documents: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut add = |kind: &str, id: &str, json: serde_json::Result<String>| {
        if let Ok(json) = json {
            documents.insert(dir.join(kind).join(format!("{id}.json")), json);
        }
    };
    for (id, s) in &status.service_mesh_peers {
        add("servicemeshpeer", id, serde_json::to_string_pretty(s));
    }
    for (id, s) in &status.exported_service_sets {
        add("exportedserviceset", id, serde_json::to_string_pretty(s));
    }
    for (id, s) in &status.imported_service_sets {
        add("importedserviceset", id, serde_json::to_string_pretty(s));
    }
    for (path, json) in &documents {
        if written.get(path) == Some(json) {
            continue;
        }
        let result = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| crate::private_files::write_private(path, json.as_bytes()));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot write status");
        }
    }
    for path in written.keys() {
        if !documents.contains_key(path) {
            let _ = std::fs::remove_file(path);
        }
    }
    *written = documents;
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    use isthmus_federation::discovery::{Catalog, ImportState};
    use isthmus_identity::testing::TestCa;
    use isthmus_proto::federation::{ExportedService, ServicePort};

    use super::*;
    use crate::config::load_text;

    /// Red's configuration: a peer green, a set of each kind. `{root}` is green's root PEM.
    fn config(root_pem: &str) -> String {
        let root: String = root_pem.lines().map(|l| format!("    {l}\n")).collect();
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: egress-green, namespace: istio-system}}
spec:
  hosts: [egress-green.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 15443, name: tls}}]
  endpoints: [{{address: 10.0.0.9, ports: {{tls: 15444}}, serviceAccount: egress}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http}}]
  endpoints: [{{address: 10.0.0.1}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: green-root, namespace: istio-system}}
data:
  root-cert.pem: |
{root}---
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {{name: green, namespace: istio-system}}
spec:
  remote: {{addresses: [green.example]}}
  gateways: {{egress: {{name: egress-green}}}}
  security: {{trustDomain: green.local, certificateChain: {{kind: ConfigMap, name: green-root}}}}
---
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata: {{name: green, namespace: istio-system}}
spec:
  exportRules:
  - type: NameSelector
    nameSelector: {{namespace: bookinfo, name: reviews}}
---
apiVersion: federation.maistra.io/v1
kind: ImportedServiceSet
metadata: {{name: green, namespace: istio-system}}
spec:
  importRules:
  - type: NameSelector
    nameSelector: {{namespace: bookinfo, name: ratings}}
"
        )
    }

    fn offered(name: &str) -> ExportedService {
        ExportedService {
            hostname: format!("{name}.bookinfo.svc.red-exports.local"),
            name: name.into(),
            namespace: "bookinfo".into(),
            ports: vec![ServicePort {
                number: 9080,
                name: "http".into(),
                protocol: "HTTP".into(),
            }],
            identities: vec![format!("spiffe://green.local/ns/bookinfo/sa/{name}")],
        }
    }

    /// Green's discovery watch: connected (with `offers` in its catalog) or not.
    fn watch(connected: bool, offers: &[&str]) -> ImportStates {
        let mut status = WatchStatus::default();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        if connected {
            status.stream.connected("green.example:8188", at);
        } else {
            status
                .stream
                .disconnected("cannot dial green.example:8188: connection refused", at);
        }
        let state = ImportState {
            catalog: Some(Arc::new(Catalog::new(offers.iter().map(|n| offered(n))))),
            status,
            ..ImportState::default()
        };
        [("green".to_owned(), state)].into()
    }

    fn status_of(text: &str, imports: &ImportStates) -> FederationStatus {
        let snapshot = load_text(text, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e:?}"));
        let model = MeshModel::build_with_imports(
            Arc::new(snapshot),
            &crate::federation::catalogs(imports),
            &TrustDomain::new("red.local").unwrap(),
            "istio-system",
        );
        compute(&model, imports, &RemotesStatus::default(), "isthmusd-0")
    }

    /// Every object's `Ready` as `(status, reason)`, peer, export, import.
    fn ready(status: &FederationStatus) -> [(ConditionStatus, String); 3] {
        let of = |conditions: &[Condition]| {
            assert_eq!(conditions.len(), 1, "{conditions:?}");
            let c = &conditions[0];
            assert_eq!(c.kind, READY);
            assert_eq!(c.last_transition_time, None, "compute leaves it out");
            (c.status, c.reason.clone())
        };
        let id = "istio-system/green";
        [
            of(&status.service_mesh_peers[id].conditions),
            of(&status.exported_service_sets[id].conditions),
            of(&status.imported_service_sets[id].conditions),
        ]
    }

    fn message(status: &FederationStatus, which: usize) -> String {
        let id = "istio-system/green";
        let conditions = match which {
            0 => &status.service_mesh_peers[id].conditions,
            1 => &status.exported_service_sets[id].conditions,
            _ => &status.imported_service_sets[id].conditions,
        };
        conditions[0].message.clone()
    }

    use ConditionStatus::{False, True};

    #[test]
    fn everything_ready_when_connected_and_every_rule_selects_something() {
        let ca = TestCa::new("green.local");
        let status = status_of(&config(&ca.root_pem()), &watch(true, &["ratings"]));
        assert_eq!(
            ready(&status),
            [
                (True, reason::CONNECTED.into()),
                (True, reason::EXPORTED.into()),
                (True, reason::IMPORTED.into()),
            ]
        );
        // Kubernetes' shape.
        let json = serde_json::to_value(&status.service_mesh_peers["istio-system/green"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            json["conditions"],
            serde_json::json!([{"type": "Ready", "status": "True", "reason": "Connected",
                "message": "discovery watch of green.example:8188 connected"}])
        );
    }

    #[test]
    fn an_unreachable_peer_says_why_and_its_sets_are_not_ready() {
        let ca = TestCa::new("green.local");
        let status = status_of(&config(&ca.root_pem()), &watch(false, &["ratings"]));
        assert_eq!(
            ready(&status),
            [
                (False, reason::PEER_UNREACHABLE.into()),
                (False, reason::PEER_NOT_READY.into()),
                (False, reason::PEER_NOT_READY.into()),
            ]
        );
        assert_eq!(
            message(&status, 0),
            "discovery watch not connected: cannot dial green.example:8188: connection refused"
        );
        assert!(
            message(&status, 2)
                .starts_with("ServiceMeshPeer istio-system/green is not ready: PeerUnreachable: "),
            "{}",
            message(&status, 2)
        );
        // Not watched yet: unreachable too.
        let status = status_of(&config(&ca.root_pem()), &ImportStates::new());
        assert_eq!(ready(&status)[0], (False, reason::PEER_UNREACHABLE.into()));
        assert_eq!(message(&status, 0), "discovery watch not connected yet");
    }

    #[test]
    fn a_missing_or_invalid_root_is_root_missing_other_problems_ignored() {
        let ca = TestCa::new("green.local");
        let good = config(&ca.root_pem());
        for (text, reason, expected) in [
            (
                good.replace("name: green-root}}", "name: other}}"),
                reason::ROOT_MISSING,
                "spec.security.certificateChain: no ConfigMap istio-system/other",
            ),
            (
                config("not a certificate"),
                reason::ROOT_MISSING,
                "ConfigMap istio-system/green-root key root-cert.pem: no PEM CERTIFICATE block found",
            ),
            (
                good.replace("root-cert.pem: |", "other.pem: |"),
                reason::ROOT_MISSING,
                "ConfigMap istio-system/green-root has no \"root-cert.pem\" key",
            ),
            (
                good.replace(
                    ", certificateChain: {kind: ConfigMap, name: green-root}",
                    "",
                ),
                reason::ROOT_MISSING,
                "spec.security.certificateChain is required: it names the ConfigMap holding the peer's root",
            ),
            (
                good.replace("trustDomain: green.local", "trustDomain: red.local"),
                reason::IGNORED,
                "ignored: spec.security.trustDomain red.local is this mesh's own trust domain",
            ),
        ] {
            let status = status_of(&text, &watch(true, &["ratings"]));
            let [peer, export, import] = ready(&status);
            assert_eq!(peer, (False, reason.to_owned()), "{text}");
            assert_eq!(message(&status, 0), expected);
            assert_eq!(export, (False, reason::PEER_NOT_READY.into()));
            assert_eq!(import, (False, reason::PEER_NOT_READY.into()));
        }
    }

    #[test]
    fn a_rule_that_selects_nothing_is_no_match() {
        let ca = TestCa::new("green.local");
        let text = config(&ca.root_pem()).replace(
            "    nameSelector: {namespace: bookinfo, name: reviews}\n",
            "    nameSelector: {namespace: bookinfo, name: reviews}\n  - type: NameSelector\n    nameSelector: {namespace: bookinfo, name: nothing}\n",
        );
        // Green exports details, not ratings.
        let status = status_of(&text, &watch(true, &["details"]));
        assert_eq!(
            ready(&status),
            [
                (True, reason::CONNECTED.into()),
                (False, reason::NO_MATCH.into()),
                (False, reason::NO_MATCH.into()),
            ]
        );
        assert_eq!(message(&status, 1), "exportRules[1] selects no service");
        assert_eq!(
            message(&status, 2),
            "importRules[0] (bookinfo/ratings): the peer does not export a service it selects"
        );
    }

    #[test]
    fn sets_without_their_peer_or_outside_the_namespace() {
        let ca = TestCa::new("green.local");
        let text = config(&ca.root_pem()).replace(
            "kind: ServiceMeshPeer\nmetadata: {name: green",
            "kind: ServiceMeshPeer\nmetadata: {name: blue",
        );
        let status = status_of(&text, &watch(true, &["ratings"]));
        let id = "istio-system/green";
        for c in [
            &status.exported_service_sets[id].conditions[0],
            &status.imported_service_sets[id].conditions[0],
        ] {
            assert_eq!(
                (c.status, c.reason.as_str()),
                (False, reason::PEER_NOT_READY)
            );
        }
        assert_eq!(
            message(&status, 1),
            "no ServiceMeshPeer istio-system/green (a set shares its peer's name)"
        );

        let text = config(&ca.root_pem()).replace(
            "kind: ExportedServiceSet\nmetadata: {name: green, namespace: istio-system}",
            "kind: ExportedServiceSet\nmetadata: {name: green, namespace: bookinfo}",
        );
        let status = status_of(&text, &watch(true, &["ratings"]));
        let c = &status.exported_service_sets["bookinfo/green"].conditions[0];
        assert_eq!((c.status, c.reason.as_str()), (False, reason::IGNORED));
        assert!(c.message.starts_with("ignored: "), "{}", c.message);
    }

    #[test]
    fn transition_times_change_only_with_the_status() {
        let ca = TestCa::new("green.local");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t1 = t0 + Duration::from_secs(60);
        let t2 = t1 + Duration::from_secs(60);
        let time = |s: &FederationStatus| {
            s.service_mesh_peers["istio-system/green"].conditions[0]
                .last_transition_time
                .clone()
        };
        let mut first = status_of(&config(&ca.root_pem()), &watch(false, &["ratings"]));
        stamp_transitions(&mut first, &FederationStatus::default(), t0);
        assert_eq!(time(&first).as_deref(), Some("2023-11-14T22:13:20Z"));

        // Still down (another reason would keep it too): the same time, the same document.
        let mut again = status_of(&config(&ca.root_pem()), &watch(false, &["ratings"]));
        stamp_transitions(&mut again, &first, t1);
        assert_eq!(again, first);

        // Up: a new time, for the sets too.
        let mut up = status_of(&config(&ca.root_pem()), &watch(true, &["ratings"]));
        stamp_transitions(&mut up, &again, t2);
        assert_eq!(time(&up), Some(timestamp(t2)));
        let import = &up.imported_service_sets["istio-system/green"].conditions[0];
        assert_eq!(import.last_transition_time, Some(timestamp(t2)));
    }
}
