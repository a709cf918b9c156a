//! TLS transport sockets -> `DownstreamTls` (listeners) and `UpstreamTls` (clusters).

use isthmus_proto::envoy::envoy::config::core::v3::{
    DataSource, TransportSocket, data_source, transport_socket,
};
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher, tls_parameters,
};
use isthmus_proto::envoy::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use isthmus_proto::envoy::google::protobuf::{Any, BoolValue};

use super::{Expect, Table, ads, not_ads, pack, run};
use crate::config::tls::{
    ClientValidation, DownstreamTls, ExternalCertificate, ExternalRoots, ExternalServerTls,
    ExternalTls, Pem, SanMatch, ServerNameCheck, TlsContext, TlsVersion, TlsVersions, UpstreamTls,
    downstream, upstream,
};

fn socket(config: Any) -> Option<TransportSocket> {
    Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(config)),
    })
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.into(),
        sds_config: ads(),
    }
}

fn uri_san(matcher: string_matcher::MatchPattern) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(matcher),
            ignore_case: false,
        }),
        oid: String::new(),
    }
}

/// mTLS as isthmusd configures it: the workload certificate, the trust bundles, one peer ID.
fn mtls(validation: CertificateValidationContext) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds("default")],
        alpn_protocols: vec!["h2".into(), "http/1.1".into()],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(validation),
                    validation_context_sds_secret_config: Some(sds("ROOTCA")),
                    ..Default::default()
                },
            ),
        ),
        ..CommonTlsContext::default()
    }
}

fn peer_ids(ids: &[&str]) -> CertificateValidationContext {
    CertificateValidationContext {
        match_typed_subject_alt_names: ids
            .iter()
            .map(|id| uri_san(string_matcher::MatchPattern::Exact((*id).into())))
            .collect(),
        ..CertificateValidationContext::default()
    }
}

fn server(common: CommonTlsContext) -> Option<TransportSocket> {
    socket(pack(&DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue { value: true }),
        ..DownstreamTlsContext::default()
    }))
}

fn client(sni: &str, common: CommonTlsContext) -> Option<TransportSocket> {
    socket(pack(&UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: sni.into(),
        ..UpstreamTlsContext::default()
    }))
}

fn context(peer_ids: &[&str]) -> TlsContext {
    TlsContext {
        certificate: Some("default".into()),
        validation: Some("ROOTCA".into()),
        peer_ids: peer_ids.iter().map(|s| (*s).to_owned()).collect(),
        alpn: vec!["h2".into(), "http/1.1".into()],
    }
}

/// A path inside the downstream context.
macro_rules! down {
    ($rest:literal) => {
        concat!(
            "typed_config(DownstreamTlsContext).common_tls_context.",
            $rest
        )
    };
}

#[test]
fn downstream_tls_converts_to_its_model() {
    const CLIENT: &str = "spiffe://red.local/ns/shop/sa/client";
    let table: Table<Option<TransportSocket>, Option<DownstreamTls>> = vec![
        ("plaintext: no socket", None, Expect::Model(None)),
        (
            "plaintext: raw_buffer",
            Some(TransportSocket {
                name: "envoy.transport_sockets.raw_buffer".into(),
                config_type: None,
            }),
            Expect::Model(None),
        ),
        (
            "mTLS with a certificate, trust bundles and peer IDs over SDS",
            server(mtls(peer_ids(&[CLIENT]))),
            Expect::Model(Some(DownstreamTls {
                context: context(&[CLIENT]),
                require_client_certificate: true,
                external: None,
            })),
        ),
        (
            "TLS 1.2 to 1.3",
            server(CommonTlsContext {
                tls_params: Some(TlsParameters {
                    tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv12 as i32,
                    tls_maximum_protocol_version: tls_parameters::TlsProtocol::TlSv13 as i32,
                    ..TlsParameters::default()
                }),
                ..mtls(peer_ids(&[]))
            }),
            Expect::Holds(|t| t.as_ref().is_some_and(|t| t.context.peer_ids.is_empty())),
        ),
    ];
    run(table, downstream);
}

