//! `Secret` (SDS): the workload's certificate and key, or trust bundles, each bound to its
//! SPIFFE trust domain (Envoy's SPIFFE certificate validator); and, for TLS outside the mesh
//! (Istio's `credentialName`: the secrets `kubernetes://NAME` and `kubernetes://NAME-cacert`),
//! a plain certificate with its key and plain roots, which only the TLS of ingress gateways and
//! of `DestinationRule` origination uses (`config/tls.rs`, `transport/edge_tls.rs`,
//! `transport/external_tls.rs`); the mesh's TLS refuses them (`transport/tls.rs`).

use std::fmt;
use std::sync::Arc;

use isthmus_identity::pem::{certs_from_pem, key_from_pem};
use isthmus_identity::{CertInfo, TrustBundle, TrustDomain, WorkloadCertificate, format_time};
use isthmus_proto::envoy::envoy::config::core::v3::{
    DataSource, TypedExtensionConfig, data_source,
};
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret as EnvoySecret, SpiffeCertValidatorConfig, TlsCertificate,
    secret, spiffe_cert_validator_config,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::check::{Checked, Invalid, Path, each, reject_set, required};
use super::decode::{short_type, typed};
use super::tls::validation_parts;

#[derive(Debug, Clone)]
pub enum Secret {
    /// A certificate chain with its key, checked to match and to carry a SPIFFE ID.
    Certificate(Arc<WorkloadCertificate>),
    /// Roots per trust domain: a peer's chain must verify against its own domain's roots.
    TrustBundles(Vec<TrustBundle>),
    /// A certificate outside the mesh's identity with its key, checked to match: a leaf with no
    /// SPIFFE ID, or any certificate of a credential secret (`kubernetes://NAME`).
    PlainCertificate(Arc<PlainCertificate>),
    /// Roots bound to no trust domain (`trusted_ca`, no custom validator): X.509 verification
    /// outside the mesh only.
    Roots(PlainRoots),
}

/// The SDS names of Istio's `credentialName` secrets (`kubernetes://NAME`, and
/// `kubernetes://NAME-cacert` for the roots): certificates and roots outside the mesh. The
/// mesh's own secrets never have such a name (`default`, `ROOTCA`, `ROOTCA/<trust domain>`).
pub const CREDENTIAL_PREFIX: &str = "kubernetes://";

/// Whether an SDS name is a credential's (outside the mesh), not one of the mesh's secrets.
pub fn is_credential(name: &str) -> bool {
    name.starts_with(CREDENTIAL_PREFIX)
}

/// A plain (non-SPIFFE) certificate chain, leaf first, and its private key (never printed).
pub struct PlainCertificate {
    leaf: CertInfo,
    chain: Vec<CertificateDer<'static>>,
    key: Zeroizing<PrivateKeyDer<'static>>,
}

impl PlainCertificate {
    /// Checks that the leaf decodes and that the key is the leaf's (rustls' own check, as
    /// for a certificate from PEM files).
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, String> {
        let leaf_der = chain.first().ok_or("empty certificate chain")?;
        let leaf = CertInfo::parse(leaf_der).map_err(|e| format!("leaf certificate: {e}"))?;
        let key = Zeroizing::new(key);
        rustls::sign::CertifiedKey::from_der(
            chain.clone(),
            key.clone_key(),
            &isthmus_identity::provider(),
        )
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key does not match the leaf certificate's public key".to_owned()
            }
            other => format!("private key: {other}"),
        })?;
        Ok(Self { leaf, chain, key })
    }

    /// The decoded leaf certificate.
    pub fn leaf(&self) -> &CertInfo {
        &self.leaf
    }

    /// Leaf first, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// A copy of the private key, for a TLS configuration.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

impl fmt::Debug for PlainCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainCertificate")
            .field("subject", &self.leaf.subject)
            .field("dns_sans", &self.leaf.dns_sans)
            .field("uri_sans", &self.leaf.uri_sans)
            .field("serial", &self.leaf.serial)
            .field("not_after", &format_time(self.leaf.not_after))
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Roots outside the mesh, at least one usable as a trust anchor.
#[derive(Clone)]
pub struct PlainRoots {
    roots: Vec<CertificateDer<'static>>,
}

