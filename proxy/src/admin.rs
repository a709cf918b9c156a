//! The admin port (15000, loopback): `/ready` and `/certs`, as Envoy's admin offers them.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use isthmus_api::identity::pem::certs_to_pem;
use isthmus_api::identity::{CertInfo, CertManager, format_time};
use serde_json::json;

pub fn router(certs: CertManager) -> Router {
    let ready_certs = certs.clone();
    Router::new()
        .route(
            "/ready",
            get(move || {
                let ready = ready_certs.current().is_some();
                async move {
                    if ready {
                        (StatusCode::OK, "LIVE\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "PRE_INITIALIZING: no certificate yet\n",
                        )
                    }
                }
            }),
        )
        .route(
            "/certs",
            get(move || {
                let body = certs_json(&certs);
                async move { body }
            }),
        )
}

/// The current certificate chain and roots, decoded (no private key).
fn certs_json(certs: &CertManager) -> axum::Json<serde_json::Value> {
    let Some(cert) = certs.current() else {
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
