//! The xDS server's metric families, with Istio's names:
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `pilot_xds` | gauge | | xDS streams open whose node the gate admitted (connected proxies) |
//! | `pilot_xds_pushes_total` | counter | `type` | responses sent |
//! | `pilot_xds_push_time` | histogram (s) | `type` | from a response becoming due to its hand-over to gRPC ([`super::stream`]) |
//! | `pilot_proxy_convergence_time` | histogram (s) | | from a configuration change's publication to the proxy acknowledging all of it ([`super::stream`]) |
//! | `pilot_total_xds_rejects_total` | counter | `type` | NACKs |
//! | `isthmus_xds_rejects_total` | counter | `type`, `reason` | NACKs by bounded reason ([`super::reasons`]) |
//!
//! `type` is `cds`, `eds`, `lds`, `rds` or `sds` (each series created at 0), or `other` for a
//! type URL outside those five.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::reasons::BoundedReasons;
use crate::xds::resources::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};

/// Bucket bounds (seconds) of both xDS histograms: Istio's (0.1 s to 30 s) with finer
/// steps below, where a local push lands.
pub const SECONDS_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0,
];

/// An xDS type as a metric label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum XdsType {
    Cds,
    Eds,
    Lds,
    Rds,
    Sds,
    /// A type URL that is none of the five (a proxy may subscribe to anything).
    Other,
}

impl XdsType {
    /// The types whose series exist from the start.
    pub const KNOWN: [XdsType; 5] = [Self::Cds, Self::Eds, Self::Lds, Self::Rds, Self::Sds];

    pub fn of_url(type_url: &str) -> Self {
        match type_url {
            CLUSTER => Self::Cds,
            ENDPOINT => Self::Eds,
            LISTENER => Self::Lds,
            ROUTE => Self::Rds,
            SECRET => Self::Sds,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cds => "cds",
            Self::Eds => "eds",
            Self::Lds => "lds",
            Self::Rds => "rds",
            Self::Sds => "sds",
            Self::Other => "other",
        }
    }
}

impl EncodeLabelValue for XdsType {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: XdsType,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub r#type: XdsType,
    /// A bounded key of the NACK's message ([`super::reasons`]).
    pub reason: String,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

/// Per-type histograms in seconds.
pub type TypeHistograms = Family<TypeLabels, Histogram, fn() -> Histogram>;

/// The xDS server's metrics; clones share the series.
#[derive(Debug, Clone)]
pub struct XdsMetrics {
    /// `pilot_xds`.
    pub connected: Gauge,
    /// `pilot_xds_pushes_total{type}`.
    pub pushes: Family<TypeLabels, Counter>,
    /// `pilot_xds_push_time{type}`.
    pub push_time: TypeHistograms,
    /// `pilot_proxy_convergence_time`.
    pub convergence: Histogram,
    /// `pilot_total_xds_rejects_total{type}`.
    pub rejects: Family<TypeLabels, Counter>,
    /// `isthmus_xds_rejects_total{type,reason}`.
    pub reject_reasons: Family<RejectLabels, Counter>,
    reasons: Arc<BoundedReasons>,
}

impl Default for XdsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl XdsMetrics {
    /// The families, with every per-type series at 0 (not registered: see [`Self::register`]).
    pub fn new() -> Self {
        let metrics = Self {
            connected: Gauge::default(),
            pushes: Family::default(),
            push_time: Family::new_with_constructor(seconds_histogram),
            convergence: seconds_histogram(),
            rejects: Family::default(),
            reject_reasons: Family::default(),
            reasons: Arc::new(BoundedReasons::default()),
        };
        for r#type in XdsType::KNOWN {
            let labels = TypeLabels { r#type };
            let _ = metrics.pushes.get_or_create(&labels);
            let _ = metrics.push_time.get_or_create(&labels);
            let _ = metrics.rejects.get_or_create(&labels);
        }
        metrics
    }

    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::new();
        registry.register(
            "pilot_xds",
            "xDS streams open whose node was admitted (connected proxies)",
            metrics.connected.clone(),
        );
        registry.register(
            "pilot_xds_pushes",
            "xDS responses sent, by type",
            metrics.pushes.clone(),
        );
        registry.register(
            "pilot_xds_push_time",
            "Seconds from an xDS response becoming due on a stream (the request or configuration \
             change that called for it) to its hand-over to gRPC, by type",
            metrics.push_time.clone(),
        );
        registry.register(
            "pilot_proxy_convergence_time",
            "Seconds from the publication of a configuration change for a proxy to the proxy \
             acknowledging every type it subscribes to at a configuration that includes it",
            metrics.convergence.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "xDS responses rejected by proxies (NACK), by type",
            metrics.rejects.clone(),
        );
        registry.register(
            "isthmus_xds_rejects",
            "xDS responses rejected by proxies (NACK), by type and reason (the field path or \
             first words of the proxy's message; at most 20 reasons, then other)",
            metrics.reject_reasons.clone(),
        );
        metrics
    }

