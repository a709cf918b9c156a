//! The delta-ADS client as a pure state machine: responses go in, ACK/NACK and subscription
//! requests and the new configuration come out. No I/O, so every protocol case is a unit test.
//!
//! - LDS and CDS are wildcard subscriptions; RDS, EDS and SDS subscribe to the names the
//!   applied listeners and clusters reference, and unsubscribe from names no longer referenced.
//! - A response is applied whole or not at all: one resource outside the profile NACKs the
//!   response with the resource, field path and reason, and the last good configuration stays.
//! - On reconnect the first requests carry the versions the proxy holds
//!   (`initial_resource_versions`) and the node; later requests omit the node.
//! - Ready once every type subscribed to has had a response applied.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use isthmus_proto::envoy::envoy::config::core::v3::Node;
use isthmus_proto::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use isthmus_proto::envoy::google::rpc::Status;

use crate::config::{self, ProxyConfig, XdsType};

/// gRPC's INVALID_ARGUMENT, the code Envoy puts in a NACK.
const INVALID_ARGUMENT: i32 = 3;
/// At most this many resource errors are listed in one NACK.
const MAX_ERRORS_IN_NACK: usize = 5;

#[derive(Debug, Default)]
struct TypeState {
    /// Name to version, of what is applied.
    versions: BTreeMap<String, String>,
    /// Names subscribed to (non-wildcard types).
    subscribed: BTreeSet<String>,
    /// Whether a subscription was sent on the current stream.
    requested: bool,
    /// Whether a response of this type has been applied since start.
    applied: bool,
    accepted: u64,
    rejected: u64,
    last_version: String,
    last_error: Option<String>,
}

/// Per-type figures for the admin port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeReport {
    pub kind: XdsType,
    pub version: String,
    pub resources: usize,
    pub accepted: u64,
    pub rejected: u64,
    pub last_error: Option<String>,
}

/// What a response led to.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The ACK or NACK, then any subscription changes.
    pub requests: Vec<DeltaDiscoveryRequest>,
    /// The new configuration, if the response changed it.
    pub config: Option<Arc<ProxyConfig>>,
}

#[derive(Debug)]
pub struct AdsState {
    node: Node,
    types: BTreeMap<XdsType, TypeState>,
    config: Arc<ProxyConfig>,
}

impl AdsState {
    /// A client of Envoy's five types.
    pub fn new(node: Node) -> Self {
        Self::with_types(node, XdsType::ALL)
    }

    /// A client of `types` (Envoy's, plus the name table when the DNS proxy runs).
    pub fn with_types(node: Node, types: impl IntoIterator<Item = XdsType>) -> Self {
        Self {
            node,
            types: types
                .into_iter()
                .map(|t| (t, TypeState::default()))
                .collect(),
            config: Arc::default(),
        }
    }

    pub fn config(&self) -> &Arc<ProxyConfig> {
        &self.config
    }

    /// The first requests of a new stream: LDS and CDS as wildcards, then what the current
    /// configuration references, each with the versions already held. The first carries the
    /// node.
    pub fn start_stream(&mut self) -> Vec<DeltaDiscoveryRequest> {
        let mut requests = Vec::new();
        let kinds: Vec<XdsType> = self.types.keys().copied().collect();
        for kind in kinds {
            let wanted = self.config.wanted(kind);
            let state = self.state(kind);
            state.requested = false;
            if !kind.is_wildcard() && wanted.is_empty() {
                state.subscribed.clear();
                continue;
            }
            state.requested = true;
            state.subscribed = wanted.clone();
            requests.push(DeltaDiscoveryRequest {
                type_url: kind.type_url(),
                resource_names_subscribe: wanted.into_iter().collect(),
                initial_resource_versions: state
                    .versions
                    .iter()
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect(),
                ..DeltaDiscoveryRequest::default()
            });
        }
        if let Some(first) = requests.first_mut() {
            first.node = Some(self.node.clone());
        }
        requests
    }

