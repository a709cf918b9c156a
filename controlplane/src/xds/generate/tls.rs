//! TLS contexts of sidecars: certificates and trust bundles come from SDS over the same ADS
//! stream, so a rotation is one SDS push and no listener or cluster changes. Proxyless gRPC
//! clients get the same contexts with gRPC's certificate provider in place of SDS.

use isthmus_proto::envoy::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, TransportSocket, config_source,
    transport_socket,
};
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsParameters, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher, tls_parameters,
};
use isthmus_proto::envoy::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use isthmus_proto::envoy::google::protobuf::BoolValue;

use super::names::{ROOT_CA_SECRET, WORKLOAD_SECRET};
use super::pack;

/// Configuration delivered over the proxy's ADS stream.
pub fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

pub(super) fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ads()),
    }
}

/// The proxy's certificate, and peers verified against the trust bundles (one per trust
/// domain), optionally limited to the given SPIFFE IDs.
fn common(peer_ids: &[String], alpn: &[&str]) -> CommonTlsContext {
    common_with(peer_ids, alpn, ROOT_CA_SECRET)
}

/// As [`common`], verifying peers against the bundles of the SDS secret `roots` only.
fn common_with(peer_ids: &[String], alpn: &[&str], roots: &str) -> CommonTlsContext {
    let sans = peer_ids
        .iter()
        .map(|id| SubjectAltNameMatcher {
            san_type: subject_alt_name_matcher::SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(id.clone())),
                ignore_case: false,
            }),
            oid: String::new(),
        })
        .collect();
    CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv12 as i32,
            ..Default::default()
        }),
        tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(roots)),
                    ..Default::default()
                },
            ),
        ),
        alpn_protocols: alpn.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    }
}

/// mTLS termination: a client certificate from a trusted domain is required.
pub fn downstream_mtls(alpn: &[&str]) -> TransportSocket {
    downstream_mtls_with(&[], alpn)
}

/// mTLS termination for the given local identities only (no ALPN: what is carried inside is
/// another TLS session).
pub fn downstream_mtls_for(peer_ids: &[String]) -> TransportSocket {
    downstream_mtls_with(peer_ids, &[])
}

fn downstream_mtls_with(peer_ids: &[String], alpn: &[&str]) -> TransportSocket {
    let context = DownstreamTlsContext {
        common_tls_context: Some(common(peer_ids, alpn)),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
    }
}

/// mTLS origination to a peer that must present one of `peer_ids`.
pub fn upstream_mtls(sni: &str, peer_ids: &[String], alpn: &[&str]) -> TransportSocket {
    let context = UpstreamTlsContext {
        common_tls_context: Some(common(peer_ids, alpn)),
        sni: sni.to_owned(),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
    }
}

/// Federation ingress: the peer's mTLS, verified against that peer's bundle only
/// (`peer_roots`), limited to its `clientID` when set.
pub fn downstream_peer_mtls(peer_roots: &str, client_ids: &[String]) -> TransportSocket {
    let context = DownstreamTlsContext {
        common_tls_context: Some(common_with(client_ids, &["h2"], peer_roots)),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
    }
}

/// Federation egress: mTLS to the peer's ingress, verified against that peer's bundle only.
pub fn upstream_peer_mtls(sni: &str, peer_roots: &str) -> TransportSocket {
    let context = UpstreamTlsContext {
        common_tls_context: Some(common_with(&[], &["h2"], peer_roots)),
        sni: sni.to_owned(),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
    }
}

/// Whether `socket` is the mesh's mTLS (SDS certificates and bundles), not an origination to
/// a server outside the mesh (`tls_origination.rs`).
pub fn is_mesh_mtls(socket: &TransportSocket) -> bool {
    use prost::Message as _;

    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        return false;
    };
    UpstreamTlsContext::decode(any.value.as_slice())
        .ok()
        .and_then(|c| c.common_tls_context)
        .is_some_and(|c| {
            matches!(
                c.validation_context_type,
                Some(common_tls_context::ValidationContextType::CombinedValidationContext(_))
            )
        })
}

/// A sidecar's upstream mTLS as a proxyless gRPC client with xDS credentials does it (gRPC's
/// A29): its certificate and the roots from the bootstrap's `default` certificate provider
/// (`default` and `ROOTCA`), the same peer identities, gRPC's own ALPN; `None` when `socket` is
/// not an upstream TLS context.
pub fn for_grpc(socket: &TransportSocket) -> Option<TransportSocket> {
    use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::CertificateProviderPluginInstance;
    use prost::Message as _;

    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        return None;
    };
    let sidecar = UpstreamTlsContext::decode(any.value.as_slice()).ok()?;
    let sans: Vec<StringMatcher> = match sidecar
        .common_tls_context
        .and_then(|c| c.validation_context_type)
    {
        Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) => c
            .default_validation_context
            .map(|v| {
                v.match_typed_subject_alt_names
                    .into_iter()
                    .filter_map(|m| m.matcher)
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let provider = |certificate_name: &str| CertificateProviderPluginInstance {
        instance_name: "default".into(),
        certificate_name: certificate_name.into(),
    };
    // gRPC reads the untyped SAN matchers (any SAN type: the peers' are URIs).
    #[allow(deprecated)]
    let validation = CertificateValidationContext {
        ca_certificate_provider_instance: Some(provider("ROOTCA")),
        match_subject_alt_names: sans,
        ..Default::default()
    };
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_provider_instance: Some(provider("default")),
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContext(validation),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
    })
}
