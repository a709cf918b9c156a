//! Typed errors of the HTTP data path: why a downstream connection's HTTP session failed
//! ([`ConnectionError`]), and why a request got a local answer instead of an upstream's
//! ([`RequestError`]). Each has a `reason()`: the metric label and log field it is known by.

use http::header::HeaderValue;

use super::pool::SendError;
use super::{Body, BoxError, local_reply};
use crate::upstream::ConnectError;

/// Why a downstream connection's HTTP session ended in error. The causes are its source
/// chain (hyper says "http2 error"; h2's reason is below it).
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The client sent nothing within the handshake timeout.
    #[error("no request within the timeout")]
    FirstBytesTimeout,
    #[error("reading the first bytes")]
    Read(#[from] std::io::Error),
    /// An HTTP/2 flood cut off with `GOAWAY ENHANCE_YOUR_CALM` (rapid reset, too many streams
    /// reset for protocol errors), told by the `h2` error's reason.
    #[error("HTTP/2 flood")]
    Flood(#[source] BoxError),
    /// Any other HTTP/1.1 or HTTP/2 protocol or I/O error of the session.
    #[error("HTTP")]
    Protocol(#[source] BoxError),
}

impl ConnectionError {
    /// The error of a connection served by hyper: a flood if an `h2` error in its source
    /// chain carries `ENHANCE_YOUR_CALM`.
    pub fn from_session(error: BoxError) -> Self {
        if h2_reason(error.as_ref()) == Some(h2::Reason::ENHANCE_YOUR_CALM) {
            Self::Flood(error)
        } else {
            Self::Protocol(error)
        }
    }

    /// The refusal reason (`downstream_connections_refused{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Flood(_) => "http2_flood",
            Self::FirstBytesTimeout | Self::Read(_) | Self::Protocol(_) => "http_protocol",
        }
    }
}

/// The reason of the first `h2` error in `error`'s source chain (itself included).
pub fn h2_reason(error: &(dyn std::error::Error + 'static)) -> Option<h2::Reason> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason();
        }
        next = e.source();
    }
    None
}

/// Why a routed request was answered locally (Envoy's status and wording).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The route's cluster is not in the configuration.
    #[error("cluster not found")]
    NoCluster,
    /// The cluster has no host to send to.
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    /// An upgrade the connection manager does not allow.
    #[error("upgrade to {0:?} not allowed")]
    UpgradeRefused(String),
    /// The request cannot be written upstream (its authority or rewritten path).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A circuit breaker is open: `max_requests`, `max_connections` or
    /// `max_pending_requests`.
    #[error("circuit breaker open ({0})")]
    Overflow(&'static str),
    /// No response within the route's (or the try's) timeout.
    #[error("upstream request timeout")]
    Timeout,
    /// The upstream failed before its response head: connect failure or reset.
    #[error("{error}")]
    Upstream {
        error: SendError,
        /// An earlier attempt was retried (Envoy says so).
        retried: bool,
    },
}

impl RequestError {
    /// The error of a failed attempt: a breaker's overflow, or the upstream's failure.
    pub fn from_send(error: SendError, retried: bool) -> Self {
        match error {
            SendError::Connect(ConnectError::Overflow(_)) => Self::Overflow("max_connections"),
            SendError::Overflow => Self::Overflow("max_pending_requests"),
            error => Self::Upstream { error, retried },
        }
    }

