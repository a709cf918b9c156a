//! The steps of [`super::bind`], in order: each sets up one part of `isthmusd` and hands the
//! next steps what they need; long-lived tasks go into the daemon's [`Owned`] set.

use std::net::SocketAddr;
use std::sync::Arc;

use isthmus_federation::discovery::Exporter;
use isthmus_identity::{
    CertManager, CertManagerConfig, CredentialCell, PeerPolicy, SharedBundles, SpiffeId,
    SpiffeVerifier, TrustBundle, TrustBundles, server_config, shared_bundles,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::servers::{Debug, Discovery, Grpc, Servers, Webhook, XdsPlaintext};
use super::tasks::Owned;
use super::{Addresses, DaemonConfig, DaemonError, Listener, control_plane_identity};
use crate::admission::inject::InjectSettings;
use crate::admission::server::{WebhookState, tls_config as webhook_tls};
use crate::admission::serving_cert::{ServingCert, renew, service_names};
use crate::auth::CallerAuthenticator;
use crate::auth::token_review::TokenReviewAuthenticator;
use crate::auth::tokens::TokenStore;
use crate::ca::local_source::LocalSource;
use crate::ca::metrics::{CaExpiry, CaMetrics};
use crate::ca::service::CaService;
use crate::ca::{Authority, CaMaterial};
use crate::config::ConfigStore;
use crate::config::watch::watch_dir;
use crate::federation::ImportStates;
use crate::federation::status::FederationStatus;
use crate::kubernetes::leader::{LeaseSettings, elect};
use crate::kubernetes::status_writer::write_status;
use crate::pipeline::gate::WorkloadGate;
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::private_files::{create_private_dir, write_private};
use crate::server::debug::DebugState;
use crate::server::tls_incoming::HandshakeLimits;
use crate::telemetry::federation::sample as federation_sample;
use crate::telemetry::{FederationMetrics, FederationRecorder, XdsMetrics};
use crate::xds::cache::SnapshotCache;
use crate::xds::server::{AdsServer, Port as AdsPort};
use crate::xds::streams::StreamRegistry;

/// The daemon's background tasks, by name.
pub(super) type Tasks = Owned<&'static str, ()>;

/// Refuses a configuration that cannot work, before anything is touched.
pub(super) fn check(config: &DaemonConfig) -> Result<(), DaemonError> {
    if let Some(addr) = config.xds_plaintext_addr {
        if !addr.ip().is_loopback() {
            return Err(DaemonError::PlaintextNotLoopback { addr });
        }
        tracing::warn!(
            %addr,
            "INSECURE: plaintext xDS is on (--xds-plaintext-addr). Any process on this host can \
             name any node there and receive its certificate and PRIVATE KEY. Use it for tests \
             only; proxies should use the mTLS port with a bootstrap token."
        );
    }
    if config.kubernetes.is_some() {
        return Ok(());
    }
    let dir = &config.config_dir;
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(DaemonError::ConfigDirNotADirectory { dir: dir.clone() }),
        Err(source) => Err(DaemonError::ConfigDir {
            dir: dir.clone(),
            source,
        }),
    }
}

/// In Kubernetes mode, the API server's client: in-cluster, or from `KUBECONFIG`.
pub(super) async fn kubernetes_client(
    config: &DaemonConfig,
) -> Result<Option<kube::Client>, DaemonError> {
    let Some(settings) = &config.kubernetes else {
        return Ok(None);
    };
    let inferred = match &settings.kubeconfig {
        Some(path) => {
            let file = |source| DaemonError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(file)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(file)?
        }
        None => kube::Config::infer()
            .await
            .map_err(DaemonError::KubernetesConfig)?,
    };
    tracing::info!(api_server = %inferred.cluster_url, "Kubernetes mode");
    let client = kube::Client::try_from(inferred).map_err(DaemonError::KubernetesClient)?;
    Ok(Some(client))
}

