//! `isthmusctl cert …`: request a workload certificate the way a proxy does, or inspect PEM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use isthmus_identity::ca_client::{BearerToken, CaClient};
use isthmus_identity::pem::{certs_to_pem, read_certs};
use isthmus_identity::{
    CertInfo, CertificateSource, PeerPolicy, SpiffeId, TrustBundle, TrustBundles, format_time,
    generate_csr, shared_bundles,
};

use isthmus_controlplane::daemon::control_plane_identity;
use isthmus_controlplane::private_files::{create_private_dir, write_private};

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Send a CSR to isthmusd and write cert-chain.pem, key.pem (0600) and root-cert.pem.
    Request {
        /// isthmusd's gRPC address (host:port).
        #[arg(long, default_value = "127.0.0.1:15012")]
        ca_addr: String,
        /// The mesh root that isthmusd's certificate must chain to (STATE/root-cert.pem).
        #[arg(long)]
        root: PathBuf,
        /// File holding the bootstrap token.
        #[arg(long)]
        token_file: PathBuf,
        /// The identity to request.
        #[arg(long)]
        identity: SpiffeId,
        /// The namespace isthmusd runs in (its identity is …/ns/<namespace>/sa/isthmusd).
        #[arg(long, default_value = "isthmus-system")]
        ca_namespace: String,
        /// Requested lifetime, e.g. 1h; default: the CA's.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Show the SPIFFE ID, validity, CA flag and issuer of every certificate in a PEM file.
    Inspect { file: PathBuf },
}

impl CertCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Request {
                ca_addr,
                root,
                token_file,
                identity,
                ca_namespace,
                ttl,
                out_dir,
            } => {
                let td = identity.trust_domain().clone();
                let bundle = TrustBundle::new(td.clone(), read_certs(&root)?)?;
                let ca_identity = control_plane_identity(&td, &ca_namespace)?;
                let client = CaClient::new(
                    &ca_addr,
                    shared_bundles(TrustBundles::new(bundle.clone())),
                    PeerPolicy::OneOf(vec![ca_identity]),
                    BearerToken::File(token_file),
                )?;
                let request = generate_csr(&identity)?;
                let issued = client
                    .issue(request.csr_pem, ttl.unwrap_or_default())
                    .await
                    .with_context(|| format!("requesting a certificate from {ca_addr}"))?;
                let cert = isthmus_identity::WorkloadCertificate::new(
                    issued.chain,
                    request.key,
                    issued.roots,
                )?;
                create_private_dir(&out_dir).with_context(|| out_dir.display().to_string())?;
                write_private(&out_dir.join("cert-chain.pem"), cert.chain_pem().as_bytes())?;
                write_private(&out_dir.join("key.pem"), cert.key_pem().as_bytes())?;
                write_private(
                    &out_dir.join("root-cert.pem"),
                    certs_to_pem(cert.roots()).as_bytes(),
                )?;
                println!(
                    "issued {} (serial {}, expires {}) into {}",
                    cert.spiffe_id(),
                    cert.leaf().serial,
                    format_time(cert.not_after()),
                    out_dir.display()
                );
            }
            Self::Inspect { file } => {
                for (i, der) in read_certs(&file)?.iter().enumerate() {
                    let info = CertInfo::parse(der)
                        .with_context(|| format!("{} certificate {i}", file.display()))?;
                    println!("certificate {i}:");
                    println!("  subject:    {}", info.subject);
                    println!("  issuer:     {}", info.issuer);
                    println!("  serial:     {}", info.serial);
                    match info.spiffe_id() {
                        Ok(id) => println!("  spiffe id:  {id}"),
                        Err(e) => println!("  spiffe id:  none ({e})"),
                    }
                    println!(
                        "  valid:      {} .. {}",
                        format_time(info.not_before),
                        format_time(info.not_after)
                    );
                    println!("  ca:         {}", info.is_ca);
                }
            }
        }
        Ok(())
    }
}
