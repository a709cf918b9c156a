//! The RBAC principals of a verified JWT (`requestPrincipals`, `request.auth.*`), read from the
//! JWT filter's dynamic metadata (`jwt.rs`), as a stock Envoy's RBAC filter can: the payload
//! keeps `iss` and `sub` apart, so Istio's `<iss>/<sub>` is matched issuer by issuer, for the
//! issuers the workload's `RequestAuthentication`s accept.

use isthmus_proto::envoy::envoy::config::rbac::v3::{
    MetadataSource, Principal, SourcedMetadata, principal,
};
use isthmus_proto::envoy::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, StringMatcher, ValueMatcher, list_matcher, metadata_matcher,
    string_matcher, value_matcher,
};

use super::jwt::{JWT_FILTER, PAYLOAD_KEY};

fn string(p: string_matcher::MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ignore_case: false,
    }
}

fn exact(value: &str) -> StringMatcher {
    string(string_matcher::MatchPattern::Exact(value.to_owned()))
}

/// A claim of the verified payload (`path` below it) matched by `value`.
fn claim(path: &[&str], value: value_matcher::MatchPattern) -> Principal {
    let path = std::iter::once(PAYLOAD_KEY)
        .chain(path.iter().copied())
        .map(|key| metadata_matcher::PathSegment {
            segment: Some(metadata_matcher::path_segment::Segment::Key(key.to_owned())),
        })
        .collect();
    Principal {
        identifier: Some(principal::Identifier::SourcedMetadata(SourcedMetadata {
            metadata_matcher: Some(MetadataMatcher {
                filter: JWT_FILTER.into(),
                path,
                value: Some(ValueMatcher {
                    match_pattern: Some(value),
                }),
                invert: false,
            }),
            metadata_source: MetadataSource::Dynamic as i32,
        })),
    }
}

fn string_claim(path: &[&str], m: StringMatcher) -> Principal {
    claim(path, value_matcher::MatchPattern::StringMatch(m))
}

/// A claim that is a string, or a list holding such a string (`aud`, `groups`).
fn string_or_list_claim(path: &[&str], m: StringMatcher) -> Principal {
    let one_of = ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(m.clone())),
    };
    or(vec![
        string_claim(path, m),
        claim(
            path,
            value_matcher::MatchPattern::ListMatch(Box::new(ListMatcher {
                match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(one_of))),
            })),
        ),
    ])
}

fn or(ids: Vec<Principal>) -> Principal {
    match ids.len() {
        // Nothing can match: Envoy's sets need at least one member.
        0 => Principal {
            identifier: Some(principal::Identifier::NotId(Box::new(Principal {
                identifier: Some(principal::Identifier::Any(true)),
            }))),
        },
        _ => Principal {
            identifier: Some(principal::Identifier::OrIds(principal::Set { ids })),
        },
    }
}

fn and(ids: Vec<Principal>) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
    }
}

/// Istio's wildcards on a claim: `*` (present), `prefix*`, `*suffix`, or exact.
fn wildcard(value: &str) -> StringMatcher {
    use string_matcher::MatchPattern;
    if value == "*" {
        string(MatchPattern::SafeRegex(
            isthmus_proto::envoy::envoy::r#type::matcher::v3::RegexMatcher {
                regex: ".+".into(),
                ..Default::default()
            },
        ))
    } else if let Some(prefix) = value.strip_suffix('*') {
        string(MatchPattern::Prefix(prefix.to_owned()))
    } else if let Some(suffix) = value.strip_prefix('*') {
        string(MatchPattern::Suffix(suffix.to_owned()))
    } else {
        exact(value)
    }
}

