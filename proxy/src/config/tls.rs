//! TLS transport sockets: what a listener's filter chain terminates and what a cluster
//! originates. The mesh's certificates and trust bundles always come by name over SDS, so a
//! rotation is a secret update and never a listener or cluster change. TLS to a server outside
//! the mesh (a `DestinationRule`'s `SIMPLE` or `MUTUAL`) names PEM files, carries PEM inline, or
//! names a credential's secrets over SDS (Istio's `credentialName`: `kubernetes://NAME` and
//! `kubernetes://NAME-cacert`), and is verified as X.509 against its own roots, never as
//! SPIFFE. So does an ingress gateway's HTTPS server (a `Gateway`'s `SIMPLE` or `MUTUAL`): its
//! certificate and the roots of its clients are PEM or a credential's secrets, its clients
//! checked as X.509 and for SANs.
//!
//! Which of the two a context is follows from its SDS names: a credential's name
//! ([`is_credential`]) makes it a context outside the mesh, where every SDS name must be a
//! credential's; the mesh's contexts name only the mesh's secrets.

use std::net::IpAddr;
use std::path::PathBuf;

use isthmus_proto::envoy::envoy::config::core::v3::{
    DataSource, TransportSocket, TypedExtensionConfig, data_source, transport_socket,
};
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher, tls_parameters,
};
use isthmus_proto::envoy::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use isthmus_proto::envoy::google::protobuf::Any;

use super::check::{Checked, Invalid, Path, reject_set, required};
use super::decode::{ads_source, short_type, typed};
use super::secret::{CREDENTIAL_PREFIX, is_credential};

/// The TLS settings both directions share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsContext {
    /// SDS name of the certificate this side presents.
    pub certificate: Option<String>,
    /// SDS name of the trust bundle the peer's chain must verify against.
    pub validation: Option<String>,
    /// The peer's certificate must carry one of these URI SANs (SPIFFE IDs); empty: any.
    pub peer_ids: Vec<String>,
    pub alpn: Vec<String>,
}

impl TlsContext {
    /// The mesh's SDS names of this context.
    fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.certificate
            .iter()
            .chain(&self.validation)
            .map(String::as_str)
    }
}

/// A filter chain's TLS termination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamTls {
    /// The mesh's mTLS; for `external`, only its ALPN is set.
    pub context: TlsContext,
    pub require_client_certificate: bool,
    /// TLS with a certificate outside the mesh (from PEM, `tls_certificates`, or a
    /// credential's secret over SDS), in place of the mesh's SDS names.
    pub external: Option<ExternalServerTls>,
}

impl DownstreamTls {
    /// Every SDS name the termination needs (what the proxy subscribes to): the mesh's
    /// secrets, or a credential's.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        let external = self.external.iter().flat_map(|e| {
            let roots = e.clients.as_ref().and_then(|c| c.roots.secret());
            e.certificate.secret().into_iter().chain(roots)
        });
        self.context.secret_names().chain(external)
    }
}

/// A server outside the mesh's identity (an ingress gateway's HTTPS): a plain certificate and,
/// for `MUTUAL`, X.509 verification of the client against the given roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalServerTls {
    /// The certificate chain this side presents, and its private key.
    pub certificate: ExternalCertificate,
    /// How a client certificate is verified; `None`: none is asked for.
    pub clients: Option<ClientValidation>,
    pub versions: TlsVersions,
}

/// The validation context of an external server: client certificates must chain to `roots`,
/// and carry one of `sans` unless it is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientValidation {
    pub roots: ExternalRoots,
    pub sans: Vec<SanMatch>,
}

/// A certificate outside the mesh's identity, with its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExternalCertificate {
    /// `tls_certificates`: the chain and the key as PEM files or inline.
    Pem { chain: Pem, key: Pem },
    /// `tls_certificate_sds_secret_configs`: a credential's secret (`kubernetes://NAME`), a
    /// plain certificate (`Secret::PlainCertificate`).
    Sds(String),
}

impl ExternalCertificate {
    /// The SDS name, if the certificate comes over SDS.
    pub fn secret(&self) -> Option<&str> {
        match self {
            Self::Pem { .. } => None,
            Self::Sds(name) => Some(name),
        }
    }
}

