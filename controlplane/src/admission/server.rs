//! The webhooks' HTTPS server (`isthmusd`'s port 15017): `POST /inject` and `POST /validate`
//! take an `AdmissionReview` and answer one. TLS with the mesh-CA certificate of
//! [`super::serving_cert`], no client certificate (the API server presents none by default),
//! HTTP/1.1. A body that is not a review is a `400` naming what is wrong.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use super::handlers;
use super::inject::InjectSettings;
use super::review::{Review, to_body};
use super::serving_cert::ServingCert;
use crate::server::tls_incoming::{HandshakeLimits, tls_incoming};

/// The API server's own limit on a request body is 3 MiB; a review carries the object twice.
const MAX_BODY: usize = 8 * 1024 * 1024;

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
        .layer(DefaultBodyLimit::max(MAX_BODY))
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

/// Serves the webhooks on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: HandshakeLimits,
    state: WebhookState,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let incoming = TlsListener {
        incoming: tls_incoming(listener, tls, limits),
        local,
    };
    axum::serve(incoming, router(state))
        .with_graceful_shutdown(stop)
        .await
}

async fn inject(State(state): State<WebhookState>, body: Bytes) -> Response {
    match Review::parse(&body) {
        Ok(review) => axum::Json(to_body(handlers::inject(&review, &state.inject))).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn validate(body: Bytes) -> Response {
    match Review::parse(&body) {
        Ok(review) => axum::Json(to_body(handlers::validate(&review))).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// The handshaken connections of [`tls_incoming`] as an axum listener.
struct TlsListener {
    incoming: ReceiverStream<std::io::Result<TlsStream<TcpStream>>>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(io)) => {
                    let peer = io.get_ref().0.peer_addr().unwrap_or(self.local);
                    return (io, peer);
                }
                Some(Err(e)) => tracing::debug!(error = %e, "webhook connection failed"),
                // The acceptor ended: nothing more will come; shutdown ends the server.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
