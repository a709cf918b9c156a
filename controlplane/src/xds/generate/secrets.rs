//! The SDS secrets of one proxy: its own certificate (issued by the mesh CA for its workload's
//! identity) and the trust bundles, each bound to its trust domain by Envoy's SPIFFE validator,
//! so that a peer mesh's root can never vouch for a local identity.

use isthmus_proto::envoy::envoy::config::core::v3::{
    DataSource, TypedExtensionConfig, data_source,
};
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use zeroize::Zeroizing;

use super::names::{ROOT_CA_SECRET, WORKLOAD_SECRET, peer_root_secret};
use super::pack;

/// A proxy's credentials and the roots it trusts, as PEM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySecrets {
    /// Leaf first, then intermediates. Empty until the certificate is issued.
    pub certificate_chain_pem: String,
    pub private_key_pem: Zeroizing<String>,
    /// Trust domain name (without `spiffe://`) to its roots.
    pub bundles: Vec<(String, String)>,
}

fn inline(bytes: &[u8]) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    })
}

impl ProxySecrets {
    /// The `default` and `ROOTCA` secrets. A proxy without a certificate yet gets only the
    /// bundles; Envoy keeps listeners that need `default` warming until it arrives.
    pub fn to_envoy(&self) -> Vec<Secret> {
        let mut secrets = Vec::with_capacity(2);
        if !self.certificate_chain_pem.is_empty() {
            secrets.push(Secret {
                name: WORKLOAD_SECRET.into(),
                r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: inline(self.certificate_chain_pem.as_bytes()),
                    private_key: inline(self.private_key_pem.as_bytes()),
                    ..Default::default()
                })),
            });
        }
        let domain = |(name, roots): &(String, String)| spiffe_cert_validator_config::TrustDomain {
            name: name.clone(),
            trust_bundle: inline(roots.as_bytes()),
            workload_trust_domain: String::new(),
        };
        // Each peer's bundle alone, for the federation gateways (the first bundle is ours).
        for bundle in self.bundles.iter().skip(1) {
            secrets.push(validation_secret(
                &peer_root_secret(&bundle.0),
                vec![domain(bundle)],
            ));
        }
        secrets.push(validation_secret(
            ROOT_CA_SECRET,
            self.bundles.iter().map(domain).collect(),
        ));
        secrets
    }
}

fn validation_secret(
    name: &str,
    trust_domains: Vec<spiffe_cert_validator_config::TrustDomain>,
) -> Secret {
    let validator = SpiffeCertValidatorConfig {
        trust_domains,
        trust_bundles: None,
    };
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                custom_validator_config: Some(TypedExtensionConfig {
                    name: "envoy.tls.cert_validator.spiffe".into(),
                    typed_config: Some(pack(&validator)),
                }),
                ..Default::default()
            },
        )),
    }
}
