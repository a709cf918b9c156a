//! Start-up: flags, the identity (certificate from the mesh CA, renewed in the background), the
//! admin port, and shutdown on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use isthmus_api::ca_client::{BearerToken, CaClient};
use isthmus_api::identity::pem::read_certs;
use isthmus_api::identity::{
    CertManager, CertManagerConfig, PeerPolicy, SpiffeId, TrustBundle, TrustBundles, shared_bundles,
};

/// Isthmus data-plane proxy: obtains and renews its workload certificate from isthmusd.
#[derive(Debug, Parser)]
#[command(name = "isthmus-proxy", version)]
pub struct Args {
    /// The workload identity this proxy acts for.
    #[arg(long, env = "ISTHMUS_IDENTITY")]
    pub identity: SpiffeId,
    /// isthmusd's certificate service (host:port).
    #[arg(long, default_value = "127.0.0.1:15012", env = "ISTHMUS_CA_ADDRESS")]
    pub ca_address: String,
    /// The mesh root isthmusd's certificate must chain to.
    #[arg(long, env = "ISTHMUS_ROOT_CERT")]
    pub root_cert: PathBuf,
    /// File holding the bootstrap token (re-read at every request).
    #[arg(long, env = "ISTHMUS_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Namespace isthmusd runs in; its identity is spiffe://<td>/ns/<namespace>/sa/isthmusd.
    #[arg(long, default_value = "isthmus-system")]
    pub ca_namespace: String,
    /// Lifetime to request for the workload certificate.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub cert_ttl: Duration,
    /// Admin address; keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let td = args.identity.trust_domain().clone();
    let roots = read_certs(&args.root_cert)?;
    let bundle = TrustBundle::new(td.clone(), roots)?;
    let ca_identity = SpiffeId::workload(&td, &args.ca_namespace, "isthmusd")?;
    let ca = CaClient::new(
        &args.ca_address,
        shared_bundles(TrustBundles::new(bundle)),
        PeerPolicy::OneOf(vec![ca_identity]),
        BearerToken::File(args.token_file.clone()),
    )?;
    let (certs, _renewal) = CertManager::spawn(
        args.identity.clone(),
        ca,
        CertManagerConfig {
            ttl: args.cert_ttl,
            ..CertManagerConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("admin address {}", args.admin_addr))?;
    tracing::info!(identity = %args.identity, admin = %args.admin_addr, "isthmus-proxy started");
    axum::serve(listener, crate::admin::router(certs))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("admin server")?;
    tracing::info!("isthmus-proxy stopped");
    Ok(())
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