#[test]
fn downstream_tls_outside_the_profile_is_rejected_at_its_path() {
    let table: Table<Option<TransportSocket>, Option<DownstreamTls>> = vec![
        (
            "two certificates",
            server(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![sds("a"), sds("b")],
                ..mtls(peer_ids(&[]))
            }),
            Expect::Rejected(down!("tls_certificate_sds_secret_configs")),
        ),
        (
            "a certificate not over ADS",
            server(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                    name: "default".into(),
                    sds_config: not_ads(),
                }],
                ..mtls(peer_ids(&[]))
            }),
            Expect::Rejected(down!(
                "tls_certificate_sds_secret_configs[0].sds_config.config_source_specifier"
            )),
        ),
        (
            "a DNS SAN",
            server(mtls(CertificateValidationContext {
                match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                    san_type: subject_alt_name_matcher::SanType::Dns as i32,
                    ..uri_san(string_matcher::MatchPattern::Exact("a".into()))
                }],
                ..CertificateValidationContext::default()
            })),
            Expect::Rejected(down!(
                "combined_validation_context.default_validation_context.match_typed_subject_alt_names[0].san_type"
            )),
        ),
        (
            "a SAN prefix",
            server(mtls(CertificateValidationContext {
                match_typed_subject_alt_names: vec![uri_san(string_matcher::MatchPattern::Prefix(
                    "spiffe://red.local/".into(),
                ))],
                ..CertificateValidationContext::default()
            })),
            Expect::Rejected(down!(
                "combined_validation_context.default_validation_context.match_typed_subject_alt_names[0].matcher"
            )),
        ),
        (
            "roots without their trust domain",
            server(mtls(CertificateValidationContext {
                trusted_ca: Some(DataSource::default()),
                ..CertificateValidationContext::default()
            })),
            Expect::Rejected(down!(
                "combined_validation_context.default_validation_context.trusted_ca"
            )),
        ),
        (
            "TLS 1.1",
            server(CommonTlsContext {
                tls_params: Some(TlsParameters {
                    tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv11 as i32,
                    ..TlsParameters::default()
                }),
                ..mtls(peer_ids(&[]))
            }),
            Expect::Rejected(down!("tls_params.tls_minimum_protocol_version")),
        ),
        (
            "a context without its common part",
            socket(pack(&DownstreamTlsContext::default())),
            Expect::Rejected("typed_config(DownstreamTlsContext).common_tls_context"),
        ),
        (
            "SNI required",
            socket(pack(&DownstreamTlsContext {
                common_tls_context: Some(mtls(peer_ids(&[]))),
                require_sni: Some(BoolValue { value: true }),
                ..DownstreamTlsContext::default()
            })),
            Expect::Rejected("typed_config(DownstreamTlsContext).require_sni"),
        ),
        (
            "a client certificate required, nothing to verify it against",
            socket(pack(&DownstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    tls_certificate_sds_secret_configs: vec![sds("default")],
                    ..CommonTlsContext::default()
                }),
                require_client_certificate: Some(BoolValue { value: true }),
                ..DownstreamTlsContext::default()
            })),
            Expect::Rejected("typed_config(DownstreamTlsContext).require_client_certificate"),
        ),
        (
            "another transport socket",
            Some(TransportSocket {
                name: "envoy.transport_sockets.alts".into(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
                    type_url: "type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts"
                        .into(),
                    value: Vec::new(),
                })),
            }),
            Expect::Rejected("name"),
        ),
        (
            "a socket without its config",
            Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: None,
            }),
            Expect::Rejected("typed_config"),
        ),
    ];
    run(table, downstream);
}

#[test]
fn upstream_tls_checks_its_sni() {
    let table: Table<Option<TransportSocket>, Option<UpstreamTls>> = vec![
        (
            "mTLS to a service, by its name",
            client(
                "outbound_.9080_._.reviews.bookinfo.svc.cluster.local",
                mtls(peer_ids(&["spiffe://red.local/ns/bookinfo/sa/reviews"])),
            ),
            Expect::Model(Some(UpstreamTls {
                context: context(&["spiffe://red.local/ns/bookinfo/sa/reviews"]),
                sni: "outbound_.9080_._.reviews.bookinfo.svc.cluster.local".into(),
                external: None,
            })),
        ),
        (
            "no SNI: the peer's address",
            client("", mtls(peer_ids(&[]))),
            Expect::Holds(|t| t.as_ref().is_some_and(|t| t.sni.is_empty())),
        ),
        (
            "an IP address as SNI",
            client("10.0.0.1", mtls(peer_ids(&[]))),
            Expect::Holds(|t| t.is_some()),
        ),
        (
            "an SNI that is not a name",
            client("two words", mtls(peer_ids(&[]))),
            Expect::Rejected("typed_config(UpstreamTlsContext).sni"),
        ),
        (
            "an SNI with an empty label",
            client("a..b", mtls(peer_ids(&[]))),
            Expect::Rejected("typed_config(UpstreamTlsContext).sni"),
        ),
        (
            "renegotiation",
            socket(pack(&UpstreamTlsContext {
                common_tls_context: Some(mtls(peer_ids(&[]))),
                allow_renegotiation: true,
                ..UpstreamTlsContext::default()
            })),
            Expect::Rejected("typed_config(UpstreamTlsContext).allow_renegotiation"),
        ),
    ];
    run(table, upstream);
}

fn file(name: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::Filename(name.into())),
        ..DataSource::default()
    })
}

/// TLS to a server outside the mesh, as isthmusd writes a `DestinationRule`'s `SIMPLE`: roots
/// from a file, the given SAN matchers, optionally a client certificate (`MUTUAL`).
fn origination(
    sans: Vec<SubjectAltNameMatcher>,
    auto_sni_san_validation: bool,
    certificate: bool,
) -> Option<TransportSocket> {
    socket(pack(&UpstreamTlsContext {
        sni: "api.example.com".into(),
        auto_sni_san_validation,
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: if certificate {
                vec![TlsCertificate {
                    certificate_chain: file("/etc/certs/cert.pem"),
                    private_key: file("/etc/certs/key.pem"),
                    ..TlsCertificate::default()
                }]
            } else {
                Vec::new()
            },
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: file("/etc/certs/ca.pem"),
                        match_typed_subject_alt_names: sans,
                        ..CertificateValidationContext::default()
                    },
                ),
            ),
            ..CommonTlsContext::default()
        }),
        ..UpstreamTlsContext::default()
    }))
}

fn dns_san(name: &str) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: subject_alt_name_matcher::SanType::Dns as i32,
        ..uri_san(string_matcher::MatchPattern::Exact(name.into()))
    }
}

