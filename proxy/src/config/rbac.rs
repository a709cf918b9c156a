//! RBAC (`AuthorizationPolicy` as isthmusd delivers it): policies of permissions (what is
//! asked) and principals (who asks, by verified SPIFFE ID or address), for the network and the
//! HTTP filter and the HTTP filter's per-route override.

use std::net::IpAddr;

use isthmus_proto::envoy::envoy::config::core::v3::CidrRange;
use isthmus_proto::envoy::envoy::config::rbac::v3::{
    MetadataSource, Permission as EnvoyPermission, Policy as EnvoyPolicy,
    Principal as EnvoyPrincipal, Rbac as EnvoyRbac, permission, principal, rbac,
};
use isthmus_proto::envoy::envoy::extensions::filters::http::rbac::v3::{
    Rbac as HttpRbac, RbacPerRoute,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use isthmus_proto::envoy::envoy::r#type::matcher::v3::{
    MetadataMatcher, PathMatcher, ValueMatcher, list_matcher, metadata_matcher, path_matcher,
    value_matcher,
};
use isthmus_proto::envoy::google::protobuf::Any;

use super::check::{Checked, Invalid, Path, each, reject_set, required};
use super::decode::typed;
use super::jwt_authn::JWT_AUTHN_FILTER;
use super::matcher::{self, HeaderMatch, Matcher};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    /// Evaluated and counted, never enforced.
    Log,
}

/// One RBAC filter's rules. No rules at all (an HTTP filter waiting for its per-route
/// override) means the filter lets everything through.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub action: Action,
    /// By policy name, in name order.
    pub policies: Vec<(String, Policy)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Any one must match.
    pub permissions: Vec<Permission>,
    /// Any one must match.
    pub principals: Vec<Principal>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatch),
    /// The path without query and fragment.
    UrlPath(Matcher),
    DestinationIp(Cidr),
    DestinationPort(u16),
    RequestedServerName(Matcher),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// A verified peer certificate whose URI SAN matches; `None`: any verified peer.
    Authenticated(Option<Matcher>),
    /// The connection's peer address.
    DirectRemoteIp(Cidr),
    /// The original client address (the same as the peer: no trusted proxies in front).
    RemoteIp(Cidr),
    Header(HeaderMatch),
    UrlPath(Matcher),
    /// A claim of a verified JWT: the JWT filter's dynamic metadata, under the provider's
    /// payload key, then a path into the payload.
    JwtClaim {
        key: String,
        path: Vec<String>,
        value: ValueMatch,
    },
}

/// Envoy's `ValueMatcher`, for JSON claims.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueMatch {
    String(Matcher),
    Present,
    /// A list with an element that matches.
    OneOf(Box<ValueMatch>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.address, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The typed config of an `envoy.filters.network.rbac` filter.
pub fn network(any: &Any, path: &Path) -> Checked<Rules> {
    let NetworkRbac {
        rules,
        matcher,
        shadow_rules,
        shadow_matcher,
        shadow_rules_stat_prefix: _,
        stat_prefix: _,
        enforcement_type,
        delay_deny,
    } = typed(any, path)?;
    reject_set!(path; matcher, shadow_rules, shadow_matcher, enforcement_type, delay_deny);
    self::rules(required(rules, &path.field("rules"))?, &path.field("rules"))
}

/// The typed config of an `envoy.filters.http.rbac` filter; `None` when it has no rules.
pub fn http(any: &Any, path: &Path) -> Checked<Option<Rules>> {
    http_config(typed(any, path)?, path)
}

fn http_config(config: HttpRbac, path: &Path) -> Checked<Option<Rules>> {
    let HttpRbac {
        rules,
        rules_stat_prefix: _,
        matcher,
        shadow_rules,
        shadow_matcher,
        shadow_rules_stat_prefix: _,
        track_per_rule_stats: _,
    } = config;
    reject_set!(path; matcher, shadow_rules, shadow_matcher);
    rules
        .map(|r| self::rules(r, &path.field("rules")))
        .transpose()
}

/// A per-route override of an HTTP RBAC filter.
pub fn per_route(any: &Any, path: &Path) -> Checked<Option<Rules>> {
    let RbacPerRoute { rbac } = typed(any, path)?;
    let path = path.field("rbac");
    http_config(required(rbac, &path)?, &path)
}

fn rules(r: EnvoyRbac, path: &Path) -> Checked<Rules> {
    let EnvoyRbac {
        action,
        policies,
        audit_logging_options,
    } = r;
    reject_set!(path; audit_logging_options);
    let action = match rbac::Action::try_from(action) {
        Ok(rbac::Action::Allow) => Action::Allow,
        Ok(rbac::Action::Deny) => Action::Deny,
        Ok(rbac::Action::Log) => Action::Log,
        Err(_) => {
            return Err(Invalid::new(
                &path.field("action"),
                format!("unknown action {action}"),
            ));
        }
    };
    let mut out: Vec<(String, Policy)> = policies
        .into_iter()
        .map(|(name, p)| {
            let policy = policy(p, &path.field("policies").key(&name))?;
            Ok((name, policy))
        })
        .collect::<Checked<_>>()?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Rules {
        action,
        policies: out,
    })
}

