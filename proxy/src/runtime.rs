//! What the data path reads: the applied configuration with everything derived from it built
//! once per change — TLS server configurations per filter chain, clusters with their hosts,
//! balancers and TLS client configurations. Connections take the runtime current when they
//! start and keep it, so a change never disturbs an open connection.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::ProxyConfig;
use crate::transport::tls;
use crate::upstream::outlier::HealthRegistry;
use crate::upstream::{self, ClusterRuntime};

/// A filter chain: by index in its listener, or the default chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainId {
    Index(usize),
    Default,
}

#[derive(Debug, Default)]
pub struct Runtime {
    pub config: Arc<ProxyConfig>,
    pub clusters: HashMap<String, Arc<ClusterRuntime>>,
    pub server_tls: HashMap<(String, ChainId), Result<Arc<rustls::ServerConfig>, tls::TlsError>>,
}

impl Runtime {
    pub fn build(config: Arc<ProxyConfig>, health: &HealthRegistry) -> Self {
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
                    server_tls.insert((name.clone(), id), tls::server(t, &config));
                }
            }
        }
        Self {
            clusters: upstream::build(&config, health),
            server_tls,
            config,
        }
    }
}