#[test]
fn upstream_tls_outside_the_mesh_is_verified_as_x509() {
    let table: Table<Option<TransportSocket>, Option<UpstreamTls>> = vec![
        (
            "SIMPLE: roots from a file, the SNI checked",
            origination(Vec::new(), true, false),
            Expect::Model(Some(UpstreamTls {
                context: TlsContext {
                    certificate: None,
                    validation: None,
                    peer_ids: Vec::new(),
                    alpn: Vec::new(),
                },
                sni: "api.example.com".into(),
                external: Some(ExternalTls {
                    roots: Some(ExternalRoots::Pem(Pem::File("/etc/certs/ca.pem".into()))),
                    server_name: ServerNameCheck::Sni,
                    client_certificate: None,
                }),
            })),
        ),
        (
            "MUTUAL with subjectAltNames: a client certificate, one of the SANs",
            origination(
                vec![
                    dns_san("api.example.com"),
                    uri_san(string_matcher::MatchPattern::Exact("spiffe://x/y".into())),
                ],
                false,
                true,
            ),
            Expect::Holds(|t| {
                let external = t.as_ref().and_then(|t| t.external.as_ref());
                external.is_some_and(|e| {
                    e.server_name
                        == ServerNameCheck::OneOf(vec![
                            SanMatch::Dns("api.example.com".into()),
                            SanMatch::Uri("spiffe://x/y".into()),
                        ])
                        && e.client_certificate
                            == Some(ExternalCertificate::Pem {
                                chain: Pem::File("/etc/certs/cert.pem".into()),
                                key: Pem::File("/etc/certs/key.pem".into()),
                            })
                })
            }),
        ),
        (
            "insecureSkipVerify: no validation context, no verification",
            socket(pack(&UpstreamTlsContext {
                sni: "api.example.com".into(),
                common_tls_context: Some(CommonTlsContext::default()),
                ..UpstreamTlsContext::default()
            })),
            Expect::Holds(|t| {
                t.as_ref()
                    .and_then(|t| t.external.as_ref())
                    .is_some_and(|e| e.roots.is_none())
            }),
        ),
        (
            "SNI validation without an SNI",
            socket(pack(&UpstreamTlsContext {
                auto_sni_san_validation: true,
                common_tls_context: Some(CommonTlsContext::default()),
                ..UpstreamTlsContext::default()
            })),
            Expect::Rejected("typed_config(UpstreamTlsContext).auto_sni_san_validation"),
        ),
        (
            "roots from an environment variable",
            socket(pack(&UpstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    validation_context_type: Some(
                        common_tls_context::ValidationContextType::ValidationContext(
                            CertificateValidationContext {
                                trusted_ca: Some(DataSource {
                                    specifier: Some(data_source::Specifier::EnvironmentVariable(
                                        "CA".into(),
                                    )),
                                    ..DataSource::default()
                                }),
                                ..CertificateValidationContext::default()
                            },
                        ),
                    ),
                    ..CommonTlsContext::default()
                }),
                ..UpstreamTlsContext::default()
            })),
            Expect::Rejected(
                "typed_config(UpstreamTlsContext).common_tls_context.validation_context.trusted_ca",
            ),
        ),
        (
            "a validation context without roots verifies nothing: refused",
            socket(pack(&UpstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    validation_context_type: Some(
                        common_tls_context::ValidationContextType::ValidationContext(
                            CertificateValidationContext::default(),
                        ),
                    ),
                    ..CommonTlsContext::default()
                }),
                ..UpstreamTlsContext::default()
            })),
            Expect::Rejected(
                "typed_config(UpstreamTlsContext).common_tls_context.validation_context.trusted_ca",
            ),
        ),
        (
            "SNI validation is for TLS outside the mesh only",
            socket(pack(&UpstreamTlsContext {
                sni: "reviews".into(),
                auto_sni_san_validation: true,
                common_tls_context: Some(mtls(peer_ids(&[]))),
                ..UpstreamTlsContext::default()
            })),
            Expect::Rejected("typed_config(UpstreamTlsContext).auto_sni_san_validation"),
        ),
    ];
    run(table, upstream);
}

/// An ingress gateway's HTTPS server as isthmusd writes a `Gateway`'s `tls`: the certificate
/// from files, ALPN, TLS 1.2 to 1.3; for `MUTUAL`, the clients' roots and SANs, a certificate
/// required.
fn gateway_server(mutual: Option<Vec<SubjectAltNameMatcher>>) -> DownstreamTlsContext {
    DownstreamTlsContext {
        require_client_certificate: mutual.is_some().then_some(BoolValue { value: true }),
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![TlsCertificate {
                certificate_chain: file("/etc/gw/cert.pem"),
                private_key: file("/etc/gw/key.pem"),
                ..TlsCertificate::default()
            }],
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv12 as i32,
                tls_maximum_protocol_version: tls_parameters::TlsProtocol::TlSv13 as i32,
                ..TlsParameters::default()
            }),
            validation_context_type: mutual.map(|sans| {
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: file("/etc/gw/ca.pem"),
                        match_typed_subject_alt_names: sans,
                        ..CertificateValidationContext::default()
                    },
                )
            }),
            ..CommonTlsContext::default()
        }),
        ..DownstreamTlsContext::default()
    }
}

