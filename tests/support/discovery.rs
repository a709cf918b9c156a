//! A federation discovery client for attacks and checks: one `Watch` on a peer's discovery
//! service with a chosen certificate, directly or through an egress gateway (an outer mTLS
//! session with the gateway carrying the session with the peer), returning how many services
//! the first full list had, or the refusal: a gRPC status, or the transport's error.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use isthmus_identity::pem::{read_certs, read_key};
use isthmus_identity::{
    CredentialCell, PeerPolicy, SpiffeVerifier, TrustBundle, TrustBundles, TrustDomain,
    WorkloadCertificate, client_config, shared_bundles,
};
use isthmus_proto::federation::federation_discovery_client::FederationDiscoveryClient;
use isthmus_proto::federation::{Subscribe, WatchRequest, watch_event, watch_request};

/// A certificate folder (`cert-chain.pem`, `key.pem`) and the root that verifies the server,
/// an SVID of `server_td`.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub cert: &'a Path,
    pub server_root: &'a Path,
    pub server_td: &'a str,
}

/// Why a watch got no full list.
#[derive(Debug)]
pub enum WatchError {
    /// The probe's own files or configuration.
    Setup(String),
    /// The service answered with this status.
    Status(tonic::Code, String),
    /// No gRPC exchange: the connection or a TLS handshake failed (the error and its causes).
    Transport(String),
    /// Nothing within 5 s.
    Timeout,
}

impl WatchError {
    /// The TLS alert a server sent, by rustls's name (`"CertificateUnknown"`...).
    pub fn tls_alert(&self) -> Option<&str> {
        let Self::Transport(message) = self else {
            return None;
        };
        let at = message.find("received fatal alert: ")? + "received fatal alert: ".len();
        let rest = &message[at..];
        let end = rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        Some(&rest[..end])
    }
}

fn client(side: Side<'_>, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, WatchError> {
    let setup = |e: &dyn std::fmt::Display| WatchError::Setup(e.to_string());
    let td = TrustDomain::new(side.server_td).map_err(|e| setup(&e))?;
    let roots = read_certs(side.server_root).map_err(|e| setup(&e))?;
    let bundle = TrustBundle::new(td.clone(), roots.clone()).map_err(|e| setup(&e))?;
    let verifier = SpiffeVerifier::new(
        shared_bundles(TrustBundles::new(bundle)),
        PeerPolicy::TrustDomain(td),
    );
    let chain = read_certs(&side.cert.join("cert-chain.pem")).map_err(|e| setup(&e))?;
    let key = read_key(&side.cert.join("key.pem")).map_err(|e| setup(&e))?;
    let cell = CredentialCell::new();
    cell.store(&WorkloadCertificate::new(chain, key, roots).map_err(|e| setup(&e))?);
    client_config(Some(Arc::new(cell)), Arc::new(verifier), alpn).map_err(|e| setup(&e))
}

/// Watches the exports of the discovery service at `address` as `inner`'s certificate; with
/// `outer`, through the egress gateway at `address` (SNI `sni` on both sessions).
pub fn watch(
    address: &str,
    sni: &str,
    inner: Side<'_>,
    outer: Option<Side<'_>>,
) -> Result<usize, WatchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| WatchError::Setup(e.to_string()))?;
    runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(5),
            first_full_list(address, sni, inner, outer),
        )
        .await
        .map_err(|_| WatchError::Timeout)?
    })
}

/// One TLS session to `address` with SNI `sni`.
fn direct(
    address: &str,
    sni: &str,
    tls: rustls::ClientConfig,
) -> Result<tonic::transport::Channel, WatchError> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned())
        .map_err(|e| WatchError::Setup(e.to_string()))?;
    let target = address.to_owned();
    let connect = tower::service_fn(move |_: tonic::transport::Uri| {
        let (connector, name, target) = (connector.clone(), name.clone(), target.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(target).await?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| WatchError::Setup(e.to_string()))?
            .connect_with_connector_lazy(connect),
    )
}

async fn first_full_list(
    address: &str,
    sni: &str,
    inner: Side<'_>,
    outer: Option<Side<'_>>,
) -> Result<usize, WatchError> {
    let tls = client(inner, &[b"h2"])?;
    let channel = match outer {
        Some(outer) => {
            isthmus_identity::channel::tls_in_tls_channel(address, sni, client(outer, &[])?, tls)
                .map_err(WatchError::Setup)?
        }
        None => direct(address, sni, tls)?,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request: Some(watch_request::Request::Subscribe(Subscribe {
            protocol_version: 1,
        })),
    })
    .await
    .map_err(|e| WatchError::Setup(e.to_string()))?;
    let refused = |status: tonic::Status| {
        if status.code() == tonic::Code::Unknown || status.code() == tonic::Code::Unavailable {
            // No gRPC exchange happened: the transport's error with its causes.
            let mut message = status.message().to_owned();
            let mut next = std::error::Error::source(&status);
            while let Some(cause) = next {
                message = format!("{message}: {cause}");
                next = cause.source();
            }
            WatchError::Transport(message)
        } else {
            WatchError::Status(status.code(), status.message().to_owned())
        }
    };
    let mut events = FederationDiscoveryClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(refused)?
        .into_inner();
    loop {
        match events.message().await.map_err(refused)? {
            Some(event) => {
                if let Some(watch_event::Event::Full(full)) = event.event {
                    return Ok(full.services.len());
                }
            }
            None => return Err(WatchError::Transport("stream ended".into())),
        }
    }
}
