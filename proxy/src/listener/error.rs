//! Why a downstream connection ended with an error: refused before its terminal filter (a
//! hostile or broken client, a chain that does not match, RBAC), or failed in it (TCP proxy,
//! HTTP). [`ConnectionError::reason`] is the `reason` label of
//! `isthmus_proxy_downstream_connections_refused_total` and the `reason` field of the
//! "connection closed" log line; the error itself keeps its causes as a source chain
//! ([`ErrorChain`] prints them).

use std::fmt;
use std::io;

use crate::http::error::ConnectionError as HttpError;
use crate::tcp::TcpError;
use crate::transport::tls::TlsError;

/// Why one downstream connection ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The listener left the configuration between the accept and the first look at it.
    #[error("the listener was removed")]
    ListenerRemoved,
    #[error("the connection's local address")]
    LocalAddress(#[source] io::Error),
    /// A capture listener could not read where the connection was going.
    #[error("SO_ORIGINAL_DST")]
    OriginalDst(#[source] io::Error),
    /// A capture listener was called directly, not through an iptables redirect.
    #[error("not a redirected connection: its destination is the capture listener itself")]
    NotRedirected,
    #[error(transparent)]
    Inspector(#[from] InspectorError),
    #[error("no filter chain matches")]
    NoFilterChain,
    /// The chain terminates TLS and the runtime has no server configuration for it.
    #[error("no TLS configuration")]
    NoTlsConfiguration,
    /// The chain's TLS server configuration cannot be built (a secret not received yet).
    #[error("TLS configuration: {0}")]
    TlsConfiguration(TlsError),
    #[error("TLS handshake timed out")]
    TlsHandshakeTimeout,
    #[error("TLS handshake")]
    TlsHandshake(#[source] io::Error),
    /// Network RBAC denied the connection.
    #[error("RBAC: access denied")]
    Rbac,
    /// The TCP proxy (the terminal filter) failed.
    #[error(transparent)]
    Tcp(#[from] TcpError),
    /// The HTTP connection manager (the terminal filter) ended the connection with an error
    /// (its reason tells floods apart from other protocol errors).
    #[error(transparent)]
    Http(#[from] HttpError),
}

impl ConnectionError {
    /// The metric label and log field: `original_dst`, `tls_inspector`, `no_filter_chain`,
    /// `tls_handshake`, `tls_handshake_timeout`, `rbac`, `http_protocol`, `http2_flood` for
    /// refusals ([`ConnectionError::is_refusal`]); `listener_removed`, `local_address`,
    /// `tls_configuration`, `tcp_proxy` otherwise.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ListenerRemoved => "listener_removed",
            Self::LocalAddress(_) => "local_address",
            Self::OriginalDst(_) | Self::NotRedirected => "original_dst",
            Self::Inspector(_) => "tls_inspector",
            Self::NoFilterChain => "no_filter_chain",
            Self::NoTlsConfiguration | Self::TlsConfiguration(_) => "tls_configuration",
            Self::TlsHandshakeTimeout => "tls_handshake_timeout",
            Self::TlsHandshake(_) => "tls_handshake",
            Self::Rbac => "rbac",
            Self::Tcp(_) => "tcp_proxy",
            Self::Http(e) => e.reason(),
        }
    }

    /// Whether the connection counts as refused (`downstream_connections_refused`): the
    /// client's doing or the configuration's verdict, not a failure of this proxy or of an
    /// upstream.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            Self::ListenerRemoved
                | Self::LocalAddress(_)
                | Self::NoTlsConfiguration
                | Self::TlsConfiguration(_)
                | Self::Tcp(_)
        )
    }
}

/// Why the TLS inspector could not tell what the client speaks (`reason`: `tls_inspector`).
#[derive(Debug, thiserror::Error)]
pub enum InspectorError {
    #[error("TLS inspector: {0}")]
    Malformed(&'static str),
    #[error("TLS inspector: ClientHello too large")]
    TooLarge,
    #[error("TLS inspector: the ClientHello did not arrive in time")]
    Timeout,
    #[error("closed before sending anything")]
    Closed,
    #[error("TLS inspector: reading the ClientHello")]
    Read(#[source] io::Error),
}

/// An error and its causes, `outer: inner: innermost`, as one line. A cause whose text the
/// message before it already ends with (an error that prints its source itself) is not
/// repeated.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !cause_text.is_empty() && !text.ends_with(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_metric_labels() {
        let refused = [
            (
                ConnectionError::OriginalDst(io::Error::other("x")),
                "original_dst",
            ),
            (ConnectionError::NotRedirected, "original_dst"),
            (InspectorError::Closed.into(), "tls_inspector"),
            (InspectorError::Timeout.into(), "tls_inspector"),
            (ConnectionError::NoFilterChain, "no_filter_chain"),
            (
                ConnectionError::TlsHandshakeTimeout,
                "tls_handshake_timeout",
            ),
            (
                ConnectionError::TlsHandshake(io::Error::other("bad certificate")),
                "tls_handshake",
            ),
            (ConnectionError::Rbac, "rbac"),
            (HttpError::FirstBytesTimeout.into(), "http_protocol"),
        ];
        for (error, reason) in refused {
            assert_eq!(error.reason(), reason, "{error}");
            assert!(error.is_refusal(), "{error}");
        }
        let failed = [
            ConnectionError::ListenerRemoved,
            ConnectionError::NoTlsConfiguration,
            TcpError::NoCluster("c".into()).into(),
        ];
        for error in failed {
            assert!(!error.is_refusal(), "{error}");
        }
    }

    #[test]
    fn the_chain_names_every_cause_once() {
        let error = ConnectionError::TlsHandshake(io::Error::other("unknown CA"));
        assert_eq!(ErrorChain(&error).to_string(), "TLS handshake: unknown CA");
        // A cause the message already ends with is not repeated.
        let error = ConnectionError::Tcp(TcpError::Connect(crate::upstream::ConnectError::Io {
            host: "10.0.0.1".into(),
            port: 80,
            source: io::Error::other("connection refused"),
        }));
        assert_eq!(
            ErrorChain(&error).to_string(),
            "10.0.0.1:80: connection refused"
        );
    }
}