/// `context` after `edit`.
fn edited(
    mut context: DownstreamTlsContext,
    edit: impl FnOnce(&mut DownstreamTlsContext, &mut CommonTlsContext),
) -> Option<TransportSocket> {
    let mut common = context.common_tls_context.take().unwrap_or_default();
    edit(&mut context, &mut common);
    context.common_tls_context = Some(common);
    socket(pack(&context))
}

fn alpn_only() -> TlsContext {
    TlsContext {
        certificate: None,
        validation: None,
        peer_ids: Vec::new(),
        alpn: vec!["h2".into(), "http/1.1".into()],
    }
}

fn gateway_certificate() -> ExternalCertificate {
    ExternalCertificate::Pem {
        chain: Pem::File("/etc/gw/cert.pem".into()),
        key: Pem::File("/etc/gw/key.pem".into()),
    }
}

fn versions(t: &Option<DownstreamTls>) -> Option<TlsVersions> {
    Some(t.as_ref()?.external.as_ref()?.versions)
}

fn protocol(p: tls_parameters::TlsProtocol) -> i32 {
    p as i32
}

#[test]
fn downstream_tls_with_a_certificate_from_pem_converts_to_its_model() {
    use tls_parameters::TlsProtocol;
    let table: Table<Option<TransportSocket>, Option<DownstreamTls>> = vec![
        (
            "SIMPLE: the certificate from files, no client certificate asked for",
            socket(pack(&gateway_server(None))),
            Expect::Model(Some(DownstreamTls {
                context: alpn_only(),
                require_client_certificate: false,
                external: Some(ExternalServerTls {
                    certificate: gateway_certificate(),
                    clients: None,
                    versions: TlsVersions {
                        min: TlsVersion::Tls12,
                        max: TlsVersion::Tls13,
                    },
                }),
            })),
        ),
        (
            "MUTUAL with subjectAltNames: the clients' roots and one of the SANs, required",
            socket(pack(&gateway_server(Some(vec![
                dns_san("client.example.com"),
                uri_san(string_matcher::MatchPattern::Exact(
                    "spiffe://partner/ns/a/sa/b".into(),
                )),
                SubjectAltNameMatcher {
                    san_type: subject_alt_name_matcher::SanType::IpAddress as i32,
                    ..dns_san("10.1.2.3")
                },
            ])))),
            Expect::Model(Some(DownstreamTls {
                context: alpn_only(),
                require_client_certificate: true,
                external: Some(ExternalServerTls {
                    certificate: gateway_certificate(),
                    clients: Some(ClientValidation {
                        roots: ExternalRoots::Pem(Pem::File("/etc/gw/ca.pem".into())),
                        sans: vec![
                            SanMatch::Dns("client.example.com".into()),
                            SanMatch::Uri("spiffe://partner/ns/a/sa/b".into()),
                            SanMatch::Ip([10, 1, 2, 3].into()),
                        ],
                    }),
                    versions: TlsVersions::default(),
                }),
            })),
        ),
        (
            "MUTUAL without subjectAltNames, a certificate optional",
            edited(gateway_server(Some(Vec::new())), |c, _| {
                c.require_client_certificate = None;
            }),
            Expect::Holds(|t| {
                t.as_ref().is_some_and(|t| {
                    !t.require_client_certificate
                        && t.external
                            .as_ref()
                            .is_some_and(|e| e.clients.as_ref().is_some_and(|c| c.sans.is_empty()))
                })
            }),
        ),
        (
            "inline PEM, as bytes and as a string",
            edited(gateway_server(None), |_, common| {
                common.tls_certificates[0].certificate_chain = Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineBytes(b"CERT".to_vec())),
                    ..DataSource::default()
                });
                common.tls_certificates[0].private_key = Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString("KEY".into())),
                    ..DataSource::default()
                });
            }),
            Expect::Holds(|t| {
                t.as_ref()
                    .and_then(|t| t.external.as_ref())
                    .is_some_and(|e| {
                        e.certificate
                            == ExternalCertificate::Pem {
                                chain: Pem::Inline(b"CERT".to_vec()),
                                key: Pem::Inline(b"KEY".to_vec()),
                            }
                    })
            }),
        ),
        (
            "TLS_AUTO: Envoy's server defaults, 1.2 to 1.3",
            edited(gateway_server(None), |_, common| {
                common.tls_params = Some(TlsParameters::default());
            }),
            Expect::Holds(|t| versions(t) == Some(TlsVersions::default())),
        ),
        (
            "no tls_params: the same",
            edited(gateway_server(None), |_, common| common.tls_params = None),
            Expect::Holds(|t| versions(t) == Some(TlsVersions::default())),
        ),
        (
            "TLS 1.3 only",
            edited(gateway_server(None), |_, common| {
                common.tls_params = Some(TlsParameters {
                    tls_minimum_protocol_version: protocol(TlsProtocol::TlSv13),
                    ..TlsParameters::default()
                });
            }),
            Expect::Holds(|t| {
                versions(t)
                    == Some(TlsVersions {
                        min: TlsVersion::Tls13,
                        max: TlsVersion::Tls13,
                    })
            }),
        ),
        (
            "TLS 1.2 only",
            edited(gateway_server(None), |_, common| {
                common.tls_params = Some(TlsParameters {
                    tls_maximum_protocol_version: protocol(TlsProtocol::TlSv12),
                    ..TlsParameters::default()
                });
            }),
            Expect::Holds(|t| {
                versions(t)
                    == Some(TlsVersions {
                        min: TlsVersion::Tls12,
                        max: TlsVersion::Tls12,
                    })
            }),
        ),
    ];
    run(table, downstream);
}

