//! Why `isthmusd` could not start or had to stop: each error names what was being set up and
//! keeps its cause as `source()` (the binary prints the whole chain).

use std::net::SocketAddr;
use std::path::PathBuf;

use isthmus_identity::{BundleError, SpiffeIdError};

use crate::ca::{CaLoadError, SignError};

/// One of `isthmusd`'s listening ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The mTLS gRPC port: certificate service and xDS.
    Grpc,
    /// The opt-in plaintext xDS port on loopback.
    XdsPlaintext,
    /// The debug port: metrics, readiness, `/debug/*`.
    Debug,
    /// The federation discovery port.
    Federation,
    /// The admission webhooks' port.
    Webhook,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Grpc => "gRPC port (--grpc-addr)",
            Self::XdsPlaintext => "plaintext xDS port (--xds-plaintext-addr)",
            Self::Debug => "debug port (--debug-addr)",
            Self::Federation => "federation discovery port (--federation-addr)",
            Self::Webhook => "admission webhook port (--webhook-addr)",
        })
    }
}

/// Why `isthmusd` could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "--config-source kubernetes: no Kubernetes client configuration (in-cluster or KUBECONFIG)"
    )]
    KubernetesConfig(#[source] kube::config::InferConfigError),
    #[error("--kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("--config-source kubernetes: cannot build the Kubernetes client")]
    KubernetesClient(#[source] kube::Error),
    #[error("--config-dir {dir}: not a directory")]
    ConfigDirNotADirectory { dir: PathBuf },
    #[error("--config-dir {dir}")]
    ConfigDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--config-dir {dir}: cannot watch it")]
    ConfigWatch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("--state-dir {dir}: cannot create it")]
    StateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    StateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA material")]
    CaMaterial(#[source] CaLoadError),
    #[error("CA material cannot be used to sign")]
    Authority(#[source] SignError),
    #[error("the CA roots are not a trust bundle")]
    Roots(#[source] BundleError),
    #[error("--namespace {namespace}: not a valid identity for the control plane")]
    Identity {
        namespace: String,
        #[source]
        source: SpiffeIdError,
    },
    #[error("could not issue the control plane's own certificate")]
    OwnCertificate,
    #[error("could not issue the admission webhook's certificate")]
    WebhookCertificate(#[source] crate::admission::serving_cert::ServingCertError),
    #[error("TLS configuration of the {listener}")]
    Tls {
        listener: Listener,
        #[source]
        source: rustls::Error,
    },
    #[error("--xds-plaintext-addr {addr}: plaintext xDS is served on loopback addresses only")]
    PlaintextNotLoopback { addr: SocketAddr },
    #[error("cannot bind the {listener} to {addr}")]
    Bind {
        listener: Listener,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the address the {listener} is bound to")]
    LocalAddr {
        listener: Listener,
        #[source]
        source: std::io::Error,
    },
    #[error("the server of the {listener} failed")]
    Serve {
        listener: Listener,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the server of the {listener} stopped before shutdown")]
    ServerEnded { listener: Listener },
    #[error("background task {task} stopped before shutdown")]
    TaskEnded {
        task: &'static str,
        /// Set when it panicked.
        #[source]
        source: Option<tokio::task::JoinError>,
    },
}
