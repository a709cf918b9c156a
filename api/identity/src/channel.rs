//! gRPC channels to `isthmusd` over mesh TLS, shared by the CA client and the proxy's xDS
//! client: a lazy tonic channel whose connector dials TCP and runs the given rustls client
//! configuration (which verifies the server's SPIFFE identity).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// A channel to `address` (`host:port`) over TLS with `tls`; it connects on first use and
/// reconnects after failures. `timeout` bounds each unary call (`None` for streams).
pub fn tls_channel(
    address: &str,
    tls: rustls::ClientConfig,
    timeout: Option<Duration>,
) -> Result<Channel, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let connect = tower::service_fn(move |uri: Uri| {
        let connector = connector.clone();
        async move {
            let (host, tcp) = dial(&uri, 15012).await?;
            let name = ServerName::try_from(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let mut endpoint = endpoint(address)?;
    if let Some(timeout) = timeout {
        endpoint = endpoint.timeout(timeout);
    }
    Ok(endpoint.connect_with_connector_lazy(connect))
}

/// A channel through a federation egress gateway at `address`: an outer TLS session with the
/// gateway (`outer`, which authenticates the caller), carrying the session with the server
/// (`inner`); both name `sni`, by which the gateway routes.
pub fn tls_in_tls_channel(
    address: &str,
    sni: &str,
    outer: rustls::ClientConfig,
    inner: rustls::ClientConfig,
) -> Result<Channel, String> {
    let outer = tokio_rustls::TlsConnector::from(Arc::new(outer));
    let inner = tokio_rustls::TlsConnector::from(Arc::new(inner));
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| format!("SNI {sni:?}: {e}"))?;
    let connect = tower::service_fn(move |uri: Uri| {
        let (outer, inner, name) = (outer.clone(), inner.clone(), name.clone());
        async move {
            let (_, tcp) = dial(&uri, 15443).await?;
            let gateway = outer.connect(name.clone(), tcp).await?;
            let tls = inner.connect(name, gateway).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint(address)?.connect_with_connector_lazy(connect))
}

/// A plaintext channel to `address` (`host:port`), for the loopback-only xDS port.
pub fn plaintext_channel(address: &str) -> Result<Channel, String> {
    Ok(endpoint(address)?.tcp_nodelay(true).connect_lazy())
}

/// The endpoint of `address` (`host:port`), connections attempted for 5 s at most.
fn endpoint(address: &str) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("address {address:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5)))
}

/// TCP to the host and port of `uri` (`default_port` when it names none), Nagle off; and that
/// host, without the brackets of an IPv6 literal.
async fn dial(uri: &Uri, default_port: u16) -> std::io::Result<(String, TcpStream)> {
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(|c| c == '[' || c == ']');
    let port = uri.port_u16().unwrap_or(default_port);
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    Ok((host.to_owned(), tcp))
}
