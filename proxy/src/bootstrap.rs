//! Start-up: flags, the identity (certificate from the mesh CA, renewed in the background), the
//! xDS client, the admin port, and shutdown on SIGTERM or Ctrl-C.
//!
//! Two independent halves, each enabled by its flags:
//! - identity (`--identity`, `--root-cert`, `--token-file`): a certificate from `isthmusd`'s CA
//!   with the bootstrap token, renewed at half-life;
//! - configuration (`--node-id`): a delta-ADS stream to `isthmusd`, over mTLS with that
//!   certificate (port 15012) or, with `--xds-plaintext`, without TLS to an `isthmusd` that
//!   opted into its insecure, test-only plaintext port (`--xds-plaintext-addr`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use isthmus_identity::ca_client::{BearerToken, CaClient};
use isthmus_identity::channel::{plaintext_channel, tls_channel};
use isthmus_identity::pem::read_certs;
use isthmus_identity::{
    CertManager, CertManagerConfig, PeerPolicy, SpiffeId, SpiffeVerifier, TrustBundle,
    TrustBundles, client_config, shared_bundles,
};
use isthmus_proto::envoy::envoy::config::core::v3::Node;
use isthmus_proto::envoy::google::protobuf::{Struct, Value, value};

use crate::admin::AdminState;
use crate::xds::client::XdsClient;
use crate::xds::state::AdsState;

/// Isthmus data-plane proxy.
#[derive(Debug, Parser)]
#[command(name = "isthmus-proxy", version)]
pub struct Args {
    /// The workload identity this proxy acts for (with --root-cert and --token-file: get a
    /// certificate from isthmusd's CA).
    #[arg(long, env = "ISTHMUS_IDENTITY")]
    pub identity: Option<SpiffeId>,
    /// isthmusd's certificate service (host:port).
    #[arg(long, default_value = "127.0.0.1:15012", env = "ISTHMUS_CA_ADDRESS")]
    pub ca_address: String,
    /// The mesh root isthmusd's certificate must chain to.
    #[arg(long, env = "ISTHMUS_ROOT_CERT")]
    pub root_cert: Option<PathBuf>,
    /// File holding the bootstrap token (re-read at every request).
    #[arg(long, env = "ISTHMUS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Namespace isthmusd runs in; its identity is spiffe://<td>/ns/<namespace>/sa/isthmusd.
    #[arg(long, default_value = "isthmus-system")]
    pub ca_namespace: String,
    /// Lifetime to request for the workload certificate.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub cert_ttl: Duration,
    /// The xDS node id (Istio's form: sidecar~<ip>~<workload>.<namespace>~<namespace>.svc.cluster.local).
    /// Without it the proxy only keeps its certificate.
    #[arg(long, env = "ISTHMUS_NODE_ID")]
    pub node_id: Option<String>,
    /// Node metadata sent to isthmusd, KEY=VALUE (repeatable): APP_PORTS, APP_ADDRESS,
    /// OUTBOUND_PORT, OUTBOUND_ADDRESS, OUTBOUND_TCP_PORTS, INTERCEPTION_MODE (NONE or REDIRECT).
    #[arg(long = "metadata", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,
    /// What this proxy is.
    #[arg(long, value_enum, default_value_t = Role::Sidecar)]
    pub role: Role,
    /// isthmusd's xDS address; default: the CA address (both are on 15012).
    #[arg(long, env = "ISTHMUS_XDS_ADDRESS")]
    pub xds_address: Option<String>,
    /// INSECURE, for tests: connect to xDS without TLS (an isthmusd started with
    /// --xds-plaintext-addr, which hands any local process any node's private key).
    #[arg(long)]
    pub xds_plaintext: bool,
    /// Speak state-of-the-world ADS instead of delta (incremental) ADS.
    #[arg(long)]
    pub xds_sotw: bool,
    /// Admin address; keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// How long a downstream client may take to send its first bytes, its ClientHello, and to
    /// finish the TLS handshake (slow or stuck clients are dropped and counted).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Worker threads (Envoy's `--concurrency`); default: one per CPU.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// On SIGTERM: how long requests in flight may take to finish before the proxy exits.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Sidecar,
    Ingress,
    Egress,
    Federation,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Sidecar => "sidecar",
            Role::Ingress => "ingress",
            Role::Egress => "egress",
            Role::Federation => "federation",
        }
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?}: empty key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let certs = match (&args.identity, &args.root_cert, &args.token_file) {
        (Some(identity), Some(root), Some(token)) => {
            Some(start_identity(&args, identity, root, token)?)
        }
        (None, None, None) => None,
        _ => bail!("--identity, --root-cert and --token-file go together"),
    };
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut admin = AdminState::new(certs.clone()).with_metrics(registry);
    let mut drain_trigger = None;
    if let Some(node_id) = &args.node_id {
        let channel = if args.xds_plaintext {
            plaintext_channel(args.xds_address.as_deref().unwrap_or("127.0.0.1:15010"))
                .map_err(anyhow::Error::msg)?
        } else {
            let (Some(certs), Some(identity), Some(root)) =
                (&certs, &args.identity, &args.root_cert)
            else {
                bail!(
                    "xDS over mTLS needs the proxy's certificate: give --identity, --root-cert and --token-file, or use --xds-plaintext"
                );
            };
            let td = identity.trust_domain().clone();
            let bundle = TrustBundle::new(td.clone(), read_certs(root)?)?;
            let server = SpiffeId::workload(&td, &args.ca_namespace, "isthmusd")?;
            let verifier = std::sync::Arc::new(SpiffeVerifier::new(
                shared_bundles(TrustBundles::new(bundle)),
                PeerPolicy::OneOf(vec![server]),
            ));
            let tls = client_config(Some(certs.resolver()), verifier, &[b"h2"])?;
            tls_channel(
                args.xds_address.as_deref().unwrap_or(&args.ca_address),
                tls,
                None,
            )
            .map_err(anyhow::Error::msg)?
        };
        let node = node(node_id, args.role, &args.metadata);
        let protocol = if args.xds_sotw {
            crate::xds::client::Protocol::StateOfTheWorld
        } else {
            crate::xds::client::Protocol::Delta
        };
        let (client, config, status) =
            XdsClient::new(channel, protocol, AdsState::new(node), metrics.clone());
        let (runtime_tx, runtime) = tokio::sync::watch::channel(std::sync::Arc::default());
        let (trigger, drain) = crate::drain::new();
        drain_trigger = Some(trigger);
        tokio::spawn(crate::listener::run(
            config.clone(),
            runtime_tx,
            drain,
            metrics.clone(),
            crate::runtime::Settings {
                handshake_timeout: args.handshake_timeout,
            },
        ));
        admin = admin.with_xds(config, status, runtime);
        // Over mTLS the first connection must already present the certificate: HTTP/2 keeps
        // that connection for every later stream.
        let first_cert = (!args.xds_plaintext).then(|| certs.clone()).flatten();
        tokio::spawn(async move {
            if let Some(certs) = first_cert {
                let mut current = certs.subscribe();
                if current.wait_for(Option::is_some).await.is_err() {
                    return;
                }
            }
            client.run().await;
        });
    }
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("admin address {}", args.admin_addr))?;
    tracing::info!(identity = ?args.identity.as_ref().map(ToString::to_string), node = ?args.node_id, admin = %args.admin_addr, "isthmus-proxy started");
    let drain_timeout = args.drain_timeout;
    let shutdown = async move {
        shutdown_signal().await;
        if let Some(trigger) = drain_trigger {
            tracing::info!(deadline = ?drain_timeout, "draining");
            if !trigger.drain(drain_timeout).await {
                tracing::warn!("drain deadline reached with connections still open");
            }
        }
    };
    axum::serve(listener, crate::admin::router(admin))
        .with_graceful_shutdown(shutdown)
        .await
        .context("admin server")?;
    tracing::info!("isthmus-proxy stopped");
    Ok(())
}

