//! String, header and query matchers, shared by routes and RBAC. Regexes use the `regex` crate,
//! whose syntax and linear-time guarantee match RE2's (Envoy's `safe_regex`); a match is of the
//! whole value, as in Envoy.

use isthmus_proto::envoy::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, header_matcher, query_parameter_matcher,
};
use isthmus_proto::envoy::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher,
};
use regex::Regex;

use super::check::{Checked, Invalid, Path, required};

/// The longest regex accepted (bounds compile time and memory for hostile input).
const MAX_REGEX_LEN: usize = 4096;

#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

/// A string matcher and whether it ignores ASCII case.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub pattern: StringMatch,
    pub ignore_case: bool,
}

impl PartialEq for StringMatch {
    fn eq(&self, other: &Self) -> bool {
        use StringMatch::*;
        match (self, other) {
            (Exact(a), Exact(b))
            | (Prefix(a), Prefix(b))
            | (Suffix(a), Suffix(b))
            | (Contains(a), Contains(b)) => a == b,
            (Regex(a), Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.ignore_case == other.ignore_case
    }
}

impl Matcher {
    pub fn matches(&self, value: &str) -> bool {
        let fold = |s: &str| {
            if self.ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_owned()
            }
        };
        match &self.pattern {
            StringMatch::Exact(s) if self.ignore_case => value.eq_ignore_ascii_case(s),
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => fold(value).starts_with(&fold(s)),
            StringMatch::Suffix(s) => fold(value).ends_with(&fold(s)),
            StringMatch::Contains(s) => fold(value).contains(&fold(s)),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// Compiles `pattern` to match a whole value.
pub fn whole_regex(pattern: &str, path: &Path) -> Checked<Regex> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(Invalid::new(
            path,
            format!("regex longer than {MAX_REGEX_LEN} bytes"),
        ));
    }
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| Invalid::new(path, format!("invalid regex: {e}")))
}

pub fn regex(m: RegexMatcher, path: &Path) -> Checked<Regex> {
    #[allow(deprecated)]
    // Google RE2 or the default engine: the same syntax.
    let RegexMatcher {
        regex,
        engine_type: _,
    } = m;
    whole_regex(&regex, &path.field("regex"))
}

pub fn string(m: Option<StringMatcher>, path: &Path) -> Checked<Matcher> {
    let StringMatcher {
        ignore_case,
        match_pattern,
    } = required(m, path)?;
    let pattern = match required(match_pattern, path)? {
        string_matcher::MatchPattern::Exact(s) => StringMatch::Exact(s),
        string_matcher::MatchPattern::Prefix(s) => StringMatch::Prefix(s),
        string_matcher::MatchPattern::Suffix(s) => StringMatch::Suffix(s),
        string_matcher::MatchPattern::Contains(s) => StringMatch::Contains(s),
        string_matcher::MatchPattern::SafeRegex(r) => {
            if ignore_case {
                return Err(Invalid::new(
                    &path.field("ignore_case"),
                    "not with safe_regex",
                ));
            }
            StringMatch::Regex(regex(r, &path.field("safe_regex"))?)
        }
        string_matcher::MatchPattern::Custom(_) => {
            return Err(Invalid::unsupported(&path.field("custom")));
        }
    };
    Ok(Matcher {
        pattern,
        ignore_case,
    })
}

/// The header a matcher reads: one of the request's headers by its validated name, or a
/// pseudo-header (Envoy shows matchers the request line as `:method`, `:authority`, `:scheme`
/// and `:path`; isthmusd matches Istio's `methods`, `hosts` and `uri` on them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderKey {
    Name(http::HeaderName),
    Method,
    Authority,
    Scheme,
    /// The path with its query, as sent.
    Path,
}

impl HeaderKey {
    /// The key `name` (any case) stands for; `None` if it is neither a header name nor one of
    /// the four pseudo-headers.
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.to_ascii_lowercase();
        Some(match name.as_str() {
            ":method" => Self::Method,
            ":authority" => Self::Authority,
            ":scheme" => Self::Scheme,
            ":path" => Self::Path,
            _ => Self::Name(http::HeaderName::from_bytes(name.as_bytes()).ok()?),
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Name(name) => name.as_str(),
            Self::Method => ":method",
            Self::Authority => ":authority",
            Self::Scheme => ":scheme",
            Self::Path => ":path",
        }
    }
}

/// A request's head as header matchers see it: its headers and its pseudo-headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub headers: &'a http::HeaderMap,
    pub method: &'a http::Method,
    /// As the request carried it (URI or `Host`), port included.
    pub authority: &'a str,
    /// `http` or `https` (the URI's, else by the connection).
    pub scheme: &'a str,
    /// The path with its query.
    pub path_and_query: &'a str,
}