    /// Applies (or rejects) one response.
    pub fn on_response(&mut self, response: DeltaDiscoveryResponse) -> Outcome {
        let Some(kind) =
            XdsType::from_type_url(&response.type_url).filter(|k| self.types.contains_key(k))
        else {
            // Not a type this proxy asked for: NACK so the server sees it.
            return Outcome {
                requests: vec![nack(
                    &response.type_url,
                    &response.nonce,
                    format!("isthmus-proxy does not subscribe to {}", response.type_url),
                )],
                config: None,
            };
        };
        let mut converted = Vec::with_capacity(response.resources.len());
        let mut errors = Vec::new();
        for (i, r) in response.resources.iter().enumerate() {
            let label = if r.name.is_empty() {
                format!("resources[{i}]")
            } else {
                format!("{} {:?}", kind.short(), r.name)
            };
            if r.name.is_empty() {
                errors.push(format!("{label}: the resource has no name"));
                continue;
            }
            let Some(any) = &r.resource else {
                errors.push(format!("{label}: the resource has no body"));
                continue;
            };
            match config::convert(kind, &r.name, any) {
                Ok(resource) => converted.push((r.name.clone(), r.version.clone(), resource)),
                Err(e) => errors.push(format!("{label}: {e}")),
            }
        }
        if !errors.is_empty() {
            let more = errors.len().saturating_sub(MAX_ERRORS_IN_NACK);
            errors.truncate(MAX_ERRORS_IN_NACK);
            let mut message = errors.join("; ");
            if more > 0 {
                message.push_str(&format!("; and {more} more"));
            }
            tracing::warn!(
                xds = kind.short(),
                nonce = response.nonce,
                error = message,
                "rejected an xDS update (NACK)"
            );
            let state = self.state(kind);
            state.rejected += 1;
            state.last_error = Some(message.clone());
            return Outcome {
                requests: vec![nack(&response.type_url, &response.nonce, message)],
                config: None,
            };
        }

        let mut config = (*self.config).clone();
        let state = self.state(kind);
        for (name, version, resource) in converted {
            state.versions.insert(name.clone(), version);
            config.insert(name, resource);
        }
        for name in &response.removed_resources {
            state.versions.remove(name);
            config.remove(kind, name);
        }
        state.applied = true;
        state.accepted += 1;
        state.last_error = None;
        state.last_version = response.system_version_info.clone();
        let config = Arc::new(config);
        self.config = config.clone();
        let mut requests = vec![DeltaDiscoveryRequest {
            type_url: response.type_url,
            response_nonce: response.nonce,
            ..DeltaDiscoveryRequest::default()
        }];
        requests.extend(self.resubscribe());
        Outcome {
            requests,
            config: Some(config),
        }
    }

    /// Subscribe to names newly referenced, unsubscribe from names no longer referenced (and
    /// forget those resources, as Envoy does).
    fn resubscribe(&mut self) -> Vec<DeltaDiscoveryRequest> {
        let mut requests = Vec::new();
        let mut config: Option<ProxyConfig> = None;
        for kind in [XdsType::Route, XdsType::Endpoint, XdsType::Secret] {
            let wanted = self.config.wanted(kind);
            let state = self.types.entry(kind).or_default();
            let subscribe: Vec<String> = wanted.difference(&state.subscribed).cloned().collect();
            let unsubscribe: Vec<String> = state.subscribed.difference(&wanted).cloned().collect();
            if subscribe.is_empty() && unsubscribe.is_empty() {
                continue;
            }
            for name in &unsubscribe {
                state.versions.remove(name);
                config
                    .get_or_insert_with(|| (*self.config).clone())
                    .remove(kind, name);
            }
            state.subscribed = wanted;
            state.requested = true;
            requests.push(DeltaDiscoveryRequest {
                type_url: kind.type_url(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..DeltaDiscoveryRequest::default()
            });
        }
        if let Some(config) = config {
            self.config = Arc::new(config);
        }
        requests
    }

    /// The names of `kind` held now.
    pub fn held(&self, kind: XdsType) -> BTreeSet<String> {
        self.types
            .get(&kind)
            .map(|s| s.versions.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The names of `kind` subscribed to now (empty for the wildcard types).
    pub fn subscribed(&self, kind: XdsType) -> BTreeSet<String> {
        if kind.is_wildcard() {
            return BTreeSet::new();
        }
        self.types
            .get(&kind)
            .map(|s| s.subscribed.clone())
            .unwrap_or_default()
    }

    /// Ready: every type subscribed to on this run has been applied at least once.
    pub fn ready(&self) -> bool {
        self.types.values().all(|s| !s.requested || s.applied)
    }

    /// The types subscribed to and not yet applied.
    pub fn waiting_for(&self) -> Vec<XdsType> {
        self.types
            .iter()
            .filter(|(_, s)| s.requested && !s.applied)
            .map(|(k, _)| *k)
            .collect()
    }

    pub fn report(&self) -> Vec<TypeReport> {
        self.types
            .iter()
            .map(|(kind, s)| TypeReport {
                kind: *kind,
                version: s.last_version.clone(),
                resources: s.versions.len(),
                accepted: s.accepted,
                rejected: s.rejected,
                last_error: s.last_error.clone(),
            })
            .collect()
    }

    fn state(&mut self, kind: XdsType) -> &mut TypeState {
        self.types.entry(kind).or_default()
    }
}

fn nack(type_url: &str, nonce: &str, message: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_owned(),
        response_nonce: nonce.to_owned(),
        error_detail: Some(Status {
            code: INVALID_ARGUMENT,
            message,
            ..Status::default()
        }),
        ..DeltaDiscoveryRequest::default()
    }
}