/// Roots outside the mesh's trust domains.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExternalRoots {
    /// An inline `validation_context`'s `trusted_ca`: a PEM file or inline PEM.
    Pem(Pem),
    /// A credential's roots over SDS (`kubernetes://NAME-cacert`, `Secret::Roots`).
    Sds(String),
}

impl ExternalRoots {
    /// The SDS name, if the roots come over SDS.
    pub fn secret(&self) -> Option<&str> {
        match self {
            Self::Pem(_) => None,
            Self::Sds(name) => Some(name),
        }
    }
}

/// The TLS versions rustls speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// The versions a context allows, both bounds included (`tls_params`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsVersions {
    pub min: TlsVersion,
    pub max: TlsVersion,
}

/// Envoy's defaults for a server (`TLS_AUTO`): TLS 1.2 to 1.3.
impl Default for TlsVersions {
    fn default() -> Self {
        Self {
            min: TlsVersion::Tls12,
            max: TlsVersion::Tls13,
        }
    }
}

/// A cluster's TLS origination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The mesh's mTLS; for `external`, only its ALPN is set.
    pub context: TlsContext,
    pub sni: String,
    /// TLS to a server outside the mesh, in place of the mesh's SDS names.
    pub external: Option<ExternalTls>,
}

impl UpstreamTls {
    /// Every SDS name the origination needs (what the proxy subscribes to): the mesh's
    /// secrets, or a credential's.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        let external = self.external.iter().flat_map(|e| {
            let certificate = e.client_certificate.as_ref().and_then(|c| c.secret());
            certificate
                .into_iter()
                .chain(e.roots.as_ref().and_then(|r| r.secret()))
        });
        self.context.secret_names().chain(external)
    }
}

/// TLS to a server outside the mesh: X.509 verification against the given roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalTls {
    /// The roots the server's chain must verify against; `None`: the server is not verified
    /// (no validation context: Istio's `insecureSkipVerify`).
    pub roots: Option<ExternalRoots>,
    /// What the server's certificate must be valid for.
    pub server_name: ServerNameCheck,
    /// The certificate chain and key this side presents.
    pub client_certificate: Option<ExternalCertificate>,
}

/// PEM from a file on this machine (read when the cluster's TLS is built) or inline.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Pem {
    File(PathBuf),
    Inline(Vec<u8>),
}

/// Inline PEM may be a private key: never printed (the admin's config dump shows clusters).
impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Inline(bytes) => write!(f, "Inline(<{} bytes>)", bytes.len()),
        }
    }
}

impl Pem {
    /// The PEM itself: a file's content as it is now, or the inline bytes; `None` when the
    /// file cannot be read.
    pub fn content(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        match self {
            Self::File(path) => std::fs::read(path).ok().map(std::borrow::Cow::Owned),
            Self::Inline(bytes) => Some(std::borrow::Cow::Borrowed(bytes)),
        }
    }
}

/// Which names the server's certificate is checked for (its chain is always verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerNameCheck {
    /// The SNI sent (`auto_sni_san_validation`).
    Sni,
    /// One of these SANs (`match_typed_subject_alt_names`, exact).
    OneOf(Vec<SanMatch>),
    /// No name: the chain only (Envoy's reading of a validation context with no SAN matcher).
    ChainOnly,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanMatch {
    Dns(String),
    Uri(String),
    Ip(IpAddr),
}

const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const RAW_SOCKET: &str = "envoy.transport_sockets.raw_buffer";

/// The typed config of a transport socket, or `None` for plaintext.
fn socket_config(socket: Option<TransportSocket>, path: &Path) -> Checked<Option<Any>> {
    let Some(TransportSocket { name, config_type }) = socket else {
        return Ok(None);
    };
    let config = match config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => any,
        None if name == RAW_SOCKET => return Ok(None),
        None => return Err(Invalid::required(&path.field("typed_config"))),
    };
    if config.type_url.ends_with(".RawBuffer") {
        return Ok(None);
    }
    if name != TLS_SOCKET && !config.type_url.contains(".tls.v3.") {
        return Err(Invalid::new(
            &path.field("name"),
            format!("transport socket {name:?} is not supported (only TLS and raw_buffer)"),
        ));
    }
    Ok(Some(config))
}

