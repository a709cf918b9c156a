//! One state-of-the-world ADS stream, as a pure state machine: requests and snapshot changes go
//! in, responses and ACK/NACK outcomes come out. The gRPC glue lives in `server.rs`.
//!
//! Protocol rules (Envoy's xDS protocol):
//! - the node comes in the first request; later requests may omit it;
//! - a request whose `response_nonce` is not the last one sent for its type is stale and ignored;
//! - `error_detail` set means NACK: the proxy keeps its previous config, and the same version is
//!   not sent again;
//! - an empty `resource_names` on LDS/CDS (or `*`) subscribes to everything;
//! - a first request carrying the version already current (a reconnect after an `isthmusd`
//!   restart with unchanged config) gets no response until something changes.

use std::collections::{BTreeMap, BTreeSet};

use isthmus_proto::envoy::envoy::config::core::v3::Node;
use isthmus_proto::envoy::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::resources::{ProxySnapshot, is_wildcard_type};
pub use super::status::ProtocolError;
use super::status::{Reply, ReplyState, TypeStatus, check_request};

#[derive(Debug, Default)]
struct TypeState {
    /// `None`: wildcard.
    names: Option<BTreeSet<String>>,
    sent_nonce: Option<String>,
    /// The response last sent has not been answered yet.
    awaiting: bool,
    replies: ReplyState,
}

/// State of one SotW stream.
#[derive(Debug, Default)]
pub struct SotwStream {
    node: Option<Node>,
    types: BTreeMap<String, TypeState>,
    nonce: u64,
}

impl SotwStream {
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// Handles one request against the current snapshot.
    pub fn on_request(
        &mut self,
        request: DiscoveryRequest,
        snapshot: &ProxySnapshot,
    ) -> Result<(Option<DiscoveryResponse>, Option<Reply>), ProtocolError> {
        check_request(&mut self.node, request.node, &request.type_url)?;
        let type_url = request.type_url;
        let state = self.types.entry(type_url.clone()).or_default();

        let mut reply = None;
        if !request.response_nonce.is_empty() {
            if state.sent_nonce.as_deref() != Some(request.response_nonce.as_str()) {
                return Ok((None, None)); // stale
            }
            let version = state.replies.sent_version.clone().unwrap_or_default();
            state.awaiting = false;
            reply = Some(
                state
                    .replies
                    .record(&type_url, version, request.error_detail),
            );
        }

        let wildcard = request.resource_names.iter().any(|n| n == "*")
            || (request.resource_names.is_empty() && is_wildcard_type(&type_url));
        let names =
            (!wildcard).then(|| request.resource_names.into_iter().collect::<BTreeSet<_>>());
        let first = state.sent_nonce.is_none() && state.replies.sent_version.is_none();
        let names_changed = state.names != names;
        state.names = names;

        if snapshot.is_pending() {
            // Answered when the node's first snapshot is computed (`on_snapshot`).
            return Ok((None, reply));
        }
        let current = snapshot
            .get(&type_url)
            .map(|t| t.version.clone())
            .unwrap_or_default();
        if first && !request.version_info.is_empty() && request.version_info == current {
            // The proxy already has exactly this: remember it, send nothing.
            state.replies.sent_version = Some(current.clone());
            state.replies.acked_version = Some(current);
            return Ok((None, reply));
        }
        let response = (first || names_changed).then(|| self.respond(&type_url, snapshot));
        Ok((response, reply))
    }

    /// Responses for every subscribed type whose version changed in `snapshot`.
    pub fn on_snapshot(&mut self, snapshot: &ProxySnapshot) -> Vec<DiscoveryResponse> {
        if snapshot.is_pending() {
            return Vec::new();
        }
        let due: Vec<String> = self
            .types
            .iter()
            .filter(|(type_url, state)| {
                let current = snapshot
                    .get(type_url)
                    .map(|t| t.version.as_str())
                    .unwrap_or_default();
                state.replies.sent_version.as_deref() != Some(current)
            })
            .map(|(type_url, _)| type_url.clone())
            .collect();
        due.iter().map(|t| self.respond(t, snapshot)).collect()
    }

    /// Whether the proxy has answered every response and accepted the last one of each type:
    /// it holds what it was last sent.
    pub fn in_sync(&self) -> bool {
        self.types
            .values()
            .all(|s| !s.awaiting && s.replies.nack.is_none())
    }

    /// Per-type status of this stream.
    pub fn status(&self) -> Vec<TypeStatus> {
        self.types
            .iter()
            .map(|(type_url, s)| s.replies.status(type_url))
            .collect()
    }

    fn respond(&mut self, type_url: &str, snapshot: &ProxySnapshot) -> DiscoveryResponse {
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let state = self.types.entry(type_url.to_owned()).or_default();
        let (version, resources) = match snapshot.get(type_url) {
            Some(typed) => (
                typed.version.clone(),
                typed
                    .items()
                    .filter(|r| {
                        state
                            .names
                            .as_ref()
                            .is_none_or(|names| names.contains(&*r.name))
                    })
                    .map(|r| r.body())
                    .collect(),
            ),
            None => (String::new(), Vec::new()),
        };
        state.replies.sent_version = Some(version.clone());
        state.sent_nonce = Some(nonce.clone());
        state.awaiting = true;
        DiscoveryResponse {
            version_info: version,
            resources,
            type_url: type_url.to_owned(),
            nonce,
            ..DiscoveryResponse::default()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use isthmus_proto::envoy::google::protobuf::Any;
    use isthmus_proto::envoy::google::rpc::Status;

    use super::*;
    use crate::xds::resources::{CLUSTER, TypeResources};

    fn snapshot(name: &str) -> ProxySnapshot {
        ProxySnapshot::default().with(
            CLUSTER,
            TypeResources::new([(
                name.to_owned(),
                Any {
                    type_url: CLUSTER.into(),
                    value: name.as_bytes().to_vec(),
                },
            )]),
        )
    }

    fn answer(response: &DiscoveryResponse, error: Option<&str>) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: CLUSTER.into(),
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: error.map(|message| Status {
                message: message.into(),
                ..Status::default()
            }),
            ..DiscoveryRequest::default()
        }
    }

    #[test]
    fn in_sync_once_the_last_response_is_accepted() {
        let mut stream = SotwStream::default();
        let first = DiscoveryRequest {
            node: Some(Node::default()),
            type_url: CLUSTER.into(),
            ..DiscoveryRequest::default()
        };
        let (sent, _) = stream.on_request(first, &snapshot("a")).unwrap();
        let sent = sent.unwrap();
        assert!(!stream.in_sync(), "awaiting the answer");
        stream
            .on_request(answer(&sent, None), &snapshot("a"))
            .unwrap();
        assert!(stream.in_sync());

        let changed = stream.on_snapshot(&snapshot("b"));
        assert!(!stream.in_sync());
        let (_, reply) = stream
            .on_request(answer(&changed[0], Some("c: required")), &snapshot("b"))
            .unwrap();
        assert!(matches!(reply, Some(Reply::Nack { .. })));
        assert!(!stream.in_sync(), "rejected");
        let changed = stream.on_snapshot(&snapshot("c"));
        stream
            .on_request(answer(&changed[0], None), &snapshot("c"))
            .unwrap();
        assert!(stream.in_sync());
    }
}
