//! The proxy's own metrics, on the admin port at `/stats/prometheus`: connections accepted and
//! refused (with the reason: hostile or broken input is counted, never fatal), HTTP responses
//! by code class, upstream connect failures, retries, timeouts and ejections, and xDS updates
//! accepted and rejected per type, the DNS proxy's queries by result, and mesh mTLS handshakes
//! by side and whether they resumed a session.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub listener: String,
    /// `no_filter_chain`, `tls_handshake`, `tls_handshake_timeout`, `tls_inspector`, `rbac`,
    /// `http_protocol`.
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub listener: String,
    /// `2xx` … `5xx`.
    pub code_class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

/// A circuit breaker refusal: the cluster and which breaker (`max_connections`,
/// `max_pending_requests`, `max_requests`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    pub cluster: String,
    pub breaker: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsLabels {
    /// `CDS`, `EDS`, `LDS`, `RDS`, `SDS`.
    pub r#type: String,
    /// `accepted` or `rejected`.
    pub result: String,
}

/// A DNS query the DNS proxy handled, by protocol and what became of it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// `udp` or `tcp`.
    pub protocol: &'static str,
    /// `mesh` (answered from the name table), `forwarded` (answered by the pod's own
    /// resolver), `upstream_failure` (SERVFAIL: no resolver answered, or too many waiting),
    /// `malformed` (FORMERR or dropped), `refused` (NOTIMP, FORMERR for several questions).
    pub result: &'static str,
}

/// A mesh mTLS handshake the proxy completed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `downstream` (the proxy is the server) or `upstream` (the proxy is the client).
    pub side: &'static str,
    /// `true` when the handshake resumed a session (no certificates exchanged).
    pub resumed: &'static str,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub xds_updates: Family<XdsLabels, Counter>,
    pub dns_requests: Family<DnsLabels, Counter>,
    pub downstream_cx_total: Family<ListenerLabels, Counter>,
    pub downstream_cx_active: Family<ListenerLabels, Gauge>,
    pub downstream_cx_refused: Family<RefusedLabels, Counter>,
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    pub http_responses: Family<ResponseLabels, Counter>,
    pub http_rbac_denied: Family<ListenerLabels, Counter>,
    pub upstream_connect_failures: Family<ClusterLabels, Counter>,
    pub upstream_retries: Family<ClusterLabels, Counter>,
    pub upstream_timeouts: Family<ClusterLabels, Counter>,
    pub outlier_ejections: Family<ClusterLabels, Counter>,
    pub upstream_overflows: Family<OverflowLabels, Counter>,
    pub upstream_retry_overflows: Family<ClusterLabels, Counter>,
    /// Istio's standard metrics, the gateways' and tracing; `None` with `--telemetry off`.
    pub telemetry: Option<std::sync::Arc<crate::telemetry::Telemetry>>,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        if let Some(telemetry) = &self.telemetry {
            telemetry.register(registry);
        }
        let r = registry.sub_registry_with_prefix("isthmus_proxy");
        r.register(
            "dns_requests",
            "DNS queries the sidecar's DNS proxy handled, by protocol and result",
            self.dns_requests.clone(),
        );
        r.register(
            "xds_updates",
            "xDS responses applied (accepted) or NACKed (rejected), by type",
            self.xds_updates.clone(),
        );
        r.register(
            "downstream_connections",
            "Downstream connections accepted",
            self.downstream_cx_total.clone(),
        );
        r.register(
            "downstream_connections_active",
            "Downstream connections open",
            self.downstream_cx_active.clone(),
        );
        r.register(
            "downstream_connections_refused",
            "Downstream connections closed before their terminal filter, by reason",
            self.downstream_cx_refused.clone(),
        );
        r.register(
            "tls_handshakes",
            "Mesh mTLS handshakes completed, by side (downstream: as the server, upstream: as the client) and whether a session was resumed",
            self.tls_handshakes.clone(),
        );
        r.register(
            "http_responses",
            "HTTP responses sent downstream, by code class",
            self.http_responses.clone(),
        );
        r.register(
            "http_rbac_denied",
            "HTTP requests denied by RBAC",
            self.http_rbac_denied.clone(),
        );
        r.register(
            "upstream_connect_failures",
            "Upstream connection attempts that failed",
            self.upstream_connect_failures.clone(),
        );
        r.register(
            "upstream_retries",
            "Upstream request retries",
            self.upstream_retries.clone(),
        );
        r.register(
            "upstream_timeouts",
            "Upstream requests that timed out",
            self.upstream_timeouts.clone(),
        );
        r.register(
            "upstream_overflows",
            "Connections and requests refused by a cluster's circuit breakers, by breaker (max_connections, max_pending_requests, max_requests)",
            self.upstream_overflows.clone(),
        );
        r.register(
            "upstream_retry_overflows",
            "Retries not made because the cluster's retry limit (max_retries or budget) was reached",
            self.upstream_retry_overflows.clone(),
        );
        r.register(
            "outlier_ejections",
            "Hosts ejected by outlier detection",
            self.outlier_ejections.clone(),
        );
    }

    pub fn refused(&self, listener: &str, reason: &str) {
        self.downstream_cx_refused
            .get_or_create(&RefusedLabels {
                listener: listener.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a completed mesh mTLS handshake on `side` (`downstream` or `upstream`).
    pub fn handshake(&self, side: &'static str, conn: &rustls::CommonState) {
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        self.tls_handshakes
            .get_or_create(&HandshakeLabels {
                side,
                resumed: if resumed { "true" } else { "false" },
            })
            .inc();
    }

    /// Counts a circuit breaker's refusal.
    pub fn overflow(&self, cluster: &str, breaker: &'static str) {
        self.upstream_overflows
            .get_or_create(&OverflowLabels {
                cluster: cluster.to_owned(),
                breaker,
            })
            .inc();
    }

    pub fn cluster(family: &Family<ClusterLabels, Counter>, cluster: &str) {
        family
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_owned(),
            })
            .inc();
    }
}
