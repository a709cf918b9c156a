//! The DNS proxy's sockets: one UDP socket answered in its receive loop (the mesh's names
//! are answered there, without a task per query), forwarded queries in tasks of their own
//! (at most [`MAX_FORWARDS`] at once; more get SERVFAIL at once), and a TCP listener with a
//! task per connection (at most [`MAX_TCP`], each closed after [`TCP_IDLE`] without a query).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};

use super::answer::{self, Decision};
use super::forward::{self, MAX_UDP};
use super::resolv_conf::Upstream;
use crate::config::ProxyConfig;
use crate::config::dns::NameIndex;
use crate::metrics::{DnsLabels, Metrics};

/// Forwarded queries waiting for an upstream answer at once.
pub const MAX_FORWARDS: usize = 1024;
/// TCP connections served at once.
pub const MAX_TCP: usize = 256;
/// A TCP connection without a query for this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// What every query reads.
#[derive(Debug)]
struct Shared {
    config: watch::Receiver<Arc<ProxyConfig>>,
    upstream: Upstream,
    forwards: Semaphore,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn names(&self) -> Arc<NameIndex> {
        self.config
            .borrow()
            .names
            .get(isthmus_proto::dns::NAME_TABLE_RESOURCE)
            .cloned()
            .unwrap_or_default()
    }

    fn count(&self, protocol: &'static str, result: &'static str) {
        self.metrics
            .dns_requests
            .get_or_create(&DnsLabels { protocol, result })
            .inc();
    }

    /// The proxy's own reply to `bytes`, or `None` to forward it (or to drop it).
    fn local(&self, protocol: &'static str, bytes: &[u8]) -> Local {
        let decision = match Message::from_vec(bytes) {
            Ok(query) => answer::decide(&query, &self.names(), &self.upstream.search),
            Err(_) => {
                self.count(protocol, "malformed");
                return match answer::malformed(bytes) {
                    Decision::Reply(reply) => Local::Reply(encode(&reply)),
                    _ => Local::Drop,
                };
            }
        };
        match decision {
            Decision::Reply(reply) => {
                self.count(
                    protocol,
                    if reply.response_code() == ResponseCode::NoError {
                        "mesh"
                    } else {
                        "refused"
                    },
                );
                Local::Reply(encode(&reply))
            }
            Decision::Forward => Local::Forward,
            Decision::Drop => {
                self.count(protocol, "malformed");
                Local::Drop
            }
        }
    }
}

enum Local {
    Reply(Option<Vec<u8>>),
    Forward,
    Drop,
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    message.to_vec().ok()
}

/// SERVFAIL for `query` (its id and question, copied from its bytes when they parse).
fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let parsed = Message::from_vec(query).ok()?;
    let mut reply = Message::error_msg(parsed.id(), parsed.op_code(), ResponseCode::ServFail);
    reply.add_queries(parsed.queries().iter().cloned());
    reply.set_recursion_desired(parsed.recursion_desired());
    reply.set_recursion_available(true);
    encode(&reply)
}

/// The bound DNS proxy; [`DnsServer::serve`] runs it.
#[derive(Debug)]
pub struct DnsServer {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    shared: Arc<Shared>,
}

/// Binds UDP and TCP on `addr` (the TCP port is the UDP one when `addr`'s port is 0).
pub async fn bind(
    addr: SocketAddr,
    upstream: Upstream,
    config: watch::Receiver<Arc<ProxyConfig>>,
    metrics: Arc<Metrics>,
) -> std::io::Result<DnsServer> {
    let udp = UdpSocket::bind(addr).await?;
    let tcp = TcpListener::bind(udp.local_addr()?).await?;
    Ok(DnsServer {
        udp: Arc::new(udp),
        tcp,
        shared: Arc::new(Shared {
            config,
            upstream,
            forwards: Semaphore::new(MAX_FORWARDS),
            metrics,
        }),
    })
}

impl DnsServer {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Serves until dropped (the owner aborts the task).
    pub async fn serve(self) {
        let Self { udp, tcp, shared } = self;
        tokio::join!(serve_udp(udp, shared.clone()), serve_tcp(tcp, shared));
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buffer = vec![0u8; MAX_UDP];
    loop {
        let (n, from) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(e) => {
                // ICMP errors of earlier replies surface here on some systems: not fatal.
                tracing::debug!(error = %e, "DNS proxy: UDP receive");
                continue;
            }
        };
        let query = &buffer[..n];
        match shared.local("udp", query) {
            Local::Reply(Some(reply)) => {
                let _ = socket.send_to(&reply, from).await;
            }
            Local::Reply(None) | Local::Drop => {}
            Local::Forward => {
                let Ok(permit) = shared.forwards.try_acquire() else {
                    shared.count("udp", "upstream_failure");
                    if let Some(reply) = servfail(query) {
                        let _ = socket.send_to(&reply, from).await;
                    }
                    continue;
                };
                permit.forget();
                let (socket, shared, query) = (socket.clone(), shared.clone(), query.to_vec());
                tokio::spawn(async move {
                    let reply = match forward::udp(&shared.upstream, &query).await {
                        Ok(reply) => {
                            shared.count("udp", "forwarded");
                            Some(reply)
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "DNS proxy: no upstream answer");
                            shared.count("udp", "upstream_failure");
                            servfail(&query)
                        }
                    };
                    if let Some(reply) = reply {
                        let _ = socket.send_to(&reply, from).await;
                    }
                    shared.forwards.add_permits(1);
                });
            }
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Over the bound: the connection is closed at once.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = serve_connection(stream, &shared).await;
        });
    }
}

async fn serve_connection(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    loop {
        let Ok(len) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return Ok(());
        };
        let mut query = vec![0; usize::from(len?)];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let reply = match shared.local("tcp", &query) {
            Local::Reply(reply) => reply,
            Local::Drop => None,
            Local::Forward => match forward::tcp(&shared.upstream, &query).await {
                Ok(reply) => {
                    shared.count("tcp", "forwarded");
                    Some(reply)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "DNS proxy: no upstream answer over TCP");
                    shared.count("tcp", "upstream_failure");
                    servfail(&query)
                }
            },
        };
        // A query that gets no reply ends the connection: the framing cannot be trusted.
        let Some(reply) = reply else { return Ok(()) };
        let len = u16::try_from(reply.len()).map_err(std::io::Error::other)?;
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        stream.write_all(&framed).await?;
    }
}