pub fn downstream(socket: Option<TransportSocket>, path: &Path) -> Checked<Option<DownstreamTls>> {
    let Some(any) = socket_config(socket, path)? else {
        return Ok(None);
    };
    let path = path.typed("typed_config", short_type(&any));
    let DownstreamTlsContext {
        common_tls_context,
        require_client_certificate,
        require_sni,
        disable_stateful_session_resumption: _,
        session_timeout,
        ocsp_staple_policy,
        full_scan_certs_on_sni_mismatch,
        prefer_client_ciphers: _,
        session_ticket_keys_type,
    } = typed(&any, &path)?;
    reject_set!(path; require_sni, session_timeout, ocsp_staple_policy, full_scan_certs_on_sni_mismatch, session_ticket_keys_type);
    let common_path = path.field("common_tls_context");
    let context = required(common_tls_context, &common_path)?;
    let (context, external) =
        if context.tls_certificates.is_empty() && !names_a_credential(&context) {
            (self::common(Some(context), &common_path)?, None)
        } else {
            let (external, alpn) = external_server(context, &common_path)?;
            (alpn_only(alpn), Some(external))
        };
    let require_client_certificate = require_client_certificate.is_some_and(|b| b.value);
    let verifies_clients =
        context.validation.is_some() || external.as_ref().is_some_and(|e| e.clients.is_some());
    // Envoy refuses it too: nothing to verify the required certificate against.
    if require_client_certificate && !verifies_clients {
        return Err(Invalid::new(
            &path.field("require_client_certificate"),
            "needs a validation context to verify the client's certificate against",
        ));
    }
    Ok(Some(DownstreamTls {
        context,
        require_client_certificate,
        external,
    }))
}

/// The context of TLS outside the mesh: its ALPN only.
fn alpn_only(alpn: Vec<String>) -> TlsContext {
    TlsContext {
        certificate: None,
        validation: None,
        peer_ids: Vec::new(),
        alpn,
    }
}

/// Whether any SDS name of the context is a credential's (`kubernetes://…`): then the context
/// is TLS outside the mesh.
fn names_a_credential(context: &CommonTlsContext) -> bool {
    use common_tls_context::ValidationContextType;
    let validation = match &context.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => Some(&s.name),
        Some(ValidationContextType::CombinedValidationContext(c)) => c
            .validation_context_sds_secret_config
            .as_ref()
            .map(|s| &s.name),
        _ => None,
    };
    context
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|s| &s.name)
        .chain(validation)
        .any(|name| is_credential(name))
}

/// Whether the context names any secret over SDS.
fn names_a_secret(context: &CommonTlsContext) -> bool {
    !context.tls_certificate_sds_secret_configs.is_empty()
        || matches!(
            context.validation_context_type,
            Some(
                common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(_)
                    | common_tls_context::ValidationContextType::CombinedValidationContext(_)
            )
        )
}

/// A server with a certificate outside the mesh: exactly one, from PEM (`tls_certificates`) or
/// a credential's secret over SDS; the clients' roots and SANs from an inline validation
/// context or a credential's roots over SDS, or no validation context.
fn external_server(
    context: CommonTlsContext,
    path: &Path,
) -> Checked<(ExternalServerTls, Vec<String>)> {
    let CommonTlsContext {
        tls_params,
        tls_certificates,
        tls_certificate_sds_secret_configs,
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        alpn_protocols,
        custom_handshaker,
        key_log,
        validation_context_type,
    } = context;
    reject_set!(path; tls_certificate_provider_instance, custom_tls_certificate_selector,
        tls_certificate_certificate_provider, tls_certificate_certificate_provider_instance,
        custom_handshaker, key_log);
    let certificate = match external_certificate(
        tls_certificates,
        tls_certificate_sds_secret_configs,
        "exactly one certificate",
        path,
    )? {
        Some(certificate) => certificate,
        None => {
            return Err(Invalid::new(
                &path.field("tls_certificate_sds_secret_configs"),
                format!(
                    "required: a TLS server outside the mesh presents a certificate \
                     (tls_certificates, or a {CREDENTIAL_PREFIX} secret)"
                ),
            ));
        }
    };
    let versions = match tls_params {
        None => TlsVersions::default(),
        Some(params) => {
            let path = path.field("tls_params");
            let versions = tls_params_check(params, &path)?;
            if versions.min > versions.max {
                return Err(Invalid::new(
                    &path.field("tls_minimum_protocol_version"),
                    "above tls_maximum_protocol_version",
                ));
            }
            versions
        }
    };
    let clients = match validation_context_type {
        None => None,
        Some(v) => {
            let (roots, sans) = external_validation(v, path)?;
            Some(ClientValidation { roots, sans })
        }
    };
    Ok((
        ExternalServerTls {
            certificate,
            clients,
            versions,
        },
        alpn_protocols,
    ))
}

