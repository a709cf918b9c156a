//! What the JWT filter does to a request: each provider looks for a token where it is told to,
//! verifies it (signature with the provider's keys, `iss`, `aud`, `exp` and `nbf` with the
//! clock skew), and the filter's requirement decides. A request that fails it gets 401 with
//! Envoy's wording; the verified payloads are kept for RBAC's metadata matchers.

use std::collections::BTreeMap;

use base64::Engine;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;

use super::{Body, local_reply};
use crate::config::jwt_authn::{JwtAuthn, Provider, Requirement};

/// Verified payloads, by the provider's `payload_in_metadata` key.
pub type JwtMetadata = BTreeMap<String, Value>;

/// Why a token did not verify (Envoy's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Missing,
    Malformed,
    UnknownIssuer,
    Expired,
    NotYetValid,
    Audience,
    NoKey,
    Signature,
}

impl Failure {
    fn text(self) -> &'static str {
        match self {
            Self::Missing => "Jwt is missing",
            Self::Malformed => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            Self::UnknownIssuer => "Jwt issuer is not configured",
            Self::Expired => "Jwt is expired",
            Self::NotYetValid => "Jwt not yet valid",
            Self::Audience => "Audiences in Jwt are not allowed",
            Self::NoKey => "Jwks doesn't have key to match kid or alg from Jwt",
            Self::Signature => "Jwt verification fails",
        }
    }
}

/// A token found on the request, and where.
struct Found {
    token: String,
    header: Option<http::HeaderName>,
}

/// The request's JWTs verified against `authn`: the payloads to keep, or why not (answer it
/// with [`unauthorized`]). The tokens of providers that do not forward them are removed from
/// the request.
pub fn authenticate<B>(request: &mut Request<B>, authn: &JwtAuthn) -> Result<JwtMetadata, Failure> {
    let found: Vec<Option<Found>> = authn.providers.iter().map(|p| find(request, p)).collect();
    let mut metadata = JwtMetadata::new();
    let mut verified = vec![None; authn.providers.len()];
    let outcome = satisfies(
        &authn.requirement,
        authn,
        &found,
        &mut verified,
        &mut metadata,
    );
    outcome?;
    for ((provider, found), ok) in authn.providers.iter().zip(&found).zip(&verified) {
        if let (
            false,
            Some(Found {
                header: Some(h), ..
            }),
            Some(Ok(())),
        ) = (provider.forward, found, ok)
        {
            request.headers_mut().remove(h);
        }
    }
    Ok(metadata)
}

/// Whether the requirement holds; providers are verified once each.
fn satisfies(
    r: &Requirement,
    authn: &JwtAuthn,
    found: &[Option<Found>],
    verified: &mut [Option<Result<(), Failure>>],
    metadata: &mut JwtMetadata,
) -> Result<(), Failure> {
    match r {
        Requirement::Provider(i) => {
            if let Some(outcome) = verified[*i] {
                return outcome;
            }
            let outcome = match &found[*i] {
                None => Err(Failure::Missing),
                Some(f) => verify(&f.token, &authn.providers[*i]).map(|payload| {
                    let key = &authn.providers[*i].payload_key;
                    if !key.is_empty() {
                        metadata.insert(key.clone(), payload);
                    }
                }),
            };
            verified[*i] = Some(outcome);
            outcome
        }
        Requirement::Any(list) => {
            let mut last = Err(Failure::Missing);
            for r in list {
                last = satisfies(r, authn, found, verified, metadata);
                if last.is_ok() {
                    return last;
                }
            }
            // The most telling failure: a token that failed beats a missing one.
            let failures: Vec<Failure> = (0..authn.providers.len())
                .filter_map(|i| match verified[i] {
                    Some(Err(f)) if f != Failure::Missing => Some(f),
                    _ => None,
                })
                .collect();
            failures.first().map_or(last, |f| Err(*f))
        }
        Requirement::All(list) => list
            .iter()
            .try_for_each(|r| satisfies(r, authn, found, verified, metadata)),
        Requirement::AllowMissing => {
            if found.iter().all(Option::is_none) {
                Ok(())
            } else {
                // A token is there: it must have been verified by another requirement.
                Err(Failure::UnknownIssuer)
            }
        }
        Requirement::AllowMissingOrFailed => {
            for i in 0..authn.providers.len() {
                let _ = satisfies(&Requirement::Provider(i), authn, found, verified, metadata);
            }
            Ok(())
        }
    }
}

