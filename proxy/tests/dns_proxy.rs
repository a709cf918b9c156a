//! The sidecar's DNS proxy in-process, over real UDP and TCP sockets on loopback: the mesh's
//! names from a name table, short names through the search domains, other names forwarded to a
//! small resolver the test runs (the pod's own), SERVFAIL when that resolver is gone, and a
//! barrage of malformed packets that the proxy survives, answering after it.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use isthmus_proxy::config::ProxyConfig;
use isthmus_proxy::config::dns::NameIndex;
use isthmus_proxy::dns::answer::query;
use isthmus_proxy::dns::{self, Upstream};
use isthmus_proxy::metrics::Metrics;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

const LIMIT: Duration = Duration::from_secs(5);
/// What the test's upstream resolver answers for every A query.
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// The pod's own resolver: every A question answered with [`UPSTREAM_ANSWER`], over UDP and
/// TCP on one port.
async fn upstream_resolver() -> SocketAddr {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    fn answer(bytes: &[u8]) -> Vec<u8> {
        let query = Message::from_vec(bytes).unwrap();
        let mut reply = Message::new();
        reply
            .set_id(query.id())
            .set_message_type(MessageType::Response)
            .set_recursion_available(true);
        for q in query.queries() {
            reply.add_query(q.clone());
            if q.query_type() == RecordType::A {
                reply.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A(UPSTREAM_ANSWER)),
                ));
            }
        }
        reply.to_vec().unwrap()
    }
    tokio::spawn(async move {
        let mut buffer = vec![0; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buffer).await {
            let _ = udp.send_to(&answer(&buffer[..n]), from).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let len = stream.read_u16().await.unwrap();
                let mut query = vec![0; usize::from(len)];
                stream.read_exact(&mut query).await.unwrap();
                let reply = answer(&query);
                stream
                    .write_all(&u16::try_from(reply.len()).unwrap().to_be_bytes())
                    .await
                    .unwrap();
                stream.write_all(&reply).await.unwrap();
            });
        }
    });
    addr
}

fn upstream(servers: Vec<SocketAddr>) -> Upstream {
    Upstream {
        servers,
        search: [
            "shop.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
        ]
        .map(str::to_owned)
        .to_vec(),
        timeout: Duration::from_millis(500),
    }
}

fn config() -> watch::Receiver<Arc<ProxyConfig>> {
    let mut names = NameIndex::default();
    names.names.insert(
        "ratings.bookinfo.svc.green-imports.local".into(),
        vec!["240.240.0.7".parse().unwrap()],
    );
    names.names.insert(
        "reviews.bookinfo.svc.cluster.local".into(),
        vec!["10.96.0.9".parse().unwrap()],
    );
    let mut config = ProxyConfig::default();
    config.names.insert(
        isthmus_proto::dns::NAME_TABLE_RESOURCE.into(),
        Arc::new(names),
    );
    // The sender is dropped: the table stays as it is.
    watch::channel(Arc::new(config)).1
}

/// Starts a DNS proxy; its address and metrics.
async fn proxy(upstream: Upstream) -> (SocketAddr, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let server = dns::bind(
        "127.0.0.1:0".parse().unwrap(),
        upstream,
        config(),
        metrics.clone(),
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve());
    (addr, metrics)
}

async fn udp_ask(proxy: SocketAddr, message: &Message) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&message.to_vec().unwrap(), proxy)
        .await
        .unwrap();
    let mut buffer = vec![0; 4096];
    let n = tokio::time::timeout(LIMIT, socket.recv(&mut buffer))
        .await
        .expect("an answer in time")
        .unwrap();
    Message::from_vec(&buffer[..n]).unwrap()
}

async fn tcp_ask(proxy: SocketAddr, message: &Message) -> Message {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let bytes = message.to_vec().unwrap();
    stream
        .write_all(&u16::try_from(bytes.len()).unwrap().to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&bytes).await.unwrap();
    let len = tokio::time::timeout(LIMIT, stream.read_u16())
        .await
        .expect("an answer in time")
        .unwrap();
    let mut reply = vec![0; usize::from(len)];
    stream.read_exact(&mut reply).await.unwrap();
    Message::from_vec(&reply).unwrap()
}