/// The one certificate of a context outside the mesh, from PEM or from a credential's secret
/// (never both); `None`: neither. `many`: what to say of more than one.
fn external_certificate(
    tls_certificates: Vec<TlsCertificate>,
    sds_configs: Vec<SdsSecretConfig>,
    many: &str,
    path: &Path,
) -> Checked<Option<ExternalCertificate>> {
    let sds_path = path.field("tls_certificate_sds_secret_configs");
    if !tls_certificates.is_empty() && !sds_configs.is_empty() {
        return Err(Invalid::new(
            &sds_path,
            "not with tls_certificates: one certificate, from PEM or over SDS",
        ));
    }
    if tls_certificates.len() > 1 {
        return Err(Invalid::new(&path.field("tls_certificates"), many));
    }
    if sds_configs.len() > 1 {
        return Err(Invalid::new(&sds_path, many));
    }
    if let Some(certificate) = tls_certificates.into_iter().next() {
        return certificate_files(certificate, &path.field("tls_certificates").index(0)).map(Some);
    }
    match sds_configs.into_iter().next() {
        None => Ok(None),
        Some(config) => credential(Some(config), &sds_path.index(0))
            .map(|name| Some(ExternalCertificate::Sds(name))),
    }
}

/// An SDS name that must be a credential's: TLS outside the mesh never uses the mesh's
/// certificate or trust bundles.
fn credential(config: Option<SdsSecretConfig>, path: &Path) -> Checked<String> {
    let name = sds(config, path)?;
    if !is_credential(&name) {
        return Err(Invalid::new(
            &path.field("name"),
            format!(
                "{name:?} is not a credential ({CREDENTIAL_PREFIX}NAME): TLS outside the mesh \
                 does not use the mesh's secrets, and the mesh's TLS does not use a credential's"
            ),
        ));
    }
    Ok(name)
}

/// The roots and SAN matchers of a validation context outside the mesh: an inline
/// `validation_context` (`trusted_ca` and the SANs), a credential's roots over SDS
/// (`validation_context_sds_secret_config`), or both forms combined (the SANs in
/// `combined_validation_context.default_validation_context`, the roots over SDS).
fn external_validation(
    validation: common_tls_context::ValidationContextType,
    path: &Path,
) -> Checked<(ExternalRoots, Vec<SanMatch>)> {
    use common_tls_context::ValidationContextType;
    match validation {
        ValidationContextType::ValidationContext(v) => {
            let (roots, sans) = x509_validation(v, &path.field("validation_context"))?;
            Ok((ExternalRoots::Pem(roots), sans))
        }
        ValidationContextType::ValidationContextSdsSecretConfig(s) => {
            let name = credential(Some(s), &path.field("validation_context_sds_secret_config"))?;
            Ok((ExternalRoots::Sds(name), Vec::new()))
        }
        ValidationContextType::CombinedValidationContext(c) => {
            let path = path.field("combined_validation_context");
            let common_tls_context::CombinedCertificateValidationContext {
                default_validation_context,
                validation_context_sds_secret_config,
                validation_context_certificate_provider,
                validation_context_certificate_provider_instance,
            } = c;
            reject_set!(path; validation_context_certificate_provider, validation_context_certificate_provider_instance);
            let name = credential(
                validation_context_sds_secret_config,
                &path.field("validation_context_sds_secret_config"),
            )?;
            let sans = match default_validation_context {
                None => Vec::new(),
                Some(v) => credential_sans(v, &path.field("default_validation_context"))?,
            };
            Ok((ExternalRoots::Sds(name), sans))
        }
        _ => Err(Invalid::new(
            &path.field("validation_context_type"),
            "only validation_context, validation_context_sds_secret_config or \
             combined_validation_context",
        )),
    }
}

