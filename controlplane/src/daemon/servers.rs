//! `isthmusd`'s servers, one per bound port: set up by [`super::bind`], started by
//! [`super::Bound::serve`], each stopping when the stop signal turns true.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use isthmus_federation::discovery::Exporter;
use isthmus_proto::ca::certificate_service_server::CertificateServiceServer;
use isthmus_proto::federation::federation_discovery_server::FederationDiscoveryServer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::{Connected, Router};

use super::tasks::Owned;
use super::{DaemonError, Listener};
use crate::admission::server::WebhookState;
use crate::auth::CallerAuthenticator;
use crate::ca::service::CaService;
use crate::server::debug::DebugState;
use crate::server::severable::{Cut, Severable};
use crate::server::tls_incoming::{HandshakeLimits, tls_incoming};
use crate::xds::grpc::AdsService;
use crate::xds::server::AdsServer;

/// The running servers, by port; each ends with its server's outcome.
pub(super) type Running = Owned<Listener, Result<(), DaemonError>>;

/// What every port serves, not yet accepting.
pub(super) struct Servers {
    pub grpc: Grpc,
    pub xds_plaintext: Option<XdsPlaintext>,
    pub discovery: Discovery,
    pub debug: Debug,
    pub webhook: Option<Webhook>,
}

/// The admission webhooks' HTTPS port.
pub(super) struct Webhook {
    pub listener: TcpListener,
    pub tls: Arc<rustls::ServerConfig>,
    pub limits: HandshakeLimits,
    pub state: WebhookState,
}

/// The mTLS gRPC port: the certificate service and xDS.
pub(super) struct Grpc {
    pub listener: TcpListener,
    pub tls: Arc<rustls::ServerConfig>,
    pub limits: HandshakeLimits,
    pub ca: CaService<CallerAuthenticator>,
    pub ads: AdsServer,
}

/// The opt-in plaintext xDS port.
pub(super) struct XdsPlaintext {
    pub listener: TcpListener,
    pub ads: AdsServer,
}

/// The federation discovery port, when it is on.
pub(super) struct Discovery {
    pub listener: Option<TcpListener>,
    pub tls: Arc<rustls::ServerConfig>,
    pub limits: HandshakeLimits,
    /// Kept until shutdown even without a listener: the federation status watches its streams.
    pub exporter: Exporter,
}

/// The debug port.
pub(super) struct Debug {
    pub listener: TcpListener,
    pub state: DebugState,
}

impl Servers {
    /// Starts every server; each stops accepting when `stop` turns true (or its sender is
    /// dropped) and ends once its open connections have. The gRPC ports' connections fail
    /// when `cut` fires: their streams do not end by themselves.
    pub fn start(self, stop: &watch::Receiver<bool>, cut: &Cut) -> Running {
        let mut running = Running::default();
        running.spawn(
            Listener::Grpc,
            self.grpc.serve(stopped(stop.clone()), cut.clone()),
        );
        if let Some(plaintext) = self.xds_plaintext {
            running.spawn(
                Listener::XdsPlaintext,
                plaintext.serve(stopped(stop.clone()), cut.clone()),
            );
        }
        running.spawn(
            Listener::Federation,
            self.discovery.serve(stopped(stop.clone()), cut.clone()),
        );
        running.spawn(Listener::Debug, self.debug.serve(stopped(stop.clone())));
        if let Some(webhook) = self.webhook {
            running.spawn(Listener::Webhook, webhook.serve(stopped(stop.clone())));
        }
        running
    }
}

/// Resolves once `stop` is true or its sender is gone.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn failed(
    listener: Listener,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> DaemonError {
    DaemonError::Serve {
        listener,
        source: source.into(),
    }
}

/// Serves `router` on the connections of `incoming` until `stop`, each connection failing
/// when `cut` fires (the gRPC ports: their streams do not end by themselves); a server error
/// names `listener`.
async fn serve_severable<IO>(
    listener: Listener,
    router: Router,
    incoming: impl Stream<Item = std::io::Result<IO>> + Send,
    stop: impl Future<Output = ()> + Send,
    cut: Cut,
) -> Result<(), DaemonError>
where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    let incoming = incoming.map(move |io| io.map(|io| Severable::new(io, cut.clone())));
    router
        .serve_with_incoming_shutdown(incoming, stop)
        .await
        .map_err(|e| failed(listener, e))
}

impl Grpc {
    async fn serve(
        self,
        stop: impl Future<Output = ()> + Send,
        cut: Cut,
    ) -> Result<(), DaemonError> {
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(
                CertificateServiceServer::new(self.ca).max_decoding_message_size(64 * 1024),
            )
            .add_service(AdsService::new(self.ads));
        let incoming = tls_incoming(self.listener, self.tls, self.limits);
        serve_severable(Listener::Grpc, router, incoming, stop, cut).await
    }
}

impl XdsPlaintext {
    async fn serve(
        self,
        stop: impl Future<Output = ()> + Send,
        cut: Cut,
    ) -> Result<(), DaemonError> {
        let router = tonic::transport::Server::builder().add_service(AdsService::new(self.ads));
        let incoming = TcpListenerStream::new(self.listener);
        serve_severable(Listener::XdsPlaintext, router, incoming, stop, cut).await
    }
}

impl Discovery {
    async fn serve(
        self,
        stop: impl Future<Output = ()> + Send,
        cut: Cut,
    ) -> Result<(), DaemonError> {
        let Some(listener) = self.listener else {
            let _exporter = self.exporter;
            stop.await;
            return Ok(());
        };
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(FederationDiscoveryServer::new(self.exporter));
        let incoming = tls_incoming(listener, self.tls, self.limits);
        serve_severable(Listener::Federation, router, incoming, stop, cut).await
    }
}

impl Webhook {
    async fn serve(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DaemonError> {
        crate::admission::server::serve(self.listener, self.tls, self.limits, self.state, stop)
            .await
            .map_err(|e| failed(Listener::Webhook, e))
    }
}

impl Debug {
    async fn serve(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DaemonError> {
        let app = crate::server::debug::router(self.state)
            .into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(self.listener, app)
            .with_graceful_shutdown(stop)
            .await
            .map_err(|e| failed(Listener::Debug, e))
    }
}
