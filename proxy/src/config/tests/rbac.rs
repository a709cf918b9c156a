//! RBAC filters (network, HTTP, per route) -> `Rules`.

use std::collections::HashMap;

use isthmus_proto::envoy::envoy::config::core::v3::CidrRange;
use isthmus_proto::envoy::envoy::config::rbac::v3::{
    Permission as EnvoyPermission, Policy as EnvoyPolicy, Principal as EnvoyPrincipal,
    Rbac as EnvoyRbac, permission, principal, rbac as envoy_rbac,
};
use isthmus_proto::envoy::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use isthmus_proto::envoy::envoy::extensions::filters::http::rbac::v3::{
    Rbac as HttpRbac, RbacPerRoute,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use isthmus_proto::envoy::envoy::r#type::matcher::v3::{
    MetadataMatcher, RegexMatcher, StringMatcher, string_matcher,
};
use isthmus_proto::envoy::google::protobuf::UInt32Value;

use super::{Expect, Table, pack, run};
use crate::config::check::{Checked, Path};
use crate::config::matcher::{HeaderKey, HeaderMatch, HeaderTest, Matcher, StringMatch};
use crate::config::rbac::{
    Action, Cidr, Permission, Policy, Principal, Rules, http as http_rules, network, per_route,
};

fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(s.into())),
        ignore_case: false,
    }
}

fn any_permission() -> EnvoyPermission {
    EnvoyPermission {
        rule: Some(permission::Rule::Any(true)),
    }
}

fn any_principal() -> EnvoyPrincipal {
    EnvoyPrincipal {
        identifier: Some(principal::Identifier::Any(true)),
    }
}

fn peer(id: &str) -> EnvoyPrincipal {
    EnvoyPrincipal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(exact(id)),
            },
        )),
    }
}

fn header(name: &str, value: &str) -> EnvoyPermission {
    EnvoyPermission {
        rule: Some(permission::Rule::Header(HeaderMatcher {
            name: name.into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(exact(
                value,
            ))),
            ..HeaderMatcher::default()
        })),
    }
}

fn remote(prefix: &str, len: Option<u32>) -> EnvoyPrincipal {
    EnvoyPrincipal {
        identifier: Some(principal::Identifier::DirectRemoteIp(CidrRange {
            address_prefix: prefix.into(),
            prefix_len: len.map(|value| UInt32Value { value }),
        })),
    }
}

fn policy(permissions: Vec<EnvoyPermission>, principals: Vec<EnvoyPrincipal>) -> EnvoyPolicy {
    EnvoyPolicy {
        permissions,
        principals,
        ..EnvoyPolicy::default()
    }
}

fn rules(action: envoy_rbac::Action, policies: Vec<(&str, EnvoyPolicy)>) -> EnvoyRbac {
    EnvoyRbac {
        action: action as i32,
        policies: policies
            .into_iter()
            .map(|(name, p)| (name.to_owned(), p))
            .collect::<HashMap<_, _>>(),
        ..EnvoyRbac::default()
    }
}

fn network_filter(r: EnvoyRbac) -> NetworkRbac {
    NetworkRbac {
        rules: Some(r),
        stat_prefix: "rbac".into(),
        ..NetworkRbac::default()
    }
}

fn allow(p: EnvoyPolicy) -> NetworkRbac {
    network_filter(rules(envoy_rbac::Action::Allow, vec![("p", p)]))
}

fn convert_network(m: NetworkRbac, path: &Path) -> Checked<Rules> {
    network(&pack(&m), path)
}

fn exactly(s: &str) -> Matcher {
    Matcher {
        pattern: StringMatch::Exact(s.into()),
        ignore_case: false,
    }
}

