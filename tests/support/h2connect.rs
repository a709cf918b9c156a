//! A probe of HTTP/2 CONNECT over mTLS, as a federation egress gateway speaks to a peer's
//! ingress gateway: TLS with a chosen SNI and client certificate (or none), then one CONNECT
//! stream to a chosen authority. Returns the response status, or why there was none.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_api::identity::pem::{read_certs, read_key};
use isthmus_api::identity::{
    CredentialCell, PeerPolicy, SpiffeVerifier, TrustBundle, TrustBundles, TrustDomain,
    WorkloadCertificate, client_config, shared_bundles,
};
use rustls_pki_types::ServerName;

/// `client`: a folder with `cert-chain.pem` and `key.pem`. The server is verified as an SVID
/// of `server_td` against `server_root`.
pub fn connect(
    addr: SocketAddr,
    sni: &str,
    target: &str,
    client: Option<&Path>,
    server_root: &Path,
    server_td: &str,
) -> Result<u16, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            probe(addr, sni, target, client, server_root, server_td),
        )
        .await
        .map_err(|_| "timed out".to_owned())?
    })
}

async fn probe(
    addr: SocketAddr,
    sni: &str,
    target: &str,
    client: Option<&Path>,
    server_root: &Path,
    server_td: &str,
) -> Result<u16, String> {
    let td = TrustDomain::new(server_td).map_err(|e| e.to_string())?;
    let roots = read_certs(server_root).map_err(|e| e.to_string())?;
    let bundle = TrustBundle::new(td, roots.clone()).map_err(|e| e.to_string())?;
    let verifier = SpiffeVerifier::new(
        shared_bundles(TrustBundles::new(bundle)),
        PeerPolicy::AnyTrusted,
    );
    let certs = match client {
        Some(dir) => {
            let chain = read_certs(&dir.join("cert-chain.pem")).map_err(|e| e.to_string())?;
            let key = read_key(&dir.join("key.pem")).map_err(|e| e.to_string())?;
            let cell = CredentialCell::new();
            cell.store(&WorkloadCertificate::new(chain, key, roots).map_err(|e| e.to_string())?);
            Some(Arc::new(cell) as Arc<dyn rustls::client::ResolvesClientCert>)
        }
        None => None,
    };
    let tls = client_config(certs, Arc::new(verifier), &[b"h2"]).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(target)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("CONNECT: {e}"))?;
    Ok(response.status().as_u16())
}
