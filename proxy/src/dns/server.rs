//! The DNS proxy's sockets: one UDP socket answered in its receive loop (the mesh's names
//! are answered there, without a task per query), forwarded queries in tasks of their own
//! (at most [`MAX_FORWARDS`] at once; more get SERVFAIL at once), and a TCP listener with a
//! task per connection (at most [`MAX_TCP`], each closed after [`TCP_IDLE`] without a query).
//! Those tasks belong to the serving future (a `JoinSet` each): when it is dropped they end
//! with it, and with them the sockets they hold.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

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
    forwards: Arc<Semaphore>,
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

    /// The proxy's own reply to `bytes`, or `None` to forward it (or to drop it). Over UDP a
    /// reply larger than the client takes (512 bytes, or its EDNS size) is cut to its question
    /// with TC set, so the client asks again over TCP.
    fn local(&self, protocol: &'static str, bytes: &[u8]) -> Local {
        let decision = match Message::from_vec(bytes) {
            Ok(query) => {
                let mut decision = answer::decide(&query, &self.names(), &self.upstream.search);
                if let (Decision::Reply(reply), "udp") = (&mut decision, protocol) {
                    fit(reply, query.max_payload());
                }
                decision
            }
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

/// `reply` cut to its header and question, TC set, when it is longer than `max` bytes.
fn fit(reply: &mut Message, max: u16) {
    let too_long = reply
        .to_vec()
        .is_ok_and(|bytes| bytes.len() > usize::from(max.max(512)));
    if too_long {
        reply.take_answers();
        reply.take_additionals();
        reply.take_name_servers();
        reply.set_truncated(true);
    }
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
    let (udp, tcp) = bind_both(addr).await?;
    Ok(DnsServer {
        udp: Arc::new(udp),
        tcp,
        shared: Arc::new(Shared {
            config,
            upstream,
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            metrics,
        }),
    })
}

/// A UDP socket and a TCP listener on one port. Port 0 lets the system choose the UDP port,
/// which another socket may hold for TCP: then the system is asked again.
async fn bind_both(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    const ATTEMPTS: usize = 16;
    let mut attempt = 1;
    loop {
        let udp = UdpSocket::bind(addr).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < ATTEMPTS =>
            {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
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
    let mut forwards = JoinSet::new();
    loop {
        while forwards.try_join_next().is_some() {}
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
                let Ok(permit) = shared.forwards.clone().try_acquire_owned() else {
                    shared.count("udp", "upstream_failure");
                    if let Some(reply) = servfail(query) {
                        let _ = socket.send_to(&reply, from).await;
                    }
                    continue;
                };
                let (socket, shared, query) = (socket.clone(), shared.clone(), query.to_vec());
                forwards.spawn(async move {
                    let _permit = permit;
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
                });
            }
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::debug!(error = %e, "DNS proxy: TCP accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the bound: the connection is closed at once.
        if connections.len() >= MAX_TCP {
            continue;
        }
        let shared = shared.clone();
        connections.spawn(async move {
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

#[cfg(test)]
mod tests {
    use super::bind_both;

    #[tokio::test]
    async fn port_zero_gives_udp_and_tcp_one_port() {
        let (udp, tcp) = bind_both("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert_eq!(udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    }

    #[tokio::test]
    async fn a_named_port_taken_for_tcp_is_an_error_not_another_port() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        // The UDP port of the same number is most likely free; if not, the error is the same.
        let error = bind_both(addr).await.expect_err("the TCP port is taken");
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    }
}
