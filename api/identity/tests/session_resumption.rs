//! TLS session resumption between configurations that enable it (`enable_server_resumption`,
//! `enable_client_resumption`), over real loopback handshakes: a second connection resumes, a
//! session resumes only under the configuration that verified it, and a resumed session's peer
//! chain is checked again against the time (`verified_peer`).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_identity::testing::TestCa;
use isthmus_identity::{
    CredentialCell, PeerPolicy, SpiffeId, SpiffeVerifier, TrustBundles, VerifyError,
    WorkloadCertificate, client_config, enable_client_resumption, enable_server_resumption,
    server_config, shared_bundles, verified_peer, verify_error_of,
};
use rustls::HandshakeKind;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn cell(cert: &WorkloadCertificate) -> Arc<CredentialCell> {
    let cell = Arc::new(CredentialCell::new());
    cell.store(cert);
    cell
}

fn verifier(ca: &TestCa) -> Arc<SpiffeVerifier> {
    Arc::new(SpiffeVerifier::new(
        shared_bundles(TrustBundles::new(ca.bundle())),
        PeerPolicy::AnyTrusted,
    ))
}

fn server(ca: &TestCa, cert: &WorkloadCertificate) -> Arc<rustls::ServerConfig> {
    let mut config = server_config(cell(cert), verifier(ca), &[]).unwrap();
    enable_server_resumption(&mut config).unwrap();
    Arc::new(config)
}

fn client(ca: &TestCa, cert: &WorkloadCertificate) -> Arc<rustls::ClientConfig> {
    let mut config = client_config(Some(cell(cert)), verifier(ca), &[]).unwrap();
    enable_client_resumption(&mut config);
    Arc::new(config)
}

/// What one side saw of a connection: how its handshake went, and what `verified_peer` said at
/// the time asked.
#[derive(Debug)]
struct Seen {
    kind: Option<HandshakeKind>,
    suite: Option<rustls::CipherSuite>,
    peer: Result<Option<SpiffeId>, rustls::Error>,
}

