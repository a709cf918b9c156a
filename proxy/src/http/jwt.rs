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
    let preflight = request.method() == http::Method::OPTIONS
        && request.headers().contains_key(header::ORIGIN)
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if authn.bypass_cors_preflight && preflight {
        return Ok(JwtMetadata::new());
    }
    let found: Vec<Vec<Found>> = authn.providers.iter().map(|p| find(request, p)).collect();
    let mut metadata = JwtMetadata::new();
    let mut verified = vec![None; authn.providers.len()];
    satisfies(
        &authn.requirement,
        authn,
        &found,
        &mut verified,
        &mut metadata,
    )?;
    for ((provider, found), ok) in authn.providers.iter().zip(&found).zip(&verified) {
        if provider.forward || !matches!(ok, Some(Ok(()))) {
            continue;
        }
        for name in found.iter().filter_map(|f| f.header.as_ref()) {
            request.headers_mut().remove(name);
        }
    }
    Ok(metadata)
}

/// Whether the requirement holds; providers are verified once each.
fn satisfies(
    r: &Requirement,
    authn: &JwtAuthn,
    found: &[Vec<Found>],
    verified: &mut [Option<Result<(), Failure>>],
    metadata: &mut JwtMetadata,
) -> Result<(), Failure> {
    match r {
        Requirement::Provider(i) => {
            if let Some(outcome) = verified[*i] {
                return outcome;
            }
            let provider = &authn.providers[*i];
            // Every token must verify; the first one's payload is kept.
            let outcome = match found[*i].as_slice() {
                [] => Err(Failure::Missing),
                tokens => tokens
                    .iter()
                    .map(|f| verify(&f.token, provider))
                    .collect::<Result<Vec<Value>, Failure>>()
                    .map(|payloads| {
                        if !provider.payload_key.is_empty()
                            && let Some(first) = payloads.into_iter().next()
                        {
                            metadata.insert(provider.payload_key.clone(), first);
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
            // The most telling failure: a token of a known issuer that failed, then an
            // unknown issuer, then a missing token.
            let failures: Vec<Failure> = verified
                .iter()
                .filter_map(|v| match v {
                    Some(Err(f)) if *f != Failure::Missing => Some(*f),
                    _ => None,
                })
                .collect();
            failures
                .iter()
                .find(|f| **f != Failure::UnknownIssuer)
                .or(failures.first())
                .map_or(last, |f| Err(*f))
        }
        Requirement::All(list) => list
            .iter()
            .try_for_each(|r| satisfies(r, authn, found, verified, metadata)),
        Requirement::AllowMissing => {
            if found.iter().all(Vec::is_empty) {
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

/// Every token of the provider on the request: each value of its headers that carries the
/// prefix, and each of its query parameters (names and values percent-decoded);
/// `Authorization: Bearer` and `access_token` when it names neither. All of them must verify: a
/// second token must never ride along unchecked beside a good one.
fn find<B>(request: &Request<B>, p: &Provider) -> Vec<Found> {
    let bearer = [(header::AUTHORIZATION, "Bearer ".to_owned())];
    let default_params = ["access_token".to_owned()];
    let (headers, params): (&[(http::HeaderName, String)], &[String]) =
        if p.from_headers.is_empty() && p.from_params.is_empty() {
            (&bearer, &default_params)
        } else {
            (&p.from_headers, &p.from_params)
        };
    let mut found = Vec::new();
    for (name, prefix) in headers {
        for value in request.headers().get_all(name) {
            // A value that is not text cannot be read: counted as a token that fails.
            let Ok(value) = value.to_str() else {
                found.push(Found {
                    token: String::new(),
                    header: Some(name.clone()),
                });
                continue;
            };
            let token = match value.strip_prefix(prefix.as_str()) {
                Some(t) => t,
                // `Bearer` is case-insensitive (RFC 6750).
                None if prefix.eq_ignore_ascii_case("bearer ")
                    && value.len() > prefix.len()
                    && value.is_char_boundary(prefix.len())
                    && value[..prefix.len()].eq_ignore_ascii_case(prefix) =>
                {
                    &value[prefix.len()..]
                }
                None => continue,
            };
            found.push(Found {
                token: token.trim().to_owned(),
                header: Some(name.clone()),
            });
        }
    }
    for pair in request.uri().query().unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if params.iter().any(|p| *p == percent_decoded(name)) {
            found.push(Found {
                token: percent_decoded(value),
                header: None,
            });
        }
    }
    found
}

/// `%XX` escapes decoded (invalid ones kept as they are).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |i: usize| bytes.get(i).and_then(|b| (*b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    // Envoy: `aud` is required when the provider names audiences (jsonwebtoken only refuses
    // a wrong one), `exp` only when asked.
    let mut required = Vec::new();
    if p.require_expiration {
        required.push("exp");
    }
    if p.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&p.audiences);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    let mut failure = Failure::NoKey;
    for key in candidates {
        let Ok(key) = DecodingKey::from_jwk(key) else {
            continue;
        };
        match jsonwebtoken::decode::<Value>(token, &key, &validation) {
            Ok(data) => return Ok(split_claims(data.claims, &p.space_delimited_claims)),
            Err(e) => {
                failure = match e.kind() {
                    ErrorKind::ExpiredSignature => return Err(Failure::Expired),
                    ErrorKind::ImmatureSignature => return Err(Failure::NotYetValid),
                    ErrorKind::InvalidAudience => return Err(Failure::Audience),
                    ErrorKind::InvalidAlgorithm => Failure::NoKey,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                        return Err(Failure::Audience);
                    }
                    ErrorKind::MissingRequiredClaim(_) => return Err(Failure::Expired),
                    _ => Failure::Signature,
                };
            }
        }
    }
    Err(failure)
}

/// The claims Envoy keeps as lists of their space-separated words (`scope: "read write"`).
fn split_claims(mut payload: Value, claims: &[String]) -> Value {
    for claim in claims {
        if let Some(v) = payload.get_mut(claim)
            && let Some(text) = v.as_str()
        {
            *v = Value::Array(text.split_whitespace().map(Value::from).collect());
        }
    }
    payload
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
            space_delimited_claims: vec!["scope".into()],
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
            bypass_cors_preflight: false,
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

    /// Tokens that must not ride along beside a good one, nor hide from the check.
    #[test]
    fn every_token_on_the_request_is_checked() {
        let good = token(
            json!({"iss": "https://a.example", "sub": "s", "aud": "api", "exp": exp(600)}),
            SECRET,
        );
        let forged = token(
            json!({"iss": "https://a.example", "sub": "admin", "aud": "api", "exp": exp(600)}),
            b"another secret of enough length here",
        );
        // A second Authorization value.
        let mut r = Request::builder()
            .uri("/")
            .header("authorization", "Basic dXNlcjpwYXNz")
            .header("authorization", format!("Bearer {forged}"))
            .body(())
            .unwrap_or_default();
        assert_eq!(authenticate(&mut r, &authn()), Err(Failure::Signature));
        // A good header and a forged query parameter, also percent-encoded.
        for query in ["access_token", "access%5Ftoken", "%61ccess_token"] {
            let uri = format!("/x?{query}={forged}");
            assert_eq!(
                outcome(Some(&format!("Bearer {good}")), &uri),
                Err(Failure::Signature),
                "{uri}"
            );
        }
        // A header value that is not text is a token that fails, not a missing one.
        let mut r = Request::builder()
            .uri("/")
            .header(
                "authorization",
                http::HeaderValue::from_bytes(b"Bearer \xff")
                    .unwrap_or(HeaderValue::from_static("x")),
            )
            .body(())
            .unwrap_or_default();
        assert!(authenticate(&mut r, &authn()).is_err());
    }

    #[test]
    fn a_token_without_the_audience_is_refused_and_scopes_are_lists() {
        let no_aud = token(
            json!({"iss": "https://a.example", "sub": "s", "exp": exp(600)}),
            SECRET,
        );
        assert_eq!(
            outcome(Some(&format!("Bearer {no_aud}")), "/"),
            Err(Failure::Audience)
        );
        let scoped = token(
            json!({"iss": "https://a.example", "sub": "s", "aud": ["web", "api"], "exp": exp(600), "scope": "read write"}),
            SECRET,
        );
        let metadata = outcome(Some(&format!("Bearer {scoped}")), "/").unwrap_or_default();
        assert_eq!(metadata["payload"]["scope"], json!(["read", "write"]));
    }

    #[test]
    fn a_cors_preflight_passes_when_the_filter_says_so() {
        let preflight = || {
            Request::builder()
                .method(http::Method::OPTIONS)
                .uri("/")
                .header("origin", "https://app.example")
                .header("access-control-request-method", "POST")
                .header("authorization", "Bearer nonsense")
                .body(())
                .unwrap_or_default()
        };
        assert!(authenticate(&mut preflight(), &authn()).is_err());
        let bypass = JwtAuthn {
            bypass_cors_preflight: true,
            ..authn()
        };
        assert!(authenticate(&mut preflight(), &bypass).is_ok());
    }
}