/// The provider's token on the request: its headers (value prefix stripped), then its query
/// parameters; `Authorization: Bearer` and `access_token` when it names neither.
fn find<B>(request: &Request<B>, p: &Provider) -> Option<Found> {
    let bearer = [(header::AUTHORIZATION, "Bearer ".to_owned())];
    let default_params = ["access_token".to_owned()];
    let (headers, params): (&[(http::HeaderName, String)], &[String]) =
        if p.from_headers.is_empty() && p.from_params.is_empty() {
            (&bearer, &default_params)
        } else {
            (&p.from_headers, &p.from_params)
        };
    for (name, prefix) in headers {
        let Some(value) = request.headers().get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let token = match value.strip_prefix(prefix.as_str()) {
            Some(t) => t,
            // `Bearer` is case-insensitive (RFC 6750).
            None if prefix.eq_ignore_ascii_case("bearer ")
                && value.len() > prefix.len()
                && value[..prefix.len()].eq_ignore_ascii_case(prefix) =>
            {
                &value[prefix.len()..]
            }
            None => continue,
        };
        return Some(Found {
            token: token.trim().to_owned(),
            header: Some(name.clone()),
        });
    }
    let query = request.uri().query()?;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if params.iter().any(|p| p == name) && !value.is_empty() {
            return Some(Found {
                token: value.to_owned(),
                header: None,
            });
        }
    }
    None
}

/// The token verified by the provider: its payload.
fn verify(token: &str, p: &Provider) -> Result<Value, Failure> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| Failure::Malformed)?;
    // The issuer picks the provider; read before the signature is checked, trusted after.
    let issuer = unverified_issuer(token).ok_or(Failure::Malformed)?;
    if !p.issuer.is_empty() && issuer != p.issuer {
        return Err(Failure::UnknownIssuer);
    }
    let candidates: Vec<_> = p
        .keys
        .keys
        .iter()
        .filter(|k| match (&header.kid, &k.common.key_id) {
            (Some(kid), Some(id)) => kid == id,
            _ => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(Failure::NoKey);
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = p.clock_skew_seconds;
    // jsonwebtoken checks `exp` by default, `nbf` only when asked; Envoy checks both.
    validation.validate_nbf = true;
    validation.required_spec_claims.clear();
    if p.require_expiration {
        validation.set_required_spec_claims(&["exp"]);
    }
    if p.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&p.audiences);
    }
    let mut failure = Failure::NoKey;
    for key in candidates {
        let Ok(key) = DecodingKey::from_jwk(key) else {
            continue;
        };
        match jsonwebtoken::decode::<Value>(token, &key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => {
                failure = match e.kind() {
                    ErrorKind::ExpiredSignature => return Err(Failure::Expired),
                    ErrorKind::ImmatureSignature => return Err(Failure::NotYetValid),
                    ErrorKind::InvalidAudience => return Err(Failure::Audience),
                    ErrorKind::InvalidAlgorithm => Failure::NoKey,
                    ErrorKind::MissingRequiredClaim(_) => return Err(Failure::Signature),
                    _ => Failure::Signature,
                };
            }
        }
    }
    Err(failure)
}

fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.get("iss")?.as_str().map(str::to_owned)
}

