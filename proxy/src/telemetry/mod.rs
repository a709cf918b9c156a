//! The proxy's telemetry as users of Istio know it: Istio's standard metrics on both sides of
//! every call (`istio.rs`, with `labels.rs`), filled from the metadata exchange
//! (`peer_metadata.rs`), the verified certificates and the control plane's metadata
//! (`config/telemetry.rs`); a federation gateway's own metrics (`gateway.rs`); and one span per
//! sidecar per request (`trace`). `request.rs` follows one HTTP request from head to the end of
//! its response; `header_scan.rs` finds the headers it reads in one pass.
//!
//! With `--telemetry off` none of it runs (the benchmarks' baseline); the proxy's own
//! `isthmus_proxy_*` metrics stay.

pub mod gateway;
pub mod header_scan;
pub mod istio;
pub mod labels;
pub mod peer_metadata;
pub mod request;
pub mod tcp;
pub mod trace;

use std::sync::Arc;

use prometheus_client::registry::Registry;

/// The process's telemetry: shared by every connection.
#[derive(Debug, Default)]
pub struct Telemetry {
    pub istio: istio::IstioMetrics,
    pub gateway: gateway::GatewayMetrics,
    pub tracer: trace::Tracer,
    /// Decoded metadata-exchange headers, bounded.
    pub peers: Arc<peer_metadata::PeerCache>,
    /// Peers' principals named in labels, bounded.
    pub principals: labels::Principals,
}

impl Telemetry {
    pub fn register(&self, registry: &mut Registry) {
        self.istio.register(registry);
        self.gateway.register(registry);
    }
}