fn policy(p: EnvoyPolicy, path: &Path) -> Checked<Policy> {
    let EnvoyPolicy {
        permissions,
        principals,
        condition,
        checked_condition,
        cel_config,
    } = p;
    reject_set!(path; condition, checked_condition, cel_config);
    if permissions.is_empty() || principals.is_empty() {
        return Err(Invalid::new(
            path,
            "a policy needs permissions and principals",
        ));
    }
    Ok(Policy {
        permissions: each(permissions, path, "permissions", self::permission)?,
        principals: each(principals, path, "principals", self::principal)?,
    })
}

fn permission(p: EnvoyPermission, path: &Path) -> Checked<Permission> {
    use permission::Rule;
    let set = |rules: Vec<EnvoyPermission>, field: &str| -> Checked<Vec<Permission>> {
        let path = path.field(field).field("rules");
        rules
            .into_iter()
            .enumerate()
            .map(|(i, p)| permission(p, &path.index(i)))
            .collect()
    };
    Ok(match required(p.rule, path)? {
        Rule::Any(true) => Permission::Any,
        Rule::Any(false) => return Err(Invalid::new(&path.field("any"), "must be true")),
        Rule::AndRules(s) => Permission::And(set(s.rules, "and_rules")?),
        Rule::OrRules(s) => Permission::Or(set(s.rules, "or_rules")?),
        Rule::NotRule(p) => Permission::Not(Box::new(permission(*p, &path.field("not_rule"))?)),
        Rule::Header(h) => Permission::Header(matcher::header(h, &path.field("header"))?),
        Rule::UrlPath(p) => Permission::UrlPath(url_path(p, &path.field("url_path"))?),
        Rule::DestinationIp(c) => {
            Permission::DestinationIp(cidr(c, &path.field("destination_ip"))?)
        }
        Rule::DestinationPort(p) => Permission::DestinationPort(
            u16::try_from(p)
                .map_err(|_| Invalid::new(&path.field("destination_port"), "not a port"))?,
        ),
        Rule::RequestedServerName(m) => Permission::RequestedServerName(matcher::string(
            Some(m),
            &path.field("requested_server_name"),
        )?),
        _ => return Err(Invalid::unsupported(&path.field("rule"))),
    })
}

fn principal(p: EnvoyPrincipal, path: &Path) -> Checked<Principal> {
    use principal::Identifier;
    let set = |ids: Vec<EnvoyPrincipal>, field: &str| -> Checked<Vec<Principal>> {
        let path = path.field(field).field("ids");
        ids.into_iter()
            .enumerate()
            .map(|(i, p)| principal(p, &path.index(i)))
            .collect()
    };
    Ok(match required(p.identifier, path)? {
        Identifier::Any(true) => Principal::Any,
        Identifier::Any(false) => return Err(Invalid::new(&path.field("any"), "must be true")),
        Identifier::AndIds(s) => Principal::And(set(s.ids, "and_ids")?),
        Identifier::OrIds(s) => Principal::Or(set(s.ids, "or_ids")?),
        Identifier::NotId(p) => Principal::Not(Box::new(principal(*p, &path.field("not_id"))?)),
        Identifier::Authenticated(a) => Principal::Authenticated(
            a.principal_name
                .map(|m| {
                    matcher::string(
                        Some(m),
                        &path.field("authenticated").field("principal_name"),
                    )
                })
                .transpose()?,
        ),
        Identifier::DirectRemoteIp(c) => {
            Principal::DirectRemoteIp(cidr(c, &path.field("direct_remote_ip"))?)
        }
        Identifier::RemoteIp(c) => Principal::RemoteIp(cidr(c, &path.field("remote_ip"))?),
        Identifier::Header(h) => Principal::Header(matcher::header(h, &path.field("header"))?),
        Identifier::UrlPath(p) => Principal::UrlPath(url_path(p, &path.field("url_path"))?),
        Identifier::SourcedMetadata(s) => {
            let path = path.field("sourced_metadata");
            if s.metadata_source != MetadataSource::Dynamic as i32 {
                return Err(Invalid::new(
                    &path.field("metadata_source"),
                    "only DYNAMIC metadata",
                ));
            }
            jwt_claim(
                required(s.metadata_matcher, &path.field("metadata_matcher"))?,
                &path.field("metadata_matcher"),
            )?
        }
        #[allow(deprecated)]
        Identifier::Metadata(m) => jwt_claim(m, &path.field("metadata"))?,
        _ => return Err(Invalid::unsupported(&path.field("identifier"))),
    })
}

