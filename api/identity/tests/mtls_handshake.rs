//! Real TLS handshakes over loopback TCP between rustls peers configured by `identity::tls`.
//! Each refusal asserts the specific reason.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_identity::testing::{TestCa, hours_ago, minutes_ago};
use isthmus_identity::{
    CredentialCell, PeerPolicy, SharedBundles, SpiffeId, SpiffeVerifier, TrustBundles, VerifyError,
    WorkloadCertificate, client_config, peer_identity, server_config, shared_bundles,
    verify_error_of,
};
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

struct Side {
    certs: Option<Arc<CredentialCell>>,
    bundles: SharedBundles,
    policy: PeerPolicy,
}

impl Side {
    fn new(cert: Option<&WorkloadCertificate>, bundles: TrustBundles) -> Self {
        Self {
            certs: cert.map(cell),
            bundles: shared_bundles(bundles),
            policy: PeerPolicy::AnyTrusted,
        }
    }
}

#[derive(Debug)]
struct Outcome {
    server: Result<Option<SpiffeId>, std::io::Error>,
    client: Result<Option<SpiffeId>, std::io::Error>,
}

/// Runs one handshake and a one-byte exchange; each side reports the peer identity it verified.
async fn handshake(server: &Side, client: &Side) -> Outcome {
    let server_tls = server_config(
        server.certs.clone().unwrap(),
        Arc::new(SpiffeVerifier::new(
            server.bundles.clone(),
            server.policy.clone(),
        )),
        &[],
    )
    .unwrap();
    let client_tls = client_config(
        client.certs.clone().map(|c| c as _),
        Arc::new(SpiffeVerifier::new(
            client.bundles.clone(),
            client.policy.clone(),
        )),
        &[],
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        tls.write_all(b"!").await?;
        tls.flush().await?;
        Ok(peer_identity(tls.get_ref().1))
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls));
    let client = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector
            .connect(ServerName::try_from("workload.mesh").unwrap(), tcp)
            .await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        Ok(peer_identity(tls.get_ref().1))
    };
    let client = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .expect("client timed out");
    let server = server_task.await.unwrap();
    Outcome { server, client }
}

fn reason(result: &Result<Option<SpiffeId>, std::io::Error>) -> &VerifyError {
    let err = result
        .as_ref()
        .expect_err("expected the handshake to be refused");
    verify_error_of(err).unwrap_or_else(|| panic!("not a verification error: {err:?}"))
}

struct Meshes {
    red: TestCa,
    green: TestCa,
}

fn meshes() -> Meshes {
    Meshes {
        red: TestCa::new("red.local"),
        green: TestCa::new("green.local"),
    }
}

#[tokio::test]
async fn mutual_handshake_succeeds_and_both_sides_see_the_peer_identity() {
    let m = meshes();
    let a = m.red.issue(&id("spiffe://red.local/ns/app/sa/client"));
    let b = m.red.issue(&id("spiffe://red.local/ns/app/sa/server"));
    let out = handshake(
        &Side::new(Some(&b), TrustBundles::new(m.red.bundle())),
        &Side::new(Some(&a), TrustBundles::new(m.red.bundle())),
    )
    .await;
    assert_eq!(
        out.server.unwrap(),
        Some(id("spiffe://red.local/ns/app/sa/client"))
    );
    assert_eq!(
        out.client.unwrap(),
        Some(id("spiffe://red.local/ns/app/sa/server"))
    );
}

#[tokio::test]
async fn chain_through_an_intermediate_succeeds() {
    let m = meshes();
    let intermediate = m.red.intermediate("istiod");
    let a = intermediate.issue(&id("spiffe://red.local/ns/app/sa/client"));
    assert_eq!(a.chain().len(), 2);
    let b = m.red.issue(&id("spiffe://red.local/ns/app/sa/server"));
    let out = handshake(
        &Side::new(Some(&b), TrustBundles::new(m.red.bundle())),
        &Side::new(Some(&a), TrustBundles::new(m.red.bundle())),
    )
    .await;
    assert!(out.server.is_ok(), "{out:?}");
}

#[tokio::test]
async fn federated_peer_identity_verifies_against_its_own_bundle() {
    let m = meshes();
    let caller = m.green.issue(&id("spiffe://green.local/ns/x/sa/y"));
    let server = m.red.issue(&id("spiffe://red.local/ns/app/sa/server"));
    let out = handshake(
        &Side::new(
            Some(&server),
            TrustBundles::new(m.red.bundle())
                .with_peer(m.green.bundle())
                .unwrap(),
        ),
        &Side::new(
            Some(&caller),
            TrustBundles::new(m.green.bundle())
                .with_peer(m.red.bundle())
                .unwrap(),
        ),
    )
    .await;
    assert_eq!(
        out.server.unwrap(),
        Some(id("spiffe://green.local/ns/x/sa/y"))
    );
}

