//! SPIFFE IDs and trust domains, parsed and validated by the rules of the SPIFFE-ID specification:
//! `spiffe://<trust-domain><path>`, trust domain of `a-z 0-9 . - _`, path segments of
//! `a-z A-Z 0-9 . - _`, no empty, `.` or `..` segment, no trailing `/`, no query, fragment,
//! port or user info, at most 2048 bytes.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// What is wrong with a SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdErrorKind {
    #[error("it is empty")]
    Empty,
    #[error("it must start with \"spiffe://\"")]
    WrongScheme,
    #[error("the trust domain is missing")]
    MissingTrustDomain,
    #[error(
        "the trust domain has {ch:?} at byte {at}; only lowercase a-z, 0-9, '.', '-' and '_' are allowed"
    )]
    BadTrustDomainChar { ch: char, at: usize },
    #[error("the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error("path segment {index} is empty (a doubled or trailing '/')")]
    EmptySegment { index: usize },
    #[error("path segment {index} is {segment:?}; '.' and '..' are not allowed")]
    DotSegment { index: usize, segment: String },
    #[error("the path has {ch:?} at byte {at}; only a-z, A-Z, 0-9, '.', '-' and '_' are allowed")]
    BadPathChar { ch: char, at: usize },
    #[error("it is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("it is not of the form /ns/<namespace>/sa/<service-account>")]
    NotWorkloadPath,
}

/// A SPIFFE ID or trust domain that failed validation, with the input and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {kind}")]
pub struct SpiffeIdError {
    what: &'static str,
    input: String,
    kind: SpiffeIdErrorKind,
}

impl SpiffeIdError {
    fn new(what: &'static str, input: &str, kind: SpiffeIdErrorKind) -> Self {
        // Keep error messages bounded even for hostile input.
        let input = input.chars().take(256).collect();
        Self { what, input, kind }
    }

    /// The reason, without the input.
    pub fn kind(&self) -> &SpiffeIdErrorKind {
        &self.kind
    }
}