/// The configuration in force, kept in step with its source by a task: the directory (loaded
/// now), or in Kubernetes mode the API server (published once every kind is listed).
pub(super) fn config_source(
    config: &DaemonConfig,
    kube: Option<&kube::Client>,
    tasks: &mut Tasks,
) -> Result<Arc<ConfigStore>, DaemonError> {
    // A bad change is reported and the last good configuration stays.
    let store = Arc::new(ConfigStore::new());
    if let Some(client) = kube {
        let settings = crate::kubernetes::source::SourceSettings {
            root_namespace: config.root_namespace.clone(),
            discovery_selectors: config
                .kubernetes
                .as_ref()
                .map(|k| k.discovery_selectors.clone())
                .unwrap_or_default(),
            ..Default::default()
        };
        tasks.spawn(
            "kubernetes source",
            crate::kubernetes::source::watch_cluster(client.clone(), store.clone(), settings),
        );
        return Ok(store);
    }
    let watch = watch_dir(
        config.config_dir.clone(),
        store.clone(),
        config.config_watch,
    )
    .map_err(|source| DaemonError::ConfigWatch {
        dir: config.config_dir.clone(),
        source,
    })?;
    tasks.spawn("config watch", watch);
    let status = store.status();
    if status.errors.is_empty() {
        tracing::info!(resources = store.current().len(), "configuration loaded");
    } else {
        tracing::warn!(
            problems = status.errors.len(),
            "configuration rejected; running with none until it is fixed"
        );
    }
    Ok(store)
}

/// The mesh CA and its roots.
pub(super) struct Ca {
    pub authority: Arc<Authority>,
    /// The local trust domain's roots.
    pub bundle: TrustBundle,
    pub roots_pem: String,
    /// When the roots and the signing chain expire (for the metrics).
    pub expiry: CaExpiry,
}

/// Creates the state directory, loads or generates the CA there, publishes its root.
pub(super) fn state_and_ca(config: &DaemonConfig) -> Result<Ca, DaemonError> {
    create_private_dir(&config.state_dir).map_err(|source| DaemonError::StateDir {
        dir: config.state_dir.clone(),
        source,
    })?;
    let material = match &config.cacerts {
        Some(dir) => CaMaterial::load_plugged(dir),
        None => CaMaterial::load_or_generate(&config.state_dir, &config.trust_domain),
    }
    .map_err(DaemonError::CaMaterial)?;
    tracing::info!(origin = %material.origin, trust_domain = %config.trust_domain, "CA loaded");
    let roots_pem = material.roots_pem();
    let expiry = CaExpiry::of(&material);
    let bundle = TrustBundle::new(config.trust_domain.clone(), material.roots.clone())
        .map_err(DaemonError::Roots)?;
    let authority = Authority::new(config.trust_domain.clone(), material, config.ttl)
        .map_err(DaemonError::Authority)?;
    // Workloads bootstrap their trust in the CA from this file (local mode's answer to Istio's
    // `istio-ca-root-cert` ConfigMap).
    let path = config.state_dir.join("root-cert.pem");
    write_private(&path, roots_pem.as_bytes())
        .map_err(|source| DaemonError::StateFile { path, source })?;
    Ok(Ca {
        authority: Arc::new(authority),
        bundle,
        roots_pem,
        expiry,
    })
}

/// `isthmusd`'s own identity and certificate.
pub(super) struct Own {
    pub identity: SpiffeId,
    /// Always the newest certificate, for the TLS configurations.
    pub credentials: Arc<CredentialCell>,
    /// Its renewal task runs as long as this handle is held.
    pub manager: CertManager,
}

/// Issues the control plane's certificate from its own CA; a task renews it.
pub(super) async fn own_certificate(
    config: &DaemonConfig,
    ca: &Ca,
    tasks: &mut Tasks,
) -> Result<Own, DaemonError> {
    let identity = control_plane_identity(&config.trust_domain, &config.namespace)?;
    let (mut certs, renewal) = CertManager::spawn(
        identity.clone(),
        LocalSource {
            authority: ca.authority.clone(),
            identity: identity.clone(),
        },
        CertManagerConfig::default(),
    );
    tasks.adopt("certificate renewal", renewal);
    certs.ready().await.ok_or(DaemonError::OwnCertificate)?;
    Ok(Own {
        identity,
        credentials: certs.resolver(),
        manager: certs,
    })
}

/// Every listening socket, bound.
pub(super) struct Listeners {
    pub grpc: TcpListener,
    pub xds_plaintext: Option<TcpListener>,
    pub debug: TcpListener,
    pub federation: Option<TcpListener>,
    pub webhook: Option<TcpListener>,
}

