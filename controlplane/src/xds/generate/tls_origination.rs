//! TLS origination to servers outside the mesh: a `DestinationRule`'s `SIMPLE` or `MUTUAL`, as
//! Istio does it. The server's chain is verified as X.509 against the roots of
//! `caCertificates` (the system's roots when unset), its name against `subjectAltNames` (the
//! SNI when unset); `MUTUAL` presents `clientCertificate` and `privateKey`. The files are on
//! the proxy's machine and the proxy reads them; `isthmusd` only names them.

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

use super::pack;

/// The system's roots when a rule names none: the bundle Debian, Ubuntu, Alpine and Arch
/// install (Istio looks there first too).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Whether the rule's TLS is an origination to a server outside the mesh.
pub fn originates(settings: Option<&ClientTlsSettings>) -> bool {
    settings.is_some_and(|s| matches!(s.mode, TlsMode::Simple | TlsMode::Mutual))
}

/// The cluster's transport socket for `SIMPLE` or `MUTUAL` TLS to `host`.
pub fn upstream_tls(settings: &ClientTlsSettings, host: &str, alpn: &[&str]) -> TransportSocket {
    let insecure = settings.insecure_skip_verify == Some(true);
    let sni = match &settings.sni {
        Some(sni) => sni.clone(),
        // A wildcard host names no server: no SNI unless the rule gives one.
        None if host.starts_with('*') => String::new(),
        None => host.to_owned(),
    };
    let validation = (!insecure).then(|| CertificateValidationContext {
        trusted_ca: Some(file(
            settings.ca_certificates.as_deref().unwrap_or(SYSTEM_ROOTS),
        )),
        match_typed_subject_alt_names: settings
            .subject_alt_names
            .iter()
            .map(|san| san_matcher(san))
            .collect(),
        ..Default::default()
    });
    let certificates = match (
        &settings.mode,
        &settings.client_certificate,
        &settings.private_key,
    ) {
        (TlsMode::Mutual, Some(chain), Some(key)) => vec![TlsCertificate {
            certificate_chain: Some(file(chain)),
            private_key: Some(file(key)),
            ..Default::default()
        }],
        _ => Vec::new(),
    };
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv12 as i32,
                ..Default::default()
            }),
            tls_certificates: certificates,
            validation_context_type: validation
                .map(common_tls_context::ValidationContextType::ValidationContext),
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