    /// Counts a stream as connected until the returned guard is dropped.
    pub fn connected(&self) -> ConnectedStream {
        self.connected.inc();
        ConnectedStream(self.connected.clone())
    }

    /// Counts a response of `r#type`, and its push time when known.
    pub fn pushed(&self, r#type: XdsType, push_time: Option<Duration>) {
        let labels = TypeLabels { r#type };
        self.pushes.get_or_create(&labels).inc();
        if let Some(push_time) = push_time {
            self.push_time
                .get_or_create(&labels)
                .observe(push_time.as_secs_f64());
        }
    }

    /// Counts a NACK of `type_url` with the proxy's `message`.
    pub fn rejected(&self, type_url: &str, message: &str) {
        let r#type = XdsType::of_url(type_url);
        self.rejects.get_or_create(&TypeLabels { r#type }).inc();
        let reason = self.reasons.label(message);
        self.reject_reasons
            .get_or_create(&RejectLabels { r#type, reason })
            .inc();
    }
}

/// A connected stream, counted in `pilot_xds` while this lives.
#[derive(Debug)]
pub struct ConnectedStream(Gauge);

impl Drop for ConnectedStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn every_type_series_exists_before_the_first_push() {
        let mut registry = Registry::default();
        XdsMetrics::register(&mut registry);
        let out = text(&registry);
        for t in ["cds", "eds", "lds", "rds", "sds"] {
            assert!(
                out.contains(&format!("pilot_xds_pushes_total{{type=\"{t}\"}} 0")),
                "{out}"
            );
            assert!(
                out.contains(&format!("pilot_total_xds_rejects_total{{type=\"{t}\"}} 0")),
                "{out}"
            );
            assert!(
                out.contains(&format!("pilot_xds_push_time_count{{type=\"{t}\"}} 0")),
                "{out}"
            );
        }
        assert!(
            out.contains("pilot_proxy_convergence_time_count 0"),
            "{out}"
        );
        assert!(out.contains("pilot_xds 0"), "{out}");
        assert!(!out.contains("type=\"other\""), "{out}");
    }

    #[test]
    fn types_by_url_and_the_connected_guard() {
        assert_eq!(XdsType::of_url(CLUSTER), XdsType::Cds);
        assert_eq!(XdsType::of_url(SECRET), XdsType::Sds);
        assert_eq!(XdsType::of_url("type.googleapis.com/x.Y"), XdsType::Other);
        let metrics = XdsMetrics::new();
        let a = metrics.connected();
        let b = metrics.connected();
        assert_eq!(metrics.connected.get(), 2);
        drop(a);
        drop(b);
        assert_eq!(metrics.connected.get(), 0);
    }

    #[test]
    fn a_nack_is_counted_by_type_and_by_type_and_reason() {
        let metrics = XdsMetrics::new();
        metrics.rejected(LISTENER, "lds \"a\": address: required");
        metrics.rejected(LISTENER, "lds \"b\": address: required");
        let labels = TypeLabels {
            r#type: XdsType::Lds,
        };
        assert_eq!(metrics.rejects.get_or_create(&labels).get(), 2);
        let by_reason = RejectLabels {
            r#type: XdsType::Lds,
            reason: "address".into(),
        };
        assert_eq!(metrics.reject_reasons.get_or_create(&by_reason).get(), 2);
    }
}
