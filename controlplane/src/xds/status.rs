//! What a stream reports about itself: per type, what was sent, what the proxy accepted, and the
//! reason of its last rejection.

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