/// One connection: the handshake, then a byte each way (the server's session tickets reach the
/// client with the server's byte). Each side asks `verified_peer` at `at`.
async fn connect(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
    at: SystemTime,
) -> (Seen, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        tls.write_all(b"!").await.unwrap();
        tls.flush().await.unwrap();
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.unwrap();
        let conn = tls.get_ref().1;
        Seen {
            kind: conn.handshake_kind(),
            suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
            peer: verified_peer(conn, at),
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(ServerName::try_from("server.mesh").unwrap(), tcp)
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    tls.read_exact(&mut byte).await.unwrap();
    tls.write_all(b"?").await.unwrap();
    tls.flush().await.unwrap();
    let conn = tls.get_ref().1;
    let client_seen = Seen {
        kind: conn.handshake_kind(),
        suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
        peer: verified_peer(conn, at),
    };
    let server_seen = tokio::time::timeout(Duration::from_secs(10), server_side)
        .await
        .expect("server timed out")
        .unwrap();
    (server_seen, client_seen)
}

struct Pair {
    ca: TestCa,
    server_cert: WorkloadCertificate,
    client_cert: WorkloadCertificate,
}

const SERVER_ID: &str = "spiffe://red.local/ns/app/sa/server";
const CLIENT_ID: &str = "spiffe://red.local/ns/app/sa/client";

fn pair() -> Pair {
    let ca = TestCa::new("red.local");
    Pair {
        server_cert: ca.issue(&id(SERVER_ID)),
        client_cert: ca.issue(&id(CLIENT_ID)),
        ca,
    }
}

#[tokio::test]
async fn a_second_connection_resumes_and_both_sides_still_see_the_peer() {
    let p = pair();
    let (server_tls, client_tls) = (server(&p.ca, &p.server_cert), client(&p.ca, &p.client_cert));
    let now = SystemTime::now();
    let (s, c) = connect(&server_tls, &client_tls, now).await;
    assert_eq!(
        (s.kind, c.kind),
        (Some(HandshakeKind::Full), Some(HandshakeKind::Full))
    );
    // The suite both sides prefer (`provider`): its key schedule hashes with SHA-256.
    let aes128 = Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    assert_eq!((s.suite, c.suite), (aes128, aes128));
    for _ in 0..3 {
        let (s, c) = connect(&server_tls, &client_tls, now).await;
        assert_eq!(
            (s.kind, c.kind),
            (Some(HandshakeKind::Resumed), Some(HandshakeKind::Resumed))
        );
        assert_eq!(s.peer.unwrap(), Some(id(CLIENT_ID)));
        assert_eq!(c.peer.unwrap(), Some(id(SERVER_ID)));
    }
}

fn expired(peer: &Result<Option<SpiffeId>, rustls::Error>) -> (String, String) {
    let err = peer
        .as_ref()
        .expect_err("expected the resumed peer to be refused");
    match verify_error_of(err) {
        Some(VerifyError::Expired { id, not_after }) => (id.to_string(), not_after.clone()),
        other => panic!("not an expiry: {other:?} ({err})"),
    }
}

#[tokio::test]
async fn a_second_burst_of_connections_to_one_server_all_resume() {
    // Each handshake brings the client one ticket, and a resumption uses one. Twenty
    // connections at once, none resumed, leave the client twenty tickets; the next twenty at
    // once each find one (rustls' own store keeps eight per server, and twelve of these would
    // be full handshakes).
    let p = pair();
    let (server_tls, client_tls) = (server(&p.ca, &p.server_cert), client(&p.ca, &p.client_cert));
    let now = SystemTime::now();
    let burst = || -> Vec<_> {
        (0..20)
            .map(|_| {
                let (server_tls, client_tls) = (server_tls.clone(), client_tls.clone());
                tokio::spawn(async move { connect(&server_tls, &client_tls, now).await })
            })
            .collect()
    };
    for connection in burst() {
        let (_, c) = connection.await.unwrap();
        assert_eq!(c.kind, Some(HandshakeKind::Full));
    }
    let burst = burst();
    let mut resumed = 0;
    for connection in burst {
        let (s, c) = connection.await.unwrap();
        assert_eq!(s.kind, c.kind);
        resumed += usize::from(c.kind == Some(HandshakeKind::Resumed));
    }
    assert_eq!(resumed, 20);
}

#[tokio::test]
async fn a_resumed_session_is_refused_once_the_peer_certificate_has_expired() {
    let p = pair();
    let (server_tls, client_tls) = (server(&p.ca, &p.server_cert), client(&p.ca, &p.client_cert));
    let now = SystemTime::now();
    let _ = connect(&server_tls, &client_tls, now).await;
    // The test CA's workload certificates live an hour; the session outlives them.
    let later = now + Duration::from_secs(2 * 3600);
    let (s, c) = connect(&server_tls, &client_tls, later).await;
    assert_eq!(s.kind, Some(HandshakeKind::Resumed));
    assert_eq!(expired(&s.peer).0, CLIENT_ID);
    assert_eq!(expired(&c.peer).0, SERVER_ID);
}

#[tokio::test]
async fn a_full_handshake_is_not_checked_again() {
    // After a full handshake the verifier has just decided, at the real time; `verified_peer`
    // only reads the identity (the later time here would refuse a resumed session).
    let p = pair();
    let (server_tls, client_tls) = (server(&p.ca, &p.server_cert), client(&p.ca, &p.client_cert));
    let later = SystemTime::now() + Duration::from_secs(2 * 3600);
    let (s, c) = connect(&server_tls, &client_tls, later).await;
    assert_eq!(s.kind, Some(HandshakeKind::Full));
    assert_eq!(s.peer.unwrap(), Some(id(CLIENT_ID)));
    assert_eq!(c.peer.unwrap(), Some(id(SERVER_ID)));
}

#[tokio::test]
async fn an_expired_intermediate_in_the_resumed_chain_is_refused() {
    let root = TestCa::new("red.local");
    let now = SystemTime::now();
    let intermediate = root.intermediate_with_validity(
        "short-lived",
        now - Duration::from_secs(60),
        now + Duration::from_secs(1800),
    );
    let client_cert = intermediate.issue_with_validity(
        &id(CLIENT_ID),
        now - Duration::from_secs(60),
        now + Duration::from_secs(86_400),
    );
    assert_eq!(client_cert.chain().len(), 2);
    let server_cert = root.issue(&id(SERVER_ID));
    let (server_tls, client_tls) = (server(&root, &server_cert), client(&root, &client_cert));
    let _ = connect(&server_tls, &client_tls, now).await;
    let (s, _) = connect(&server_tls, &client_tls, now + Duration::from_secs(3600)).await;
    assert_eq!(s.kind, Some(HandshakeKind::Resumed));
    let (who, not_after) = expired(&s.peer);
    assert_eq!(who, CLIENT_ID);
    let in_half_an_hour = isthmus_identity::format_time(now + Duration::from_secs(1800));
    assert_eq!(
        not_after[..16],
        in_half_an_hour[..16],
        "the intermediate's expiry"
    );
}

/// A self-signed CA certificate that expired a month ago.
fn expired_root() -> rustls_pki_types::CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(60);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    params.self_signed(&key).unwrap().der().clone()
}

