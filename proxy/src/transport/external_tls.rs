//! TLS to servers outside the mesh (a `DestinationRule`'s `SIMPLE` or `MUTUAL`): the server's
//! chain is verified by WebPKI against the cluster's roots (once), then its certificate is
//! checked for the SNI or for one of the cluster's SANs; the client certificate, when there is
//! one, is a plain certificate and key. Nothing of the mesh's identity is sent or expected.
//!
//! The roots and the certificate are PEM (files or inline) or a credential's secrets over SDS
//! (`kubernetes://NAME`: `Secret::PlainCertificate`; `kubernetes://NAME-cacert`:
//! `Secret::Roots`), never the mesh's certificate or trust bundles. The PEM files are read
//! when the cluster's TLS is built (at each configuration change); a file that cannot be read,
//! or a secret not received yet, makes the cluster's connections fail with its name.

use std::sync::Arc;

use isthmus_identity::CertInfo;
use isthmus_identity::pem::{certs_from_pem, key_from_pem};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::tls::TlsError;
use crate::config::ProxyConfig;
use crate::config::secret::Secret;
use crate::config::tls::{
    ExternalCertificate, ExternalRoots, ExternalTls, Pem, SanMatch, ServerNameCheck,
};

/// The client configuration of a cluster's TLS to a server outside the mesh; `config`: the
/// secrets a credential's roots or certificate come from.
pub fn client(
    external: &ExternalTls,
    alpn: &[String],
    config: &ProxyConfig,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(isthmus_identity::provider());
    let roots = match &external.roots {
        // Istio's `insecureSkipVerify`: no roots, nothing verified but the handshake's
        // signatures (the session is with the holder of the certificate it shows).
        None => None,
        Some(roots) => Some(Arc::new(external_roots(roots, config)?)),
    };
    let verifier: Arc<dyn ServerCertVerifier> = Arc::new(NamedServer {
        roots,
        provider: provider.clone(),
        check: external.server_name.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut client = match &external.client_certificate {
        None => builder.with_no_client_auth(),
        Some(certificate) => {
            let (chain, key) = certificate_and_key(certificate, config)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{}: {e}", certificate_origin(certificate)))?
        }
    };
    client.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(client)
}

/// The chain and key of a certificate outside the mesh: PEM read now, or a credential's plain
/// certificate. The mesh's certificate is refused: its identity is never shown outside it.
pub(super) fn certificate_and_key(
    certificate: &ExternalCertificate,
    config: &ProxyConfig,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    match certificate {
        ExternalCertificate::Pem { chain, key } => Ok((read_certs(chain)?, read_key(key)?)),
        ExternalCertificate::Sds(name) => match config.secrets.get(name).map(|s| &**s) {
            Some(Secret::PlainCertificate(plain)) => Ok((plain.chain().to_vec(), plain.key())),
            Some(Secret::Certificate(cert)) => Err(format!(
                "secret {name:?} is a SPIFFE certificate ({}): TLS outside the mesh presents a \
                 plain certificate, never a workload identity",
                cert.spiffe_id()
            )),
            Some(Secret::TrustBundles(_) | Secret::Roots(_)) => {
                Err(format!("secret {name:?} holds roots, not a certificate"))
            }
            None => Err(format!("secret {name:?} not received yet")),
        },
    }
}

/// Where a certificate outside the mesh comes from, for messages.
pub(super) fn certificate_origin(certificate: &ExternalCertificate) -> String {
    match certificate {
        ExternalCertificate::Pem { chain, key } => {
            format!("{} with {}", origin(chain), origin(key))
        }
        ExternalCertificate::Sds(name) => format!("secret {name:?}"),
    }
}

/// Roots outside the mesh: PEM read now, or a credential's roots. The mesh's trust bundles are
/// refused: they vouch for SPIFFE identities, each in its own trust domain, not for names.
pub(super) fn external_roots(
    roots: &ExternalRoots,
    config: &ProxyConfig,
) -> Result<RootCertStore, TlsError> {
    match roots {
        ExternalRoots::Pem(pem) => root_store(pem),
        ExternalRoots::Sds(name) => match config.secrets.get(name).map(|s| &**s) {
            Some(Secret::Roots(roots)) => Ok(roots.store()),
            Some(Secret::TrustBundles(_)) => Err(format!(
                "secret {name:?} is SPIFFE trust bundles: TLS outside the mesh verifies against \
                 plain roots (trusted_ca)"
            )),
            Some(Secret::Certificate(_) | Secret::PlainCertificate(_)) => {
                Err(format!("secret {name:?} is a certificate, not roots"))
            }
            None => Err(format!("secret {name:?} not received yet")),
        },
    }
}

/// Where roots outside the mesh come from, for messages.
pub(super) fn roots_origin(roots: &ExternalRoots) -> String {
    match roots {
        ExternalRoots::Pem(pem) => origin(pem),
        ExternalRoots::Sds(name) => format!("secret {name:?}"),
    }
}

/// The roots in `pem`; none usable is an error.
pub(super) fn root_store(pem: &Pem) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(read_certs(pem)?);
    if added == 0 {
        return Err(format!("{}: no usable root certificate", origin(pem)));
    }
    Ok(store)
}

/// Where PEM comes from, for messages: the file's path.
pub(super) fn origin(pem: &Pem) -> String {
    match pem {
        Pem::File(path) => path.display().to_string(),
        Pem::Inline(_) => "inline PEM".to_owned(),
    }
}

fn bytes(pem: &Pem) -> Result<Vec<u8>, TlsError> {
    match pem {
        Pem::File(path) => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        }
        Pem::Inline(bytes) => Ok(bytes.clone()),
    }
}

