//! What the proxies are told about telemetry: the mesh's name (the `source_mesh` /
//! `destination_mesh` label values of Istio's standard metrics), the names of the peers'
//! meshes by trust domain, and where traces go. Set by whoever runs the model (`isthmusd`'s
//! flags); not configuration.

use isthmus_identity::TrustDomain;

use super::MeshModel;

/// `isthmusd`'s telemetry settings (`--mesh-id`, `--tracing-*`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetrySettings {
    /// This mesh's name; the trust domain when `None` (Istio's default mesh ID).
    pub mesh_id: Option<String>,
    /// Where proxies send their spans; no tracing when `None`.
    pub tracing: Option<TracingSettings>,
}

/// OTLP trace export, pushed to the proxies as the listeners' `tracing` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// The OTLP/gRPC collector, `host:port`.
    pub otlp_endpoint: String,
    /// Percentage of requests that start a sampled trace (0–100); a request that comes with a
    /// sampling decision keeps it.
    pub sampling_percent: f64,
}

impl MeshModel {
    /// This mesh's name, as metric labels and spans carry it.
    pub fn mesh_id(&self) -> String {
        self.telemetry
            .mesh_id
            .clone()
            .unwrap_or_else(|| self.trust_domain.to_string())
    }

    /// Trust domain -> mesh name, for every mesh whose workloads may call ours or be called:
    /// ours, and each usable peer's (named as its `ServiceMeshPeer` is).
    pub fn meshes_by_trust_domain(&self) -> Vec<(TrustDomain, String)> {
        let mut meshes = vec![(self.trust_domain.clone(), self.mesh_id())];
        for peer in &self.peers {
            if !meshes.iter().any(|(td, _)| *td == peer.trust_domain) {
                meshes.push((peer.trust_domain.clone(), peer.name.clone()));
            }
        }
        meshes
    }
}