/// The SAN matchers next to a credential's roots: nothing else (the roots are the secret's).
fn credential_sans(context: CertificateValidationContext, path: &Path) -> Checked<Vec<SanMatch>> {
    let ValidationParts {
        trusted_ca,
        sans,
        custom_validator,
    } = validation_parts(context, path)?;
    if trusted_ca.is_some() {
        return Err(Invalid::new(
            &path.field("trusted_ca"),
            "the roots are the credential secret's (validation_context_sds_secret_config)",
        ));
    }
    if custom_validator.is_some() {
        return Err(Invalid::new(
            &path.field("custom_validator_config"),
            "not outside the mesh: certificates are verified as X.509",
        ));
    }
    let path = path.field("match_typed_subject_alt_names");
    sans.into_iter()
        .enumerate()
        .map(|(i, m)| san_match(m, &path.index(i)))
        .collect()
}

pub fn upstream(socket: Option<TransportSocket>, path: &Path) -> Checked<Option<UpstreamTls>> {
    let Some(any) = socket_config(socket, path)? else {
        return Ok(None);
    };
    let path = path.typed("typed_config", short_type(&any));
    let UpstreamTlsContext {
        common_tls_context,
        sni,
        auto_host_sni,
        auto_sni_san_validation,
        allow_renegotiation,
        max_session_keys: _,
        enforce_rsa_key_usage,
    } = typed(&any, &path)?;
    reject_set!(path; auto_host_sni, allow_renegotiation, enforce_rsa_key_usage);
    // Checked here so that a connection never finds its SNI unusable.
    if !sni.is_empty() && rustls_pki_types::ServerName::try_from(sni.as_str()).is_err() {
        return Err(Invalid::new(
            &path.field("sni"),
            format!("{sni:?} is not a DNS name or an IP address"),
        ));
    }
    let common_path = path.field("common_tls_context");
    let context = required(common_tls_context, &common_path)?;
    if !is_external(&context) {
        reject_set!(path; auto_sni_san_validation);
        return Ok(Some(UpstreamTls {
            context: self::common(Some(context), &common_path)?,
            sni,
            external: None,
        }));
    }
    if auto_sni_san_validation && sni.is_empty() {
        return Err(Invalid::new(
            &path.field("auto_sni_san_validation"),
            "needs an SNI to check the server's certificate against",
        ));
    }
    let (external, alpn) = external(context, auto_sni_san_validation, &common_path)?;
    Ok(Some(UpstreamTls {
        context: alpn_only(alpn),
        sni,
        external: Some(external),
    }))
}

/// Whether a cluster's TLS is to a server outside the mesh: no SDS name anywhere, or a
/// credential's (then every SDS name must be a credential's).
fn is_external(context: &CommonTlsContext) -> bool {
    !names_a_secret(context) || names_a_credential(context)
}

/// TLS to a server outside the mesh: the roots and SAN matchers of an inline validation
/// context or of a credential's roots over SDS (none: no verification), and at most one
/// certificate with its key, from PEM or a credential's secret.
fn external(
    context: CommonTlsContext,
    sni_check: bool,
    path: &Path,
) -> Checked<(ExternalTls, Vec<String>)> {
    let CommonTlsContext {
        tls_params,
        tls_certificates,
        tls_certificate_sds_secret_configs,
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        alpn_protocols,
        custom_handshaker,
        key_log,
        validation_context_type,
    } = context;
    reject_set!(path; tls_certificate_provider_instance, custom_tls_certificate_selector,
        tls_certificate_certificate_provider, tls_certificate_certificate_provider_instance,
        custom_handshaker, key_log);
    if let Some(params) = tls_params {
        tls_params_check(params, &path.field("tls_params"))?;
    }
    let client_certificate = external_certificate(
        tls_certificates,
        tls_certificate_sds_secret_configs,
        "at most one certificate",
        path,
    )?;
    let (roots, server_name) = match validation_context_type {
        None => (None, ServerNameCheck::ChainOnly),
        Some(v) => {
            let (roots, sans) = external_validation(v, path)?;
            // Envoy: `auto_sni_san_validation` replaces the SAN matchers with the SNI.
            let server_name = match (sni_check, sans.is_empty()) {
                (true, _) => ServerNameCheck::Sni,
                (false, false) => ServerNameCheck::OneOf(sans),
                (false, true) => ServerNameCheck::ChainOnly,
            };
            (Some(roots), server_name)
        }
    };
    Ok((
        ExternalTls {
            roots,
            server_name,
            client_certificate,
        },
        alpn_protocols,
    ))
}