    /// The log field, and for an overflow the breaker (`upstream_overflows{breaker}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoCluster => "no_cluster",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::UpgradeRefused(_) => "upgrade_refused",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Overflow(breaker) => breaker,
            Self::Timeout => "upstream_timeout",
            Self::Upstream { error, .. } => match error {
                SendError::Connect(ConnectError::Timeout { .. }) => "connection_timeout",
                SendError::Connect(_) => "remote_connection_failure",
                _ => "connection_termination",
            },
        }
    }

    /// Whether the upstream failed at connecting (`retry_on: connect-failure`).
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            Self::Upstream {
                error: SendError::Connect(_),
                ..
            }
        )
    }

    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::UpgradeRefused(_) => http::StatusCode::FORBIDDEN,
            Self::InvalidRequest(_) => http::StatusCode::BAD_REQUEST,
            Self::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
            Self::NoCluster
            | Self::NoHealthyUpstream
            | Self::Overflow(_)
            | Self::Upstream { .. } => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The local answer, as Envoy words it.
    /// The local answer, in Envoy's words, carrying its response flag for telemetry.
    pub fn reply(&self) -> http::Response<Body> {
        let mut response = self.answer();
        response
            .extensions_mut()
            .insert(crate::telemetry::request::ResponseFlags(
                self.response_flag(),
            ));
        response
    }

    /// Envoy's response flag (Istio's `response_flags` label).
    pub fn response_flag(&self) -> &'static str {
        match self {
            Self::NoCluster => "NC",
            Self::NoHealthyUpstream => "UH",
            Self::UpgradeRefused(_) => "-",
            Self::InvalidRequest(_) => "DPE",
            Self::Overflow(_) => "UO",
            Self::Timeout => "UT",
            Self::Upstream { retried: true, .. } => "URX",
            Self::Upstream {
                error: SendError::Connect(_),
                ..
            } => "UF",
            Self::Upstream { .. } => "UC",
        }
    }

    fn answer(&self) -> http::Response<Body> {
        let status = self.status();
        match self {
            Self::NoCluster | Self::NoHealthyUpstream => local_reply(status, "no healthy upstream"),
            Self::UpgradeRefused(_) => local_reply(status, ""),
            Self::InvalidRequest(_) => local_reply(status, "invalid request"),
            Self::Timeout => local_reply(status, "upstream request timeout"),
            Self::Overflow(_) => {
                let mut response = local_reply(
                    status,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                );
                response
                    .headers_mut()
                    .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
                response
            }
            Self::Upstream { error, retried } => {
                let reason = match error {
                    SendError::Connect(ConnectError::Timeout { .. }) => "connection timeout",
                    SendError::Connect(_) => "remote connection failure",
                    _ => "connection termination",
                };
                let retried = if *retried {
                    "retried and the latest "
                } else {
                    ""
                };
                // As Envoy: a failed TLS handshake says why (a certificate not valid for the
                // name, an unknown issuer), so that an origination's mistake can be found.
                let transport = match error {
                    SendError::Connect(ConnectError::Tls { reason, .. }) => {
                        format!(", transport failure reason: {reason}")
                    }
                    _ => String::new(),
                };
                local_reply(
                    status,
                    &format!(
                        "upstream connect error or disconnect/reset before headers. {retried}reset reason: {reason}{transport}"
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose cause is `source`, as hyper wraps h2's.
    #[derive(Debug)]
    struct Wrapped(Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("http2 error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(self.0.as_ref())
        }
    }

    fn session(reason: h2::Reason) -> BoxError {
        Box::new(Wrapped(Box::new(Wrapped(Box::new(h2::Error::from(
            reason,
        ))))))
    }

    #[test]
    fn floods_are_told_by_the_h2_reason_in_the_source_chain() {
        use std::error::Error as _;
        let flood = ConnectionError::from_session(session(h2::Reason::ENHANCE_YOUR_CALM));
        assert_eq!(flood.reason(), "http2_flood");
        // The causes stay in the source chain (for the log).
        let cause = flood.source().map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("http2 error"));
        assert_eq!(
            h2_reason(&flood),
            Some(h2::Reason::ENHANCE_YOUR_CALM),
            "below the error itself"
        );
        for other in [h2::Reason::PROTOCOL_ERROR, h2::Reason::CANCEL] {
            let e = ConnectionError::from_session(session(other));
            assert_eq!(e.reason(), "http_protocol");
            assert!(matches!(e, ConnectionError::Protocol(_)));
        }
        // A message that merely reads like h2's is not a flood.
        let text: BoxError = "stream error detected: excessive load generating behavior".into();
        assert_eq!(
            ConnectionError::from_session(text).reason(),
            "http_protocol"
        );
        assert_eq!(ConnectionError::FirstBytesTimeout.reason(), "http_protocol");
        assert_eq!(
            ConnectionError::FirstBytesTimeout.to_string(),
            "no request within the timeout"
        );
    }

    #[test]
    fn request_errors_answer_as_envoy_does() {
        // (error, status, body, reason)
        let connect_timeout = SendError::Connect(ConnectError::Timeout {
            host: "10.0.0.1".into(),
            port: 80,
            timeout: std::time::Duration::from_secs(1),
        });
        let refused = SendError::Connect(ConnectError::NoHost("c".into()));
        let table: Vec<(RequestError, u16, &str, &str)> = vec![
            (
                RequestError::NoCluster,
                503,
                "no healthy upstream",
                "no_cluster",
            ),
            (
                RequestError::NoHealthyUpstream,
                503,
                "no healthy upstream",
                "no_healthy_upstream",
            ),
            (
                RequestError::UpgradeRefused("h2c".into()),
                403,
                "",
                "upgrade_refused",
            ),
            (
                RequestError::InvalidRequest("x".into()),
                400,
                "invalid request",
                "invalid_request",
            ),
            (
                RequestError::Timeout,
                504,
                "upstream request timeout",
                "upstream_timeout",
            ),
            (
                RequestError::from_send(connect_timeout, false),
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: connection timeout",
                "connection_timeout",
            ),
            (
                RequestError::from_send(refused, true),
                503,
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure",
                "remote_connection_failure",
            ),
            (
                RequestError::from_send(SendError::Overflow, false),
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                "max_pending_requests",
            ),
            (
                RequestError::from_send(
                    SendError::Connect(ConnectError::Overflow("c".into())),
                    false,
                ),
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                "max_connections",
            ),
        ];
        for (error, status, body, reason) in table {
            let response = error.reply();
            assert_eq!(response.status().as_u16(), status, "{error}");
            assert_eq!(error.reason(), reason, "{error}");
            let overloaded = response.headers().get("x-envoy-overloaded").is_some();
            assert_eq!(
                overloaded,
                matches!(error, RequestError::Overflow(_)),
                "{error}"
            );
            let bytes = futures_body(response);
            assert_eq!(bytes, body.as_bytes(), "{error}");
        }
    }

    fn futures_body(response: http::Response<Body>) -> Vec<u8> {
        use http_body_util::BodyExt as _;
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(response.into_body().collect())
            .unwrap();
        collected.to_bytes().to_vec()
    }
}