pub(super) fn read_certs(pem: &Pem) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_from_pem(&bytes(pem)?, &origin(pem)).map_err(|e| e.to_string())
}

pub(super) fn read_key(pem: &Pem) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_from_pem(&bytes(pem)?, &origin(pem)).map_err(|e| e.to_string())
}

/// WebPKI's chain verification against the cluster's roots, then the name check the cluster
/// asks for; without roots, neither.
#[derive(Debug)]
struct NamedServer {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
    check: ServerNameCheck,
}

/// Whether the certificate carries `san`: names and addresses by WebPKI's rules; a DNS SAN
/// with a `*` and a URI compared as written (as Envoy's exact matchers do).
pub(super) fn carries(
    cert: &ParsedCertificate<'_>,
    der: &CertificateDer<'_>,
    san: &SanMatch,
) -> bool {
    let listed = || CertInfo::parse(der).ok();
    match san {
        SanMatch::Dns(name) if name.contains('*') => {
            listed().is_some_and(|info| info.dns_sans.iter().any(|d| d == name))
        }
        SanMatch::Dns(name) => ServerName::try_from(name.as_str())
            .is_ok_and(|name| verify_server_name(cert, &name).is_ok()),
        SanMatch::Ip(ip) => verify_server_name(cert, &ServerName::from(*ip)).is_ok(),
        SanMatch::Uri(uri) => listed().is_some_and(|info| info.uri_sans.iter().any(|u| u == uri)),
    }
}