/// `requestPrincipals` and `request.auth.principal`: `<iss>/<sub>` with Istio's wildcards.
pub fn request_principal(value: &str, issuers: &[&str]) -> Principal {
    if value == "*" {
        return string_claim(&["iss"], wildcard("*"));
    }
    let mut options = Vec::new();
    for issuer in issuers {
        let joined_prefix = format!("{issuer}/");
        // What `sub` must be for `<issuer>/<sub>` to match the value.
        let subs: Vec<StringMatcher> = if let Some(prefix) = value.strip_suffix('*') {
            if let Some(rest) = prefix.strip_prefix(&joined_prefix) {
                // Envoy refuses an empty prefix: `<iss>/*` is any subject.
                vec![match rest {
                    "" => wildcard("*"),
                    rest => string(string_matcher::MatchPattern::Prefix(rest.to_owned())),
                }]
            } else if joined_prefix.starts_with(prefix) {
                vec![wildcard("*")]
            } else {
                Vec::new()
            }
        } else if let Some(suffix) = value.strip_prefix('*') {
            // The suffix ends `sub`, or covers `/<sub>` and the end of the issuer.
            let mut subs = vec![string(string_matcher::MatchPattern::Suffix(
                suffix.to_owned(),
            ))];
            for (i, _) in suffix.char_indices().skip(1) {
                if joined_prefix.ends_with(&suffix[..i]) {
                    subs.push(exact(&suffix[i..]));
                }
            }
            subs
        } else {
            value
                .strip_prefix(&joined_prefix)
                .map(exact)
                .into_iter()
                .collect()
        };
        if !subs.is_empty() {
            let subs = or(subs
                .into_iter()
                .map(|m| string_claim(&["sub"], m))
                .collect());
            options.push(and(vec![string_claim(&["iss"], exact(issuer)), subs]));
        }
    }
    or(options)
}

/// A `request.auth.*` condition key's value; `None` for other keys.
pub fn auth_condition(key: &str, value: &str, issuers: &[&str]) -> Option<Principal> {
    Some(match key {
        "request.auth.principal" => request_principal(value, issuers),
        "request.auth.audiences" => string_or_list_claim(&["aud"], wildcard(value)),
        "request.auth.presenter" => string_claim(&["azp"], wildcard(value)),
        _ => {
            // `request.auth.claims[groups]`, nested: `request.auth.claims[a][b]`.
            let inner = key
                .strip_prefix("request.auth.claims[")?
                .strip_suffix(']')?;
            let path: Vec<&str> = inner.split("][").collect();
            string_or_list_claim(&path, wildcard(value))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(p: &Principal) -> String {
        format!("{p:?}")
    }

    #[test]
    fn request_principals_are_matched_issuer_by_issuer() {
        let issuers = ["https://issuer.example.com", "https://other.example.com"];
        let exact = shown(&request_principal(
            "https://issuer.example.com/alice",
            &issuers,
        ));
        assert!(
            exact.contains("Exact(\"https://issuer.example.com\")"),
            "{exact}"
        );
        assert!(exact.contains("Exact(\"alice\")"), "{exact}");
        assert!(!exact.contains("other.example.com"), "{exact}");

        let any_subject = shown(&request_principal("https://other.example.com/*", &issuers));
        assert!(
            any_subject.contains("Exact(\"https://other.example.com\")"),
            "{any_subject}"
        );
        assert!(any_subject.contains("regex: \".+\""), "{any_subject}");

        // A suffix that covers the end of the issuer and the subject.
        let suffix = shown(&request_principal("*example.com/bob", &issuers));
        assert!(suffix.contains("Suffix(\"example.com/bob\")"), "{suffix}");
        assert!(suffix.contains("Exact(\"bob\")"), "{suffix}");

        // An issuer no RequestAuthentication accepts: nothing can match.
        let never = request_principal("https://unknown.example/alice", &issuers);
        assert!(matches!(
            never.identifier,
            Some(principal::Identifier::NotId(_))
        ));
        let any = shown(&request_principal("*", &issuers));
        assert!(any.contains("\"iss\"") && any.contains(".+"), "{any}");
    }

    #[test]
    fn claims_are_strings_or_lists_and_can_be_nested() {
        let groups = shown(
            &auth_condition("request.auth.claims[groups]", "admins", &[])
                .unwrap_or_else(|| panic!()),
        );
        assert!(
            groups.contains("ListMatch") && groups.contains("Exact(\"admins\")"),
            "{groups}"
        );
        let nested = shown(
            &auth_condition("request.auth.claims[realm][role]", "x", &[])
                .unwrap_or_else(|| panic!()),
        );
        assert!(
            nested.contains("\"realm\"") && nested.contains("\"role\""),
            "{nested}"
        );
        assert!(auth_condition("request.auth.other", "x", &[]).is_none());
    }
}
