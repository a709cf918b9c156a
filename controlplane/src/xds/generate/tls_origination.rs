//! TLS origination to servers outside the mesh: a `DestinationRule`'s `SIMPLE` or `MUTUAL`, as
//! Istio does it. The server's chain is verified as X.509 against the roots of
//! `caCertificates` (the system's roots when unset), its name against `subjectAltNames` (the
//! SNI when unset); `MUTUAL` presents `clientCertificate` and `privateKey`. The files are on
//! the proxy's machine and the proxy reads them; `isthmusd` only names them. With
//! `credentialName` (Kubernetes mode) the certificate and the roots come over SDS instead
//! (`credentials.rs`), the roots still the system's when the `Secret` has none.

use isthmus_api::networking::{ClientTlsSettings, TlsMode};
use isthmus_proto::envoy::envoy::config::core::v3::{
    DataSource, TransportSocket, data_source, transport_socket,
};
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, TlsCertificate,
    TlsParameters, UpstreamTlsContext, common_tls_context, subject_alt_name_matcher,
    tls_parameters,
};
use isthmus_proto::envoy::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};

use super::credentials::{certificate_secret, roots_secret};
use super::pack;
use super::tls::sds;
use crate::config::cluster::TlsCredential;

/// The system's roots when a rule names none: the bundle Debian, Ubuntu, Alpine and Arch
/// install (Istio looks there first too).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Whether the rule's TLS is an origination to a server outside the mesh.
pub fn originates(settings: Option<&ClientTlsSettings>) -> bool {
    settings.is_some_and(|s| matches!(s.mode, TlsMode::Simple | TlsMode::Mutual))
}

/// The cluster's transport socket for `SIMPLE` or `MUTUAL` TLS to `host`; `credential` is what
/// the rule's `credentialName` holds in the proxy's namespace.
pub fn upstream_tls(
    settings: &ClientTlsSettings,
    host: &str,
    alpn: &[&str],
    credential: Option<&TlsCredential>,
) -> TransportSocket {
    let insecure = settings.insecure_skip_verify == Some(true);
    let sni = match &settings.sni {
        Some(sni) => sni.clone(),
        // A wildcard host names no server: no SNI unless the rule gives one.
        None if host.starts_with('*') => String::new(),
        None => host.to_owned(),
    };
    let sans: Vec<SubjectAltNameMatcher> = settings
        .subject_alt_names
        .iter()
        .map(|san| san_matcher(san))
        .collect();
    // The credential's roots over SDS; also when the Secret is missing altogether, so that
    // the connections fail until it comes rather than trusting the system's roots meanwhile.
    let secret_roots = settings
        .credential_name
        .as_ref()
        .filter(|_| credential.is_none_or(|c| c.roots.is_some()));
    let validation = match (insecure, secret_roots) {
        (true, _) => None,
        (false, Some(name)) => Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(&roots_secret(name))),
                    ..Default::default()
                },
            ),
        ),
        (false, None) => Some(
            common_tls_context::ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(file(
                        settings.ca_certificates.as_deref().unwrap_or(SYSTEM_ROOTS),
                    )),
                    match_typed_subject_alt_names: sans,
                    ..Default::default()
                },
            ),
        ),
    };
    let mutual = settings.mode == TlsMode::Mutual;
    let certificates = match (&settings.client_certificate, &settings.private_key) {
        (Some(chain), Some(key)) if mutual => vec![TlsCertificate {
            certificate_chain: Some(file(chain)),
            private_key: Some(file(key)),
            ..Default::default()
        }],
        _ => Vec::new(),
    };
    // A missing Secret still names its SDS secret: the cluster's connections fail until it
    // comes, rather than going out without the certificate.
    let certificate_sds = settings
        .credential_name
        .as_ref()
        .filter(|_| mutual)
        .map(|name| vec![sds(&certificate_secret(name))])
        .unwrap_or_default();
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv12 as i32,
                ..Default::default()
            }),
            tls_certificates: certificates,
            tls_certificate_sds_secret_configs: certificate_sds,
            validation_context_type: validation,
            alpn_protocols: alpn.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        }),
        // Without `subjectAltNames`, the server's certificate must be valid for the SNI sent.
        auto_sni_san_validation: !insecure
            && settings.subject_alt_names.is_empty()
            && !sni.is_empty(),
        sni,
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
    }
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_owned())),
        ..Default::default()
    }
}

/// An exact match on a SAN: a URI (`spiffe://…`), an IP address, or a DNS name.
pub(super) fn san_matcher(san: &str) -> SubjectAltNameMatcher {
    let san_type = if san.contains("://") {
        subject_alt_name_matcher::SanType::Uri
    } else if san.parse::<std::net::IpAddr>().is_ok() {
        subject_alt_name_matcher::SanType::IpAddress
    } else {
        subject_alt_name_matcher::SanType::Dns
    };
    SubjectAltNameMatcher {
        san_type: san_type as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(san.to_owned())),
            ignore_case: false,
        }),
        oid: String::new(),
    }
}
