//! One delta (incremental) ADS stream, as a pure state machine.
//!
//! Per type the stream knows what the proxy subscribed to (everything, or names) and which
//! version of each resource the proxy has — from what was sent, or from
//! `initial_resource_versions` on reconnect — and sends only the difference: changed or new
//! resources, and the names of removed ones. Unsubscribing forgets the proxy's copy, so a later
//! subscribe sends the resource again.

use std::collections::{BTreeMap, BTreeSet};

use isthmus_api::envoy::envoy::config::core::v3::Node;
use isthmus_api::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::resources::{NamedResource, ProxySnapshot, TypeResources, is_wildcard_type};
use super::status::{ProtocolError, Reply, ReplyState, TypeStatus, check_request};

#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy holds: name to version.
    known: BTreeMap<String, String>,
    /// Nonce to the system version it carried, until answered.
    pending: BTreeMap<String, String>,
    /// The type version last compared with `known`, while the subscription is unchanged:
    /// a snapshot whose version for this type is the same holds nothing new (versions are
    /// content hashes), so the per-resource comparison is skipped.
    diffed: Option<String>,
    /// The resources last compared (shared parts, not copies): the next comparison skips parts
    /// that are the same and walks changed ones side by side, instead of looking up every
    /// resource the proxy holds.
    last: Option<TypeResources>,
    replies: ReplyState,
}