fn start_identity(
    args: &Args,
    identity: &SpiffeId,
    root: &std::path::Path,
    token: &std::path::Path,
) -> anyhow::Result<CertManager> {
    let td = identity.trust_domain().clone();
    let bundle = TrustBundle::new(td.clone(), read_certs(root)?)?;
    let ca_identity = SpiffeId::workload(&td, &args.ca_namespace, "isthmusd")?;
    let ca = CaClient::new(
        &args.ca_address,
        shared_bundles(TrustBundles::new(bundle)),
        PeerPolicy::OneOf(vec![ca_identity]),
        BearerToken::File(token.to_path_buf()),
    )?;
    let (certs, _renewal) = CertManager::spawn(
        identity.clone(),
        ca,
        CertManagerConfig {
            ttl: args.cert_ttl,
            ..CertManagerConfig::default()
        },
    );
    Ok(certs)
}

/// The xDS node: its id, and metadata as string values (the role under `ISTHMUS_ROLE`).
fn node(id: &str, role: Role, metadata: &[(String, String)]) -> Node {
    let mut fields: BTreeMap<String, String> = metadata.iter().cloned().collect();
    fields.insert("ISTHMUS_ROLE".into(), role.as_str().into());
    Node {
        id: id.to_owned(),
        cluster: role.as_str().to_owned(),
        user_agent_name: "isthmus-proxy".into(),
        metadata: Some(Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        Value {
                            kind: Some(value::Kind::StringValue(v)),
                        },
                    )
                })
                .collect(),
        }),
        ..Node::default()
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
