//! The one-way flow from configuration to proxies: config snapshot -> mesh model -> per-proxy
//! snapshot -> [`SnapshotCache`] (which the xDS streams watch).
//!
//! Configuration changes are gathered for `debounce` (10 ms by default) before a rebuild:
//! the sources settle their own bursts first (the directory watch waits for 50 ms of quiet,
//! the Kubernetes source for 50 ms, at most 500 ms), so a burst of edits is one push without
//! a second long wait here. Peers' imports are not settled at their source: they wait for
//! 30 ms of quiet (at most 300 ms), so several peers' updates are one rebuild. A proxy that connects gets its snapshot at once. Each proxy's snapshot
//! holds a certificate for its workload identity, re-issued at half-life; an unchanged
//! resource keeps its version, so a push carries only what changed (an endpoint change is an
//! EDS push, a renewal an SDS push).

pub mod certs;
pub mod gate;
pub mod vips;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_identity::{SpiffeId, TrustDomain};
use tokio::sync::{mpsc, watch};

use crate::ca::Authority;
use isthmus_federation::discovery::Exports;

use crate::config::ConfigSnapshot;
use crate::federation::{self, ImportStates};
use crate::jwks::JwksCache;
use crate::model::federation::discovery_exports;
use crate::model::imports::RemoteCatalogs;
use crate::model::telemetry::TelemetrySettings;
use crate::model::vips::VipRange;
use crate::model::{MeshModel, ProxyNode};
use crate::xds::cache::SnapshotCache;
use crate::xds::generate::{
    OutboundView, ProxySecrets, ViewKey, outbound_view, proxy_snapshot_with_view, view_key,
    workload_of,
};
use crate::xds::server::NodeInfo;
use crate::xds::streams::StreamRegistry;
use certs::ProxyCertificates;
use vips::VipStore;

/// How long imports must be quiet before a rebuild, and the longest a rebuild waits for that
/// under a steady stream of peers' updates.
const IMPORTS_QUIET: Duration = Duration::from_millis(30);
const IMPORTS_MAX_WAIT: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub debounce: Duration,
    pub trust_domain: TrustDomain,
    pub root_namespace: String,
    /// Trust domain name to its roots (PEM), the local one first.
    pub bundles: Vec<(String, String)>,
    /// Where federation discovery is served (`host:port`), for ingress gateways.
    pub discovery_address: Option<String>,
    /// `isthmusd`'s own identity, the one caller egress gateways carry discovery for.
    pub control_plane_identity: SpiffeId,
    /// At start, how long proxies wait for every peer's first full list before they are
    /// configured without it (see [`Pipeline::new`]).
    pub initial_sync: Duration,
    /// The mesh's name and trace export, for the proxies' telemetry.
    pub telemetry: TelemetrySettings,
    /// Where services without addresses get theirs.
    pub vip_range: VipRange,
    /// Where the allocated addresses are kept across restarts (`None`: memory only).
    pub state_dir: Option<PathBuf>,
}

/// The running pipeline's outputs.
#[derive(Debug)]
pub struct Pipeline {
    /// The model in force.
    pub model: watch::Receiver<Arc<MeshModel>>,
    /// Where the xDS server reports nodes as they connect.
    pub joins: mpsc::Sender<NodeInfo>,
    /// Per node id, why it has no (new) configuration.
    pub node_errors: watch::Receiver<BTreeMap<String, String>>,
    /// What the model exports to each peer, for the discovery service.
    pub exports: watch::Receiver<Arc<Exports>>,
}

struct Worker {
    settings: PipelineSettings,
    cache: Arc<SnapshotCache>,
    streams: Arc<StreamRegistry>,
    certs: ProxyCertificates,
    model: watch::Sender<Arc<MeshModel>>,
    exports: watch::Sender<Arc<Exports>>,
    /// What peers export to us, as the model in force was built with.
    catalogs: RemoteCatalogs,
    /// The fetched JWKS documents, by URI.
    jwks: Arc<BTreeMap<String, String>>,
    /// Every `jwksUri` has been tried once (see `peers_synced`).
    jwks_settled: bool,
    node_errors: watch::Sender<BTreeMap<String, String>>,
    nodes: BTreeMap<String, ProxyNode>,
    /// Outbound views of the model in force, shared by proxies that look alike.
    views: HashMap<ViewKey, Arc<OutboundView>>,
    vips: VipStore,
}

