//! TLS termination with a certificate outside the mesh's identity (an ingress gateway's
//! `SIMPLE` / `MUTUAL` server): the certificate chain and key from PEM or from a credential's
//! secret over SDS (`kubernetes://NAME`), the TLS versions and ALPN of the filter chain, and
//! for `MUTUAL` a client certificate verified by WebPKI against the chain's roots (PEM, or the
//! credential's `kubernetes://NAME-cacert`), then checked for one of its SANs. Nothing of the
//! mesh's SPIFFE identity is presented or expected: the mesh's certificate and trust bundles
//! are refused here.
//!
//! The PEM files are read when the chain's TLS is built (at each configuration change); a file
//! that cannot be read, or a secret not received yet, makes the chain's connections fail with
//! its name (the listener stays).

use std::sync::Arc;

use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme,
    SupportedProtocolVersion,
};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::external_tls::{
    carries, certificate_and_key, certificate_origin, external_roots, roots_origin,
};
use super::tls::TlsError;
use crate::config::ProxyConfig;
use crate::config::tls::{ClientValidation, ExternalServerTls, SanMatch, TlsVersion};

/// The server configuration of a filter chain with a certificate outside the mesh; `config`:
/// the secrets a credential's certificate or roots come from.
pub fn server(
    tls: &ExternalServerTls,
    require_client_certificate: bool,
    alpn: &[String],
    config: &ProxyConfig,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(isthmus_identity::provider());
    let versions: Vec<&'static SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (tls.versions.min..=tls.versions.max).contains(v))
    .map(|(_, version)| version)
    .collect();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS versions {:?}: {e}", tls.versions))?;
    let builder = match &tls.clients {
        None => builder.with_no_client_auth(),
        Some(clients) => builder.with_client_cert_verifier(client_verifier(
            clients,
            require_client_certificate,
            provider,
            config,
        )?),
    };
    let (chain, key) = certificate_and_key(&tls.certificate, config)?;
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{}: {e}", certificate_origin(&tls.certificate)))?;
    // No resumption (unlike the mesh's TLS, whose resumed sessions are checked again by
    // `verified_peer`): every connection is verified by the configuration in force when it
    // starts.
    server.session_storage = Arc::new(NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    server.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(server)
}

/// WebPKI against the chain's roots, a certificate required or only asked for, then the SANs.
fn client_verifier(
    clients: &ClientValidation,
    required: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
    config: &ProxyConfig,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = Arc::new(external_roots(&clients.roots, config)?);
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider);
    if !required {
        builder = builder.allow_unauthenticated();
    }
    let chain = builder
        .build()
        .map_err(|e| format!("{}: {e}", roots_origin(&clients.roots)))?;
    if clients.sans.is_empty() {
        return Ok(chain);
    }
    Ok(Arc::new(NamedClient {
        chain,
        sans: clients.sans.clone(),
    }))
}

/// A verified client certificate must also carry one of `sans` (Envoy's
/// `match_typed_subject_alt_names`, exact; names by WebPKI's rules as for servers).
#[derive(Debug)]
struct NamedClient {
    chain: Arc<dyn ClientCertVerifier>,
    sans: Vec<SanMatch>,
}