#[test]
fn network_rules_convert_to_their_model() {
    let table: Table<NetworkRbac, Rules> = vec![
        (
            "an ALLOW policy on a verified peer",
            allow(policy(
                vec![any_permission()],
                vec![peer("spiffe://red.local/ns/shop/sa/client")],
            )),
            Expect::Model(Rules {
                action: Action::Allow,
                policies: vec![(
                    "p".into(),
                    Policy {
                        permissions: vec![Permission::Any],
                        principals: vec![Principal::Authenticated(Some(exactly(
                            "spiffe://red.local/ns/shop/sa/client",
                        )))],
                    },
                )],
            }),
        ),
        (
            "policies in name order, address ranges with their default length",
            network_filter(rules(
                envoy_rbac::Action::Deny,
                vec![
                    (
                        "b",
                        policy(vec![any_permission()], vec![remote("10.1.0.0", Some(16))]),
                    ),
                    (
                        "a",
                        policy(vec![any_permission()], vec![remote("fd00::1", None)]),
                    ),
                ],
            )),
            Expect::Model(Rules {
                action: Action::Deny,
                policies: vec![
                    (
                        "a".into(),
                        Policy {
                            permissions: vec![Permission::Any],
                            principals: vec![Principal::DirectRemoteIp(Cidr {
                                address: "fd00::1".parse().unwrap(),
                                prefix_len: 128,
                            })],
                        },
                    ),
                    (
                        "b".into(),
                        Policy {
                            permissions: vec![Permission::Any],
                            principals: vec![Principal::DirectRemoteIp(Cidr {
                                address: "10.1.0.0".parse().unwrap(),
                                prefix_len: 16,
                            })],
                        },
                    ),
                ],
            }),
        ),
        (
            "header rules keep typed names; :method is the request's method",
            allow(policy(
                vec![header(":method", "GET"), header("X-Tenant", "a")],
                vec![any_principal()],
            )),
            Expect::Holds(|r| {
                let header = |name: HeaderKey, value: &str| {
                    Permission::Header(HeaderMatch {
                        name,
                        test: HeaderTest::Value(exactly(value)),
                        invert: false,
                        treat_missing_as_empty: false,
                    })
                };
                r.policies[0].1.permissions
                    == [
                        header(HeaderKey::Method, "GET"),
                        header(
                            HeaderKey::Name(http::HeaderName::from_static("x-tenant")),
                            "a",
                        ),
                    ]
            }),
        ),
        (
            "destination port and SNI",
            allow(policy(
                vec![
                    EnvoyPermission {
                        rule: Some(permission::Rule::DestinationPort(9080)),
                    },
                    EnvoyPermission {
                        rule: Some(permission::Rule::RequestedServerName(exact("svc.local"))),
                    },
                ],
                vec![any_principal()],
            )),
            Expect::Holds(|r| {
                r.policies[0].1.permissions
                    == [
                        Permission::DestinationPort(9080),
                        Permission::RequestedServerName(exactly("svc.local")),
                    ]
            }),
        ),
    ];
    run(table, convert_network);
}