impl Pipeline {
    /// The pipeline's outputs, and the task that computes them: the caller runs (and owns) it.
    /// The task ends when the configuration or the imports are no longer published, or when
    /// the xDS server's join channel closes; dropping it stops the pipeline.
    pub fn new(
        mut config: watch::Receiver<Arc<ConfigSnapshot>>,
        mut imports: watch::Receiver<Arc<ImportStates>>,
        mut jwks: watch::Receiver<Arc<JwksCache>>,
        cache: Arc<SnapshotCache>,
        streams: Arc<StreamRegistry>,
        authority: Arc<Authority>,
        settings: PipelineSettings,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let catalogs = federation::catalogs(&imports.borrow_and_update());
        let (keys, jwks_settled) = {
            let cache = jwks.borrow_and_update();
            (Arc::new(cache.resolved()), cache.settled)
        };
        let mut vips = VipStore::open(settings.vip_range, settings.state_dir.as_deref());
        let first = model_of(
            &settings,
            config.borrow_and_update().clone(),
            &catalogs,
            &keys,
            &mut vips,
        );
        let (exports_tx, exports_rx) = watch::channel(Arc::new(discovery_exports(&first)));
        let (model_tx, model_rx) = watch::channel(Arc::new(first));
        let (errors_tx, errors_rx) = watch::channel(BTreeMap::new());
        let (joins_tx, mut joins_rx) = mpsc::channel(1024);
        let mut worker = Worker {
            settings,
            cache,
            streams,
            certs: ProxyCertificates::new(authority),
            model: model_tx,
            exports: exports_tx,
            catalogs,
            jwks: keys,
            jwks_settled,
            node_errors: errors_tx,
            nodes: BTreeMap::new(),
            views: HashMap::new(),
            vips,
        };
        // A proxy that comes back with configuration before the peers' catalogs have arrived
        // would be sent one without its imports, and lose them until they do: right after an
        // `isthmusd` restart, every connected proxy would. So such joins wait (the proxies keep
        // what they have: a stream answers nothing before its node's first snapshot) until
        // every peer has sent its first full list, or `initial_sync` has passed. A proxy with
        // nothing yet (a gateway that carries discovery itself, at first start) has nothing to
        // lose and is configured at once.
        let mut synced = worker.peers_synced();
        let sync_deadline = tokio::time::Instant::now() + worker.settings.initial_sync;
        let mut waiting: Vec<NodeInfo> = Vec::new();
        let task = async move {
            loop {
                if !synced
                    && (worker.peers_synced() || tokio::time::Instant::now() >= sync_deadline)
                {
                    synced = true;
                    if !worker.peers_synced() {
                        tracing::warn!(
                            after = ?worker.settings.initial_sync,
                            "configuring proxies without the imports of peers not heard from yet"
                        );
                    }
                    for node in std::mem::take(&mut waiting) {
                        worker.join(node).await;
                    }
                }
                let renewal = worker
                    .certs
                    .next_renewal()
                    .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
                    .unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    changed = config.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        tokio::time::sleep(worker.settings.debounce).await;
                        let snapshot = config.borrow_and_update().clone();
                        worker.rebuild(snapshot);
                        worker.push_all().await;
                    }
                    changed = imports.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        // Peers' updates are not settled at their source: wait for a quiet
                        // moment (bounded), so several peers' lists are one rebuild.
                        let deadline = tokio::time::Instant::now() + IMPORTS_MAX_WAIT;
                        let quiet = worker.settings.debounce.max(IMPORTS_QUIET);
                        loop {
                            let until = deadline.min(tokio::time::Instant::now() + quiet);
                            match tokio::time::timeout_at(until, imports.changed()).await {
                                Ok(Ok(())) => continue,
                                Ok(Err(_)) => return,
                                Err(_) => break,
                            }
                        }
                        let catalogs = federation::catalogs(&imports.borrow_and_update());
                        // Status-only changes (heartbeats, timestamps) do not rebuild.
                        if catalogs != worker.catalogs {
                            worker.catalogs = catalogs;
                            let snapshot = worker.model.borrow().config.clone();
                            worker.rebuild(snapshot);
                            worker.push_all().await;
                        }
                    }
                    changed = jwks.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let (keys, settled) = {
                            let cache = jwks.borrow_and_update();
                            (Arc::new(cache.resolved()), cache.settled)
                        };
                        worker.jwks_settled = settled;
                        if keys != worker.jwks {
                            worker.jwks = keys;
                            let snapshot = worker.model.borrow().config.clone();
                            worker.rebuild(snapshot);
                            worker.push_all().await;
                        }
                    }
                    joined = joins_rx.recv() => {
                        let Some(node): Option<NodeInfo> = joined else { return };
                        if synced || !node.holds_config {
                            worker.join(node).await;
                        } else {
                            waiting.push(node);
                        }
                    }
                    () = tokio::time::sleep_until(sync_deadline), if !synced => {}
                    () = tokio::time::sleep(renewal) => worker.push_all().await,
                }
            }
        };
        let pipeline = Self {
            model: model_rx,
            joins: joins_tx,
            node_errors: errors_rx,
            exports: exports_rx,
        };
        (pipeline, task)
    }
}