impl PlainRoots {
    /// Checks that at least one of `roots` is usable as a trust anchor.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, String> {
        let (added, _) =
            rustls::RootCertStore::empty().add_parsable_certificates(roots.iter().cloned());
        if added == 0 {
            return Err("no usable root certificate".to_owned());
        }
        Ok(Self { roots })
    }

    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as a rustls store (the unusable ones left out).
    pub fn store(&self) -> rustls::RootCertStore {
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(self.roots.iter().cloned());
        store
    }

    /// The subjects of the roots that decode, for the admin port and logs.
    pub fn subjects(&self) -> Vec<String> {
        self.roots
            .iter()
            .filter_map(|der| CertInfo::parse(der).ok().map(|info| info.subject))
            .collect()
    }
}

impl fmt::Debug for PlainRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainRoots")
            .field("subjects", &self.subjects())
            .finish()
    }
}

const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";

pub fn convert(s: EnvoySecret, path: &Path) -> Checked<Secret> {
    let EnvoySecret { name, r#type } = s;
    if name.is_empty() {
        return Err(Invalid::required(&path.field("name")));
    }
    match r#type {
        Some(secret::Type::TlsCertificate(c)) => {
            certificate(c, is_credential(&name), &path.field("tls_certificate"))
        }
        Some(secret::Type::ValidationContext(v)) => {
            validation(v, &path.field("validation_context"))
        }
        _ => Err(Invalid::new(
            path,
            "only tls_certificate or validation_context secrets",
        )),
    }
}

/// The mesh's certificate (a SPIFFE ID in the leaf), or a plain one: a leaf without a SPIFFE
/// ID, or any leaf of a credential secret (`credential`: its name says it is outside the mesh,
/// so a URI SAN of its own means nothing to the mesh).
fn certificate(c: TlsCertificate, credential: bool, path: &Path) -> Checked<Secret> {
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
    let key_pem = Zeroizing::new(inline(private_key, &key_path)?);
    let key = key_from_pem(&key_pem, "private_key")
        .map_err(|e| Invalid::new(&key_path, e.to_string()))?;
    let spiffe = chain
        .first()
        .and_then(|leaf| CertInfo::parse(leaf).ok())
        .is_some_and(|leaf| {
            leaf.uri_sans.iter().any(|uri| {
                uri.get(..9)
                    .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
            })
        });
    if credential || !spiffe {
        let cert = PlainCertificate::new(chain, key).map_err(|e| Invalid::new(path, e))?;
        return Ok(Secret::PlainCertificate(Arc::new(cert)));
    }
    let cert = WorkloadCertificate::new(chain, key, Vec::new())
        .map_err(|e| Invalid::new(path, e.to_string()))?;
    Ok(Secret::Certificate(Arc::new(cert)))
}

/// The SPIFFE validator's trust bundles, or plain roots (`trusted_ca` without a custom
/// validator): never both in one secret.
fn validation(v: CertificateValidationContext, path: &Path) -> Checked<Secret> {
    let parts = validation_parts(v, path)?;
    if !parts.sans.is_empty() {
        return Err(Invalid::new(
            &path.field("match_typed_subject_alt_names"),
            "only in the transport socket's validation context",
        ));
    }
    match (parts.trusted_ca, parts.custom_validator) {
        (Some(_), Some(_)) => Err(Invalid::new(
            &path.field("trusted_ca"),
            "not with custom_validator_config: roots bound to no trust domain would vouch for \
             every domain",
        )),
        (Some(trusted_ca), None) => {
            let path = path.field("trusted_ca");
            let pem = inline(Some(trusted_ca), &path)?;
            let roots = certs_from_pem(&pem, "trusted_ca")
                .map_err(|e| Invalid::new(&path, e.to_string()))?;
            PlainRoots::new(roots)
                .map(Secret::Roots)
                .map_err(|e| Invalid::new(&path, e))
        }
        (None, Some(validator)) => {
            bundles(validator, &path.field("custom_validator_config")).map(Secret::TrustBundles)
        }
        (None, None) => Err(Invalid::new(
            path,
            format!(
                "needs trusted_ca (roots outside the mesh) or custom_validator_config \
                 ({SPIFFE_VALIDATOR})"
            ),
        )),
    }
}

fn bundles(validator: TypedExtensionConfig, path: &Path) -> Checked<Vec<TrustBundle>> {
    let TypedExtensionConfig { name, typed_config } = validator;
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
