//! `isthmusd`: the control plane daemon. Parses flags, then binds and serves with
//! `isthmus_controlplane::daemon` until SIGTERM or Ctrl-C; a failure is printed with its chain
//! of causes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use isthmus_controlplane::ca::TtlPolicy;
use isthmus_controlplane::config::watch::WatchSettings;
use isthmus_controlplane::daemon::{DaemonConfig, FederationSettings, KubernetesSettings, run};
use isthmus_controlplane::kubernetes::webhook_bundle::WebhookConfigs;
use isthmus_controlplane::model::telemetry::{TelemetrySettings, TracingSettings};
use isthmus_federation::discovery::ImporterSettings;
use isthmus_identity::TrustDomain;

/// jemalloc, with options for a process whose memory comes in bursts (a change rebuilds
/// every proxy's snapshot, then the old ones are freed): two arenas, not four per CPU, and
/// freed pages handed back to the system within half a second by a background thread. At
/// 1,000 proxies x 1,000 services this holds the peak near 190 MiB where glibc's allocator
/// reached 215-240 MiB, and pushes take less CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The options jemalloc reads when it starts (its `malloc_conf`, under the prefix this build
/// of jemalloc uses). `Option<&u8>` has the layout of a C `const char *`. The environment
/// variable `_RJEM_MALLOC_CONF` (prefixed too, not `MALLOC_CONF`) is read after these and
/// overrides them.
#[allow(unsafe_code)] // exporting a symbol by name is all this does
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Option<&u8> =
    Some(&b"narenas:2,background_thread:true,dirty_decay_ms:500,muzzy_decay_ms:0\0"[0]);

