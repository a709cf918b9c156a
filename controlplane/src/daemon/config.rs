//! What `isthmusd` is started with: the flags of `src/bin/isthmusd.rs`, or
//! [`DaemonConfig::local`] for tests and in-process use.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use isthmus_federation::discovery::ImporterSettings;
use isthmus_identity::TrustDomain;

use crate::ca::TtlPolicy;
use crate::config::watch::WatchSettings;
use crate::model::telemetry::TelemetrySettings;
use crate::model::vips::VipRange;

/// Everything `isthmusd` is started with.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The YAML directory of the configuration (unused in Kubernetes mode).
    pub config_dir: PathBuf,
    /// Kubernetes mode: configuration, registry and status through the API server (the
    /// client is inferred in-cluster or from `KUBECONFIG`), proxies authenticated by
    /// service-account tokens. `None`: the directory, bootstrap tokens.
    pub kubernetes: Option<KubernetesSettings>,
    pub state_dir: PathBuf,
    pub trust_domain: TrustDomain,
    /// Namespace `isthmusd` runs in; its own identity is `…/ns/<namespace>/sa/isthmusd`.
    pub namespace: String,
    /// A plugged-in CA (`cacerts` layout); otherwise a root is generated in the state directory.
    pub cacerts: Option<PathBuf>,
    /// The mTLS gRPC port: the certificate service and xDS.
    pub grpc_addr: SocketAddr,
    /// Plaintext xDS, an explicit opt-in for tests (off when `None`): it hands any local
    /// process every node's configuration, private keys included. Loopback addresses only.
    pub xds_plaintext_addr: Option<SocketAddr>,
    /// The debug port: `/metrics`, `/ready`, `/debug/*`.
    pub debug_addr: SocketAddr,
    /// The admission webhooks' HTTPS port (sidecar injection, validation); off when `None`.
    pub webhook_addr: Option<SocketAddr>,
    /// The image the injector puts into pods (`isthmus-proxy`'s).
    pub proxy_image: String,
    /// Serve `/debug/*` to callers that are not on loopback too.
    pub debug_allow_remote: bool,
    pub ttl: TtlPolicy,
    /// How long the pipeline gathers configuration changes that arrive together before it
    /// rebuilds and pushes. The sources settle their own bursts first (the directory watch,
    /// the Kubernetes watches), so this only folds what lands at once.
    pub push_debounce: Duration,
    /// How the configuration directory is watched and reloaded.
    pub config_watch: WatchSettings,
    /// Policies in this namespace apply mesh-wide (Istio's root namespace).
    pub root_namespace: String,
    /// The federation discovery port (peers' control planes watch our exports there).
    pub federation_addr: Option<SocketAddr>,
    /// The host the ingress gateways dial to reach the discovery port (with its bound port).
    /// Default: in Kubernetes mode the `isthmusd` Service, `isthmusd.<namespace>.svc.cluster.local`;
    /// otherwise the bound address (loopback when bound to every address).
    pub federation_advertise_host: Option<String>,
    pub federation: FederationSettings,
    /// At shutdown, how long requests in progress may take to finish before every connection
    /// is closed (xDS streams and discovery watches do not end by themselves).
    pub drain_timeout: Duration,
    /// The mesh's name (`--mesh-id`) and trace export (`--tracing-*`), pushed to proxies.
    pub telemetry: TelemetrySettings,
    /// Where imported services and address-less `ServiceEntry`s get a virtual address
    /// (`--vip-range`, Istio's 240.240.0.0/16 by default).
    pub vip_range: VipRange,
}

impl DaemonConfig {
    /// A daemon on loopback for tests and in-process use: every port (gRPC, debug, federation
    /// discovery, webhooks) on `127.0.0.1:0`, so the system picks free ones ([`super::Bound::addresses`]
    /// says which); no plaintext xDS (set `xds_plaintext_addr` to `127.0.0.1:0` to opt in); a
    /// CA generated in `state_dir`; namespace `isthmus-system`, root namespace
    /// `istio-system`; `isthmusd`'s default timings. Every field is public: change what a test
    /// needs.
    pub fn local(config_dir: PathBuf, state_dir: PathBuf, trust_domain: TrustDomain) -> Self {
        let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self {
            config_dir,
            kubernetes: None,
            state_dir,
            trust_domain,
            namespace: "isthmus-system".to_owned(),
            cacerts: None,
            grpc_addr: any_port,
            xds_plaintext_addr: None,
            debug_addr: any_port,
            webhook_addr: Some(any_port),
            proxy_image: crate::admission::inject::settings::DEFAULT_PROXY_IMAGE.to_owned(),
            debug_allow_remote: false,
            ttl: TtlPolicy::default(),
            push_debounce: Duration::from_millis(10),
            config_watch: WatchSettings::default(),
            root_namespace: "istio-system".to_owned(),
            federation_addr: Some(any_port),
            federation_advertise_host: None,
            federation: FederationSettings::default(),
            drain_timeout: Duration::from_secs(1),
            telemetry: TelemetrySettings::default(),
            vip_range: VipRange::default(),
        }
    }
}

/// How `isthmusd` runs in Kubernetes mode.
#[derive(Debug, Clone)]
pub struct KubernetesSettings {
    /// A kubeconfig file to use instead of the in-cluster or `KUBECONFIG` configuration.
    pub kubeconfig: Option<PathBuf>,
    /// This replica's name (the pod's): the holder of the status lease.
    pub pod_name: String,
    /// How long the status writer's lease lasts without renewal: the longest a status
    /// writer can be missing before another replica takes over.
    pub lease_duration: Duration,
    /// Istio's `discoverySelectors` (each `key=value` pairs, any may match): the namespaces
    /// that are part of the mesh, besides the root namespace. Empty: all.
    pub discovery_selectors: Vec<std::collections::BTreeMap<String, String>>,
    /// The admission webhook configurations whose `caBundle` the Lease holder keeps at the
    /// mesh root (`kubernetes/webhook_bundle.rs`).
    pub webhook_configs: crate::kubernetes::webhook_bundle::WebhookConfigs,
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