#[test]
fn downstream_tls_with_a_certificate_from_pem_outside_the_profile_is_rejected_at_its_path() {
    use tls_parameters::TlsProtocol;
    let table: Table<Option<TransportSocket>, Option<DownstreamTls>> = vec![
        (
            "two certificates",
            edited(gateway_server(None), |_, common| {
                common
                    .tls_certificates
                    .push(common.tls_certificates[0].clone());
            }),
            Expect::Rejected(down!("tls_certificates")),
        ),
        (
            "a certificate from PEM and one over SDS",
            edited(gateway_server(None), |_, common| {
                common.tls_certificate_sds_secret_configs = vec![sds("default")];
            }),
            Expect::Rejected(down!("tls_certificate_sds_secret_configs")),
        ),
        (
            "a client certificate required, no validation context",
            edited(gateway_server(None), |c, _| {
                c.require_client_certificate = Some(BoolValue { value: true });
            }),
            Expect::Rejected("typed_config(DownstreamTlsContext).require_client_certificate"),
        ),
        (
            "a minimum of TLS 1.1",
            edited(gateway_server(None), |_, common| {
                common.tls_params = Some(TlsParameters {
                    tls_minimum_protocol_version: protocol(TlsProtocol::TlSv11),
                    ..TlsParameters::default()
                });
            }),
            Expect::Rejected(down!("tls_params.tls_minimum_protocol_version")),
        ),
        (
            "a maximum of TLS 1.0",
            edited(gateway_server(None), |_, common| {
                common.tls_params = Some(TlsParameters {
                    tls_maximum_protocol_version: protocol(TlsProtocol::TlSv10),
                    ..TlsParameters::default()
                });
            }),
            Expect::Rejected(down!("tls_params.tls_maximum_protocol_version")),
        ),
        (
            "a minimum above the maximum",
            edited(gateway_server(None), |_, common| {
                common.tls_params = Some(TlsParameters {
                    tls_minimum_protocol_version: protocol(TlsProtocol::TlSv13),
                    tls_maximum_protocol_version: protocol(TlsProtocol::TlSv12),
                    ..TlsParameters::default()
                });
            }),
            Expect::Rejected(down!("tls_params.tls_minimum_protocol_version")),
        ),
        (
            "the mesh's trust bundles over SDS for the clients",
            edited(gateway_server(None), |_, common| {
                common.validation_context_type = Some(
                    common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                        sds("ROOTCA"),
                    ),
                );
            }),
            Expect::Rejected(down!("validation_context_sds_secret_config.name")),
        ),
        (
            "clients' SANs without their roots",
            edited(gateway_server(Some(vec![dns_san("c")])), |_, common| {
                if let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
                    &mut common.validation_context_type
                {
                    v.trusted_ca = None;
                }
            }),
            Expect::Rejected(down!("validation_context.trusted_ca")),
        ),
        (
            "an EMAIL SAN",
            socket(pack(&gateway_server(Some(vec![SubjectAltNameMatcher {
                san_type: subject_alt_name_matcher::SanType::Email as i32,
                ..dns_san("ops@example.com")
            }])))),
            Expect::Rejected(down!(
                "validation_context.match_typed_subject_alt_names[0].san_type"
            )),
        ),
        (
            "a certificate without its key",
            edited(gateway_server(None), |_, common| {
                common.tls_certificates[0].private_key = None;
            }),
            Expect::Rejected(down!("tls_certificates[0].private_key")),
        ),
        (
            "a key from an environment variable",
            edited(gateway_server(None), |_, common| {
                common.tls_certificates[0].private_key = Some(DataSource {
                    specifier: Some(data_source::Specifier::EnvironmentVariable("KEY".into())),
                    ..DataSource::default()
                });
            }),
            Expect::Rejected(down!("tls_certificates[0].private_key")),
        ),
    ];
    run(table, downstream);
}

/// A context with Istio's `credentialName` as isthmusd writes it: the certificate
/// `kubernetes://gw` over SDS (none when `certificate` is false), ALPN, and the validation
/// given.
fn credential_common(
    certificate: bool,
    validation: Option<common_tls_context::ValidationContextType>,
) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: if certificate {
            vec![sds("kubernetes://gw")]
        } else {
            Vec::new()
        },
        alpn_protocols: vec!["h2".into(), "http/1.1".into()],
        validation_context_type: validation,
        ..CommonTlsContext::default()
    }
}

/// The credential's roots `kubernetes://gw-cacert` with these SAN matchers next to them.
fn credential_roots(sans: Vec<SubjectAltNameMatcher>) -> common_tls_context::ValidationContextType {
    common_tls_context::ValidationContextType::CombinedValidationContext(
        common_tls_context::CombinedCertificateValidationContext {
            default_validation_context: Some(CertificateValidationContext {
                match_typed_subject_alt_names: sans,
                ..CertificateValidationContext::default()
            }),
            validation_context_sds_secret_config: Some(sds("kubernetes://gw-cacert")),
            ..Default::default()
        },
    )
}