#[tokio::test]
async fn wrong_trust_domain_is_refused() {
    let m = meshes();
    let caller = m.green.issue(&id("spiffe://green.local/ns/x/sa/y"));
    let server = m.red.issue(&id("spiffe://red.local/ns/app/sa/server"));
    let out = handshake(
        &Side::new(Some(&server), TrustBundles::new(m.red.bundle())),
        &Side::new(Some(&caller), TrustBundles::new(m.red.bundle())),
    )
    .await;
    match reason(&out.server) {
        VerifyError::UnknownTrustDomain { trust_domain, .. } => {
            assert_eq!(trust_domain.as_str(), "green.local")
        }
        other => panic!("wrong reason: {other}"),
    }
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let m = meshes();
    let expired = m.red.issue_with_validity(
        &id("spiffe://red.local/ns/app/sa/old"),
        hours_ago(3),
        hours_ago(1),
    );
    let server = m.red.issue(&id("spiffe://red.local/ns/app/sa/server"));
    let out = handshake(
        &Side::new(Some(&server), TrustBundles::new(m.red.bundle())),
        &Side::new(Some(&expired), TrustBundles::new(m.red.bundle())),
    )
    .await;
    assert!(
        matches!(reason(&out.server), VerifyError::Expired { .. }),
        "{out:?}"
    );

    // And an expired server certificate, seen from the client.
    let client = m.red.issue(&id("spiffe://red.local/ns/app/sa/client"));
    let out = handshake(
        &Side::new(Some(&expired), TrustBundles::new(m.red.bundle())),
        &Side::new(Some(&client), TrustBundles::new(m.red.bundle())),
    )
    .await;
    assert!(
        matches!(reason(&out.client), VerifyError::Expired { .. }),
        "{out:?}"
    );
}

#[tokio::test]
async fn not_yet_valid_certificate_is_refused() {
    let m = meshes();
    let future = m.red.issue_with_validity(
        &id("spiffe://red.local/ns/app/sa/early"),
        SystemTime::now() + Duration::from_secs(3600),
        SystemTime::now() + Duration::from_secs(7200),
    );
    let server = m.red.issue(&id("spiffe://red.local/ns/app/sa/server"));
    let out = handshake(
        &Side::new(Some(&server), TrustBundles::new(m.red.bundle())),
        &Side::new(Some(&future), TrustBundles::new(m.red.bundle())),
    )
    .await;
    assert!(
        matches!(reason(&out.server), VerifyError::NotYetValid { .. }),
        "{out:?}"
    );
}

#[tokio::test]
async fn missing_client_certificate_is_refused_where_required() {
    let m = meshes();
    let server = m.red.issue(&id("spiffe://red.local/ns/app/sa/server"));
    let out = handshake(
        &Side::new(Some(&server), TrustBundles::new(m.red.bundle())),
        &Side::new(None, TrustBundles::new(m.red.bundle())),
    )
    .await;
    let err = out.server.expect_err("anonymous client accepted");
    let rustls_err = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(rustls_err, &rustls::Error::NoCertificatesPresented);
}

#[tokio::test]
async fn peer_root_cannot_vouch_for_a_local_identity() {
    let m = meshes();
    // Green's CA mints a certificate claiming a red identity.
    let forged = m.green.issue(&id("spiffe://red.local/ns/app/sa/admin"));
    let server = m.red.issue(&id("spiffe://red.local/ns/app/sa/server"));
    let red_view = TrustBundles::new(m.red.bundle())
        .with_peer(m.green.bundle())
        .unwrap();
    let out = handshake(
        &Side::new(Some(&server), red_view),
        &Side::new(Some(&forged), TrustBundles::new(m.red.bundle())),
    )
    .await;
    match reason(&out.server) {
        VerifyError::UntrustedChain { trust_domain, .. } => {
            assert_eq!(trust_domain.as_str(), "red.local")
        }
        other => panic!("wrong reason: {other}"),
    }
}

