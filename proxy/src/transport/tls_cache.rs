//! The mesh's TLS configurations kept across configuration changes while what they are built
//! from stays the same.
//!
//! A configuration change (an endpoint moved, a route added) rebuilds the runtime; building its
//! TLS configurations anew would also start new session state: the server's ticket keys and
//! the client's ticket stores, so every connection after the change would make a full
//! handshake. A configuration is therefore found again by a digest of everything it is built
//! from, by content: the certificate's chain, the trust bundles, the expected peers, ALPN and,
//! for a server, whether a client certificate is required. Anything else builds a new one,
//! so a session still resumes only under the certificate, bundles and peer policy that
//! verified it. Filter chains with the same inputs share a server configuration; a client
//! configuration is kept per cluster, with its hosts' ticket stores (`PerHostSessions`, pruned
//! to the cluster's current hosts by `upstream::build`). Configurations outside the mesh
//! (`external`) hold no session state and are built each time; a configuration that cannot be
//! built yet is never kept.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::digest::{self, CertificateBy, field};
use super::tls::{self, PerHostSessions, TlsError};
use crate::config::ProxyConfig;
use crate::config::tls::{DownstreamTls, TlsContext, UpstreamTls};

type Key = [u8; 32];

/// A cluster's TLS origination: its configuration and its hosts' copies of it.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub config: Result<Arc<rustls::ClientConfig>, TlsError>,
    pub sessions: Arc<PerHostSessions>,
}

/// The mesh configurations of the runtime in force, by digest. Each build keeps only what it
/// used: the cache never holds more than the current configuration names.
#[derive(Debug, Default)]
pub struct TlsCache {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    servers: Kept<Arc<rustls::ServerConfig>>,
    clients: Kept<ClientTls>,
    /// Secret digests of the build under way (a secret named by many contexts is hashed once).
    secrets: HashMap<String, Key>,
}

/// Configurations of one kind: those of the last build, and those the build under way used.
#[derive(Debug)]
struct Kept<T> {
    kept: HashMap<Key, T>,
    used: HashMap<Key, T>,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Self {
            kept: HashMap::new(),
            used: HashMap::new(),
        }
    }
}

impl<T: Clone> Kept<T> {
    /// The configuration of `key`, kept or built (a failure is not kept).
    fn get_or_build<E>(&mut self, key: Key, build: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let found = self.used.get(&key).or_else(|| self.kept.get(&key)).cloned();
        let value = match found {
            Some(value) => value,
            None => build()?,
        };
        self.used.insert(key, value.clone());
        Ok(value)
    }
}

impl TlsCache {
    /// Starts a build: what it does not use is dropped at [`TlsCache::finish`].
    pub fn start(&self) {
        let mut state = self.state.lock();
        state.servers.used.clear();
        state.clients.used.clear();
        state.secrets.clear();
    }

    /// Ends a build: keeps only the configurations it used.
    pub fn finish(&self) {
        let mut state = self.state.lock();
        let state = &mut *state;
        state.servers.kept = std::mem::take(&mut state.servers.used);
        state.clients.kept = std::mem::take(&mut state.clients.used);
        state.secrets.clear();
    }

    /// A filter chain's TLS termination.
    pub fn server(
        &self,
        tls: &DownstreamTls,
        config: &ProxyConfig,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        if tls.external.is_some() {
            return tls::server(tls, config);
        }
        let mut state = self.state.lock();
        let mut h = Sha256::new();
        field(&mut h, b"server");
        field(&mut h, &[u8::from(tls.require_client_certificate)]);
        context_digest(&mut h, &tls.context, config, &mut state.secrets);
        state
            .servers
            .get_or_build(h.finalize().into(), || tls::server(tls, config))
    }