fn certificate_files(certificate: TlsCertificate, path: &Path) -> Checked<ExternalCertificate> {
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
    } = certificate;
    reject_set!(path; pkcs12, watched_directory, private_key_provider, password, ocsp_staple,
        signed_certificate_timestamp, tls_params);
    Ok(ExternalCertificate::Pem {
        chain: pem(certificate_chain, &path.field("certificate_chain"))?,
        key: pem(private_key, &path.field("private_key"))?,
    })
}

/// An inline validation context outside the mesh: its roots (required: without them it would
/// verify nothing) and its exact SAN matchers.
fn x509_validation(
    context: CertificateValidationContext,
    path: &Path,
) -> Checked<(Pem, Vec<SanMatch>)> {
    let CertificateValidationContext {
        trusted_ca,
        ca_certificate_provider_instance,
        system_root_certs,
        watched_directory,
        verify_certificate_spki,
        verify_certificate_hash,
        match_typed_subject_alt_names,
        match_subject_alt_names,
        require_signed_certificate_timestamp,
        crl,
        allow_expired_certificate,
        trust_chain_verification,
        custom_validator_config,
        only_verify_leaf_cert_crl,
        max_verify_depth,
        suppress_client_ca_list,
    } = context;
    reject_set!(path; ca_certificate_provider_instance, system_root_certs, watched_directory,
        verify_certificate_spki, verify_certificate_hash, match_subject_alt_names,
        require_signed_certificate_timestamp, crl, allow_expired_certificate,
        trust_chain_verification, custom_validator_config, only_verify_leaf_cert_crl,
        max_verify_depth, suppress_client_ca_list);
    let roots = pem(trusted_ca, &path.field("trusted_ca"))?;
    let sans_path = path.field("match_typed_subject_alt_names");
    let sans = match_typed_subject_alt_names
        .into_iter()
        .enumerate()
        .map(|(i, m)| san_match(m, &sans_path.index(i)))
        .collect::<Checked<Vec<_>>>()?;
    Ok((roots, sans))
}

fn san_match(matcher: SubjectAltNameMatcher, path: &Path) -> Checked<SanMatch> {
    let SubjectAltNameMatcher {
        san_type,
        matcher,
        oid,
    } = matcher;
    reject_set!(path; oid);
    let value = exact(matcher, &path.field("matcher"))?;
    use subject_alt_name_matcher::SanType;
    match SanType::try_from(san_type) {
        Ok(SanType::Dns) => Ok(SanMatch::Dns(value)),
        Ok(SanType::Uri) => Ok(SanMatch::Uri(value)),
        Ok(SanType::IpAddress) => value.parse().map(SanMatch::Ip).map_err(|_| {
            Invalid::new(
                &path.field("matcher"),
                format!("{value:?} is not an IP address"),
            )
        }),
        _ => Err(Invalid::new(
            &path.field("san_type"),
            "only DNS, URI or IP_ADDRESS",
        )),
    }
}