/// A `Gateway` server with `credentialName: gw`: `SIMPLE` (no validation) or `MUTUAL`.
fn credential_server(
    validation: Option<common_tls_context::ValidationContextType>,
) -> DownstreamTlsContext {
    DownstreamTlsContext {
        require_client_certificate: validation.is_some().then_some(BoolValue { value: true }),
        common_tls_context: Some(credential_common(true, validation)),
        ..DownstreamTlsContext::default()
    }
}

fn ip_san(address: &str) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: subject_alt_name_matcher::SanType::IpAddress as i32,
        ..dns_san(address)
    }
}

#[test]
fn downstream_tls_with_a_credential_over_sds_converts_to_its_model() {
    let table: Table<Option<TransportSocket>, Option<DownstreamTls>> = vec![
        (
            "SIMPLE: the credential's certificate, no client certificate asked for",
            socket(pack(&credential_server(None))),
            Expect::Model(Some(DownstreamTls {
                context: alpn_only(),
                require_client_certificate: false,
                external: Some(ExternalServerTls {
                    certificate: ExternalCertificate::Sds("kubernetes://gw".into()),
                    clients: None,
                    versions: TlsVersions::default(),
                }),
            })),
        ),
        (
            "MUTUAL: the credential's roots over SDS and the SANs next to them, required",
            socket(pack(&credential_server(Some(credential_roots(vec![
                dns_san("client.example.com"),
                uri_san(string_matcher::MatchPattern::Exact(
                    "spiffe://partner/ns/a/sa/b".into(),
                )),
                ip_san("10.1.2.3"),
            ]))))),
            Expect::Model(Some(DownstreamTls {
                context: alpn_only(),
                require_client_certificate: true,
                external: Some(ExternalServerTls {
                    certificate: ExternalCertificate::Sds("kubernetes://gw".into()),
                    clients: Some(ClientValidation {
                        roots: ExternalRoots::Sds("kubernetes://gw-cacert".into()),
                        sans: vec![
                            SanMatch::Dns("client.example.com".into()),
                            SanMatch::Uri("spiffe://partner/ns/a/sa/b".into()),
                            SanMatch::Ip([10, 1, 2, 3].into()),
                        ],
                    }),
                    versions: TlsVersions::default(),
                }),
            })),
        ),
        (
            "MUTUAL without subjectAltNames: an empty default context",
            socket(pack(&credential_server(Some(credential_roots(Vec::new()))))),
            Expect::Holds(|t| {
                t.as_ref()
                    .and_then(|t| t.external.as_ref()?.clients.as_ref())
                    .is_some_and(|c| {
                        c.sans.is_empty()
                            && c.roots == ExternalRoots::Sds("kubernetes://gw-cacert".into())
                    })
            }),
        ),
        (
            "MUTUAL without subjectAltNames: the roots' SDS name alone",
            socket(pack(&credential_server(Some(
                common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                    "kubernetes://gw-cacert",
                )),
            )))),
            Expect::Holds(|t| {
                t.as_ref()
                    .and_then(|t| t.external.as_ref()?.clients.as_ref())
                    .is_some_and(|c| c.sans.is_empty())
            }),
        ),
        (
            "TLS 1.3 only",
            edited(credential_server(None), |_, common| {
                common.tls_params = Some(TlsParameters {
                    tls_minimum_protocol_version: protocol(tls_parameters::TlsProtocol::TlSv13),
                    ..TlsParameters::default()
                });
            }),
            Expect::Holds(|t| {
                versions(t)
                    == Some(TlsVersions {
                        min: TlsVersion::Tls13,
                        max: TlsVersion::Tls13,
                    })
            }),
        ),
        (
            "a certificate from files, the clients' roots of a credential",
            edited(gateway_server(None), |c, common| {
                c.require_client_certificate = Some(BoolValue { value: true });
                common.validation_context_type = Some(credential_roots(Vec::new()));
            }),
            Expect::Holds(|t| {
                t.as_ref()
                    .and_then(|t| t.external.as_ref())
                    .is_some_and(|e| {
                        e.certificate == gateway_certificate()
                            && e.clients.as_ref().is_some_and(|c| {
                                c.roots == ExternalRoots::Sds("kubernetes://gw-cacert".into())
                            })
                    })
            }),
        ),
        (
            "the names subscribed to: the credential's two secrets",
            socket(pack(&credential_server(Some(credential_roots(Vec::new()))))),
            Expect::Holds(|t| {
                t.as_ref().is_some_and(|t| {
                    t.secret_names().collect::<Vec<_>>()
                        == ["kubernetes://gw", "kubernetes://gw-cacert"]
                })
            }),
        ),
    ];
    run(table, downstream);
}