    /// The TLS origination of the cluster `cluster`: kept per cluster, since its hosts' ticket
    /// stores are the cluster's own.
    pub fn client(&self, cluster: &str, tls: &UpstreamTls, config: &ProxyConfig) -> ClientTls {
        let built = || -> Result<ClientTls, TlsError> {
            Ok(ClientTls {
                config: Ok(tls::client(tls, config)?),
                sessions: Arc::default(),
            })
        };
        let client = if tls.external.is_some() {
            built()
        } else {
            let mut state = self.state.lock();
            let mut h = Sha256::new();
            field(&mut h, b"client");
            field(&mut h, cluster.as_bytes());
            context_digest(&mut h, &tls.context, config, &mut state.secrets);
            state.clients.get_or_build(h.finalize().into(), built)
        };
        client.unwrap_or_else(|e| ClientTls {
            config: Err(e),
            sessions: Arc::default(),
        })
    }
}

/// The context's certificate and bundles by content, its peers and ALPN.
fn context_digest(
    h: &mut Sha256,
    context: &TlsContext,
    config: &ProxyConfig,
    secrets: &mut HashMap<String, Key>,
) {
    for name in [&context.certificate, &context.validation] {
        match name {
            None => field(h, b"none"),
            Some(name) => {
                field(h, b"some");
                field(h, name.as_bytes());
                let digest = *secrets.entry(name.clone()).or_insert_with(|| {
                    digest::secret(config.secrets.get(name), CertificateBy::Content)
                });
                field(h, &digest);
            }
        }
    }
    for list in [&context.peer_ids, &context.alpn] {
        field(h, &(list.len() as u64).to_be_bytes());
        for item in list {
            field(h, item.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use isthmus_identity::SpiffeId;
    use isthmus_identity::testing::TestCa;

    use super::*;
    use crate::config::secret::Secret;
    use crate::transport::testing::with_raw_secret;

    fn mesh_config(ca: &TestCa, workload: &str) -> ProxyConfig {
        let id = SpiffeId::parse(&format!("spiffe://red.local/ns/shop/sa/{workload}")).unwrap();
        let config = with_raw_secret(
            ProxyConfig::default(),
            "default",
            Secret::Certificate(Arc::new(ca.issue(&id))),
        );
        with_raw_secret(config, "ROOTCA", Secret::TrustBundles(vec![ca.bundle()]))
    }

    fn context(peers: &[&str]) -> TlsContext {
        TlsContext {
            certificate: Some("default".into()),
            validation: Some("ROOTCA".into()),
            peer_ids: peers.iter().map(|p| (*p).to_owned()).collect(),
            alpn: vec!["istio".into()],
        }
    }

    fn upstream(peers: &[&str]) -> UpstreamTls {
        UpstreamTls {
            context: context(peers),
            sni: "outbound_.80_._.echo.shop.svc.cluster.local".into(),
            external: None,
        }
    }

    fn downstream() -> DownstreamTls {
        DownstreamTls {
            context: context(&[]),
            require_client_certificate: true,
            external: None,
        }
    }

    /// One build of a runtime's TLS: the chain's server and the cluster's client.
    fn build(
        cache: &TlsCache,
        config: &ProxyConfig,
        peers: &[&str],
    ) -> (Arc<rustls::ServerConfig>, ClientTls) {
        cache.start();
        let server = cache.server(&downstream(), config).unwrap();
        let client = cache.client("outbound|80||echo", &upstream(peers), config);
        cache.finish();
        (server, client)
    }

    const ECHO: &str = "spiffe://red.local/ns/shop/sa/echo";

    #[test]
    fn a_change_that_leaves_tls_as_it_was_keeps_its_configurations_and_sessions() {
        let ca = TestCa::new("red.local");
        let config = mesh_config(&ca, "client");
        let cache = TlsCache::default();
        let (server, client) = build(&cache, &config, &[ECHO]);
        // Another build of an equal configuration (an endpoint or a route changed).
        let again = config.clone();
        let (server2, client2) = build(&cache, &again, &[ECHO]);
        assert!(
            Arc::ptr_eq(&server, &server2),
            "the server's ticket keys are kept"
        );
        assert!(Arc::ptr_eq(
            client.config.as_ref().unwrap(),
            client2.config.as_ref().unwrap()
        ));
        assert!(
            Arc::ptr_eq(&client.sessions, &client2.sessions),
            "the hosts' ticket stores are kept"
        );
    }

    #[test]
    fn a_new_certificate_bundle_or_peer_policy_builds_new_configurations() {
        let ca = TestCa::new("red.local");
        let config = mesh_config(&ca, "client");
        let cache = TlsCache::default();
        let (server, client) = build(&cache, &config, &[ECHO]);
        let client = client.config.unwrap();

        // A renewed certificate of the same identity: new content, new configurations.
        let renewed = mesh_config(&ca, "client");
        let (s, c) = build(&cache, &renewed, &[ECHO]);
        assert!(!Arc::ptr_eq(&server, &s));
        assert!(!Arc::ptr_eq(&client, c.config.as_ref().unwrap()));

        // Another trust bundle.
        let other = TestCa::new("red.local");
        let rebundled = with_raw_secret(
            renewed.clone(),
            "ROOTCA",
            Secret::TrustBundles(vec![other.bundle()]),
        );
        let (s2, c2) = build(&cache, &rebundled, &[ECHO]);
        assert!(!Arc::ptr_eq(&s, &s2));
        assert!(!Arc::ptr_eq(
            c.config.as_ref().unwrap(),
            c2.config.as_ref().unwrap()
        ));

        // Another expected peer.
        let (_, c3) = build(&cache, &rebundled, &["spiffe://red.local/ns/shop/sa/other"]);
        assert!(!Arc::ptr_eq(
            c2.config.as_ref().unwrap(),
            c3.config.as_ref().unwrap()
        ));
        assert!(!Arc::ptr_eq(&c2.sessions, &c3.sessions));
    }

    #[test]
    fn alpn_client_certificates_and_clusters_each_count() {
        let ca = TestCa::new("red.local");
        let config = mesh_config(&ca, "client");
        let cache = TlsCache::default();
        cache.start();
        let server = cache.server(&downstream(), &config).unwrap();
        let optional = DownstreamTls {
            require_client_certificate: false,
            ..downstream()
        };
        assert!(!Arc::ptr_eq(
            &server,
            &cache.server(&optional, &config).unwrap()
        ));
        let mut h2 = downstream();
        h2.context.alpn = vec!["h2".into()];
        assert!(!Arc::ptr_eq(&server, &cache.server(&h2, &config).unwrap()));
        assert!(Arc::ptr_eq(
            &server,
            &cache.server(&downstream(), &config).unwrap()
        ));
        // Each cluster keeps its own hosts' tickets, even with the same TLS.
        let a = cache.client("a", &upstream(&[ECHO]), &config);
        let b = cache.client("b", &upstream(&[ECHO]), &config);
        assert!(!Arc::ptr_eq(&a.sessions, &b.sessions));
        cache.finish();
    }

    #[test]
    fn only_what_the_last_build_used_is_kept_and_failures_are_not() {
        let ca = TestCa::new("red.local");
        let config = mesh_config(&ca, "client");
        let cache = TlsCache::default();
        let (server, _) = build(&cache, &config, &[ECHO]);
        // A build without that listener drops its configuration ...
        cache.start();
        cache.finish();
        assert!(cache.state.lock().servers.kept.is_empty());
        // ... so that it comes back new.
        let (server2, _) = build(&cache, &config, &[ECHO]);
        assert!(!Arc::ptr_eq(&server, &server2));

        // A secret not received yet: an error, not kept; once it comes, a configuration.
        let mut missing = config.clone();
        missing.secrets.remove("ROOTCA");
        cache.start();
        let err = cache
            .client("outbound|80||echo", &upstream(&[ECHO]), &missing)
            .config
            .unwrap_err();
        assert!(err.contains("ROOTCA"), "{err}");
        cache.finish();
        assert!(cache.state.lock().clients.kept.is_empty());
        let (_, client) = build(&cache, &config, &[ECHO]);
        assert!(client.config.is_ok());
    }
}