impl ClientCertVerifier for NamedClient {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        if !self.sans.iter().any(|san| carries(&cert, end_entity, san)) {
            return Err(Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rcgen::ExtendedKeyUsagePurpose;
    use rustls::ProtocolVersion;
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::config::check::Path;
    use crate::config::tls::{
        DownstreamTls, ExternalCertificate, ExternalRoots, Pem, TlsVersions, downstream,
    };
    use crate::transport::testing::{
        Ca, certificate_secret, dns_sans, roots_secret, sds, tls_socket, with_raw_secret,
        with_secrets,
    };

    /// A directory of its own, removed with it.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "isthmus-edge-tls-{}-{n}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn file(&self, name: &str, content: &str) -> Pem {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            Pem::File(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A gateway's PKI: its CA, another one, the files of `gw.example.com`'s certificate.
    struct Pki {
        dir: Dir,
        ca: Ca,
        other: Ca,
        certificate: ExternalCertificate,
    }

    impl Pki {
        fn new() -> Self {
            let dir = Dir::new();
            let ca = Ca::new("gateway CA");
            let (cert, key) = ca.issue(&["gw.example.com"], ExtendedKeyUsagePurpose::ServerAuth);
            Self {
                certificate: ExternalCertificate::Pem {
                    chain: dir.file("cert.pem", &cert),
                    key: dir.file("key.pem", &key),
                },
                other: Ca::new("another CA"),
                dir,
                ca,
            }
        }

        /// `SIMPLE`, or `MUTUAL` with the CA as the clients' roots and these SANs.
        fn gateway(&self, mutual: Option<Vec<SanMatch>>) -> ExternalServerTls {
            ExternalServerTls {
                certificate: self.certificate.clone(),
                clients: mutual.map(|sans| ClientValidation {
                    roots: ExternalRoots::Pem(self.dir.file("ca.pem", &self.ca.pem)),
                    sans,
                }),
                versions: TlsVersions::default(),
            }
        }
    }

    const ALPN: [&str; 2] = ["h2", "http/1.1"];

    fn server_config(tls: &ExternalServerTls, require: bool) -> Arc<rustls::ServerConfig> {
        let alpn = ALPN.map(String::from);
        Arc::new(server(tls, require, &alpn, &ProxyConfig::default()).unwrap())
    }

    /// A client trusting `roots` for the server, presenting `certificate` if any.
    fn client_config(
        roots: &str,
        certificate: Option<(String, String)>,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut store = rustls::RootCertStore::empty();
        let roots = isthmus_identity::pem::certs_from_pem(roots.as_bytes(), "roots").unwrap();
        store.add_parsable_certificates(roots);
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(isthmus_identity::provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(store);
        let mut config = match certificate {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    isthmus_identity::pem::certs_from_pem(cert.as_bytes(), "cert").unwrap(),
                    isthmus_identity::pem::key_from_pem(key.as_bytes(), "key").unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// What the server saw of a session that carried the client's first bytes.
    #[derive(Debug)]
    struct Session {
        alpn: Option<Vec<u8>>,
        version: Option<ProtocolVersion>,
        client_certificate: bool,
        peer_id: Option<isthmus_identity::SpiffeId>,
    }

    /// A handshake to `gw.example.com` and a first message; the server's view, or the first
    /// error (the server's, else the client's).
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
    ) -> Result<Session, String> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let serve = async {
            let mut tls = TlsAcceptor::from(server)
                .accept(server_io)
                .await
                .map_err(|e| e.to_string())?;
            let mut ping = [0; 4];
            tls.read_exact(&mut ping).await.map_err(|e| e.to_string())?;
            let session = tls.get_ref().1;
            Ok::<_, String>(Session {
                alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                version: session.protocol_version(),
                client_certificate: session.peer_certificates().is_some(),
                peer_id: isthmus_identity::peer_identity(session),
            })
        };
        let call = async {
            let name = ServerName::try_from("gw.example.com").unwrap();
            let mut tls = TlsConnector::from(client)
                .connect(name, client_io)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(tls)
        };
        let (served, called) = tokio::join!(serve, call);
        let session = served?;
        called?;
        Ok(session)
    }

    const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
    const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

    #[tokio::test]
    async fn simple_presents_the_certificate_and_asks_for_none() {
        let pki = Pki::new();
        let server = server_config(&pki.gateway(None), false);
        let session = handshake(server.clone(), client_config(&pki.ca.pem, None, BOTH))
            .await
            .unwrap();
        assert_eq!(session.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(session.version, Some(ProtocolVersion::TLSv1_3));
        assert!(!session.client_certificate);

        // The client verifies the server: against another CA, no session.
        let err = handshake(server.clone(), client_config(&pki.other.pem, None, BOTH)).await;
        assert!(err.is_err(), "{err:?}");

        // A client certificate is not asked for, so one on offer is never sent.
        let offered = client_config(&pki.ca.pem, pki.ca.client(&["client.example.com"]), BOTH);
        let session = handshake(server.clone(), offered).await.unwrap();
        assert!(!session.client_certificate);

        // TLS 1.2 too, by default.
        let session = handshake(server, client_config(&pki.ca.pem, None, TLS12))
            .await
            .unwrap();
        assert_eq!(session.version, Some(ProtocolVersion::TLSv1_2));
    }

    #[tokio::test]
    async fn mutual_requires_a_client_certificate_from_its_roots() {
        let pki = Pki::new();
        let server = server_config(&pki.gateway(Some(Vec::new())), true);
        let client = |certificate, versions| client_config(&pki.ca.pem, certificate, versions);

        for versions in [BOTH, TLS12] {
            let none = handshake(server.clone(), client(None, versions)).await;
            assert!(none.is_err(), "no certificate: {none:?}");

            let other = pki.other.client(&["client.example.com"]);
            let other = handshake(server.clone(), client(other, versions)).await;
            assert!(other.is_err(), "another CA's certificate: {other:?}");

            let ours = pki.ca.client(&["client.example.com"]);
            let session = handshake(server.clone(), client(ours, versions))
                .await
                .unwrap();
            assert!(session.client_certificate);
            // Not a SPIFFE ID: no mesh identity, no error (the listener's `peer_id`).
            assert_eq!(session.peer_id, None);
        }
    }

    #[tokio::test]
    async fn mutual_with_sans_requires_one_of_them() {
        let pki = Pki::new();
        let sans = vec![
            SanMatch::Dns("client.example.com".into()),
            SanMatch::Ip(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        ];
        let server = server_config(&pki.gateway(Some(sans)), true);
        let client = |names: &[&str]| client_config(&pki.ca.pem, pki.ca.client(names), BOTH);

        for names in [
            &["client.example.com"][..],
            &["10.1.2.3"],
            &["x.example", "10.1.2.3"],
        ] {
            let session = handshake(server.clone(), client(names)).await;
            assert!(session.is_ok(), "{names:?}: {session:?}");
        }
        for names in [
            &["intruder.example.com"][..],
            &["10.1.2.4"],
            &["a.client.example.com"],
        ] {
            let err = handshake(server.clone(), client(names)).await.unwrap_err();
            assert!(err.contains("NotValidForName"), "{names:?}: {err}");
        }
        // The SANs are checked after the chain, never instead of it.
        let other = pki.other.client(&["client.example.com"]);
        let err = handshake(server, client_config(&pki.ca.pem, other, BOTH)).await;
        assert!(err.is_err(), "another CA's certificate: {err:?}");
    }

    #[tokio::test]
    async fn mutual_without_require_lets_clients_without_certificate_in() {
        let pki = Pki::new();
        let server = server_config(&pki.gateway(Some(Vec::new())), false);
        let client = |certificate| client_config(&pki.ca.pem, certificate, BOTH);

        let session = handshake(server.clone(), client(None)).await.unwrap();
        assert!(!session.client_certificate);
        let session = handshake(server.clone(), client(pki.ca.client(&["c.example"])))
            .await
            .unwrap();
        assert!(session.client_certificate);
        // One that is sent is verified all the same.
        let other = handshake(server, client(pki.other.client(&["c.example"]))).await;
        assert!(other.is_err(), "{other:?}");
    }

    #[tokio::test]
    async fn versions_and_inline_pem_are_honoured() {
        let pki = Pki::new();
        let (cert, key) = pki
            .ca
            .issue(&["gw.example.com"], ExtendedKeyUsagePurpose::ServerAuth);
        let tls = ExternalServerTls {
            certificate: ExternalCertificate::Pem {
                chain: Pem::Inline(cert.into_bytes()),
                key: Pem::Inline(key.into_bytes()),
            },
            clients: Some(ClientValidation {
                roots: ExternalRoots::Pem(Pem::Inline(pki.ca.pem.clone().into_bytes())),
                sans: Vec::new(),
            }),
            versions: TlsVersions {
                min: TlsVersion::Tls13,
                max: TlsVersion::Tls13,
            },
        };
        let server = server_config(&tls, true);
        let client = |versions| client_config(&pki.ca.pem, pki.ca.client(&["c.example"]), versions);
        let session = handshake(server.clone(), client(BOTH)).await.unwrap();
        assert_eq!(session.version, Some(ProtocolVersion::TLSv1_3));
        let old = handshake(server, client(TLS12)).await;
        assert!(
            old.is_err(),
            "a TLS 1.2 client of a TLS 1.3 server: {old:?}"
        );
    }

    #[test]
    fn unusable_files_are_named() {
        let pki = Pki::new();
        let missing = pki.dir.0.join("missing.pem");
        let ExternalCertificate::Pem { chain: cert, .. } = pki.certificate.clone() else {
            unreachable!()
        };
        let none = ProxyConfig::default();

        let mut tls = pki.gateway(None);
        tls.certificate = ExternalCertificate::Pem {
            chain: cert.clone(),
            key: Pem::File(missing.clone()),
        };
        let err = server(&tls, false, &[], &none).unwrap_err();
        assert!(err.contains(&missing.display().to_string()), "{err}");

        let mut tls = pki.gateway(Some(Vec::new()));
        tls.clients = Some(ClientValidation {
            roots: ExternalRoots::Pem(Pem::File(missing.clone())),
            sans: Vec::new(),
        });
        let err = server(&tls, true, &[], &none).unwrap_err();
        assert!(err.contains(&missing.display().to_string()), "{err}");

        // A key that is not the certificate's: both files named.
        let (_, wrong_key) = pki
            .ca
            .issue(&["gw.example.com"], ExtendedKeyUsagePurpose::ServerAuth);
        let wrong = pki.dir.file("wrong-key.pem", &wrong_key);
        let mut tls = pki.gateway(None);
        tls.certificate = ExternalCertificate::Pem {
            chain: cert,
            key: wrong.clone(),
        };
        let err = server(&tls, false, &[], &none).unwrap_err();
        let Pem::File(wrong) = wrong else {
            unreachable!()
        };
        assert!(err.contains(&wrong.display().to_string()), "{err}");
    }

    /// A `Gateway` server with `credentialName: gw` as isthmusd writes it, converted by the
    /// proxy: the certificate `kubernetes://gw` over SDS, ALPN, TLS 1.2 to 1.3; for `MUTUAL`,
    /// the clients' SANs and the roots `kubernetes://gw-cacert` over SDS, a certificate
    /// required.
    fn credential_gateway(mutual: Option<&[&str]>) -> DownstreamTls {
        use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
            CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, TlsParameters,
            common_tls_context, tls_parameters,
        };
        use isthmus_proto::envoy::google::protobuf::BoolValue;
        let validation = mutual.map(|sans| {
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: dns_sans(sans),
                        ..CertificateValidationContext::default()
                    }),
                    validation_context_sds_secret_config: Some(sds("kubernetes://gw-cacert")),
                    ..Default::default()
                },
            )
        });
        let context = DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![sds("kubernetes://gw")],
                alpn_protocols: ALPN.map(String::from).to_vec(),
                tls_params: Some(TlsParameters {
                    tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv12 as i32,
                    tls_maximum_protocol_version: tls_parameters::TlsProtocol::TlSv13 as i32,
                    ..TlsParameters::default()
                }),
                validation_context_type: validation,
                ..CommonTlsContext::default()
            }),
            require_client_certificate: mutual.is_some().then_some(BoolValue { value: true }),
            ..DownstreamTlsContext::default()
        };
        downstream(tls_socket(&context), &Path::root())
            .unwrap()
            .unwrap()
    }

    /// The credential `gw`: `gw.example.com`'s certificate from `ca`, and `roots` as its
    /// `-cacert`.
    fn credential(ca: &Ca, roots: &Ca) -> ProxyConfig {
        with_secrets([
            (
                "kubernetes://gw",
                certificate_secret("kubernetes://gw", &ca.server(&["gw.example.com"])),
            ),
            (
                "kubernetes://gw-cacert",
                roots_secret("kubernetes://gw-cacert", &roots.pem),
            ),
        ])
    }

    #[tokio::test]
    async fn simple_over_sds_presents_the_credential_certificate() {
        let (ca, other) = (Ca::new("gateway CA"), Ca::new("another CA"));
        let tls = credential_gateway(None);
        assert_eq!(
            tls.secret_names().collect::<Vec<_>>(),
            ["kubernetes://gw"],
            "what the proxy subscribes to"
        );

        // Not received yet: the chain's connections fail, saying which secret is missing.
        let err = crate::transport::tls::server(&tls, &ProxyConfig::default()).unwrap_err();
        assert_eq!(err, r#"secret "kubernetes://gw" not received yet"#);

        let server = crate::transport::tls::server(&tls, &credential(&ca, &ca)).unwrap();
        let session = handshake(server.clone(), client_config(&ca.pem, None, BOTH))
            .await
            .unwrap();
        assert_eq!(session.alpn.as_deref(), Some(&b"h2"[..]));
        assert!(!session.client_certificate);
        let session = handshake(server.clone(), client_config(&ca.pem, None, TLS12))
            .await
            .unwrap();
        assert_eq!(session.version, Some(ProtocolVersion::TLSv1_2));

        // The certificate is the credential's: a client trusting another CA refuses it.
        let err = handshake(server, client_config(&other.pem, None, BOTH)).await;
        assert!(err.is_err(), "{err:?}");
    }

    #[tokio::test]
    async fn mutual_over_sds_verifies_clients_against_the_credential_roots() {
        let (ca, other) = (Ca::new("gateway CA"), Ca::new("another CA"));
        let tls = credential_gateway(Some(&["client.example.com"]));
        assert!(tls.require_client_certificate);
        assert_eq!(
            tls.secret_names().collect::<Vec<_>>(),
            ["kubernetes://gw", "kubernetes://gw-cacert"]
        );

        // The roots not received yet: named.
        let only_certificate = with_secrets([(
            "kubernetes://gw",
            certificate_secret("kubernetes://gw", &ca.server(&["gw.example.com"])),
        )]);
        let err = crate::transport::tls::server(&tls, &only_certificate).unwrap_err();
        assert_eq!(err, r#"secret "kubernetes://gw-cacert" not received yet"#);

        let server = crate::transport::tls::server(&tls, &credential(&ca, &ca)).unwrap();
        let client = |certificate| client_config(&ca.pem, certificate, BOTH);
        for versions in [BOTH, TLS12] {
            let good = ca.client(&["client.example.com"]);
            let session = handshake(server.clone(), client_config(&ca.pem, good, versions))
                .await
                .unwrap();
            assert!(session.client_certificate);
            assert_eq!(session.peer_id, None, "not a mesh identity");
        }

        let none = handshake(server.clone(), client(None)).await;
        assert!(none.is_err(), "no certificate: {none:?}");
        let other_ca = handshake(
            server.clone(),
            client(other.client(&["client.example.com"])),
        );
        assert!(other_ca.await.is_err(), "another CA's certificate");
        let err = handshake(server.clone(), client(ca.client(&["intruder.example.com"])))
            .await
            .unwrap_err();
        assert!(err.contains("NotValidForName"), "another SAN: {err}");

        // The roots are the `-cacert` secret's: the same client, refused under other roots.
        let server = crate::transport::tls::server(&tls, &credential(&ca, &other)).unwrap();
        let err = handshake(server, client(ca.client(&["client.example.com"]))).await;
        assert!(err.is_err(), "the CA is not the secret's: {err:?}");
    }

    #[tokio::test]
    async fn mutual_over_sds_without_sans_takes_any_client_of_the_roots() {
        use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
            CommonTlsContext, DownstreamTlsContext, common_tls_context,
        };
        let ca = Ca::new("gateway CA");
        // `validation_context_sds_secret_config` alone, and no certificate required.
        let context = DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![sds("kubernetes://gw")],
                validation_context_type: Some(
                    common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                        sds("kubernetes://gw-cacert"),
                    ),
                ),
                ..CommonTlsContext::default()
            }),
            ..DownstreamTlsContext::default()
        };
        let tls = downstream(tls_socket(&context), &Path::root())
            .unwrap()
            .unwrap();
        let server = crate::transport::tls::server(&tls, &credential(&ca, &ca)).unwrap();
        let session = handshake(server.clone(), client_config(&ca.pem, None, BOTH))
            .await
            .unwrap();
        assert!(!session.client_certificate);
        let any = ca.client(&["whoever.example.com"]);
        let session = handshake(server, client_config(&ca.pem, any, BOTH))
            .await
            .unwrap();
        assert!(session.client_certificate);
    }

    #[test]
    fn the_mesh_and_the_credentials_never_use_each_others_secrets() {
        use isthmus_identity::SpiffeId;
        use isthmus_identity::testing::TestCa;

        use crate::config::secret::Secret;
        use crate::config::tls::TlsContext;

        let ca = Ca::new("gateway CA");
        let mesh = TestCa::new("red.local");
        let svid =
            mesh.issue(&SpiffeId::parse("spiffe://red.local/ns/istio-system/sa/gw").unwrap());
        let svid = Secret::Certificate(Arc::new(svid));
        let bundles = Secret::TrustBundles(vec![mesh.bundle()]);
        let server = |tls: &DownstreamTls, config: &ProxyConfig| {
            crate::transport::tls::server(tls, config).unwrap_err()
        };

        // An edge server never presents the mesh's identity nor trusts the mesh's bundles.
        let gateway = credential_gateway(Some(&[]));
        let config = with_raw_secret(credential(&ca, &ca), "kubernetes://gw", svid.clone());
        let err = server(&gateway, &config);
        assert!(err.contains("is a SPIFFE certificate"), "{err}");
        let config = with_raw_secret(
            credential(&ca, &ca),
            "kubernetes://gw-cacert",
            bundles.clone(),
        );
        let err = server(&gateway, &config);
        assert!(err.contains("is SPIFFE trust bundles"), "{err}");
        // Nor a certificate as roots, nor roots as a certificate.
        let config = credential(&ca, &ca);
        let swapped = with_raw_secret(
            config.clone(),
            "kubernetes://gw",
            (*config.secrets["kubernetes://gw-cacert"]).clone(),
        );
        let err = server(&gateway, &swapped);
        assert!(err.contains("holds roots, not a certificate"), "{err}");

        // The mesh's TLS never presents a plain certificate nor trusts plain roots.
        let mesh_tls = DownstreamTls {
            context: TlsContext {
                certificate: Some("default".into()),
                validation: Some("ROOTCA".into()),
                peer_ids: Vec::new(),
                alpn: Vec::new(),
            },
            require_client_certificate: true,
            external: None,
        };
        let plain = (*config.secrets["kubernetes://gw"]).clone();
        let roots = (*config.secrets["kubernetes://gw-cacert"]).clone();
        let mesh_config = |certificate: &Secret, validation: &Secret| {
            let config = with_raw_secret(ProxyConfig::default(), "default", certificate.clone());
            with_raw_secret(config, "ROOTCA", validation.clone())
        };
        assert!(crate::transport::tls::server(&mesh_tls, &mesh_config(&svid, &bundles)).is_ok());
        let err = server(&mesh_tls, &mesh_config(&plain, &bundles));
        assert!(err.contains("is a plain certificate"), "{err}");
        let err = server(&mesh_tls, &mesh_config(&svid, &roots));
        assert!(err.contains("holds plain roots"), "{err}");
    }
}
