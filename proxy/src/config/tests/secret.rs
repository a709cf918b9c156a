//! `Secret` -> `Secret`: the mesh's SPIFFE certificate and trust bundles, and the plain
//! certificate and roots of a credential (Istio's `credentialName`, `kubernetes://NAME` and
//! `kubernetes://NAME-cacert`).

use isthmus_identity::SpiffeId;
use isthmus_identity::testing::TestCa;
use isthmus_proto::envoy::envoy::config::cluster::v3::{Cluster as EnvoyCluster, cluster};
use isthmus_proto::envoy::envoy::config::core::v3::{
    Address, DataSource, SocketAddress, TransportSocket, TypedExtensionConfig, address,
    data_source, socket_address, transport_socket,
};
use isthmus_proto::envoy::envoy::config::listener::v3::{
    Filter, FilterChain as EnvoyChain, Listener as EnvoyListener, filter,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy as EnvoyTcpProxy, tcp_proxy,
};
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, Secret as EnvoySecret,
    SpiffeCertValidatorConfig, TlsCertificate, UpstreamTlsContext, common_tls_context, secret,
    spiffe_cert_validator_config,
};

use super::{Expect, Table, ads, pack, run};
use crate::config::check::{Checked, Path};
use crate::config::secret::{Secret, convert};
use crate::config::{ProxyConfig, XdsType, cluster as clusters, listener as listeners};
use crate::transport::testing::{Ca, dns_sans, sds};

/// What a converted secret is, comparable.
#[derive(Debug, PartialEq)]
enum Kind {
    /// The mesh's: its SPIFFE ID.
    Certificate(String),
    /// The mesh's: the trust domains.
    TrustBundles(Vec<String>),
    /// A plain certificate: the leaf's DNS and URI SANs.
    PlainCertificate(Vec<String>, Vec<String>),
    /// Plain roots: how many.
    Roots(usize),
}

fn kind(secret: EnvoySecret, path: &Path) -> Checked<Kind> {
    Ok(match convert(secret, path)? {
        Secret::Certificate(c) => Kind::Certificate(c.spiffe_id().to_string()),
        Secret::TrustBundles(b) => {
            Kind::TrustBundles(b.iter().map(|b| b.trust_domain().to_string()).collect())
        }
        Secret::PlainCertificate(c) => {
            Kind::PlainCertificate(c.leaf().dns_sans.clone(), c.leaf().uri_sans.clone())
        }
        Secret::Roots(r) => Kind::Roots(r.certificates().len()),
    })
}

fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(pem.as_bytes().to_vec())),
        ..DataSource::default()
    })
}

fn certificate(name: &str, (cert, key): &(String, String)) -> EnvoySecret {
    EnvoySecret {
        name: name.into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(cert),
            private_key: inline(key),
            ..TlsCertificate::default()
        })),
    }
}

fn validation(name: &str, context: CertificateValidationContext) -> EnvoySecret {
    EnvoySecret {
        name: name.into(),
        r#type: Some(secret::Type::ValidationContext(context)),
    }
}

fn roots(name: &str, pem: &str) -> EnvoySecret {
    validation(
        name,
        CertificateValidationContext {
            trusted_ca: inline(pem),
            ..CertificateValidationContext::default()
        },
    )
}

/// The SPIFFE validator with one trust domain's bundle, as isthmusd sends `ROOTCA`.
fn spiffe_validator(domain: &str, bundle: &str) -> Option<TypedExtensionConfig> {
    Some(TypedExtensionConfig {
        name: "envoy.tls.cert_validator.spiffe".into(),
        typed_config: Some(pack(&SpiffeCertValidatorConfig {
            trust_domains: vec![spiffe_cert_validator_config::TrustDomain {
                name: domain.into(),
                trust_bundle: inline(bundle),
                ..Default::default()
            }],
            ..SpiffeCertValidatorConfig::default()
        })),
    })
}

/// `secret` after `edit` of its certificate.
fn edit_certificate(
    mut secret: EnvoySecret,
    edit: impl FnOnce(&mut TlsCertificate),
) -> EnvoySecret {
    if let Some(secret::Type::TlsCertificate(c)) = &mut secret.r#type {
        edit(c);
    }
    secret
}

/// `secret` after `edit` of its validation context.
fn edit_validation(
    mut secret: EnvoySecret,
    edit: impl FnOnce(&mut CertificateValidationContext),
) -> EnvoySecret {
    if let Some(secret::Type::ValidationContext(v)) = &mut secret.r#type {
        edit(v);
    }
    secret
}