#[tokio::test]
async fn peer_root_cannot_vouch_for_a_third_trust_domain() {
    let m = meshes();
    let blue = TestCa::new("blue.local");
    let forged = m.green.issue(&id("spiffe://blue.local/ns/app/sa/x"));
    let server = m.red.issue(&id("spiffe://red.local/ns/app/sa/server"));
    let red_view = TrustBundles::new(m.red.bundle())
        .with_peer(m.green.bundle())
        .unwrap()
        .with_peer(blue.bundle())
        .unwrap();
    let out = handshake(
        &Side::new(Some(&server), red_view),
        &Side::new(Some(&forged), TrustBundles::new(m.red.bundle())),
    )
    .await;
    match reason(&out.server) {
        VerifyError::UntrustedChain { trust_domain, .. } => {
            assert_eq!(trust_domain.as_str(), "blue.local")
        }
        other => panic!("wrong reason: {other}"),
    }
}

#[test]
fn a_peer_bundle_for_the_local_trust_domain_is_refused() {
    let red = TestCa::new("red.local");
    let impostor = TestCa::new("red.local");
    let err = TrustBundles::new(red.bundle())
        .with_peer(impostor.bundle())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("claims the local trust domain red.local"),
        "{err}"
    );
}

#[tokio::test]
async fn client_refuses_a_server_with_an_unexpected_identity() {
    let m = meshes();
    let server = m.red.issue(&id("spiffe://red.local/ns/app/sa/impostor"));
    let client = m.red.issue(&id("spiffe://red.local/ns/app/sa/client"));
    let mut client_side = Side::new(Some(&client), TrustBundles::new(m.red.bundle()));
    client_side.policy = PeerPolicy::OneOf(vec![id("spiffe://red.local/ns/app/sa/ratings")]);
    let out = handshake(
        &Side::new(Some(&server), TrustBundles::new(m.red.bundle())),
        &client_side,
    )
    .await;
    match reason(&out.client) {
        VerifyError::UnexpectedIdentity { actual, .. } => {
            assert_eq!(actual, &id("spiffe://red.local/ns/app/sa/impostor"))
        }
        other => panic!("wrong reason: {other}"),
    }
}

#[tokio::test]
async fn server_restricted_to_a_trust_domain_refuses_others() {
    let m = meshes();
    let caller = m.green.issue(&id("spiffe://green.local/ns/x/sa/y"));
    let server = m
        .red
        .issue(&id("spiffe://red.local/ns/istio-system/sa/ingress"));
    let blue = TestCa::new("blue.local");
    let mut server_side = Side::new(
        Some(&server),
        TrustBundles::new(m.red.bundle())
            .with_peer(m.green.bundle())
            .unwrap()
            .with_peer(blue.bundle())
            .unwrap(),
    );
    server_side.policy = PeerPolicy::TrustDomain("blue.local".parse().unwrap());
    let out = handshake(
        &server_side,
        &Side::new(
            Some(&caller),
            TrustBundles::new(m.green.bundle())
                .with_peer(m.red.bundle())
                .unwrap(),
        ),
    )
    .await;
    assert!(
        matches!(reason(&out.server), VerifyError::UnexpectedIdentity { .. }),
        "{out:?}"
    );
}

#[tokio::test]
async fn certificates_that_are_not_svids_are_refused() {
    let m = meshes();
    let server = m.red.issue(&id("spiffe://red.local/ns/app/sa/server"));
    let cases: &[(Option<&str>, bool, &str)] = &[
        (None, false, "no URI SAN"),
        (
            Some("https://red.local/x"),
            false,
            "must start with \"spiffe://\"",
        ),
        (
            Some("spiffe://red.local/ns/a/sa/b"),
            true,
            "is a CA certificate",
        ),
    ];
    for (uri, is_ca, expected) in cases {
        let (chain, key) = m.red.issue_raw(*uri, *is_ca);
        let cert = match WorkloadCertificate::new(chain.clone(), key.clone_key(), vec![]) {
            Ok(cert) => cert,
            // Not even loadable as a workload identity: present it raw.
            Err(_) => {
                let out = raw_client_handshake(&server, &m, chain, key).await;
                let msg = reason(&out).to_string();
                assert!(msg.contains(expected), "{uri:?}: {msg}");
                continue;
            }
        };
        let out = handshake(
            &Side::new(Some(&server), TrustBundles::new(m.red.bundle())),
            &Side::new(Some(&cert), TrustBundles::new(m.red.bundle())),
        )
        .await;
        let msg = reason(&out.server).to_string();
        assert!(msg.contains(expected), "{uri:?}: {msg}");
    }
}

