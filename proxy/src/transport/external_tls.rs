//! TLS to servers outside the mesh (a `DestinationRule`'s `SIMPLE` or `MUTUAL`): the server's
//! chain is verified by WebPKI against the cluster's roots (once), then its certificate is
//! checked for the SNI or for one of the cluster's SANs; the client certificate, when there is one, is
//! a plain certificate and key. Nothing of the mesh's identity is sent or expected.
//!
//! The PEM files are read when the cluster's TLS is built (at each configuration change); a
//! file that cannot be read makes the cluster's connections fail with the file's name.

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
use crate::config::tls::{ExternalTls, Pem, SanMatch, ServerNameCheck};

/// The client configuration of a cluster's TLS to a server outside the mesh.
pub fn client(external: &ExternalTls, alpn: &[String]) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(isthmus_identity::provider());
    let roots = match &external.roots {
        // Istio's `insecureSkipVerify`: no roots, nothing verified but the handshake's
        // signatures (the session is with the holder of the certificate it shows).
        None => None,
        Some(roots) => Some(Arc::new(root_store(roots)?)),
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
    let mut config = match &external.client_certificate {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(read_certs(chain)?, read_key(key)?)
            .map_err(|e| format!("{} with {}: {e}", origin(chain), origin(key)))?,
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
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
