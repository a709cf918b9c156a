//! CA metrics, on `isthmusd`'s debug port (`/metrics`): the certificate service's requests and
//! outcomes, under our names and Istio's (`citadel_server_*`, so Istio's dashboards work), and
//! when the CA's certificates expire.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `isthmus_ca_csr_requests_total` | counter | | CSRs received by the certificate service |
//! | `isthmus_ca_certificates_issued_total` | counter | | certificates it signed |
//! | `isthmus_ca_csr_refused_total` | counter | `reason` | CSRs refused |
//! | `citadel_server_csr_count_total` | counter | | the same series as `isthmus_ca_csr_requests_total` |
//! | `citadel_server_success_cert_issuance_count_total` | counter | | the same series as `isthmus_ca_certificates_issued_total` |
//! | `citadel_server_csr_sign_err_count_total` | counter | `error` | CSRs that got no certificate, `error` = the refusal's reason |
//! | `citadel_server_root_cert_expiry_timestamp` | gauge | | when the first of the trust domain's roots expires (Unix seconds) |
//! | `citadel_server_cert_chain_expiry_timestamp` | gauge | | when the first certificate of the signing chain (the signing CA and its intermediates) expires (Unix seconds) |
//!
//! prometheus-client appends `_total` to counters, Istio's included. Unlike Istio, which
//! counts authentication failures apart, `citadel_server_csr_sign_err_count_total` counts
//! every refusal, authentication's reasons (`no_credential`, `revoked_token`, ...) as well as
//! signing's (`identity_mismatch`, `malformed_csr`, ...): every CSR counted is either a
//! success or an error. Certificates `isthmusd` issues to itself and, over SDS, to the proxies
//! it configures do not go through the certificate service and are not counted.

use std::time::SystemTime;

use isthmus_identity::CertInfo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls_pki_types::CertificateDer;

use super::material::CaMaterial;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignErrorLabels {
    /// The refusal's reason, as in [`RefusalLabels`].
    pub error: String,
}

/// Counters and gauges of the CA; clones share the series.
#[derive(Debug, Clone, Default)]
pub struct CaMetrics {
    /// Every request received (also `citadel_server_csr_count`).
    pub requests: Counter,
    /// Certificates signed (also `citadel_server_success_cert_issuance_count`).
    pub issued: Counter,
    /// Requests refused, by reason (`identity_mismatch`, `revoked_token`, ...).
    pub refused: Family<RefusalLabels, Counter>,
    /// The same refusals under Istio's name and label.
    pub sign_errors: Family<SignErrorLabels, Counter>,
    /// `citadel_server_root_cert_expiry_timestamp`.
    pub root_expiry: Gauge,
    /// `citadel_server_cert_chain_expiry_timestamp`.
    pub chain_expiry: Gauge,
}

impl CaMetrics {
    /// Creates the metrics and registers them in `registry`.
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
        registry.register(
            "citadel_server_csr_count",
            "Certificate signing requests received (isthmus_ca_csr_requests_total)",
            metrics.requests.clone(),
        );
        registry.register(
            "citadel_server_success_cert_issuance_count",
            "Certificates issued (isthmus_ca_certificates_issued_total)",
            metrics.issued.clone(),
        );
        registry.register(
            "citadel_server_csr_sign_err_count",
            "Certificate signing requests that got no certificate, by error (the refusal's \
             reason, authentication failures included)",
            metrics.sign_errors.clone(),
        );
        registry.register(
            "citadel_server_root_cert_expiry_timestamp",
            "When the first of the trust domain's roots expires (Unix seconds)",
            metrics.root_expiry.clone(),
        );
        registry.register(
            "citadel_server_cert_chain_expiry_timestamp",
            "When the first certificate of the CA's signing chain expires (Unix seconds)",
            metrics.chain_expiry.clone(),
        );
        metrics
    }

    /// Counts a refused request.
    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&RefusalLabels {
                reason: reason.to_owned(),
            })
            .inc();
        self.sign_errors
            .get_or_create(&SignErrorLabels {
                error: reason.to_owned(),
            })
            .inc();
    }

    /// Sets the expiry gauges.
    pub fn set_expiry(&self, expiry: &CaExpiry) {
        self.root_expiry.set(unix_seconds(expiry.root));
        self.chain_expiry.set(unix_seconds(expiry.chain));
    }
}

/// When the CA's certificates expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaExpiry {
    /// The first of the trust domain's roots to expire.
    pub root: SystemTime,
    /// The first of the signing chain to expire: the signing CA and its intermediates (for a
    /// self-signed root, the root).
    pub chain: SystemTime,
}

impl CaExpiry {
    /// Of `material` (already checked when it was loaded).
    pub fn of(material: &CaMaterial) -> Self {
        let earliest = |certs: &[CertificateDer<'static>]| {
            certs
                .iter()
                .filter_map(|c| CertInfo::parse(c).ok())
                .map(|info| info.not_after)
                .min()
        };
        let chain = earliest(&material.intermediates)
            .map_or(material.not_after, |t| t.min(material.not_after));
        Self {
            root: earliest(&material.roots).unwrap_or(chain),
            chain,
        }
    }
}

fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use isthmus_identity::TrustDomain;

    use super::*;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn a_refusal_counts_under_both_names_requests_and_issues_share_their_series() {
        let mut registry = Registry::default();
        let metrics = CaMetrics::register(&mut registry);
        metrics.requests.inc();
        metrics.requests.inc();
        metrics.issued.inc();
        metrics.refuse("revoked_token");
        let out = text(&registry);
        for line in [
            "isthmus_ca_csr_requests_total 2",
            "citadel_server_csr_count_total 2",
            "isthmus_ca_certificates_issued_total 1",
            "citadel_server_success_cert_issuance_count_total 1",
            "isthmus_ca_csr_refused_total{reason=\"revoked_token\"} 1",
            "citadel_server_csr_sign_err_count_total{error=\"revoked_token\"} 1",
            "citadel_server_root_cert_expiry_timestamp 0",
        ] {
            assert!(out.contains(line), "{line} in {out}");
        }
    }

    #[test]
    fn the_expiry_of_a_generated_root_is_its_own() {
        let state = tempfile::tempdir().unwrap();
        let material =
            CaMaterial::load_or_generate(state.path(), &TrustDomain::new("red.local").unwrap())
                .unwrap();
        let expiry = CaExpiry::of(&material);
        assert_eq!(expiry.root, material.not_after);
        assert_eq!(expiry.chain, material.not_after);
        let metrics = CaMetrics::default();
        metrics.set_expiry(&expiry);
        let in_years = metrics.root_expiry.get() - unix_seconds(SystemTime::now());
        let year = i64::try_from(Duration::from_secs(365 * 24 * 3600).as_secs()).unwrap();
        assert!(in_years > 9 * year && in_years <= 10 * year, "{in_years}");
        assert_eq!(metrics.chain_expiry.get(), metrics.root_expiry.get());
    }
}
