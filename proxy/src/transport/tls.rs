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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use isthmus_identity::{
    CredentialCell, PeerPolicy, SpiffeId, SpiffeVerifier, TrustBundles, client_config,
    enable_client_resumption, enable_server_resumption, server_config, shared_bundles,
};

use parking_lot::Mutex;

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

/// Hosts of one cluster that get a client configuration of their own (below); the others share
/// the cluster's.
const HOSTS_WITH_OWN_SESSIONS: usize = 32;

/// A mesh cluster's client configurations, one per host: the cluster's, each with its own
/// ticket store. A ticket opens a session only on the host that issued it, and a cluster's
/// hosts often share one SNI (Istio's `outbound_.<port>_._.<host>`), which is what rustls keys
/// its tickets by; with one store per cluster, a connection would often offer a ticket of
/// another host and make a full handshake. The copies share the cluster's verifier and
/// certificate, so they verify exactly as it does.
#[derive(Debug, Default)]
pub struct PerHostSessions {
    configs: Mutex<HashMap<SocketAddr, Arc<rustls::ClientConfig>>>,
}

impl PerHostSessions {
    /// Keeps the configurations of the hosts `keep` says yes to.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.configs.lock().retain(|addr, _| keep(addr));
    }

    /// The configuration to reach `host` with, `cluster`'s own past
    /// [`HOSTS_WITH_OWN_SESSIONS`] hosts.
    pub fn config(
        &self,
        cluster: &Arc<rustls::ClientConfig>,
        host: SocketAddr,
    ) -> Arc<rustls::ClientConfig> {
        let mut configs = self.configs.lock();
        if let Some(config) = configs.get(&host) {
            return config.clone();
        }
        if configs.len() >= HOSTS_WITH_OWN_SESSIONS {
            return cluster.clone();
        }
        let mut config = (**cluster).clone();
        enable_client_resumption(&mut config);
        let config = Arc::new(config);
        configs.insert(host, config.clone());
        config
    }
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::{HOSTS_WITH_OWN_SESSIONS, PerHostSessions};

    fn cluster_config() -> Arc<rustls::ClientConfig> {
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(isthmus_identity::provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
    }

    fn host(i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], u16::try_from(10_000 + i).unwrap()))
    }

    #[test]
    fn each_host_keeps_one_configuration_of_its_own_up_to_the_limit() {
        let cluster = cluster_config();
        let sessions = PerHostSessions::default();
        let a = sessions.config(&cluster, host(0));
        assert!(!Arc::ptr_eq(&a, &cluster), "a copy, with its own tickets");
        assert!(Arc::ptr_eq(&a, &sessions.config(&cluster, host(0))));
        let b = sessions.config(&cluster, host(1));
        assert!(!Arc::ptr_eq(&a, &b));
        for i in 2..HOSTS_WITH_OWN_SESSIONS {
            sessions.config(&cluster, host(i));
        }
        let past_the_limit = sessions.config(&cluster, host(HOSTS_WITH_OWN_SESSIONS));
        assert!(Arc::ptr_eq(&past_the_limit, &cluster));
        assert!(Arc::ptr_eq(&a, &sessions.config(&cluster, host(0))));
        // Hosts that left give their places to new ones.
        sessions.retain(|addr| *addr == host(0));
        assert!(Arc::ptr_eq(&a, &sessions.config(&cluster, host(0))));
        let new = sessions.config(&cluster, host(HOSTS_WITH_OWN_SESSIONS));
        assert!(!Arc::ptr_eq(&new, &cluster), "a place of its own");
    }
}
