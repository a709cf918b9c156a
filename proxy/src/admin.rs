//! The admin port (15000, loopback), with Envoy's paths: `/ready`, `/certs`, `/listeners`,
//! `/clusters`, `/config_dump`, `/stats/prometheus` (OpenMetrics or the classic Prometheus
//! text format, by `Accept`).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use isthmus_identity::pem::certs_to_pem;
use isthmus_identity::{CertInfo, CertManager, format_time};
use isthmus_runtime::metrics_format;
use serde_json::json;
use tokio::sync::watch;

use crate::config::ProxyConfig;
use crate::runtime::Runtime;
use crate::xds::client::XdsStatus;

/// `/ready` (and the status port's `/healthz/ready`): `200 LIVE` once the proxy has what it
/// needs, else `503` saying what is missing.
pub(crate) fn readiness(state: AdminState) -> axum::routing::MethodRouter {
    get(move || {
        let missing = state.not_ready();
        async move {
            match missing {
                None => (StatusCode::OK, "LIVE\n".to_owned()),
                Some(why) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("PRE_INITIALIZING: {why}\n"),
                ),
            }
        }
    })
}

/// What the admin port reads; each part is there only if that half of the proxy runs.
#[derive(Debug, Clone)]
pub struct AdminState {
    certs: Option<CertManager>,
    config: Option<watch::Receiver<Arc<ProxyConfig>>>,
    xds: Option<watch::Receiver<XdsStatus>>,
    runtime: Option<watch::Receiver<Arc<Runtime>>>,
    registry: Arc<prometheus_client::registry::Registry>,
}

impl AdminState {
    pub fn new(certs: Option<CertManager>) -> Self {
        Self {
            certs,
            config: None,
            xds: None,
            runtime: None,
            registry: Arc::default(),
        }
    }

    pub fn with_metrics(mut self, registry: prometheus_client::registry::Registry) -> Self {
        self.registry = Arc::new(registry);
        self
    }

    pub fn with_xds(
        mut self,
        config: watch::Receiver<Arc<ProxyConfig>>,
        xds: watch::Receiver<XdsStatus>,
        runtime: watch::Receiver<Arc<Runtime>>,
    ) -> Self {
        self.config = Some(config);
        self.xds = Some(xds);
        self.runtime = Some(runtime);
        self
    }

    fn config(&self) -> Arc<ProxyConfig> {
        self.config
            .as_ref()
            .map(|c| c.borrow().clone())
            .unwrap_or_default()
    }

    /// `None` when ready; else what is missing. The status port's `/healthz/ready` asks the
    /// same (`status.rs`).
    pub(crate) fn not_ready(&self) -> Option<String> {
        if let Some(certs) = &self.certs
            && certs.current().is_none()
        {
            return Some("no certificate yet".into());
        }
        if let Some(xds) = &self.xds {
            let status = xds.borrow();
            if !status.ready {
                let waiting: Vec<&str> = status.waiting_for.iter().map(|t| t.short()).collect();
                return Some(if status.connected {
                    format!("waiting for {}", waiting.join(", "))
                } else {
                    format!(
                        "not connected to isthmusd ({})",
                        status.last_disconnect.as_deref().unwrap_or("connecting")
                    )
                });
            }
        }
        None
    }
}

pub fn router(state: AdminState) -> Router {
    let ready = state.clone();
    let certs = state.certs.clone();
    let listeners = state.clone();
    let clusters = state.clone();
    let registry = state.registry.clone();
    let dump = state;
    Router::new()
        .route("/stats/prometheus", get(metrics_format::handler(registry)))
        .route("/ready", readiness(ready))
        .route(
            "/certs",
            get(move || {
                let body = certs_json(certs.as_ref());
                async move { body }
            }),
        )
        .route(
            "/listeners",
            get(move || {
                let body = listeners_text(&listeners.config());
                async move { body }
            }),
        )
        .route(
            "/clusters",
            get(move || {
                let runtime = clusters
                    .runtime
                    .as_ref()
                    .map(|r| r.borrow().clone())
                    .unwrap_or_default();
                let body = clusters_text(&runtime);
                async move { body }
            }),
        )
        .route(
            "/config_dump",
            get(move || {
                let body = config_dump(&dump);
                async move { body }
            }),
        )
}

/// Envoy's `/listeners` text form: `name::address`.
fn listeners_text(config: &ProxyConfig) -> String {
    let mut out = String::new();
    for (name, l) in &config.listeners {
        let _ = writeln!(out, "{name}::{}", l.address);
    }
    out
}

