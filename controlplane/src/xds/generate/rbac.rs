//! `AuthorizationPolicy` as Envoy RBAC filters, with Istio's semantics: DENY policies are
//! checked first, then, if any ALLOW policy applies to the workload, a request must match one
//! of them. A rule matches when one of its sources, one of its operations and all of its
//! conditions match; within a source or operation, every field that is set must match.
//! Principals are SPIFFE IDs written without `spiffe://`, as in Istio.
//!
//! On TCP ports, HTTP-only fields (hosts, methods, paths, request headers) cannot be
//! evaluated: an ALLOW rule that needs them never matches, a DENY rule is applied without them
//! (the safe direction in both cases, as Istio does).

use std::collections::HashMap;

use isthmus_api::security::{Action, AuthorizationPolicySpec, Condition, Operation, Rule, Source};
use isthmus_proto::envoy::envoy::config::core::v3::CidrRange;
use isthmus_proto::envoy::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal, rbac,
};
use isthmus_proto::envoy::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use isthmus_proto::envoy::envoy::r#type::matcher::v3::{
    PathMatcher, RegexMatcher, StringMatcher, path_matcher, string_matcher,
};
use isthmus_proto::envoy::google::protobuf::UInt32Value;

use super::rbac_jwt;
use crate::config::ResourceKey;

/// Whether the filter sees HTTP requests or only connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Http,
    Tcp,
}

/// The RBAC configurations for a workload: DENY first, then ALLOW (each only if needed).
/// `issuers`: the JWT issuers the workload accepts (`requestPrincipals` are matched per issuer).
pub fn rbac_rules(
    policies: &[(&ResourceKey, &AuthorizationPolicySpec)],
    layer: Layer,
    issuers: &[&str],
) -> Vec<Rbac> {
    let mut out = Vec::new();
    for action in [Action::Deny, Action::Allow] {
        let of_action: Vec<_> = policies
            .iter()
            .filter(|(_, p)| p.action == action)
            .collect();
        if of_action.is_empty() {
            continue;
        }
        let mut rules = HashMap::new();
        for (key, policy) in of_action {
            for (i, rule) in policy.rules.iter().enumerate() {
                if let Some(p) = rule_policy(rule, layer, action, issuers) {
                    rules.insert(
                        format!("ns[{}]-policy[{}]-rule[{i}]", key.namespace, key.name),
                        p,
                    );
                }
            }
        }
        // A DENY set that can never match needs no filter; an empty ALLOW set denies all.
        if action == Action::Deny && rules.is_empty() {
            continue;
        }
        out.push(Rbac {
            action: match action {
                Action::Deny => rbac::Action::Deny,
                _ => rbac::Action::Allow,
            } as i32,
            policies: rules,
            ..Default::default()
        });
    }
    out
}

fn rule_policy(rule: &Rule, layer: Layer, action: Action, issuers: &[&str]) -> Option<Policy> {
    let needs_http = rule.to.iter().any(|t| http_only(&t.operation))
        || rule.from.iter().any(|f| request_only(&f.source))
        || rule.when.iter().any(|c| c.key.starts_with("request."));
    if layer == Layer::Tcp && needs_http && action == Action::Allow {
        return None;
    }
    let keep = |c: &&Condition| layer == Layer::Http || !c.key.starts_with("request.");
    let mut principals: Vec<Principal> = Vec::new();
    if !rule.from.is_empty() {
        principals.push(or_ids(
            rule.from
                .iter()
                .map(|f| source(&f.source, layer, issuers))
                .collect(),
        ));
    }
    principals.extend(
        rule.when
            .iter()
            .filter(keep)
            .filter_map(|c| principal_condition(c, issuers)),
    );
    let mut permissions: Vec<Permission> = Vec::new();
    if !rule.to.is_empty() {
        permissions.push(or_rules(
            rule.to
                .iter()
                .map(|t| operation(&t.operation, layer))
                .collect(),
        ));
    }
    permissions.extend(
        rule.when
            .iter()
            .filter(keep)
            .filter_map(permission_condition),
    );
    Some(Policy {
        permissions: vec![and_rules(permissions)],
        principals: vec![and_ids(principals)],
        ..Default::default()
    })
}

