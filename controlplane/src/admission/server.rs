//! The webhooks' HTTPS server (`isthmusd`'s port 15017): `POST /inject` and `POST /validate`
//! take an `AdmissionReview` and answer one. TLS with the mesh-CA certificate of
//! [`super::serving_cert`], no client certificate (the API server presents none by default),
//! HTTP/1.1 with keep-alive, as the API server's webhook client uses it.
//!
//! Anyone in the cluster can reach the port, so every connection is bounded: the TLS handshake
//! by the shared acceptor's limits, the request head by [`HEADER_TIMEOUT`], the body by
//! [`MAX_BODY`] and [`BODY_TIMEOUT`], and the connections open at once by [`MAX_CONNECTIONS`]
//! (more are closed at once). A body that is not a review is a `400` naming what is wrong.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_stream::StreamExt as _;

use super::handlers;
use super::inject::InjectSettings;
use super::review::{Review, to_body};
use super::serving_cert::ServingCert;
use crate::server::tls_incoming::{HandshakeLimits, tls_incoming};

/// The API server's own limit on a request body is 3 MiB; a review carries the object twice.
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// How long a client may take to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body: the API server gives up on a webhook
/// after its `timeoutSeconds` (10 in the manifests) anyway.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once; the API server keeps a few per replica.
pub const MAX_CONNECTIONS: usize = 256;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct WebhookState {
    pub inject: Arc<InjectSettings>,
}

/// The routes.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/inject", post(inject))
        .route("/validate", post(validate))
        .route("/ready", get(|| async { "ok" }))
        .with_state(state)
}

/// The TLS configuration: the serving certificate, no client authentication, HTTP/1.1.
pub fn tls_config(cert: Arc<ServingCert>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(isthmus_identity::provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves the webhooks on `listener` until `stop`; then lets the requests in progress finish
/// (idle connections close at once) and returns.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: HandshakeLimits,
    state: WebhookState,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(state);
    let mut incoming = tls_incoming(listener, tls, limits);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (closing, closed) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut stop = pin!(stop);
    loop {
        let io = tokio::select! {
            () = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            next = incoming.next() => match next {
                Some(Ok(io)) => io,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "webhook connection failed");
                    continue;
                }
                // The acceptor ended: nothing more will come until the stop.
                None => {
                    stop.as_mut().await;
                    break;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = MAX_CONNECTIONS,
                "webhook connection closed: too many open"
            );
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let mut closed = closed.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let mut connection = pin!(builder.serve_connection(TokioIo::new(io), service));
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "webhook connection ended");
                    }
                }
                () = async {
                    let _ = closed.wait_for(|closed| *closed).await;
                } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The request's body, within [`MAX_BODY`] and [`BODY_TIMEOUT`]; else the answer to send.
async fn read_body(body: Body) -> Result<axum::body::Bytes, Response> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is unreadable or larger than {MAX_BODY} bytes: {e}"),
        )
            .into_response()),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {BODY_TIMEOUT:?}"),
        )
            .into_response()),
    }
}

async fn inject(State(state): State<WebhookState>, body: Body) -> Response {
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    match Review::parse(&body) {
        Ok(review) => axum::Json(to_body(handlers::inject(&review, &state.inject))).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn validate(body: Body) -> Response {
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    match Review::parse(&body) {
        Ok(review) => axum::Json(to_body(handlers::validate(&review))).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}