/// Envoy's `/clusters` text form, the lines this proxy knows: per host its weight, priority,
/// zone and health (`/failed_outlier_check` while ejected).
fn clusters_text(runtime: &Runtime) -> String {
    let mut out = String::new();
    let mut names: Vec<&String> = runtime.clusters.keys().collect();
    names.sort();
    for name in names {
        let cluster = &runtime.clusters[name];
        let _ = writeln!(out, "{name}::added_via_api::true");
        for (priority, hosts) in cluster.priorities.iter().enumerate() {
            for h in hosts {
                let host = format!("{name}::{}:{}", h.host, h.port);
                let _ = writeln!(out, "{host}::weight::{}", h.weight);
                let _ = writeln!(out, "{host}::priority::{priority}");
                let flags = match (h.eds_healthy, h.health.is_ejected()) {
                    (true, false) => "healthy",
                    (true, true) => "/failed_outlier_check",
                    (false, false) => "/failed_eds_health",
                    (false, true) => "/failed_eds_health/failed_outlier_check",
                };
                let _ = writeln!(out, "{host}::health_flags::{flags}");
                let _ = writeln!(
                    out,
                    "{host}::rq_active::{}",
                    h.active.load(std::sync::atomic::Ordering::Relaxed)
                );
            }
        }
    }
    out
}

/// The xDS state and every applied resource, by type (the model, in Rust's debug notation).
fn config_dump(state: &AdminState) -> axum::Json<serde_json::Value> {
    let config = state.config();
    let xds = state
        .xds
        .as_ref()
        .map(|x| x.borrow().clone())
        .unwrap_or_default();
    let types: Vec<serde_json::Value> = xds
        .types
        .iter()
        .map(|t| {
            json!({
                "type": t.kind.short(),
                "version": t.version,
                "resources": t.resources,
                "updates_accepted": t.accepted,
                "updates_rejected": t.rejected,
                "last_error": t.last_error,
            })
        })
        .collect();
    fn dump<T: std::fmt::Debug>(
        m: &std::collections::BTreeMap<String, Arc<T>>,
    ) -> serde_json::Value {
        m.iter()
            .map(|(k, v)| (k.clone(), json!(format!("{v:?}"))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
    let secrets: serde_json::Map<String, serde_json::Value> = config
        .secrets
        .iter()
        .map(|(name, s)| {
            let described = match &**s {
                crate::config::secret::Secret::Certificate(c) => {
                    json!({"certificate": c.spiffe_id().to_string(), "not_after": format_time(c.leaf().not_after)})
                }
                crate::config::secret::Secret::TrustBundles(b) => json!({
                    "trust_domains": b.iter().map(|b| b.trust_domain().to_string()).collect::<Vec<_>>()
                }),
                // A credential's certificate: what it is, never its key.
                crate::config::secret::Secret::PlainCertificate(c) => json!({
                    "plain_certificate": c.leaf().subject,
                    "dns_sans": c.leaf().dns_sans,
                    "uri_sans": c.leaf().uri_sans,
                    "not_after": format_time(c.leaf().not_after),
                }),
                crate::config::secret::Secret::Roots(r) => json!({"roots": r.subjects()}),
            };
            (name.clone(), described)
        })
        .collect();
    axum::Json(json!({
        "xds": {
            "connected": xds.connected,
            "ready": xds.ready,
            "last_disconnect": xds.last_disconnect,
            "types": types,
        },
        "listeners": dump(&config.listeners),
        "routes": dump(&config.routes),
        "clusters": dump(&config.clusters),
        "endpoints": dump(&config.endpoints),
        "secrets": secrets,
    }))
}

/// The current certificate chain and roots, decoded (no private key).
fn certs_json(certs: Option<&CertManager>) -> axum::Json<serde_json::Value> {
    let Some(cert) = certs.and_then(CertManager::current) else {
        return axum::Json(json!({ "certificates": [] }));
    };
    let describe = |der: &rustls_pki_types::CertificateDer<'_>| match CertInfo::parse(der) {
        Ok(info) => json!({
            "subject": info.subject,
            "issuer": info.issuer,
            "serial_number": info.serial,
            "subject_alt_names": info.uri_sans.iter().map(|u| json!({ "uri": u })).collect::<Vec<_>>(),
            "valid_from": format_time(info.not_before),
            "expiration_time": format_time(info.not_after),
            "is_ca": info.is_ca,
        }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    axum::Json(json!({
        "identity": cert.spiffe_id().to_string(),
        "certificates": [{
            "cert_chain": cert.chain().iter().map(describe).collect::<Vec<_>>(),
            "ca_cert": cert.roots().iter().map(describe).collect::<Vec<_>>(),
        }],
        "roots_pem": certs_to_pem(cert.roots()),
    }))
}
