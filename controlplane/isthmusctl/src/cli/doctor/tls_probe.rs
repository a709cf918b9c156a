//! Does a peer's ingress gateway prove its mesh's identity under the root we hold for that
//! peer? A TLS handshake without a client certificate: the server's certificate is verified
//! before the gateway asks for ours, so the answer is known either way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use isthmus_identity::{
    PeerPolicy, SpiffeVerifier, TrustBundle, TrustBundles, TrustDomain, client_config,
    peer_identity, shared_bundles, verify_error_of,
};
use rustls_pki_types::ServerName;

const DEADLINE: Duration = Duration::from_secs(3);
/// The name every ingress gateway serves discovery under.
const DISCOVERY_SNI: &str = "discovery.federation.local";

/// The gateway's verified SPIFFE ID, or why there is none.
pub async fn verify_gateway(
    addr: SocketAddr,
    peer_trust_domain: &str,
    peer_root_pem: &str,
    local_trust_domain: &str,
    local_root_pem: &str,
) -> Result<String, String> {
    let tcp = match tokio::time::timeout(DEADLINE, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(format!("not accepting connections: {e} (is it running?)")),
        Err(_) => return Err(format!("no answer within {DEADLINE:?}")),
    };
    let td = |name: &str| TrustDomain::new(name).map_err(|e| format!("trust domain {name}: {e}"));
    let peer = TrustBundle::from_pem(
        td(peer_trust_domain)?,
        peer_root_pem.as_bytes(),
        "the configured root",
    )
    .map_err(|e| format!("the root configured for {peer_trust_domain} is unusable: {e}"))?;
    let local = TrustBundle::from_pem(
        td(local_trust_domain)?,
        local_root_pem.as_bytes(),
        "our root",
    )
    .map_err(|e| format!("our own root is unusable: {e}"))?;
    let bundles = TrustBundles::new(local)
        .with_peer(peer)
        .map_err(|e| format!("{e}"))?;
    let verifier = SpiffeVerifier::new(
        shared_bundles(bundles),
        PeerPolicy::TrustDomain(td(peer_trust_domain)?),
    );
    let config = client_config(None, Arc::new(verifier), &[b"h2"]).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(DISCOVERY_SNI).map_err(|e| e.to_string())?;
    match tokio::time::timeout(DEADLINE, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(peer_identity(stream.get_ref().1)
            .map_or_else(|| "an identity".to_owned(), |id| id.to_string())),
        Ok(Err(e)) => Err(match verify_error_of(&e) {
            Some(why) => format!(
                "presents a certificate that the root configured for {peer_trust_domain} does not verify ({why}): a wrong root for the peer?"
            ),
            None => format!("TLS handshake failed: {e}"),
        }),
        Err(_) => Err(format!("TLS handshake did not finish within {DEADLINE:?}")),
    }
}