#[test]
fn downstream_tls_with_a_credential_over_sds_outside_the_profile_is_rejected_at_its_path() {
    let table: Table<Option<TransportSocket>, Option<DownstreamTls>> = vec![
        (
            "the credential's certificate, the mesh's trust bundles",
            edited(credential_server(None), |c, common| {
                c.require_client_certificate = Some(BoolValue { value: true });
                common.validation_context_type = Some(
                    common_tls_context::ValidationContextType::CombinedValidationContext(
                        common_tls_context::CombinedCertificateValidationContext {
                            validation_context_sds_secret_config: Some(sds("ROOTCA")),
                            ..Default::default()
                        },
                    ),
                );
            }),
            Expect::Rejected(down!(
                "combined_validation_context.validation_context_sds_secret_config.name"
            )),
        ),
        (
            "the mesh's certificate, the credential's roots",
            edited(
                credential_server(Some(credential_roots(Vec::new()))),
                |_, common| {
                    common.tls_certificate_sds_secret_configs = vec![sds("default")];
                },
            ),
            Expect::Rejected(down!("tls_certificate_sds_secret_configs[0].name")),
        ),
        (
            "two credentials' certificates",
            edited(credential_server(None), |_, common| {
                common
                    .tls_certificate_sds_secret_configs
                    .push(sds("kubernetes://other"));
            }),
            Expect::Rejected(down!("tls_certificate_sds_secret_configs")),
        ),
        (
            "a credential's certificate and one from files",
            edited(credential_server(None), |_, common| {
                common.tls_certificates = vec![TlsCertificate {
                    certificate_chain: file("/etc/gw/cert.pem"),
                    private_key: file("/etc/gw/key.pem"),
                    ..TlsCertificate::default()
                }];
            }),
            Expect::Rejected(down!("tls_certificate_sds_secret_configs")),
        ),
        (
            "the credential's roots but no certificate to present",
            socket(pack(&DownstreamTlsContext {
                common_tls_context: Some(credential_common(
                    false,
                    Some(credential_roots(Vec::new())),
                )),
                ..DownstreamTlsContext::default()
            })),
            Expect::Rejected(down!("tls_certificate_sds_secret_configs")),
        ),
        (
            "the credential's certificate not over ADS",
            edited(credential_server(None), |_, common| {
                common.tls_certificate_sds_secret_configs = vec![SdsSecretConfig {
                    name: "kubernetes://gw".into(),
                    sds_config: not_ads(),
                }];
            }),
            Expect::Rejected(down!(
                "tls_certificate_sds_secret_configs[0].sds_config.config_source_specifier"
            )),
        ),
        (
            "roots next to the credential's roots",
            edited(
                credential_server(Some(credential_roots(Vec::new()))),
                |_, common| {
                    if let Some(
                        common_tls_context::ValidationContextType::CombinedValidationContext(c),
                    ) = &mut common.validation_context_type
                        && let Some(v) = &mut c.default_validation_context
                    {
                        v.trusted_ca = file("/etc/gw/ca.pem");
                    }
                },
            ),
            Expect::Rejected(down!(
                "combined_validation_context.default_validation_context.trusted_ca"
            )),
        ),
        (
            "the SPIFFE validator next to the credential's roots",
            edited(
                credential_server(Some(credential_roots(Vec::new()))),
                |_, common| {
                    if let Some(
                        common_tls_context::ValidationContextType::CombinedValidationContext(c),
                    ) = &mut common.validation_context_type
                        && let Some(v) = &mut c.default_validation_context
                    {
                        v.custom_validator_config = Some(Default::default());
                    }
                },
            ),
            Expect::Rejected(down!(
                "combined_validation_context.default_validation_context.custom_validator_config"
            )),
        ),
        (
            "an EMAIL SAN",
            socket(pack(&credential_server(Some(credential_roots(vec![
                SubjectAltNameMatcher {
                    san_type: subject_alt_name_matcher::SanType::Email as i32,
                    ..dns_san("ops@example.com")
                },
            ]))))),
            Expect::Rejected(down!(
                "combined_validation_context.default_validation_context.match_typed_subject_alt_names[0].san_type"
            )),
        ),
        (
            "a SAN suffix",
            socket(pack(&credential_server(Some(credential_roots(vec![
                uri_san(string_matcher::MatchPattern::Suffix(".example.com".into())),
            ]))))),
            Expect::Rejected(down!(
                "combined_validation_context.default_validation_context.match_typed_subject_alt_names[0].matcher"
            )),
        ),
        (
            "a client certificate required, no roots",
            edited(credential_server(None), |c, _| {
                c.require_client_certificate = Some(BoolValue { value: true });
            }),
            Expect::Rejected("typed_config(DownstreamTlsContext).require_client_certificate"),
        ),
        (
            "a minimum of TLS 1.1",
            edited(credential_server(None), |_, common| {
                common.tls_params = Some(TlsParameters {
                    tls_minimum_protocol_version: protocol(tls_parameters::TlsProtocol::TlSv11),
                    ..TlsParameters::default()
                });
            }),
            Expect::Rejected(down!("tls_params.tls_minimum_protocol_version")),
        ),
    ];
    run(table, downstream);
}

/// A `DestinationRule` with `credentialName: gw`: the SNI, the credential's certificate
/// (`MUTUAL`), the validation given.
fn credential_client(
    certificate: bool,
    validation: Option<common_tls_context::ValidationContextType>,
    auto_sni_san_validation: bool,
) -> Option<TransportSocket> {
    socket(pack(&UpstreamTlsContext {
        sni: "api.example.com".into(),
        auto_sni_san_validation,
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: Vec::new(),
            ..credential_common(certificate, validation)
        }),
        ..UpstreamTlsContext::default()
    }))
}

/// A path inside the upstream context.
macro_rules! up {
    ($rest:literal) => {
        concat!(
            "typed_config(UpstreamTlsContext).common_tls_context.",
            $rest
        )
    };
}

