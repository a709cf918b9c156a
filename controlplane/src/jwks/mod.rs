//! The keys of `RequestAuthentication` rules that name a `jwksUri`: `isthmusd` fetches them,
//! keeps the last good copy, refreshes it, and the pipeline pushes the keys inline, so a proxy
//! never fetches anything. A URI not fetched yet, or never fetched successfully, leaves its
//! rule with keys that verify nothing (tokens of that issuer get 401; requests without a
//! token pass), as Istio does.
//!
//! State flows one way: configuration -> [`resolver`] (the URIs, fetched) -> [`JwksCache`] ->
//! pipeline -> model -> proxies.

pub mod fetch;
pub mod resolver;

use std::collections::BTreeMap;

/// The JWKS of each `jwksUri` the configuration names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwksCache {
    pub entries: BTreeMap<String, JwksEntry>,
    /// Every URI of the configuration has been tried once: proxies that reconnect after a
    /// restart wait for this, so they never trade their keys for ones that verify nothing.
    pub settled: bool,
}

/// One URI: its last good document, and the last fetch's error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwksEntry {
    pub keys: Option<String>,
    pub error: Option<String>,
}

impl JwksCache {
    /// The documents fetched so far, by URI.
    pub fn resolved(&self) -> BTreeMap<String, String> {
        self.entries
            .iter()
            .filter_map(|(uri, e)| e.keys.clone().map(|k| (uri.clone(), k)))
            .collect()
    }
}
