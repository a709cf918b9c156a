//! Route selection: the virtual host by authority, then the first route whose match holds.

use crate::config::matcher::RequestHead;
use crate::config::route::{Domain, PathMatch, Route, RouteMatch, RouteTable, VirtualHost};

/// What a route match looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Headers and pseudo-headers, for header matchers.
    pub head: RequestHead<'a>,
    /// The path without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// A CONNECT request: only `connect_matcher` routes match it.
    pub connect: bool,
}

/// Envoy's order: exact domains, then the longest suffix wildcard, then the longest prefix
/// wildcard, then `*`. A domain with a port matches only that authority; one without matches the
/// host with any port.
pub fn virtual_host<'t>(table: &'t RouteTable, authority: &str) -> Option<&'t VirtualHost> {
    let host = strip_port(authority);
    let mut best: Option<(u32, &VirtualHost)> = None;
    for vh in &table.virtual_hosts {
        for domain in &vh.domains {
            let rank = match domain {
                // The whole authority first: `svc:9090` must not land on the virtual host
                // of `svc:9080` that also lists the bare `svc`.
                Domain::Exact(d) if d == authority => 3_000_001,
                Domain::Exact(d) if d == host => 3_000_000,
                Domain::Suffix(s)
                    if authority.ends_with(s.as_str()) || host.ends_with(s.as_str()) =>
                {
                    2_000_000 + len(s)
                }
                Domain::Prefix(p) if authority.starts_with(p.as_str()) => 1_000_000 + len(p),
                Domain::Any => 1,
                _ => 0,
            };
            if rank > best.map_or(0, |(r, _)| r) {
                best = Some((rank, vh));
            }
        }
    }
    best.map(|(_, vh)| vh)
}

fn len(s: &str) -> u32 {
    u32::try_from(s.len()).unwrap_or(u32::MAX).min(999_999)
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        // `[v6]` or `[v6]:port`
        return match authority.find(']') {
            Some(i) => &authority[..=i],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    }
}

pub fn route<'v>(vh: &'v VirtualHost, request: &RequestFacts<'_>) -> Option<&'v Route> {
    vh.routes.iter().find(|r| matches(&r.matcher, request))
}