/// Isthmus control plane daemon: the mesh certificate authority and xDS server.
#[derive(Debug, Parser)]
#[command(name = "isthmusd", version)]
struct Args {
    /// Where the mesh configuration comes from: a YAML directory (`--config-dir`), or the
    /// Kubernetes API server (in-cluster, or from KUBECONFIG).
    #[arg(
        long,
        value_enum,
        default_value = "directory",
        env = "ISTHMUS_CONFIG_SOURCE"
    )]
    config_source: ConfigSource,
    /// Directory of mesh configuration (YAML); required with --config-source directory.
    #[arg(
        long,
        env = "ISTHMUS_CONFIG_DIR",
        required_if_eq("config_source", "directory")
    )]
    config_dir: Option<PathBuf>,
    /// Kubernetes mode: a kubeconfig file (default: in-cluster, or the KUBECONFIG variable).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: Istio's discoverySelectors. Only namespaces whose labels match one of
    /// these selectors (`key=value[,key=value]`, repeatable; any may match), and the root
    /// namespace, are part of the mesh. Default: every namespace.
    #[arg(long = "discovery-selector", value_parser = isthmus_controlplane::kubernetes::source::parse_selector)]
    discovery_selectors: Vec<std::collections::BTreeMap<String, String>>,
    /// Kubernetes mode: this replica's name, holder of the status lease (the pod's name, from
    /// the downward API).
    /// Default: the host name (in a pod, the pod's name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Kubernetes mode: how long the status lease lasts unrenewed, so how soon another replica
    /// takes over writing status when the holder stops.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// Kubernetes mode: the MutatingWebhookConfiguration of sidecar injection, whose webhooks'
    /// caBundle the status lease holder keeps at the mesh root. Empty: leave it alone.
    #[arg(long, default_value = isthmus_controlplane::kubernetes::webhook_bundle::DEFAULT_INJECTOR_CONFIG)]
    injector_webhook_config: String,
    /// Kubernetes mode: the ValidatingWebhookConfiguration of configuration validation, kept
    /// likewise. Empty: leave it alone.
    #[arg(long, default_value = isthmus_controlplane::kubernetes::webhook_bundle::DEFAULT_VALIDATOR_CONFIG)]
    validator_webhook_config: String,
    /// Directory for state: the generated CA, bootstrap token records, the published root.
    #[arg(long, env = "ISTHMUS_STATE_DIR")]
    state_dir: PathBuf,
    /// This mesh's SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local", env = "ISTHMUS_TRUST_DOMAIN")]
    trust_domain: TrustDomain,
    /// Namespace isthmusd runs in; its identity is spiffe://<td>/ns/<namespace>/sa/isthmusd.
    #[arg(long, default_value = "isthmus-system")]
    namespace: String,
    /// Plugged-in CA directory (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
    /// Without it, a root is generated in the state directory on first start.
    #[arg(long, env = "ISTHMUS_CACERTS")]
    cacerts: Option<PathBuf>,
    /// Address of the TLS gRPC port (certificate service, xDS).
    #[arg(long, default_value = "0.0.0.0:15012")]
    grpc_addr: SocketAddr,
    /// INSECURE, for tests only: also serve xDS without TLS on this loopback address. Off by
    /// default. Any local process can then name any node and receive its private key.
    #[arg(long)]
    xds_plaintext_addr: Option<SocketAddr>,
    /// Address of the debug port (metrics, readiness, liveness).
    #[arg(long, default_value = "0.0.0.0:15014")]
    debug_addr: SocketAddr,
    /// Also answer /debug/* (configuration, every peer's export catalog) to callers that are
    /// not on loopback. Off: only /metrics, /ready and /healthz answer them.
    #[arg(long)]
    debug_allow_remote: bool,
    /// Address of the admission webhooks' HTTPS port (sidecar injection at /inject,
    /// validation at /validate). Default: 0.0.0.0:15017 in Kubernetes mode, off otherwise.
    #[arg(long)]
    webhook_addr: Option<SocketAddr>,
    /// The isthmus-proxy image the sidecar injector puts into pods.
    #[arg(long, env = "ISTHMUS_PROXY_IMAGE", default_value = isthmus_controlplane::admission::inject::settings::DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    /// Lifetime of workload certificates when the request names none.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    workload_cert_ttl: Duration,
    /// Longest lifetime a workload may request.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    max_workload_cert_ttl: Duration,
    /// How long the pipeline gathers configuration changes that arrive together before it
    /// pushes to proxies. Sources settle their own bursts first (the configuration directory:
    /// 50 ms of quiet; Kubernetes: 50 ms of quiet, at most 500 ms), so this only folds what
    /// lands at once. Peers' imports wait for 30 ms of quiet (at most 300 ms).
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    push_debounce: Duration,
    /// At shutdown, how long requests in progress may take to finish before every connection
    /// is closed. xDS streams and discovery watches do not end by themselves: those are closed
    /// then, and their clients reconnect.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,

    /// Policies in this namespace apply to the whole mesh (Istio's root namespace).
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,

    /// Address of the federation discovery port, where peer meshes' control planes watch what
    /// this mesh exports to them (Maistra's discovery port is 8188).
    #[arg(long, default_value = "0.0.0.0:8188")]
    federation_addr: Option<SocketAddr>,
    /// The host the federation ingress gateways dial for discovery (with the discovery port).
    /// Default: in Kubernetes mode the isthmusd Service, isthmusd.<namespace>.svc.cluster.local;
    /// otherwise the bound address.
    #[arg(long)]
    federation_advertise_host: Option<String>,
    /// Do not serve federation discovery.
    #[arg(long, conflicts_with = "federation_addr")]
    no_federation: bool,
    /// Heartbeat interval on idle discovery streams; importers give up after three missed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    federation_heartbeat: Duration,
    /// How often an importer asks a peer for its full list again.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    federation_resync: Duration,
    /// At start, how long proxies wait for every peer's first list of exports before they are
    /// configured without it (so that a restart does not drop their imports meanwhile).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    federation_initial_sync: Duration,
    /// How long imports outlive a lost discovery stream before they are dropped.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    federation_stale_after: Duration,

    /// This mesh's name: the `source_mesh` / `destination_mesh` label of the proxies' metrics
    /// and the `isthmus.mesh` attribute of their spans. Default: the trust domain.
    #[arg(long, env = "ISTHMUS_MESH_ID")]
    mesh_id: Option<String>,
    /// Send the proxies' spans to this OTLP/gRPC collector (`host:port`, e.g. Jaeger's 4317).
    /// No tracing without it.
    #[arg(long)]
    tracing_otlp_endpoint: Option<String>,
    /// Percentage of requests that start a sampled trace (0 to 100; Istio's default is 1).
    #[arg(long, default_value = "1", value_parser = parse_percent)]
    tracing_sampling: f64,

    /// Where imported services and `ServiceEntry`s without addresses get a virtual address
    /// (an IPv4 CIDR; Istio's auto-allocation range by default). Kept in STATE/vips.json.
    #[arg(long, default_value = isthmus_controlplane::model::vips::DEFAULT_RANGE)]
    vip_range: isthmus_controlplane::model::vips::VipRange,

    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

