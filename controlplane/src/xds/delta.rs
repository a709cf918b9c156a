//! One delta (incremental) ADS stream, as a pure state machine.
//!
//! Per type the stream knows what the proxy subscribed to (everything, or names) and which
//! version of each resource the proxy has — from what was sent, or from
//! `initial_resource_versions` on reconnect — and sends only the difference: changed or new
//! resources, and the names of removed ones. Unsubscribing forgets the proxy's copy, so a later
//! subscribe sends the resource again.
//!
//! Flow control: requests and snapshots only decide *which names* are due (the outbox);
//! [`DeltaStream::next_response`] builds a response from the newest snapshot when the proxy has
//! answered the previous one of that type. So at most one response per type is in flight,
//! each is bounded ([`MAX_RESOURCES_PER_RESPONSE`], [`MAX_BYTES_PER_RESPONSE`]), a resource that
//! changes twice before it is sent is sent once, and a thousand proxies syncing at once hold a
//! few hundred kilobytes each, not a copy of the mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use isthmus_proto::envoy::envoy::config::core::v3::Node;
use isthmus_proto::envoy::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::delta_response::DeltaResponse;
use super::known::Known;
use super::resources::{
    NamedResource, ProxySnapshot, TypeResources, is_wildcard_type, parse_version,
};
use super::status::{ProtocolError, Reply, ReplyState, TypeStatus, check_request};

/// The most resources one response carries.
pub const MAX_RESOURCES_PER_RESPONSE: usize = 100;
/// A response stops growing once its resources reach this many bytes (a single larger
/// resource still goes, alone). With one response per type in flight, this bounds what a
/// stream has queued in gRPC and HTTP/2 buffers.
pub const MAX_BYTES_PER_RESPONSE: usize = 64 * 1024;

/// A version no resource of ours has: what the proxy reported was not made by this server
/// (the chance that a content hash is exactly this is 2^-64).
const FOREIGN_VERSION: u64 = u64::MAX;

#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<Arc<str>>,
    /// What the proxy holds, as far as it was sent: the last snapshot it was sent in full and
    /// what differs since.
    known: Known,
    /// Names due: sent as they are in `last` when the response is built, or as removals if
    /// `last` no longer has them.
    outbox: BTreeSet<Arc<str>>,
    /// The first request of a type is answered even when there is nothing to send, so the
    /// proxy can finish initialising.
    answer_due: bool,
    /// The response awaiting the proxy's ACK or NACK.
    in_flight: Option<InFlight>,
    /// The type version last compared with `known`, while the subscription is unchanged:
    /// a snapshot whose version for this type is the same holds nothing new (versions are
    /// content hashes), so the per-resource comparison is skipped.
    diffed: Option<String>,
    /// The resources last compared (shared parts, not copies): the next comparison skips parts
    /// that are the same and walks changed ones side by side, instead of looking up every
    /// resource the proxy holds. Responses are built from it.
    last: Option<TypeResources>,
    replies: ReplyState,
}

#[derive(Debug)]
struct InFlight {
    nonce: String,
    version: String,
    /// Whether it emptied the outbox: its ACK means the proxy has `version`.
    complete: bool,
}

impl TypeState {
    fn in_scope(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    fn can_send(&self) -> bool {
        self.in_flight.is_none() && (self.answer_due || !self.outbox.is_empty())
    }

    /// Queues what the proxy lacks of `typed`, and what it holds that is gone, by looking up
    /// each resource.
    fn plan_all(&mut self, typed: Option<&TypeResources>) {
        if let Some(typed) = typed {
            for item in typed.items() {
                if self.in_scope(&item.name)
                    && self.known.get(&item.name, true) != Some(item.version)
                {
                    self.outbox.insert(item.name.clone());
                }
            }
        }
        let TypeState {
            known,
            outbox,
            wildcard,
            names,
            ..
        } = self;
        for name in known.names(|n| *wildcard || names.contains(n)) {
            if typed.is_none_or(|t| !t.contains(name)) {
                outbox.insert(name.clone());
            }
        }
    }

    /// The same as [`Self::plan_all`] when the proxy holds (or is due) `prev`: parts shared
    /// with `prev` are skipped, changed parts are walked side by side in name order.
    fn plan_since(&mut self, prev: &TypeResources, now: &TypeResources) {
        use std::cmp::Ordering;
        for (old, new) in prev.parts().iter().zip(now.parts()) {
            if Arc::ptr_eq(old, new) {
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
                    Ordering::Less => {
                        if let Some(gone) = o.next()
                            && !now.contains(&gone.name)
                            && self
                                .known
                                .get(&gone.name, self.in_scope(&gone.name))
                                .is_some()
                        {
                            self.outbox.insert(gone.name.clone());
                        }
                    }
                    Ordering::Greater | Ordering::Equal => {
                        let old_item = if order == Ordering::Equal {
                            o.next()
                        } else {
                            None
                        };
                        let Some(item) = n.next() else { break };
                        if old_item.is_none_or(|a| a.version != item.version)
                            && self.in_scope(&item.name)
                            && self.known.get(&item.name, true) != Some(item.version)
                        {
                            self.outbox.insert(item.name.clone());
                        }
                    }
                }
            }
        }
    }