fn matches(m: &RouteMatch, r: &RequestFacts<'_>) -> bool {
    if r.connect != (m.path == PathMatch::Connect) {
        return false;
    }
    let path_ok = match &m.path {
        PathMatch::Connect => true,
        PathMatch::Prefix(p) => starts_with(r.path, p, m.case_sensitive),
        PathMatch::Exact(p) => {
            if m.case_sensitive {
                r.path == p
            } else {
                r.path.eq_ignore_ascii_case(p)
            }
        }
        PathMatch::Regex(re) => re.is_match(r.path),
        PathMatch::SeparatedPrefix(p) => {
            starts_with(r.path, p, m.case_sensitive)
                && matches!(r.path.as_bytes().get(p.len()), None | Some(b'/'))
        }
    };
    if !path_ok {
        return false;
    }
    if m.grpc
        && !r
            .head
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"))
    {
        return false;
    }
    if !m.headers.iter().all(|h| h.matches_request(&r.head)) {
        return false;
    }
    for q in &m.query {
        let value = r.query.and_then(|query| {
            query
                .split('&')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == q.name).then_some(v)
                })
                .next()
        });
        let ok = match (&q.value, value) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(m), Some(v)) => m.matches(v),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn starts_with(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        path.starts_with(prefix)
    } else {
        path.len() >= prefix.len()
            && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::matcher::{
        HeaderKey, HeaderMatch, HeaderTest, Matcher, QueryMatch, StringMatch,
    };
    use crate::config::route::{Action, Edits};

    fn vh(name: &str, domains: Vec<Domain>, routes: Vec<Route>) -> VirtualHost {
        VirtualHost {
            policies: Default::default(),
            name: name.into(),
            domains,
            routes,
            headers: Edits::default(),
            rbac: HashMap::new(),
        }
    }

    fn route(
        name: &str,
        path: PathMatch,
        headers: Vec<HeaderMatch>,
        query: Vec<QueryMatch>,
    ) -> Route {
        Route {
            policies: Default::default(),
            name: name.into(),
            matcher: RouteMatch {
                path,
                case_sensitive: true,
                headers,
                query,
                grpc: false,
            },
            action: Action::Direct {
                status: http::StatusCode::OK,
                body: None,
            },
            headers: Edits::default(),
            rbac: HashMap::new(),
        }
    }

    #[test]
    fn virtual_hosts_follow_envoys_precedence() {
        let table = RouteTable {
            name: "t".into(),
            virtual_hosts: vec![
                vh("any", vec![Domain::Any], vec![]),
                vh("suffix", vec![Domain::Suffix(".shop.local".into())], vec![]),
                vh(
                    "exact",
                    vec![Domain::Exact("reviews.shop.local:9080".into())],
                    vec![],
                ),
                vh("prefix", vec![Domain::Prefix("api.".into())], vec![]),
            ],
            headers: Edits::default(),
        };
        let name = |a: &str| virtual_host(&table, a).unwrap().name.clone();
        assert_eq!(name("reviews.shop.local:9080"), "exact");
        assert_eq!(name("reviews.shop.local:80"), "suffix");
        assert_eq!(name("api.example"), "prefix");
        assert_eq!(name("other"), "any");
    }

    #[test]
    fn the_whole_authority_wins_over_the_name_without_its_port() {
        let table = RouteTable {
            name: "t".into(),
            virtual_hosts: vec![
                vh(
                    "9080",
                    vec![
                        Domain::Exact("ratings.local:9080".into()),
                        Domain::Exact("ratings.local".into()),
                    ],
                    vec![],
                ),
                vh(
                    "9090",
                    vec![Domain::Exact("ratings.local:9090".into())],
                    vec![],
                ),
            ],
            headers: Edits::default(),
        };
        let name = |a: &str| virtual_host(&table, a).unwrap().name.clone();
        assert_eq!(name("ratings.local:9090"), "9090");
        assert_eq!(name("ratings.local:9080"), "9080");
        assert_eq!(name("ratings.local"), "9080");
        // A port no virtual host names still finds the name without its port.
        assert_eq!(name("ratings.local:7000"), "9080");
    }

    #[test]
    fn routes_match_in_order_on_path_headers_and_query() {
        let v2 = HeaderMatch {
            name: HeaderKey::parse("x-version").unwrap(),
            test: HeaderTest::Value(Matcher {
                pattern: StringMatch::Exact("v2".into()),
                ignore_case: false,
            }),
            invert: false,
            treat_missing_as_empty: false,
        };
        let debug = QueryMatch {
            name: "debug".into(),
            value: Some(Matcher {
                pattern: StringMatch::Exact("1".into()),
                ignore_case: false,
            }),
        };
        let host = vh(
            "h",
            vec![Domain::Any],
            vec![
                route("v2", PathMatch::Prefix("/".into()), vec![v2], vec![]),
                route(
                    "debug",
                    PathMatch::SeparatedPrefix("/api".into()),
                    vec![],
                    vec![debug],
                ),
                route("health", PathMatch::Exact("/health".into()), vec![], vec![]),
                route("rest", PathMatch::Prefix("/".into()), vec![], vec![]),
            ],
        );
        let mut headers = http::HeaderMap::new();
        let pick = |path: &str, query: Option<&str>, headers: &http::HeaderMap| {
            let facts = RequestFacts {
                head: head(headers, &http::Method::GET, path),
                path,
                query,
                connect: false,
            };
            super::route(&host, &facts).unwrap().name.clone()
        };
        assert_eq!(pick("/health", None, &headers), "health");
        assert_eq!(pick("/api/x", Some("debug=1"), &headers), "debug");
        assert_eq!(
            pick("/apix", Some("debug=1"), &headers),
            "rest",
            "separated prefix"
        );
        assert_eq!(pick("/api/x", Some("debug=2"), &headers), "rest");
        headers.insert("x-version", "v2".parse().unwrap());
        assert_eq!(pick("/health", None, &headers), "v2");
    }

    fn head<'a>(
        headers: &'a http::HeaderMap,
        method: &'a http::Method,
        path: &'a str,
    ) -> RequestHead<'a> {
        RequestHead {
            headers,
            method,
            authority: "a",
            scheme: "http",
            path_and_query: path,
        }
    }

    #[test]
    fn routes_match_on_pseudo_headers_and_joined_values() {
        let on = |name: &str, pattern: StringMatch| HeaderMatch {
            name: HeaderKey::parse(name).unwrap(),
            test: HeaderTest::Value(Matcher {
                pattern,
                ignore_case: false,
            }),
            invert: false,
            treat_missing_as_empty: false,
        };
        let host = vh(
            "h",
            vec![Domain::Any],
            vec![
                route(
                    "post",
                    PathMatch::Prefix("/".into()),
                    vec![on(":method", StringMatch::Exact("POST".into()))],
                    vec![],
                ),
                route(
                    "query-in-path",
                    PathMatch::Prefix("/".into()),
                    vec![on(":path", StringMatch::Suffix("?v=1".into()))],
                    vec![],
                ),
                route(
                    "both-tags",
                    PathMatch::Prefix("/".into()),
                    vec![on("x-tag", StringMatch::Exact("a,b".into()))],
                    vec![],
                ),
                route("rest", PathMatch::Prefix("/".into()), vec![], vec![]),
            ],
        );
        let mut headers = http::HeaderMap::new();
        let pick = |method: http::Method, path_and_query: &str, headers: &http::HeaderMap| {
            let (path, query) = path_and_query
                .split_once('?')
                .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
            let facts = RequestFacts {
                head: head(headers, &method, path_and_query),
                path,
                query,
                connect: false,
            };
            super::route(&host, &facts).unwrap().name.clone()
        };
        assert_eq!(pick(http::Method::POST, "/x", &headers), "post");
        assert_eq!(pick(http::Method::GET, "/x?v=1", &headers), "query-in-path");
        assert_eq!(pick(http::Method::GET, "/x", &headers), "rest");
        headers.append("x-tag", "a".parse().unwrap());
        assert_eq!(pick(http::Method::GET, "/x", &headers), "rest");
        headers.append("x-tag", "b".parse().unwrap());
        assert_eq!(pick(http::Method::GET, "/x", &headers), "both-tags");
    }
}