/// A SPIFFE trust domain such as `cluster.local`: the scope of one mesh's root of trust.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`red.local`) or a trust domain's SPIFFE ID
    /// (`spiffe://red.local`).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        let bare = name.strip_prefix(SCHEME).unwrap_or(name);
        validate_trust_domain(bare)
            .map_err(|kind| SpiffeIdError::new("trust domain", name, kind))?;
        Ok(Self(bare.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>`.
    pub fn id_uri(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A workload's identity: `spiffe://<trust-domain>/<path>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or starts with `/`.
    path: String,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID URI.
    pub fn parse(uri: &str) -> Result<Self, SpiffeIdError> {
        let err = |kind| SpiffeIdError::new("SPIFFE ID", uri, kind);
        if uri.is_empty() {
            return Err(err(SpiffeIdErrorKind::Empty));
        }
        if uri.len() > MAX_ID_LEN {
            return Err(err(SpiffeIdErrorKind::TooLong));
        }
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or(err(SpiffeIdErrorKind::WrongScheme))?;
        let (td, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        validate_trust_domain(td).map_err(|kind| match kind {
            // Report positions relative to the whole URI.
            SpiffeIdErrorKind::BadTrustDomainChar { ch, at } => {
                err(SpiffeIdErrorKind::BadTrustDomainChar {
                    ch,
                    at: at + SCHEME.len(),
                })
            }
            other => err(other),
        })?;
        validate_path(path, SCHEME.len() + td.len()).map_err(err)?;
        Ok(Self {
            trust_domain: TrustDomain(td.to_owned()),
            path: path.to_owned(),
        })
    }

    /// Builds an ID from a trust domain and a path such as `/ns/default/sa/ratings`.
    pub fn from_parts(trust_domain: TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        validate_path(path, 0).map_err(|kind| SpiffeIdError::new("SPIFFE ID path", path, kind))?;
        Ok(Self {
            trust_domain,
            path: path.to_owned(),
        })
    }

    /// The Kubernetes-style identity `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    pub fn workload(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        for (what, part) in [
            ("namespace", namespace),
            ("service account", service_account),
        ] {
            if part.is_empty() || part.contains('/') {
                let kind = match part.find('/') {
                    Some(at) => SpiffeIdErrorKind::BadPathChar { ch: '/', at },
                    None => SpiffeIdErrorKind::EmptySegment { index: 0 },
                };
                return Err(SpiffeIdError::new(what, part, kind));
            }
        }
        Self::from_parts(
            trust_domain.clone(),
            &format!("/ns/{namespace}/sa/{service_account}"),
        )
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The namespace of a `/ns/<ns>/sa/<sa>` identity.
    pub fn namespace(&self) -> Option<&str> {
        self.workload_parts().map(|(ns, _)| ns)
    }

    /// The service account of a `/ns/<ns>/sa/<sa>` identity.
    pub fn service_account(&self) -> Option<&str> {
        self.workload_parts().map(|(_, sa)| sa)
    }

    fn workload_parts(&self) -> Option<(&str, &str)> {
        let mut segments = self.path.strip_prefix('/')?.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// Whether this is a `/ns/<ns>/sa/<sa>` identity; the error says why not.
    pub fn require_workload(&self) -> Result<(), SpiffeIdError> {
        match self.workload_parts() {
            Some(_) => Ok(()),
            None => Err(SpiffeIdError::new(
                "workload SPIFFE ID",
                &self.to_string(),
                SpiffeIdErrorKind::NotWorkloadPath,
            )),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdErrorKind> {
    if td.is_empty() {
        return Err(SpiffeIdErrorKind::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdErrorKind::TrustDomainTooLong);
    }
    match td
        .char_indices()
        .find(|(_, c)| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some((at, ch)) => Err(SpiffeIdErrorKind::BadTrustDomainChar { ch, at }),
        None => Ok(()),
    }
}

/// `offset` is where the path starts in the text the caller reports positions against.
fn validate_path(path: &str, offset: usize) -> Result<(), SpiffeIdErrorKind> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(body) = path.strip_prefix('/') else {
        return Err(SpiffeIdErrorKind::BadPathChar {
            ch: path.chars().next().unwrap_or('?'),
            at: offset,
        });
    };
    let mut at = offset + 1;
    for (index, segment) in body.split('/').enumerate() {
        if segment.is_empty() {
            return Err(SpiffeIdErrorKind::EmptySegment { index });
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdErrorKind::DotSegment {
                index,
                segment: segment.to_owned(),
            });
        }
        if let Some((i, ch)) = segment
            .char_indices()
            .find(|(_, c)| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeIdErrorKind::BadPathChar { ch, at: at + i });
        }
        at += segment.len() + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use SpiffeIdErrorKind as K;

    #[test]
    fn valid_ids_round_trip() {
        for uri in [
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/default/sa/ratings",
            "spiffe://red.local/ns/bookinfo/sa/productpage-v1",
            "spiffe://a_b-c.d/x/Y/z.9",
            "spiffe://td/..x/x..",
        ] {
            let id = SpiffeId::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(id.to_string(), uri);
        }
    }

    #[test]
    fn invalid_ids_name_the_problem() {
        let cases: &[(&str, K)] = &[
            ("", K::Empty),
            ("http://cluster.local/ns/a", K::WrongScheme),
            ("SPIFFE://cluster.local", K::WrongScheme),
            ("spiffe://", K::MissingTrustDomain),
            ("spiffe:///ns/a", K::MissingTrustDomain),
            (
                "spiffe://Cluster.local",
                K::BadTrustDomainChar { ch: 'C', at: 9 },
            ),
            (
                "spiffe://cluster.local:8080/x",
                K::BadTrustDomainChar { ch: ':', at: 22 },
            ),
            (
                "spiffe://user@td/x",
                K::BadTrustDomainChar { ch: '@', at: 13 },
            ),
            ("spiffe://td/", K::EmptySegment { index: 0 }),
            ("spiffe://td/ns//sa", K::EmptySegment { index: 1 }),
            ("spiffe://td/ns/a/", K::EmptySegment { index: 2 }),
            (
                "spiffe://td/ns/./sa",
                K::DotSegment {
                    index: 1,
                    segment: ".".into(),
                },
            ),
            (
                "spiffe://td/..",
                K::DotSegment {
                    index: 0,
                    segment: "..".into(),
                },
            ),
            ("spiffe://td/ns/a?b", K::BadPathChar { ch: '?', at: 16 }),
            ("spiffe://td/ns/a#b", K::BadPathChar { ch: '#', at: 16 }),
            ("spiffe://td/ns/a%20b", K::BadPathChar { ch: '%', at: 16 }),
            ("spiffe://td/ns/é", K::BadPathChar { ch: 'é', at: 15 }),
        ];
        for (uri, kind) in cases {
            let err = SpiffeId::parse(uri).expect_err(uri);
            assert_eq!(err.kind(), kind, "{uri}");
            assert!(err.to_string().contains("invalid SPIFFE ID"), "{err}");
        }
    }

    #[test]
    fn length_limits() {
        let long_td = "a".repeat(256);
        assert_eq!(
            SpiffeId::parse(&format!("spiffe://{long_td}"))
                .unwrap_err()
                .kind(),
            &K::TrustDomainTooLong
        );
        let long_path = "/a".repeat(1100);
        assert_eq!(
            SpiffeId::parse(&format!("spiffe://td{long_path}"))
                .unwrap_err()
                .kind(),
            &K::TooLong
        );
        // The message stays short even for a huge input.
        assert!(
            SpiffeId::parse(&format!("x{long_path}"))
                .unwrap_err()
                .to_string()
                .len()
                < 400
        );
    }

    #[test]
    fn workload_parts() {
        let td = TrustDomain::new("red.local").unwrap();
        let id = SpiffeId::workload(&td, "bookinfo", "ratings").unwrap();
        assert_eq!(id.to_string(), "spiffe://red.local/ns/bookinfo/sa/ratings");
        assert_eq!(id.namespace(), Some("bookinfo"));
        assert_eq!(id.service_account(), Some("ratings"));
        assert!(id.require_workload().is_ok());
        let other = SpiffeId::parse("spiffe://red.local/ns/a/sa/b/extra").unwrap();
        assert_eq!(other.namespace(), None);
        assert_eq!(
            other.require_workload().unwrap_err().kind(),
            &K::NotWorkloadPath
        );
        assert!(SpiffeId::workload(&td, "a/b", "c").is_err());
    }

    #[test]
    fn trust_domain_accepts_bare_or_uri_form() {
        assert_eq!(
            TrustDomain::new("spiffe://red.local").unwrap().as_str(),
            "red.local"
        );
        assert_eq!(
            TrustDomain::new("red.local").unwrap().id_uri(),
            "spiffe://red.local"
        );
        assert!(TrustDomain::new("Red").is_err());
        assert!(TrustDomain::new("").is_err());
    }
}