impl Listeners {
    /// Binds every port of the configuration (port 0: a free one).
    pub async fn bind(config: &DaemonConfig) -> Result<Self, DaemonError> {
        Ok(Self {
            grpc: bind(Listener::Grpc, config.grpc_addr).await?,
            xds_plaintext: bind_optional(Listener::XdsPlaintext, config.xds_plaintext_addr).await?,
            debug: bind(Listener::Debug, config.debug_addr).await?,
            federation: bind_optional(Listener::Federation, config.federation_addr).await?,
            webhook: bind_optional(Listener::Webhook, config.webhook_addr).await?,
        })
    }

    /// The addresses actually bound.
    pub fn addresses(&self) -> Result<Addresses, DaemonError> {
        Ok(Addresses {
            grpc: local_addr(Listener::Grpc, &self.grpc)?,
            debug: local_addr(Listener::Debug, &self.debug)?,
            xds_plaintext: self
                .xds_plaintext
                .as_ref()
                .map(|l| local_addr(Listener::XdsPlaintext, l))
                .transpose()?,
            federation: self
                .federation
                .as_ref()
                .map(|l| local_addr(Listener::Federation, l))
                .transpose()?,
            webhook: self
                .webhook
                .as_ref()
                .map(|l| local_addr(Listener::Webhook, l))
                .transpose()?,
        })
    }
}

async fn bind(listener: Listener, addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind {
            listener,
            addr,
            source,
        })
}

async fn bind_optional(
    listener: Listener,
    addr: Option<SocketAddr>,
) -> Result<Option<TcpListener>, DaemonError> {
    match addr {
        Some(addr) => Ok(Some(bind(listener, addr).await?)),
        None => Ok(None),
    }
}

fn local_addr(listener: Listener, socket: &TcpListener) -> Result<SocketAddr, DaemonError> {
    socket
        .local_addr()
        .map_err(|source| DaemonError::LocalAddr { listener, source })
}

/// The pipeline's outputs and the xDS state it fills.
pub(super) struct Flow {
    pub pipeline: Pipeline,
    pub cache: Arc<SnapshotCache>,
    pub streams: Arc<StreamRegistry>,
}

/// Starts the pipeline: config store and peers' catalogs -> model -> per-proxy snapshots.
pub(super) fn pipeline(
    config: &DaemonConfig,
    ca: &Ca,
    own: &Own,
    store: &ConfigStore,
    addresses: &Addresses,
    imports: watch::Receiver<Arc<ImportStates>>,
    tasks: &mut Tasks,
) -> Flow {
    let cache = Arc::new(SnapshotCache::default());
    let streams = Arc::new(StreamRegistry::default());
    let (jwks, resolver) = crate::jwks::resolver::start(store.subscribe());
    tasks.spawn("jwks resolver", resolver);
    let (pipeline, task) = Pipeline::new(
        store.subscribe(),
        imports,
        jwks,
        cache.clone(),
        streams.clone(),
        ca.authority.clone(),
        PipelineSettings {
            debounce: config.push_debounce,
            trust_domain: config.trust_domain.clone(),
            root_namespace: config.root_namespace.clone(),
            bundles: vec![(config.trust_domain.to_string(), ca.roots_pem.clone())],
            discovery_address: addresses.federation.map(|a| discovery_address(config, a)),
            control_plane_identity: own.identity.clone(),
            initial_sync: config.federation.initial_sync,
            telemetry: config.telemetry.clone(),
            vip_range: config.vip_range,
            state_dir: Some(config.state_dir.clone()),
        },
    );
    tasks.spawn("pipeline", task);
    Flow {
        pipeline,
        cache,
        streams,
    }
}

/// Where the ingress gateways reach the discovery port: the advertised host, else in
/// Kubernetes mode `isthmusd`'s Service, else the bound address (loopback when bound to every
/// address, as local gateways reach it).
fn discovery_address(config: &DaemonConfig, bound: SocketAddr) -> String {
    let port = bound.port();
    match (&config.federation_advertise_host, &config.kubernetes) {
        (Some(host), _) => format!("{host}:{port}"),
        (None, Some(_)) => format!("isthmusd.{}.svc.cluster.local:{port}", config.namespace),
        (None, None) if bound.ip().is_unspecified() => format!("127.0.0.1:{port}"),
        (None, None) => bound.to_string(),
    }
}