fn http_only(o: &Operation) -> bool {
    [
        &o.hosts,
        &o.not_hosts,
        &o.methods,
        &o.not_methods,
        &o.paths,
        &o.not_paths,
    ]
    .iter()
    .any(|v| !v.is_empty())
}

/// Istio's `*` wildcards: alone, as a prefix or as a suffix.
fn pattern(value: &str, prefix: &str, ignore_case: bool) -> StringMatcher {
    use string_matcher::MatchPattern;
    let p = if value == "*" {
        MatchPattern::SafeRegex(RegexMatcher {
            regex: ".+".into(),
            ..Default::default()
        })
    } else if let Some(rest) = value.strip_suffix('*') {
        MatchPattern::Prefix(format!("{prefix}{rest}"))
    } else if let Some(rest) = value.strip_prefix('*') {
        MatchPattern::Suffix(rest.to_owned())
    } else {
        MatchPattern::Exact(format!("{prefix}{value}"))
    };
    StringMatcher {
        match_pattern: Some(p),
        ignore_case,
    }
}

fn spiffe_prefix(value: &str) -> &'static str {
    if value.starts_with("spiffe://") || value == "*" || value.starts_with('*') {
        ""
    } else {
        "spiffe://"
    }
}

fn authenticated(m: StringMatcher) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(m),
            },
        )),
    }
}

fn principal_of(value: &str) -> Principal {
    authenticated(pattern(value, spiffe_prefix(value), false))
}

fn namespace_of(ns: &str) -> Principal {
    let ns = if ns == "*" {
        ".+".to_owned()
    } else {
        regex::escape(ns).replace("\\*", ".*")
    };
    authenticated(StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: format!("spiffe://[^/]+/ns/{ns}/.*"),
            ..Default::default()
        })),
        ignore_case: false,
    })
}

fn ip_block(block: &str) -> Principal {
    let (address, len) = match block.split_once('/') {
        Some((a, l)) => (a, l.parse().unwrap_or(32)),
        None if block.contains(':') => (block, 128),
        None => (block, 32),
    };
    Principal {
        identifier: Some(principal::Identifier::DirectRemoteIp(CidrRange {
            address_prefix: address.to_owned(),
            prefix_len: Some(UInt32Value { value: len }),
        })),
    }
}

/// A source field only a request has (its JWT).
fn request_only(s: &Source) -> bool {
    !s.request_principals.is_empty() || !s.not_request_principals.is_empty()
}

fn source(s: &Source, layer: Layer, issuers: &[&str]) -> Principal {
    let mut all = Vec::new();
    let mut field = |values: &[String], negate: bool, f: &dyn Fn(&str) -> Principal| {
        if values.is_empty() {
            return;
        }
        let any = or_ids(values.iter().map(|v| f(v)).collect());
        all.push(if negate { not_id(any) } else { any });
    };
    field(&s.principals, false, &principal_of);
    field(&s.not_principals, true, &principal_of);
    field(&s.namespaces, false, &namespace_of);
    field(&s.not_namespaces, true, &namespace_of);
    field(&s.ip_blocks, false, &ip_block);
    field(&s.not_ip_blocks, true, &ip_block);
    if layer == Layer::Http {
        let request_principal = |v: &str| rbac_jwt::request_principal(v, issuers);
        field(&s.request_principals, false, &request_principal);
        field(&s.not_request_principals, true, &request_principal);
    }
    and_ids(all)
}

fn header(name: &str, m: StringMatcher) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)),
        ..Default::default()
    }
}

fn path(value: &str) -> Permission {
    Permission {
        rule: Some(permission::Rule::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(pattern(value, "", false))),
        })),
    }
}

fn port(value: &str) -> Permission {
    Permission {
        rule: Some(permission::Rule::DestinationPort(
            value.parse().unwrap_or(0),
        )),
    }
}

fn operation(o: &Operation, layer: Layer) -> Permission {
    let mut all = Vec::new();
    let mut field = |values: &[String], negate: bool, f: &dyn Fn(&str) -> Permission| {
        if values.is_empty() {
            return;
        }
        let any = or_rules(values.iter().map(|v| f(v)).collect());
        all.push(if negate { not_rule(any) } else { any });
    };
    let host = |v: &str| Permission {
        rule: Some(permission::Rule::Header(header(
            ":authority",
            pattern(v, "", true),
        ))),
    };
    let method = |v: &str| Permission {
        rule: Some(permission::Rule::Header(header(
            ":method",
            pattern(v, "", false),
        ))),
    };
    field(&o.ports, false, &port);
    field(&o.not_ports, true, &port);
    if layer == Layer::Http {
        field(&o.hosts, false, &host);
        field(&o.not_hosts, true, &host);
        field(&o.methods, false, &method);
        field(&o.not_methods, true, &method);
        field(&o.paths, false, &path);
        field(&o.not_paths, true, &path);
    }
    and_rules(all)
}

