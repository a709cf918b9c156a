//! `isthmusd`'s life: load the CA, obtain its own serving certificate, serve the certificate
//! service on the mTLS port and metrics on the debug port, stop cleanly on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use isthmus_federation::discovery::{Exporter, ImporterSettings};
use isthmus_identity::{
    CertManager, CertManagerConfig, PeerPolicy, SpiffeId, SpiffeVerifier, TrustBundle,
    TrustBundles, TrustDomain, server_config, shared_bundles,
};
use isthmus_proto::ca::certificate_service_server::CertificateServiceServer;
use isthmus_proto::federation::federation_discovery_server::FederationDiscoveryServer;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::auth::tokens::TokenStore;
use crate::ca::local_source::LocalSource;
use crate::ca::metrics::CaMetrics;
use crate::ca::service::CaService;
use crate::ca::{Authority, CaLoadError, CaMaterial, TtlPolicy};
use crate::config::ConfigStore;
use crate::config::watch::{WatchSettings, watch_dir};
use crate::pipeline::gate::WorkloadGate;
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::private_files::{create_private_dir, write_private};
use crate::server::tls_incoming::{HandshakeLimits, tls_incoming};
use crate::xds::cache::SnapshotCache;
use crate::xds::grpc::AdsService;
use crate::xds::server::{AdsServer, Port as AdsPort};
use crate::xds::streams::StreamRegistry;

/// Written into the state directory once every port is bound: `{"grpc", "debug", "xdsPlaintext"}`
/// as `host:port`, so a caller that asked for port 0 learns which port it got.
pub const ADDRESSES_FILE: &str = "addresses.json";

/// Everything `isthmusd` is started with.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    pub trust_domain: TrustDomain,
    /// Namespace `isthmusd` runs in; its own identity is `…/ns/<namespace>/sa/isthmusd`.
    pub namespace: String,
    /// A plugged-in CA (`cacerts` layout); otherwise a root is generated in the state directory.
    pub cacerts: Option<PathBuf>,
    pub grpc_addr: SocketAddr,
    /// Plaintext xDS, an explicit opt-in for tests (off when `None`): it hands any local
    /// process every node's configuration, private keys included. Loopback addresses only.
    pub xds_plaintext_addr: Option<SocketAddr>,
    pub debug_addr: SocketAddr,
    /// Serve `/debug/*` to callers that are not on loopback too.
    pub debug_allow_remote: bool,
    pub ttl: TtlPolicy,
    /// How long configuration changes settle before they are pushed.
    pub push_debounce: Duration,
    /// Policies in this namespace apply mesh-wide (Istio's root namespace).
    pub root_namespace: String,
    /// The federation discovery port (peers' control planes watch our exports there).
    pub federation_addr: Option<SocketAddr>,
    pub federation: FederationSettings,
}

/// Timings of federation discovery.
#[derive(Debug, Clone, Copy)]
pub struct FederationSettings {
    /// How often an idle discovery stream carries a heartbeat (exporter side).
    pub heartbeat: Duration,
    pub importer: ImporterSettings,
    /// At start, how long proxies wait for the peers' first full lists (their imports).
    pub initial_sync: Duration,
}

impl Default for FederationSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(10),
            importer: ImporterSettings::default(),
            initial_sync: Duration::from_secs(5),
        }
    }
}

/// Why `isthmusd` could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("--config-dir {0}: {1}")]
    ConfigDir(PathBuf, String),
    #[error("--state-dir {0}: {1}")]
    StateDir(PathBuf, String),
    #[error("CA: {0}")]
    Ca(#[from] CaLoadError),
    #[error("{0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Serve(String),
}

/// The identity `isthmusd` presents on its mTLS port.
pub fn control_plane_identity(
    trust_domain: &TrustDomain,
    namespace: &str,
) -> Result<SpiffeId, DaemonError> {
    SpiffeId::workload(trust_domain, namespace, "isthmusd")
        .map_err(|e| DaemonError::Setup(e.to_string()))
}