/// A metadata matcher on the JWT filter's payloads (the only dynamic metadata there is here).
fn jwt_claim(m: MetadataMatcher, path: &Path) -> Checked<Principal> {
    let MetadataMatcher {
        filter,
        path: segments,
        value,
        invert,
    } = m;
    reject_set!(path; invert);
    if filter != JWT_AUTHN_FILTER {
        return Err(Invalid::new(
            &path.field("filter"),
            format!("only {JWT_AUTHN_FILTER}'s metadata"),
        ));
    }
    let mut keys = segments
        .into_iter()
        .enumerate()
        .map(|(i, s)| match s.segment {
            Some(metadata_matcher::path_segment::Segment::Key(k)) => Ok(k),
            None => Err(Invalid::required(&path.field("path").index(i))),
        });
    let key = keys
        .next()
        .ok_or_else(|| Invalid::required(&path.field("path")))??;
    let rest = keys.collect::<Checked<Vec<String>>>()?;
    Ok(Principal::JwtClaim {
        key,
        path: rest,
        value: value_match(required(value, &path.field("value"))?, &path.field("value"))?,
    })
}

fn value_match(v: ValueMatcher, path: &Path) -> Checked<ValueMatch> {
    use value_matcher::MatchPattern;
    Ok(match required(v.match_pattern, path)? {
        MatchPattern::StringMatch(m) => {
            ValueMatch::String(matcher::string(Some(m), &path.field("string_match"))?)
        }
        MatchPattern::PresentMatch(true) => ValueMatch::Present,
        MatchPattern::ListMatch(list) => {
            let path = path.field("list_match");
            match required(list.match_pattern, &path)? {
                list_matcher::MatchPattern::OneOf(inner) => {
                    ValueMatch::OneOf(Box::new(value_match(*inner, &path.field("one_of"))?))
                }
            }
        }
        _ => {
            return Err(Invalid::new(
                path,
                "only string_match, present_match: true or list_match",
            ));
        }
    })
}

fn url_path(p: PathMatcher, path: &Path) -> Checked<Matcher> {
    match required(p.rule, path)? {
        path_matcher::Rule::Path(m) => matcher::string(Some(m), &path.field("path")),
    }
}

pub(crate) fn cidr(c: CidrRange, path: &Path) -> Checked<Cidr> {
    let CidrRange {
        address_prefix,
        prefix_len,
    } = c;
    let address: IpAddr = address_prefix.parse().map_err(|_| {
        Invalid::new(
            &path.field("address_prefix"),
            format!("{address_prefix:?} is not an IP address"),
        )
    })?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let len = prefix_len.map_or(max, |l| l.value);
    if len > max {
        return Err(Invalid::new(
            &path.field("prefix_len"),
            format!("at most {max}"),
        ));
    }
    Ok(Cidr {
        address,
        prefix_len: u8::try_from(len).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_ranges_contain_what_they_should() {
        let net = Cidr {
            address: "10.1.0.0".parse().unwrap(),
            prefix_len: 16,
        };
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(
            net.contains("::ffff:10.1.0.9".parse().unwrap()),
            "v4-mapped v6"
        );
        let all = Cidr {
            address: "0.0.0.0".parse().unwrap(),
            prefix_len: 0,
        };
        assert!(all.contains("192.0.2.1".parse().unwrap()));
    }
}
