//! rustls configurations for mesh mTLS: both sides verify the peer as an X.509 SVID against the
//! bundle of the peer's own trust domain, then check it against a policy.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::bundle::TrustBundles;
use super::cert::PeerCert;
use super::sessions::TicketStore;
use super::spiffe::{SpiffeId, TrustDomain};
use super::verify::{Usage, VerifyError, check_still_valid, verify_svid};

/// Trust bundles shared by every verifier of a process; replacing them takes effect at the next
/// handshake.
pub type SharedBundles = Arc<ArcSwap<TrustBundles>>;

/// Wraps bundles for sharing.
pub fn shared_bundles(bundles: TrustBundles) -> SharedBundles {
    Arc::new(ArcSwap::from_pointee(bundles))
}

/// Which verified identities a connection accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPolicy {
    /// Any identity that verifies against its trust domain's bundle.
    AnyTrusted,
    /// Only identities of this trust domain.
    TrustDomain(TrustDomain),
    /// Only these identities.
    OneOf(Vec<SpiffeId>),
}

impl PeerPolicy {
    fn check(&self, id: &SpiffeId) -> Result<(), VerifyError> {
        let ok = match self {
            Self::AnyTrusted => true,
            Self::TrustDomain(td) => id.trust_domain() == td,
            Self::OneOf(ids) => ids.contains(id),
        };
        if ok {
            return Ok(());
        }
        let expected = match self {
            Self::AnyTrusted => "any trusted identity".to_owned(),
            Self::TrustDomain(td) => format!("an identity of trust domain {td}"),
            Self::OneOf(ids) => ids
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
        };
        Err(VerifyError::UnexpectedIdentity {
            actual: id.clone(),
            expected,
        })
    }
}

/// Verifies peers as SPIFFE identities. One type serves as rustls' client-certificate verifier
/// (we are the server) and server-certificate verifier (we are the client).
#[derive(Debug)]
pub struct SpiffeVerifier {
    bundles: SharedBundles,
    policy: PeerPolicy,
    /// Server side only: whether a client without a certificate is refused.
    require_client_cert: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeVerifier {
    pub fn new(bundles: SharedBundles, policy: PeerPolicy) -> Self {
        Self {
            bundles,
            policy,
            require_client_cert: true,
            algorithms: provider().signature_verification_algorithms,
        }
    }

    /// Server side: also accept clients that present no certificate (PERMISSIVE-style use, or a
    /// CA that authenticates bootstrap callers by token).
    pub fn allow_anonymous_clients(mut self) -> Self {
        self.require_client_cert = false;
        self
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<SpiffeId, rustls::Error> {
        let bundles = self.bundles.load();
        verify_svid(&bundles, end_entity, intermediates, now, usage)
            .and_then(|id| self.policy.check(&id).map(|()| id))
            .map_err(into_rustls_error)
    }
}

/// The verification error carried inside a rustls error.
fn into_rustls_error(e: VerifyError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(e),
    )))
}

/// Extracts our [`VerifyError`] from a rustls error (or an I/O error wrapping one), if it is one.
pub fn verify_error_of<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a VerifyError> {
    let mut current: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
            err.downcast_ref::<rustls::Error>()
        {
            return other.0.downcast_ref::<VerifyError>();
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            current = Some(inner);
            continue;
        }
        current = err.source();
    }
    None
}

impl ClientCertVerifier for SpiffeVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.require_client_cert
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would list every federated root to any caller; SVID clients do not need them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, Usage::ClientAuth)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    /// The server name (SNI) plays no part: the identity is the SPIFFE ID, as in Istio.
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, Usage::ServerAuth)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The crypto provider of every Isthmus TLS configuration: ring, with the AES-128-GCM suites
/// preferred, as BoringSSL (Envoy) and Go order them. ring's own order puts AES-256-GCM with
/// SHA-384 first; TLS 1.3 derives every key of a handshake with HMAC over the suite's hash, and
/// a resumed handshake's profile had SHA-512 blocks (SHA-384's) in 13 % of its samples, where
/// SHA-256 runs on the CPU's SHA extensions.
pub fn provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        !matches!(
            suite.suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    provider
}

