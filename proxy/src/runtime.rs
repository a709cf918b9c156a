//! What the data path reads: the applied configuration with everything derived from it built
//! once per change — TLS server configurations per filter chain, clusters with their hosts,
//! balancers and TLS client configurations. Connections take the runtime current when they
//! start and keep it, so a change never disturbs an open connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::transport::tls;
use crate::transport::tls_cache::TlsCache;
use crate::upstream::outlier::HealthRegistry;
use crate::upstream::{self, ClusterRuntime};

/// A filter chain: by index in its listener, or the default chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainId {
    Index(usize),
    Default,
}

/// Settings of the data path that come from flags, not from xDS.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long a client may take to send its first bytes (after which it is treated as
    /// plaintext), to finish its ClientHello, and to finish the TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default)]
pub struct Runtime {
    pub settings: Settings,
    pub config: Arc<ProxyConfig>,
    pub metrics: Arc<Metrics>,
    pub clusters: HashMap<String, Arc<ClusterRuntime>>,
    pub server_tls: HashMap<(String, ChainId), Result<Arc<rustls::ServerConfig>, tls::TlsError>>,
}

impl Runtime {
    /// `tls_cache`: the mesh TLS configurations of the runtime in force, kept where this one's
    /// TLS is built from the same certificates, bundles and settings (their TLS sessions
    /// resume across the change).
    pub fn build(
        config: Arc<ProxyConfig>,
        health: &HealthRegistry,
        metrics: &Arc<Metrics>,
        settings: Settings,
        tls_cache: &TlsCache,
    ) -> Self {
        tls_cache.start();
        let mut server_tls = HashMap::new();
        for (name, listener) in &config.listeners {
            let chains = listener
                .chains
                .iter()
                .enumerate()
                .map(|(i, c)| (ChainId::Index(i), c))
                .chain(listener.default_chain.iter().map(|c| (ChainId::Default, c)));
            for (id, chain) in chains {
                if let Some(t) = &chain.tls {
                    server_tls.insert((name.clone(), id), tls_cache.server(t, &config));
                }
            }
        }
        let clusters = upstream::build(&config, health, metrics, tls_cache);
        tls_cache.finish();
        Self {
            clusters,
            metrics: metrics.clone(),
            settings,
            server_tls,
            config,
        }
    }
}
