//! What a stream reports about itself: per type, what was sent, what the proxy accepted, and the
//! reason of its last rejection. Also the request checks and ACK/NACK bookkeeping both protocol
//! variants share.

use isthmus_proto::envoy::envoy::config::core::v3::Node;
use isthmus_proto::envoy::google::rpc::Status;

/// The outcome of a proxy's reply to a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ack {
        type_url: String,
        version: String,
    },
    Nack {
        type_url: String,
        version: String,
        reason: String,
    },
}

/// Per-type state of one stream, for `isthmusctl status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    pub type_url: String,
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    /// The proxy's message for its last NACK, cleared by the next ACK.
    pub nack: Option<String>,
}

/// A request that breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the first request of a stream must carry the node")]
    MissingNode,
    #[error("the request has no type_url")]
    MissingTypeUrl,
}

/// The checks every request passes: the node comes with the first request (and is remembered,
/// since later ones may omit it), and every request names its type.
pub fn check_request(
    stream_node: &mut Option<Node>,
    node: Option<Node>,
    type_url: &str,
) -> Result<(), ProtocolError> {
    if let Some(node) = node {
        *stream_node = Some(node);
    } else if stream_node.is_none() {
        return Err(ProtocolError::MissingNode);
    }
    if type_url.is_empty() {
        return Err(ProtocolError::MissingTypeUrl);
    }
    Ok(())
}

/// Per type: the version last sent, the version last accepted, the last rejection.
#[derive(Debug, Clone, Default)]
pub struct ReplyState {
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    pub nack: Option<String>,
}

impl ReplyState {
    /// Records the proxy's answer to the response that carried `version`.
    pub fn record(&mut self, type_url: &str, version: String, error: Option<Status>) -> Reply {
        match error {
            Some(error) => {
                self.nack = Some(error.message.clone());
                Reply::Nack {
                    type_url: type_url.to_owned(),
                    version,
                    reason: error.message,
                }
            }
            None => {
                self.acked_version = Some(version.clone());
                self.nack = None;
                Reply::Ack {
                    type_url: type_url.to_owned(),
                    version,
                }
            }
        }
    }

    pub fn status(&self, type_url: &str) -> TypeStatus {
        TypeStatus {
            type_url: type_url.to_owned(),
            sent_version: self.sent_version.clone(),
            acked_version: self.acked_version.clone(),
            nack: self.nack.clone(),
        }
    }
}