    /// Takes the next bounded batch off the outbox: resources as they are now, removals of
    /// what the proxy holds and is gone. Entries that turned out to need nothing are dropped.
    fn take_batch(&mut self) -> (Vec<NamedResource>, Vec<String>) {
        let TypeState {
            outbox,
            known,
            last,
            wildcard,
            names,
            ..
        } = self;
        let (mut resources, mut removed, mut bytes) = (Vec::new(), Vec::new(), 0);
        while resources.len() + removed.len() < MAX_RESOURCES_PER_RESPONSE
            && bytes < MAX_BYTES_PER_RESPONSE
        {
            let Some(name) = outbox.pop_first() else {
                break;
            };
            let in_scope = *wildcard || names.contains(&name);
            match last.as_ref().and_then(|t| t.get(&name)) {
                Some(item) => {
                    if known.get(&name, in_scope) != Some(item.version) {
                        known.insert(item.name.clone(), item.version);
                        bytes += item.encoded_body().len() + name.len();
                        resources.push(item.clone());
                    }
                }
                None => {
                    if known.get(&name, in_scope).is_some() {
                        known.forget(&name);
                        bytes += name.len();
                        removed.push(name.to_string());
                    }
                }
            }
        }
        self.settle_if_done();
        (resources, removed)
    }

    /// With nothing due after a comparison with `last` under this subscription, the proxy
    /// holds exactly the subscribed part of `last` (see [`DeltaStream::plan`]): the shared
    /// snapshot then says all the stream needs to remember.
    fn settle_if_done(&mut self) {
        if self.outbox.is_empty() && self.diffed.is_some() {
            self.known.settle(self.last.as_ref());
        }
    }
}

/// State of one delta stream.
#[derive(Debug, Default)]
pub struct DeltaStream {
    node: Option<Node>,
    types: BTreeMap<String, TypeState>,
    nonce: u64,
    /// Whether the node's snapshot has been computed: nothing is answered before.
    computed: bool,
}

