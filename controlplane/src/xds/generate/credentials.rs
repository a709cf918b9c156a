//! `credentialName` (Kubernetes mode): a `Secret` of the proxy's own namespace served over SDS
//! under Istio's names, `kubernetes://<name>` (certificate and key) and
//! `kubernetes://<name>-cacert` (roots: the `Secret`'s `ca.crt`, or the `Secret`
//! `<name>-cacert`'s). A proxy is sent only the credentials its own listeners and clusters
//! name, and only from its namespace.

use std::collections::BTreeSet;

use isthmus_proto::envoy::envoy::config::core::v3::{DataSource, data_source};
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};

use crate::config::cluster::TlsCredential;
use crate::model::MeshModel;

/// The SDS name of credential `name`'s certificate and key.
pub fn certificate_secret(name: &str) -> String {
    format!("kubernetes://{name}")
}

/// The SDS name of credential `name`'s roots.
pub fn roots_secret(name: &str) -> String {
    format!("kubernetes://{name}-cacert")
}

/// What `namespace`'s `Secret` `name` holds, if anything.
pub fn lookup(model: &MeshModel, namespace: &str, name: &str) -> Option<TlsCredential> {
    model.config.cluster().credential(namespace, name)
}

/// Whether the credential has a certificate with its key.
pub fn has_certificate(credential: &TlsCredential) -> bool {
    credential.certificate_chain.is_some() && credential.private_key.is_some()
}

/// The SDS secrets of the credentials `names` for a proxy in `namespace` (those that exist).
pub fn secrets(model: &MeshModel, namespace: &str, names: &BTreeSet<String>) -> Vec<Secret> {
    let inline = |bytes: &[u8]| {
        Some(DataSource {
            specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
            ..Default::default()
        })
    };
    let mut out = Vec::new();
    for name in names {
        let Some(credential) = lookup(model, namespace, name) else {
            continue;
        };
        if let (Some(chain), Some(key)) = (&credential.certificate_chain, &credential.private_key) {
            out.push(Secret {
                name: certificate_secret(name),
                r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: inline(chain),
                    private_key: inline(key),
                    ..Default::default()
                })),
            });
        }
        if let Some(roots) = &credential.roots {
            out.push(Secret {
                name: roots_secret(name),
                r#type: Some(secret::Type::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: inline(roots),
                        ..Default::default()
                    },
                )),
            });
        }
    }
    out
}
