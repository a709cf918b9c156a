//! CA metrics, in Prometheus text format on `isthmusd`'s debug port.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: String,
}

/// Counters of the certificate service.
#[derive(Debug, Clone, Default)]
pub struct CaMetrics {
    /// Every request received.
    pub requests: Counter,
    /// Certificates signed.
    pub issued: Counter,
    /// Requests refused, by reason (`identity_mismatch`, `revoked_token`, ...).
    pub refused: Family<RefusalLabels, Counter>,
}

impl CaMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "isthmus_ca_csr_requests",
            "Certificate signing requests received",
            metrics.requests.clone(),
        );
        registry.register(
            "isthmus_ca_certificates_issued",
            "Workload certificates signed",
            metrics.issued.clone(),
        );
        registry.register(
            "isthmus_ca_csr_refused",
            "Certificate signing requests refused, by reason",
            metrics.refused.clone(),
        );
        metrics
    }

    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&RefusalLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
