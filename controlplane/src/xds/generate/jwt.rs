//! `RequestAuthentication` as Envoy's JWT filter, as Istio writes it: one provider per issuer
//! with its inline keys, and one requirement for every request, "any of the providers, or no
//! token at all". So a request without a token passes (an `AuthorizationPolicy` with
//! `requestPrincipals` decides), and a request with a token that no provider verifies gets
//! 401. A verified token's payload is kept as the filter's dynamic metadata under
//! [`PAYLOAD_KEY`], where the RBAC filters read `requestPrincipals` and `request.auth.*`.

use std::collections::HashMap;

use isthmus_api::security::JwtRule;
use isthmus_proto::envoy::envoy::config::core::v3::{DataSource, data_source};
use isthmus_proto::envoy::envoy::config::route::v3::{RouteMatch, route_match};
use isthmus_proto::envoy::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtHeader, JwtProvider, JwtRequirement, JwtRequirementOrList,
    RequirementRule, jwt_provider, jwt_requirement, requirement_rule,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use isthmus_proto::envoy::google::protobuf::Empty;

use super::pack;

/// The filter's name, which is also the namespace of its dynamic metadata.
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// Where a verified token's payload is kept in the filter's metadata.
pub const PAYLOAD_KEY: &str = "payload";

/// Keys that verify nothing: a rule whose `jwksUri` has not been fetched (yet) gets them, so
/// that its issuer's tokens fail (401) while requests without a token pass, as in Istio. A
/// freshly generated RSA-2048 public key whose private key was thrown away.
const KEYS_NOT_FETCHED: &str = r#"{"keys":[{"kty":"RSA","kid":"isthmus-jwks-not-fetched","alg":"RS256","e":"AQAB","n":"nbBv46nK5Ohe8NfkqzV-28jdJjNj2Qe3ulIsFmYjO4JPpPw7Vy_nkUFo4A3DbfObOUgZkCrZwbvBQoKb-xvyUZqPb4yBxbFe-hkFFRnt4Mn4C0U8H1-DPRpxbYOeD8zjKHNDxMGUy71fYqb24pkiwrEQi9ApURj-PeWCb0_7cpkzdd7UzHlu6uQ-m1kbFRv8L4YWypJ4f4iiwPq_heKKGfrZjZC9wSENH_nVwKeLOgWfG_L2_8N1v_kMKcROTNEtwesHMb4t8W-G4RnoOLc3JOrNBNgo3IBKcB6SdSXIJC3RYvqzdSzUbUttZ_6LksKUirFMUNQM3ngoSFxd3ycvIw"}]}"#;

/// The JWT filter of a workload's inbound HTTP ports; `None` without rules. `fetched`: the
/// keys `isthmusd` fetched, by `jwksUri`.
pub fn jwt_filter(
    rules: &[&JwtRule],
    fetched: &std::collections::BTreeMap<String, String>,
) -> Option<HttpFilter> {
    if rules.is_empty() {
        return None;
    }
    let mut providers = HashMap::new();
    let mut any = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        // Inline keys first (Istio's precedence), then the fetched ones; validation
        // guarantees one of the two fields.
        let jwks = match (&rule.jwks, &rule.jwks_uri) {
            (Some(jwks), _) => jwks.clone(),
            (None, Some(uri)) => fetched
                .get(uri)
                .cloned()
                .unwrap_or_else(|| KEYS_NOT_FETCHED.to_owned()),
            (None, None) => continue,
        };
        let name = format!("origins-{i}");
        providers.insert(
            name.clone(),
            JwtProvider {
                issuer: rule.issuer.clone(),
                audiences: rule.audiences.clone(),
                forward: rule.forward_original_token,
                from_headers: rule
                    .from_headers
                    .iter()
                    .map(|h| JwtHeader {
                        name: h.name.clone(),
                        value_prefix: h.prefix.clone().unwrap_or_default(),
                    })
                    .collect(),
                from_params: rule.from_params.clone(),
                payload_in_metadata: PAYLOAD_KEY.into(),
                // Istio's: `scope` and `permission` are lists written as one string.
                normalize_payload_in_metadata: Some(jwt_provider::NormalizePayload {
                    space_delimited_claims: ["scope", "permission"]
                        .into_iter()
                        .map(str::to_owned)
                        .chain(rule.space_delimited_claims.iter().cloned())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                }),
                jwks_source_specifier: Some(jwt_provider::JwksSourceSpecifier::LocalJwks(
                    DataSource {
                        specifier: Some(data_source::Specifier::InlineString(jwks)),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            },
        );
        any.push(JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::ProviderName(name)),
        });
    }
    any.push(JwtRequirement {
        requires_type: Some(jwt_requirement::RequiresType::AllowMissing(Empty {})),
    });
    let config = JwtAuthentication {
        // As Istio: a browser's CORS preflight carries no token.
        bypass_cors_preflight: true,
        providers,
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(requirement_rule::RequirementType::Requires(
                JwtRequirement {
                    requires_type: Some(jwt_requirement::RequiresType::RequiresAny(
                        JwtRequirementOrList { requirements: any },
                    )),
                },
            )),
        }],
        ..Default::default()
    };
    Some(HttpFilter {
        name: JWT_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(&config))),
        ..Default::default()
    })
}