impl TypeState {
    fn in_scope(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// Resources of `typed` the proxy lacks, and names it holds that are gone, by looking up each.
fn all_changes(
    state: &mut TypeState,
    typed: Option<&TypeResources>,
) -> (Vec<Resource>, Vec<String>) {
    let mut resources = Vec::new();
    if let Some(typed) = typed {
        for item in typed.items() {
            if state.in_scope(&item.name) && state.known.get(&item.name) != Some(&item.version) {
                state.known.insert(item.name.clone(), item.version.clone());
                resources.push(to_resource(item));
            }
        }
    }
    let removed: Vec<String> = state
        .known
        .keys()
        .filter(|name| typed.is_none_or(|t| !t.contains(name)))
        .cloned()
        .collect();
    for name in &removed {
        state.known.remove(name);
    }
    (resources, removed)
}

/// The same as [`all_changes`] when the proxy holds `prev` (its in-scope part): parts shared
/// with `prev` are skipped, changed parts are walked side by side in name order.
fn changes_since(
    state: &mut TypeState,
    prev: &TypeResources,
    now: &TypeResources,
) -> (Vec<Resource>, Vec<String>) {
    use std::cmp::Ordering;
    let mut resources = Vec::new();
    let mut gone = Vec::new();
    for (old, new) in prev.parts().iter().zip(now.parts()) {
        if std::sync::Arc::ptr_eq(old, new) {
            continue;
        }
        let (mut o, mut n) = (old.values().peekable(), new.values().peekable());
        loop {
            let order = match (o.peek(), n.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(a), Some(b)) => a.name.cmp(&b.name),
            };
            match order {
                Ordering::Less => gone.extend(o.next().map(|a| a.name.clone())),
                Ordering::Greater | Ordering::Equal => {
                    let old_item = if order == Ordering::Equal {
                        o.next()
                    } else {
                        None
                    };
                    let Some(item) = n.next() else { break };
                    if old_item.is_none_or(|a| a.version != item.version)
                        && state.in_scope(&item.name)
                        && state.known.get(&item.name) != Some(&item.version)
                    {
                        state.known.insert(item.name.clone(), item.version.clone());
                        resources.push(to_resource(item));
                    }
                }
            }
        }
    }
    let removed: Vec<String> = gone
        .into_iter()
        .filter(|name| !now.contains(name) && state.known.remove(name).is_some())
        .collect();
    (resources, removed)
}

fn to_resource(item: &NamedResource) -> Resource {
    Resource {
        name: item.name.clone(),
        version: item.version.clone(),
        resource: Some(item.body.clone()),
        ..Resource::default()
    }
}

/// The most resources one response carries. A big push (a thousand clusters) goes out as
/// several responses, so no message, and no per-stream encoding buffer, grows with the size of
/// the mesh.
pub const MAX_RESOURCES_PER_RESPONSE: usize = 100;

/// State of one delta stream.
#[derive(Debug, Default)]
pub struct DeltaStream {
    node: Option<Node>,
    types: BTreeMap<String, TypeState>,
    nonce: u64,
}

impl DeltaStream {
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// Handles one request against the current snapshot.
    pub fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        snapshot: &ProxySnapshot,
    ) -> Result<(Option<DeltaDiscoveryResponse>, Option<Reply>), ProtocolError> {
        check_request(&mut self.node, request.node, &request.type_url)?;
        let type_url = request.type_url;
        let first = !self.types.contains_key(&type_url);
        let state = self.types.entry(type_url.clone()).or_default();

        let mut reply = None;
        if let Some(version) = state.pending.remove(&request.response_nonce) {
            reply = Some(
                state
                    .replies
                    .record(&type_url, version, request.error_detail),
            );
        }

        if first {
            state.wildcard =
                request.resource_names_subscribe.is_empty() && is_wildcard_type(&type_url);
            state.known = request.initial_resource_versions.into_iter().collect();
        }
        let resubscribed = first
            || !request.resource_names_subscribe.is_empty()
            || !request.resource_names_unsubscribe.is_empty();
        for name in request.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(&name);
            }
            state.known.remove(&name);
        }
        // A changed subscription needs a resource-by-resource comparison; an ACK does not.
        if resubscribed {
            state.diffed = None;
        }
        // Forget the proxy's copies of anything no longer subscribed.
        let TypeState {
            known,
            wildcard,
            names,
            ..
        } = state;
        known.retain(|name, _| *wildcard || names.contains(name));

        let response = self.diff(&type_url, snapshot, first);
        Ok((response, reply))
    }

    /// Responses for every type whose subscribed resources changed in `snapshot`.
    pub fn on_snapshot(&mut self, snapshot: &ProxySnapshot) -> Vec<DeltaDiscoveryResponse> {
        let types: Vec<String> = self.types.keys().cloned().collect();
        types
            .iter()
            .filter_map(|t| self.diff(t, snapshot, false))
            .collect()
    }

    pub fn status(&self) -> Vec<TypeStatus> {
        self.types
            .iter()
            .map(|(type_url, s)| s.replies.status(type_url))
            .collect()
    }

    /// What the proxy lacks for `type_url`; `always` answers even when nothing changed (the first
    /// request of a type, so the proxy can finish initialising).
    fn diff(
        &mut self,
        type_url: &str,
        snapshot: &ProxySnapshot,
        always: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let state = self.types.get_mut(type_url)?;
        let typed = snapshot.get(type_url);
        let version = typed.map(|t| t.version.clone()).unwrap_or_default();
        if !always && state.diffed.as_ref() == Some(&version) {
            return None;
        }
        // `diffed` is set only while the subscription is unchanged since the last comparison,
        // so `known` then holds exactly the in-scope resources of `last`.
        let incremental = !always && state.diffed.is_some();
        state.diffed = Some(version.clone());
        let previous = std::mem::replace(&mut state.last, typed.cloned());
        let (resources, removed) = match (incremental, previous.as_ref(), typed) {
            (true, Some(prev), Some(now)) if prev.parts().len() == now.parts().len() => {
                changes_since(state, prev, now)
            }
            _ => all_changes(state, typed),
        };
        if resources.is_empty() && removed.is_empty() && !always {
            return None;
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        state.pending.insert(nonce.clone(), version.clone());
        state.replies.sent_version = Some(version.clone());
        Some(DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            removed_resources: removed,
            type_url: type_url.to_owned(),
            nonce,
            ..DeltaDiscoveryResponse::default()
        })
    }

    /// Splits `response` into responses of at most [`MAX_RESOURCES_PER_RESPONSE`] resources,
    /// each with its own nonce (all expecting an ACK of the same version); removals go with
    /// the last one.
    pub fn chunk(&mut self, response: DeltaDiscoveryResponse) -> Vec<DeltaDiscoveryResponse> {
        if response.resources.len() <= MAX_RESOURCES_PER_RESPONSE {
            return vec![response];
        }
        let DeltaDiscoveryResponse {
            system_version_info,
            resources,
            removed_resources,
            type_url,
            nonce,
            ..
        } = response;
        let mut chunks: Vec<Vec<Resource>> = Vec::new();
        let mut rest = resources.into_iter().peekable();
        while rest.peek().is_some() {
            chunks.push(rest.by_ref().take(MAX_RESOURCES_PER_RESPONSE).collect());
        }
        let count = chunks.len();
        let mut removed = Some(removed_resources);
        let mut out = Vec::with_capacity(count);
        for (i, resources) in chunks.into_iter().enumerate() {
            let nonce = if i == 0 {
                nonce.clone()
            } else {
                self.nonce += 1;
                let extra = self.nonce.to_string();
                if let Some(state) = self.types.get_mut(&type_url) {
                    state
                        .pending
                        .insert(extra.clone(), system_version_info.clone());
                }
                extra
            };
            out.push(DeltaDiscoveryResponse {
                system_version_info: system_version_info.clone(),
                resources,
                removed_resources: if i + 1 == count {
                    removed.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
                type_url: type_url.clone(),
                nonce,
                ..DeltaDiscoveryResponse::default()
            });
        }
        out
    }
}
