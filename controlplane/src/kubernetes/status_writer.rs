//! The federation status ([`crate::federation::status`]) written back to the API server: each
//! `ServiceMeshPeer`, `ExportedServiceSet` and `ImportedServiceSet` gets its document through
//! its `status` subresource, by the [`super::leader`] Lease holder only.
//!
//! - A document is written (JSON merge patch `{"status": …}`) only when it differs from what
//!   the object's status is known to be: what this writer last wrote, or what it read.
//! - Known is not enough after a gap: when the writer starts, and whenever leadership changes,
//!   it forgets, reads each object's status (`GET …/status`) and writes where it differs (so a
//!   new leader rewrites whatever another replica wrote meanwhile, and nothing more).
//! - The patch also sets to `null` the fields the known status has and the new document lacks
//!   (a merge patch would otherwise leave an emptied `warnings` or `unmatchedRules` behind).
//! - At most one PATCH per object per `min_interval` (1 s): a change that comes sooner is
//!   written when the interval is up, the newest document winning.
//! - Volatile fields ([`VOLATILE_FIELDS`]: `lastEvent` and `lastFullSync`, which every
//!   discovery resync (1 min) moves, and `lastDisconnect`, which every failed redial moves) do
//!   not count as a change by themselves: a document that differs only there is written once
//!   `volatile_refresh` (5 min) has passed since the object's last write. Every other field,
//!   including the conditions' `lastTransitionTime`, changes only when the state does.
//! - `404` (the object was deleted meanwhile) is not an error: the document counts as written.
//!   Other errors are logged and retried per object with backoff.
//! - When the leader watch closes (the election stopped) or the status watch does, the writer
//!   ends: without a live election it cannot know it is the only writer.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use isthmus_runtime::backoff::Backoff;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::federation::status::FederationStatus;

/// How the writer paces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusWriterSettings {
    /// At most one PATCH per object this often.
    pub min_interval: Duration,
    /// A change of volatile fields only is written this long after the object's last write.
    pub volatile_refresh: Duration,
    /// Backoff of an object whose read or write failed.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Each API call's limit.
    pub request_timeout: Duration,
    /// API calls in flight at once.
    pub concurrency: usize,
}

impl Default for StatusWriterSettings {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(1),
            volatile_refresh: Duration::from_secs(300),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            concurrency: 4,
        }
    }
}

/// Fields that move without the state changing; see the module's documentation.
pub const VOLATILE_FIELDS: &[&str] = &["lastEvent", "lastFullSync", "lastDisconnect"];

/// The kinds whose status is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatusKind {
    ServiceMeshPeer,
    ExportedServiceSet,
    ImportedServiceSet,
}

impl StatusKind {
    pub fn plural(self) -> &'static str {
        match self {
            Self::ServiceMeshPeer => "servicemeshpeers",
            Self::ExportedServiceSet => "exportedservicesets",
            Self::ImportedServiceSet => "importedservicesets",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Self::ServiceMeshPeer => "ServiceMeshPeer",
            Self::ExportedServiceSet => "ExportedServiceSet",
            Self::ImportedServiceSet => "ImportedServiceSet",
        }
    }

    /// `federation.maistra.io/v1`, this kind.
    pub fn api_resource(self) -> ApiResource {
        ApiResource {
            group: "federation.maistra.io".into(),
            version: "v1".into(),
            api_version: "federation.maistra.io/v1".into(),
            kind: self.kind().into(),
            plural: self.plural().into(),
        }
    }
}

/// One object whose status is written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectKey {
    kind: StatusKind,
    namespace: String,
    name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.kind(), self.namespace, self.name)
    }
}

/// Every object's document, serialized.
fn documents(status: &FederationStatus) -> BTreeMap<ObjectKey, Value> {
    fn add<T: serde::Serialize>(
        out: &mut BTreeMap<ObjectKey, Value>,
        kind: StatusKind,
        documents: &BTreeMap<String, T>,
    ) {
        for (id, document) in documents {
            let Some((namespace, name)) = id.split_once('/') else {
                continue;
            };
            match serde_json::to_value(document) {
                Ok(value) => {
                    out.insert(
                        ObjectKey {
                            kind,
                            namespace: namespace.to_owned(),
                            name: name.to_owned(),
                        },
                        value,
                    );
                }
                Err(e) => tracing::warn!(%id, error = %e, "cannot serialize status"),
            }
        }
    }
    let mut out = BTreeMap::new();
    add(
        &mut out,
        StatusKind::ServiceMeshPeer,
        &status.service_mesh_peers,
    );
    add(
        &mut out,
        StatusKind::ExportedServiceSet,
        &status.exported_service_sets,
    );
    add(
        &mut out,
        StatusKind::ImportedServiceSet,
        &status.imported_service_sets,
    );
    out
}