#[test]
fn rules_outside_the_profile_are_rejected_at_their_path() {
    let table: Table<NetworkRbac, Rules> = vec![
        (
            "a policy without principals",
            allow(policy(vec![any_permission()], vec![])),
            Expect::Rejected("rules.policies[\"p\"]"),
        ),
        (
            "a header rule on a name that is not a header's",
            allow(policy(vec![header("bad name", "x")], vec![any_principal()])),
            Expect::Rejected("rules.policies[\"p\"].permissions[0].header.name"),
        ),
        (
            "a nested header rule",
            allow(policy(
                vec![EnvoyPermission {
                    rule: Some(permission::Rule::NotRule(Box::new(header(
                        ":status", "200",
                    )))),
                }],
                vec![any_principal()],
            )),
            Expect::Rejected("rules.policies[\"p\"].permissions[0].not_rule.header.name"),
        ),
        (
            "an address that is not an IP",
            allow(policy(
                vec![any_permission()],
                vec![remote("ten.one", None)],
            )),
            Expect::Rejected("rules.policies[\"p\"].principals[0].direct_remote_ip.address_prefix"),
        ),
        (
            "a prefix longer than the address",
            allow(policy(
                vec![any_permission()],
                vec![remote("10.0.0.0", Some(33))],
            )),
            Expect::Rejected("rules.policies[\"p\"].principals[0].direct_remote_ip.prefix_len"),
        ),
        (
            "a destination port over 65535",
            allow(policy(
                vec![EnvoyPermission {
                    rule: Some(permission::Rule::DestinationPort(70_000)),
                }],
                vec![any_principal()],
            )),
            Expect::Rejected("rules.policies[\"p\"].permissions[0].destination_port"),
        ),
        (
            "any: false",
            allow(policy(
                vec![EnvoyPermission {
                    rule: Some(permission::Rule::Any(false)),
                }],
                vec![any_principal()],
            )),
            Expect::Rejected("rules.policies[\"p\"].permissions[0].any"),
        ),
        (
            "a metadata rule",
            allow(policy(
                vec![EnvoyPermission {
                    rule: Some(permission::Rule::Metadata(MetadataMatcher::default())),
                }],
                vec![any_principal()],
            )),
            Expect::Rejected("rules.policies[\"p\"].permissions[0].rule"),
        ),
        (
            "a regex that ignores case",
            allow(policy(
                vec![any_permission()],
                vec![EnvoyPrincipal {
                    identifier: Some(principal::Identifier::Authenticated(
                        principal::Authenticated {
                            principal_name: Some(StringMatcher {
                                match_pattern: Some(string_matcher::MatchPattern::SafeRegex(
                                    RegexMatcher {
                                        regex: "spiffe://.*".into(),
                                        ..RegexMatcher::default()
                                    },
                                )),
                                ignore_case: true,
                            }),
                        },
                    )),
                }],
            )),
            Expect::Rejected(
                "rules.policies[\"p\"].principals[0].authenticated.principal_name.ignore_case",
            ),
        ),
        (
            "an unknown action",
            network_filter(EnvoyRbac {
                action: 7,
                ..rules(envoy_rbac::Action::Allow, vec![])
            }),
            Expect::Rejected("rules.action"),
        ),
        (
            "shadow rules",
            NetworkRbac {
                shadow_rules: Some(EnvoyRbac::default()),
                ..allow(policy(vec![any_permission()], vec![any_principal()]))
            },
            Expect::Rejected("shadow_rules"),
        ),
        (
            "a network filter without rules",
            NetworkRbac::default(),
            Expect::Rejected("rules"),
        ),
    ];
    run(table, convert_network);
}

#[test]
fn http_filters_and_per_route_overrides() {
    let with = |rules: Option<EnvoyRbac>| HttpRbac {
        rules,
        ..HttpRbac::default()
    };
    let table: Table<HttpRbac, Option<Rules>> = vec![
        (
            "an HTTP filter without rules lets everything through",
            with(None),
            Expect::Model(None),
        ),
        (
            "an HTTP filter's rules",
            with(Some(rules(
                envoy_rbac::Action::Deny,
                vec![(
                    "p",
                    policy(vec![header(":authority", "a")], vec![any_principal()]),
                )],
            ))),
            Expect::Holds(|r| {
                r.as_ref().is_some_and(|r| {
                    matches!(&r.policies[0].1.permissions[0],
                        Permission::Header(h) if h.name == HeaderKey::Authority)
                })
            }),
        ),
        (
            "an HTTP filter's header rule on a bad name",
            with(Some(rules(
                envoy_rbac::Action::Allow,
                vec![("p", policy(vec![header("a:b", "x")], vec![any_principal()]))],
            ))),
            Expect::Rejected("rules.policies[\"p\"].permissions[0].header.name"),
        ),
    ];
    run(table, |m, path| http_rules(&pack(&m), path));

    let overrides: Table<RbacPerRoute, Option<Rules>> = vec![
        (
            "a per-route override with rules",
            RbacPerRoute {
                rbac: Some(with(Some(rules(
                    envoy_rbac::Action::Allow,
                    vec![("p", policy(vec![any_permission()], vec![any_principal()]))],
                )))),
            },
            Expect::Holds(|r| r.as_ref().is_some_and(|r| r.action == Action::Allow)),
        ),
        (
            "a per-route override that disables the filter",
            RbacPerRoute {
                rbac: Some(with(None)),
            },
            Expect::Model(None),
        ),
        (
            "a per-route override without its RBAC",
            RbacPerRoute { rbac: None },
            Expect::Rejected("rbac"),
        ),
    ];
    run(overrides, |m, path| per_route(&pack(&m), path));
}