fn addresses(reply: &Message) -> Vec<String> {
    reply
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn mesh_names_are_answered_and_others_forwarded_over_udp_and_tcp() {
    let resolver = upstream_resolver().await;
    let (proxy, metrics) = proxy(upstream(vec![resolver])).await;

    let mesh = query(
        1,
        "ratings.bookinfo.svc.green-imports.local.",
        RecordType::A,
    );
    for reply in [udp_ask(proxy, &mesh).await, tcp_ask(proxy, &mesh).await] {
        assert_eq!(reply.id(), 1);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert!(reply.authoritative());
        assert_eq!(addresses(&reply), ["240.240.0.7"]);
    }
    let aaaa = udp_ask(
        proxy,
        &query(
            2,
            "ratings.bookinfo.svc.green-imports.local.",
            RecordType::AAAA,
        ),
    )
    .await;
    assert_eq!(
        (aaaa.response_code(), aaaa.answers().len()),
        (ResponseCode::NoError, 0)
    );
    // A short name as glibc sends it first with ndots:5: a CNAME and the address.
    let short = udp_ask(
        proxy,
        &query(3, "reviews.bookinfo.shop.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(addresses(&short), ["10.96.0.9"]);
    assert_eq!(short.answers()[0].record_type(), RecordType::CNAME);

    let outside = query(4, "www.example.org.", RecordType::A);
    for reply in [
        udp_ask(proxy, &outside).await,
        tcp_ask(proxy, &outside).await,
    ] {
        assert_eq!(reply.id(), 4);
        assert_eq!(addresses(&reply), [UPSTREAM_ANSWER.to_string()]);
    }
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for series in [
        "isthmus_proxy_dns_requests_total{protocol=\"udp\",result=\"mesh\"} 3",
        "isthmus_proxy_dns_requests_total{protocol=\"tcp\",result=\"mesh\"} 1",
        "isthmus_proxy_dns_requests_total{protocol=\"udp\",result=\"forwarded\"} 1",
        "isthmus_proxy_dns_requests_total{protocol=\"tcp\",result=\"forwarded\"} 1",
    ] {
        assert!(text.contains(series), "{series}\n{text}");
    }
}

#[tokio::test]
async fn no_upstream_answer_is_servfail_and_mesh_names_still_answer() {
    // A port nothing answers on.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (proxy, _) = proxy(upstream(vec![silent.local_addr().unwrap()])).await;
    let reply = udp_ask(proxy, &query(7, "www.example.org.", RecordType::A)).await;
    assert_eq!(
        (reply.id(), reply.response_code()),
        (7, ResponseCode::ServFail)
    );
    let mesh = udp_ask(
        proxy,
        &query(
            8,
            "ratings.bookinfo.svc.green-imports.local.",
            RecordType::A,
        ),
    )
    .await;
    assert_eq!(addresses(&mesh), ["240.240.0.7"]);
}

/// Malformed queries of every shape: random bytes, truncations and bit flips of a real query,
/// a name whose compression pointer points at itself, a header announcing thousands of
/// questions, responses sent to the proxy.
fn hostile(rng: &mut rand::rngs::StdRng, valid: &[u8], i: usize) -> Vec<u8> {
    match i % 6 {
        0 => (0..rng.random_range(0..600))
            .map(|_| rng.random())
            .collect(),
        1 => valid[..rng.random_range(0..valid.len())].to_vec(),
        2 => {
            let mut bytes = valid.to_vec();
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] ^= 1 << rng.random_range(0..8);
            }
            bytes
        }
        // Header, one question whose name is a pointer to itself.
        3 => vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1],
        // 65535 questions announced, none there.
        4 => vec![0, 2, 1, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0],
        _ => {
            let mut bytes = valid.to_vec();
            bytes[2] |= 0x80; // QR: a response
            bytes
        }
    }
}

#[tokio::test]
async fn a_barrage_of_malformed_packets_leaves_the_proxy_answering() {
    let resolver = upstream_resolver().await;
    let (proxy, _) = proxy(upstream(vec![resolver])).await;
    let valid = query(
        9,
        "ratings.bookinfo.svc.green-imports.local.",
        RecordType::A,
    )
    .to_vec()
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..20_000 {
        let packet = hostile(&mut rng, &valid, i);
        let _ = socket.send_to(&packet, proxy).await;
    }
    // Over TCP too: garbage after a length, lengths with nothing after them, closed early.
    for i in 0..200 {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let packet = hostile(&mut rng, &valid, i);
        let _ = stream
            .write_all(&u16::try_from(packet.len()).unwrap().to_be_bytes())
            .await;
        if i % 3 != 0 {
            let _ = stream.write_all(&packet).await;
        }
    }
    // Still answering, on both.
    let reply = udp_ask(
        proxy,
        &query(
            10,
            "ratings.bookinfo.svc.green-imports.local.",
            RecordType::A,
        ),
    )
    .await;
    assert_eq!(addresses(&reply), ["240.240.0.7"]);
    let reply = tcp_ask(
        proxy,
        &query(11, "reviews.bookinfo.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(addresses(&reply), ["10.96.0.9"]);
    // A malformed query with a header gets FORMERR with its id, not silence.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff], proxy)
        .await
        .unwrap();
    let mut buffer = vec![0; 512];
    let n = tokio::time::timeout(LIMIT, socket.recv(&mut buffer))
        .await
        .expect("FORMERR in time")
        .unwrap();
    let formerr = Message::from_vec(&buffer[..n]).unwrap();
    assert_eq!(
        (formerr.id(), formerr.response_code()),
        (0x1234, ResponseCode::FormErr)
    );
}
