//! Start-up: the options (flags, or [`Options::default`] and its public fields from code), the
//! identity (certificate from the mesh CA, renewed in the background) and the xDS channel.
//! `app.rs` binds and serves with them.
//!
//! Two independent halves, each enabled by its flags:
//! - identity (`--identity`, `--root-cert`, `--token-file`): a certificate from `isthmusd`'s CA
//!   with the bootstrap token, renewed at half-life;
//! - configuration (`--node-id`): a delta-ADS stream to `isthmusd`, over mTLS with that
//!   certificate (port 15012) or, with `--xds-plaintext`, without TLS to an `isthmusd` that
//!   opted into its insecure, test-only plaintext port (`--xds-plaintext-addr`).
//!
//! `--status-addr` and `--app-probers` add the status port (`status.rs`); the probes are parsed
//! here, at start, and a bad value stops the proxy from starting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use isthmus_identity::ca_client::{BearerToken, CaClient};
use isthmus_identity::channel::{plaintext_channel, tls_channel};
use isthmus_identity::pem::PemError;
use isthmus_identity::pem::read_certs;
use isthmus_identity::{
    BundleError, CertManager, CertManagerConfig, IssueError, PeerPolicy, SharedBundles, SpiffeId,
    SpiffeIdError, SpiffeVerifier, TrustBundle, TrustBundles, client_config, shared_bundles,
};
use isthmus_proto::envoy::envoy::config::core::v3::Node;
use isthmus_proto::envoy::google::protobuf::{Struct, Value, value};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::status::{AppProbers, ProbersError};

/// Isthmus data-plane proxy.
///
/// From code: [`Options::default`] (the flags' defaults; no identity, no xDS) with the fields
/// a test needs set, e.g. `admin_addr: "127.0.0.1:0".parse()?`.
#[derive(Debug, Clone, Parser)]
#[command(name = "isthmus-proxy", version)]
pub struct Options {
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
    /// Status address (Istio's port 15020, e.g. 0.0.0.0:15020: the kubelet must reach it):
    /// /healthz/ready and the application probes of --app-probers under
    /// /app-health/<container>/<readyz|livez|startupz>. Off unless given.
    #[arg(long, env = "ISTHMUS_STATUS_ADDR")]
    pub status_addr: Option<SocketAddr>,
    /// The DNS proxy's address, UDP and TCP (Istio's 127.0.0.1:15053; the capture rules of
    /// `isthmus-proxy capture --capture-dns` send the application's DNS there). It answers
    /// the mesh's names from the table isthmusd pushes and forwards the rest to the
    /// resolvers of --resolv-conf. Off unless given; needs --node-id.
    #[arg(long, env = "ISTHMUS_DNS_ADDR")]
    pub dns_addr: Option<SocketAddr>,
    /// The pod's original resolver settings: where the DNS proxy forwards names that are not
    /// the mesh's, and the search domains of short names.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// The application's original probes, as Istio's injector writes them
    /// (ISTIO_KUBE_APP_PROBERS JSON: {"/app-health/<container>/<kind>": {"httpGet": {...}} or
    /// {"tcpSocket": {...}}, "timeoutSeconds": N}), answered on the status port.
    #[arg(long, env = "ISTHMUS_KUBE_APP_PROBERS")]
    pub app_probers: Option<String>,
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
    /// Istio's standard metrics, the federation gateway metrics and tracing (`off`: only the
    /// proxy's own `isthmus_proxy_*` metrics; the benchmarks' baseline).
    #[arg(long, default_value = "on", value_parser = parse_switch, action = clap::ArgAction::Set, env = "ISTHMUS_TELEMETRY")]
    pub telemetry: bool,
}

/// `on` or `off`.
fn parse_switch(text: &str) -> Result<bool, String> {
    match text {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        other => Err(format!("{other:?}: expected on or off")),
    }
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

impl Default for Options {
    /// The flags' defaults, without reading the environment.
    fn default() -> Self {
        Self {
            identity: None,
            ca_address: "127.0.0.1:15012".to_owned(),
            root_cert: None,
            token_file: None,
            ca_namespace: "isthmus-system".to_owned(),
            cert_ttl: Duration::from_secs(24 * 3600),
            node_id: None,
            metadata: Vec::new(),
            role: Role::Sidecar,
            xds_address: None,
            xds_plaintext: false,
            xds_sotw: false,
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 15000)),
            status_addr: None,
            dns_addr: None,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            app_probers: None,
            handshake_timeout: Duration::from_secs(10),
            concurrency: None,
            drain_timeout: Duration::from_secs(5),
            telemetry: true,
        }
    }
}

