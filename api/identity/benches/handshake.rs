//! Cost of one mutual TLS handshake (TLS 1.3, ECDSA P-256), in memory so only CPU is measured:
//! with the SPIFFE verifier on both sides, and with chain verification switched off (handshake
//! signatures still checked). The ratio is the price of verifying X.509 SVIDs.
//!
//! Run: `cargo bench -p isthmus-api --bench handshake`

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use isthmus_identity::testing::TestCa;
use isthmus_identity::{
    CredentialCell, PeerPolicy, SpiffeId, SpiffeVerifier, TrustBundles, client_config, provider,
    server_config, shared_bundles,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConnection, Connection, ServerConnection};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

fn handshake(server: &Arc<rustls::ServerConfig>, client: &Arc<rustls::ClientConfig>) {
    let mut c = Connection::Client(
        ClientConnection::new(client.clone(), ServerName::try_from("bench").unwrap()).unwrap(),
    );
    let mut s = Connection::Server(ServerConnection::new(server.clone()).unwrap());
    while c.is_handshaking() || s.is_handshaking() {
        transfer(&mut c, &mut s);
        transfer(&mut s, &mut c);
    }
}

fn transfer(from: &mut Connection, to: &mut Connection) {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets().unwrap();
    }
}

/// Accepts any chain; still verifies the handshake signatures.
#[derive(Debug)]
struct NoChainCheck(rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoChainCheck {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

impl ClientCertVerifier for NoChainCheck {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

fn bench(c: &mut Criterion) {
    let red = TestCa::new("red.local");
    let green = TestCa::new("green.local");
    let cell = |id: &str| {
        let cell = Arc::new(CredentialCell::new());
        cell.store(&red.issue(&SpiffeId::parse(id).unwrap()));
        cell
    };
    let server_certs = cell("spiffe://red.local/ns/app/sa/server");
    let client_certs = cell("spiffe://red.local/ns/app/sa/client");
    // A realistic bundle set: the local root plus one federated peer.
    let bundles = shared_bundles(
        TrustBundles::new(red.bundle())
            .with_peer(green.bundle())
            .unwrap(),
    );
    let verifier = Arc::new(SpiffeVerifier::new(bundles, PeerPolicy::AnyTrusted));
    let spiffe_server =
        Arc::new(server_config(server_certs.clone(), verifier.clone(), &[]).unwrap());
    let spiffe_client = Arc::new(client_config(Some(client_certs.clone()), verifier, &[]).unwrap());

    let algs = provider().signature_verification_algorithms;
    let plain_server = {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(Arc::new(NoChainCheck(algs)))
            .with_cert_resolver(server_certs);
        // No resumption: every handshake here is a full one (what a mesh connection costs
        // when it cannot resume a session).
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        Arc::new(cfg)
    };
    let plain_client = {
        let mut cfg = (*spiffe_client).clone();
        cfg.dangerous()
            .set_certificate_verifier(Arc::new(NoChainCheck(algs)));
        cfg.client_auth_cert_resolver = client_certs;
        Arc::new(cfg)
    };

    let mut group = c.benchmark_group("mtls_handshake");
    group.bench_function("spiffe_verifier", |b| {
        b.iter(|| handshake(&spiffe_server, &spiffe_client))
    });
    group.bench_function("no_chain_verification", |b| {
        b.iter(|| handshake(&plain_server, &plain_client))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