/// PEM from a file name or inline; never from an environment variable.
fn pem(source: Option<DataSource>, path: &Path) -> Checked<Pem> {
    let DataSource {
        watched_directory,
        specifier,
    } = required(source, path)?;
    reject_set!(path; watched_directory);
    match specifier {
        Some(data_source::Specifier::Filename(name)) if !name.is_empty() => {
            Ok(Pem::File(PathBuf::from(name)))
        }
        Some(data_source::Specifier::InlineBytes(bytes)) if !bytes.is_empty() => {
            Ok(Pem::Inline(bytes))
        }
        Some(data_source::Specifier::InlineString(text)) if !text.is_empty() => {
            Ok(Pem::Inline(text.into_bytes()))
        }
        Some(data_source::Specifier::EnvironmentVariable(_)) => Err(Invalid::new(
            path,
            "environment_variable is not supported (a file name or inline PEM)",
        )),
        _ => Err(Invalid::required(path)),
    }
}

fn common(context: Option<CommonTlsContext>, path: &Path) -> Checked<TlsContext> {
    let CommonTlsContext {
        tls_params,
        tls_certificates,
        tls_certificate_sds_secret_configs,
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        alpn_protocols,
        custom_handshaker,
        key_log,
        validation_context_type,
    } = required(context, path)?;
    reject_set!(path; tls_certificates, tls_certificate_provider_instance, custom_tls_certificate_selector,
        tls_certificate_certificate_provider, tls_certificate_certificate_provider_instance, custom_handshaker, key_log);
    if let Some(params) = tls_params {
        tls_params_check(params, &path.field("tls_params"))?;
    }
    let certificate = match tls_certificate_sds_secret_configs.len() {
        0 => None,
        1 => Some(sds(
            tls_certificate_sds_secret_configs.into_iter().next(),
            &path.field("tls_certificate_sds_secret_configs").index(0),
        )?),
        _ => {
            return Err(Invalid::new(
                &path.field("tls_certificate_sds_secret_configs"),
                "at most one certificate",
            ));
        }
    };
    let path_v = path.field("validation_context_type");
    let (validation, peer_ids) = match validation_context_type {
        None => (None, Vec::new()),
        Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(s)) => (
            Some(sds(
                Some(s),
                &path.field("validation_context_sds_secret_config"),
            )?),
            Vec::new(),
        ),
        Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) => {
            let path = path.field("combined_validation_context");
            let common_tls_context::CombinedCertificateValidationContext {
                default_validation_context,
                validation_context_sds_secret_config,
                validation_context_certificate_provider,
                validation_context_certificate_provider_instance,
            } = c;
            reject_set!(path; validation_context_certificate_provider, validation_context_certificate_provider_instance);
            let secret = sds(
                validation_context_sds_secret_config,
                &path.field("validation_context_sds_secret_config"),
            )?;
            let ids = match default_validation_context {
                Some(v) => san_matchers(v, &path.field("default_validation_context"))?,
                None => Vec::new(),
            };
            (Some(secret), ids)
        }
        Some(_) => {
            return Err(Invalid::new(
                &path_v,
                "only validation_context_sds_secret_config or combined_validation_context",
            ));
        }
    };
    Ok(TlsContext {
        certificate,
        validation,
        peer_ids,
        alpn: alpn_protocols,
    })
}

/// The version bounds of `tls_params` (`TLS_AUTO`: Envoy's server defaults, 1.2 and 1.3); the
/// mesh's contexts check them and keep rustls' 1.2 and 1.3. TLS 1.0 and 1.1 are refused, never
/// clamped to 1.2: a minimum of 1.0 tells Envoy to accept 1.0 clients, which a clamp would turn
/// away without a word, and a maximum of 1.1 leaves nothing rustls speaks.
fn tls_params_check(params: TlsParameters, path: &Path) -> Checked<TlsVersions> {
    let TlsParameters {
        tls_minimum_protocol_version,
        tls_maximum_protocol_version,
        cipher_suites,
        ecdh_curves,
        signature_algorithms,
        compliance_policies,
    } = params;
    reject_set!(path; cipher_suites, ecdh_curves, signature_algorithms, compliance_policies);
    use tls_parameters::TlsProtocol;
    let version = |value: i32, auto: TlsVersion, field: &str| match TlsProtocol::try_from(value) {
        Ok(TlsProtocol::TlsAuto) => Ok(auto),
        Ok(TlsProtocol::TlSv12) => Ok(TlsVersion::Tls12),
        Ok(TlsProtocol::TlSv13) => Ok(TlsVersion::Tls13),
        Ok(old) => Err(Invalid::new(
            &path.field(field),
            format!(
                "{} is not supported: TLS 1.2 or 1.3 only (rustls)",
                old.as_str_name()
            ),
        )),
        Err(_) => Err(Invalid::new(
            &path.field(field),
            format!("unknown value {value}"),
        )),
    };
    Ok(TlsVersions {
        min: version(
            tls_minimum_protocol_version,
            TlsVersion::Tls12,
            "tls_minimum_protocol_version",
        )?,
        max: version(
            tls_maximum_protocol_version,
            TlsVersion::Tls13,
            "tls_maximum_protocol_version",
        )?,
    })
}

