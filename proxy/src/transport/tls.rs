//! rustls configurations from the applied configuration: a filter chain's TLS termination and
//! a cluster's TLS origination, with the certificate and trust bundles named over SDS. Peers
//! are verified as SPIFFE identities against the bundle of their own trust domain, then
//! against the expected URI SANs. Only the mesh's SPIFFE secrets are used here: a plain
//! certificate or plain roots (a credential's, `Secret::PlainCertificate` / `Secret::Roots`)
//! is refused; TLS outside the mesh goes to `edge_tls.rs` / `external_tls.rs`.
//!
//! Configurations are built when the configuration changes; connections keep the one they
//! started with, so a certificate or bundle rotation never drops an open connection.
//!
//! Both sides resume TLS sessions (as Envoy does), each configuration with its own session
//! state: a session resumes only under the bundles and peer policy that verified it, since a
//! change to either builds new configurations. A resumed connection's peer chain is checked
//! again for validity at that moment (`isthmus_identity::verified_peer`).

use std::sync::Arc;

use isthmus_identity::{
    CredentialCell, PeerPolicy, SpiffeId, SpiffeVerifier, TrustBundles, client_config,
    enable_client_resumption, enable_server_resumption, server_config, shared_bundles,
};

use crate::config::ProxyConfig;
use crate::config::secret::Secret;
use crate::config::tls::{DownstreamTls, TlsContext, UpstreamTls};

/// Why a TLS configuration cannot be built yet (a secret not received, or unusable).
pub type TlsError = String;

pub fn server(
    tls: &DownstreamTls,
    config: &ProxyConfig,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let context = &tls.context;
    if let Some(external) = &tls.external {
        return super::edge_tls::server(
            external,
            tls.require_client_certificate,
            &context.alpn,
            config,
        )
        .map(Arc::new);
    }
    let certs = certificate(context, config)?.ok_or("a TLS listener needs a certificate")?;
    let mut verifier = verifier(context, config)?;
    if !tls.require_client_certificate {
        verifier = verifier.allow_anonymous_clients();
    }
    let alpn: Vec<&[u8]> = context.alpn.iter().map(|a| a.as_bytes()).collect();
    let mut server = server_config(certs, Arc::new(verifier), &alpn)
        .map_err(|e| format!("TLS server configuration: {e}"))?;
    enable_server_resumption(&mut server).map_err(|e| format!("TLS session tickets: {e}"))?;
    Ok(Arc::new(server))
}

pub fn client(
    tls: &UpstreamTls,
    config: &ProxyConfig,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let context = &tls.context;
    if let Some(external) = &tls.external {
        return super::external_tls::client(external, &context.alpn, config).map(Arc::new);
    }
    let certs = certificate(context, config)?;
    let verifier = verifier(context, config)?;
    let alpn: Vec<&[u8]> = context.alpn.iter().map(|a| a.as_bytes()).collect();
    let mut client = client_config(
        certs.map(|c| c as Arc<dyn rustls::client::ResolvesClientCert>),
        Arc::new(verifier),
        &alpn,
    )
    .map_err(|e| format!("TLS client configuration: {e}"))?;
    enable_client_resumption(&mut client);
    Ok(Arc::new(client))
}

fn certificate(
    context: &TlsContext,
    config: &ProxyConfig,
) -> Result<Option<Arc<CredentialCell>>, TlsError> {
    let Some(name) = &context.certificate else {
        return Ok(None);
    };
    match config.secrets.get(name).map(|s| &**s) {
        Some(Secret::Certificate(cert)) => {
            let cell = CredentialCell::new();
            cell.store(cert);
            Ok(Some(Arc::new(cell)))
        }
        Some(Secret::PlainCertificate(_)) => Err(format!(
            "secret {name:?} is a plain certificate (no SPIFFE ID): the mesh's TLS presents \
             only a SPIFFE certificate"
        )),
        Some(Secret::TrustBundles(_) | Secret::Roots(_)) => Err(format!(
            "secret {name:?} is a trust bundle, not a certificate"
        )),
        None => Err(format!("secret {name:?} not received yet")),
    }
}

fn verifier(context: &TlsContext, config: &ProxyConfig) -> Result<SpiffeVerifier, TlsError> {
    let name = context
        .validation
        .as_ref()
        .ok_or("a TLS context without a validation context cannot verify its peer")?;
    let bundles = match config.secrets.get(name).map(|s| &**s) {
        Some(Secret::TrustBundles(b)) => b,
        Some(Secret::Roots(_)) => {
            return Err(format!(
                "secret {name:?} holds plain roots (trusted_ca): the mesh verifies its peers \
                 only against SPIFFE trust bundles, each root for its own trust domain"
            ));
        }
        Some(Secret::Certificate(_) | Secret::PlainCertificate(_)) => {
            return Err(format!(
                "secret {name:?} is a certificate, not a trust bundle"
            ));
        }
        None => return Err(format!("secret {name:?} not received yet")),
    };
    let mut iter = bundles.iter().cloned();
    let first = iter
        .next()
        .ok_or_else(|| format!("secret {name:?} has no trust domain"))?;
    let mut all = TrustBundles::new(first);
    for bundle in iter {
        all.insert_peer(bundle)
            .map_err(|e| format!("secret {name:?}: {e}"))?;
    }
    let policy = if context.peer_ids.is_empty() {
        PeerPolicy::AnyTrusted
    } else {
        PeerPolicy::OneOf(
            context
                .peer_ids
                .iter()
                .map(|id| SpiffeId::parse(id).map_err(|e| format!("expected peer {id:?}: {e}")))
                .collect::<Result<_, _>>()?,
        )
    };
    Ok(SpiffeVerifier::new(shared_bundles(all), policy))
}