/// Runs until `shutdown` resolves.
pub async fn run(
    config: DaemonConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    check_config_dir(&config)?;
    if let Some(addr) = config.xds_plaintext_addr
        && !addr.ip().is_loopback()
    {
        return Err(DaemonError::Setup(format!(
            "--xds-plaintext-addr {addr}: plaintext xDS is served on loopback addresses only"
        )));
    }
    if let Some(addr) = config.xds_plaintext_addr {
        tracing::warn!(
            %addr,
            "INSECURE: plaintext xDS is on (--xds-plaintext-addr). Any process on this host can \
             name any node there and receive its certificate and PRIVATE KEY. Use it for tests \
             only; proxies should use the mTLS port with a bootstrap token."
        );
    }
    // The configuration in force; a bad change is reported and the last good one stays.
    let config_store = Arc::new(ConfigStore::new());
    let _config_watch = watch_dir(
        config.config_dir.clone(),
        config_store.clone(),
        WatchSettings::default(),
    )
    .map_err(|e| DaemonError::ConfigDir(config.config_dir.clone(), format!("cannot watch: {e}")))?;
    let status = config_store.status();
    if status.errors.is_empty() {
        tracing::info!(
            resources = config_store.current().len(),
            "configuration loaded"
        );
    } else {
        tracing::warn!(
            problems = status.errors.len(),
            "configuration rejected; running with none until it is fixed"
        );
    }
    create_private_dir(&config.state_dir)
        .map_err(|e| DaemonError::StateDir(config.state_dir.clone(), e.to_string()))?;

    let material = match &config.cacerts {
        Some(dir) => CaMaterial::load_plugged(dir)?,
        None => CaMaterial::load_or_generate(&config.state_dir, &config.trust_domain)?,
    };
    tracing::info!(origin = %material.origin, trust_domain = %config.trust_domain, "CA loaded");
    let roots_pem = material.roots_pem();
    let roots = material.roots.clone();
    let local_bundle = (config.trust_domain.to_string(), roots_pem.clone());
    let authority = Arc::new(
        Authority::new(config.trust_domain.clone(), material, config.ttl)
            .map_err(|e| DaemonError::Setup(e.to_string()))?,
    );
    // Workloads bootstrap their trust in the CA from this file (local mode's answer to Istio's
    // `istio-ca-root-cert` ConfigMap).
    let root_file = config.state_dir.join("root-cert.pem");
    write_private(&root_file, roots_pem.as_bytes())
        .map_err(|e| DaemonError::StateDir(root_file.clone(), e.to_string()))?;

    let identity = control_plane_identity(&config.trust_domain, &config.namespace)?;
    let (mut certs, _renewal) = CertManager::spawn(
        identity.clone(),
        LocalSource {
            authority: authority.clone(),
            identity: identity.clone(),
        },
        CertManagerConfig::default(),
    );
    certs.ready().await.ok_or_else(|| {
        DaemonError::Setup("could not issue the control plane's certificate".into())
    })?;

    let bundle = TrustBundle::new(config.trust_domain.clone(), roots)
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
    let local_trust = bundle.clone();
    let bundles = shared_bundles(TrustBundles::new(bundle));
    // Callers without a certificate are let through the handshake: a bootstrapping workload has
    // none yet and authenticates with its token.
    let verifier = SpiffeVerifier::new(bundles, PeerPolicy::AnyTrusted).allow_anonymous_clients();
    let tls = server_config(certs.resolver(), Arc::new(verifier), &[b"h2"])
        .map_err(|e| DaemonError::Setup(format!("TLS: {e}")))?;

    let mut registry = Registry::default();
    let ca_metrics = CaMetrics::register(&mut registry);
    let service = CaService::new(
        authority.clone(),
        TokenStore::new(&config.state_dir),
        ca_metrics,
    );

    let grpc_listener = bind(config.grpc_addr).await?;
    let federation_listener = match config.federation_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let debug_listener = bind(config.debug_addr).await?;
    let plaintext_listener = match config.xds_plaintext_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    // Configuration flows one way: config store -> model -> per-proxy snapshots -> streams.
    let cache = Arc::new(SnapshotCache::default());
    let streams = Arc::new(StreamRegistry::default());
    let (imports_tx, imports_rx) = tokio::sync::watch::channel(Arc::default());
    let pipeline = Pipeline::spawn(
        config_store.subscribe(),
        imports_rx.clone(),
        cache.clone(),
        streams.clone(),
        authority,
        PipelineSettings {
            debounce: config.push_debounce,
            trust_domain: config.trust_domain.clone(),
            root_namespace: config.root_namespace.clone(),
            bundles: vec![local_bundle],
            // Local gateways reach it on loopback when it listens on every address.
            discovery_address: federation_listener
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map(|a| {
                    if a.ip().is_unspecified() {
                        format!("127.0.0.1:{}", a.port())
                    } else {
                        a.to_string()
                    }
                }),
            control_plane_identity: identity.clone(),
            initial_sync: config.federation.initial_sync,
        },
    );
    // Federation: importers per peer feed the pipeline; the exporter serves the model's exports.
    let peer_bundles = crate::federation::importers::spawn(
        pipeline.model.clone(),
        certs.resolver(),
        local_trust.clone(),
        config.federation.importer,
        imports_tx,
    );
    let exporter = Exporter::new(pipeline.exports.clone(), config.federation.heartbeat);
    let federation_status = crate::federation::status::spawn(
        pipeline.model.clone(),
        imports_rx,
        exporter.remotes(),
        identity.to_string(),
        config.state_dir.join("status"),
    );
    let gate = Arc::new(WorkloadGate {
        model: pipeline.model.clone(),
    });
    let ads = AdsServer {
        cache,
        streams,
        gate,
        port: AdsPort::Mtls,
        joins: Some(pipeline.joins.clone()),
    };
    // The addresses actually bound (a port of 0 picks a free one), for whoever started us.
    let local = |l: &TcpListener| {
        l.local_addr()
            .map_err(|e| DaemonError::Serve(e.to_string()))
    };
    let addresses = serde_json::json!({
        "grpc": local(&grpc_listener)?.to_string(),
        "debug": local(&debug_listener)?.to_string(),
        "xdsPlaintext": plaintext_listener.as_ref().map(local).transpose()?.map(|a| a.to_string()),
        "federation": federation_listener.as_ref().map(local).transpose()?.map(|a| a.to_string()),
    });
    let addresses_file = config.state_dir.join(ADDRESSES_FILE);
    write_private(&addresses_file, addresses.to_string().as_bytes())
        .map_err(|e| DaemonError::StateDir(addresses_file.clone(), e.to_string()))?;
    tracing::info!(%addresses, identity = %identity, "isthmusd ready");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(CertificateServiceServer::new(service).max_decoding_message_size(64 * 1024))
        .add_service(AdsService::new(ads.clone()))
        .serve_with_incoming_shutdown(
            tls_incoming(grpc_listener, Arc::new(tls), HandshakeLimits::default()),
            stopped(stop_rx.clone()),
        );
    let plaintext = {
        let ads = ads.clone();
        let stop = stopped(stop_rx.clone());
        async move {
            match plaintext_listener {
                Some(listener) => tonic::transport::Server::builder()
                    .add_service(AdsService::new(AdsServer {
                        port: AdsPort::LoopbackPlaintext,
                        ..ads
                    }))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        stop,
                    )
                    .await
                    .map_err(|e| DaemonError::Serve(format!("plaintext xDS server: {e}"))),
                None => Ok(()),
            }
        }
    };
    let discovery = {
        let stop = stopped(stop_rx.clone());
        // Only peers' certificates: each verified against its own peer's root.
        let verifier = SpiffeVerifier::new(peer_bundles, PeerPolicy::AnyTrusted);
        let tls = server_config(certs.resolver(), Arc::new(verifier), &[b"h2"])
            .map_err(|e| DaemonError::Setup(format!("TLS: {e}")))?;
        async move {
            match federation_listener {
                Some(listener) => tonic::transport::Server::builder()
                    .http2_keepalive_interval(Some(Duration::from_secs(30)))
                    .add_service(FederationDiscoveryServer::new(exporter))
                    .serve_with_incoming_shutdown(
                        tls_incoming(listener, Arc::new(tls), HandshakeLimits::default()),
                        stop,
                    )
                    .await
                    .map_err(|e| DaemonError::Serve(format!("federation discovery server: {e}"))),
                None => Ok(()),
            }
        }
    };
    let debug = axum::serve(
        debug_listener,
        crate::server::debug::router(crate::server::debug::DebugState {
            registry: Arc::new(registry),
            config: config_store,
            streams: ads.streams.clone(),
            cache: ads.cache.clone(),
            node_errors: pipeline.node_errors.clone(),
            federation: federation_status,
            allow_remote: config.debug_allow_remote,
        })
        .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopped(stop_rx));
    let (grpc, plaintext, discovery, debug) = tokio::join!(grpc, plaintext, discovery, debug);
    grpc.map_err(|e| DaemonError::Serve(format!("gRPC server: {e}")))?;
    plaintext?;
    discovery?;
    debug.map_err(|e| DaemonError::Serve(format!("debug server: {e}")))?;
    tracing::info!("isthmusd stopped");
    Ok(())
}

fn check_config_dir(config: &DaemonConfig) -> Result<(), DaemonError> {
    let dir = &config.config_dir;
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(DaemonError::ConfigDir(
            dir.clone(),
            "not a directory".into(),
        )),
        Err(e) => Err(DaemonError::ConfigDir(dir.clone(), e.to_string())),
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { addr, source })
}