impl DeltaStream {
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// Handles one request against the current snapshot: records the answer to the response
    /// in flight, applies (un)subscriptions, and queues what the proxy now lacks. Responses
    /// come from [`Self::next_response`].
    pub fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        snapshot: &ProxySnapshot,
    ) -> Result<Option<Reply>, ProtocolError> {
        check_request(&mut self.node, request.node, &request.type_url)?;
        let type_url = request.type_url;
        let first = !self.types.contains_key(&type_url);
        let state = self.types.entry(type_url.clone()).or_default();

        let mut reply = None;
        if !request.response_nonce.is_empty()
            && state
                .in_flight
                .as_ref()
                .is_some_and(|f| f.nonce == request.response_nonce)
            && let Some(answered) = state.in_flight.take()
        {
            // The ACK of a part of a push says nothing about the pushed version yet.
            if request.error_detail.is_some() || answered.complete {
                reply = Some(state.replies.record(
                    &type_url,
                    answered.version,
                    request.error_detail,
                ));
            }
        }

        let typed = snapshot.get(&type_url);
        if first {
            state.wildcard =
                request.resource_names_subscribe.is_empty() && is_wildcard_type(&type_url);
            state.known = Known::reported(request.initial_resource_versions.into_iter().map(
                |(name, version)| {
                    let version = parse_version(&version).unwrap_or(FOREIGN_VERSION);
                    (shared_name(typed, name), version)
                },
            ));
            state.answer_due = true;
        }
        let narrowed = first || !request.resource_names_unsubscribe.is_empty();
        let resubscribed = narrowed || !request.resource_names_subscribe.is_empty();
        if !state.wildcard && request.resource_names_subscribe.iter().any(|n| n == "*") {
            // Everything becomes subscribed: what the base says is kept for the names that
            // were, and no more.
            let TypeState { known, names, .. } = &mut *state;
            known.detach(|n| names.contains(n));
        }
        for name in request.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                let name = shared_name(typed, name);
                if !state.in_scope(&name) {
                    state.known.subscribed(&name);
                }
                state.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name.as_str());
            }
            state.known.forget(name.as_str());
        }
        if resubscribed {
            // A changed subscription needs a resource-by-resource comparison; an ACK does not.
            state.diffed = None;
            // Forget the proxy's copies of, and stop sending, anything no longer subscribed. A
            // subscription that only grew leaves the proxy's copies all in it.
            let TypeState {
                known,
                outbox,
                wildcard,
                names,
                ..
            } = state;
            let in_scope = |name: &str| *wildcard || names.contains(name);
            if narrowed {
                known.retain(in_scope);
            }
            outbox.retain(|name| in_scope(name));
        }

        if snapshot.is_pending() {
            return Ok(reply);
        }
        if !self.computed {
            // The first computed snapshot: every type asked for so far is due.
            self.on_snapshot(snapshot);
        } else {
            self.plan(&type_url, snapshot);
        }
        Ok(reply)
    }

    /// Queues, for every type, what changed in `snapshot`.
    pub fn on_snapshot(&mut self, snapshot: &ProxySnapshot) {
        if snapshot.is_pending() {
            return;
        }
        self.computed = true;
        let types: Vec<String> = self.types.keys().cloned().collect();
        for type_url in &types {
            self.plan(type_url, snapshot);
        }
    }

    /// The types with something due: a first answer or queued names (sendable or waiting for
    /// the answer to the response in flight); none before the node's snapshot is computed.
    pub fn due_types(&self) -> impl Iterator<Item = &str> {
        self.types
            .iter()
            .filter(|(_, s)| self.computed && (s.answer_due || !s.outbox.is_empty()))
            .map(|(type_url, _)| type_url.as_str())
    }

    /// Whether the proxy holds everything due to it: the node's snapshot is computed, nothing
    /// is queued or awaiting an answer, and no type's last answer was a NACK.
    pub fn in_sync(&self) -> bool {
        self.computed
            && self.types.values().all(|s| {
                s.in_flight.is_none()
                    && s.outbox.is_empty()
                    && !s.answer_due
                    && s.replies.nack.is_none()
            })
    }

    /// Whether [`Self::next_response`] may have something to send.
    pub fn has_pending(&self) -> bool {
        self.computed && self.types.values().any(TypeState::can_send)
    }

    /// The next response to send: for the first type (in type URL order, so clusters before
    /// endpoints, secrets before listeners, listeners before routes) that has something due
    /// and no response awaiting an answer.
    pub fn next_response(&mut self) -> Option<DeltaResponse> {
        if !self.computed {
            return None;
        }
        for (type_url, state) in &mut self.types {
            if !state.can_send() {
                continue;
            }
            let (resources, removed) = state.take_batch();
            if resources.is_empty() && removed.is_empty() && !state.answer_due {
                continue;
            }
            state.answer_due = false;
            self.nonce += 1;
            let nonce = self.nonce.to_string();
            let version = state
                .last
                .as_ref()
                .map(|t| t.version.clone())
                .unwrap_or_default();
            state.in_flight = Some(InFlight {
                nonce: nonce.clone(),
                version: version.clone(),
                complete: state.outbox.is_empty(),
            });
            state.replies.sent_version = Some(version.clone());
            return Some(DeltaResponse {
                system_version_info: version,
                resources,
                removed_resources: removed,
                type_url: type_url.clone(),
                nonce,
            });
        }
        None
    }

    pub fn status(&self) -> Vec<TypeStatus> {
        self.types
            .iter()
            .map(|(type_url, s)| s.replies.status(type_url))
            .collect()
    }

    /// Queues what the proxy lacks of `type_url` in `snapshot`.
    fn plan(&mut self, type_url: &str, snapshot: &ProxySnapshot) {
        let Some(state) = self.types.get_mut(type_url) else {
            return;
        };
        let typed = snapshot.get(type_url);
        let version = typed.map(|t| t.version.clone()).unwrap_or_default();
        if state.diffed.as_ref() == Some(&version) {
            return;
        }
        // `diffed` is set only while the subscription is unchanged since the last comparison,
        // so what the proxy holds, updated by the outbox, is then exactly the in-scope part of
        // `last`.
        let incremental = state.diffed.is_some();
        state.diffed = Some(version);
        let previous = std::mem::replace(&mut state.last, typed.cloned());
        match (incremental, previous.as_ref(), typed) {
            (true, Some(prev), Some(now)) if prev.parts().len() == now.parts().len() => {
                state.plan_since(prev, now)
            }
            _ => state.plan_all(typed),
        }
        state.settle_if_done();
    }

    /// Names the streams' types keep apart from their shared snapshots: none once every type
    /// is settled.
    #[cfg(test)]
    pub fn kept_changes(&self) -> usize {
        self.types.values().map(|t| t.known.changes_len()).sum()
    }
}

/// `name` as the snapshot's shared copy when it has that resource, so a thousand streams
/// subscribed to the same names hold one string each.
fn shared_name(typed: Option<&TypeResources>, name: String) -> Arc<str> {
    match typed.and_then(|t| t.get(&name)) {
        Some(item) => item.name.clone(),
        None => name.into(),
    }
}
