//! The client end of an HTTP/2 CONNECT tunnel (Envoy's `tcp_proxy.tunneling_config`): over a
//! connection to the cluster (its TLS included), an HTTP/2 session carries one CONNECT stream
//! to the configured authority; once the peer answers 2xx, the stream is the upstream of the
//! TCP proxy. The federation egress gateway uses it to reach a peer's ingress gateway.

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::transport::BoxedIo;

/// Why a CONNECT tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("HTTP/2 to the tunnel's upstream")]
    Http(#[from] hyper::Error),
    #[error("CONNECT {authority}: {status}")]
    Refused {
        status: http::StatusCode,
        authority: String,
    },
    #[error("CONNECT request")]
    Request(#[from] http::Error),
}

/// Opens a CONNECT stream to `authority` over `upstream`.
pub async fn open(
    upstream: BoxedIo,
    authority: &str,
) -> Result<TokioIo<hyper::upgrade::Upgraded>, TunnelError> {
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(upstream)).await?;
    // The session lives as long as its one stream: dropping the sender ends it. Detached: the
    // stream is the upstream of a TCP proxy connection, which holds a drain `Watch` until it
    // ends.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "tunnel session ended");
        }
    });
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        return Err(TunnelError::Refused {
            status: response.status(),
            authority: authority.to_owned(),
        });
    }
    let upgraded = hyper::upgrade::on(response).await?;
    Ok(TokioIo::new(upgraded))
}