/// What a header matcher asks of a header.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderTest {
    /// Present (`true`) or absent (`false`).
    Present(bool),
    Value(Matcher),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatch {
    pub name: HeaderKey,
    pub test: HeaderTest,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

impl HeaderMatch {
    /// `value`: the header's values joined by `,` (as Envoy matches them), or `None` if absent.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let value = match value {
            None if self.treat_missing_as_empty => Some(""),
            v => v,
        };
        let hit = match (&self.test, value) {
            (HeaderTest::Present(want), v) => v.is_some() == *want,
            (HeaderTest::Value(_), None) => return false, // absent never matches, even inverted
            (HeaderTest::Value(m), Some(v)) => m.matches(v),
        };
        hit != self.invert
    }

    /// Whether the request's header matches: its values joined by `,` (values that are not
    /// visible ASCII are left out, as before), or the pseudo-header's value.
    pub fn matches_request(&self, head: &RequestHead<'_>) -> bool {
        let name = match &self.name {
            HeaderKey::Name(name) => name,
            HeaderKey::Method => return self.matches(Some(head.method.as_str())),
            HeaderKey::Authority => return self.matches(Some(head.authority)),
            HeaderKey::Scheme => return self.matches(Some(head.scheme)),
            HeaderKey::Path => return self.matches(Some(head.path_and_query)),
        };
        let mut values = head
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok());
        match (values.next(), values.next()) {
            (None, _) => self.matches(None),
            (Some(only), None) => self.matches(Some(only)),
            (Some(first), Some(second)) => {
                let mut joined = format!("{first},{second}");
                for value in values {
                    joined.push(',');
                    joined.push_str(value);
                }
                self.matches(Some(&joined))
            }
        }
    }
}

pub fn header(m: HeaderMatcher, path: &Path) -> Checked<HeaderMatch> {
    let HeaderMatcher {
        name,
        invert_match,
        treat_missing_header_as_empty,
        header_match_specifier,
    } = m;
    if name.is_empty() {
        return Err(Invalid::required(&path.field("name")));
    }
    let key = HeaderKey::parse(&name).ok_or_else(|| {
        Invalid::new(
            &path.field("name"),
            format!("{name:?} is not a header name (nor :method, :authority, :scheme or :path)"),
        )
    })?;
    use header_matcher::HeaderMatchSpecifier as S;
    let exact = |s: String| {
        HeaderTest::Value(Matcher {
            pattern: StringMatch::Exact(s),
            ignore_case: false,
        })
    };
    #[allow(deprecated)]
    let test = match header_match_specifier {
        None => HeaderTest::Present(true),
        Some(S::ExactMatch(s)) => exact(s),
        Some(S::PrefixMatch(s)) => HeaderTest::Value(Matcher {
            pattern: StringMatch::Prefix(s),
            ignore_case: false,
        }),
        Some(S::SuffixMatch(s)) => HeaderTest::Value(Matcher {
            pattern: StringMatch::Suffix(s),
            ignore_case: false,
        }),
        Some(S::ContainsMatch(s)) => HeaderTest::Value(Matcher {
            pattern: StringMatch::Contains(s),
            ignore_case: false,
        }),
        Some(S::SafeRegexMatch(r)) => HeaderTest::Value(Matcher {
            pattern: StringMatch::Regex(regex(r, &path.field("safe_regex_match"))?),
            ignore_case: false,
        }),
        Some(S::PresentMatch(p)) => HeaderTest::Present(p),
        Some(S::StringMatch(s)) => HeaderTest::Value(string(Some(s), &path.field("string_match"))?),
        Some(S::RangeMatch(_)) => return Err(Invalid::unsupported(&path.field("range_match"))),
    };
    Ok(HeaderMatch {
        name: key,
        test,
        invert: invert_match,
        treat_missing_as_empty: treat_missing_header_as_empty,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryMatch {
    pub name: String,
    /// `None`: the parameter must be present.
    pub value: Option<Matcher>,
}

pub fn query(m: QueryParameterMatcher, path: &Path) -> Checked<QueryMatch> {
    let QueryParameterMatcher {
        name,
        query_parameter_match_specifier,
    } = m;
    if name.is_empty() {
        return Err(Invalid::required(&path.field("name")));
    }
    let value = match query_parameter_match_specifier {
        Some(query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(s)) => {
            Some(string(Some(s), &path.field("string_match"))?)
        }
        Some(query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true)) | None => {
            None
        }
        Some(query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(false)) => {
            return Err(Invalid::new(&path.field("present_match"), "must be true"));
        }
    };
    Ok(QueryMatch { name, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_match_the_whole_value() {
        let r = whole_regex("/api/v[0-9]+", &Path::root()).unwrap();
        assert!(r.is_match("/api/v2"));
        assert!(!r.is_match("/api/v2/users"));
        assert!(
            whole_regex("(", &Path::root())
                .unwrap_err()
                .reason
                .contains("invalid regex")
        );
        assert!(whole_regex(&"a".repeat(5000), &Path::root()).is_err());
    }

    #[test]
    fn header_matches_follow_envoy() {
        let m = HeaderMatch {
            name: HeaderKey::parse("x-version").unwrap(),
            test: HeaderTest::Value(Matcher {
                pattern: StringMatch::Exact("v2".into()),
                ignore_case: false,
            }),
            invert: true,
            treat_missing_as_empty: false,
        };
        assert!(m.matches(Some("v1")));
        assert!(!m.matches(Some("v2")));
        assert!(
            !m.matches(None),
            "an absent header does not match, inverted or not"
        );
    }
}