/// A `--metadata` argument that is not `KEY=VALUE`.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("{0:?}: expected KEY=VALUE")]
    NoEquals(String),
    #[error("{0:?}: empty key")]
    EmptyKey(String),
}

fn parse_key_value(s: &str) -> Result<(String, String), MetadataError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| MetadataError::NoEquals(s.to_owned()))?;
    if k.is_empty() {
        return Err(MetadataError::EmptyKey(s.to_owned()));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Why the proxy cannot start: options that do not go together, files and identities that do
/// not parse, a port that cannot be bound. The cause is the source.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--identity, --root-cert and --token-file go together")]
    IdentityFlags,
    #[error(
        "xDS over mTLS needs the proxy's certificate: give --identity, --root-cert and --token-file, or use --xds-plaintext"
    )]
    XdsNeedsCertificate,
    #[error("the mesh root (--root-cert)")]
    RootCert(#[source] PemError),
    #[error("the mesh root (--root-cert)")]
    TrustBundle(#[source] BundleError),
    #[error("isthmusd's identity (--ca-namespace)")]
    IsthmusdIdentity(#[source] SpiffeIdError),
    #[error("the certificate service client")]
    CaClient(#[source] IssueError),
    #[error("the xDS client's TLS configuration")]
    XdsTls(#[source] rustls::Error),
    /// The channel's constructor says why in words only.
    #[error("xDS address {address:?}: {reason}")]
    XdsChannel { address: String, reason: String },
    #[error("admin address {address}")]
    AdminBind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("--app-probers (env ISTHMUS_KUBE_APP_PROBERS)")]
    AppProbers(#[source] ProbersError),
    #[error("the application probes' TLS configuration")]
    ProbeTls(#[source] rustls::Error),
    #[error("--dns-addr needs --node-id: the names come from isthmusd")]
    DnsNeedsXds,
    #[error("--dns-addr {address}: the DNS proxy listens on loopback only (the pod's own)")]
    DnsNotLoopback { address: SocketAddr },
    #[error("the pod's resolver settings (--resolv-conf)")]
    ResolvConf(#[source] crate::dns::resolv_conf::ResolvConfError),
    #[error("DNS proxy address {address}")]
    DnsBind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("status address {address}")]
    StatusBind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The application probes of `--app-probers` (none without it), for the status port.
pub fn app_probers(options: &Options) -> Result<AppProbers, StartError> {
    match &options.app_probers {
        None => Ok(AppProbers::default()),
        Some(json) => AppProbers::parse(json).map_err(StartError::AppProbers),
    }
}

/// The identity half: with `--identity`, `--root-cert` and `--token-file`, a certificate
/// manager fetching and renewing the workload certificate, and its renewal task (the caller
/// owns it); without them, `None`.
pub fn start_identity(
    options: &Options,
) -> Result<Option<(CertManager, JoinHandle<()>)>, StartError> {
    let (identity, root, token) = match (&options.identity, &options.root_cert, &options.token_file)
    {
        (Some(identity), Some(root), Some(token)) => (identity, root, token),
        (None, None, None) => return Ok(None),
        _ => return Err(StartError::IdentityFlags),
    };
    let (bundles, ca_identity) = mesh_trust(options, identity, root)?;
    let ca = CaClient::new(
        &options.ca_address,
        bundles,
        PeerPolicy::OneOf(vec![ca_identity]),
        BearerToken::File(token.clone()),
    )
    .map_err(StartError::CaClient)?;
    Ok(Some(CertManager::spawn(
        identity.clone(),
        ca,
        CertManagerConfig {
            ttl: options.cert_ttl,
            ..CertManagerConfig::default()
        },
    )))
}

/// The mesh root as the only trust bundle, and the identity `isthmusd` must present.
fn mesh_trust(
    options: &Options,
    identity: &SpiffeId,
    root: &std::path::Path,
) -> Result<(SharedBundles, SpiffeId), StartError> {
    let td = identity.trust_domain().clone();
    let roots = read_certs(root).map_err(StartError::RootCert)?;
    let bundle = TrustBundle::new(td.clone(), roots).map_err(StartError::TrustBundle)?;
    let server = SpiffeId::workload(&td, &options.ca_namespace, "isthmusd")
        .map_err(StartError::IsthmusdIdentity)?;
    Ok((shared_bundles(TrustBundles::new(bundle)), server))
}

/// The channel of the xDS half: loopback plaintext with `--xds-plaintext`, else mTLS with the
/// proxy's certificate (`certs`), verifying `isthmusd`'s identity. Lazy: nothing is dialled
/// until the first stream.
pub fn xds_channel(options: &Options, certs: Option<&CertManager>) -> Result<Channel, StartError> {
    if options.xds_plaintext {
        let address = options.xds_address.as_deref().unwrap_or("127.0.0.1:15010");
        return plaintext_channel(address).map_err(|reason| StartError::XdsChannel {
            address: address.to_owned(),
            reason,
        });
    }
    let (Some(certs), Some(identity), Some(root)) = (certs, &options.identity, &options.root_cert)
    else {
        return Err(StartError::XdsNeedsCertificate);
    };
    let (bundles, server) = mesh_trust(options, identity, root)?;
    let verifier = Arc::new(SpiffeVerifier::new(
        bundles,
        PeerPolicy::OneOf(vec![server]),
    ));
    let tls =
        client_config(Some(certs.resolver()), verifier, &[b"h2"]).map_err(StartError::XdsTls)?;
    let address = options
        .xds_address
        .as_deref()
        .unwrap_or(&options.ca_address);
    tls_channel(address, tls, None).map_err(|reason| StartError::XdsChannel {
        address: address.to_owned(),
        reason,
    })
}

/// The xDS node: its id, and metadata as string values (the role under `ISTHMUS_ROLE`).
pub fn node(id: &str, role: Role, metadata: &[(String, String)]) -> Node {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `Options::default()` (for code) and the flags' defaults (for the binary) agree.
    #[test]
    fn the_default_options_are_the_flags_defaults() {
        let parsed = Options::try_parse_from(["isthmus-proxy"]).unwrap();
        assert_eq!(format!("{:?}", Options::default()), format!("{parsed:?}"));
    }

    #[test]
    fn metadata_is_key_equals_value() {
        assert_eq!(
            parse_key_value("APP_PORTS=8080=x").unwrap(),
            ("APP_PORTS".to_owned(), "8080=x".to_owned())
        );
        assert_eq!(
            parse_key_value("APP_PORTS").unwrap_err().to_string(),
            "\"APP_PORTS\": expected KEY=VALUE"
        );
        assert!(matches!(
            parse_key_value("=1"),
            Err(MetadataError::EmptyKey(_))
        ));
    }

    #[test]
    fn identity_flags_go_together_and_mtls_xds_needs_them() {
        let partial = Options {
            token_file: Some("token".into()),
            ..Options::default()
        };
        assert!(matches!(
            start_identity(&partial),
            Err(StartError::IdentityFlags)
        ));
        assert!(start_identity(&Options::default()).unwrap().is_none());
        assert!(matches!(
            xds_channel(&Options::default(), None),
            Err(StartError::XdsNeedsCertificate)
        ));
    }

    #[test]
    fn a_bad_root_keeps_its_cause() {
        let options = Options {
            identity: Some(SpiffeId::parse("spiffe://example.local/ns/a/sa/b").unwrap()),
            root_cert: Some("/nonexistent/root-cert.pem".into()),
            token_file: Some("token".into()),
            ..Options::default()
        };
        let error = start_identity(&options).unwrap_err();
        assert!(matches!(error, StartError::RootCert(_)), "{error:?}");
        let cause = std::error::Error::source(&error).expect("the PEM error is the source");
        assert!(cause.to_string().contains("root-cert.pem"), "{cause}");
    }
}