impl ServerCertVerifier for NamedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        sni: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match &self.check {
            ServerNameCheck::Sni => verify_server_name(&cert, sni)?,
            ServerNameCheck::ChainOnly => {}
            ServerNameCheck::OneOf(sans) => {
                if !sans.iter().any(|san| carries(&cert, end_entity, san)) {
                    return Err(Error::InvalidCertificate(CertificateError::NotValidForName));
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use isthmus_identity::pem::{certs_from_pem, key_from_pem};
    use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, UpstreamTlsContext, common_tls_context,
    };
    use rustls::server::WebPkiClientVerifier;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::config::check::Path;
    use crate::config::tls::{UpstreamTls, upstream};
    use crate::transport::testing::{
        Ca, certificate_secret, dns_sans, roots_secret, sds, tls_socket, with_secrets,
    };

    /// A server outside the mesh, `api.example.com`, that requires a client certificate from
    /// `clients`.
    fn api_server(ca: &Ca, clients: &Ca) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(isthmus_identity::provider());
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(certs_from_pem(clients.pem.as_bytes(), "roots").unwrap());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let (cert, key) = ca.server(&["api.example.com"]);
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certs_from_pem(cert.as_bytes(), "cert").unwrap(),
                key_from_pem(key.as_bytes(), "key").unwrap(),
            )
            .unwrap();
        Arc::new(config)
    }

    /// A `DestinationRule` with `credentialName: egress` as isthmusd writes it, converted by
    /// the proxy: `sni`, the client certificate `kubernetes://egress` (`MUTUAL`), the roots
    /// `kubernetes://egress-cacert`, with the rule's SANs or else the SNI checked.
    fn credential_origination(mutual: bool, sans: &[&str]) -> UpstreamTls {
        let validation = if sans.is_empty() {
            common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                "kubernetes://egress-cacert",
            ))
        } else {
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: dns_sans(sans),
                        ..CertificateValidationContext::default()
                    }),
                    validation_context_sds_secret_config: Some(sds("kubernetes://egress-cacert")),
                    ..Default::default()
                },
            )
        };
        let context = UpstreamTlsContext {
            sni: "api.example.com".into(),
            auto_sni_san_validation: sans.is_empty(),
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: if mutual {
                    vec![sds("kubernetes://egress")]
                } else {
                    Vec::new()
                },
                validation_context_type: Some(validation),
                ..CommonTlsContext::default()
            }),
            ..UpstreamTlsContext::default()
        };
        upstream(tls_socket(&context), &Path::root())
            .unwrap()
            .unwrap()
    }

    /// The credential `egress`: a client certificate from `ca`, and `roots` as its `-cacert`.
    fn credential(ca: &Ca, roots: &Ca) -> ProxyConfig {
        with_secrets([
            (
                "kubernetes://egress",
                certificate_secret(
                    "kubernetes://egress",
                    &ca.client(&["client.example.com"]).unwrap(),
                ),
            ),
            (
                "kubernetes://egress-cacert",
                roots_secret("kubernetes://egress-cacert", &roots.pem),
            ),
        ])
    }

    /// A handshake to the cluster's SNI and a first message: the client certificate's SANs
    /// the server saw, or both sides' errors.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        tls: &UpstreamTls,
    ) -> Result<Vec<String>, String> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let serve = async {
            let mut tls = TlsAcceptor::from(server)
                .accept(server_io)
                .await
                .map_err(|e| e.to_string())?;
            let mut ping = [0; 4];
            tls.read_exact(&mut ping).await.map_err(|e| e.to_string())?;
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .ok_or("no certificate")?[0]
                .clone();
            Ok::<_, String>(CertInfo::parse(&leaf).unwrap().dns_sans)
        };
        let call = async {
            let name = ServerName::try_from(tls.sni.clone()).unwrap();
            let mut tls = TlsConnector::from(client)
                .connect(name, client_io)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(tls)
        };
        match tokio::join!(serve, call) {
            (Ok(sans), Ok(_)) => Ok(sans),
            (served, called) => Err(format!(
                "server: {:?}; client: {:?}",
                served.err(),
                called.err()
            )),
        }
    }

    #[tokio::test]
    async fn a_credential_certificate_reaches_a_server_that_requires_one() {
        let (ca, other) = (Ca::new("partner CA"), Ca::new("another CA"));
        let server = api_server(&ca, &ca);
        let tls = credential_origination(true, &[]);
        assert_eq!(
            tls.secret_names().collect::<Vec<_>>(),
            ["kubernetes://egress", "kubernetes://egress-cacert"],
            "what the proxy subscribes to"
        );
        assert_eq!(
            tls.external.as_ref().map(|e| &e.server_name),
            Some(&ServerNameCheck::Sni)
        );

        let err = crate::transport::tls::client(&tls, &ProxyConfig::default()).unwrap_err();
        assert_eq!(
            err,
            r#"secret "kubernetes://egress-cacert" not received yet"#
        );

        let client = crate::transport::tls::client(&tls, &credential(&ca, &ca)).unwrap();
        let sans = handshake(server.clone(), client, &tls).await.unwrap();
        assert_eq!(sans, ["client.example.com"], "the credential's certificate");

        // The server is verified against the `-cacert` secret's roots.
        let client = crate::transport::tls::client(&tls, &credential(&ca, &other)).unwrap();
        let err = handshake(server.clone(), client, &tls).await.unwrap_err();
        assert!(
            err.contains("client: Some(\"invalid peer certificate: UnknownIssuer\")"),
            "{err}"
        );

        // SIMPLE: no certificate, which this server refuses.
        let simple = credential_origination(false, &[]);
        let client = crate::transport::tls::client(&simple, &credential(&ca, &ca)).unwrap();
        let err = handshake(server, client, &simple).await.unwrap_err();
        assert!(
            err.contains("server: Some(\"peer sent no certificates\")"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_rules_sans_are_checked_in_place_of_the_sni() {
        let ca = Ca::new("partner CA");
        let server = api_server(&ca, &ca);
        let config = credential(&ca, &ca);

        let tls = credential_origination(true, &["api.example.com", "api.example.org"]);
        let client = crate::transport::tls::client(&tls, &config).unwrap();
        assert!(handshake(server.clone(), client, &tls).await.is_ok());

        let tls = credential_origination(true, &["other.example.com"]);
        let client = crate::transport::tls::client(&tls, &config).unwrap();
        let err = handshake(server, client, &tls).await.unwrap_err();
        assert!(
            err.contains("client: Some(\"invalid peer certificate: NotValidForName\")"),
            "{err}"
        );
    }
}