/// Envoy's answer: 401 with the reason as the body and in `www-authenticate` (403 for a token
/// whose audience is not allowed: it is valid, only not for this workload).
pub fn unauthorized<B>(request: &Request<B>, failure: Failure) -> Response<Body> {
    let status = if failure == Failure::Audience {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::UNAUTHORIZED
    };
    let mut answer = local_reply(status, failure.text());
    let realm = format!(
        "Bearer realm=\"http://{}{}\", error=\"invalid_token\"",
        super::request_authority(request),
        request.uri().path()
    );
    if let Ok(value) = HeaderValue::from_str(&realm) {
        answer.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    answer
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"a shared secret of enough length for HS256";

    fn keys() -> JwkSet {
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
        serde_json::from_value(
            json!({"keys": [{"kty": "oct", "k": k, "alg": "HS256", "kid": "k1"}]}),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn provider(issuer: &str) -> Provider {
        Provider {
            name: issuer.into(),
            issuer: issuer.into(),
            audiences: vec!["api".into()],
            keys: keys(),
            forward: false,
            from_headers: Vec::new(),
            from_params: Vec::new(),
            payload_key: "payload".into(),
            clock_skew_seconds: 60,
            require_expiration: false,
        }
    }

    /// Istio's requirement: any provider, or no token at all.
    fn authn() -> JwtAuthn {
        JwtAuthn {
            providers: vec![provider("https://a.example"), provider("https://b.example")],
            requirement: Requirement::Any(vec![
                Requirement::Provider(0),
                Requirement::Provider(1),
                Requirement::AllowMissing,
            ]),
        }
    }

    fn token(claims: Value, secret: &[u8]) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn exp(offset: i64) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        now + offset
    }

    fn request(auth: Option<&str>, uri: &str) -> Request<()> {
        let mut r = Request::builder().uri(uri);
        if let Some(auth) = auth {
            r = r.header("authorization", auth);
        }
        r.body(()).unwrap_or_default()
    }

    fn outcome(auth: Option<&str>, uri: &str) -> Result<JwtMetadata, Failure> {
        authenticate(&mut request(auth, uri), &authn())
    }

    #[test]
    fn a_missing_token_passes_and_a_valid_one_is_kept_and_removed() {
        assert_eq!(outcome(None, "/"), Ok(JwtMetadata::new()));
        let t = token(
            json!({"iss": "https://b.example", "sub": "alice", "aud": "api", "exp": exp(600)}),
            SECRET,
        );
        let mut r = request(Some(&format!("Bearer {t}")), "/");
        let metadata = authenticate(&mut r, &authn()).unwrap_or_default();
        assert_eq!(metadata["payload"]["sub"], "alice");
        assert!(!r.headers().contains_key("authorization"), "not forwarded");
        // Case-insensitive scheme, and the default query parameter.
        assert!(outcome(Some(&format!("bearer {t}")), "/").is_ok());
        assert!(outcome(None, &format!("/x?access_token={t}")).is_ok_and(|m| !m.is_empty()));
    }

    #[test]
    fn tokens_that_fail_say_why() {
        let good = json!({"iss": "https://a.example", "sub": "s", "aud": "api", "exp": exp(600)});
        let with = |patch: Value| {
            let mut claims = good.clone();
            if let (Some(c), Value::Object(p)) = (claims.as_object_mut(), patch) {
                c.extend(p);
            }
            claims
        };
        let cases = [
            (
                token(with(json!({"exp": exp(-600)})), SECRET),
                Failure::Expired,
            ),
            (
                token(with(json!({"nbf": exp(600)})), SECRET),
                Failure::NotYetValid,
            ),
            (
                token(with(json!({"iss": "https://c.example"})), SECRET),
                Failure::UnknownIssuer,
            ),
            (
                token(with(json!({"aud": "web"})), SECRET),
                Failure::Audience,
            ),
            (
                token(good.clone(), b"another secret of enough length here"),
                Failure::Signature,
            ),
            ("a.b".to_owned(), Failure::Malformed),
        ];
        for (t, failure) in cases {
            assert_eq!(
                outcome(Some(&format!("Bearer {t}")), "/"),
                Err(failure),
                "{t}"
            );
        }
        let answer = unauthorized(&request(None, "/x"), Failure::Expired);
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
        assert!(
            answer.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .is_ok_and(|v| v.contains("invalid_token"))
        );
        assert_eq!(
            unauthorized(&request(None, "/"), Failure::Audience).status(),
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn a_required_provider_refuses_a_missing_token() {
        let strict = JwtAuthn {
            requirement: Requirement::Provider(0),
            ..authn()
        };
        assert_eq!(
            authenticate(&mut request(None, "/"), &strict),
            Err(Failure::Missing)
        );
        let lenient = JwtAuthn {
            requirement: Requirement::AllowMissingOrFailed,
            ..authn()
        };
        assert!(authenticate(&mut request(Some("Bearer nonsense"), "/"), &lenient).is_ok());
    }
}