/// A handshake whose client presents an arbitrary chain; returns the server's result.
async fn raw_client_handshake(
    server: &WorkloadCertificate,
    m: &Meshes,
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> Result<Option<SpiffeId>, std::io::Error> {
    let server_tls = server_config(
        cell(server),
        Arc::new(SpiffeVerifier::new(
            shared_bundles(TrustBundles::new(m.red.bundle())),
            PeerPolicy::AnyTrusted,
        )),
        &[],
    )
    .unwrap();
    let client_tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(isthmus_identity::provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeVerifier::new(
                shared_bundles(TrustBundles::new(m.red.bundle())),
                PeerPolicy::AnyTrusted,
            )))
            .with_client_auth_cert(chain, key)
            .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        tls.write_all(b"!").await?;
        Ok(peer_identity(tls.get_ref().1))
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls));
    if let Ok(mut tls) = connector
        .connect(ServerName::try_from("x").unwrap(), tcp)
        .await
    {
        let _ = tls.read(&mut [0u8; 1]).await;
    }
    server_task.await.unwrap()
}

#[tokio::test]
async fn rotation_keeps_open_connections_and_new_handshakes_use_the_new_certificate() {
    let m = meshes();
    let server_id = id("spiffe://red.local/ns/app/sa/server");
    let first = m.red.issue(&server_id);
    let second = m.red.issue(&server_id);
    let certs = cell(&first);
    let bundles = shared_bundles(TrustBundles::new(m.red.bundle()));
    let server_tls = Arc::new(
        server_config(
            certs.clone(),
            Arc::new(SpiffeVerifier::new(bundles.clone(), PeerPolicy::AnyTrusted)),
            &[],
        )
        .unwrap(),
    );
    let client_cert = m.red.issue(&id("spiffe://red.local/ns/app/sa/client"));
    let client_tls = Arc::new(
        client_config(
            Some(cell(&client_cert)),
            Arc::new(SpiffeVerifier::new(bundles.clone(), PeerPolicy::AnyTrusted)),
            &[],
        )
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_tls);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut buf = [0u8; 1];
                while tls.read_exact(&mut buf).await.is_ok() {
                    tls.write_all(&buf).await.unwrap();
                }
            });
        }
    });
    let connect = || async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(client_tls.clone())
            .connect(ServerName::try_from("x").unwrap(), tcp)
            .await
            .unwrap()
    };
    let serial_of = |tls: &tokio_rustls::client::TlsStream<TcpStream>| {
        let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
        isthmus_identity::CertInfo::parse(leaf).unwrap().serial
    };
    let mut open = connect().await;
    assert_eq!(serial_of(&open), first.leaf().serial);

    certs.store(&second);
    // The open connection still carries traffic.
    open.write_all(b"a").await.unwrap();
    let mut buf = [0u8; 1];
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"a");
    // A new connection sees the new certificate.
    let fresh = connect().await;
    assert_eq!(serial_of(&fresh), second.leaf().serial);

    // Rotating the trust bundle to a new root refuses old-root certificates from then on.
    let new_root = TestCa::new("red.local");
    bundles.store(Arc::new(TrustBundles::new(new_root.bundle())));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let refused = tokio_rustls::TlsConnector::from(client_tls.clone())
        .connect(ServerName::try_from("x").unwrap(), tcp)
        .await;
    assert!(matches!(
        verify_error_of(&refused.unwrap_err()),
        Some(VerifyError::UntrustedChain { .. })
    ));
    let _ = minutes_ago(0);
}

/// Random bytes and mutated real certificates: decoding and verification return errors, never
/// panic.
#[test]
fn hostile_certificates_and_ids_never_panic() {
    use isthmus_identity::{CertInfo, Usage, verify_svid};
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let ca = TestCa::new("red.local");
    let good = ca.issue(&id("spiffe://red.local/ns/app/sa/web"));
    let der = good.chain()[0].to_vec();
    let bundles = TrustBundles::new(ca.bundle());
    for round in 0..3000 {
        let mut bytes = if round % 2 == 0 {
            der.clone()
        } else {
            (0..rng.random_range(0..600))
                .map(|_| rng.random())
                .collect()
        };
        if !bytes.is_empty() {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
        }
        let _ = CertInfo::parse(&bytes);
        let cert = rustls_pki_types::CertificateDer::from(bytes.clone());
        let _ = verify_svid(
            &bundles,
            &cert,
            &[],
            rustls_pki_types::UnixTime::now(),
            Usage::ClientAuth,
        );
        let _ = SpiffeId::parse(&String::from_utf8_lossy(&bytes));
        let mut uri = String::from("spiffe://red.local/ns/");
        uri.extend(
            (0..rng.random_range(0..40)).map(|_| char::from(rng.random_range(0x20u8..0x7f))),
        );
        let _ = SpiffeId::parse(&uri);
    }
}