/// The model of `snapshot` with what peers export, what the settings add, and the allocated
/// virtual addresses.
fn model_of(
    settings: &PipelineSettings,
    snapshot: Arc<ConfigSnapshot>,
    catalogs: &RemoteCatalogs,
    jwks: &Arc<BTreeMap<String, String>>,
    vips: &mut VipStore,
) -> MeshModel {
    let mut model = MeshModel::build_with_imports(
        snapshot,
        catalogs,
        &settings.trust_domain,
        &settings.root_namespace,
    );
    model.discovery_address = settings.discovery_address.clone();
    model.control_plane_identity = Some(settings.control_plane_identity.clone());
    model.telemetry = settings.telemetry.clone();
    model.jwks = jwks.clone();
    vips.assign(&mut model);
    model
}

impl Worker {
    /// Whether every usable peer's catalog has arrived (its first full list, or stale imports
    /// an importer holds).
    fn peers_synced(&self) -> bool {
        // The keys of `jwksUri`s count too: a proxy that comes back holding real keys must
        // not get keys that verify nothing while isthmusd has not fetched them yet.
        if !self.jwks_settled {
            return false;
        }
        let model = self.model.borrow();
        model
            .peers
            .iter()
            .all(|peer| self.catalogs.contains_key(&peer.name))
    }

    fn rebuild(&mut self, snapshot: Arc<ConfigSnapshot>) {
        let started = tokio::time::Instant::now();
        let model = model_of(
            &self.settings,
            snapshot,
            &self.catalogs,
            &self.jwks,
            &mut self.vips,
        );
        for w in &model.warnings {
            tracing::warn!(resource = %w.resource, "{}", w.message);
        }
        let exports = Arc::new(discovery_exports(&model));
        self.exports.send_if_modified(|current| {
            let changed = *current != exports;
            if changed {
                *current = exports;
            }
            changed
        });
        self.model.send_replace(Arc::new(model));
        self.views.clear();
        tracing::debug!(elapsed = ?started.elapsed(), "model rebuilt");
    }

    async fn join(&mut self, info: NodeInfo) {
        match ProxyNode::from_metadata(&info.id, &info.metadata) {
            Ok(node) => {
                self.push(&node).await;
                self.nodes.insert(node.id.clone(), node);
            }
            Err(e) => self.record(&info.id, Some(e.to_string())),
        }
    }

    /// Recomputes every connected proxy; forgets proxies that left.
    async fn push_all(&mut self) {
        let connected: HashSet<String> =
            self.streams.list().into_iter().map(|s| s.node_id).collect();
        self.nodes.retain(|id, _| connected.contains(id));
        self.cache.prune();
        let nodes: Vec<ProxyNode> = self.nodes.values().cloned().collect();
        let started = tokio::time::Instant::now();
        for node in &nodes {
            self.push(node).await;
        }
        tracing::debug!(proxies = nodes.len(), elapsed = ?started.elapsed(), "snapshots computed");
        let model = self.model.borrow().clone();
        let in_use: HashSet<_> = nodes
            .iter()
            .filter_map(|n| workload_of(&model, n).ok().map(|w| w.identity.clone()))
            .collect();
        self.certs.retain(|id| in_use.contains(id));
        self.node_errors
            .send_modify(|errors| errors.retain(|id, _| connected.contains(id)));
    }

    async fn push(&mut self, node: &ProxyNode) {
        let model = self.model.borrow().clone();
        let result = workload_of(&model, node)
            .map_err(|e| e.to_string())
            .and_then(|workload| {
                let credential = self.certs.get(&workload.identity, SystemTime::now())?;
                let secrets = ProxySecrets {
                    certificate_chain_pem: credential.chain_pem,
                    private_key_pem: credential.key_pem,
                    // The local roots, then each peer's, bound to its trust domain.
                    bundles: self
                        .settings
                        .bundles
                        .iter()
                        .cloned()
                        .chain(
                            model
                                .peers
                                .iter()
                                .map(|p| (p.trust_domain.to_string(), p.roots_pem())),
                        )
                        .collect(),
                };
                let view = self
                    .views
                    .entry(view_key(workload))
                    .or_insert_with(|| Arc::new(outbound_view(&model, workload)))
                    .clone();
                Ok(proxy_snapshot_with_view(
                    &model, node, workload, &view, &secrets,
                ))
            });
        match result {
            Ok(snapshot) => {
                self.cache.set(&node.id, snapshot);
                self.record(&node.id, None);
            }
            // The proxy keeps what it has: the last good configuration stays in force.
            Err(reason) => {
                tracing::warn!(node = node.id, reason, "no configuration for proxy");
                self.record(&node.id, Some(reason));
            }
        }
    }

    fn record(&self, node: &str, error: Option<String>) {
        self.node_errors.send_if_modified(|errors| match error {
            Some(e) => errors.insert(node.to_owned(), e.clone()).as_ref() != Some(&e),
            None => errors.remove(node).is_some(),
        });
    }
}
