//! Federation metrics per peer (label `peer`: the `ServiceMeshPeer`'s name):
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `isthmus_federation_peer_connected` | gauge | 1 while our discovery watch of the peer is connected |
//! | `isthmus_federation_peer_last_full_sync_timestamp_seconds` | gauge | when the peer's last full list was applied (Unix seconds; 0: never) |
//! | `isthmus_federation_imported_services` | gauge | services imported from the peer (its offers an `ImportedServiceSet` rule took) |
//! | `isthmus_federation_exported_services` | gauge | services we export to the peer |
//! | `isthmus_federation_stale_imports` | gauge | imported services kept from a stale copy of the peer's list (its watch is down) |
//! | `isthmus_federation_events_received_total` | counter | full lists and changes received from the peer |
//!
//! The peers are the `ServiceMeshPeer`s of the control plane's namespace, usable or not: each
//! has every series from the start (at 0) and loses them when it leaves the configuration.
//! [`sample`] reads them (pure) from the model in force, the importers' states and the
//! exports; [`FederationRecorder`] sets the series; [`run`] keeps doing so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use isthmus_api::federation::ServiceMeshPeer;
use isthmus_federation::discovery::Exports;
use isthmus_federation::imports::ImportDecision;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::federation::ImportStates;
use crate::model::MeshModel;

#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

/// The per-peer families; clones share the series.
#[derive(Debug, Clone, Default)]
pub struct FederationMetrics {
    pub connected: Family<PeerLabels, Gauge>,
    pub last_full_sync: Family<PeerLabels, Gauge>,
    pub imported: Family<PeerLabels, Gauge>,
    pub exported: Family<PeerLabels, Gauge>,
    pub stale: Family<PeerLabels, Gauge>,
    pub events: Family<PeerLabels, Counter>,
}

impl FederationMetrics {
    /// Registers the families in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "isthmus_federation_peer_connected",
            "1 while the discovery watch of the peer is connected, else 0",
            self.connected.clone(),
        );
        registry.register(
            "isthmus_federation_peer_last_full_sync_timestamp_seconds",
            "When the peer's last full list of exports was applied (Unix seconds; 0: never)",
            self.last_full_sync.clone(),
        );
        registry.register(
            "isthmus_federation_imported_services",
            "Services imported from the peer",
            self.imported.clone(),
        );
        registry.register(
            "isthmus_federation_exported_services",
            "Services exported to the peer",
            self.exported.clone(),
        );
        registry.register(
            "isthmus_federation_stale_imports",
            "Imported services held from a stale copy of the peer's list (its discovery watch is \
             down)",
            self.stale.clone(),
        );
        registry.register(
            "isthmus_federation_events_received",
            "Full lists and changes received from the peer (heartbeats not counted)",
            self.events.clone(),
        );
    }
}

/// One peer as the metrics show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSample {
    pub connected: bool,
    pub last_full_sync: Option<SystemTime>,
    pub imported: usize,
    pub exported: usize,
    pub stale: usize,
    /// The importer's count: it starts again from 0 when the importer restarts.
    pub events_received: u64,
}

/// Every configured peer's sample.
pub fn sample(
    model: &MeshModel,
    imports: &ImportStates,
    exports: &Exports,
) -> BTreeMap<String, PeerSample> {
    let configured = model
        .config
        .of_type::<ServiceMeshPeer>()
        .filter(|(key, _)| key.namespace == model.root_namespace)
        .map(|(key, _)| key.name.as_str());
    let usable = model.peers.iter().map(|p| p.name.as_str());
    configured
        .chain(usable)
        .map(|peer| {
            let state = imports.get(peer);
            let imported = model.imports.get(peer).map_or(0, |entries| {
                entries
                    .iter()
                    .filter(|e| matches!(e.decision, ImportDecision::Imported { .. }))
                    .count()
            });
            let stale = state.is_some_and(|s| s.status.stale);
            let sample = PeerSample {
                connected: state.is_some_and(|s| s.status.stream.connected),
                last_full_sync: state.and_then(|s| s.last_full_sync),
                imported,
                exported: exports.catalogs.get(peer).map_or(0, |c| c.len()),
                stale: if stale { imported } else { 0 },
                events_received: state.map_or(0, |s| s.events_received),
            };
            (peer.to_owned(), sample)
        })
        .collect()
}

