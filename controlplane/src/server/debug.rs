//! `isthmusd`'s debug port (15014): Prometheus metrics (OpenMetrics or the classic text format,
//! by `Accept`), readiness, configuration status, the connected xDS streams with their per-type
//! versions and ACK/NACK state, proxies that get no configuration and why, and a per-proxy dump
//! of what it is sent, every service's virtual addresses (`/debug/addresses`). `/debug/*` shows configuration and every peer's export catalog, so it
//! answers loopback callers only (`kubectl port-forward`, `isthmusctl status` on the host)
//! unless `isthmusd --debug-allow-remote`; `/metrics` and `/ready` answer anyone.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use isthmus_identity::format_time;
use isthmus_runtime::metrics_format;
use prometheus_client::registry::Registry;
use serde_json::json;

use std::collections::BTreeMap;

use axum::extract::Query;
use tokio::sync::watch;

use crate::config::ConfigStore;
use crate::model::MeshModel;
use crate::xds::cache::SnapshotCache;
use crate::xds::dump;
use crate::xds::streams::StreamRegistry;

/// What the debug port reads.
#[derive(Debug, Clone)]
pub struct DebugState {
    pub registry: Arc<Registry>,
    pub config: Arc<ConfigStore>,
    pub streams: Arc<StreamRegistry>,
    pub cache: Arc<SnapshotCache>,
    /// Per node id, why it gets no (new) configuration.
    pub node_errors: watch::Receiver<BTreeMap<String, String>>,
    /// The model in force (its allocated virtual addresses).
    pub model: watch::Receiver<Arc<MeshModel>>,
    /// The federation resources' status.
    pub federation: watch::Receiver<Arc<crate::federation::status::FederationStatus>>,
    /// Whether `/debug/*` answers callers that are not on loopback.
    pub allow_remote: bool,
}

/// Refuses `/debug/*` to a caller that is not on loopback (the router is served with the
/// caller's address as `ConnectInfo`).
async fn loopback_only(
    axum::extract::ConnectInfo(caller): axum::extract::ConnectInfo<std::net::SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if caller.ip().is_loopback() {
        next.run(request).await
    } else {
        (
            StatusCode::FORBIDDEN,
            "the debug endpoints answer loopback callers only (isthmusd --debug-allow-remote)\n",
        )
            .into_response()
    }
}

/// The debug HTTP routes.
pub fn router(state: DebugState) -> Router {
    let DebugState {
        registry,
        config,
        streams,
        cache,
        node_errors,
        model,
        federation,
        allow_remote,
    } = state;
    let ready_config = config.clone();
    let debug = Router::new()
        .route(
            "/debug/federation",
            get(move || {
                let status = federation.borrow().as_ref().clone();
                async move { axum::Json(status) }
            }),
        )
        .route(
            "/debug/addresses",
            get(move || {
                let body = addresses(&model.borrow());
                async move { body }
            }),
        )
        .route(
            "/debug/xds",
            get(move || {
                let streams = streams.clone();
                let errors = node_errors.borrow().clone();
                async move { xds_status(&streams, errors).await }
            }),
        )
        .route(
            "/debug/config_dump",
            get(move |Query(query): Query<DumpQuery>| {
                let cache = cache.clone();
                async move { config_dump(&cache, &query.proxy).await }
            }),
        )
        .route(
            "/debug/config",
            get(move || {
                let body = config_status(&config);
                async move { body }
            }),
        );
    let debug = if allow_remote {
        debug
    } else {
        debug.layer(axum::middleware::from_fn(loopback_only))
    };
    Router::new()
        .merge(debug)
        .route("/metrics", get(metrics_format::handler(registry)))
        // Liveness: the process serves. Not readiness (below), which waits for the first load.
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                // Not ready before the first load: in Kubernetes mode, a replica that has not
                // listed every kind would serve proxies a partial mesh.
                let loaded = ready_config.status().loaded;
                async move {
                    if loaded {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "configuration not loaded yet\n",
                        )
                    }
                }
            }),
        )
}

/// Every service's virtual addresses: declared, or allocated (`"allocated": true`).
fn addresses(model: &MeshModel) -> axum::Json<serde_json::Value> {
    let services: Vec<serde_json::Value> = model
        .services
        .values()
        .filter(|s| !s.addresses.is_empty())
        .map(|s| {
            json!({
                "host": s.key.hostname,
                "namespace": s.key.namespace,
                "addresses": s.addresses,
                "allocated": model.virtual_addresses.contains_key(&s.key.hostname),
                "importedFrom": s.imported_from,
            })
        })
        .collect();
    axum::Json(json!({ "services": services }))
}

/// The configuration in force and the problems of the newest load.
fn config_status(store: &ConfigStore) -> axum::Json<serde_json::Value> {
    let status = store.status();
    let snapshot = store.current();
    let errors: Vec<_> = status
        .errors
        .iter()
        .map(|e| {
            json!({
                "file": e.file.display().to_string(),
                "document": e.document,
                "line": e.line,
                "resource": e.resource,
                "path": e.path,
                "reason": e.reason,
                "message": e.to_string(),
            })
        })
        .collect();
    axum::Json(json!({
        "version": status.version,
        "appliedAt": status.applied_at.map(format_time),
        "resources": snapshot.counts(),
        // Kubernetes mode's registry: Services and Pods of the cluster.
        "cluster": {
            "services": snapshot.cluster().services.len(),
            "pods": snapshot.cluster().pods.len(),
        },
        "rejectedAt": status.rejected_at.map(format_time),
        "errors": errors,
    }))
}

/// Every open xDS stream: node, protocol, and per type what was sent, acknowledged or rejected.
async fn xds_status(
    streams: &StreamRegistry,
    node_errors: BTreeMap<String, String>,
) -> axum::Json<serde_json::Value> {
    let list: Vec<_> = streams
        .list()
        .into_iter()
        .map(|s| {
            let types: Vec<_> = s
                .types
                .iter()
                .map(|t| {
                    json!({
                        "typeUrl": t.type_url,
                        "sent": t.sent_version,
                        "acked": t.acked_version,
                        "nack": t.nack,
                    })
                })
                .collect();
            json!({ "stream": s.id, "protocol": s.protocol, "node": s.node_id, "types": types })
        })
        .collect();
    axum::Json(json!({ "streams": list, "nodeErrors": node_errors }))
}

#[derive(Debug, serde::Deserialize)]
struct DumpQuery {
    proxy: String,
}

/// What `proxy` is sent, per type: versions and each resource decoded (Envoy's types, in
/// their Rust debug form; nested `Any`s stay encoded).
async fn config_dump(cache: &SnapshotCache, proxy: &str) -> axum::response::Response {
    let Some(snapshot) = cache.get(proxy) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no configuration for proxy {proxy:?}\n"),
        )
            .into_response();
    };
    axum::Json(dump::snapshot_json(&snapshot)).into_response()
}
