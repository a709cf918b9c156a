//! Evaluating RBAC rules (`AuthorizationPolicy`) against a connection or a request, on the
//! verified peer identity. The network filter sees no HTTP fields, so header and path rules
//! never match there, as in Envoy.

use std::net::{IpAddr, SocketAddr};

use crate::config::matcher::{HeaderMatch, RequestHead};
use crate::config::rbac::{Action, Permission, Principal, Rules, ValueMatch};

/// What a decision may look at.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The peer's verified SPIFFE ID (URI SAN), if it presented a certificate.
    pub peer: Option<&'a str>,
    pub remote: IpAddr,
    pub local: SocketAddr,
    pub server_name: Option<&'a str>,
    /// The request's headers and pseudo-headers; `None` on a connection (HTTP fields never
    /// match there).
    pub headers: Option<RequestHead<'a>>,
    /// The request path without the query.
    pub path: Option<&'a str>,
    /// The request's verified JWT payloads (the JWT filter's metadata); `None` on a
    /// connection or without the filter.
    pub jwt: Option<&'a crate::http::jwt::JwtMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused; the policy that matched (DENY) or none (no ALLOW policy matched).
    Deny(Option<String>),
}

pub fn evaluate(rules: &Rules, s: &Subject<'_>) -> Decision {
    let matched = rules
        .policies
        .iter()
        .find(|(_, p)| {
            p.permissions.iter().any(|x| permission(x, s))
                && p.principals.iter().any(|x| principal(x, s))
        })
        .map(|(name, _)| name.clone());
    match (rules.action, matched) {
        (Action::Allow, Some(_)) | (Action::Deny, None) | (Action::Log, _) => Decision::Allow,
        (Action::Allow, None) => Decision::Deny(None),
        (Action::Deny, Some(name)) => Decision::Deny(Some(name)),
    }
}

fn header(m: &HeaderMatch, s: &Subject<'_>) -> bool {
    s.headers.is_some_and(|head| m.matches_request(&head))
}

fn permission(p: &Permission, s: &Subject<'_>) -> bool {
    match p {
        Permission::Any => true,
        Permission::And(all) => all.iter().all(|x| permission(x, s)),
        Permission::Or(any) => any.iter().any(|x| permission(x, s)),
        Permission::Not(x) => !permission(x, s),
        Permission::Header(m) => header(m, s),
        Permission::UrlPath(m) => s.path.is_some_and(|p| m.matches(p)),
        Permission::DestinationIp(c) => c.contains(s.local.ip()),
        Permission::DestinationPort(p) => s.local.port() == *p,
        Permission::RequestedServerName(m) => m.matches(s.server_name.unwrap_or_default()),
    }
}

fn principal(p: &Principal, s: &Subject<'_>) -> bool {
    match p {
        Principal::Any => true,
        Principal::And(all) => all.iter().all(|x| principal(x, s)),
        Principal::Or(any) => any.iter().any(|x| principal(x, s)),
        Principal::Not(x) => !principal(x, s),
        Principal::Authenticated(None) => s.peer.is_some(),
        Principal::Authenticated(Some(m)) => s.peer.is_some_and(|id| m.matches(id)),
        Principal::DirectRemoteIp(c) | Principal::RemoteIp(c) => c.contains(s.remote),
        Principal::Header(m) => header(m, s),
        Principal::UrlPath(m) => s.path.is_some_and(|p| m.matches(p)),
        Principal::JwtClaim { key, path, value } => s
            .jwt
            .and_then(|payloads| payloads.get(key))
            .and_then(|payload| path.iter().try_fold(payload, |v, k| v.get(k)))
            .is_some_and(|claim| value_matches(value, claim)),
    }
}

