//! `isthmusd`'s debug port (15014): Prometheus metrics, readiness, configuration status.

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use isthmus_api::identity::format_time;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::config::ConfigStore;

/// The debug HTTP routes.
pub fn router(registry: Arc<Registry>, config: Arc<ConfigStore>) -> Router {
    Router::new()
        .route(
            "/debug/config",
            get(move || {
                let body = config_status(&config);
                async move { body }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { metrics(&registry) }
            }),
        )
        .route("/ready", get(|| async { "ok\n" }))
}

fn metrics(registry: &Registry) -> axum::response::Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
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
        "rejectedAt": status.rejected_at.map(format_time),
        "errors": errors,
    }))
}
