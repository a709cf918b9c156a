//! Envoy's JWT filter (`envoy.filters.http.jwt_authn`), for the profile `isthmusd` writes for a
//! `RequestAuthentication`: providers with inline keys (JWKS), and one requirement for every
//! request (a tree of `provider_name`, `requires_any`, `requires_all`, `allow_missing`,
//! `allow_missing_or_failed`). Keys never come from a URL: `isthmusd` sends them.

use http::HeaderName;
use isthmus_proto::envoy::envoy::config::core::v3::{DataSource, data_source};
use isthmus_proto::envoy::envoy::config::route::v3::{RouteMatch, route_match};
use isthmus_proto::envoy::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtHeader, JwtProvider, JwtRequirement, RequirementRule, jwt_provider,
    jwt_requirement, requirement_rule,
};
use isthmus_proto::envoy::google::protobuf::Any;
use jsonwebtoken::jwk::JwkSet;

use super::check::{Checked, Invalid, Path, reject_set, required};
use super::decode::typed;

pub const JWT_AUTHN_TYPE: &str = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
/// The namespace of the filter's dynamic metadata (what RBAC's metadata matchers name).
pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";

/// The filter: its providers, and what every request must satisfy.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtAuthn {
    pub providers: Vec<Provider>,
    pub requirement: Requirement,
    /// CORS preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) pass
    /// unchecked: browsers never send them a token.
    pub bypass_cors_preflight: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub name: String,
    /// The token's `iss` must be this; empty: any.
    pub issuer: String,
    /// The token's `aud` must hold one of these; empty: any.
    pub audiences: Vec<String>,
    pub keys: JwkSet,
    /// Keep the token on the request (else it is removed once verified).
    pub forward: bool,
    /// Where the token is: headers (with a value prefix) and query parameters. Both empty:
    /// `Authorization: Bearer …`, then `?access_token=`.
    pub from_headers: Vec<(HeaderName, String)>,
    pub from_params: Vec<String>,
    /// The payload is kept in the filter's metadata under this key (empty: not kept).
    pub payload_key: String,
    /// Claims kept as lists of their space-separated words (`scope`).
    pub space_delimited_claims: Vec<String>,
    pub clock_skew_seconds: u64,
    pub require_expiration: bool,
}

/// What a request must satisfy (indices into `providers`).
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    Provider(usize),
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// No token at all (a token that fails fails the requirement).
    AllowMissing,
    /// Anything: tokens are verified and kept, never refused.
    AllowMissingOrFailed,
}