/// A percentage from 0 to 100.
fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|e| format!("{text:?} is not a number: {e}"))?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not a percentage from 0 to 100"))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    isthmus_runtime::supervised::stop_with_runner();
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    if args.lease_duration < Duration::from_secs(1) {
        eprintln!("isthmusd: --lease-duration must be at least 1s");
        return std::process::ExitCode::FAILURE;
    }
    if args.workload_cert_ttl > args.max_workload_cert_ttl {
        eprintln!("isthmusd: --workload-cert-ttl is longer than --max-workload-cert-ttl");
        return std::process::ExitCode::FAILURE;
    }
    let kubernetes = (args.config_source == ConfigSource::Kubernetes).then(|| KubernetesSettings {
        kubeconfig: args.kubeconfig.clone(),
        // Replicas must differ here, or both would hold the lease: the host name is the pod's.
        pod_name: args
            .pod_name
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "isthmusd".to_owned()),
        lease_duration: args.lease_duration,
        discovery_selectors: args.discovery_selectors.clone(),
        webhook_configs: WebhookConfigs {
            mutating: Some(args.injector_webhook_config.clone()).filter(|n| !n.is_empty()),
            validating: Some(args.validator_webhook_config.clone()).filter(|n| !n.is_empty()),
        },
    });
    // The webhooks serve the API server: on by default where there is one.
    let webhook_addr = args.webhook_addr.or_else(|| {
        kubernetes
            .is_some()
            .then(|| SocketAddr::from(([0, 0, 0, 0], 15017)))
    });
    let config = DaemonConfig {
        webhook_addr,
        proxy_image: args.proxy_image,
        config_dir: args.config_dir.unwrap_or_default(),
        kubernetes,
        state_dir: args.state_dir,
        trust_domain: args.trust_domain,
        namespace: args.namespace,
        cacerts: args.cacerts,
        grpc_addr: args.grpc_addr,
        xds_plaintext_addr: args.xds_plaintext_addr,
        debug_addr: args.debug_addr,
        debug_allow_remote: args.debug_allow_remote,
        push_debounce: args.push_debounce,
        config_watch: WatchSettings::default(),
        root_namespace: args.root_namespace,
        federation_advertise_host: args.federation_advertise_host,
        federation_addr: (!args.no_federation)
            .then_some(args.federation_addr)
            .flatten(),
        federation: FederationSettings {
            heartbeat: args.federation_heartbeat,
            initial_sync: args.federation_initial_sync,
            importer: ImporterSettings {
                resync: args.federation_resync,
                heartbeat_timeout: args.federation_heartbeat * 3,
                stale_after: args.federation_stale_after,
                ..ImporterSettings::default()
            },
        },
        ttl: TtlPolicy {
            default: args.workload_cert_ttl,
            max: args.max_workload_cert_ttl,
        },
        drain_timeout: args.drain_timeout,
        telemetry: TelemetrySettings {
            mesh_id: args.mesh_id.filter(|m| !m.is_empty()),
            tracing: args
                .tracing_otlp_endpoint
                .map(|otlp_endpoint| TracingSettings {
                    otlp_endpoint,
                    sampling_percent: args.tracing_sampling,
                }),
        },
        vip_range: args.vip_range,
    };
    match run(config, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let chain = chain(&e);
            tracing::error!("{chain}");
            eprintln!("isthmusd: {chain}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ConfigSource {
    Directory,
    Kubernetes,
}

/// The error and its causes, `outer: inner: …`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    /// The options reach jemalloc: the symbol's name follows the build's prefix, and nothing
    /// would say so if it did not.
    #[test]
    fn jemalloc_reads_the_options() {
        use tikv_jemalloc_ctl::opt;
        assert_eq!(opt::narenas::read().expect("opt.narenas"), 2);
        assert!(opt::background_thread::read().expect("opt.background_thread"));
    }
}
