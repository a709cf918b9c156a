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
//! Every resource's warnings are included. In local mode each document is also written to
//! `STATE/status/<kind>/<namespace>/<name>.json` when it changes (`isthmusctl status` reads
//! the same documents from the debug port's `/debug/federation`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use isthmus_api::Kind;
use isthmus_api::federation::ImportedServiceSet;
use isthmus_federation::discovery::exporter::RemotesStatus;
use isthmus_federation::exports::ExportDecision;
use isthmus_federation::imports::ImportDecision;
use isthmus_federation::status::{StreamStatus, WatchStatus};
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
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub exported_name: String,
    pub local_service: LocalServiceRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    for (key, _) in model.config.of_kind(Kind::ServiceMeshPeer) {
        let remotes = remotes
            .get(&key.name)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        let watch = imports.get(&key.name).map(|s| s.status.clone());
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
                warnings: warnings_of(key),
            },
        );
    }
    for (key, _) in model.config.of_kind(Kind::ExportedServiceSet) {
        let mut warnings = warnings_of(key);
        warnings.extend(
            offer_warnings
                .iter()
                .filter(|w| &w.resource == key)
                .map(|w| w.message.clone()),
        );
        let exported_services = offers
            .get(&key.name)
            .filter(|_| key.namespace == model.root_namespace)
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
        status.exported_service_sets.insert(
            id(key),
            ExportStatus {
                exported_services,
                warnings,
            },
        );
    }
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
        let unmatched_rules = set
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
        status.imported_service_sets.insert(
            id(key),
            ImportStatus {
                imported_services,
                unmatched_rules,
                stale,
                warnings: warnings_of(key),
            },
        );
    }
    status
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
            let status = compute(
                &model.borrow_and_update(),
                &imports.borrow_and_update(),
                &remotes.borrow_and_update(),
                &pod,
            );
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