/// What the writer knows of one object.
#[derive(Debug)]
struct Entry {
    /// The document in force.
    desired: Value,
    /// The object's status as far as we know (our last write, or a read); `None`: read first.
    known: Option<Value>,
    /// When the last PATCH started.
    last_write: Option<Instant>,
    /// Not before this, after a failure.
    retry_at: Option<Instant>,
    backoff: Backoff,
}

/// What to do for one object now.
#[derive(Debug)]
enum Op {
    Read,
    /// The merge patch's `status`, and the document it makes.
    Write {
        patch: Value,
        document: Value,
    },
}

impl Entry {
    fn new(desired: Value, settings: &StatusWriterSettings) -> Self {
        Self {
            desired,
            known: None,
            last_write: None,
            retry_at: None,
            backoff: Backoff::new(settings.backoff_base, settings.backoff_max),
        }
    }

    /// Forgets what the object holds (leadership changed hands), keeping the pace.
    fn forget(&mut self) {
        self.known = None;
        self.retry_at = None;
        self.backoff.reset();
    }

    /// When the next call is due, if one is.
    fn due(&self, settings: &StatusWriterSettings, now: Instant) -> Option<Instant> {
        let when = match &self.known {
            None => now,
            Some(known) if *known == self.desired => return None,
            Some(known) => {
                let wait = if stripped(known) == stripped(&self.desired) {
                    settings.volatile_refresh
                } else {
                    settings.min_interval
                };
                self.last_write.map_or(now, |at| at + wait)
            }
        };
        Some(self.retry_at.map_or(when, |retry| retry.max(when)))
    }

    fn op(&self) -> Op {
        match &self.known {
            None => Op::Read,
            Some(known) => Op::Write {
                patch: merge_diff(known, &self.desired),
                document: self.desired.clone(),
            },
        }
    }
}

/// The value without [`VOLATILE_FIELDS`], at any depth.
fn stripped(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !VOLATILE_FIELDS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), stripped(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(stripped).collect()),
        other => other.clone(),
    }
}

/// The merge patch that turns `old` into `new`: `new`, with `null` for every object field
/// `old` has and `new` lacks (arrays are replaced whole by a merge patch).
fn merge_diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut patch: Map<String, Value> = new
                .iter()
                .map(|(k, v)| {
                    let v = match old.get(k) {
                        Some(o) => merge_diff(o, v),
                        None => v.clone(),
                    };
                    (k.clone(), v)
                })
                .collect();
            for k in old.keys() {
                if !new.contains_key(k) {
                    patch.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

/// How one call ended.
#[derive(Debug)]
enum Outcome {
    /// Read: the object's status (`null` if it has none).
    Read(Value),
    /// Written: the document now in force.
    Written(Value),
    /// `404`: the object is gone.
    Gone,
    Failed(String),
}

async fn call(
    client: kube::Client,
    key: ObjectKey,
    op: Op,
    timeout: Duration,
) -> (ObjectKey, Instant, bool, Outcome) {
    let started = Instant::now();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, &key.namespace, &key.kind.api_resource());
    let write = matches!(op, Op::Write { .. });
    let result = tokio::time::timeout(timeout, async {
        match op {
            Op::Read => api.get_status(&key.name).await.map(|object| {
                Outcome::Read(object.data.get("status").cloned().unwrap_or(Value::Null))
            }),
            Op::Write { patch, document } => {
                let body = serde_json::json!({ "status": patch });
                api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                    .map(|_| Outcome::Written(document))
            }
        }
    })
    .await;
    let outcome = match result {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(kube::Error::Api(status))) if status.is_not_found() => {
            // Gone, or there but its CRD has no status subresource (CRDs from before status
            // was written back): say which.
            match tokio::time::timeout(timeout, api.get_opt(&key.name)).await {
                Ok(Ok(Some(_))) => Outcome::Failed(
                    "the object exists but its /status does not: its CRD lacks the status \
                     subresource (apply manifests/crds again)"
                        .to_owned(),
                ),
                _ => Outcome::Gone,
            }
        }
        Ok(Err(e)) => Outcome::Failed(e.to_string()),
        Err(_) => Outcome::Failed(format!("no answer in {timeout:?}")),
    };
    (key, started, write, outcome)
}

/// Writes `status` back while `leader` is `true`, with [`StatusWriterSettings::default`].
/// Runs until either watch closes.
pub fn write_status(
    client: kube::Client,
    status: watch::Receiver<Arc<FederationStatus>>,
    leader: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    write_status_with(client, status, leader, StatusWriterSettings::default())
}