/// Federation's parts: what the discovery port serves and trusts, and the status of it all.
pub(super) struct Federation {
    pub exporter: Exporter,
    /// The peers' roots: the discovery port's clients are verified against them.
    pub peer_bundles: SharedBundles,
    pub status: watch::Receiver<Arc<FederationStatus>>,
    /// The per-peer metrics (registered with the others by [`servers`]).
    pub metrics: FederationMetrics,
}

/// Starts an importer per peer (they feed the pipeline through `imports`), the exporter of
/// the model's exports, and the federation status.
pub(super) fn federation(
    config: &DaemonConfig,
    ca: &Ca,
    own: &Own,
    pipeline: &Pipeline,
    imports: watch::Sender<Arc<ImportStates>>,
    kube: Option<&kube::Client>,
    tasks: &mut Tasks,
) -> Federation {
    let imported = imports.subscribe();
    let (peer_bundles, importers) = crate::federation::importers::start(
        pipeline.model.clone(),
        own.credentials.clone(),
        ca.bundle.clone(),
        config.federation.importer,
        imports,
    );
    tasks.spawn("federation importers", importers);
    let exporter = Exporter::new(pipeline.exports.clone(), config.federation.heartbeat);
    // Every configured peer's series exist from now on, kept up to date by a task.
    let metrics = FederationMetrics::default();
    let mut recorder = FederationRecorder::new(metrics.clone());
    recorder.record(&federation_sample(
        &pipeline.model.borrow(),
        &imported.borrow(),
        &pipeline.exports.borrow(),
    ));
    tasks.spawn(
        "federation metrics",
        crate::telemetry::federation::run(
            recorder,
            pipeline.model.clone(),
            imported.clone(),
            pipeline.exports.clone(),
        ),
    );
    // Spawned by `status::spawn`: it ends when the pipeline's task (owned) ends and the model
    // is no longer published.
    // Maistra's `pod`: which control plane replica saw it.
    let pod = match &config.kubernetes {
        Some(k) => k.pod_name.clone(),
        None => own.identity.to_string(),
    };
    let status = crate::federation::status::spawn(
        pipeline.model.clone(),
        imported,
        exporter.remotes(),
        pod,
        config.state_dir.join("status"),
    );
    if let (Some(client), Some(settings)) = (kube, &config.kubernetes) {
        // Every replica computes status; only the Lease holder writes it back.
        let lease = LeaseSettings {
            duration: settings.lease_duration,
            renew_every: settings.lease_duration / 3,
            ..LeaseSettings::new(config.namespace.clone(), settings.pod_name.clone())
        };
        let (leader, election) = elect(client.clone(), lease);
        tasks.spawn("status lease", election);
        // The lease holder also keeps the mesh root where the cluster needs it: in the
        // admission webhooks' caBundle and in every mesh namespace's ConfigMap.
        tasks.spawn(
            "webhook CA bundles",
            crate::kubernetes::webhook_bundle::patch_ca_bundles(
                client.clone(),
                settings.webhook_configs.clone(),
                ca.roots_pem.clone(),
                leader.clone(),
            ),
        );
        tasks.spawn(
            "mesh root publisher",
            crate::kubernetes::root_publisher::publish_root_cert(
                client.clone(),
                crate::kubernetes::root_publisher::RootPublisherSettings::new(
                    config.root_namespace.clone(),
                    settings.discovery_selectors.clone(),
                ),
                ca.roots_pem.clone(),
                leader.clone(),
            ),
        );
        tasks.spawn(
            "status writer",
            write_status(client.clone(), status.clone(), leader),
        );
    }
    Federation {
        exporter,
        peer_bundles,
        status,
        metrics,
    }
}