#[tokio::test]
async fn an_expired_root_sent_along_with_the_chain_refuses_neither_kind_of_handshake() {
    // Path building ends at the bundle's root and never uses a root the peer sends along, so
    // a full handshake accepts the chain; the check of a resumed one must agree.
    let ca = TestCa::new("red.local");
    let (mut chain, key) = ca.issue_raw(Some(CLIENT_ID), false);
    chain.push(expired_root());
    let client_cert = WorkloadCertificate::new(chain, key, vec![ca.root().clone()]).unwrap();
    let server_cert = ca.issue(&id(SERVER_ID));
    let (server_tls, client_tls) = (server(&ca, &server_cert), client(&ca, &client_cert));
    let now = SystemTime::now();
    for kind in [HandshakeKind::Full, HandshakeKind::Resumed] {
        let (s, _) = connect(&server_tls, &client_tls, now).await;
        assert_eq!(s.kind, Some(kind));
        assert_eq!(s.peer.unwrap(), Some(id(CLIENT_ID)), "{kind:?}");
    }
}

#[tokio::test]
async fn a_session_resumes_only_under_the_configurations_that_verified_it() {
    let p = pair();
    let (server_tls, client_tls) = (server(&p.ca, &p.server_cert), client(&p.ca, &p.client_cert));
    let now = SystemTime::now();
    let _ = connect(&server_tls, &client_tls, now).await;
    // A new server configuration (what the proxy builds when a bundle or the peer policy
    // changes) has new ticket keys: the client's tickets no longer open a session.
    let new_server = server(&p.ca, &p.server_cert);
    let (s, c) = connect(&new_server, &client_tls, now).await;
    assert_eq!(
        (s.kind, c.kind),
        (Some(HandshakeKind::Full), Some(HandshakeKind::Full))
    );
    // A new client configuration starts without sessions, even towards a server that would
    // take the old ones.
    let _ = connect(&server_tls, &client_tls, now).await;
    let new_client = client(&p.ca, &p.client_cert);
    let (s, c) = connect(&server_tls, &new_client, now).await;
    assert_eq!(
        (s.kind, c.kind),
        (Some(HandshakeKind::Full), Some(HandshakeKind::Full))
    );
}

#[tokio::test]
async fn configurations_without_resumption_never_resume() {
    let p = pair();
    let server_tls = Arc::new(server_config(cell(&p.server_cert), verifier(&p.ca), &[]).unwrap());
    let client_tls = client(&p.ca, &p.client_cert);
    let now = SystemTime::now();
    for _ in 0..2 {
        let (s, c) = connect(&server_tls, &client_tls, now).await;
        assert_eq!(
            (s.kind, c.kind),
            (Some(HandshakeKind::Full), Some(HandshakeKind::Full))
        );
    }
}
