//! Queries that are not the mesh's go to the pod's original name servers, in order, each
//! for the `resolv.conf` timeout: over UDP from a fresh socket per query (so a reply can only
//! come from the server asked, to the query asked), over TCP for queries that came by TCP.
//! The proxy's own sockets are its user's, which the capture rules let through.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::resolv_conf::Upstream;

/// The largest DNS query over UDP the proxy takes (EDNS's usual ceiling).
pub const MAX_UDP: usize = 4096;
/// The largest answer it relays: a UDP datagram's limit, so an upstream answer is never cut.
const MAX_ANSWER: usize = 65_535;

/// Why no upstream answered.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no name server in resolv.conf")]
    NoServer,
    #[error("no answer from {server} in {timeout:?}")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    #[error("name server {server}")]
    Io {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The first answer to `query` (its bytes as they came) from the upstream servers over UDP.
pub async fn udp(upstream: &Upstream, query: &[u8]) -> Result<Vec<u8>, ForwardError> {
    first_answer(upstream, query, udp_once).await
}

/// The first answer to `query` from the upstream servers over TCP (length-prefixed).
pub async fn tcp(upstream: &Upstream, query: &[u8]) -> Result<Vec<u8>, ForwardError> {
    first_answer(upstream, query, tcp_once).await
}

/// Asks each server in turn, each for the upstream's timeout, until one answers; else the
/// last server's failure.
async fn first_answer<'q, F, Fut>(
    upstream: &Upstream,
    query: &'q [u8],
    ask: F,
) -> Result<Vec<u8>, ForwardError>
where
    F: Fn(SocketAddr, &'q [u8]) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Vec<u8>>>,
{
    let mut last = ForwardError::NoServer;
    for server in &upstream.servers {
        match tokio::time::timeout(upstream.timeout, ask(*server, query)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(source)) => {
                last = ForwardError::Io {
                    server: *server,
                    source,
                }
            }
            Err(_) => {
                last = ForwardError::Timeout {
                    server: *server,
                    timeout: upstream.timeout,
                }
            }
        }
    }
    Err(last)
}

async fn udp_once(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(std::io::Error::other)?;
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buffer = vec![0; MAX_ANSWER];
    loop {
        let n = socket.recv(&mut buffer).await?;
        // The answer to this query: same id (anything else is stray, and waited past).
        if n >= 2 && query.len() >= 2 && buffer[..2] == query[..2] {
            buffer.truncate(n);
            return Ok(buffer);
        }
    }
}

async fn tcp_once(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut answer = vec![0; usize::from(len)];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}