pub fn convert(any: &Any, path: &Path) -> Checked<JwtAuthn> {
    let JwtAuthentication {
        providers,
        rules,
        filter_state_rules,
        bypass_cors_preflight,
        requirement_map,
        strip_failure_response,
        stat_prefix: _,
    } = typed(any, path)?;
    reject_set!(path; filter_state_rules, requirement_map, strip_failure_response);
    // Sorted by name: a stable order for the indices and for errors.
    let mut providers: Vec<(String, JwtProvider)> = providers.into_iter().collect();
    providers.sort_by(|a, b| a.0.cmp(&b.0));
    let providers_path = path.field("providers");
    let providers = providers
        .into_iter()
        .map(|(name, p)| {
            let path = providers_path.key(&name);
            provider(name, p, &path)
        })
        .collect::<Checked<Vec<_>>>()?;
    let requirement = match rules.as_slice() {
        [] => Requirement::AllowMissingOrFailed,
        [_] => {
            let path = path.field("rules").index(0);
            let RequirementRule {
                r#match,
                requirement_type,
            } = rules.into_iter().next().unwrap_or_default();
            every_request(r#match, &path.field("match"))?;
            match required(requirement_type, &path)? {
                requirement_rule::RequirementType::Requires(r) => {
                    requirement(r, &providers, &path.field("requires"))?
                }
                requirement_rule::RequirementType::RequirementName(_) => {
                    return Err(Invalid::unsupported(&path.field("requirement_name")));
                }
            }
        }
        _ => {
            return Err(Invalid::new(
                &path.field("rules"),
                "one rule, for every request",
            ));
        }
    };
    Ok(JwtAuthn {
        providers,
        requirement,
        bypass_cors_preflight,
    })
}

/// The rule's match must be every path (`prefix: /`).
fn every_request(m: Option<RouteMatch>, path: &Path) -> Checked<()> {
    let m = required(m, path)?;
    let every = m.headers.is_empty()
        && m.query_parameters.is_empty()
        && matches!(&m.path_specifier, Some(route_match::PathSpecifier::Prefix(p)) if p == "/");
    if every {
        Ok(())
    } else {
        Err(Invalid::new(path, "only `prefix: /` (every request)"))
    }
}

fn provider(name: String, p: JwtProvider, path: &Path) -> Checked<Provider> {
    let JwtProvider {
        issuer,
        audiences,
        subjects,
        require_expiration,
        max_lifetime,
        forward,
        from_headers,
        from_params,
        from_cookies,
        forward_payload_header,
        pad_forward_payload_header,
        payload_in_metadata,
        normalize_payload_in_metadata,
        header_in_metadata,
        failed_status_in_metadata,
        clock_skew_seconds,
        jwt_cache_config: _,
        claim_to_headers,
        clear_route_cache: _,
        jwks_source_specifier,
    } = p;
    reject_set!(path; subjects, max_lifetime, from_cookies, forward_payload_header,
        pad_forward_payload_header, header_in_metadata, failed_status_in_metadata,
        claim_to_headers);
    let keys_path = path.field("local_jwks");
    let keys = match required(jwks_source_specifier, path)? {
        jwt_provider::JwksSourceSpecifier::LocalJwks(source) => jwks(source, &keys_path)?,
        jwt_provider::JwksSourceSpecifier::RemoteJwks(_) => {
            return Err(Invalid::new(
                &path.field("remote_jwks"),
                "not supported (the control plane sends the keys inline)",
            ));
        }
    };
    let headers_path = path.field("from_headers");
    let from_headers = from_headers
        .into_iter()
        .enumerate()
        .map(|(i, JwtHeader { name, value_prefix })| {
            HeaderName::try_from(name.as_str())
                .map(|n| (n, value_prefix))
                .map_err(|_| {
                    Invalid::new(
                        &headers_path.index(i).field("name"),
                        format!("{name:?} is not a header name"),
                    )
                })
        })
        .collect::<Checked<Vec<_>>>()?;
    Ok(Provider {
        name,
        issuer,
        audiences,
        keys,
        forward,
        from_headers,
        from_params,
        payload_key: payload_in_metadata,
        space_delimited_claims: normalize_payload_in_metadata
            .map(|n| n.space_delimited_claims)
            .unwrap_or_default(),
        // Envoy's default.
        clock_skew_seconds: if clock_skew_seconds == 0 {
            60
        } else {
            u64::from(clock_skew_seconds)
        },
        require_expiration,
    })
}

fn jwks(source: DataSource, path: &Path) -> Checked<JwkSet> {
    let DataSource {
        watched_directory,
        specifier,
    } = source;
    reject_set!(path; watched_directory);
    let text = match required(specifier, path)? {
        data_source::Specifier::InlineString(s) => s,
        data_source::Specifier::InlineBytes(b) => {
            String::from_utf8(b).map_err(|_| Invalid::new(path, "the JWKS is not UTF-8"))?
        }
        _ => return Err(Invalid::new(path, "only an inline JWKS")),
    };
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_str(&text)
        .map_err(|e| Invalid::new(path, format!("not a JWKS document: {e}")))?;
    // As Envoy: a key of a type or curve this proxy cannot use is left out, not the set.
    let keys: Vec<_> = document
        .keys
        .into_iter()
        .filter_map(|k| serde_json::from_value(k).ok())
        .collect();
    // None usable: the issuer's tokens fail (401), as Envoy treats a JWKS it cannot use; the
    // listener is not refused for it.
    Ok(JwkSet { keys })
}

fn requirement(r: JwtRequirement, providers: &[Provider], path: &Path) -> Checked<Requirement> {
    use jwt_requirement::RequiresType;
    let list = |rs: Vec<JwtRequirement>, field: &str| -> Checked<Vec<Requirement>> {
        let path = path.field(field).field("requirements");
        if rs.len() < 2 {
            return Err(Invalid::new(&path, "at least two requirements"));
        }
        rs.into_iter()
            .enumerate()
            .map(|(i, r)| requirement(r, providers, &path.index(i)))
            .collect()
    };
    Ok(match required(r.requires_type, path)? {
        RequiresType::ProviderName(name) => {
            Requirement::Provider(providers.iter().position(|p| p.name == name).ok_or_else(
                || {
                    Invalid::new(
                        &path.field("provider_name"),
                        format!("no provider {name:?}"),
                    )
                },
            )?)
        }
        RequiresType::RequiresAny(any) => Requirement::Any(list(any.requirements, "requires_any")?),
        RequiresType::RequiresAll(all) => Requirement::All(list(all.requirements, "requires_all")?),
        RequiresType::AllowMissing(_) => Requirement::AllowMissing,
        RequiresType::AllowMissingOrFailed(_) => Requirement::AllowMissingOrFailed,
        RequiresType::ProviderAndAudiences(_) => {
            return Err(Invalid::unsupported(&path.field("provider_and_audiences")));
        }
        RequiresType::ExtractOnlyWithoutValidation(_) => {
            return Err(Invalid::unsupported(
                &path.field("extract_only_without_validation"),
            ));
        }
    })
}