#[test]
fn secrets_convert_to_the_mesh_s_or_to_plain_ones() {
    const ID: &str = "spiffe://red.local/ns/istio-system/sa/gw";
    let mesh = TestCa::new("red.local");
    let svid = mesh.issue(&SpiffeId::parse(ID).unwrap());
    let svid = (svid.chain_pem(), svid.key_pem().to_owned());
    let ca = Ca::new("gateway CA");
    let other = Ca::new("another CA");
    let gw = ca.server(&["gw.example.com"]);
    let table: Table<EnvoySecret, Kind> = vec![
        (
            "the workload's certificate: its SPIFFE ID",
            certificate("default", &svid),
            Expect::Model(Kind::Certificate(ID.into())),
        ),
        (
            "a credential's certificate: plain",
            certificate("kubernetes://gw", &gw),
            Expect::Model(Kind::PlainCertificate(
                vec!["gw.example.com".into()],
                Vec::new(),
            )),
        ),
        (
            "a certificate without a SPIFFE ID: plain, whatever its name",
            certificate("gw-cert", &gw),
            Expect::Model(Kind::PlainCertificate(
                vec!["gw.example.com".into()],
                Vec::new(),
            )),
        ),
        (
            "a URI SAN that is not a SPIFFE ID: plain",
            certificate(
                "kubernetes://partner",
                &ca.server(&["partner.example.com", "https://partner.example.com/"]),
            ),
            Expect::Model(Kind::PlainCertificate(
                vec!["partner.example.com".into()],
                vec!["https://partner.example.com/".into()],
            )),
        ),
        (
            "a credential's certificate with a SPIFFE ID: still plain (a credential is never \
             the mesh's identity)",
            certificate("kubernetes://svid", &svid),
            Expect::Model(Kind::PlainCertificate(Vec::new(), vec![ID.into()])),
        ),
        (
            "a credential's certificate as an inline string",
            edit_certificate(certificate("kubernetes://gw", &gw), |c| {
                c.certificate_chain = Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(gw.0.clone())),
                    ..DataSource::default()
                });
            }),
            Expect::Holds(|k| matches!(k, Kind::PlainCertificate(..))),
        ),
        (
            "the mesh's trust bundles",
            validation(
                "ROOTCA",
                CertificateValidationContext {
                    custom_validator_config: spiffe_validator("red.local", &mesh.root_pem()),
                    ..CertificateValidationContext::default()
                },
            ),
            Expect::Model(Kind::TrustBundles(vec!["red.local".into()])),
        ),
        (
            "a credential's roots",
            roots("kubernetes://gw-cacert", &ca.pem),
            Expect::Model(Kind::Roots(1)),
        ),
        (
            "two roots",
            roots(
                "kubernetes://gw-cacert",
                &format!("{}{}", ca.pem, other.pem),
            ),
            Expect::Model(Kind::Roots(2)),
        ),
    ];
    run(table, kind);
}

#[test]
fn secrets_outside_the_profile_are_rejected_at_their_path() {
    let ca = Ca::new("gateway CA");
    let gw = ca.server(&["gw.example.com"]);
    let (_, other_key) = ca.server(&["gw.example.com"]);
    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let table: Table<EnvoySecret, Kind> = vec![
        (
            "a plain certificate with another's key",
            certificate("kubernetes://gw", &(gw.0.clone(), other_key.clone())),
            Expect::Rejected("tls_certificate"),
        ),
        (
            "a SPIFFE ID and another URI SAN: not an SVID, not a credential",
            certificate(
                "default",
                &ca.server(&["spiffe://red.local/ns/a/sa/b", "https://example.com/"]),
            ),
            Expect::Rejected("tls_certificate"),
        ),
        (
            "a chain that is not PEM",
            edit_certificate(certificate("kubernetes://gw", &gw), |c| {
                c.certificate_chain = inline("not PEM");
            }),
            Expect::Rejected("tls_certificate.certificate_chain"),
        ),
        (
            "a certificate without its key",
            edit_certificate(certificate("kubernetes://gw", &gw), |c| {
                c.private_key = None
            }),
            Expect::Rejected("tls_certificate.private_key"),
        ),
        (
            "a chain from a file (the control plane reads files, not the proxy)",
            edit_certificate(certificate("kubernetes://gw", &gw), |c| {
                c.certificate_chain = Some(DataSource {
                    specifier: Some(data_source::Specifier::Filename("/etc/gw/cert.pem".into())),
                    ..DataSource::default()
                });
            }),
            Expect::Rejected("tls_certificate.certificate_chain"),
        ),
        (
            "roots that are not PEM",
            roots("kubernetes://gw-cacert", "not PEM"),
            Expect::Rejected("validation_context.trusted_ca"),
        ),
        (
            "roots none of which is a certificate",
            roots("kubernetes://gw-cacert", garbage),
            Expect::Rejected("validation_context.trusted_ca"),
        ),
        (
            "roots and the SPIFFE validator in one secret",
            edit_validation(roots("kubernetes://gw-cacert", &ca.pem), |v| {
                v.custom_validator_config = spiffe_validator("red.local", &ca.pem);
            }),
            Expect::Rejected("validation_context.trusted_ca"),
        ),
        (
            "SAN matchers in the roots' secret (they are the transport socket's)",
            edit_validation(roots("kubernetes://gw-cacert", &ca.pem), |v| {
                v.match_typed_subject_alt_names = dns_sans(&["client.example.com"]);
            }),
            Expect::Rejected("validation_context.match_typed_subject_alt_names"),
        ),
        (
            "a CRL (Istio's ca.crl): not implemented",
            edit_validation(roots("kubernetes://gw-cacert", &ca.pem), |v| {
                v.crl = inline("CRL");
            }),
            Expect::Rejected("validation_context.crl"),
        ),
        (
            "neither roots nor a validator",
            validation(
                "kubernetes://gw-cacert",
                CertificateValidationContext::default(),
            ),
            Expect::Rejected("validation_context"),
        ),
        (
            "roots from a file",
            edit_validation(roots("kubernetes://gw-cacert", &ca.pem), |v| {
                v.trusted_ca = Some(DataSource {
                    specifier: Some(data_source::Specifier::Filename("/etc/ca.pem".into())),
                    ..DataSource::default()
                });
            }),
            Expect::Rejected("validation_context.trusted_ca"),
        ),
    ];
    run(table, kind);
}