/// [`write_status`] with its pace given.
pub async fn write_status_with(
    client: kube::Client,
    mut status: watch::Receiver<Arc<FederationStatus>>,
    mut leader: watch::Receiver<bool>,
    settings: StatusWriterSettings,
) {
    let mut entries: BTreeMap<ObjectKey, Entry> = BTreeMap::new();
    loop {
        if leader.has_changed().is_err() {
            tracing::info!("leader election stopped; status writer ends");
            return;
        }
        if !*leader.borrow_and_update() {
            entries.values_mut().for_each(Entry::forget);
            match leader.changed().await {
                Ok(()) => continue,
                Err(_) => {
                    tracing::info!("leader election stopped; status writer ends");
                    return;
                }
            }
        }
        // The documents in force.
        let documents = documents(&status.borrow_and_update());
        entries.retain(|key, _| documents.contains_key(key));
        for (key, document) in documents {
            match entries.get_mut(&key) {
                Some(entry) => entry.desired = document,
                None => {
                    entries.insert(key, Entry::new(document, &settings));
                }
            }
        }
        let now = Instant::now();
        let due: Vec<(ObjectKey, Op)> = entries
            .iter()
            .filter(|(_, e)| e.due(&settings, now).is_some_and(|at| at <= now))
            .map(|(k, e)| (k.clone(), e.op()))
            .collect();
        if !due.is_empty() {
            let mut calls = futures::stream::iter(due)
                .map(|(key, op)| call(client.clone(), key, op, settings.request_timeout))
                .buffer_unordered(settings.concurrency.max(1));
            loop {
                tokio::select! {
                    done = calls.next() => match done {
                        Some((key, started, write, outcome)) => {
                            record(&mut entries, key, started, write, outcome);
                        }
                        None => break,
                    },
                    changed = leader.changed() => {
                        if changed.is_err() {
                            tracing::info!("leader election stopped; status writer ends");
                            return;
                        }
                        // Any change while leading means leadership was lost, perhaps
                        // regained: what the objects hold is not known any more.
                        entries.values_mut().for_each(Entry::forget);
                        break;
                    }
                }
            }
            continue;
        }
        let next = entries.values().filter_map(|e| e.due(&settings, now)).min();
        tokio::select! {
            changed = status.changed() => if changed.is_err() {
                tracing::info!("federation status closed; status writer ends");
                return;
            },
            changed = leader.changed() => match changed {
                Ok(()) => entries.values_mut().for_each(Entry::forget),
                Err(_) => {
                    tracing::info!("leader election stopped; status writer ends");
                    return;
                }
            },
            () = sleep_until(next) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn record(
    entries: &mut BTreeMap<ObjectKey, Entry>,
    key: ObjectKey,
    started: Instant,
    write: bool,
    outcome: Outcome,
) {
    let Some(entry) = entries.get_mut(&key) else {
        return;
    };
    if write {
        entry.last_write = Some(started);
    }
    match outcome {
        Outcome::Read(current) => {
            entry.known = Some(current);
            entry.retry_at = None;
            entry.backoff.reset();
        }
        Outcome::Written(document) => {
            tracing::debug!(object = %key, "status written");
            entry.known = Some(document);
            entry.retry_at = None;
            entry.backoff.reset();
        }
        Outcome::Gone => {
            tracing::debug!(object = %key, "object gone; status not written");
            // Nothing to write until the document changes (or the object leaves the status).
            entry.known = Some(entry.desired.clone());
            entry.retry_at = None;
            entry.backoff.reset();
        }
        Outcome::Failed(error) => {
            let delay = entry.backoff.next_delay();
            tracing::warn!(
                object = %key,
                error,
                retry_in = ?delay,
                op = if write { "patch" } else { "get" },
                "cannot write status"
            );
            entry.retry_at = Some(Instant::now() + delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_patch_removes_fields_the_document_no_longer_has() {
        let old = json!({"warnings": ["w"], "discoveryStatus": {"active": [{"pod": "a"}]},
            "nested": {"gone": 1, "kept": 2}});
        let new = json!({"discoveryStatus": {"active": []}, "nested": {"kept": 3}});
        assert_eq!(
            merge_diff(&old, &new),
            json!({"warnings": null, "discoveryStatus": {"active": []},
                "nested": {"gone": null, "kept": 3}})
        );
        assert_eq!(merge_diff(&Value::Null, &new), new);
    }

    #[test]
    fn volatile_fields_wait_for_the_refresh_others_for_the_interval() {
        let settings = StatusWriterSettings::default();
        let now = Instant::now();
        let written = json!({"watch": {"connected": true, "lastEvent": "t1"}});
        let mut entry = Entry::new(written.clone(), &settings);
        assert_eq!(entry.due(&settings, now), Some(now), "unknown: read now");
        entry.known = Some(written.clone());
        entry.last_write = Some(now);
        assert_eq!(entry.due(&settings, now), None);
        entry.desired = json!({"watch": {"connected": true, "lastEvent": "t2"}});
        assert_eq!(
            entry.due(&settings, now),
            Some(now + settings.volatile_refresh)
        );
        entry.desired = json!({"watch": {"connected": false, "lastEvent": "t2"}});
        assert_eq!(entry.due(&settings, now), Some(now + settings.min_interval));
        entry.retry_at = Some(now + Duration::from_secs(7));
        assert_eq!(entry.due(&settings, now), entry.retry_at);
    }
}