fn sds(config: Option<SdsSecretConfig>, path: &Path) -> Checked<String> {
    let SdsSecretConfig { name, sds_config } = required(config, path)?;
    ads_source(sds_config, &path.field("sds_config"))?;
    if name.is_empty() {
        return Err(Invalid::required(&path.field("name")));
    }
    Ok(name)
}

/// The three parts of a validation context this proxy uses; every other field is refused.
/// Where each may be is the caller's to say.
pub(super) struct ValidationParts {
    pub trusted_ca: Option<DataSource>,
    pub sans: Vec<SubjectAltNameMatcher>,
    pub custom_validator: Option<TypedExtensionConfig>,
}

pub(super) fn validation_parts(
    context: CertificateValidationContext,
    path: &Path,
) -> Checked<ValidationParts> {
    let CertificateValidationContext {
        trusted_ca,
        ca_certificate_provider_instance,
        system_root_certs,
        watched_directory,
        verify_certificate_spki,
        verify_certificate_hash,
        match_typed_subject_alt_names,
        match_subject_alt_names,
        require_signed_certificate_timestamp,
        crl,
        allow_expired_certificate,
        trust_chain_verification,
        custom_validator_config,
        only_verify_leaf_cert_crl,
        max_verify_depth,
        suppress_client_ca_list,
    } = context;
    reject_set!(path; ca_certificate_provider_instance, system_root_certs,
        watched_directory, verify_certificate_spki, verify_certificate_hash, match_subject_alt_names,
        require_signed_certificate_timestamp, crl, allow_expired_certificate, trust_chain_verification,
        only_verify_leaf_cert_crl, max_verify_depth, suppress_client_ca_list);
    Ok(ValidationParts {
        trusted_ca,
        sans: match_typed_subject_alt_names,
        custom_validator: custom_validator_config,
    })
}

/// The exact URI SANs a peer may present; nothing else of a validation context.
fn san_matchers(context: CertificateValidationContext, path: &Path) -> Checked<Vec<String>> {
    let parts = validation_parts(context, path)?;
    // A bare `trusted_ca` would trust its roots for every trust domain; Isthmus binds the
    // mesh's roots to their domain through the SPIFFE validator.
    if parts.trusted_ca.is_some() {
        return Err(Invalid::new(
            &path.field("trusted_ca"),
            "not in the mesh's TLS: roots bound to no trust domain would vouch for every \
             domain (the mesh's come over SDS, with the SPIFFE validator)",
        ));
    }
    if parts.custom_validator.is_some() {
        return Err(Invalid::new(
            &path.field("custom_validator_config"),
            "only in the trust bundle secret (SDS)",
        ));
    }
    let path = path.field("match_typed_subject_alt_names");
    parts
        .sans
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let path = path.index(i);
            let SubjectAltNameMatcher {
                san_type,
                matcher,
                oid,
            } = m;
            reject_set!(path; oid);
            if san_type != subject_alt_name_matcher::SanType::Uri as i32 {
                return Err(Invalid::new(&path.field("san_type"), "only URI"));
            }
            exact(matcher, &path.field("matcher"))
        })
        .collect()
}

/// A string matcher that must be an exact, case-sensitive match.
pub fn exact(matcher: Option<StringMatcher>, path: &Path) -> Checked<String> {
    let StringMatcher {
        ignore_case,
        match_pattern,
    } = required(matcher, path)?;
    reject_set!(path; ignore_case);
    match match_pattern {
        Some(string_matcher::MatchPattern::Exact(s)) => Ok(s),
        _ => Err(Invalid::new(path, "only `exact`")),
    }
}