/// Conditions on the caller.
fn principal_condition(c: &Condition, issuers: &[&str]) -> Option<Principal> {
    if c.key.starts_with("request.auth.") {
        let key = c.key.clone();
        let issuers: Vec<String> = issuers.iter().map(|i| (*i).to_owned()).collect();
        let f = move |v: &str| {
            let issuers: Vec<&str> = issuers.iter().map(String::as_str).collect();
            rbac_jwt::auth_condition(&key, v, &issuers)
                .unwrap_or_else(|| not_id(and_ids(Vec::new())))
        };
        return Some(condition(c, &f, or_ids, not_id));
    }
    let f: &dyn Fn(&str) -> Principal = match c.key.as_str() {
        "source.principal" => &principal_of,
        "source.namespace" => &namespace_of,
        "source.ip" => &ip_block,
        key if key.starts_with("request.headers[") => {
            let name = key
                .trim_start_matches("request.headers[")
                .trim_end_matches(']')
                .to_ascii_lowercase();
            return Some(condition(
                c,
                &move |v: &str| Principal {
                    identifier: Some(principal::Identifier::Header(header(
                        &name,
                        pattern(v, "", false),
                    ))),
                },
                or_ids,
                not_id,
            ));
        }
        _ => return None,
    };
    Some(condition(c, f, or_ids, not_id))
}

/// Conditions on the destination.
fn permission_condition(c: &Condition) -> Option<Permission> {
    let f: &dyn Fn(&str) -> Permission = match c.key.as_str() {
        "destination.port" => &port,
        "destination.ip" => &|v: &str| Permission {
            rule: Some(permission::Rule::DestinationIp(
                match ip_block(v).identifier {
                    Some(principal::Identifier::DirectRemoteIp(r)) => r,
                    _ => CidrRange::default(),
                },
            )),
        },
        "connection.sni" => &|v: &str| Permission {
            rule: Some(permission::Rule::RequestedServerName(pattern(v, "", false))),
        },
        _ => return None,
    };
    Some(condition(c, f, or_rules, not_rule))
}

fn condition<T>(c: &Condition, f: &dyn Fn(&str) -> T, or: fn(Vec<T>) -> T, not: fn(T) -> T) -> T {
    let mut parts = Vec::new();
    if !c.values.is_empty() {
        parts.push(or(c.values.iter().map(|v| f(v)).collect()));
    }
    if !c.not_values.is_empty() {
        parts.push(not(or(c.not_values.iter().map(|v| f(v)).collect())));
    }
    match parts.len() {
        1 => parts.remove(0),
        _ => {
            // values and notValues together: both must hold. AND is expressed with De Morgan
            // to stay within one generic helper: not(or(not a, not b)).
            let negated: Vec<T> = parts.into_iter().map(not).collect();
            not(or(negated))
        }
    }
}

fn or_ids(ids: Vec<Principal>) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::OrIds(principal::Set { ids })),
    }
}

fn and_ids(ids: Vec<Principal>) -> Principal {
    if ids.is_empty() {
        return Principal {
            identifier: Some(principal::Identifier::Any(true)),
        };
    }
    Principal {
        identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
    }
}

fn not_id(p: Principal) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::NotId(Box::new(p))),
    }
}

fn or_rules(rules: Vec<Permission>) -> Permission {
    Permission {
        rule: Some(permission::Rule::OrRules(permission::Set { rules })),
    }
}

fn and_rules(rules: Vec<Permission>) -> Permission {
    if rules.is_empty() {
        return Permission {
            rule: Some(permission::Rule::Any(true)),
        };
    }
    Permission {
        rule: Some(permission::Rule::AndRules(permission::Set { rules })),
    }
}

fn not_rule(p: Permission) -> Permission {
    Permission {
        rule: Some(permission::Rule::NotRule(Box::new(p))),
    }
}