/// The admission webhooks' server, when their port is on: a certificate from the mesh CA for
/// `isthmusd`'s `Service` names (renewed by a task), the injector's settings from the flags.
fn webhook(
    config: &DaemonConfig,
    ca: &Ca,
    listener: Option<TcpListener>,
    tasks: &mut Tasks,
) -> Result<Option<Webhook>, DaemonError> {
    let Some(listener) = listener else {
        return Ok(None);
    };
    let names = service_names("isthmusd", &config.namespace);
    let (cert, renew_at) =
        ServingCert::issue(&ca.authority, &names).map_err(DaemonError::WebhookCertificate)?;
    tasks.spawn(
        "webhook certificate renewal",
        renew(cert.clone(), ca.authority.clone(), names, renew_at),
    );
    let tls = webhook_tls(cert).map_err(|source| DaemonError::Tls {
        listener: Listener::Webhook,
        source,
    })?;
    let mut inject = InjectSettings::new(config.trust_domain.clone(), &config.namespace);
    inject.proxy_image = config.proxy_image.clone();
    Ok(Some(Webhook {
        listener,
        tls: Arc::new(tls),
        limits: HandshakeLimits::default(),
        state: WebhookState {
            inject: Arc::new(inject),
        },
    }))
}

/// What each port serves: TLS configurations, services, debug state.
#[allow(clippy::too_many_arguments)]
pub(super) fn servers(
    config: &DaemonConfig,
    ca: &Ca,
    own: &Own,
    kube: Option<kube::Client>,
    store: Arc<ConfigStore>,
    flow: Flow,
    federation: Federation,
    listeners: Listeners,
    tasks: &mut Tasks,
) -> Result<Servers, DaemonError> {
    // Callers without a certificate are let through the handshake: a bootstrapping workload has
    // none yet and authenticates with its token.
    let verifier = SpiffeVerifier::new(
        shared_bundles(TrustBundles::new(ca.bundle.clone())),
        PeerPolicy::AnyTrusted,
    )
    .allow_anonymous_clients();
    let grpc_tls =
        server_config(own.credentials.clone(), Arc::new(verifier), &[b"h2"]).map_err(|source| {
            DaemonError::Tls {
                listener: Listener::Grpc,
                source,
            }
        })?;
    let mut registry = Registry::default();
    let ca_metrics = CaMetrics::register(&mut registry);
    ca_metrics.set_expiry(&ca.expiry);
    let xds_metrics = XdsMetrics::register(&mut registry);
    federation.metrics.register(&mut registry);
    // Kubernetes mode: projected service-account tokens, checked by TokenReview; otherwise
    // bootstrap tokens.
    let authenticator = match kube {
        Some(client) => CallerAuthenticator::Kubernetes(TokenReviewAuthenticator::new(
            client,
            config.trust_domain.clone(),
        )),
        None => CallerAuthenticator::Tokens(TokenStore::new(&config.state_dir)),
    };
    let ads = AdsServer {
        cache: flow.cache,
        streams: flow.streams,
        gate: Arc::new(WorkloadGate {
            model: flow.pipeline.model.clone(),
        }),
        port: AdsPort::Mtls,
        joins: Some(flow.pipeline.joins.clone()),
        metrics: xds_metrics,
    };
    // Only peers' certificates: each verified against its own peer's root.
    let verifier = SpiffeVerifier::new(federation.peer_bundles, PeerPolicy::AnyTrusted);
    let discovery_tls = server_config(own.credentials.clone(), Arc::new(verifier), &[b"h2"])
        .map_err(|source| DaemonError::Tls {
            listener: Listener::Federation,
            source,
        })?;
    let webhook = webhook(config, ca, listeners.webhook, tasks)?;
    Ok(Servers {
        webhook,
        grpc: Grpc {
            listener: listeners.grpc,
            tls: Arc::new(grpc_tls),
            limits: HandshakeLimits::default(),
            ca: CaService::new(ca.authority.clone(), authenticator, ca_metrics),
            ads: ads.clone(),
        },
        xds_plaintext: listeners.xds_plaintext.map(|listener| XdsPlaintext {
            listener,
            ads: AdsServer {
                port: AdsPort::LoopbackPlaintext,
                ..ads.clone()
            },
        }),
        discovery: Discovery {
            listener: listeners.federation,
            tls: Arc::new(discovery_tls),
            limits: HandshakeLimits::default(),
            exporter: federation.exporter,
        },
        debug: Debug {
            listener: listeners.debug,
            state: DebugState {
                registry: Arc::new(registry),
                config: store,
                streams: ads.streams.clone(),
                cache: ads.cache.clone(),
                node_errors: flow.pipeline.node_errors.clone(),
                model: flow.pipeline.model.clone(),
                federation: federation.status,
                allow_remote: config.debug_allow_remote,
            },
        },
    })
}