#[test]
fn a_plain_certificate_never_prints_its_key() {
    let ca = Ca::new("gateway CA");
    let (cert, key) = ca.server(&["gw.example.com"]);
    let secret = convert(
        certificate("kubernetes://gw", &(cert, key.clone())),
        &Path::root(),
    )
    .unwrap();
    let printed = format!("{secret:?} {secret:#?}");
    assert!(printed.contains("gw.example.com"), "{printed}");
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    for piece in body.as_bytes().chunks(16) {
        let piece = std::str::from_utf8(piece).unwrap();
        assert!(!printed.contains(piece), "{printed}");
    }
    let Secret::PlainCertificate(plain) = &secret else {
        panic!("{secret:?}")
    };
    let der = format!("{:?}", plain.key().secret_der());
    assert!(!printed.contains(&der[1..der.len().min(40)]), "{printed}");
}

fn tls_socket(config: isthmus_proto::envoy::google::protobuf::Any) -> Option<TransportSocket> {
    Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(config)),
    })
}

#[test]
fn the_credentials_of_listeners_and_clusters_are_subscribed_to() {
    // A gateway's MUTUAL server with `credentialName: gw`.
    let server = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("kubernetes://gw")],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                    "kubernetes://gw-cacert",
                )),
            ),
            ..CommonTlsContext::default()
        }),
        ..DownstreamTlsContext::default()
    };
    let listener = EnvoyListener {
        name: "gw".into(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "0.0.0.0".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(8443)),
                ..SocketAddress::default()
            })),
        }),
        filter_chains: vec![EnvoyChain {
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&EnvoyTcpProxy {
                    stat_prefix: "tcp".into(),
                    cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("egress".into())),
                    ..EnvoyTcpProxy::default()
                }))),
            }],
            transport_socket: tls_socket(pack(&server)),
            ..EnvoyChain::default()
        }],
        ..EnvoyListener::default()
    };
    // A DestinationRule's MUTUAL with `credentialName: egress`, next to the mesh's mTLS.
    let origination = UpstreamTlsContext {
        sni: "api.example.com".into(),
        auto_sni_san_validation: true,
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("kubernetes://egress")],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                    "kubernetes://egress-cacert",
                )),
            ),
            ..CommonTlsContext::default()
        }),
        ..UpstreamTlsContext::default()
    };
    let mesh = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("default")],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                    "ROOTCA",
                )),
            ),
            ..CommonTlsContext::default()
        }),
        ..UpstreamTlsContext::default()
    };
    let cluster = |name: &str, tls| EnvoyCluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: ads(),
            service_name: String::new(),
        }),
        transport_socket: tls_socket(tls),
        ..EnvoyCluster::default()
    };

    let mut config = ProxyConfig::default();
    let listener = listeners::convert(listener, &Path::root()).unwrap();
    config.listeners.insert("gw".into(), listener.into());
    for (name, tls) in [("egress", pack(&origination)), ("reviews", pack(&mesh))] {
        let converted = clusters::convert(cluster(name, tls), &Path::root()).unwrap();
        config.clusters.insert(name.into(), converted.into());
    }
    assert_eq!(
        config
            .wanted(XdsType::Secret)
            .into_iter()
            .collect::<Vec<_>>(),
        [
            "ROOTCA",
            "default",
            "kubernetes://egress",
            "kubernetes://egress-cacert",
            "kubernetes://gw",
            "kubernetes://gw-cacert",
        ]
    );
}