/// A server configuration presenting `certs` and verifying clients with `verifier`.
pub fn server_config(
    certs: Arc<dyn rustls::server::ResolvesServerCert>,
    verifier: Arc<SpiffeVerifier>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    // No resumption unless `enable_server_resumption` turns it on (for configurations replaced
    // whenever their bundles or policy change): every connection is verified against the trust
    // bundles and policy in force now, so a bundle rotation or a removed peer takes effect at
    // the next connection.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client configuration verifying the server with `verifier` and presenting `certs`, if any.
pub fn client_config(
    certs: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
    verifier: Arc<SpiffeVerifier>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match certs {
        Some(certs) => builder.with_client_cert_resolver(certs),
        None => builder.with_no_client_auth(),
    };
    // See `server_config`: no resumption.
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Lets a server configuration resume TLS sessions: stateless tickets, encrypted under keys of
/// this configuration alone, so a session resumes only with the verifier that checked its
/// client. One ticket per handshake, resumed or not: a connection uses one and brings one, so a
/// client's tickets grow to the number of connections it opens at once (every full handshake
/// adds one) and then stay there. rustls' default of two cost 5 % more CPU per connection in the
/// churn benchmark, for no more resumptions.
///
/// Resumption skips the client's certificate, so it is only for a configuration whose verifier
/// never changes (the proxy builds a new configuration, with new ticket keys, when a bundle or
/// the peer policy changes), and each resumed connection's peer goes through [`verified_peer`].
/// A TLS 1.2 client gets tickets too (as from Envoy): its session's master secret is in the
/// ticket, so the session is only as secret as the ticket keys, which stay in memory, rotate
/// every 6 hours (a ticket lasts up to 12) and are replaced with every new configuration.
pub fn enable_server_resumption(config: &mut rustls::ServerConfig) -> Result<(), rustls::Error> {
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.send_tls13_tickets = 1;
    Ok(())
}

/// Lets a client configuration resume TLS 1.3 sessions with the servers it reaches, under the
/// conditions of [`enable_server_resumption`]. rustls offers a session only to a configuration
/// with the verifier that checked its server. TLS 1.3 resumption keeps forward secrecy (the
/// PSK is combined with a new key exchange); TLS 1.2 sessions are not resumed.
/// Tickets go to a [`TicketStore`] of this configuration, which keeps more per server than
/// rustls' own store.
pub fn enable_client_resumption(config: &mut rustls::ClientConfig) {
    config.resumption = rustls::client::Resumption::store(Arc::new(TicketStore::default()))
        .tls12_resumption(rustls::client::Tls12Resumption::Disabled);
}

/// The verified SPIFFE ID of an established connection's peer, if it presented a certificate.
///
/// After a full handshake the verifier has just checked the chain. After a resumed one nothing
/// has: the chain is the one the session was first verified with, so it is checked again at
/// `now`, and an expired certificate is refused as a handshake would refuse it (the error
/// carries the [`VerifyError`], see [`verify_error_of`]).
pub fn verified_peer(
    conn: &rustls::CommonState,
    now: SystemTime,
) -> Result<Option<SpiffeId>, rustls::Error> {
    let Some(chain) = conn.peer_certificates().filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let verified_now = matches!(
        conn.handshake_kind(),
        Some(rustls::HandshakeKind::Full | rustls::HandshakeKind::FullWithHelloRetryRequest)
    );
    if !verified_now {
        return check_still_valid(chain, now)
            .map(Some)
            .map_err(into_rustls_error);
    }
    Ok(PeerCert::parse(&chain[0]).ok().map(|c| c.id))
}

/// The SPIFFE ID of an established connection's peer (already verified during the handshake).
/// For a configuration that resumes sessions, use [`verified_peer`].
pub fn peer_identity(conn: &rustls::CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    PeerCert::parse(leaf).ok().map(|c| c.id)
}