#[test]
fn upstream_tls_with_a_credential_over_sds_converts_to_its_model() {
    let roots_alone = || {
        Some(
            common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                "kubernetes://gw-cacert",
            )),
        )
    };
    let table: Table<Option<TransportSocket>, Option<UpstreamTls>> = vec![
        (
            "MUTUAL without subjectAltNames: the credential's certificate and roots, the SNI checked",
            credential_client(true, roots_alone(), true),
            Expect::Model(Some(UpstreamTls {
                context: TlsContext {
                    alpn: Vec::new(),
                    ..alpn_only()
                },
                sni: "api.example.com".into(),
                external: Some(ExternalTls {
                    roots: Some(ExternalRoots::Sds("kubernetes://gw-cacert".into())),
                    server_name: ServerNameCheck::Sni,
                    client_certificate: Some(ExternalCertificate::Sds("kubernetes://gw".into())),
                }),
            })),
        ),
        (
            "SIMPLE with subjectAltNames: the credential's roots, one of the SANs",
            credential_client(
                false,
                Some(credential_roots(vec![dns_san("api.example.com")])),
                false,
            ),
            Expect::Model(Some(UpstreamTls {
                context: TlsContext {
                    alpn: Vec::new(),
                    ..alpn_only()
                },
                sni: "api.example.com".into(),
                external: Some(ExternalTls {
                    roots: Some(ExternalRoots::Sds("kubernetes://gw-cacert".into())),
                    server_name: ServerNameCheck::OneOf(vec![SanMatch::Dns(
                        "api.example.com".into(),
                    )]),
                    client_certificate: None,
                }),
            })),
        ),
        (
            "the credential's certificate, roots inline",
            credential_client(
                true,
                Some(
                    common_tls_context::ValidationContextType::ValidationContext(
                        CertificateValidationContext {
                            trusted_ca: file("/etc/certs/ca.pem"),
                            ..CertificateValidationContext::default()
                        },
                    ),
                ),
                true,
            ),
            Expect::Holds(|t| {
                t.as_ref()
                    .and_then(|t| t.external.as_ref())
                    .is_some_and(|e| {
                        e.roots == Some(ExternalRoots::Pem(Pem::File("/etc/certs/ca.pem".into())))
                            && e.client_certificate
                                == Some(ExternalCertificate::Sds("kubernetes://gw".into()))
                    })
            }),
        ),
        (
            "insecureSkipVerify: the credential's certificate, no validation",
            credential_client(true, None, false),
            Expect::Holds(|t| {
                t.as_ref()
                    .and_then(|t| t.external.as_ref())
                    .is_some_and(|e| e.roots.is_none() && e.client_certificate.is_some())
            }),
        ),
        (
            "the names subscribed to: the credential's two secrets",
            credential_client(true, roots_alone(), true),
            Expect::Holds(|t| {
                t.as_ref().is_some_and(|t| {
                    t.secret_names().collect::<Vec<_>>()
                        == ["kubernetes://gw", "kubernetes://gw-cacert"]
                })
            }),
        ),
    ];
    run(table, upstream);
}

#[test]
fn upstream_tls_with_a_credential_over_sds_outside_the_profile_is_rejected_at_its_path() {
    let table: Table<Option<TransportSocket>, Option<UpstreamTls>> = vec![
        (
            "the credential's certificate, the mesh's trust bundles",
            credential_client(
                true,
                Some(
                    common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                        sds("ROOTCA"),
                    ),
                ),
                true,
            ),
            Expect::Rejected(up!("validation_context_sds_secret_config.name")),
        ),
        (
            "the mesh's certificate, the credential's roots",
            socket(pack(&UpstreamTlsContext {
                sni: "api.example.com".into(),
                common_tls_context: Some(CommonTlsContext {
                    tls_certificate_sds_secret_configs: vec![sds("default")],
                    validation_context_type: Some(credential_roots(Vec::new())),
                    ..CommonTlsContext::default()
                }),
                ..UpstreamTlsContext::default()
            })),
            Expect::Rejected(up!("tls_certificate_sds_secret_configs[0].name")),
        ),
        (
            "a credential's certificate and one from files",
            socket(pack(&UpstreamTlsContext {
                sni: "api.example.com".into(),
                common_tls_context: Some(CommonTlsContext {
                    tls_certificates: vec![TlsCertificate {
                        certificate_chain: file("/etc/certs/cert.pem"),
                        private_key: file("/etc/certs/key.pem"),
                        ..TlsCertificate::default()
                    }],
                    ..credential_common(true, Some(credential_roots(Vec::new())))
                }),
                ..UpstreamTlsContext::default()
            })),
            Expect::Rejected(up!("tls_certificate_sds_secret_configs")),
        ),
        (
            "SNI validation without an SNI",
            socket(pack(&UpstreamTlsContext {
                auto_sni_san_validation: true,
                common_tls_context: Some(credential_common(
                    true,
                    Some(credential_roots(Vec::new())),
                )),
                ..UpstreamTlsContext::default()
            })),
            Expect::Rejected("typed_config(UpstreamTlsContext).auto_sni_san_validation"),
        ),
        (
            "a DNS SAN in the mesh's validation context",
            client(
                "reviews",
                mtls(CertificateValidationContext {
                    match_typed_subject_alt_names: vec![dns_san("reviews")],
                    ..CertificateValidationContext::default()
                }),
            ),
            Expect::Rejected(up!(
                "combined_validation_context.default_validation_context.match_typed_subject_alt_names[0].san_type"
            )),
        ),
    ];
    run(table, upstream);
}