/// Sets [`FederationMetrics`] from samples: creates the series of new peers, removes those of
/// peers gone, and adds to the events counter what each importer counted since the last time.
#[derive(Debug)]
pub struct FederationRecorder {
    metrics: FederationMetrics,
    /// Per peer, the importer's event count last recorded.
    events_seen: BTreeMap<String, u64>,
}

impl FederationRecorder {
    pub fn new(metrics: FederationMetrics) -> Self {
        Self {
            metrics,
            events_seen: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, samples: &BTreeMap<String, PeerSample>) {
        let m = &self.metrics;
        let gone: Vec<String> = self
            .events_seen
            .keys()
            .filter(|peer| !samples.contains_key(*peer))
            .cloned()
            .collect();
        for peer in gone {
            self.events_seen.remove(&peer);
            let labels = PeerLabels { peer };
            m.connected.remove(&labels);
            m.last_full_sync.remove(&labels);
            m.imported.remove(&labels);
            m.exported.remove(&labels);
            m.stale.remove(&labels);
            m.events.remove(&labels);
        }
        for (peer, s) in samples {
            let labels = PeerLabels { peer: peer.clone() };
            m.connected
                .get_or_create(&labels)
                .set(i64::from(s.connected));
            m.last_full_sync
                .get_or_create(&labels)
                .set(s.last_full_sync.map_or(0, unix_seconds));
            m.imported.get_or_create(&labels).set(count(s.imported));
            m.exported.get_or_create(&labels).set(count(s.exported));
            m.stale.get_or_create(&labels).set(count(s.stale));
            let seen = self.events_seen.entry(peer.clone()).or_default();
            // A smaller count is a restarted importer's: all of it is new.
            let new = s
                .events_received
                .checked_sub(*seen)
                .unwrap_or(s.events_received);
            m.events.get_or_create(&labels).inc_by(new);
            *seen = s.events_received;
        }
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Records a sample whenever the model, the importers' states or the exports change; ends
/// when one of them is no longer published.
pub async fn run(
    mut recorder: FederationRecorder,
    mut model: watch::Receiver<Arc<MeshModel>>,
    mut imports: watch::Receiver<Arc<ImportStates>>,
    mut exports: watch::Receiver<Arc<Exports>>,
) {
    loop {
        let samples = sample(
            &model.borrow_and_update(),
            &imports.borrow_and_update(),
            &exports.borrow_and_update(),
        );
        recorder.record(&samples);
        tokio::select! {
            r = model.changed() => if r.is_err() { return },
            r = imports.changed() => if r.is_err() { return },
            r = exports.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;
    use std::time::Duration;

    use isthmus_federation::discovery::{Catalog, ImportState};
    use isthmus_identity::testing::TestCa;
    use isthmus_proto::federation::ExportedService;

    use super::*;
    use crate::config::load_text;

    /// Red's configuration: green, usable (its root is `root_pem`), importing
    /// `bookinfo/ratings`; blue, not usable (no root); grey, outside the control plane's
    /// namespace (not a peer).
    fn config(root_pem: &str) -> String {
        let root: String = root_pem.lines().map(|l| format!("    {l}\n")).collect();
        let peer = |name: &str, namespace: &str| {
            format!(
                "apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  remote: {{addresses: [{name}.example]}}
  gateways: {{egress: {{name: egress-{name}}}}}
  security: {{trustDomain: {name}.local, certificateChain: {{kind: ConfigMap, name: {name}-root}}}}
"
            )
        };
        [
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: egress-green, namespace: istio-system}
spec:
  hosts: [egress-green.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 15443, name: tls}]
  endpoints: [{address: 10.0.0.9, ports: {tls: 15444}, serviceAccount: egress}]
"
            .to_owned(),
            format!(
                "apiVersion: v1
kind: ConfigMap
metadata: {{name: green-root, namespace: istio-system}}
data:
  root-cert.pem: |
{root}"
            ),
            peer("green", "istio-system"),
            peer("blue", "istio-system"),
            peer("grey", "elsewhere"),
            "apiVersion: federation.maistra.io/v1
kind: ImportedServiceSet
metadata: {name: green, namespace: istio-system}
spec:
  importRules:
  - type: NameSelector
    nameSelector: {namespace: bookinfo, name: ratings}
"
            .to_owned(),
        ]
        .join("---\n")
    }

    fn offered(name: &str) -> ExportedService {
        ExportedService {
            hostname: format!("{name}.bookinfo.svc.red-exports.local"),
            name: name.into(),
            namespace: "bookinfo".into(),
            ..Default::default()
        }
    }

    fn model(imports: &ImportStates) -> MeshModel {
        let ca = TestCa::new("green.local");
        let snapshot = load_text(&config(&ca.root_pem()), Path::new("t.yaml"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        MeshModel::build_with_imports(
            Arc::new(snapshot),
            &crate::federation::catalogs(imports),
            &"red.local".parse().unwrap(),
            "istio-system",
        )
    }

    /// Green's importer: connected or not (then stale), holding `offers`.
    fn green(connected: bool, offers: &[&str]) -> ImportStates {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut state = ImportState {
            catalog: Some(Arc::new(Catalog::new(offers.iter().map(|n| offered(n))))),
            last_full_sync: Some(at),
            events_received: 7,
            ..ImportState::default()
        };
        state.status.stream.connected("green.example:8188", at);
        if !connected {
            state.status.stream.disconnected("heartbeats missed", at);
            state.status.stale = true;
        }
        ImportStates::from([("green".to_owned(), state)])
    }

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn every_configured_peer_has_every_series_at_zero_from_the_start() {
        let imports = ImportStates::new();
        let samples = sample(&model(&imports), &imports, &Exports::default());
        assert_eq!(
            samples.keys().collect::<Vec<_>>(),
            ["blue", "green"],
            "the peers of the control plane's namespace, usable or not"
        );
        assert!(samples.values().all(|s| *s == PeerSample::default()));
        let metrics = FederationMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        FederationRecorder::new(metrics).record(&samples);
        let out = text(&registry);
        for name in [
            "isthmus_federation_peer_connected",
            "isthmus_federation_peer_last_full_sync_timestamp_seconds",
            "isthmus_federation_imported_services",
            "isthmus_federation_exported_services",
            "isthmus_federation_stale_imports",
            "isthmus_federation_events_received_total",
        ] {
            for peer in ["blue", "green"] {
                let series = format!("{name}{{peer=\"{peer}\"}} 0");
                assert!(out.contains(&series), "{series} in {out}");
            }
        }
    }

    #[test]
    fn samples_read_the_model_the_importers_and_the_exports() {
        let exports = Exports {
            catalogs: BTreeMap::from([(
                "green".to_owned(),
                Arc::new(Catalog::new([offered("a"), offered("b")])),
            )]),
            ..Exports::default()
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // `details` is offered but no rule takes it.
        let imports = green(true, &["ratings", "details"]);
        let samples = sample(&model(&imports), &imports, &exports);
        let connected = PeerSample {
            connected: true,
            last_full_sync: Some(at),
            imported: 1,
            exported: 2,
            stale: 0,
            events_received: 7,
        };
        assert_eq!(samples["green"], connected);
        assert_eq!(samples["blue"], PeerSample::default());

        let imports = green(false, &["ratings", "details"]);
        let samples = sample(&model(&imports), &imports, &exports);
        assert_eq!(
            samples["green"],
            PeerSample {
                connected: false,
                stale: 1,
                ..connected
            }
        );
    }

    #[test]
    fn events_add_up_across_importer_restarts_and_gone_peers_lose_their_series() {
        let metrics = FederationMetrics::default();
        let mut recorder = FederationRecorder::new(metrics.clone());
        let with = |events: u64| {
            BTreeMap::from([(
                "green".to_owned(),
                PeerSample {
                    events_received: events,
                    last_full_sync: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(5)),
                    ..PeerSample::default()
                },
            )])
        };
        let green = PeerLabels {
            peer: "green".into(),
        };
        recorder.record(&with(3));
        recorder.record(&with(5));
        assert_eq!(metrics.events.get_or_create(&green).get(), 5);
        // The importer restarted (the peer's address changed): its count starts again.
        recorder.record(&with(2));
        assert_eq!(metrics.events.get_or_create(&green).get(), 7);
        assert_eq!(metrics.last_full_sync.get_or_create(&green).get(), 5);
        recorder.record(&BTreeMap::new());
        assert!(metrics.events.get(&green).is_none());
        assert!(metrics.connected.get(&green).is_none());
        assert!(metrics.stale.get(&green).is_none());
    }
}