fn value_matches(m: &ValueMatch, value: &serde_json::Value) -> bool {
    match m {
        ValueMatch::Present => true,
        ValueMatch::String(s) => value.as_str().is_some_and(|v| s.matches(v)),
        ValueMatch::OneOf(inner) => value
            .as_array()
            .is_some_and(|items| items.iter().any(|item| value_matches(inner, item))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::matcher::{Matcher, StringMatch};
    use crate::config::rbac::Policy;

    fn rules(action: Action, principal: Principal) -> Rules {
        Rules {
            action,
            policies: vec![(
                "p".into(),
                Policy {
                    permissions: vec![Permission::Any],
                    principals: vec![principal],
                },
            )],
        }
    }

    fn subject(peer: Option<&str>) -> Subject<'_> {
        Subject {
            jwt: None,
            peer,
            remote: "127.0.0.3".parse().unwrap(),
            local: "127.0.0.1:9080".parse().unwrap(),
            server_name: None,
            headers: None,
            path: None,
        }
    }

    #[test]
    fn deny_and_allow_follow_envoy() {
        let client = Principal::Authenticated(Some(Matcher {
            pattern: StringMatch::Exact("spiffe://red.local/ns/shop/sa/client".into()),
            ignore_case: false,
        }));
        let deny = rules(Action::Deny, client.clone());
        assert_eq!(
            evaluate(
                &deny,
                &subject(Some("spiffe://red.local/ns/shop/sa/client"))
            ),
            Decision::Deny(Some("p".into()))
        );
        assert_eq!(
            evaluate(&deny, &subject(Some("spiffe://red.local/ns/shop/sa/other"))),
            Decision::Allow
        );
        assert_eq!(evaluate(&deny, &subject(None)), Decision::Allow);
        let allow = rules(Action::Allow, client);
        assert_eq!(evaluate(&allow, &subject(None)), Decision::Deny(None));
        assert_eq!(
            evaluate(
                &allow,
                &subject(Some("spiffe://red.local/ns/shop/sa/client"))
            ),
            Decision::Allow
        );
        let log = rules(Action::Log, Principal::Any);
        assert_eq!(evaluate(&log, &subject(None)), Decision::Allow);
    }

    #[test]
    fn http_fields_never_match_on_a_connection() {
        let m = HeaderMatch {
            name: crate::config::matcher::HeaderKey::parse("x").unwrap(),
            test: crate::config::matcher::HeaderTest::Present(true),
            invert: false,
            treat_missing_as_empty: false,
        };
        let deny = Rules {
            action: Action::Deny,
            policies: vec![(
                "h".into(),
                Policy {
                    permissions: vec![Permission::Header(m)],
                    principals: vec![Principal::Any],
                },
            )],
        };
        assert_eq!(evaluate(&deny, &subject(None)), Decision::Allow);
    }

    #[test]
    fn method_and_authority_rules_match_the_request_line() {
        use crate::config::matcher::{HeaderKey, HeaderTest};
        let on = |name: &str, value: &str| {
            Permission::Header(HeaderMatch {
                name: HeaderKey::parse(name).unwrap(),
                test: HeaderTest::Value(Matcher {
                    pattern: StringMatch::Exact(value.into()),
                    ignore_case: true,
                }),
                invert: false,
                treat_missing_as_empty: false,
            })
        };
        // Istio's `methods: [GET]` and `hosts: [reviews:9080]`.
        let allow = Rules {
            action: Action::Allow,
            policies: vec![(
                "read".into(),
                Policy {
                    permissions: vec![Permission::And(vec![
                        on(":method", "GET"),
                        on(":authority", "Reviews:9080"),
                    ])],
                    principals: vec![Principal::Any],
                },
            )],
        };
        let headers = http::HeaderMap::new();
        let request = |method: &'static http::Method| Subject {
            headers: Some(RequestHead {
                headers: &headers,
                method,
                authority: "reviews:9080",
                scheme: "http",
                path_and_query: "/",
            }),
            path: Some("/"),
            ..subject(None)
        };
        assert_eq!(
            evaluate(&allow, &request(&http::Method::GET)),
            Decision::Allow
        );
        assert_eq!(
            evaluate(&allow, &request(&http::Method::POST)),
            Decision::Deny(None)
        );
        // On a connection, no request line: no match, as in Envoy.
        assert_eq!(evaluate(&allow, &subject(None)), Decision::Deny(None));
    }
}
