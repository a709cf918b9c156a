//! Test fixtures of TLS outside the mesh: a certificate authority of an operator's own (not the
//! mesh's), and the SDS secrets of Istio's `credentialName` (`kubernetes://NAME`,
//! `kubernetes://NAME-cacert`) converted as the proxy converts them.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use isthmus_proto::envoy::envoy::config::core::v3::{
    AggregatedConfigSource, ConfigSource, DataSource, TransportSocket, config_source, data_source,
    transport_socket,
};
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, SdsSecretConfig, Secret as EnvoySecret, SubjectAltNameMatcher,
    TlsCertificate, secret, subject_alt_name_matcher,
};
use isthmus_proto::envoy::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use isthmus_proto::envoy::google::protobuf::Any;
use prost::{Message, Name};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::config::{ProxyConfig, Resource, XdsType, convert};

/// A certificate authority outside any mesh, as an operator's PKI would be.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A leaf for `names` (DNS names, IP addresses or URIs): its certificate and key, PEM.
    pub fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = names
            .iter()
            .map(|name| {
                if name.contains("://") {
                    rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*name).unwrap())
                } else if let Ok(ip) = name.parse() {
                    rcgen::SanType::IpAddress(ip)
                } else {
                    rcgen::SanType::DnsName(rcgen::string::Ia5String::try_from(*name).unwrap())
                }
            })
            .collect();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn server(&self, names: &[&str]) -> (String, String) {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    pub fn client(&self, names: &[&str]) -> Option<(String, String)> {
        Some(self.issue(names, ExtendedKeyUsagePurpose::ClientAuth))
    }
}

fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(pem.as_bytes().to_vec())),
        ..DataSource::default()
    })
}

/// An SDS secret as the control plane sends it, converted by the proxy's own conversion.
fn converted(secret: EnvoySecret) -> Resource {
    let any = Any {
        type_url: EnvoySecret::type_url(),
        value: secret.encode_to_vec(),
    };
    convert(XdsType::Secret, &secret.name, &any).unwrap()
}

/// `kubernetes://NAME`: a certificate and its key.
pub fn certificate_secret(name: &str, (cert, key): &(String, String)) -> Resource {
    converted(EnvoySecret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(cert),
            private_key: inline(key),
            ..TlsCertificate::default()
        })),
    })
}

/// `kubernetes://NAME-cacert`: roots.
pub fn roots_secret(name: &str, roots: &str) -> Resource {
    converted(EnvoySecret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(roots),
                ..CertificateValidationContext::default()
            },
        )),
    })
}

/// A configuration holding these secrets under their names.
pub fn with_secrets(secrets: impl IntoIterator<Item = (&'static str, Resource)>) -> ProxyConfig {
    let mut config = ProxyConfig::default();
    for (name, secret) in secrets {
        config.insert(name.to_owned(), secret);
    }
    config
}

/// `config` with the secret `name` replaced by `secret` as it is (not converted).
pub fn with_raw_secret(
    mut config: ProxyConfig,
    name: &str,
    secret: crate::config::secret::Secret,
) -> ProxyConfig {
    config.secrets.insert(name.to_owned(), Arc::new(secret));
    config
}

/// A secret named over SDS on the ADS stream, as the control plane names it.
pub fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                AggregatedConfigSource {},
            )),
            ..ConfigSource::default()
        }),
    }
}

/// A TLS transport socket with `context` (a `DownstreamTlsContext` or `UpstreamTlsContext`).
pub fn tls_socket<M: Message + Name>(context: &M) -> Option<TransportSocket> {
    Some(TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
            type_url: M::type_url(),
            value: context.encode_to_vec(),
        })),
    })
}

/// Exact DNS SAN matchers.
pub fn dns_sans(names: &[&str]) -> Vec<SubjectAltNameMatcher> {
    names
        .iter()
        .map(|name| SubjectAltNameMatcher {
            san_type: subject_alt_name_matcher::SanType::Dns as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact((*name).to_owned())),
                ignore_case: false,
            }),
            oid: String::new(),
        })
        .collect()
}
