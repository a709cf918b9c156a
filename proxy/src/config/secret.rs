//! `Secret` (SDS): the workload's certificate and key, or trust bundles, each bound to its
//! SPIFFE trust domain (Envoy's SPIFFE certificate validator).

use std::sync::Arc;

use isthmus_identity::pem::{certs_from_pem, key_from_pem};
use isthmus_identity::{TrustBundle, TrustDomain, WorkloadCertificate};
use isthmus_proto::envoy::envoy::config::core::v3::{
    DataSource, TypedExtensionConfig, data_source,
};
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret as EnvoySecret, SpiffeCertValidatorConfig, TlsCertificate,
    secret, spiffe_cert_validator_config,
};

use super::check::{Checked, Invalid, Path, each, reject_set, required};
use super::decode::{short_type, typed};
use super::tls::validation_parts;

#[derive(Debug, Clone)]
pub enum Secret {
    /// A certificate chain with its key, checked to match and to carry a SPIFFE ID.
    Certificate(Arc<WorkloadCertificate>),
    /// Roots per trust domain: a peer's chain must verify against its own domain's roots.
    TrustBundles(Vec<TrustBundle>),
}

const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";

pub fn convert(s: EnvoySecret, path: &Path) -> Checked<Secret> {
    let EnvoySecret { name, r#type } = s;
    if name.is_empty() {
        return Err(Invalid::required(&path.field("name")));
    }
    match r#type {
        Some(secret::Type::TlsCertificate(c)) => certificate(c, &path.field("tls_certificate")),
        Some(secret::Type::ValidationContext(v)) => {
            bundles(v, &path.field("validation_context")).map(Secret::TrustBundles)
        }
        _ => Err(Invalid::new(
            path,
            "only tls_certificate or validation_context secrets",
        )),
    }
}

fn certificate(c: TlsCertificate, path: &Path) -> Checked<Secret> {
    let TlsCertificate {
        certificate_chain,
        private_key,
        pkcs12,
        watched_directory,
        private_key_provider,
        password,
        ocsp_staple,
        signed_certificate_timestamp,
        tls_params,
    } = c;
    reject_set!(path; pkcs12, watched_directory, private_key_provider, password, ocsp_staple,
        signed_certificate_timestamp, tls_params);
    let chain_path = path.field("certificate_chain");
    let chain = certs_from_pem(
        &inline(certificate_chain, &chain_path)?,
        "certificate_chain",
    )
    .map_err(|e| Invalid::new(&chain_path, e.to_string()))?;
    let key_path = path.field("private_key");
    let key_pem = zeroize::Zeroizing::new(inline(private_key, &key_path)?);
    let key = key_from_pem(&key_pem, "private_key")
        .map_err(|e| Invalid::new(&key_path, e.to_string()))?;
    let cert = WorkloadCertificate::new(chain, key, Vec::new())
        .map_err(|e| Invalid::new(path, e.to_string()))?;
    Ok(Secret::Certificate(Arc::new(cert)))
}

fn bundles(v: CertificateValidationContext, path: &Path) -> Checked<Vec<TrustBundle>> {
    let parts = validation_parts(v, path)?;
    if !parts.sans.is_empty() {
        return Err(Invalid::new(
            &path.field("match_typed_subject_alt_names"),
            "only in the transport socket's validation context",
        ));
    }
    let custom_validator_config = parts.custom_validator;
    let path = path.field("custom_validator_config");
    let TypedExtensionConfig { name, typed_config } = required(custom_validator_config, &path)?;
    if name != SPIFFE_VALIDATOR {
        return Err(Invalid::new(
            &path.field("name"),
            format!("only {SPIFFE_VALIDATOR}"),
        ));
    }
    let any = required(typed_config, &path.field("typed_config"))?;
    let path = path.typed("typed_config", short_type(&any));
    let SpiffeCertValidatorConfig {
        trust_domains,
        trust_bundles,
    } = typed(&any, &path)?;
    reject_set!(path; trust_bundles);
    if trust_domains.is_empty() {
        return Err(Invalid::required(&path.field("trust_domains")));
    }
    each(trust_domains, &path, "trust_domains", |td, path| {
        let spiffe_cert_validator_config::TrustDomain {
            name,
            trust_bundle,
            workload_trust_domain,
        } = td;
        reject_set!(path; workload_trust_domain);
        let domain = TrustDomain::new(&name)
            .map_err(|e| Invalid::new(&path.field("name"), e.to_string()))?;
        let pem = inline(trust_bundle, &path.field("trust_bundle"))?;
        TrustBundle::from_pem(domain, &pem, &name)
            .map_err(|e| Invalid::new(&path.field("trust_bundle"), e.to_string()))
    })
}

/// The bytes of an inline data source (files and environment variables are the control plane's
/// business, not the proxy's).
fn inline(source: Option<DataSource>, path: &Path) -> Checked<Vec<u8>> {
    let DataSource {
        watched_directory,
        specifier,
    } = required(source, path)?;
    reject_set!(path; watched_directory);
    match specifier {
        Some(data_source::Specifier::InlineBytes(b)) => Ok(b),
        Some(data_source::Specifier::InlineString(s)) => Ok(s.into_bytes()),
        _ => Err(Invalid::new(path, "only inline_bytes or inline_string")),
    }
}
